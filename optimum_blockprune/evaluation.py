"""Held-out perplexity of a causal LM on packed text blocks."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .calibration import CalibrationData, build_calibration
from .scoring import token_losses


@torch.no_grad()
def perplexity(model: nn.Module, data: CalibrationData, batch_size: int = 8, progress: bool = False) -> float:
    """exp(mean next-token cross-entropy over every non-padding target token of ``data``)."""
    total, count = 0.0, 0
    batches = tqdm(list(data.batches(batch_size)), desc="perplexity", disable=not progress, unit="batch")
    for ids, mask in batches:
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        ce, target_mask = token_losses(logits, ids, mask)
        total += float((ce * target_mask).sum())
        count += int(target_mask.sum())
    return math.exp(total / max(count, 1))


def heldout_data(tokenizer: Any, num_samples: int = 64, seq_len: int = 128) -> CalibrationData:
    """Packed blocks of the demo corpus's HELD-OUT split (never used for calibration)."""
    from .demo_assets import demo_texts

    return build_calibration(tokenizer, demo_texts("heldout"), num_samples, seq_len, source="demo:heldout")
