"""The energy-guided swap search: it keeps every constraint, finds a known optimum, returns a
configuration no single swap improves (checked by brute force), stops at its budget, and its
shortcuts (the bound, the first-chunk screening, the prior order) change its work, not its answer."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from optimum_blockprune.blocks import Block
from optimum_blockprune.selection.swap_search import SwapSearch, SwapSpace, apply

SAMPLES = 12


def layer_blocks(n: int) -> list[Block]:
    return [Block(i, "layer", 10) for i in range(n)]


class Fake:
    """Per-sample losses ``base_s + sum_i c_is + sum_{i<j} q_ij w_s`` (all >= 0) of configurations,
    counting the sample-losses it computes."""

    def __init__(self, n: int, seed: int, pairs: float = 0.0, heavy: tuple[int, ...] = ()) -> None:
        rng = np.random.default_rng(seed)
        self.base = rng.uniform(2.0, 3.0, SAMPLES)
        self.costs = rng.uniform(0.0, 1.0, (n, 1)) * rng.uniform(0.5, 1.5, (n, SAMPLES))
        self.costs[list(heavy)] += 50.0  # blocks whose removal is catastrophic
        q = rng.uniform(0.0, pairs, (n, n))
        self.pairs = np.triu(q + q.T, 1)
        self.weights = rng.uniform(0.5, 1.5, SAMPLES)
        self.computed = 0

    def __call__(self, config, rows) -> np.ndarray:
        self.computed += len(rows)
        c = list(config)
        extra = self.pairs[np.ix_(c, c)].sum() * self.weights
        return (self.base + self.costs[c].sum(axis=0) + extra)[rows]

    def mean(self, config) -> float:
        return float(self(config, np.arange(SAMPLES)).mean())


def improving_swaps(space: SwapSpace, fake: Fake, config) -> list:
    loss = fake.mean(config)
    return [s for s in space.swaps(config) if fake.mean(apply(config, s)) < loss]


def test_finds_the_optimum_of_an_additive_loss_from_the_worst_start():
    fake, space = Fake(10, seed=0), SwapSpace(layer_blocks(10))
    order = np.argsort(fake.costs.mean(axis=1))
    worst, best = tuple(sorted(order[-4:])), tuple(sorted(order[:4]))
    result = SwapSearch(space, fake, SAMPLES).run(worst)
    assert result.removed == best  # additive: the local optimum is the global one
    assert result.certificate.local_optimum and result.certificate.settled == result.certificate.swaps == 24
    assert result.loss == pytest.approx(fake.mean(best))
    losses = [p["loss"] for p in result.trajectory]
    assert losses == sorted(losses, reverse=True) and len(set(losses)) == len(losses)


@pytest.mark.parametrize("seed", range(4))
def test_no_single_swap_improves_what_it_returns(seed):
    fake = Fake(9, seed=seed, pairs=0.4, heavy=(0, 8))
    space = SwapSpace(layer_blocks(9))
    result = SwapSearch(space, fake, SAMPLES).run((0, 1, 2, 3))
    assert result.certificate.local_optimum
    assert improving_swaps(space, fake, result.removed) == []
    every = list(itertools.combinations(range(9), 4))
    # and it is a good configuration: among the best tenth of all of them
    rank = sorted(fake.mean(c) for c in every).index(fake.mean(result.removed))
    assert rank < len(every) / 10


def test_keeps_every_constraint_at_every_step():
    kinds = ["attn", "mlp"] * 5
    blocks = [Block(i // 2, k, (5 if k == "attn" else 20) + i) for i, k in enumerate(kinds)]
    fake = Fake(10, seed=3, pairs=0.3)

    def valid(config):  # a budget: the removed blocks hold at least 60 parameters
        return sum(blocks[i].num_params for i in config) >= 60

    space = SwapSpace(blocks, valid, fixed=frozenset({0}), protect=frozenset({9, 2}), same_kind=True)
    start = (0, 4, 5, 7)  # attn 0 and 2, mlp 2 and 3: 66 parameters
    assert len(space.swaps(start)) >= 4
    seen = []

    def losses(config, rows):
        seen.append(config)
        return fake(config, rows)

    result = SwapSearch(space, losses, SAMPLES).run(start)
    assert result.certificate.local_optimum and len(set(seen)) > 3
    for config in seen:
        assert 0 in config and not {9, 2} & set(config) and valid(config)
        assert sorted(blocks[i].kind for i in config) == ["attn", "attn", "mlp", "mlp"]
    # no improving swap among those the constraints allow
    assert improving_swaps(space, fake, result.removed) == []


def test_the_bound_and_the_screening_save_work_but_not_the_answer():
    def search(chunks):
        fake = Fake(12, seed=5, pairs=0.2, heavy=(0, 1, 11))
        result = SwapSearch(SwapSpace(layer_blocks(12)), fake, SAMPLES, chunks=chunks).run((0, 1, 2, 3, 4))
        return result, fake.computed

    (plain, plain_work), (fast, fast_work) = search(1), search(4)
    assert fast.removed == plain.removed and fast.loss == pytest.approx(plain.loss)
    assert fast.certificate.by_bound > 0 and plain.certificate.by_bound == 0
    assert fast_work < 0.8 * plain_work


def test_a_good_prior_finds_the_improvements_first():
    fake = Fake(12, seed=7)
    truth = fake.costs.mean(axis=1)

    def prior(config, swaps, sign=1.0):
        return np.array([sign * (truth[b] - truth[a]) for a, b in swaps])

    def search(sign):
        fake.computed = 0
        result = SwapSearch(SwapSpace(layer_blocks(12)), fake, SAMPLES, lambda c, s: prior(c, s, sign)).run(
            tuple(range(8, 12))
        )
        return result, fake.computed

    (good, good_work), (bad, bad_work) = search(1.0), search(-1.0)
    assert good.removed == bad.removed  # additive: both reach the optimum
    assert good_work < bad_work


def test_stops_at_its_budget_without_a_certificate():
    fake = Fake(10, seed=1)
    spent = []

    def losses(config, rows):
        spent.append(len(rows) / SAMPLES)
        return fake(config, rows)

    search = SwapSearch(SwapSpace(layer_blocks(10)), losses, SAMPLES, budget=3.0, work=lambda: sum(spent))
    result = search.run((6, 7, 8, 9))
    assert not result.certificate.local_optimum
    assert "budget" in result.certificate.reason
    assert 3.0 <= sum(spent) < 3.0 + 1.01  # it stops at the first check past the budget
    assert result.loss <= fake.mean((6, 7, 8, 9))


def test_scores_a_swap_from_the_base_it_shares_the_most_with():
    blocks = layer_blocks(6)
    search = SwapSearch(SwapSpace(blocks), Fake(6, seed=0), SAMPLES)
    config = (1, 4)
    assert search._base(config, (1, 3)) == (4,)  # restore 1 first: from config without it
    assert search._base(config, (4, 2)) == (1, 2, 4)  # remove 2 first: from config with it
    bases = search._bases(config, [(1, 3), (1, 5), (4, 0)])
    assert bases[(1, 3)] == bases[(1, 5)] == (4,) and bases[(4, 0)] == config  # alone: no move
