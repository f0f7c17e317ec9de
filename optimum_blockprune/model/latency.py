"""What each block costs in time on the device it runs on, measured by real surgery of model copies.

Blocks fall into cost classes (same kind, same parameter count: every layer of a plain transformer
is one class; hybrids and MoE models have several). For each class, a deep copy of the model loses
an evenly spread sample of the class's blocks (``adapter.remove_blocks``); the time it saves,
divided by the blocks removed, is each block's cost. Dense and pruned copies are timed in turns
(warm-up runs first, then the median of the paired differences of several repetitions), so a
change of machine load hits both. What no block accounts for (embeddings, final norm, head) is ``rest = dense - Σ blocks``.

Phases: ``prefill`` times one forward pass of ``batch x context`` tokens; ``decode`` times one new
token per step of ``batch`` sequences whose KV cache already holds ``context`` tokens.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from optimum_blockprune.config import LATENCY_PHASES as PHASES
from optimum_blockprune.errors import BlockPruneError

if TYPE_CHECKING:
    from torch import nn

    from optimum_blockprune.blocks import Block
    from optimum_blockprune.model.adapters.base import Adapter

#: Integer cost units per dense time: the solvers' knapsack weights are whole numbers.
UNITS = 10**6
#: Token ids drawn for timing stay below this (any vocabulary has them).
_MAX_TOKEN = 1000


@dataclass
class CostTable:
    """Seconds each block costs in one ``phase`` (per forward for ``prefill``, per token for
    ``decode``), with the settings they were measured under."""

    phase: str
    batch: int
    context: int
    device: str
    dtype: str
    threads: int
    repeats: int
    #: Seconds of the dense model (median).
    dense: float
    #: Block name -> seconds it costs (always > 0).
    costs: dict[str, float]
    #: One entry per cost class: kind, parameters, blocks, the sample removed, seconds saved.
    classes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def rest(self) -> float:
        """Seconds no block accounts for: dense minus the blocks of one partition of the model
        (each layer counted once, as a whole layer where it is a block, else by its branches)."""
        layers = {n for n in self.costs if n.count(".") == 1}
        shared = sum(c for n, c in self.costs.items() if n in layers or n.rsplit(".", 1)[0] not in layers)
        return self.dense - shared

    def saved(self, removed: Iterable[str]) -> float:
        """Seconds the removal of ``removed`` saves under the table."""
        return sum(self.costs[n] for n in removed)

    def predicted(self, removed: Iterable[str]) -> float:
        """Seconds of the model without ``removed``, as the table predicts."""
        return self.dense - self.saved(removed)

    def speedup(self, removed: Iterable[str]) -> float:
        """Predicted dense time / pruned time."""
        return self.dense / max(self.predicted(removed), 1e-12)

    def units(self, names: Sequence[str]) -> list[int]:
        """Each block's cost in whole units of ``dense / UNITS``, rounded down (at least 1): blocks
        that reach :meth:`units_to_save` in units save at least as much in seconds."""
        return [max(1, math.floor(self.costs[n] / self.dense * UNITS)) for n in names]

    def units_to_save(self, allowed: float) -> int:
        """Units the removed blocks must hold at least so that the pruned time is ``<= allowed``."""
        return math.ceil((self.dense - allowed) / self.dense * UNITS - 1e-9)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["rest"] = self.rest
        return out


def cost_classes(blocks: Sequence[Block]) -> dict[tuple[str, int], list[Block]]:
    """Blocks grouped by (kind, parameter count), in block order."""
    classes: dict[tuple[str, int], list[Block]] = {}
    for block in blocks:
        classes.setdefault((block.kind, block.num_params), []).append(block)
    return classes


def spread(members: Sequence[Block], k: int) -> list[Block]:
    """``k`` members spread evenly over the class (the middle of each of ``k`` equal slices)."""
    n = len(members)
    return [members[min(n - 1, int((j + 0.5) * n / k))] for j in range(k)]


@torch.no_grad()
def time_model(
    model: nn.Module, phase: str, batch: int, context: int, steps: int = 8, seed: int = 0
) -> float:
    """Seconds of one ``prefill`` forward (``batch x context`` tokens), or of one ``decode`` step
    of ``batch`` sequences after a ``context``-token prefill: the mean over ``steps`` of them."""
    device = next(model.parameters()).device
    vocab = min(int(getattr(model.config, "vocab_size", _MAX_TOKEN) or _MAX_TOKEN), _MAX_TOKEN)
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, context + steps), generator=generator).to(device)
    if phase == "prefill":
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            model(input_ids=ids[:, :context], use_cache=False)
        _sync(device)
        return (time.perf_counter() - t0) / steps
    cache = model(input_ids=ids[:, :context], use_cache=True).cache
    _sync(device)
    t0 = time.perf_counter()
    for step in range(steps):
        cache = model(
            input_ids=ids[:, context + step : context + step + 1], cache=cache, use_cache=True
        ).cache
    _sync(device)
    return (time.perf_counter() - t0) / steps


def _saving(
    timed: Callable[[nn.Module], float], model: nn.Module, pruned: nn.Module, repeats: int, tries: int = 3
) -> tuple[list[float], float]:
    """``(dense times, seconds saved)``: ``model`` and ``pruned`` timed in turns, the saving the
    median of the paired differences; while it is not positive (noise), up to ``tries`` rounds."""
    with_, differences = [], []
    for _ in range(tries):
        for _ in range(repeats):
            with_.append(timed(model))
            differences.append(with_[-1] - timed(pruned))
        if statistics.median(differences) > 0:
            break
    return with_, statistics.median(differences)


def _estimate_unmeasured(classes: list[dict[str, Any]], phase: str, dense: float) -> None:
    """Cost the classes whose saving was not positive at the measured classes' seconds per
    parameter; a one-line error when no class saved measurable time."""
    measured = [c for c in classes if not c["estimated"]]
    if not measured:
        raise BlockPruneError(
            f"timing failed: removing blocks saved no measurable time in {phase} runs (dense "
            f"{dense:.3g} s); the device is too busy or the work too small to time: raise the "
            "latency batch or context, or time on a quiet device"
        )
    params = sum(c["num_params"] * len(c["removed"]) for c in measured)
    rate = sum(c["seconds_saved"] for c in measured) / max(params, 1)
    for entry in classes:
        if entry["estimated"]:
            entry["seconds_per_block"] = max(rate * entry["num_params"], 1e-9)


def _sync(device: torch.device) -> None:
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.synchronize(device)


def measure_costs(
    model: nn.Module,
    adapter: Adapter,
    blocks: Sequence[Block],
    phase: str = "decode",
    batch: int = 1,
    context: int = 128,
    *,
    repeats: int = 5,
    warmup: int = 2,
    steps: int = 8,
) -> CostTable:
    """The :class:`CostTable` of ``blocks`` (at any granularity) on the model's device: per cost
    class, a copy without an even sample of half the class (at least one block) is timed against
    the dense model in turns; each block costs the median time saved / blocks removed. A class
    whose removal saves no measurable time (blocks too small for the noise) is timed again, then
    costed by its parameters at the measured classes' seconds per parameter (``estimated``)."""
    if phase not in PHASES:
        raise BlockPruneError(f"unknown latency phase {phase!r}; choose {' or '.join(PHASES)}")
    if batch < 1 or context < 1:
        raise BlockPruneError(f"latency batch and context must be >= 1; got {batch} and {context}")
    was_training = model.training
    model.eval()

    def timed(m: nn.Module) -> float:
        return time_model(m, phase, batch, context, steps)

    for _ in range(warmup):
        timed(model)
    dense_times: list[float] = []
    classes = []
    for (kind, num_params), members in cost_classes(blocks).items():
        sample = spread(members, max(1, len(members) // 2))
        pruned = copy.deepcopy(model)
        adapter.remove_blocks(pruned, [b.name for b in sample])
        for _ in range(warmup):
            timed(pruned)
        with_, saved = _saving(timed, model, pruned, repeats)
        del pruned
        dense_times += with_
        classes.append(
            {
                "kind": kind,
                "num_params": num_params,
                "blocks": len(members),
                "removed": [b.name for b in sample],
                "seconds_saved": saved,
                "seconds_per_block": saved / len(sample),
                "estimated": saved <= 0,
            }
        )
    _estimate_unmeasured(classes, phase, statistics.median(dense_times))
    costs = {}
    for entry, members in zip(classes, cost_classes(blocks).values(), strict=True):
        costs.update({b.name: entry["seconds_per_block"] for b in members})
    model.train(was_training)
    parameter = next(model.parameters())
    device = parameter.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    table = CostTable(
        phase=phase,
        batch=batch,
        context=context,
        device=f"{device} ({name})" if device.type == "cuda" else str(device),
        dtype=str(parameter.dtype).removeprefix("torch."),
        threads=torch.get_num_threads(),
        repeats=repeats,
        dense=statistics.median(dense_times),
        costs={b.name: costs[b.name] for b in blocks},
        classes=classes,
    )
    return _within_dense(table)


def _within_dense(table: CostTable) -> CostTable:
    """The table with its block costs scaled down where noise made them add up to more than the
    dense time (a negative ``rest``), so that no removal is predicted to take no time at all."""
    if table.rest >= 0:
        return table
    scale = table.dense / (table.dense - table.rest)
    table.costs = {n: c * scale for n, c in table.costs.items()}
    for entry in table.classes:
        entry["seconds_per_block"] *= scale
        entry["scaled_by"] = scale
    return table
