"""Per-sample gate gradients: row s of A is dL_s/dα for calibration sample s (gates at one)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .adapters.base import Adapter
from .blocks import Block
from .calibration import CalibrationData
from .gates import Gates
from .scoring import per_sample_loss


def gate_gradients(
    model: nn.Module,
    adapter: Adapter,
    blocks: Sequence[Block],
    data: CalibrationData,
    batch_size: int = 8,
    removed: Sequence[int] = (),
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Matrix A (samples x blocks) of per-sample gate gradients and the per-sample losses.

    One forward and one backward pass per batch: each sample has its own gate vector, so the
    gradient of the summed per-sample losses w.r.t. the [batch, blocks] gate matrix holds every
    sample's own gradient. Weights stay frozen. ``removed`` block positions have their gates at 0.
    """
    n = len(blocks)
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    rows, losses = [], []
    try:
        with Gates(model, adapter, blocks) as gates:
            batches = tqdm(
                list(data.batches(batch_size)), desc="gate gradients", disable=not progress, unit="batch"
            )
            for ids, mask in batches:
                alpha = torch.ones(ids.shape[0], n)
                alpha[:, list(removed)] = 0.0
                alpha.requires_grad_(True)
                gates.values = alpha
                logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
                loss = per_sample_loss(logits, ids, mask)
                loss.sum().backward()
                rows.append(alpha.grad.double().numpy())
                losses.append(loss.detach().double().numpy())
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return np.concatenate(rows), np.concatenate(losses)
