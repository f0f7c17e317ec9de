"""The LoRA configuration of a healing run (peft)."""

from __future__ import annotations

from typing import Any

from torch import nn

from optimum_blockprune.errors import BlockPruneError


def lora_config(model: nn.Module, r: int = 16, alpha: int | None = None, dropout: float = 0.0, **kwargs: Any):
    """A peft ``LoraConfig`` on every linear layer (the LM head excluded) and, for mixture-of-experts
    models whose experts are 3-D parameters, on those parameters through ``target_parameters``."""
    from peft import LoraConfig

    if not isinstance(r, int) or r < 1:
        raise BlockPruneError(f"LoRA rank must be a positive integer, got {r!r}")
    experts = sorted(
        {
            ".".join(name.split(".")[-2:])
            for name, p in model.named_parameters()
            if p.dim() == 3 and ".experts." in name
        }
    )
    return LoraConfig(
        r=r,
        lora_alpha=alpha if alpha is not None else 2 * r,
        lora_dropout=dropout,
        target_modules="all-linear",
        target_parameters=experts or None,
        task_type="CAUSAL_LM",
        **kwargs,
    )
