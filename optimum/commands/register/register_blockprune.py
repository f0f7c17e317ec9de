"""Registers ``optimum-cli blockprune`` (a PEP 420 namespace file: keep it import-light)."""

from optimum_blockprune.cli import BlockPruneCommand

REGISTER_COMMANDS = [BlockPruneCommand]
