"""BlockPruneConfig: everything that decides a pruning run, saved as ``blockprune_config.json``."""

from __future__ import annotations

from optimum.configuration_utils import BaseConfig

from .blocks import GRANULARITIES
from .energy import ENERGY_VARIANTS
from .errors import BlockPruneError

DEFAULT_ENERGY = ENERGY_VARIANTS[0]


class BlockPruneConfig(BaseConfig):
    """Configuration of a block-removal run (validated on construction).

    Give exactly one of ``remove`` (number of blocks) or ``ratio`` (fraction of blocks).
    ``removed_blocks`` is filled in by :meth:`BlockPruner.prune` with the chosen block names.
    """

    CONFIG_NAME = "blockprune_config.json"
    FULL_CONFIGURATION_FILE = "blockprune_config.json"

    remove: int | None = None
    ratio: float | None = None
    granularity: str = "layer"
    energy: str = DEFAULT_ENERGY
    solver: str = "auto"
    top_k: int = 10
    protect: list | None = None
    force: list | None = None
    calibration: str = "demo"
    text_field: str = "text"
    num_samples: int = 32
    seq_len: int = 128
    batch_size: int = 8
    chat_template: bool = False
    pack: bool = True
    seed: int = 0
    removed_blocks: list | None = None

    def __post_init__(self, **kwargs) -> None:
        super().__post_init__(**kwargs)
        self.validate_settings()

    def validate_settings(self) -> None:
        """Raise BlockPruneError naming the first bad setting and how to fix it."""
        if (self.remove is None) == (self.ratio is None):
            raise BlockPruneError(
                "give exactly one of remove (a block count) or ratio (a fraction of blocks)"
            )
        if self.remove is not None and (not isinstance(self.remove, int) or self.remove <= 0):
            raise BlockPruneError(f"remove must be a positive number of blocks, got {self.remove!r}")
        if self.ratio is not None and not 0 < float(self.ratio) < 1:
            raise BlockPruneError(f"ratio must lie strictly between 0 and 1, got {self.ratio!r}")
        if self.granularity not in GRANULARITIES:
            raise BlockPruneError(
                f"granularity must be one of {', '.join(GRANULARITIES)}, got {self.granularity!r}"
            )
        if self.energy not in ENERGY_VARIANTS:
            raise BlockPruneError(f"energy must be one of {', '.join(ENERGY_VARIANTS)}, got {self.energy!r}")
        for name in ("top_k", "num_samples", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise BlockPruneError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not isinstance(self.seq_len, int) or self.seq_len < 2:
            raise BlockPruneError(f"seq_len must be an integer >= 2, got {self.seq_len!r}")

    def num_to_remove(self, num_blocks: int) -> int:
        """The block count this config asks for, checked against the model's ``num_blocks``."""
        m = self.remove if self.remove is not None else round(float(self.ratio) * num_blocks)
        if not 0 < m < num_blocks:
            raise BlockPruneError(
                f"cannot remove {m} of {num_blocks} blocks; choose between 1 and {num_blocks - 1}"
            )
        return m
