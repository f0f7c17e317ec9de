"""Calibration text → token batches (packed fixed-length blocks, or one padded sample per text)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from optimum_blockprune.data.packing import pack_blocks, token_stream
from optimum_blockprune.data.texts import DEMO_SOURCE, load_texts
from optimum_blockprune.errors import BlockPruneError

__all__ = ["DEMO_SOURCE", "CalibrationData", "build_calibration", "load_texts"]


@dataclass
class CalibrationData:
    """``input_ids`` and ``attention_mask`` of shape [samples, seq_len]; loss ignores padding."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    metadata: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(input_ids, attention_mask) chunks of at most ``batch_size`` samples, in order."""
        for start in range(0, len(self), batch_size):
            yield self.input_ids[start : start + batch_size], self.attention_mask[start : start + batch_size]


def build_calibration(
    tokenizer: Any,
    texts: Sequence[str],
    num_samples: int = 32,
    seq_len: int = 128,
    *,
    pack: bool = True,
    chat_template: bool = False,
    source: str = "",
) -> CalibrationData:
    """Tokenise ``texts`` into ``num_samples`` samples of ``seq_len`` tokens.

    ``pack=True`` concatenates documents (EOS-separated) and cuts equal blocks: no padding.
    ``pack=False`` makes one sample per text, truncated and right-padded. ``chat_template=True``
    renders each text as a user turn with the tokenizer's chat template (instruct models).
    """
    if num_samples <= 0 or seq_len < 2:
        raise BlockPruneError("calibration needs num_samples >= 1 and seq_len >= 2")
    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise BlockPruneError("calibration text is empty; give a file or dataset with text in it")
    if chat_template:
        if not getattr(tokenizer, "chat_template", None):
            raise BlockPruneError("the tokenizer has no chat template; drop --chat-template")
        texts = [
            tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False) for t in texts
        ]
    add_special = not chat_template
    meta = {
        "source": source,
        "num_samples": num_samples,
        "seq_len": seq_len,
        "pack": pack,
        "chat_template": chat_template,
    }
    if pack:
        need = num_samples * seq_len
        stream = token_stream(tokenizer, texts, need, add_special)
        if len(stream) < need:
            raise BlockPruneError(
                f"calibration text too short: {len(stream)} tokens, need {need} "
                f"({num_samples} samples x {seq_len}); give more text or lower --num-samples / --seq-len"
            )
        ids = pack_blocks(stream, seq_len, num_samples)
        return CalibrationData(ids, torch.ones_like(ids), meta)
    return _padded(tokenizer, texts, num_samples, seq_len, add_special, meta)


def _padded(
    tokenizer: Any, texts: list[str], num_samples: int, seq_len: int, add_special: bool, meta: dict
) -> CalibrationData:
    """One sample per text, truncated to ``seq_len`` and right-padded."""
    if len(texts) < num_samples:
        raise BlockPruneError(
            f"calibration text has {len(texts)} documents, need {num_samples}; give more or lower --num-samples"
        )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    enc = tokenizer(
        list(texts[:num_samples]),
        truncation=True,
        max_length=seq_len,
        padding="max_length",
        return_tensors="pt",
        add_special_tokens=add_special,
    )
    if int(enc["attention_mask"].sum(dim=1).min()) < 2:
        raise BlockPruneError(
            "a calibration document has fewer than 2 tokens; remove empty or one-word documents"
        )
    return CalibrationData(enc["input_ids"], enc["attention_mask"], meta)
