"""Per-sample scalar gates on blocks' residual-branch outputs, installed with forward hooks.

``values`` has shape ``[n_blocks]`` (same gates for every sample) or ``[batch, n_blocks]``
(one gate per sample: one backward pass then yields every sample's gate gradients). A block
that is a whole layer gates all of the layer's branches; a branch covered by several blocks is
multiplied by the product of their gates. ``values = None`` leaves the model untouched.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from optimum_blockprune.blocks import Block

if TYPE_CHECKING:
    from optimum_blockprune.model.adapters.base import Adapter


class Gates:
    """Context manager that gates ``blocks`` of ``model``; set ``values`` inside the ``with``."""

    def __init__(self, model: nn.Module, adapter: Adapter, blocks: Sequence[Block]) -> None:
        self.blocks = list(blocks)
        self.values: torch.Tensor | None = None
        covering: dict[int, tuple[nn.Module, list[int]]] = {}
        owners: dict[int, list[int]] = defaultdict(list)
        for k, modules in enumerate(adapter.gate_targets(model, self.blocks)):
            for module in modules:
                covering[id(module)] = (module, owners[id(module)])
                owners[id(module)].append(k)
        self._covering = list(covering.values())
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> Gates:
        for module, owners in self._covering:
            self._handles.append(module.register_forward_hook(self._hook(tuple(owners))))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.values = None

    def _hook(self, owners: tuple[int, ...]):
        def hook(module: nn.Module, args: object, output: object) -> object:
            if self.values is None:
                return None
            scale = self.values[..., owners[0]]
            for k in owners[1:]:
                scale = scale * self.values[..., k]
            if isinstance(output, tuple):
                return (_scaled(output[0], scale), *output[1:])
            return _scaled(output, scale)

        return hook


def _scaled(hidden: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return _GateScale.apply(hidden, scale.to(hidden.device))


def _broadcastable(scale: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    if scale.dim() == 1:  # per-sample gates: [batch] -> [batch, 1, ..., 1]
        return scale.view(-1, *([1] * (hidden.dim() - 1)))
    return scale


class _GateScale(torch.autograd.Function):
    """``hidden * scale`` in the weights' dtype, with the gate gradient reduced in float32.

    With bfloat16 / float16 weights a plain product would round each gate's gradient (a sum over
    all positions and features) to 8 or 11 bits; here the products are summed in float32 and the
    gradient keeps the gate's own dtype. Only ``hidden`` is saved, in its own dtype.
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(hidden, scale)
        return hidden * _broadcastable(scale, hidden).to(hidden.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        hidden, scale = ctx.saved_tensors
        grad_hidden = grad_scale = None
        if ctx.needs_input_grad[0]:
            grad_hidden = grad * _broadcastable(scale, hidden).to(grad.dtype)
        if ctx.needs_input_grad[1]:
            products = grad.float() * hidden.float()
            sums = products.flatten(1).sum(1) if scale.dim() == 1 else products.sum()
            grad_scale = sums.to(scale.dtype)
        return grad_hidden, grad_scale


def removal_gates(n_blocks: int, removed: Sequence[int], batch: int | None = None) -> torch.Tensor:
    """Gate values with the given block positions at zero and the rest at one."""
    values = torch.ones(n_blocks) if batch is None else torch.ones(batch, n_blocks)
    values[..., list(removed)] = 0.0
    return values
