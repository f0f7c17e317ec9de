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


class SettingError(BlockPruneError):
    """A bad value of one setting. The message names the setting as Python spells it
    (``top_k``); :meth:`flagged` names it as the command line does (``--top-k``)."""

    def __init__(self, setting: str, template: str) -> None:
        self.setting, self.template = setting, template
        super().__init__(template.replace("{name}", setting))

    @property
    def flag(self) -> str:
        """The command-line flag of the setting: ``top_k`` -> ``--top-k``."""
        return "--" + self.setting.replace("_", "-")

    def flagged(self) -> str:
        """The message with the setting named by its flag."""
        return self.template.replace("{name}", self.flag)
