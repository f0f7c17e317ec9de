"""The one text loader: ``demo`` (the bundled Wikipedia corpus), a .txt file, a .jsonl/.json/.csv/
.parquet file or a saved ``datasets`` folder, as a list of documents."""

from __future__ import annotations

from pathlib import Path

from optimum_blockprune.errors import BlockPruneError

DEMO_SOURCE = "demo"


#: File suffix -> ``datasets`` builder (anything else is read as plain text).
BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}


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
        return [str(t) for t in _column(_saved_dataset(path), text_field, path)]
    builder = BUILDERS.get(path.suffix, "text")
    if builder == "text":
        if not path.read_text(encoding="utf-8", errors="replace").strip():
            return []  # datasets refuses a file without a paragraph; an empty source is the caller's error
        ds = _load(path, "text", sample_by="paragraph", encoding_errors="replace")
        return [doc.strip() for doc in ds["text"] if doc.strip()]
    ds = _load(path, builder)
    if builder == "json":
        if text_field not in ds.column_names or any(t is None for t in ds[text_field]):
            raise BlockPruneError(f"every record of {path} needs a {text_field!r} field")
        return [str(t) for t in ds[text_field]]
    return [str(t) for t in _column(ds, text_field, path) if t is not None]


def _load(path: Path, builder: str, **kwargs):
    """One split of ``path`` through ``datasets.load_dataset``; a one-line error if it cannot."""
    import datasets

    try:
        return datasets.load_dataset(builder, data_files=str(path), split="train", **kwargs)
    except Exception as exc:
        raise BlockPruneError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None


def _saved_dataset(path: Path):
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as exc:
        raise BlockPruneError(f"cannot read dataset folder {path}: {str(exc).splitlines()[0]}") from None
    if isinstance(ds, datasets.DatasetDict):
        ds = ds["train"] if "train" in ds else next(iter(ds.values()))
    return ds


def _column(ds, column: str, path: Path) -> list:
    if column not in ds.column_names:
        what = "dataset " if path.is_dir() else ""
        raise BlockPruneError(f"{what}{path} has no column {column!r}; columns: {', '.join(ds.column_names)}")
    return list(ds[column])
