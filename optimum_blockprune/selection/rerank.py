"""Rerank candidate configurations by their REAL calibration loss (removed blocks skipped)."""

from __future__ import annotations

from collections.abc import Sequence

from tqdm.auto import tqdm

from optimum_blockprune.energy.scoring import LossScorer


def rerank(
    scorer: LossScorer,
    candidates: Sequence[Sequence[str]],
    base: Sequence[str] = (),
    progress: bool = False,
) -> list[float]:
    """Mean calibration loss of each candidate (lists of block names, each containing ``base``)."""
    scorer.set_base(base)
    losses = []
    for candidate in tqdm(candidates, desc="rerank", disable=not progress, unit="candidate"):
        losses.append(scorer.loss(n for n in candidate if n not in base))
    return losses
