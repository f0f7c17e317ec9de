"""Energy variants: build an EnergyModel of the blocks at a base configuration.

* ``fisher``: the paper's ``E = xᵀHx`` with ``H = AᵀA/m`` from per-sample gate gradients.
* ``taylor``: the full second-order expansion at the gates' value one, ``E = -gᵀx + ½xᵀHx``.
* ``additive``: each block's REAL loss increase when removed alone; no couplings.
* ``secant``: the additive fields plus couplings from the per-sample real loss changes.
* ``recentred`` (default): ``secant`` rebuilt on the partially pruned model as blocks go.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch import nn
from tqdm.auto import tqdm

from optimum_blockprune.blocks import Block
from optimum_blockprune.data.calibration import CalibrationData
from optimum_blockprune.energy.gradients import gate_gradients
from optimum_blockprune.energy.model import EnergyModel
from optimum_blockprune.energy.scoring import LossScorer, Unit
from optimum_blockprune.model.adapters.base import Adapter

GRADIENT_VARIANTS = ("fisher", "taylor")
LOSS_VARIANTS = ("additive", "secant", "recentred")


def single_removal_deltas(
    scorer: LossScorer, candidates: Sequence[Unit], progress: bool = False
) -> np.ndarray:
    """Per-sample loss change of removing each candidate block on top of the scorer's base,
    shape (samples, len(candidates))."""
    base = scorer.losses()
    cols = []
    for i in tqdm(candidates, desc="single removals", disable=not progress, unit="block"):
        cols.append(scorer.losses([i]) - base)
    return np.stack(cols, axis=1) if cols else np.zeros((len(base), 0))


def secant_couplings(deltas: np.ndarray) -> np.ndarray:
    """Couplings from per-sample real loss changes D (samples x blocks).

    Two removals hurt together more than apart when they damage the SAME samples: the
    per-sample co-variation of their damage, ``cov_s(D_si, D_sj)``, scaled by the mean damage,
    is the pairwise term (zero diagonal; the diagonal is in the fields).
    """
    centred = deltas - deltas.mean(axis=0, keepdims=True)
    cov = centred.T @ centred / max(len(deltas) - 1, 1)
    scale = np.abs(deltas.mean(axis=0)).mean() / max(float(np.abs(np.diag(cov)).mean()), 1e-12)
    couplings = cov * scale / 2
    np.fill_diagonal(couplings, 0.0)
    return couplings


def loss_energy(
    variant: str,
    scorer: LossScorer,
    blocks: Sequence[Block],
    base: Sequence[int] = (),
    exclude: Sequence[int] = (),
    progress: bool = False,
) -> EnergyModel:
    """Energy from real single-removal losses at the base configuration ``base`` (block positions).

    Blocks in ``base`` or ``exclude`` are not scanned (their fields stay zero)."""
    n = len(blocks)
    scorer.set_base(blocks[i] for i in base)
    skip = set(base) | set(exclude)
    candidates = [i for i in range(n) if i not in skip]
    deltas = single_removal_deltas(scorer, [blocks[i] for i in candidates], progress)
    D = np.zeros((deltas.shape[0], n))
    D[:, candidates] = deltas
    fields = D.mean(axis=0)
    couplings = None if variant == "additive" else secant_couplings(D)
    return EnergyModel(
        block_names=[b.name for b in blocks],
        fields=fields,
        couplings=couplings,
        num_params=[b.num_params for b in blocks],
        variant=variant,
        sources={"D": D},
        metadata={"base": [blocks[i].name for i in base]},
    )


def gradient_energy(
    variant: str, A: np.ndarray, blocks: Sequence[Block], base: Sequence[int] = ()
) -> EnergyModel:
    """The paper's Fisher energy, or the full second-order Taylor energy, from gate gradients A."""
    names = [b.name for b in blocks]
    params = [b.num_params for b in blocks]
    meta = {"base": [blocks[i].name for i in base]}
    if variant == "fisher":
        return EnergyModel(A, names, num_params=params, variant="fisher", metadata=meta)
    fisher = EnergyModel(A, names, num_params=params)
    return EnergyModel(
        block_names=names,
        fields=-fisher.sources["g"],
        couplings=fisher.sources["H"] / 2,
        num_params=params,
        variant="taylor",
        sources=fisher.sources,
        metadata=meta,
    )


def analyze(
    variant: str,
    model: nn.Module,
    adapter: Adapter,
    blocks: Sequence[Block],
    data: CalibrationData,
    batch_size: int = 8,
    *,
    base: Sequence[int] = (),
    exclude: Sequence[int] = (),
    scorer: LossScorer | None = None,
    progress: bool = False,
    checkpoint: str | Path | None = None,
    resume: bool = True,
    gradient_checkpointing: bool = False,
    objective: str = "ce",
) -> EnergyModel:
    """The energy model of ``variant`` at the configuration that removes ``base`` (positions).

    Gradient variants measure gate gradients (rows checkpointed to ``checkpoint``); loss variants
    measure real removals with ``scorer`` (default: a new one of ``objective``), never
    re-measuring the blocks in ``exclude``. Both
    share the calibration samples among ``accelerate launch`` processes; every process gets the
    whole energy."""
    if variant in GRADIENT_VARIANTS:
        A, losses = gate_gradients(
            model,
            adapter,
            blocks,
            data,
            batch_size,
            base,
            progress,
            checkpoint=checkpoint,
            resume=resume,
            gradient_checkpointing=gradient_checkpointing,
        )
        energy = gradient_energy(variant, A, blocks, base)
        energy.sources["losses"] = losses
        return energy
    scorer = scorer or LossScorer(model, adapter, data, batch_size, objective=objective)
    progress = progress and scorer.processes.is_main
    return loss_energy(variant, scorer, blocks, base, exclude, progress)
