"""``optimum-cli blockprune report``: the visual report of a pruned model folder."""

from __future__ import annotations

from argparse import SUPPRESS, ArgumentParser, Namespace

from optimum.commands.base import CommandInfo

from optimum_blockprune.cli.options import Leaf, require


class ReportCommand(Leaf):
    COMMAND = CommandInfo(
        name="report",
        help="Write the visual report (HTML page and markdown with plots) of a pruned model folder.",
    )

    @staticmethod
    def parse_args(parser: ArgumentParser) -> None:
        parser.add_argument(
            "--model", "-m", default=None, help="pruned model folder written by 'prune' (required)"
        )
        parser.add_argument("--input", "-i", dest="model", help=SUPPRESS)  # the old name, still accepted
        parser.add_argument(
            "--output",
            "-o",
            default=None,
            help="folder for report.html, report.md, report_files/ (default: --model)",
        )
        parser.add_argument(
            "--methods",
            default=None,
            help="JSON rows {method, granularity, removed, perplexity} to plot perplexity per method "
            "(e.g. benchmarks/results/methods.json)",
        )

    def execute(self, args: Namespace) -> None:
        from optimum_blockprune.output.report.build import build_report

        model = require(args, "model", "which pruned model folder to report on")
        files = build_report(model, args.output, args.methods)
        print(f"report written to {files.html} and {files.markdown} ({len(files.images)} plots)")
