"""Adapter for the Llama family: Llama (and SmolLM2), Mistral, Qwen2, Qwen3."""

from __future__ import annotations

from torch import nn

from ..surgery import delete_layers, rewrite_layer_config
from .base import Adapter


class LlamaAdapter(Adapter):
    """Decoder layers at ``model.model.layers``; branches ``self_attn`` and ``mlp``."""

    name = "llama"
    model_types = ("llama", "mistral", "qwen2", "qwen3")

    def decoder_layers(self, model: nn.Module) -> nn.ModuleList:
        return model.get_decoder().layers

    def branches(self, layer: nn.Module) -> dict[str, nn.Module]:
        return {"attn": layer.self_attn, "mlp": layer.mlp}

    def remove_layers(self, model: nn.Module, layers: list[int]) -> None:
        kept = delete_layers(self.decoder_layers(model), layers)
        rewrite_layer_config(model.config, kept)
