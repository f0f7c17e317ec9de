"""Rerank candidate configurations by their REAL calibration loss (removed blocks skipped)."""

from __future__ import annotations

from collections.abc import Sequence

from tqdm.auto import tqdm

from .blocks import Block
from .scoring import LayerLossScorer


def rerank(
    scorer: LayerLossScorer,
    blocks: Sequence[Block],
    candidates: Sequence[Sequence[str]],
    base: Sequence[str] = (),
    progress: bool = False,
) -> list[float]:
    """Mean calibration loss of each candidate (lists of block names, each containing ``base``)."""
    layer_of = {b.name: b.layer for b in blocks}
    scorer.set_base(layer_of[n] for n in base)
    losses = []
    for candidate in tqdm(candidates, desc="rerank", disable=not progress, unit="candidate"):
        losses.append(scorer.loss(layer_of[n] for n in candidate if n not in base))
    return losses
