"""This project's method as one :class:`~optimum_blockprune.selection.registry.Method`: build the
energy model, solve for the lowest-energy configurations, rerank the top-K by real calibration
loss, then improve the best by an energy-guided swap search on real loss until no single swap
helps (:mod:`.local_search`). The ``recentred`` energy does the first three in rounds, each
round's choice fixed for the next."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from optimum_blockprune.blocks import Block, positions
from optimum_blockprune.config import SEARCH_BUDGET_SHARE
from optimum_blockprune.energy.distributed import Processes
from optimum_blockprune.energy.model import EnergyModel, penalise_overlaps
from optimum_blockprune.energy.variants import GRADIENT_VARIANTS, analyze
from optimum_blockprune.errors import BlockPruneError, SettingError
from optimum_blockprune.model.latency import CostTable, measure_costs
from optimum_blockprune.selection.local_search import search, search_record, swap_space
from optimum_blockprune.selection.registry import ENERGY_METHOD, Method, Request, Selection
from optimum_blockprune.selection.rerank import rerank
from optimum_blockprune.selection.rules import Rules
from optimum_blockprune.solvers import solution_names, solve

if TYPE_CHECKING:
    from optimum_blockprune.config import BlockPruneConfig

#: Blocks added per re-centring round of the ``recentred`` energy.
RECENTRE_STEP = 2
#: In later rounds, only this many of the previous round's cheapest blocks are rescanned.
RECENTRE_POOL = 12

SUMMARY = (
    "minimising a quadratic energy over removal configurations (a constrained binary problem), "
    "then the best candidates were checked on real calibration loss and the best improved by "
    "single swaps until none lowered it"
)


def round_energy(request: Request, base: list[str], exclude: list[str]) -> EnergyModel:
    """The energy model of one round at the configuration that removes ``base``."""
    config, names = request.config, [b.name for b in request.blocks]
    data = request.data()
    energy = analyze(
        config.energy,
        request.model,
        request.adapter,
        request.blocks,
        data,
        config.batch_size,
        base=positions(names, base),
        exclude=positions(names, exclude),
        scorer=request.loss_scorer(),
        progress=request.progress,
    )
    energy.metadata.update(
        {
            "model_id": request.model_id,
            "model_params": request.model_params,
            "calibration": data.metadata,
            "num_tokens": data.num_tokens,
        }
    )
    return energy


def select_energy(request: Request) -> Selection:
    """Solve (in re-centring rounds for ``recentred``, each round's ground state fixed for the
    next), then rerank the last round's top-K candidates by their real calibration loss."""
    t_start = time.perf_counter()
    config, blocks = request.config, request.blocks
    names = [b.name for b in blocks]
    remove, min_params = config.removal_target(blocks, request.model_params, timed=True)
    rules = Rules(request.model, request.adapter, blocks, config.protect or (), config.force or ())
    table, weights = None, None
    if config.latency_budget:  # timed first, on the plain model (before any scorer hook)
        table = measure_costs(request.model, request.adapter, blocks, **config.latency_settings())
        weights, min_params = latency_budget(table, config, blocks, remove, rules.protect_names)
    scorer = request.loss_scorer()
    work_before = scorer.forward_equivalents
    dense_loss = scorer.loss()
    chosen, pool = list(rules.force_names), None
    rounds: list[dict[str, Any]] = []
    energies: list[EnergyModel] = []
    targets = round_targets(
        remove, min_params, [blocks[i] for i in rules.force], blocks, config.energy, weights
    )
    if request.energy is not None:  # a saved analysis: one round on it
        targets = targets[-1:]
    final = target_count(remove, min_params, blocks, weights)
    known: dict[str, float] = {}  # each free block's field when it was last measured
    bar = tqdm(total=len(targets), desc="selection", unit="round", disable=not request.progress)
    for r, (target, target_params) in enumerate(targets):
        t0, last = time.perf_counter(), r == len(targets) - 1
        bar.set_description(f"selection round {r + 1}/{len(targets)}")
        if pool is not None:  # keep enough free blocks in play to reach the last round's target
            pool = refill(pool, chosen, known, blocks, final - len(chosen) + RECENTRE_STEP)
        exclude = [n for n in names if pool is not None and n not in pool and n not in chosen]
        energy = request.energy or round_energy(request, chosen, exclude)
        energies.append(energy)
        taken = {*chosen, *exclude, *rules.protect_names}
        known.update({n: float(energy.fields[i]) for i, n in enumerate(names) if n not in taken})
        pool = cheapest_per_kind(energy, blocks, [i for i, n in enumerate(names) if n not in taken])
        samples, keep = _solve_round(
            request, rules, weighted(energy, weights), (target, target_params), chosen, exclude, last
        )
        # a time-limited solver may end differently in each process: all rerank the main one's
        samples, keep = Processes.current().broadcast((samples, keep))
        candidates = [c for c, k in zip(solution_names(samples), keep, strict=True) if k]
        scores = rerank(scorer, candidates, base=chosen, progress=request.progress)
        best = int(np.argmin(scores))
        chosen = candidates[best]
        rounds.append(_round_record(samples, keep, candidates, scores, best, target, target_params, t0))
        bar.update()
    bar.close()
    searched = None
    if config.search != "none":
        before = scorer.forward_equivalents - work_before + 1
        budget = config.search_budget
        if budget is None and config.search == "swap":
            budget = SEARCH_BUDGET_SHARE * before
        space = swap_space(blocks, rules, isinstance(remove, dict), min_params, weights)
        result = search(scorer, blocks, space, chosen, energies, budget, request.progress)
        chosen = [blocks[i].name for i in result.removed]
        searched = search_record(result, before, budget)
    scorer.set_base([])
    pruned_loss = scorer.loss(chosen)
    backward = len(energies) if config.energy in GRADIENT_VARIANTS else 0
    cost = {  # + 1: the dense pass that records every layer's input
        "forward_equivalents": round(scorer.forward_equivalents - work_before + 1, 2),
        "backward_passes": backward,
        "calibration_tokens": request.data().num_tokens,
    }
    cost["forward_passes"] = cost["forward_equivalents"]
    cost["seconds"] = round(time.perf_counter() - t_start, 3)
    removed = sorted(chosen, key=names.index)
    if searched is not None:
        cost["search"] = searched
    if table is not None:
        cost["latency"] = latency_record(table, config, removed)
        for record in rounds:  # the knapsack's weights were cost units, not parameters
            record["min_latency_units"] = record.pop("min_params")
    return Selection(removed, dense_loss, pruned_loss, rounds, cost, energies, ENERGY_METHOD, SUMMARY)


def _solve_round(
    request: Request,
    rules: Rules,
    energy: EnergyModel,
    target: tuple[Any, int | None],
    chosen: list[str],
    exclude: list[str],
    last: bool,
) -> tuple[Any, np.ndarray]:
    """The round's lowest-energy configurations and which of them the rules allow. Intermediate
    rounds keep their ground state; only the last round's top-K is reranked (measured on SmolLM2:
    reranking every round did 40% more work at M=8 and picked the same layers)."""
    config, conflicts = request.config, rules.conflicts
    for top_k in dict.fromkeys([config.top_k if last else 1, config.top_k]):
        samples = solve(
            penalise_overlaps(energy, conflicts) if conflicts else energy,
            target[0],
            min_params=target[1],
            solver=config.solver,
            top_k=top_k,
            protect=rules.protect_names + exclude,
            force=chosen,
        )
        reasons = [rules.refusal(c) for c in solution_names(samples)]
        keep = np.array([r is None for r in reasons])
        if keep.any():  # an intermediate round whose ground state is refused retries with top-K
            break
    if not keep.any():
        raise BlockPruneError(
            f"every one of the {len(reasons)} lowest-energy candidates is refused ({reasons[0]}); "
            "raise --top-k or protect a block"
        )
    if not last:  # an intermediate round keeps its lowest-energy allowed configuration
        keep[np.flatnonzero(keep)[1:]] = False
    return samples, keep


def _round_record(samples, keep, candidates, scores, best, target, target_params, t0) -> dict[str, Any]:
    return {
        "target": target,
        "min_params": target_params,
        "candidates": [
            {"removed": c, "energy": float(e), "loss": float(s)}
            for c, e, s in zip(candidates, samples.record.energy[keep], scores, strict=True)
        ],
        "chosen": best,
        "solver": {
            k: v for k, v in samples.info.items() if isinstance(v, (bool, int, float, str, type(None)))
        },
        "seconds": time.perf_counter() - t0,
    }


def round_targets(
    remove: int | dict | None,
    min_params: int | None,
    forced: list[Block],
    blocks: list[Block],
    variant: str,
    weights: Sequence[int] | None = None,
) -> list[tuple[int | dict | None, int | None]]:
    """``(remove, min_params)`` of each round: one round, or for ``recentred`` rounds that each add
    about RECENTRE_STEP blocks, every constraint scaled by the fraction of rounds done. ``weights``:
    the budget's weight of each block when it is not the parameter count (latency cost units)."""
    already = len(forced)
    if isinstance(remove, int) and remove <= already:
        raise BlockPruneError(f"{already} forced blocks already reach the requested {remove}; raise --remove")
    if variant != "recentred":
        return [(remove, min_params)]
    total = target_count(remove, min_params, blocks, weights)
    rounds = max(1, math.ceil((total - already) / RECENTRE_STEP))
    out = []
    for r in range(1, rounds + 1):
        if isinstance(remove, int):
            step = already + math.ceil((remove - already) * r / rounds)
        elif isinstance(remove, dict):
            step = {
                k: max(sum(b.kind == k for b in forced), math.ceil(c * r / rounds)) for k, c in remove.items()
            }
        else:
            step = None
        out.append((step, None if min_params is None else math.ceil(min_params * r / rounds)))
    return out


def target_count(
    remove: int | dict | None, min_params: int | None, blocks: list[Block], weights: Sequence[int] | None
) -> int:
    """Blocks the selection removes in the end: the count asked for, or for a budget only an
    estimate from the average block's weight (parameters, or latency units with ``weights``)."""
    if isinstance(remove, int):
        return remove
    if isinstance(remove, dict):
        return sum(remove.values())
    weights = [b.num_params for b in blocks] if weights is None else weights
    return math.ceil((min_params or 0) / max(float(np.mean(weights)), 1.0))


def refill(
    pool: list[str], chosen: list[str], known: dict[str, float], blocks: list[Block], need: int
) -> list[str]:
    """``pool`` topped up, per kind, to ``need`` blocks not yet chosen (the rest of the blocks
    of that kind when fewer): the blocks left out of the last rounds, cheapest by the field they
    had when last measured. Without it the pool shrinks by the blocks each round takes and deep
    targets (more than about RECENTRE_POOL blocks of a kind) run out of candidates."""
    out, taken = list(pool), set(chosen)
    for kind in dict.fromkeys(b.kind for b in blocks):
        free = [b.name for b in blocks if b.kind == kind and b.name not in taken]
        short = need - sum(n in free for n in out)
        if short > 0:
            spare = sorted((n for n in free if n not in out and n in known), key=known.__getitem__)
            out += spare[:short]
    return out


def weighted(energy: EnergyModel, weights: Sequence[int] | None) -> EnergyModel:
    """``energy`` with the budget's weights in place of its parameter counts (``None``: itself),
    so that every solver's ``min_params`` knapsack constraint becomes the latency budget."""
    if weights is None:
        return energy
    return EnergyModel(
        block_names=energy.block_names,
        fields=energy.fields,
        couplings=energy.couplings,
        num_params=weights,
        variant=energy.variant,
        sources=energy.sources,
        metadata=energy.metadata,
    )


def latency_budget(
    table: CostTable,
    config: BlockPruneConfig,
    blocks: list[Block],
    remove: int | dict | None,
    protect: Sequence[str],
) -> tuple[list[int], int]:
    """``(weights, min_units)``: each block's cost in whole units of the table and the units the
    removed blocks must hold at least; a one-line error naming the largest speedup possible
    when no allowed removal reaches the budget."""
    names = [b.name for b in blocks]
    allowed = config.allowed_seconds(table.dense)
    if allowed >= table.dense:  # only a latency target can be this loose; a speedup is above 1
        raise SettingError(
            "target_latency",
            f"{{name}} {config.target_latency:g} s is met by the dense model already "
            f"({table.dense:.4g} s, {table.phase}); ask for less time or give a target speedup",
        )
    reach = _reach(table, blocks, remove, set(protect))
    if table.dense - reach > allowed * (1 + 1e-9):
        setting = "target_latency" if config.target_latency == allowed else "target_speedup"
        value = getattr(config, setting)
        raise SettingError(
            setting,
            f"{{name}} {value:g} is out of reach: the timed blocks ({table.phase}, batch {table.batch}, "
            f"context {table.context}, dense {table.dense:.4g} s) allow at most a "
            f"{table.dense / (table.dense - reach):.2f}x speedup ({table.dense - reach:.4g} s)"
            + ("; remove more blocks or ask for less" if remove is not None else "; ask for less"),
        )
    return table.units(names), max(1, table.units_to_save(allowed))


def _reach(table: CostTable, blocks: list[Block], remove: int | dict | None, protect: set[str]) -> float:
    """The most seconds an allowed removal can save: the costliest free blocks when counts are
    fixed; otherwise every free layer (a whole layer or its branches, never both) but the
    cheapest, since a model keeps at least one block."""
    free = [b for b in blocks if b.name not in protect]
    cost = table.costs
    if isinstance(remove, int):
        return sum(sorted((cost[b.name] for b in free), reverse=True)[:remove])
    if isinstance(remove, dict):
        return sum(
            sum(sorted((cost[b.name] for b in free if b.kind == k), reverse=True)[:n])
            for k, n in remove.items()
        )
    per_layer: dict[int, dict[str, float]] = {}
    for b in free:
        per_layer.setdefault(b.layer, {})[b.kind] = cost[b.name]
    saved = [
        max(c.get("layer", 0.0), sum(v for k, v in c.items() if k != "layer")) for c in per_layer.values()
    ]
    every_layer = len(per_layer) == len({b.layer for b in blocks})
    return sum(saved) - (min(saved) if saved and every_layer else 0.0)


def latency_record(table: CostTable, config: BlockPruneConfig, removed: list[str]) -> dict[str, Any]:
    """What the report records of a latency budget: the cost table, the budget, the prediction."""
    return {
        **table.to_dict(),
        "target_speedup": config.target_speedup,
        "target_latency": config.target_latency,
        "allowed_seconds": config.allowed_seconds(table.dense),
        "predicted_seconds": table.predicted(removed),
        "predicted_speedup": table.speedup(removed),
    }


def cheapest_per_kind(
    energy: EnergyModel, blocks: list[Block], free: list[int], size: int = RECENTRE_POOL
) -> list[str]:
    """Names of the ``size`` lowest-field free blocks of each kind (the next round's pool)."""
    pool = []
    for kind in dict.fromkeys(b.kind for b in blocks):
        of_kind = [i for i in free if blocks[i].kind == kind]
        order = np.argsort(energy.fields[of_kind], kind="stable")[:size]
        pool += [blocks[of_kind[j]].name for j in order]
    return pool


ENERGY = Method(
    ENERGY_METHOD,
    select_energy,
    ("layer", "sublayer", "mixed"),
    "this project's method: energy model, solver, rerank of the top-K by real loss",
    budget=True,
)
