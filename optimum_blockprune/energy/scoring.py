"""Real calibration loss of configurations that remove blocks, computed fast.

One dense forward per batch records each decoder layer's call arguments; a configuration is
then scored by running only its kept layers (single removed branches gated to zero). A *base* configuration keeps every layer's input
cached, so scoring ``base ∪ extra`` starts at the first extra layer instead of the embedding.

Under ``accelerate launch`` each process scores its contiguous share of the calibration samples
and the per-sample losses are gathered back in sample order, so every process holds the same
loss vectors and takes the same decisions. The cached layer inputs may live on another device
than the model (``cache_device="cpu"`` beside a GPU model): each batch goes to the model when used.

The objective is next-token cross-entropy (``"ce"``) or the KL divergence from the dense model's
next-token distribution (``"kl"``, see :func:`topk_kl`); a subset of the samples can be scored
alone (``samples=``), which is what multi-fidelity searches use.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from optimum_blockprune.blocks import Block, block_name, parse_block_name
from optimum_blockprune.config import OBJECTIVES
from optimum_blockprune.data.calibration import CalibrationData
from optimum_blockprune.energy.distributed import Processes, input_device
from optimum_blockprune.errors import BlockPruneError
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


#: Dense next-token log-probabilities kept per position for the KL objective: memory
#: ``samples x (seq - 1) x (KL_TOP_K x (4 + 4) + 4)`` bytes (ids, log-probabilities, rest).
KL_TOP_K = 128

Reference = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def topk_reference(logits: torch.Tensor, k: int = KL_TOP_K) -> Reference:
    """What :func:`topk_kl` needs of the dense model's ``logits`` [batch, seq, vocab]: for every
    position but the last, the ids (int32) and log-probabilities (float32) of its ``k`` most
    likely next tokens and the log of the probability left to the others (``-inf`` when k >= vocab)."""
    logp = logits[:, :-1].float().log_softmax(dim=-1)
    top, ids = logp.topk(min(k, logp.shape[-1]), dim=-1)
    if ids.shape[-1] == logp.shape[-1]:
        rest = torch.full(top.shape[:-1], float("-inf"), device=top.device)
    else:
        rest = logp.scatter(-1, ids, float("-inf")).logsumexp(dim=-1)
    return ids.int(), top, rest


def topk_kl(logits: torch.Tensor, reference: Reference) -> torch.Tensor:
    """KL(p || q) of every position but the last, shape [batch, seq-1]: p the dense model's
    next-token distribution (``reference``, from :func:`topk_reference`), q the one of ``logits``,
    both coarse-grained to k + 1 outcomes, the dense top-k tokens and "any other token":

        sum_{i in T} p_i (log p_i - log q_i) + p_R (log p_R - log q_R),  p_R = 1 - sum_{i in T} p_i.

    Why this estimator: it is the exact KL of two proper distributions, so it is >= 0 and 0 when
    q = p; it never exceeds the full-vocabulary KL (merging outcomes cannot raise a KL) and equals
    it when k >= vocab (then R is empty); and it needs only the dense top-k, not every logit.
    Dropping the rest term instead would give a truncated sum that can be negative."""
    ids, logp, rest_p = reference
    logq = logits[:, :-1].float().log_softmax(dim=-1)
    ids = ids.long()
    kl = (logp.exp() * (logp - logq.gather(-1, ids))).sum(dim=-1)
    if not torch.isinf(rest_p).all():
        rest_q = logq.scatter(-1, ids, float("-inf")).logsumexp(dim=-1)
        term = rest_p.exp() * (rest_p - rest_q)
        kl = kl + torch.where(torch.isinf(rest_p), torch.zeros_like(term), term)
    return kl


def per_sample_kl(logits: torch.Tensor, reference: Reference, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean :func:`topk_kl` of each sample over the positions :func:`token_losses` counts, shape [batch]."""
    mask = (attention_mask[:, 1:] * attention_mask[:, :-1]).float()
    return (topk_kl(logits, reference) * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)


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


def rows_of(obj: Any, rows: torch.Tensor, n: int, memo: dict[int, Any]) -> Any:
    """``obj`` with the ``rows`` of every per-sample tensor in it (at least 2-D, first dimension
    ``n``, the batch size; others, such as a shared position embedding, as they are)."""
    if isinstance(obj, torch.Tensor):
        if obj.dim() < 2 or obj.shape[0] != n:
            return obj
        if id(obj) not in memo:
            memo[id(obj)] = obj.index_select(0, rows.to(obj.device))
        return memo[id(obj)]
    if isinstance(obj, tuple):
        items = [rows_of(o, rows, n, memo) for o in obj]
        return type(obj)(*items) if hasattr(obj, "_fields") else tuple(items)
    if isinstance(obj, list):
        return [rows_of(o, rows, n, memo) for o in obj]
    if isinstance(obj, dict):
        return {k: rows_of(v, rows, n, memo) for k, v in obj.items()}
    return obj


class LossScorer:
    """Per-sample calibration losses of configurations that remove blocks: whole layers are
    skipped, single branches are gated to zero. Indices are the model's CURRENT layers (the
    original ones unless it was pruned before).

    ``objective``: ``"ce"`` (next-token cross-entropy) or ``"kl"`` (KL divergence from the dense
    model's next-token distribution over its ``top_k`` tokens, :func:`topk_kl`; the dense top-k is
    cached beside the layer inputs). ``cache_device``: where the cached layer inputs, their keyword
    tensors and the top-k stay (default: where the model made them). ``processes`` (default: this
    process's ``accelerate launch``, if any): each process scores its contiguous share of the
    samples; every call that scores a new configuration (or new samples of one) is then a
    collective, made by every process in the same order."""

    def __init__(
        self,
        model: nn.Module,
        adapter: Adapter,
        data: CalibrationData,
        batch_size: int = 8,
        *,
        cache_device: str | torch.device | None = None,
        processes: Processes | None = None,
        objective: str = "ce",
        top_k: int = KL_TOP_K,
    ) -> None:
        if objective not in OBJECTIVES:
            raise BlockPruneError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
        self.model, self.adapter, self.data = model, adapter, data
        self.objective, self.top_k = objective, int(top_k)
        self.processes = processes or Processes.current()
        self.device = input_device(model)
        self.cache_device = None if cache_device is None else torch.device(cache_device)
        self.layers = list(adapter.decoder_layers(model))
        self.n_layers = len(self.layers)
        self.n_samples = len(data)
        self._kinds = [set(adapter.branches(layer)) for layer in self.layers]
        self._branches = [Block(i, k, 0) for i, kinds in enumerate(self._kinds) for k in sorted(kinds)]
        self._branch_pos = {(b.layer, b.kind): p for p, b in enumerate(self._branches)}
        # Decoder-layer passes over the WHOLE calibration set (all processes together), memoised
        # results counted as recomputed: the same on every process and as in one process; a
        # subset of the samples counts at its share.
        self.requested_layer_calls = 0.0
        # per configuration: every sample's loss, and which of them are known
        self._memo: dict[Config, tuple[np.ndarray, np.ndarray]] = {}
        self.batch_size = batch_size
        self._first = self.processes.bounds(self.n_samples)[0]  # this process's first sample
        self._batches = list(self.processes.shard(data).batches(batch_size))
        self._kwargs: list[list[dict]] = []
        self._inputs: list[list[torch.Tensor]] = []  # per batch, input of every layer under the base
        self._reference: list[Reference] = []  # per batch, the dense top-k (objective "kl")
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
                out = self.model(input_ids=ids, attention_mask=mask, use_cache=False)
                memo: dict[int, torch.Tensor] = {}
                self._inputs.append([self._store(h, memo) for h, _ in captured])
                self._kwargs.append([self._store(kw, memo) for _, kw in captured])
                if self.objective == "kl":
                    self._reference.append(self._store(topk_reference(out.logits, self.top_k), {}))
                del out
        finally:
            for handle in handles:
                handle.remove()
        self.requested_layer_calls += self.n_layers

    def _gate_values(self, config: Config) -> torch.Tensor | None:
        """Branch gates of ``config`` (None when it removes no single branch)."""
        off = [self._branch_pos[(i, k)] for i, k in config if k != "layer"]
        return removal_gates(len(self._branches), off) if off else None

    def _run(
        self,
        gates: Gates,
        b: int,
        start: int,
        config: Config,
        record: bool = False,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Batch ``b`` (only its ``rows``, if given) through the layers of ``config`` from layer
        ``start``'s cached input; with ``record``, the cache takes every layer's new input."""
        gates.values = self._gate_values(config)
        memo: dict[int, torch.Tensor] = {}  # the batch's keyword tensors, shared by its layers
        picked: dict[int, Any] = {}
        n = self._inputs[b][start].shape[0]

        def take(obj: Any) -> Any:
            return obj if rows is None else rows_of(obj, rows, n, picked)

        hidden = take(self._fetch(self._inputs[b][start], {}))
        for j in range(start, self.n_layers):
            if record:
                self._inputs[b][j] = self._store(hidden, {})
            if (j, "layer") in config:
                continue
            out = self.layers[j](hidden, **take(self._fetch(self._kwargs[b][j], memo)))
            hidden = out[0] if isinstance(out, tuple) else out
        return hidden

    @torch.no_grad()
    def set_base(self, removed: Iterable[Unit], count: bool = False) -> None:
        """Make ``removed`` the base configuration (recomputes cached inputs after its first
        change); ``count``: add that work to :attr:`forward_equivalents` (a search that moves its
        base as it goes counts it, since the move is part of its work)."""
        new = self.normalise(removed)
        changed = new.symmetric_difference(self.base)
        if not changed:
            return
        start = min(i for i, _ in changed)
        if count:
            self.requested_layer_calls += sum(
                1 for j in range(start, self.n_layers) if (j, "layer") not in new
            )
        with Gates(self.model, self.adapter, self._branches) as gates:
            for b in range(len(self._batches)):
                self._run(gates, b, start, new, record=True)
        self.base = new

    def losses(self, extra: Iterable[Unit] = (), samples: Iterable[int] | None = None) -> np.ndarray:
        """Per-sample losses of the configuration ``base ∪ extra``: every sample of the calibration
        set in order, or only ``samples`` (indices, returned in increasing order). Under a launch:
        a collective, unless those samples of the configuration were scored before."""
        return self.configuration_losses([*self._units(self.base), *extra], samples)

    @torch.no_grad()
    def configuration_losses(
        self, removed: Iterable[Unit], samples: Iterable[int] | None = None
    ) -> np.ndarray:
        """Per-sample losses of the configuration that removes exactly ``removed`` (blocks of the
        base it does not name are kept), computed from the layer where it first differs from the
        base; ``samples`` as in :meth:`losses`."""
        config = self.normalise(removed)
        rows = self._sample_rows(samples)
        changed = config.symmetric_difference(self.base)
        start = min((i for i, _ in changed), default=self.n_layers - 1)
        passes = sum(1 for j in range(start, self.n_layers) if (j, "layer") not in config)
        self.requested_layer_calls += passes * len(rows) / max(self.n_samples, 1)
        values, known = self._memo.setdefault(
            config, (np.zeros(self.n_samples), np.zeros(self.n_samples, dtype=bool))
        )
        todo = rows[~known[rows]]  # the same on every process: the memo is
        if todo.size:
            mine = self._score(config, start, todo)
            # contiguous shares in rank order: the gathered pieces are the samples in order
            values[todo] = np.concatenate(self.processes.gather(mine))
            known[todo] = True
        return values if rows.size == self.n_samples else values[rows]

    def _sample_rows(self, samples: Iterable[int] | None) -> np.ndarray:
        if samples is None:
            return np.arange(self.n_samples)
        rows = np.unique(np.asarray(list(samples), dtype=np.int64))
        if rows.size and (rows[0] < 0 or rows[-1] >= self.n_samples):
            raise BlockPruneError(f"sample indices must lie in [0, {self.n_samples}), got {rows.tolist()}")
        return rows

    def _score(self, config: Config, start: int, todo: np.ndarray) -> np.ndarray:
        """This process's losses of ``config`` on the samples ``todo`` in its share, in order."""
        out = [np.zeros(0)]
        with Gates(self.model, self.adapter, self._branches) as gates:
            for b, (ids, mask) in enumerate(self._batches):
                first = self._first + b * self.batch_size
                local = todo[(todo >= first) & (todo < first + len(ids))] - first
                if local.size == 0:
                    continue
                rows = None if local.size == len(ids) else torch.as_tensor(local)
                hidden = self._run(gates, b, start, config, rows=rows)
                logits = self.adapter.logits(self.model, hidden)
                if rows is not None:
                    ids, mask = ids[rows], mask[rows]
                ids, mask = ids.to(logits.device), mask.to(logits.device)
                if self.objective == "kl":
                    reference = self._fetch(self._reference[b], {})
                    if rows is not None:
                        reference = tuple(t[rows.to(t.device)] for t in reference)
                    reference = tuple(t.to(logits.device) for t in reference)
                    loss = per_sample_kl(logits, reference, mask)
                else:
                    loss = per_sample_loss(logits, ids, mask)
                out.append(loss.double().cpu().numpy())
        return np.concatenate(out)

    @staticmethod
    def _units(config: Config) -> list[str]:
        return [block_name(i, k) for i, k in config]

    def loss(self, extra: Iterable[Unit] = (), samples: Iterable[int] | None = None) -> float:
        """Mean calibration loss of ``base ∪ extra`` (over ``samples`` only, if given)."""
        return float(self.losses(extra, samples).mean())
