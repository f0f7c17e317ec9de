"""The Adapter contract: how an architecture exposes its removable blocks.

An adapter finds the decoder layers, names the residual branches inside each layer, counts
parameters, and deletes layers physically while keeping the config consistent. Gating and
solving are architecture-independent and live elsewhere.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from torch import nn

from ..blocks import GRANULARITIES, Block
from ..errors import BlockPruneError


class Adapter(ABC):
    """Base class of every architecture adapter (built-in or third-party)."""

    #: Registry name, e.g. ``"llama"``.
    name: ClassVar[str]
    #: ``config.model_type`` values this adapter handles.
    model_types: ClassVar[tuple[str, ...]] = ()

    def supports(self, model: nn.Module) -> bool:
        """True when this adapter can handle ``model``."""
        return getattr(model.config, "model_type", None) in self.model_types

    @abstractmethod
    def decoder_layers(self, model: nn.Module) -> nn.ModuleList:
        """The ModuleList of decoder layers, in order."""

    @abstractmethod
    def branches(self, layer: nn.Module) -> dict[str, nn.Module]:
        """Residual branches of one decoder layer, ``{kind: module}``, kinds from ``BRANCH_KINDS``.

        Each module's output (or the first element of a tuple output) is what the layer adds to
        the residual stream; gating multiplies exactly that output.
        """

    @abstractmethod
    def remove_layers(self, model: nn.Module, layers: list[int]) -> None:
        """Delete decoder layers at the given CURRENT indices in place, renumber every
        ``layer_idx`` and rewrite every per-layer config field."""

    def final_norm(self, model: nn.Module) -> nn.Module:
        """The norm applied to the last layer's output before the LM head."""
        return model.get_decoder().norm

    def logits(self, model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """LM logits from the last decoder layer's output (final norm, then head)."""
        return model.get_output_embeddings()(self.final_norm(model)(hidden))

    def blocks(self, model: nn.Module, granularity: str = "layer") -> list[Block]:
        """Every removable block of ``model`` at the given granularity, in layer order."""
        if granularity not in GRANULARITIES:
            raise BlockPruneError(
                f"unknown granularity {granularity!r}; use one of {', '.join(GRANULARITIES)}"
            )
        if granularity != "layer":
            raise BlockPruneError(
                f"granularity {granularity!r} is not supported by the {self.name!r} adapter yet; use 'layer'"
            )
        out = []
        for i, layer in enumerate(self.decoder_layers(model)):
            out.append(Block(layer=i, kind="layer", num_params=count_params(layer)))
        return out

    def gate_targets(self, model: nn.Module, blocks: list[Block]) -> list[list[nn.Module]]:
        """For each block, the branch modules whose outputs its gate multiplies."""
        layers = self.decoder_layers(model)
        targets = []
        for block in blocks:
            branches = self.branches(layers[block.layer])
            targets.append(list(branches.values()) if block.kind == "layer" else [branches[block.kind]])
        return targets


def count_params(module: nn.Module) -> int:
    """Number of parameters of ``module`` (shared tensors counted once)."""
    seen: set[int] = set()
    total = 0
    for p in module.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total
