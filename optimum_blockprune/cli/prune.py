"""``optimum-cli blockprune prune``: choose blocks, remove them, save the pruned model."""

from __future__ import annotations

from argparse import ArgumentParser, Namespace

from optimum.commands.base import CommandInfo

from optimum_blockprune.cli.options import (
    Leaf,
    add_calibration_args,
    add_method_args,
    add_model_args,
    add_target_args,
    config_from_args,
)
from optimum_blockprune.errors import BlockPruneError


class PruneCommand(Leaf):
    COMMAND = CommandInfo(name="prune", help="Choose blocks, remove them and save the pruned model.")

    @staticmethod
    def parse_args(parser: ArgumentParser) -> None:
        add_model_args(parser)
        add_calibration_args(parser)
        add_target_args(parser)
        add_method_args(parser)
        parser.add_argument("--output", "-o", default=None, help="folder for the pruned model (required)")
        parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
        parser.add_argument(
            "--no-report",
            action="store_true",
            help="skip the visual report (report.html, report.md); the model card is still written",
        )

    def execute(self, args: Namespace) -> None:
        from optimum_blockprune.pruner import BlockPruner

        if not args.output:
            raise BlockPruneError("say where to save the pruned model: --output DIR")
        config = config_from_args(args)
        pruner = BlockPruner.from_pretrained(args.model, adapter=args.adapter)
        result = pruner.prune(
            config, args.output, overwrite=args.overwrite, progress=True, write_report=not args.no_report
        )
        print(f"removed {len(result.removed)} blocks: {' '.join(result.removed)}")
        cost = result.report["cost"]
        print(
            f"chosen by method {result.report['method']}: {cost['forward_passes']:g} forward passes, "
            f"{cost['backward_passes']} backward passes, {cost['seconds']:.1f} s"
        )
        print(f"calibration loss {result.report['dense_loss']:.4f} -> {result.report['pruned_loss']:.4f}")
        print(f"pruned model written to {result.path}")
        if not args.no_report:
            print(f"report: {result.path / 'report.html'} (and report.md)")
