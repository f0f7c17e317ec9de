"""``optimum-cli blockprune report``: the visual report of a pruned model folder."""

from __future__ import annotations

from argparse import ArgumentParser, Namespace

from optimum.commands.base import CommandInfo

from optimum_blockprune.cli.options import (
    Leaf,
)
from optimum_blockprune.errors import BlockPruneError


class ReportCommand(Leaf):
    COMMAND = CommandInfo(
        name="report",
        help="Write the visual report (HTML page and markdown with plots) of a pruned model folder.",
    )

    @staticmethod
    def parse_args(parser: ArgumentParser) -> None:
        parser.add_argument("--input", "-i", default=None, help="pruned model folder written by 'prune'")
        parser.add_argument(
            "--output",
            "-o",
            default=None,
            help="folder for report.html, report.md, report_files/ (default: --input)",
        )
        parser.add_argument(
            "--methods",
            default=None,
            help="JSON rows {method, granularity, removed, perplexity} to plot perplexity per method "
            "(e.g. benchmarks/results/methods.json)",
        )

    def execute(self, args: Namespace) -> None:
        from optimum_blockprune.output.report.build import build_report

        if not args.input:
            raise BlockPruneError("say which pruned model folder to report on: --input DIR")
        files = build_report(args.input, args.output, args.methods)
        print(f"report written to {files.html} and {files.markdown} ({len(files.images)} plots)")
