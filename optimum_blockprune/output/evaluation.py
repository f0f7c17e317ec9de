"""Held-out perplexity of a causal LM on packed text blocks, from any text source."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from optimum_blockprune.data.calibration import (
    DEMO_SOURCE,
    CalibrationData,
    build_calibration,
    load_texts,
)
from optimum_blockprune.data.packing import pack_blocks, token_stream
from optimum_blockprune.energy.gradients import input_device
from optimum_blockprune.energy.scoring import token_losses
from optimum_blockprune.errors import BlockPruneError

#: Held-out blocks used when the source is the demo corpus.
DEMO_HELDOUT_SAMPLES = 64


@torch.no_grad()
def perplexity(model: nn.Module, data: CalibrationData, batch_size: int = 8, progress: bool = False) -> float:
    """exp(mean next-token cross-entropy over every non-padding target token of ``data``)."""
    total, count = 0.0, 0
    device = input_device(model)
    batches = tqdm(list(data.batches(batch_size)), desc="perplexity", disable=not progress, unit="batch")
    for ids, mask in batches:
        ids, mask = ids.to(device), mask.to(device)
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        ce, target_mask = token_losses(logits, ids.to(logits.device), mask.to(logits.device))
        total += float((ce * target_mask).sum())
        count += int(target_mask.sum())
    return math.exp(total / max(count, 1))


def heldout_data(tokenizer: Any, num_samples: int = 64, seq_len: int = 128) -> CalibrationData:
    """Packed blocks of the demo corpus's HELD-OUT split (never used for calibration)."""
    from optimum_blockprune.data.demo_assets import demo_texts

    return build_calibration(tokenizer, demo_texts("heldout"), num_samples, seq_len, source="demo:heldout")


def eval_texts(source: str, text_column: str = "text") -> list[str]:
    """Texts of an evaluation source: a .txt file (documents separated by blank lines), a
    .json/.jsonl/.csv/.parquet file or a ``save_to_disk`` dataset folder (``text_column`` of each
    record)."""
    if not Path(source).exists():
        raise BlockPruneError(
            f"evaluation data not found: {source}; give a .txt/.jsonl/.json/.csv/.parquet file, "
            "a saved dataset folder, or 'demo'"
        )
    texts = [t for t in load_texts(source, "heldout", text_column) if t.strip()]
    if not texts:
        raise BlockPruneError(f"{source} holds no text; give a file or dataset with text in it")
    return texts


def eval_data(
    tokenizer: Any,
    source: str = DEMO_SOURCE,
    text_column: str = "text",
    seq_len: int = 128,
    max_samples: int | None = None,
) -> CalibrationData:
    """Packed ``seq_len``-token blocks of ``source`` for perplexity: the demo held-out split
    (``demo``, 64 blocks) or every full block of a file / dataset (at most ``max_samples``; a text
    shorter than one block gives one shorter block)."""
    if seq_len < 2:
        raise BlockPruneError(f"seq_len must be at least 2, got {seq_len}")
    if source == DEMO_SOURCE:
        return heldout_data(tokenizer, max_samples or DEMO_HELDOUT_SAMPLES, seq_len)
    texts = eval_texts(source, text_column)
    stream = token_stream(tokenizer, texts, None if max_samples is None else max_samples * seq_len)
    if len(stream) < 2:
        raise BlockPruneError(f"{source} has fewer than 2 tokens; give more text")
    length = min(seq_len, len(stream))
    ids = pack_blocks(stream, length, max_samples)
    blocks = len(ids)
    meta = {"source": source, "num_samples": blocks, "seq_len": length, "pack": True}
    return CalibrationData(ids, torch.ones_like(ids), meta)
