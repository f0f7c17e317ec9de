"""No-op stand-ins for removed residual branches (attention, MLP / MoE, their norms).

A removed branch must add nothing to the residual stream and hold no weights. A removed
attention still writes a tiny placeholder (1 head x 1 dim) into the KV cache, so the cache's
sequence length stays right when the layer that sizes masks has no attention of its own.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from optimum_blockprune.model.hooks import layer_input

#: Roles a member of a branch can play, and the stand-in each gets.
ROLES = ("attention", "mlp", "norm")


class NoOp(nn.Module):
    """Base class of every stand-in (``isinstance(m, NoOp)`` means "this branch is removed")."""

    def __init__(self) -> None:
        super().__init__()
        # Some layers read ``norm.weight.dtype``; an empty non-persistent buffer keeps that working.
        self.register_buffer("weight", torch.empty(0), persistent=False)


class NoOpAttention(NoOp):
    """Returns ``(zeros, None)`` like an attention module, and keeps the KV cache's length."""

    def __init__(self, layer_idx: int | None) -> None:
        super().__init__()
        self.layer_idx = layer_idx

    def forward(self, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, None]:
        hidden = layer_input(args, kwargs)
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if cache is not None and self.layer_idx is not None and hasattr(cache, "update"):
            placeholder = hidden.new_zeros(hidden.shape[0], 1, hidden.shape[1], 1)
            cache.update(placeholder, placeholder, self.layer_idx)
        return torch.zeros_like(hidden), None


class NoOpMLP(NoOp):
    """Returns zeros shaped like its input (an MLP or MoE block that adds nothing)."""

    def forward(self, hidden: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return torch.zeros_like(hidden)


class NoOpNorm(NoOp):
    """Identity: the norm in front of (or behind) a removed branch."""

    def forward(self, hidden: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return hidden


def stand_in(role: str, original: nn.Module) -> NoOp:
    """The stand-in for a branch member of the given role."""
    if role == "attention":
        return NoOpAttention(getattr(original, "layer_idx", None))
    if role == "mlp":
        return NoOpMLP()
    if role == "norm":
        return NoOpNorm()
    raise ValueError(f"unknown branch member role {role!r}; expected one of {', '.join(ROLES)}")
