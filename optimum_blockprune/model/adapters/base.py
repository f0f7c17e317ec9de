"""The Adapter contract: how an architecture exposes its removable blocks.

An adapter finds the decoder layers, names the residual branches inside each layer (``attn``,
``mlp``, ``moe``, ``mamba``), says which layer members make up each branch, counts parameters,
and removes blocks physically: whole layers are deleted, single branches are replaced by no-op
stand-ins (``noop.py``) and recorded in ``config.per_layer_config`` as ``skip`` entries. Gating
and solving are architecture-independent and live elsewhere.
"""

from __future__ import annotations

from abc import ABC
from collections import defaultdict
from collections.abc import Iterable
from typing import ClassVar

import torch
from torch import nn

from optimum_blockprune.blocks import GRANULARITIES, Block, parse_block_name
from optimum_blockprune.errors import BlockPruneError
from optimum_blockprune.model.marker import layer_overrides
from optimum_blockprune.model.noop import NoOp, stand_in
from optimum_blockprune.model.surgery import delete_layers, rewrite_layer_config, set_layer_overrides

#: The word transformers' ``per_layer_config`` uses for each branch kind in ``skip`` lists.
SKIP_NAMES = {"attn": "attention", "mlp": "mlp", "moe": "mlp", "mamba": "mixer"}


class Adapter(ABC):
    """Base class of every architecture adapter (built-in or third-party).

    The defaults fit Llama-style layers (``model.get_decoder().layers``, ``self_attn`` behind
    ``input_layernorm`` and ``mlp`` behind ``post_attention_layernorm``); an adapter overrides
    ``members`` / ``branch_kinds`` / ``branches`` where its layers differ.
    """

    #: Registry name, e.g. ``"llama"``.
    name: ClassVar[str]
    #: ``config.model_type`` values this adapter handles.
    model_types: ClassVar[tuple[str, ...]] = ()
    #: For each branch kind: the layer attributes that make it up and their role
    #: (``attention``, ``mlp`` or ``norm``; see ``noop.stand_in``). The gated module is the one
    #: whose output the layer adds to the residual stream (see :meth:`branches`).
    members: ClassVar[dict[str, dict[str, str]]] = {
        "attn": {"input_layernorm": "norm", "self_attn": "attention"},
        "mlp": {"post_attention_layernorm": "norm", "mlp": "mlp"},
    }
    #: For each branch kind, the member whose output is added to the residual stream.
    outputs: ClassVar[dict[str, str]] = {"attn": "self_attn", "mlp": "mlp"}

    def supports(self, model: nn.Module) -> bool:
        """True when this adapter can handle ``model``."""
        return getattr(model.config, "model_type", None) in self.model_types

    def decoder_layers(self, model: nn.Module) -> nn.ModuleList:
        """The ModuleList of decoder layers, in order."""
        return model.get_decoder().layers

    def branch_kinds(self, layer: nn.Module) -> list[str]:
        """Kinds of the residual branches this layer has (removed ones included)."""
        return list(self.outputs)

    def branch_members(self, layer: nn.Module, kind: str) -> dict[str, str]:
        """``{attribute: role}`` of the members that make up branch ``kind`` of ``layer``."""
        return self.members[kind]

    def branches(self, layer: nn.Module) -> dict[str, nn.Module]:
        """Residual branches still present in one layer, ``{kind: module}``.

        Each module's output (or the first element of a tuple output) is what the layer adds to
        the residual stream; gating multiplies exactly that output.
        """
        out = {}
        for kind in self.branch_kinds(layer):
            module = getattr(layer, self.outputs[kind])
            if not isinstance(module, NoOp):
                out[kind] = module
        return out

    def remove_layers(self, model: nn.Module, layers: list[int]) -> None:
        """Delete decoder layers at the given CURRENT indices in place, renumber every
        ``layer_idx`` and rewrite every per-layer config field."""
        kept = delete_layers(self.decoder_layers(model), layers)
        rewrite_layer_config(model.config, kept)

    def skip_branch(self, layer: nn.Module, kind: str) -> None:
        """Replace the members of branch ``kind`` of ``layer`` by weightless no-op stand-ins."""
        for attr, role in self.branch_members(layer, kind).items():
            member = getattr(layer, attr)
            if not isinstance(member, NoOp):
                setattr(layer, attr, stand_in(role, member))

    def removal_error(self, model: nn.Module, names: Iterable[str]) -> str | None:
        """Why removing ``names`` together would leave a broken model, or None when it is fine.

        Selectors skip configurations that get a reason here and surgery refuses them. The
        default accepts everything; an adapter overrides it for rules of its architecture (one
        the problem's per-kind counts cannot say, e.g. "keep at least one attention layer").
        Adding blocks to a refused set must never make it acceptable again.
        """
        return None

    def remove_blocks(self, model: nn.Module, names: Iterable[str]) -> dict[str, list]:
        """Remove blocks (names with CURRENT layer indices) physically.

        Whole-layer blocks, and layers all of whose remaining branches go, are deleted; other
        branches become no-op stand-ins recorded as ``skip`` in ``config.per_layer_config``.
        Returns ``{"deleted_layers": [...], "skipped": [[layer, kind], ...]}`` (current indices).
        """
        names = list(names)
        layers = self.decoder_layers(model)
        delete: set[int] = set()
        branches: dict[int, set[str]] = defaultdict(set)
        for name in names:
            try:
                i, kind = parse_block_name(name)
            except ValueError as exc:
                raise BlockPruneError(str(exc)) from None
            if not 0 <= i < len(layers):
                raise BlockPruneError(f"block {name!r} is out of range: the model has {len(layers)} layers")
            present = self.branches(layers[i])
            if kind == "layer":
                delete.add(i)
            elif kind not in present:
                raise BlockPruneError(
                    f"layer {i} has no {kind!r} branch to remove (it has: {', '.join(present) or 'none left'})"
                )
            else:
                branches[i].add(kind)
        reason = self.removal_error(model, names)
        if reason:
            raise BlockPruneError(reason)
        skipped = []
        overrides = layer_overrides(model.config)
        for i, kinds in sorted(branches.items()):
            if i in delete or kinds >= set(self.branches(layers[i])):
                delete.add(i)
                continue
            for kind in sorted(kinds):
                self.skip_branch(layers[i], kind)
                skipped.append([i, kind])
            entry = dict(overrides.get(i, {}))
            entry["skip"] = sorted(set(entry.get("skip", [])) | {SKIP_NAMES[k] for k in kinds})
            overrides[i] = entry
        set_layer_overrides(model.config, overrides)
        if delete:
            self.remove_layers(model, sorted(delete))
        return {"deleted_layers": sorted(delete), "skipped": skipped}

    def apply_skips(self, layer: nn.Module, skip: Iterable[str]) -> None:
        """Install stand-ins for the branches named in a ``per_layer_config`` ``skip`` list."""
        wanted = set(skip)
        for kind in self.branch_kinds(layer):
            if SKIP_NAMES[kind] in wanted:
                self.skip_branch(layer, kind)

    def final_norm(self, model: nn.Module) -> nn.Module:
        """The norm applied to the last layer's output before the LM head."""
        return model.get_decoder().norm

    def logits(self, model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """LM logits from the last decoder layer's output (final norm, then head)."""
        return model.get_output_embeddings()(self.final_norm(model)(hidden))

    def blocks(self, model: nn.Module, granularity: str = "layer") -> list[Block]:
        """Every removable block of ``model`` at the given granularity, in layer order.

        ``layer``: whole layers; ``sublayer``: every remaining branch; ``mixed``: both, except
        that a layer with a single remaining branch appears once, as that branch.
        """
        if granularity not in GRANULARITIES:
            raise BlockPruneError(
                f"unknown granularity {granularity!r}; use one of {', '.join(GRANULARITIES)}"
            )
        out = []
        for i, layer in enumerate(self.decoder_layers(model)):
            present = self.branches(layer)
            if granularity == "layer" or (granularity == "mixed" and len(present) > 1):
                out.append(Block(layer=i, kind="layer", num_params=count_params(layer)))
            if granularity != "layer":
                for kind in present:
                    out.append(Block(layer=i, kind=kind, num_params=self.branch_params(layer, kind)))
        return out

    def branch_params(self, layer: nn.Module, kind: str) -> int:
        """Parameters that removing branch ``kind`` of ``layer`` frees."""
        return sum(count_params(getattr(layer, attr)) for attr in self.branch_members(layer, kind))

    def gate_targets(self, model: nn.Module, blocks: list[Block]) -> list[list[nn.Module]]:
        """For each block, the branch modules whose outputs its gate multiplies."""
        layers = self.decoder_layers(model)
        targets = []
        for block in blocks:
            branches = self.branches(layers[block.layer])
            if block.kind != "layer" and block.kind not in branches:
                raise BlockPruneError(f"layer {block.layer} has no {block.kind!r} branch left to gate")
            targets.append(list(branches.values()) if block.kind == "layer" else [branches[block.kind]])
        return targets


def count_params(module: nn.Module) -> int:
    """Number of parameters of ``module`` (shared tensors counted once)."""
    seen: set[int] = set()
    total = 0
    for p in module.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total
