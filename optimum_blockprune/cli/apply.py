"""``optimum-cli blockprune apply``: remove the blocks you name (e.g. a candidate of ``solve``) and
save the folder ``prune`` would write for them."""

from __future__ import annotations

from argparse import ArgumentParser, Namespace

from optimum.commands.base import CommandInfo

from optimum_blockprune.cli.options import (
    Leaf,
    add_calibration_args,
    add_model_args,
    add_output_arg,
    add_placement_args,
    name_list,
    require,
)
from optimum_blockprune.cli.prune import add_report_arg, apply_blocks


class ApplyCommand(Leaf):
    COMMAND = CommandInfo(
        name="apply", help="Remove the named blocks (e.g. a 'solve' candidate) and save the pruned model."
    )

    @staticmethod
    def parse_args(parser: ArgumentParser) -> None:
        add_model_args(parser)
        parser.add_argument(
            "--blocks",
            "-b",
            default=None,
            help="comma-separated blocks to remove, e.g. layers.3,layers.7.attn",
        )
        add_output_arg(parser, "the pruned model")
        add_report_arg(parser)
        add_calibration_args(parser)  # the calibration loss before and after, for the report
        add_placement_args(parser)

    def execute(self, args: Namespace) -> None:
        blocks = name_list(require(args, "blocks", "which blocks to remove, e.g. layers.3,layers.7.attn"))
        apply_blocks(args, blocks, require(args, "output", "where to save the pruned model"))
