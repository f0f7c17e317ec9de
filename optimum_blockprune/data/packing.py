"""The one token packer: texts → one EOS-separated token stream → equal blocks of ``seq_len``
(no padding). Calibration, evaluation and healing data all pack through it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


def token_stream(
    tokenizer: Any, texts: Iterable[str], need: int | None = None, add_special_tokens: bool = True
) -> list[int]:
    """Token ids of ``texts``, each followed by the EOS (else pad) token, stopping as soon as the
    stream holds ``need`` tokens (None: every text)."""
    sep = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.pad_token_id
    stream: list[int] = []
    for text in texts:
        stream.extend(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])
        if sep is not None:
            stream.append(sep)
        if need is not None and len(stream) >= need:
            break
    return stream


def pack_blocks(stream: list[int], seq_len: int, max_blocks: int | None = None) -> torch.Tensor:
    """The stream cut into as many whole ``seq_len`` blocks as it holds (at most ``max_blocks``),
    shape [blocks, seq_len]; the remainder is dropped."""
    blocks = len(stream) // seq_len
    if max_blocks is not None:
        blocks = min(blocks, max_blocks)
    return torch.tensor(stream[: blocks * seq_len], dtype=torch.long).view(blocks, seq_len)
