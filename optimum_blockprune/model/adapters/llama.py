"""Adapter for Llama-style layers: Llama (and SmolLM2), Mistral, Qwen2, Qwen3, Phi3."""

from __future__ import annotations

from optimum_blockprune.model.adapters.base import Adapter


class LlamaAdapter(Adapter):
    """Decoder layers at ``model.model.layers``; ``self_attn`` behind ``input_layernorm`` and
    ``mlp`` behind ``post_attention_layernorm`` (the base contract's defaults). Phi3's fused
    projections and residual dropouts change nothing here."""

    name = "llama"
    model_types = ("llama", "mistral", "qwen2", "qwen3", "phi3")
