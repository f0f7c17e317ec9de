"""Fallback adapter for decoder-only models no specific adapter claims.

It looks for a ModuleList of layers on the decoder, an attention child and an MLP (or MoE) child
in every layer, and a final norm; then it PROVES the guess on a tiny forward pass before it is
used: with every branch gated to zero each layer must return its input unchanged, and the final
norm plus LM head must reproduce the model's logits. When any of this fails it refuses with the
reason, instead of pruning a model it does not understand.
"""

from __future__ import annotations

import torch
from torch import nn

from optimum_blockprune.blocks import Block
from optimum_blockprune.model.adapters.base import Adapter
from optimum_blockprune.model.gates import Gates
from optimum_blockprune.model.hooks import layer_input

LAYER_LISTS = ("layers", "h", "blocks", "layer")
FINAL_NORMS = ("norm", "final_layernorm", "final_layer_norm", "ln_f", "norm_f")
#: Class-name fragments that identify a branch, checked in order.
BRANCH_CLASSES = (
    ("moe", ("MoE", "Moe", "SparseMoe", "Experts")),
    ("mamba", ("Mamba",)),
    ("attn", ("Attention", "Attn")),
    ("mlp", ("MLP", "Mlp", "FeedForward", "FFN")),
)


def _kind_of(module: nn.Module) -> str | None:
    name = type(module).__name__
    return next((kind for kind, fragments in BRANCH_CLASSES if any(f in name for f in fragments)), None)


class GenericAdapter(Adapter):
    """Decoder-only models with a layer list and recognisable attention / MLP children."""

    name = "generic"
    #: Tried only after every specific adapter declined.
    fallback = True

    def supports(self, model: nn.Module) -> bool:
        return self.why_not(model) is None

    def decoder_layers(self, model: nn.Module) -> nn.ModuleList:
        decoder = model.get_decoder()
        for attr in LAYER_LISTS:
            layers = getattr(decoder, attr, None)
            if isinstance(layers, nn.ModuleList) and len(layers):
                return layers
        raise ValueError(f"{type(decoder).__name__} has no layer list ({', '.join(LAYER_LISTS)})")

    def _children(self, layer: nn.Module) -> dict[str, str]:
        """``{kind: attribute}`` of the recognised branch children of one layer."""
        found: dict[str, str] = {}
        for attr, child in layer.named_children():
            kind = _kind_of(child)
            if kind is not None and kind not in found:
                found[kind] = attr
        return found

    def branch_kinds(self, layer: nn.Module) -> list[str]:
        return list(self._children(layer))

    def branch_members(self, layer: nn.Module, kind: str) -> dict[str, str]:
        attr = self._children(layer)[kind]
        return {attr: "attention" if kind == "attn" else "mlp"}

    def branches(self, layer: nn.Module) -> dict[str, nn.Module]:
        from optimum_blockprune.model.noop import NoOp

        out = {}
        for kind, attr in self._children(layer).items():
            module = getattr(layer, attr)
            if not isinstance(module, NoOp):
                out[kind] = module
        return out

    def final_norm(self, model: nn.Module) -> nn.Module:
        decoder = model.get_decoder()
        for attr in FINAL_NORMS:
            norm = getattr(decoder, attr, None)
            if isinstance(norm, nn.Module):
                return norm
        raise ValueError(f"{type(decoder).__name__} has no final norm ({', '.join(FINAL_NORMS)})")

    @torch.no_grad()
    def why_not(self, model: nn.Module) -> str | None:
        """None when the generic guess is proven right on ``model``, else the reason it is not."""
        try:
            layers = self.decoder_layers(model)
            self.final_norm(model)
        except (AttributeError, ValueError, NotImplementedError) as exc:
            return str(exc)
        for i, layer in enumerate(layers):
            kinds = self._children(layer)
            if "attn" not in kinds and "mamba" not in kinds:
                return f"cannot tell the branches of layer {i} ({type(layer).__name__}) apart: no attention child"
        return self._proven(model, layers)

    def _proven(self, model: nn.Module, layers: nn.ModuleList) -> str | None:
        """Each branch must be a pure residual addend: layer(x) = x + Σ_k α_k·f_k(x) for the
        gated branch alone (checked at α = 0, ½, 1 on every layer's real input)."""
        ids = torch.arange(1, 9).remainder(getattr(model.config, "vocab_size", 8) or 8)[None, :]
        ids = ids.to(next(model.parameters()).device)
        calls: list[tuple[torch.Tensor, dict]] = []

        def grab(module: nn.Module, args: tuple, kwargs: dict) -> None:
            calls.append(
                (
                    layer_input(args, kwargs),
                    {k: v for k, v in kwargs.items() if k != "hidden_states"},
                )
            )

        handles = [layer.register_forward_pre_hook(grab, with_kwargs=True) for layer in layers]
        try:
            logits = model(input_ids=ids, use_cache=False).logits
        finally:
            for handle in handles:
                handle.remove()
        last = None
        for i, (layer, (x, kwargs)) in enumerate(zip(layers, calls, strict=False)):
            kinds = list(self.branches(layer))
            blocks = [Block(i, kind, 0) for kind in kinds]
            with Gates(model, self, blocks) as gates:
                for k, kind in enumerate(kinds):
                    out = {}
                    for alpha in (0.0, 0.5, 1.0):
                        gates.values = torch.zeros(len(kinds))
                        gates.values[k] = alpha
                        y = layer(x, **kwargs)
                        out[alpha] = y[0] if isinstance(y, tuple) else y
                    if not torch.allclose(out[0.0], x, atol=1e-5) or not torch.allclose(
                        out[0.5], (x + out[1.0]) / 2, atol=1e-4
                    ):
                        return (
                            f"cannot tell the branches of layer {i} ({type(layer).__name__}) apart: its "
                            f"{kind!r} child is not a plain residual addend"
                        )
            y = layer(x, **kwargs)
            last = y[0] if isinstance(y, tuple) else y
        if last is None or not torch.allclose(self.logits(model, last), logits, atol=1e-4):
            return "the final norm and LM head do not reproduce the model's logits"
        return None
