"""Per-sample gate gradients: row s of A is dL_s/dα for calibration sample s (gates at one).

Scales three ways: calibration batches are shared among the processes of an ``accelerate
launch`` (rows gathered back in sample order); rows are checkpointed to a partial file after
every batch, so a killed run resumes; and models split over devices with ``device_map`` (with
CPU / disk offload), in low precision, with decoder layers recomputed in the backward pass
(gradient checkpointing) all work, with gates and their gradients in float32.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from optimum_blockprune.blocks import Block
from optimum_blockprune.data.calibration import CalibrationData
from optimum_blockprune.energy.chunked_loss import loss_and_backward
from optimum_blockprune.energy.distributed import Processes, input_device
from optimum_blockprune.energy.partial import PartialRows, sha256
from optimum_blockprune.errors import BlockPruneError
from optimum_blockprune.model.adapters.base import Adapter
from optimum_blockprune.model.gates import Gates


def gate_gradients(
    model: nn.Module,
    adapter: Adapter,
    blocks: Sequence[Block],
    data: CalibrationData,
    batch_size: int = 8,
    removed: Sequence[int] = (),
    progress: bool = False,
    *,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = True,
    gradient_checkpointing: bool = False,
    processes: Processes | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Matrix A (samples x blocks, float64) of per-sample gate gradients and the per-sample losses.

    One forward and one backward pass per batch: each sample has its own gate vector, so the
    gradient of the summed per-sample losses w.r.t. the [batch, blocks] gate matrix holds every
    sample's own gradient. Weights stay frozen: only the gates' gradients are ever stored.
    ``removed`` block positions have their gates at 0. The LM head and loss run over chunks of
    positions (``chunked_loss.py``), so a batch's full logits never exist at once.

    ``checkpoint``: a partial file (see ``resume.py``) updated after every batch; with ``resume``
    an existing one of the same analysis is continued. ``gradient_checkpointing``: keep only
    each decoder layer's input for the backward pass and recompute the rest. ``processes``
    (default: this process's ``accelerate launch``, if any): batch ``k`` is computed by process
    ``k % world``; every process returns the full A.
    """
    processes = processes or Processes.current()
    n = len(blocks)
    fingerprint = analysis_fingerprint(model, blocks, data, batch_size, removed)
    state, error, message = None, None, None
    if processes.is_main:
        try:
            state = PartialRows.open(checkpoint, len(data), n, batch_size, fingerprint, resume)
        except Exception as exc:  # every process must learn of it, or the others wait forever
            error, message = exc, str(exc)
    state, message = processes.broadcast((state, message))
    if error is not None:
        raise error
    if message is not None:
        raise BlockPruneError(message)
    batches = list(data.batches(batch_size))
    todo = state.todo()
    device = input_device(model)
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    bar = tqdm(
        total=len(batches),
        initial=len(batches) - len(todo),
        desc="gate gradients",
        unit="batch",
        disable=not (progress and processes.is_main),
    )
    try:
        with Gates(model, adapter, blocks) as gates, _checkpointed(adapter, model, gradient_checkpointing):
            for start in range(0, len(todo), processes.world):
                mine = todo[start : start + processes.world]
                k = mine[processes.rank] if processes.rank < len(mine) else None
                result = None
                if k is not None:
                    result = (k, *_batch_rows(model, adapter, gates, *batches[k], n, removed, device))
                for item in processes.gather(result):
                    if item is not None:
                        state.put(*item)
                if processes.is_main:
                    state.save()
                bar.update(len(mine))
    finally:
        bar.close()
        for p in frozen:
            p.requires_grad_(True)
    return state.A, state.losses


def _batch_rows(
    model: nn.Module,
    adapter: Adapter,
    gates: Gates,
    ids: torch.Tensor,
    mask: torch.Tensor,
    n: int,
    removed: Sequence[int],
    device: torch.device,
) -> tuple[np.ndarray, np.ndarray]:
    """Gate gradients and losses of one batch (a function, so its activations die on return)."""
    ids, mask = ids.to(device), mask.to(device)
    alpha = torch.ones(ids.shape[0], n, device=device, dtype=torch.float32)
    alpha[:, list(removed)] = 0.0
    alpha.requires_grad_(True)
    gates.values = alpha
    try:
        loss = loss_and_backward(model, adapter, ids, mask)
    finally:
        gates.values = None
    return alpha.grad.double().cpu().numpy(), loss.double().cpu().numpy()


def analysis_fingerprint(
    model: nn.Module,
    blocks: Sequence[Block],
    data: CalibrationData,
    batch_size: int,
    removed: Sequence[int] = (),
) -> dict:
    """Everything that decides the rows of A, to recognise a partial file of the same analysis."""
    config = getattr(model, "config", None)
    config_json = config.to_json_string(use_diff=False) if config is not None else ""
    param = next(model.parameters(), None)
    return {
        "model": str(getattr(config, "_name_or_path", "") or type(model).__name__),
        "config": hashlib.sha256(config_json.encode()).hexdigest(),
        "dtype": str(param.dtype) if param is not None else "",
        "blocks": [b.name for b in blocks],
        "removed": [blocks[i].name for i in removed],
        "batch_size": batch_size,
        "calibration": data.metadata,
        "tokens": sha256(data.input_ids.numpy(), data.attention_mask.numpy()),
    }


@contextmanager
def _checkpointed(adapter: Adapter, model: nn.Module, enabled: bool) -> Iterator[None]:
    """Recompute each decoder layer in the backward pass instead of keeping its activations.

    Wraps the layers' ``forward`` (and so any device-placement hook already on it) in a
    non-reentrant ``torch.utils.checkpoint``; works in eval mode, unlike the Trainer's switch.
    """
    if not enabled:
        yield
        return
    from torch.utils.checkpoint import checkpoint

    patched = []
    for layer in adapter.decoder_layers(model):
        own = layer.__dict__.get("forward")
        layer.forward = functools.partial(checkpoint, layer.forward, use_reentrant=False)
        patched.append((layer, own))
    try:
        yield
    finally:
        for layer, own in patched:
            if own is None:
                del layer.forward
            else:
                layer.forward = own
