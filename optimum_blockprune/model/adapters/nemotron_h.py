"""Adapter for Nemotron-H: a hybrid stack whose every layer is ONE branch (Mamba-2, attention, MoE
or MLP mixer behind a norm), so removing a branch deletes its layer and ``layers_block_type`` is
sliced like any per-layer list."""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from optimum_blockprune.blocks import parse_block_name
from optimum_blockprune.model.adapters.base import Adapter

#: Mixer class-name fragment -> block kind.
_MIXER_KINDS = (("Mamba", "mamba"), ("Attention", "attn"), ("MoE", "moe"), ("MLP", "mlp"))


class NemotronHAdapter(Adapter):
    name = "nemotron_h"
    model_types = ("nemotron_h",)

    def branch_kinds(self, layer: nn.Module) -> list[str]:
        kind = self.mixer_kind(layer.mixer)
        return [kind] if kind else []

    @staticmethod
    def mixer_kind(mixer: nn.Module) -> str | None:
        name = type(mixer).__name__
        return next((kind for fragment, kind in _MIXER_KINDS if fragment in name), None)

    def branch_members(self, layer: nn.Module, kind: str) -> dict[str, str]:
        return {"norm": "norm", "mixer": "mlp"}

    def branches(self, layer: nn.Module) -> dict[str, nn.Module]:
        return {kind: layer.mixer for kind in self.branch_kinds(layer)}

    def final_norm(self, model: nn.Module) -> nn.Module:
        return model.get_decoder().norm_f

    def removal_error(self, model: nn.Module, names: Iterable[str]) -> str | None:
        """Refuses to remove every attention layer: transformers sizes the cache from an
        attention layer, so a pure-Mamba remainder cannot decode with a cache."""
        attention = {
            i for i, layer in enumerate(self.decoder_layers(model)) if "attn" in self.branches(layer)
        }
        gone = {parse_block_name(n)[0] for n in names} & attention
        if attention and gone >= attention:
            return (
                f"removing every attention layer ({', '.join(f'layers.{i}' for i in sorted(attention))}) "
                "leaves a model that cannot decode with a cache; protect one of them"
            )
        return None
