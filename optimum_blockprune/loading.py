"""Load a causal LM and its tokenizer from a folder, a hub id, or an in-memory model."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import load_pruned
from .errors import BlockPruneError

_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_model_and_tokenizer(
    model_or_path: str | Path | nn.Module | None,
    *,
    tokenizer: Any = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[nn.Module, Any, str]:
    """(model, tokenizer, model_id). ``None`` means the bundled demo model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if isinstance(model_or_path, nn.Module):
        config = getattr(model_or_path, "config", None)
        return (
            model_or_path,
            tokenizer,
            str(getattr(config, "_name_or_path", "") or type(model_or_path).__name__),
        )
    if model_or_path is None:
        from .demo_assets import demo_model_path

        model_or_path = demo_model_path()
    source = str(model_or_path)
    path = Path(source)
    if not path.exists() and (source.startswith((".", "/", "~")) or not _HUB_ID.match(source)):
        raise BlockPruneError(f"model folder not found: {source}; give a folder with config.json and weights")
    if path.exists() and not (path / "config.json").is_file():
        raise BlockPruneError(f"{source} has no config.json; give a folder saved with save_pretrained")
    try:
        if path.exists():
            model = load_pruned(path, dtype=dtype)
        else:
            model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    except ValueError as exc:
        if "Unrecognized configuration class" in str(exc) or "model_type" in str(exc):
            raise BlockPruneError(f"unknown architecture in {source}: {_first_line(exc)}") from None
        raise BlockPruneError(f"cannot load model {source}: {_first_line(exc)}") from None
    except (OSError, KeyError) as exc:
        raise BlockPruneError(f"cannot load model {source}: {_first_line(exc)}") from None
    if tokenizer is None:
        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
        except Exception as exc:
            raise BlockPruneError(f"cannot load the tokenizer of {source}: {_first_line(exc)}") from None
    return model, tokenizer, source
