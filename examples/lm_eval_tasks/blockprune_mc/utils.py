"""Load the questions of the ``blockprune_mc`` task from the jsonl file next to this module."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

QUESTIONS = Path(__file__).with_name("questions.jsonl")


def load(**_: Any):
    """The task's dataset, a ``DatasetDict`` with one ``test`` split (no download)."""
    import datasets

    rows = [json.loads(line) for line in QUESTIONS.read_text(encoding="utf-8").splitlines() if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})
