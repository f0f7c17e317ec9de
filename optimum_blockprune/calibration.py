"""Calibration text → token batches (packed fixed-length blocks, or one padded sample per text)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import BlockPruneError

DEMO_SOURCE = "demo"


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


def load_texts(source: str, split: str = "calibration", text_field: str = "text") -> list[str]:
    """Texts from ``demo`` (the bundled Wikipedia corpus), a .txt file (documents separated by
    blank lines), a .jsonl/.json/.csv/.parquet file (``text_field`` of each record), or a saved
    ``datasets`` folder."""
    if source == DEMO_SOURCE:
        from .demo_assets import demo_texts

        return demo_texts(split)
    path = Path(source)
    if not path.exists():
        raise BlockPruneError(
            f"calibration source not found: {source}; give a .txt/.jsonl file, a saved dataset folder or 'demo'"
        )
    if path.is_dir():
        import datasets

        try:
            ds = datasets.load_from_disk(str(path))
        except Exception as exc:
            raise BlockPruneError(f"cannot read dataset folder {path}: {str(exc).splitlines()[0]}") from None
        if isinstance(ds, datasets.DatasetDict):
            ds = ds["train"] if "train" in ds else next(iter(ds.values()))
        if text_field not in ds.column_names:
            raise BlockPruneError(
                f"dataset {path} has no column {text_field!r}; columns: {', '.join(ds.column_names)}"
            )
        return [str(t) for t in ds[text_field]]
    if path.suffix in (".csv", ".parquet"):
        return _table_texts(path, text_field)
    raw = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix in (".jsonl", ".json"):
        records = (
            [json.loads(line) for line in raw.splitlines() if line.strip()]
            if path.suffix == ".jsonl"
            else json.loads(raw)
        )
        try:
            return [str(r[text_field]) for r in records]
        except (KeyError, TypeError):
            raise BlockPruneError(f"every record of {path} needs a {text_field!r} field") from None
    return [doc.strip() for doc in raw.split("\n\n") if doc.strip()]


def _table_texts(path: Path, column: str) -> list[str]:
    """The ``column`` of a .csv or .parquet file."""
    import pandas

    try:
        frame = pandas.read_csv(path) if path.suffix == ".csv" else pandas.read_parquet(path)
    except Exception as exc:
        raise BlockPruneError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None
    if column not in frame.columns:
        raise BlockPruneError(
            f"{path} has no column {column!r}; columns: {', '.join(map(str, frame.columns))}"
        )
    return [str(t) for t in frame[column].dropna()]


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
        sep = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.pad_token_id
        need = num_samples * seq_len
        stream: list[int] = []
        for text in texts:
            stream.extend(tokenizer(text, add_special_tokens=add_special)["input_ids"])
            if sep is not None:
                stream.append(sep)
            if len(stream) >= need:
                break
        if len(stream) < need:
            raise BlockPruneError(
                f"calibration text too short: {len(stream)} tokens, need {need} "
                f"({num_samples} samples x {seq_len}); give more text or lower --num-samples / --seq-len"
            )
        ids = torch.tensor(stream[:need], dtype=torch.long).view(num_samples, seq_len)
        return CalibrationData(ids, torch.ones_like(ids), meta)
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
