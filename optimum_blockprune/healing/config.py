"""HealingConfig: the trl ``SFTConfig`` of a healing run plus its distillation mix."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from trl import SFTConfig

from optimum_blockprune.errors import BlockPruneError


def _bf16_default() -> bool:
    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


@dataclass
class HealingConfig(SFTConfig):
    """``SFTConfig`` plus the distillation mix. Defaults suit a short LoRA healing run: learning
    rate 1e-3 with cosine decay (lower it, e.g. to 1e-4, for full fine-tuning), no gradient
    checkpointing, bf16 only where the GPU supports it (never on CPU), and pinned memory only
    with a GPU."""

    alpha: float = field(
        default=0.5, metadata={"help": "weight of cross-entropy; 1 - alpha weighs the distillation term"}
    )
    temperature: float = field(default=2.0, metadata={"help": "distillation temperature T"})
    gradient_checkpointing: bool | None = None
    activation_checkpointing: bool | None = False
    learning_rate: float = 1e-3
    lr_scheduler_type: str = "cosine"
    warmup_steps: float = 0.05
    logging_steps: float = 10
    save_total_limit: int | None = 2
    dataloader_pin_memory: bool | None = None

    def __post_init__(self) -> None:
        if self.bf16 is None:
            self.bf16 = (not self.fp16) and not self.use_cpu and _bf16_default()
        if self.dataloader_pin_memory is None:
            self.dataloader_pin_memory = torch.cuda.is_available() and not self.use_cpu
        check_mix(self.alpha, self.temperature)
        super().__post_init__()


def check_mix(alpha: float, temperature: float) -> None:
    """Refuse an ``alpha`` outside [0, 1] or a non-positive ``temperature``."""
    if not 0.0 <= float(alpha) <= 1.0:
        raise BlockPruneError(f"alpha must lie in [0, 1] (1 = cross-entropy only), got {alpha!r}")
    if not float(temperature) > 0:
        raise BlockPruneError(f"temperature must be positive, got {temperature!r}")
