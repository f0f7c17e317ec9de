"""Real calibration loss of configurations that remove blocks, computed fast.

One dense forward per batch records each decoder layer's call arguments; a configuration is
then scored by running only its kept layers (single removed branches gated to zero). A *base* configuration keeps every layer's input
cached, so scoring ``base ∪ extra`` starts at the first extra layer instead of the embedding.

Under ``accelerate launch`` each process scores its contiguous share of the calibration samples
and the per-sample losses are gathered back in sample order, so every process holds the same
loss vectors and takes the same decisions. The cached layer inputs may live on another device
than the model (``cache_device="cpu"`` beside a GPU model): each batch goes to the model when used.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from optimum_blockprune.blocks import Block, block_name, parse_block_name
from optimum_blockprune.data.calibration import CalibrationData
from optimum_blockprune.energy.distributed import Processes, input_device
from optimum_blockprune.model.adapters.base import Adapter
from optimum_blockprune.model.gates import Gates, removal_gates
from optimum_blockprune.model.hooks import layer_input


def token_losses(
    logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token cross-entropy of every position, shape [batch, seq-1], and the float mask of
    positions whose input and target are both real (non-padding) tokens."""
    ce = F.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]), input_ids[:, 1:].reshape(-1), reduction="none"
    ).view(input_ids.shape[0], -1)
    return ce, (attention_mask[:, 1:] * attention_mask[:, :-1]).float()


def per_sample_loss(
    logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """Mean next-token cross-entropy of each sample over its non-padding targets, shape [batch]."""
    ce, mask = token_losses(logits, input_ids, attention_mask)
    return (ce * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)


#: A removal unit: a Block, a block name, or a bare layer index (the whole layer).
Unit = Block | str | int
Config = frozenset[tuple[int, str]]


def moved(obj: Any, device: torch.device, memo: dict[int, torch.Tensor]) -> Any:
    """``obj`` with every tensor in it (through tuples, lists and dicts) on ``device``; a tensor
    met twice (layers share their position embeddings and masks) is moved once, through ``memo``."""
    if isinstance(obj, torch.Tensor):
        if id(obj) not in memo:
            memo[id(obj)] = obj.to(device)
        return memo[id(obj)]
    if isinstance(obj, tuple):
        items = [moved(o, device, memo) for o in obj]
        return type(obj)(*items) if hasattr(obj, "_fields") else tuple(items)
    if isinstance(obj, list):
        return [moved(o, device, memo) for o in obj]
    if isinstance(obj, dict):
        return {k: moved(v, device, memo) for k, v in obj.items()}
    return obj


class LossScorer:
    """Per-sample calibration losses of configurations that remove blocks: whole layers are
    skipped, single branches are gated to zero. Indices are the model's CURRENT layers (the
    original ones unless it was pruned before).

    ``cache_device``: where the cached layer inputs and their keyword tensors stay (default: where
    the model made them). ``processes`` (default: this process's ``accelerate launch``, if any):
    each process scores its contiguous share of the samples; every call that scores a new
    configuration is then a collective, made by every process in the same order."""

    def __init__(
        self,
        model: nn.Module,
        adapter: Adapter,
        data: CalibrationData,
        batch_size: int = 8,
        *,
        cache_device: str | torch.device | None = None,
        processes: Processes | None = None,
    ) -> None:
        self.model, self.adapter, self.data = model, adapter, data
        self.processes = processes or Processes.current()
        self.device = input_device(model)
        self.cache_device = None if cache_device is None else torch.device(cache_device)
        self.layers = list(adapter.decoder_layers(model))
        self.n_layers = len(self.layers)
        self._kinds = [set(adapter.branches(layer)) for layer in self.layers]
        self._branches = [Block(i, k, 0) for i, kinds in enumerate(self._kinds) for k in sorted(kinds)]
        self._branch_pos = {(b.layer, b.kind): p for p, b in enumerate(self._branches)}
        # Decoder-layer passes over the WHOLE calibration set (all processes together), memoised
        # results counted as recomputed: the same on every process and as in one process.
        self.requested_layer_calls = 0
        self._memo: dict[Config, np.ndarray] = {}
        self._batches = list(self.processes.shard(data).batches(batch_size))
        self._kwargs: list[list[dict]] = []
        self._inputs: list[list[torch.Tensor]] = []  # per batch, input of every layer under the base
        self.base: Config = frozenset()
        self._record_dense()

    @property
    def forward_equivalents(self) -> float:
        """Work asked for so far (memoised results counted as recomputed), in dense forward
        passes over the whole calibration set by all processes together: decoder-layer passes /
        number of layers. Not multiplied by the number of processes: each does its share."""
        return self.requested_layer_calls / self.n_layers

    def _store(self, obj: Any, memo: dict[int, torch.Tensor]) -> Any:
        """``obj`` as the cache keeps it: on ``cache_device``, or as it is."""
        return obj if self.cache_device is None else moved(obj, self.cache_device, memo)

    def _fetch(self, obj: Any, memo: dict[int, torch.Tensor]) -> Any:
        """A cached ``obj`` where the model takes it."""
        return obj if self.cache_device is None else moved(obj, self.device, memo)

    def normalise(self, units: Iterable[Unit]) -> Config:
        """Canonical ``{(layer, kind)}``: a layer that loses every branch becomes ``(layer, "layer")``."""
        whole: set[int] = set()
        parts: dict[int, set[str]] = {}
        for unit in units:
            if isinstance(unit, Block):
                i, kind = unit.layer, unit.kind
            elif isinstance(unit, str):
                i, kind = parse_block_name(unit)
            else:
                i, kind = int(unit), "layer"
            if kind == "layer":
                whole.add(i)
            else:
                parts.setdefault(i, set()).add(kind)
        out = {(i, "layer") for i in whole}
        for i, kinds in parts.items():
            if i not in whole:
                out |= {(i, "layer")} if kinds >= self._kinds[i] else {(i, k) for k in kinds}
        return frozenset(out)

    @torch.no_grad()
    def _record_dense(self) -> None:
        captured: list[tuple] = []

        def grab(module: nn.Module, args: tuple, kwargs: dict) -> None:
            captured.append(
                (
                    layer_input(args, kwargs),
                    {k: v for k, v in kwargs.items() if k != "hidden_states"},
                )
            )

        handles = [layer.register_forward_pre_hook(grab, with_kwargs=True) for layer in self.layers]
        try:
            for ids, mask in self._batches:
                captured.clear()
                ids, mask = ids.to(self.device), mask.to(self.device)
                self.model(input_ids=ids, attention_mask=mask, use_cache=False)
                memo: dict[int, torch.Tensor] = {}
                self._inputs.append([self._store(h, memo) for h, _ in captured])
                self._kwargs.append([self._store(kw, memo) for _, kw in captured])
        finally:
            for handle in handles:
                handle.remove()
        self.requested_layer_calls += self.n_layers

    def _gate_values(self, config: Config) -> torch.Tensor | None:
        """Branch gates of ``config`` (None when it removes no single branch)."""
        off = [self._branch_pos[(i, k)] for i, k in config if k != "layer"]
        return removal_gates(len(self._branches), off) if off else None

    def _run(self, gates: Gates, b: int, start: int, config: Config, record: bool = False) -> torch.Tensor:
        """Batch ``b`` through the layers of ``config`` from layer ``start``'s cached input; with
        ``record``, the cache takes every layer's new input."""
        gates.values = self._gate_values(config)
        memo: dict[int, torch.Tensor] = {}  # the batch's keyword tensors, shared by its layers
        hidden = self._fetch(self._inputs[b][start], {})
        for j in range(start, self.n_layers):
            if record:
                self._inputs[b][j] = self._store(hidden, {})
            if (j, "layer") in config:
                continue
            out = self.layers[j](hidden, **self._fetch(self._kwargs[b][j], memo))
            hidden = out[0] if isinstance(out, tuple) else out
        return hidden

    @torch.no_grad()
    def set_base(self, removed: Iterable[Unit]) -> None:
        """Make ``removed`` the base configuration (recomputes cached inputs after its first change)."""
        new = self.normalise(removed)
        changed = new.symmetric_difference(self.base)
        if not changed:
            return
        start = min(i for i, _ in changed)
        with Gates(self.model, self.adapter, self._branches) as gates:
            for b in range(len(self._batches)):
                self._run(gates, b, start, new, record=True)
        self.base = new

    @torch.no_grad()
    def losses(self, extra: Iterable[Unit] = ()) -> np.ndarray:
        """Per-sample losses of the configuration ``base ∪ extra``, every sample of the calibration
        set in order (under a launch: a collective, unless the configuration was scored before)."""
        removed = self.normalise([*self._units(self.base), *extra])
        changed = removed.symmetric_difference(self.base)
        start = min((i for i, _ in changed), default=self.n_layers - 1)
        self.requested_layer_calls += sum(
            1 for j in range(start, self.n_layers) if (j, "layer") not in removed
        )
        if removed in self._memo:
            return self._memo[removed]
        out = [np.zeros(0)]
        with Gates(self.model, self.adapter, self._branches) as gates:
            for b, (ids, mask) in enumerate(self._batches):
                hidden = self._run(gates, b, start, removed)
                logits = self.adapter.logits(self.model, hidden)
                ids, mask = ids.to(logits.device), mask.to(logits.device)
                out.append(per_sample_loss(logits, ids, mask).double().cpu().numpy())
        # contiguous shares in rank order: the gathered pieces are the samples in order
        self._memo[removed] = np.concatenate(self.processes.gather(np.concatenate(out)))
        return self._memo[removed]

    @staticmethod
    def _units(config: Config) -> list[str]:
        return [block_name(i, k) for i, k in config]

    def loss(self, extra: Iterable[Unit] = ()) -> float:
        """Mean calibration loss of ``base ∪ extra``."""
        return float(self.losses(extra).mean())
