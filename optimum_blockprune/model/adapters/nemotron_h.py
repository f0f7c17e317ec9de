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
#: Kinds whose layers hold a cache entry (the others get transformers' ``DummyLayer``).
_CACHED_KINDS = ("mamba", "attn")


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
        """Refuses configurations the cached forward of transformers cannot run.

        * Every attention layer gone: transformers sizes the cache from an attention layer, so a
          pure-Mamba remainder cannot decode with a cache.
        * An MoE or MLP layer (no cache entry) moved to the front: ``DynamicCache.get_seq_length()``
          reads layer 0, and for such a layer transformers >= 5.25 raises "'DummyLayer' object has
          no attribute 'get_seq_length'" on every forward with ``use_cache=True`` (an upstream bug:
          a stock config whose first layer is "moe" fails the same way). Checked as its monotone
          closure (no cache-less layer may lose every layer before it), so that adding blocks to a
          refused set never makes it acceptable again.
        """
        kinds = [self.mixer_kind(layer.mixer) for layer in self.decoder_layers(model)]
        gone = {parse_block_name(n)[0] for n in names}
        attention = {i for i, kind in enumerate(kinds) if kind == "attn"}
        if attention and gone >= attention:
            return (
                f"removing every attention layer ({', '.join(f'layers.{i}' for i in sorted(attention))}) "
                "leaves a model that cannot decode with a cache; protect one of them"
            )
        if kinds and kinds[0] in _CACHED_KINDS:
            j = 0
            while j in gone and j + 1 < len(kinds):
                j += 1
                if kinds[j] not in _CACHED_KINDS:
                    return (
                        f"removing every layer before layers.{j} ({kinds[j]}, no cache) would put it first, "
                        "and transformers cannot run a Nemotron-H whose first layer has no cache; "
                        f"protect layers.{j - 1}"
                    )
        return None
