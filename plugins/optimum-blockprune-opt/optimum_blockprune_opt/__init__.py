"""optimum-blockprune adapter for OPT, registered through the public ``register_adapters`` hook."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from optimum_blockprune import Adapter, hookimpl


class OPTAdapter(Adapter):
    """Pre-norm OPT: layers at ``model.decoder.layers``; the MLP is ``fc1 -> act -> fc2`` inline."""

    name = "opt"
    model_types = ("opt",)
    members = {
        "attn": {"self_attn_layer_norm": "norm", "self_attn": "attention"},
        "mlp": {"final_layer_norm": "norm", "fc1": "mlp", "fc2": "mlp"},
    }
    outputs = {"attn": "self_attn", "mlp": "fc2"}

    def supports(self, model: nn.Module) -> bool:
        config = model.config
        return super().supports(model) and getattr(config, "do_layer_norm_before", True)

    def final_norm(self, model: nn.Module) -> nn.Module:
        return model.get_decoder().final_layer_norm

    def logits(self, model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        decoder = model.get_decoder()
        hidden = self.final_norm(model)(hidden)
        if decoder.project_out is not None:
            hidden = decoder.project_out(hidden)
        return model.get_output_embeddings()(hidden)


@hookimpl
def register_adapters(register: Callable[[Adapter], None]) -> None:
    register(OPTAdapter())
