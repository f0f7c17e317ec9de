"""Adapter for Gemma 3 text models: sandwich norms around each branch, per-layer ``layer_types``."""

from __future__ import annotations

from optimum_blockprune.model.adapters.base import Adapter


class Gemma3Adapter(Adapter):
    """Each branch is ``pre-norm -> module -> post-norm``; the post-norm's output is what joins the
    residual stream, so that is what the gate scales (an RMSNorm would undo a gate placed before
    it). Sliding / full ``layer_types`` are sliced by the common surgery."""

    name = "gemma3"
    model_types = ("gemma3_text", "gemma2")
    members = {
        "attn": {"input_layernorm": "norm", "self_attn": "attention", "post_attention_layernorm": "norm"},
        "mlp": {"pre_feedforward_layernorm": "norm", "mlp": "mlp", "post_feedforward_layernorm": "norm"},
    }
    outputs = {"attn": "post_attention_layernorm", "mlp": "post_feedforward_layernorm"}
