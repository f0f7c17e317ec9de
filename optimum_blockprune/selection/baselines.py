"""Peer selection criteria behind one interface: ``BASELINES[name]`` chooses the blocks to remove,
and each is registered as a :class:`~optimum_blockprune.selection.registry.Method`.

Every selector gets the same request as this project's energy method (the model, its blocks at a
granularity, calibration data, a block count or counts per kind, ``protect`` / ``force``) and
returns the removed block names with its cost: forward passes over the calibration set (decoder
work in dense-forward equivalents), backward passes and seconds. Definitions follow the peers'
papers (see the README, "Baselines"); hidden states are captured with hooks on the decoder
layers, never from ``output_hidden_states`` (whose last entry is after the final norm).
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from optimum_blockprune.blocks import Block
from optimum_blockprune.data.calibration import CalibrationData
from optimum_blockprune.energy.distributed import Processes, input_device
from optimum_blockprune.errors import BlockPruneError
from optimum_blockprune.model.adapters.base import Adapter
from optimum_blockprune.model.gates import Gates, removal_gates
from optimum_blockprune.model.hooks import layer_input
from optimum_blockprune.selection.evopress import EvoPress, default_generations
from optimum_blockprune.selection.registry import Method, Request, Selection
from optimum_blockprune.selection.rules import Rules

# ---------------------------------------------------------------------------------------------
# Scores


def _forward(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> None:
    """A forward pass for its hooks only: the LM head runs on one position where the model allows."""
    kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, "use_cache": False}
    if "logits_to_keep" in inspect.signature(model.forward).parameters:
        kwargs["logits_to_keep"] = 1
    model(**kwargs)


def _first(output: object) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


@torch.no_grad()
def similarity_scores(
    model: nn.Module,
    adapter: Adapter,
    data: CalibrationData,
    blocks: Sequence[Block],
    batch_size: int = 8,
    off: Sequence[int] = (),
) -> np.ndarray:
    """ShortGPT block influence of every block: ``1 - mean_t cos(X, Y)`` over non-padding tokens.

    A whole layer: X its input, Y its output (Men et al.). A branch (attention / MLP / ...): X the
    residual stream before it, Y = X + its output (LLM-Drop's attention / MLP drop); the branches
    of a layer are chained in the order they run. ``off`` (block positions) are gated to zero
    first, as iterative ShortGPT does after each removal. NaN similarities count as 0.5. Under
    ``accelerate launch`` each process sums over its share of the samples and the sums are added.
    """
    layers = adapter.decoder_layers(model)
    sums = np.zeros(len(blocks))
    position = {(b.layer, b.kind): k for k, b in enumerate(blocks)}
    need_branches = any(b.kind != "layer" for b in blocks)
    state: dict[str, Any] = {"mask": None, "inputs": {}, "branch_out": {}}
    count = 0

    def add(key: tuple[int, str], x: torch.Tensor, y: torch.Tensor) -> None:
        if key in position:
            cos = torch.nan_to_num(F.cosine_similarity(x.float(), y.float(), dim=-1), nan=0.5)
            sums[position[key]] += float(cos[state["mask"].to(cos.device)].double().sum())

    def pre_hook(i: int):
        def fn(module: nn.Module, args: tuple, kwargs: dict) -> None:
            state["inputs"][i] = layer_input(args, kwargs)
            state["branch_out"][i] = []

        return fn

    def branch_hook(i: int, kind: str):
        def fn(module: nn.Module, args: tuple, output: object) -> None:
            state["branch_out"][i].append((kind, _first(output)))

        return fn

    def post_hook(i: int):
        def fn(module: nn.Module, args: tuple, kwargs: dict, output: object) -> None:
            x, y = state["inputs"][i], _first(output)
            add((i, "layer"), x, y)
            if need_branches:
                for kind, f in state["branch_out"][i]:
                    add((i, kind), x, x + f)
                    x = x + f
                if state["branch_out"][i] and not torch.allclose(
                    x.float(), y.float(), rtol=1e-3, atol=1e-3 * float(y.abs().max()) + 1e-5
                ):
                    raise BlockPruneError(
                        f"layer {i} does not add its branches to the residual stream one after another; "
                        "branch similarity needs --granularity layer"
                    )

        return fn

    gated = list(off)
    with Gates(model, adapter, blocks) as gates:
        gates.values = removal_gates(len(blocks), gated) if gated else None
        handles = []
        for i, layer in enumerate(layers):
            handles.append(layer.register_forward_pre_hook(pre_hook(i), with_kwargs=True))
            handles.append(layer.register_forward_hook(post_hook(i), with_kwargs=True))
            if need_branches:
                for kind, module in adapter.branches(layer).items():
                    handles.append(module.register_forward_hook(branch_hook(i, kind)))
        processes, device = Processes.current(), input_device(model)
        try:
            for ids, mask in processes.shard(data).batches(batch_size):
                ids, mask = ids.to(device), mask.to(device)
                state["mask"] = mask.bool()
                _forward(model, ids, mask)
                count += int(mask.sum())
        finally:
            for handle in handles:
                handle.remove()
    shares = processes.gather((sums, count))  # added in rank order: the same on every process
    total = sum(c for _, c in shares)
    return 1.0 - np.sum([s for s, _ in shares], axis=0) / max(total, 1)


def block_influence(
    model: nn.Module, adapter: Adapter, data: CalibrationData, batch_size: int = 8
) -> np.ndarray:
    """ShortGPT block influence per decoder layer: 1 - mean token cosine(layer input, layer output)."""
    return similarity_scores(model, adapter, data, adapter.blocks(model, "layer"), batch_size)


@torch.no_grad()
def residual_states(
    model: nn.Module, adapter: Adapter, data: CalibrationData, batch_size: int = 8
) -> torch.Tensor:
    """Residual stream at the last non-padding token of every sample: ``[samples, layers + 1, hidden]``
    (entry i is layer i's input; the last entry is the last layer's raw output, before the final norm),
    on the CPU; under ``accelerate launch`` each process runs its share and the rows are gathered."""
    layers = adapter.decoder_layers(model)
    states: list[torch.Tensor] = []
    current: dict[str, Any] = {}

    def take(h: torch.Tensor) -> torch.Tensor:
        return h[torch.arange(h.shape[0]), current["last"].to(h.device)].float().cpu()

    def pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        current["rows"].append(take(layer_input(args, kwargs)))

    def last_hook(module: nn.Module, args: tuple, output: object) -> None:
        current["rows"].append(take(_first(output)))

    handles = [layer.register_forward_pre_hook(pre_hook, with_kwargs=True) for layer in layers]
    handles.append(layers[-1].register_forward_hook(last_hook))
    processes, device = Processes.current(), input_device(model)
    try:
        for ids, mask in processes.shard(data).batches(batch_size):
            current["rows"] = []
            current["last"] = mask.long().sum(dim=1).clamp_min(1) - 1
            _forward(model, ids.to(device), mask.to(device))
            states.append(torch.stack(current["rows"], dim=1))
    finally:
        for handle in handles:
            handle.remove()
    return torch.cat([row for share in processes.gather(states) for row in share])


def angular_distances(states: torch.Tensor, n: int) -> np.ndarray:
    """Gromov et al.'s ``d(l, n) = mean_x arccos(cos(h_l, h_{l+n})) / pi`` for every start l."""
    a, b = states[:, : states.shape[1] - n], states[:, n:]
    cos = F.cosine_similarity(a, b, dim=-1).clamp(-1.0, 1.0)
    return (torch.arccos(cos) / math.pi).mean(dim=0).double().numpy()


def lowest(scores: np.ndarray, m: int, exclude: set[int] = frozenset()) -> list[int]:
    """Positions of the ``m`` smallest scores (one-shot selection), skipping ``exclude``."""
    order = [int(i) for i in np.argsort(scores, kind="stable") if int(i) not in exclude]
    return sorted(order[:m])


def random_configurations(n: int, m: int, count: int, seed: int = 0) -> list[list[int]]:
    """``count`` distinct random m-subsets of range(n)."""
    rng = np.random.default_rng(seed)
    seen: set[tuple[int, ...]] = set()
    while len(seen) < count:
        seen.add(tuple(sorted(rng.choice(n, size=m, replace=False).tolist())))
    return [list(c) for c in sorted(seen)]


# ---------------------------------------------------------------------------------------------
# The request every selector gets, and the quota (a block count) it must honour


class Quota:
    """How many blocks of which kind to remove, which never (``protect``) and which always (``force``).

    ``remove`` is a total count or counts per kind (kinds not named are kept); a block is never
    added when the request's :class:`Rules` refuse the result.
    """

    def __init__(self, rules: Rules, remove: int | Mapping[str, int]) -> None:
        self.rules = rules
        self.blocks = rules.blocks
        self.names = rules.names
        self.protect = set(rules.protect)
        self.force = list(rules.force)
        if self.protect & set(self.force):
            raise BlockPruneError("a block is both protected and forced; name it in only one of them")
        if isinstance(remove, Mapping):
            kinds = {b.kind for b in self.blocks}
            unknown = [k for k, c in remove.items() if c and k not in kinds]
            if unknown:
                raise BlockPruneError(
                    f"no {unknown[0]!r} blocks at this granularity (it has {', '.join(sorted(kinds))})"
                )
            self.counts: dict[str, int] | None = {k: int(c) for k, c in remove.items() if c}
            self.total = sum(self.counts.values())
        else:
            self.counts, self.total = None, int(remove)
        if not 0 < self.total < len(self.blocks):
            raise BlockPruneError(
                f"cannot remove {self.total} of {len(self.blocks)} blocks; choose between 1 and {len(self.blocks) - 1}"
            )
        if len(self.force) > self.total or (
            self.counts is not None
            and any(
                sum(self.blocks[k].kind == kind for k in self.force) > c for kind, c in self.counts.items()
            )
        ):
            raise BlockPruneError("the forced blocks alone exceed the requested count; raise --remove")

    def allowed(self, chosen: Sequence[int], k: int) -> bool:
        """May block ``k`` be added to ``chosen``?"""
        if k in chosen or k in self.protect or len(chosen) >= self.total:
            return False
        block = self.blocks[k]
        if self.counts is not None:
            if sum(self.blocks[j].kind == block.kind for j in chosen) >= self.counts.get(block.kind, 0):
                return False
        return self.rules.refusal([self.blocks[j].name for j in [*chosen, k]]) is None

    def candidates(self, chosen: Sequence[int]) -> list[int]:
        return [k for k in range(len(self.blocks)) if self.allowed(chosen, k)]

    def full(self, chosen: Sequence[int]) -> bool:
        return len(chosen) >= self.total

    def lowest(self, scores: Sequence[float], chosen: Sequence[int] | None = None) -> list[int]:
        """Fill the quota with the lowest-scoring allowed blocks, after ``chosen`` (default: forced)."""
        chosen = list(self.force if chosen is None else chosen)
        for k in np.argsort(np.asarray(scores, dtype=float), kind="stable"):
            if self.full(chosen):
                break
            if self.allowed(chosen, int(k)):
                chosen.append(int(k))
        if not self.full(chosen):
            raise BlockPruneError(
                f"only {len(chosen)} of the {self.total} requested blocks can be removed "
                "with these protect / per-kind settings and the architecture's rules; ask for fewer"
            )
        return chosen


@dataclass
class BaselineRequest:
    """Everything a selector may use."""

    model: nn.Module
    adapter: Adapter
    data: CalibrationData
    blocks: list[Block]
    quota: Quota
    granularity: str = "layer"
    batch_size: int = 8
    seed: int = 0
    progress: bool = False
    scorer: Any = None  # a LossScorer to reuse (its dense pass and memo), or None
    cache_device: str | torch.device | None = None  # where a new LossScorer caches layer inputs
    generations: int | None = None  # evopress's budget (None: its default)

    def loss_scorer(self) -> Any:
        from optimum_blockprune.energy.scoring import LossScorer

        if self.scorer is None:
            self.scorer = LossScorer(
                self.model, self.adapter, self.data, self.batch_size, cache_device=self.cache_device
            )
        return self.scorer


@dataclass
class Cost:
    """Work done while choosing: dense forward-pass equivalents over the calibration set,
    backward passes, wall-clock seconds."""

    forward_passes: float = 0.0
    backward_passes: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {
            "forward_passes": round(float(self.forward_passes), 2),
            "backward_passes": int(self.backward_passes),
            "seconds": round(float(self.seconds), 3),
        }


@dataclass
class MethodSelection:
    """The removed block names (in selection order), the cost, and each step for greedy methods."""

    method: str
    removed: list[str]
    cost: Cost
    #: Greedy methods: after each pick, ``{"removed": [...], **cost}`` (a prefix is the method's
    #: answer for that smaller count).
    steps: list[dict[str, Any]] = field(default_factory=list)
    scores: list[float] | None = None


Selector = Callable[[BaselineRequest, Cost], "tuple[list[int], list[float] | None, list[dict]]"]


@dataclass(frozen=True)
class Baseline:
    name: str
    selector: Selector
    granularities: tuple[str, ...]
    help: str
    #: Its steps are a search's trajectory (fitness vs forward passes), kept in the report's cost.
    trajectory: bool = False


# ---------------------------------------------------------------------------------------------
# Selectors: (request, cost) -> (chosen positions, one-shot scores or None, greedy steps)


def _step(request: BaselineRequest, chosen: list[int], cost: Cost, t0: float) -> dict[str, Any]:
    cost.seconds = time.perf_counter() - t0
    return {"removed": [request.blocks[k].name for k in chosen], **cost.as_dict()}


def _shortgpt(request: BaselineRequest, cost: Cost) -> tuple[list[int], list[float], list]:
    scores = similarity_scores(
        request.model, request.adapter, request.data, request.blocks, request.batch_size
    )
    cost.forward_passes += 1
    return request.quota.lowest(scores), scores.tolist(), []


def _shortgpt_iterative(request: BaselineRequest, cost: Cost) -> tuple[list[int], None, list]:
    quota, t0 = request.quota, time.perf_counter()
    chosen, steps = list(quota.force), []
    bar = tqdm(
        total=quota.total, initial=len(chosen), desc="shortgpt-iterative", disable=not request.progress
    )
    while not quota.full(chosen):
        scores = similarity_scores(
            request.model, request.adapter, request.data, request.blocks, request.batch_size, off=chosen
        )
        cost.forward_passes += 1
        chosen = quota.lowest(scores, chosen)[: len(chosen) + 1]
        steps.append(_step(request, chosen, cost, t0))
        bar.update(1)
    bar.close()
    return chosen, None, steps


def _angular(request: BaselineRequest, cost: Cost) -> tuple[list[int], list[float], list]:
    quota = request.quota
    if quota.counts is not None and set(quota.counts) != {"layer"}:
        raise BlockPruneError("angular removes whole layers; give a layer count, not counts per kind")
    if quota.force:
        raise BlockPruneError("angular removes one contiguous window of layers; it cannot force blocks")
    n = quota.total
    states = residual_states(request.model, request.adapter, request.data, request.batch_size)
    cost.forward_passes += 1
    d = angular_distances(states, n)
    starts = [
        s
        for s in range(len(d))
        if not any(k in quota.protect for k in range(s, s + n))
        and quota.rules.refusal([request.blocks[k].name for k in range(s, s + n)]) is None
    ]
    if not starts:
        raise BlockPruneError(
            f"no window of {n} layers avoids the protected blocks and the architecture's rules; remove fewer"
        )
    best = min(starts, key=lambda s: (d[s], s))
    return list(range(best, best + n)), d.tolist(), []


def _last(request: BaselineRequest, cost: Cost) -> tuple[list[int], None, list]:
    order = -np.arange(len(request.blocks), dtype=float)  # the last blocks score lowest
    return request.quota.lowest(order), None, []


def _greedy_loss(request: BaselineRequest, cost: Cost, name: str) -> tuple[list[int], None, list]:
    """Greedy on real calibration loss: add the block whose removal (on top of the blocks removed
    so far) gives the lowest loss (SLEB's NLL / BlockPruner's perplexity: the same argmin)."""
    quota, t0 = request.quota, time.perf_counter()
    scorer = request.loss_scorer()
    work_before = scorer.forward_equivalents
    chosen, steps = list(quota.force), []
    bar = tqdm(total=quota.total, initial=len(chosen), desc=name, disable=not request.progress)
    while not quota.full(chosen):
        scorer.set_base([request.blocks[k] for k in chosen])
        candidates = quota.candidates(chosen)
        losses = [scorer.loss([request.blocks[k]]) for k in candidates]
        chosen.append(candidates[int(np.argmin(losses))])
        # + 1: the dense pass that records every layer's input (counted even when the scorer is shared)
        cost.forward_passes = scorer.forward_equivalents - work_before + 1.0
        steps.append(_step(request, chosen, cost, t0))
        bar.update(1)
    bar.close()
    scorer.set_base([])
    return chosen, None, steps


def _sleb(request: BaselineRequest, cost: Cost) -> tuple[list[int], None, list]:
    return _greedy_loss(request, cost, "sleb")


def _blockpruner(request: BaselineRequest, cost: Cost) -> tuple[list[int], None, list]:
    return _greedy_loss(request, cost, "blockpruner")


def _evopress(request: BaselineRequest, cost: Cost) -> tuple[list[int], None, list]:
    """EvoPress on the scorer's objective (see :mod:`.evopress`); each offspring is scored from its
    first difference with the parent, whose layer inputs the scorer caches (that recomputation
    counted too)."""
    quota, blocks, scorer = request.quota, request.blocks, request.loss_scorer()
    work_before = scorer.forward_equivalents

    def names(config: tuple[int, ...]) -> list[str]:
        return [blocks[k].name for k in config]

    def rebase(parent: tuple[int, ...]) -> None:
        scorer.set_base(names(parent), count=True)

    def work() -> float:  # + 1: the dense pass that records every layer's input
        return scorer.forward_equivalents - work_before + 1.0

    def fitness(config: tuple[int, ...], rows: np.ndarray) -> float:
        return float(scorer.configuration_losses(names(config), rows).mean())

    search = EvoPress(quota, fitness, scorer.n_samples, request.seed, work, rebase)
    generations = request.generations or default_generations(len(blocks), quota.total)
    with tqdm(total=generations, desc="evopress", disable=not request.progress) as bar:
        chosen = search.run(generations, names, step=lambda: bar.update(1))
    scorer.set_base([])
    cost.forward_passes = work()
    return list(chosen), None, search.trajectory.points


def _taylor(request: BaselineRequest, cost: Cost) -> tuple[list[int], list[float], list]:
    from optimum_blockprune.energy.gradients import gate_gradients

    A, _ = gate_gradients(
        request.model,
        request.adapter,
        request.blocks,
        request.data,
        request.batch_size,
        progress=request.progress,
    )
    cost.forward_passes += 1
    cost.backward_passes += 1
    scores = -A.mean(axis=0)  # first-order loss change of switching each gate from 1 to 0
    return request.quota.lowest(scores), scores.tolist(), []


def _random(request: BaselineRequest, cost: Cost) -> tuple[list[int], None, list]:
    scores = np.random.default_rng(request.seed).random(len(request.blocks))
    return request.quota.lowest(scores), None, []


ALL = ("layer", "sublayer", "mixed")
BASELINES: dict[str, Baseline] = {
    m.name: m
    for m in (
        Baseline("shortgpt", _shortgpt, ALL, "ShortGPT block influence 1 - cos(in, out), one shot"),
        Baseline("shortgpt-iterative", _shortgpt_iterative, ALL, "ShortGPT, recomputed after each removal"),
        Baseline(
            "angular", _angular, ("layer",), "Gromov et al.: the contiguous window of least angular change"
        ),
        Baseline("last", _last, ALL, "the last N blocks (reverse order)"),
        Baseline(
            "sleb", _sleb, ("layer",), "SLEB: greedy, each step the layer whose removal costs least loss"
        ),
        Baseline(
            "blockpruner", _blockpruner, ("sublayer",), "BlockPruner: greedy on loss over attn/mlp sublayers"
        ),
        Baseline("taylor", _taylor, ALL, "first-order gate score -dL/dg (one backward pass)"),
        Baseline("random", _random, ALL, "a random valid configuration (seeded)"),
        Baseline(
            "evopress",
            _evopress,
            ALL,
            "EvoPress: (1+32) evolutionary search, swap mutations, multi-fidelity selection on real loss",
            trajectory=True,
        ),
    )
}


def select_baseline(
    method: str,
    model: nn.Module,
    adapter: Adapter,
    data: CalibrationData,
    remove: int | Mapping[str, int],
    *,
    granularity: str = "layer",
    protect: Iterable[str] = (),
    force: Iterable[str] = (),
    batch_size: int = 8,
    seed: int = 0,
    progress: bool = False,
    scorer: Any = None,
    cache_device: str | torch.device | None = None,
    generations: int | None = None,
) -> MethodSelection:
    """Choose blocks with a peer method; ``remove`` is a count or counts per kind; ``cache_device``:
    where a new loss scorer keeps its cached layer inputs (default: the model's device);
    ``generations``: evopress's budget (default: its paper's)."""
    if method not in BASELINES:
        raise BlockPruneError(f"unknown method {method!r}; choose one of {', '.join(BASELINES)}")
    spec = BASELINES[method]
    if granularity not in spec.granularities:
        raise BlockPruneError(
            f"method {method!r} works at granularity {' or '.join(spec.granularities)}, not {granularity!r}; "
            f"pass --granularity {spec.granularities[0]} or choose another method"
        )
    blocks = adapter.blocks(model, granularity)
    quota = Quota(Rules(model, adapter, blocks, protect, force), remove)
    request = BaselineRequest(
        model,
        adapter,
        data,
        blocks,
        quota,
        granularity,
        batch_size,
        seed,
        progress,
        scorer,
        cache_device,
        generations,
    )
    cost, t0 = Cost(), time.perf_counter()
    chosen, scores, steps = spec.selector(request, cost)
    cost.seconds = time.perf_counter() - t0
    return MethodSelection(method, [blocks[k].name for k in chosen], cost, steps, scores)


def _select(name: str, request: Request) -> Selection:
    """The baseline ``name`` as a registered method: a block count only; its cost excludes the
    dense and pruned calibration losses measured for the report."""
    config = request.config
    remove, min_params = config.removal_target(request.blocks, request.model_params)
    if remove is None or min_params is not None:
        raise BlockPruneError(
            f"method {name!r} takes a block count (--remove or --ratio), not a parameter "
            "budget; use --method energy for --target-params / --param-ratio"
        )
    data, scorer = request.data(), request.loss_scorer()
    choice = select_baseline(
        name,
        request.model,
        request.adapter,
        data,
        remove,
        granularity=config.granularity,
        protect=config.protect or (),
        force=config.force or (),
        batch_size=config.batch_size,
        seed=config.seed,
        progress=request.progress,
        scorer=scorer,
        generations=config.generations,
    )
    scorer.set_base([])
    dense_loss, pruned_loss = scorer.loss(), scorer.loss(choice.removed)
    cost: dict[str, Any] = {**choice.cost.as_dict(), "calibration_tokens": data.num_tokens}
    if BASELINES[name].trajectory:
        cost["trajectory"] = choice.steps
    names = [b.name for b in request.blocks]
    removed = sorted(choice.removed, key=names.index)
    summary = f"the {name} baseline ({BASELINES[name].help})"
    return Selection(removed, dense_loss, pruned_loss, [], cost, method=name, summary=summary)


def baseline_methods() -> list[Method]:
    """Every baseline as a registered :class:`Method`."""
    return [Method(b.name, partial(_select, b.name), b.granularities, b.help) for b in BASELINES.values()]
