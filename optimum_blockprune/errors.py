"""The one error type users see: a one-line message naming the problem and the fix."""


class BlockPruneError(ValueError):
    """Bad input or an impossible request. The CLI prints it as one line and exits with status 2."""
