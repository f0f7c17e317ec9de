"""Adapter for GPT-2: layers at ``transformer.h``, branches ``ln_1 -> attn`` and ``ln_2 -> mlp``."""

from __future__ import annotations

from torch import nn

from .base import Adapter


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
