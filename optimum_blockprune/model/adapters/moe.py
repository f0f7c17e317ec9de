"""Adapter for mixture-of-experts layers: Qwen3-MoE (and Qwen2-MoE) and Mixtral.

The ``mlp`` slot holds a sparse MoE block (kind ``moe``) or, in Qwen3-MoE's ``mlp_only_layers`` and
off-step layers of ``decoder_sparse_step``, a dense MLP (kind ``mlp``). Removing either installs
the same no-op stand-in in that slot, recorded as ``skip: ["mlp"]``.
"""

from __future__ import annotations

from torch import nn

from optimum_blockprune.model.adapters.base import Adapter


def is_moe(module: nn.Module) -> bool:
    """True for a sparse mixture-of-experts block (it routes tokens through ``experts``)."""
    return hasattr(module, "experts")


class MoEAdapter(Adapter):
    name = "moe"
    model_types = ("qwen3_moe", "qwen2_moe", "mixtral")
    members = {
        "attn": {"input_layernorm": "norm", "self_attn": "attention"},
        "mlp": {"post_attention_layernorm": "norm", "mlp": "mlp"},
        "moe": {"post_attention_layernorm": "norm", "mlp": "mlp"},
    }
    outputs = {"attn": "self_attn", "mlp": "mlp", "moe": "mlp"}

    def branch_kinds(self, layer: nn.Module) -> list[str]:
        return ["attn", "moe" if is_moe(layer.mlp) else "mlp"]

    def remove_layers(self, model: nn.Module, layers: list[int]) -> None:
        """Delete layers, then describe which kept layers are dense explicitly: Qwen-MoE decides
        dense vs sparse from ``(layer_idx + 1) % decoder_sparse_step``, which renumbering would
        shift, so the pattern becomes ``decoder_sparse_step = 1`` plus ``mlp_only_layers``."""
        config = model.config
        step = getattr(config, "decoder_sparse_step", None)
        super().remove_layers(model, layers)
        if isinstance(step, int) and step > 1:
            config.decoder_sparse_step = 1
            config.mlp_only_layers = [
                i for i, layer in enumerate(self.decoder_layers(model)) if "mlp" in self.branch_kinds(layer)
            ]
