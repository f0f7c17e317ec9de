"""Adapter for GPT-2: layers at ``transformer.h``, branches ``ln_1 -> attn`` and ``ln_2 -> mlp``."""

from __future__ import annotations

from torch import nn

from optimum_blockprune.errors import BlockPruneError
from optimum_blockprune.model.adapters.base import Adapter


class GPT2Adapter(Adapter):
    """GPT-2's own layout: ``GPT2Block`` with Conv1D projections and LayerNorms, final ``ln_f``."""

    name = "gpt2"
    model_types = ("gpt2",)
    members = {
        "attn": {"ln_1": "norm", "attn": "attention"},
        "mlp": {"ln_2": "norm", "mlp": "mlp"},
    }
    outputs = {"attn": "attn", "mlp": "mlp"}

    def decoder_layers(self, model: nn.Module) -> nn.ModuleList:
        return model.get_decoder().h

    def final_norm(self, model: nn.Module) -> nn.Module:
        return model.get_decoder().ln_f

    def remove_layers(self, model: nn.Module, layers: list[int]) -> None:
        """As the base, except with ``scale_attn_by_inverse_layer_idx``: attention scores are
        divided by ``layer_idx + 1`` there, so renumbering would change every later layer."""
        if layers and getattr(model.config, "scale_attn_by_inverse_layer_idx", False):
            raise BlockPruneError(
                "this GPT-2 scales attention by its layer index, so whole layers cannot be deleted "
                "without changing later layers; use --granularity sublayer"
            )
        super().remove_layers(model, layers)
