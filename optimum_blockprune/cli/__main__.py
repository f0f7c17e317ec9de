"""``python -m optimum_blockprune.cli``: same as ``optimum-cli blockprune``."""

from optimum_blockprune.cli import main

main()
