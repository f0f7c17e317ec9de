"""Healing data: packed blocks of text as a ``datasets`` Dataset."""

from __future__ import annotations

import random
from typing import Any

from optimum_blockprune.data.packing import pack_blocks, token_stream
from optimum_blockprune.errors import BlockPruneError


def healing_dataset(tokenizer: Any, texts: list[str], num_blocks: int, seq_len: int, seed: int = 0):
    """Packed blocks of ``seq_len`` tokens from ``texts`` (shuffled with ``seed``) as a ``datasets``
    Dataset with an ``input_ids`` column: up to ``num_blocks``, fewer if the text runs out."""
    import datasets

    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise BlockPruneError("healing data is empty; give a file or dataset with text in it")
    texts = list(texts)
    random.Random(seed).shuffle(texts)
    stream = token_stream(tokenizer, texts, num_blocks * seq_len)
    if len(stream) < seq_len:
        raise BlockPruneError(
            f"healing data has {len(stream)} tokens, fewer than one block of {seq_len}; give more text "
            "or lower --seq-len"
        )
    ids = pack_blocks(stream, seq_len, num_blocks)
    return datasets.Dataset.from_dict({"input_ids": ids.tolist()})
