"""The energy method's swap search (:mod:`.swap_search`) on a request: its constraints, the prior
energy from the rounds' measurements, the loss scorer with its cached prefixes, the report's record."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from optimum_blockprune.blocks import Block
from optimum_blockprune.energy.model import EnergyModel
from optimum_blockprune.energy.scoring import LossScorer
from optimum_blockprune.selection.rules import Rules
from optimum_blockprune.selection.swap_search import Config, SearchResult, Swap, SwapSearch, SwapSpace, apply


def prior_energy(energies: Sequence[EnergyModel]) -> EnergyModel:
    """One energy over every block from the rounds' models: each block's field from the last round
    that measured it (a round leaves the blocks it did not scan at zero), the last round's couplings."""
    last = energies[-1]
    fields = np.zeros(len(last.block_names))
    for energy in energies:
        measured = energy.fields != 0
        fields[measured] = energy.fields[measured]
    return EnergyModel(
        block_names=last.block_names,
        fields=fields,
        couplings=last.couplings,
        num_params=last.num_params,
        variant=last.variant,
    )


def swap_prior(energy: EnergyModel):
    """``prior(config, swaps)``: the energy change of each swap."""

    def prior(config: Config, swaps: list[Swap]) -> np.ndarray:
        X = np.zeros((len(swaps) + 1, len(energy.block_names)))
        X[0, list(config)] = 1
        for r, swap in enumerate(swaps, start=1):
            X[r, list(apply(config, swap))] = 1
        e = energy.energies(X)
        return e[1:] - e[0]

    return prior


def swap_space(
    blocks: Sequence[Block],
    rules: Rules,
    per_kind: bool,
    min_weight: int | None,
    weights: Sequence[int] | None,
) -> SwapSpace:
    """The swaps that keep the request's constraints: forced blocks stay removed, protected ones
    kept, counts per kind (``per_kind``), the rules, and the parameter or latency budget
    (``min_weight`` of ``weights``, default the parameter counts)."""
    weight = np.asarray([b.num_params for b in blocks] if weights is None else weights, dtype=float)

    def valid(config: Config) -> bool:
        if min_weight is not None and weight[list(config)].sum() < min_weight:
            return False
        return rules.refusal([blocks[i].name for i in config]) is None

    return SwapSpace(blocks, valid, frozenset(rules.force), frozenset(rules.protect), per_kind)


def search(
    scorer: LossScorer,
    blocks: Sequence[Block],
    space: SwapSpace,
    start: Sequence[str],
    energies: Sequence[EnergyModel],
    budget: float | None = None,
    progress: bool = False,
) -> SearchResult:
    """The swap search from ``start`` (block names) on ``scorer``'s objective, guided by the
    rounds' ``energies``; its moves of the scorer's base are counted as work."""
    names = [b.name for b in blocks]

    def labels(config: Config) -> list[str]:
        return [names[i] for i in config]

    def losses(config: Config, rows: np.ndarray) -> np.ndarray:
        return scorer.configuration_losses(labels(config), rows)

    with tqdm(desc="swap search", unit="swap", disable=not progress) as bar:

        def step(loss: float) -> None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")

        finder = SwapSearch(
            space,
            losses,
            scorer.n_samples,
            swap_prior(prior_energy(energies)) if energies else None,
            budget=budget,
            work=lambda: scorer.forward_equivalents,
            rebase=lambda config: scorer.set_base(labels(config), count=True),
            names=labels,
            step=step,
        )
        return finder.run(tuple(sorted(names.index(n) for n in start)))


def search_record(result: SearchResult, offset: float, budget: float | None) -> dict[str, Any]:
    """What the report keeps: the certificate, the accepted swaps, the budget (None: none), and
    the trajectory with the forward passes counted from the start of the selection (``offset``:
    those before the search)."""
    trajectory = [{**p, "forward_passes": round(p["forward_passes"] + offset, 3)} for p in result.trajectory]
    return {
        "certificate": result.certificate.as_dict(),
        "accepted": result.accepted,
        "trajectory": trajectory,
        "budget": None if budget is None else round(float(budget), 3),
        "start_loss": result.trajectory[0]["loss"],
        "loss": result.loss,
    }
