"""The one error type users see: a one-line message naming the problem and the fix."""


class BlockPruneError(ValueError):
    """Bad input or an impossible request. The CLI prints it as one line and exits with status 2."""


def require_extra(module: str, extra: str, feature: str) -> None:
    """Raise a one-line :class:`BlockPruneError` naming the extra to install when the optional
    dependency ``module`` (needed only by ``feature``) is missing."""
    import importlib

    try:
        importlib.import_module(module)
    except ImportError:
        raise BlockPruneError(
            f"{feature} needs the optional dependency {module!r}: pip install 'optimum-blockprune[{extra}]'"
        ) from None
