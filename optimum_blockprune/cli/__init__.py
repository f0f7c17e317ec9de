"""``optimum-cli blockprune analyze | solve | prune | apply | heal | report | eval``: one thin module per
subcommand (each turns its arguments into a library call), plus the demo (:mod:`.demo`).
Heavy imports happen inside each command's ``execute``, so ``optimum-cli`` starts fast.

Also runnable as ``python -m optimum_blockprune.cli <subcommand> ...``.
"""

from __future__ import annotations

import sys
from argparse import ArgumentParser

from optimum.commands.base import BaseOptimumCLICommand, CommandInfo

from optimum_blockprune.cli.analyze import AnalyzeCommand
from optimum_blockprune.cli.apply import ApplyCommand
from optimum_blockprune.cli.eval import EvalCommand
from optimum_blockprune.cli.heal import HealCommand
from optimum_blockprune.cli.prune import PruneCommand
from optimum_blockprune.cli.report import ReportCommand
from optimum_blockprune.cli.solve import SolveCommand

__all__ = [
    "AnalyzeCommand",
    "ApplyCommand",
    "BlockPruneCommand",
    "EvalCommand",
    "HealCommand",
    "PruneCommand",
    "ReportCommand",
    "SolveCommand",
    "main",
]


class BlockPruneCommand(BaseOptimumCLICommand):
    COMMAND = CommandInfo(
        name="blockprune",
        help="Depth pruning: remove whole transformer blocks chosen by constrained binary optimisation.",
    )

    @staticmethod
    def parse_args(parser: ArgumentParser) -> None:
        from optimum_blockprune import __version__

        parser.add_argument("--version", action="version", version=f"optimum-blockprune {__version__}")

    SUBCOMMANDS = (
        CommandInfo(name="analyze", help=AnalyzeCommand.COMMAND.help, subcommand_class=AnalyzeCommand),
        CommandInfo(name="solve", help=SolveCommand.COMMAND.help, subcommand_class=SolveCommand),
        CommandInfo(name="prune", help=PruneCommand.COMMAND.help, subcommand_class=PruneCommand),
        CommandInfo(name="apply", help=ApplyCommand.COMMAND.help, subcommand_class=ApplyCommand),
        CommandInfo(name="heal", help=HealCommand.COMMAND.help, subcommand_class=HealCommand),
        CommandInfo(name="report", help=ReportCommand.COMMAND.help, subcommand_class=ReportCommand),
        CommandInfo(name="eval", help=EvalCommand.COMMAND.help, subcommand_class=EvalCommand),
    )


def main(argv: list[str] | None = None) -> None:
    """Entry point for ``python -m optimum_blockprune.cli``: same as ``optimum-cli blockprune``."""
    from optimum.commands.optimum_cli import main as optimum_main

    sys.argv = ["optimum-cli", "blockprune", *(sys.argv[1:] if argv is None else argv)]
    optimum_main()
