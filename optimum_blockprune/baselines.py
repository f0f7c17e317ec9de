"""Peer selection criteria on the same data: ShortGPT block influence and random choice."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .adapters.base import Adapter
from .calibration import CalibrationData


@torch.no_grad()
def block_influence(
    model: nn.Module, adapter: Adapter, data: CalibrationData, batch_size: int = 8
) -> np.ndarray:
    """ShortGPT block influence per decoder layer: 1 - mean token cosine(layer input, layer output).

    Inputs and outputs are captured with hooks on the layers (not ``output_hidden_states``, whose
    last entry is after the final norm). Padding tokens are excluded.
    """
    layers = adapter.decoder_layers(model)
    sums = torch.zeros(len(layers), dtype=torch.float64)
    count = 0
    current_mask: list[torch.Tensor] = []

    def hook(index: int):
        def fn(module: nn.Module, args: tuple, kwargs: dict, output: object) -> None:
            x = args[0] if args else kwargs["hidden_states"]
            y = output[0] if isinstance(output, tuple) else output
            cos = F.cosine_similarity(x.float(), y.float(), dim=-1)
            sums[index] += float(torch.nan_to_num(cos, nan=0.5)[current_mask[0]].double().sum())

        return fn

    handles = [layer.register_forward_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        for ids, mask in data.batches(batch_size):
            current_mask[:] = [mask.bool()]
            model(input_ids=ids, attention_mask=mask, use_cache=False)
            count += int(mask.sum())
    finally:
        for handle in handles:
            handle.remove()
    return (1.0 - sums / max(count, 1)).numpy()


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
