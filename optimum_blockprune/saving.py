"""Save a pruned model folder atomically: weights, config, tokenizer, blockprune config and report."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

from torch import nn

from .atomic import atomic_output_dir, write_json_atomic
from .checkpoint import mark_branch_pruned
from .config import BlockPruneConfig
from .surgery import layer_skips

REPORT_NAME = "blockprune_report.json"


def versions() -> dict[str, str]:
    """Versions of the packages that shaped the result."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for dist in ("optimum-blockprune", "torch", "transformers", "optimum", "dimod", "dwave-samplers"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return out


def save_pruned(
    model: nn.Module,
    tokenizer: Any,
    config: BlockPruneConfig,
    report: dict[str, Any],
    save_dir: str | Path,
    *,
    overwrite: bool = False,
) -> Path:
    """Write everything to a temporary sibling folder, then rename it into place."""
    target = Path(save_dir)
    with atomic_output_dir(target, overwrite) as tmp:
        model.save_pretrained(tmp)
        if layer_skips(model.config):
            mark_branch_pruned(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        config.save_pretrained(tmp)
        write_json_atomic(tmp / REPORT_NAME, {**report, "versions": versions()})
    return target.resolve()
