"""The one text loader: ``demo`` (the bundled Wikipedia corpus), a .txt file, a .jsonl/.json/.csv/
.parquet file or a saved ``datasets`` folder, as a list of documents."""

from __future__ import annotations

import json
from pathlib import Path

from optimum_blockprune.errors import BlockPruneError

DEMO_SOURCE = "demo"


def load_texts(source: str, split: str = "calibration", text_field: str = "text") -> list[str]:
    """Texts from ``demo`` (the bundled Wikipedia corpus), a .txt file (documents separated by
    blank lines), a .jsonl/.json/.csv/.parquet file (``text_field`` of each record), or a saved
    ``datasets`` folder."""
    if source == DEMO_SOURCE:
        from optimum_blockprune.data.demo_assets import demo_texts

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
