"""Save a pruned model folder atomically: weights, config, tokenizer, blockprune config and report,
the energy model of each selection round, a model card and the visual report."""

from __future__ import annotations

import platform
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from .atomic import atomic_output_dir, write_json_atomic
from .checkpoint import mark_branch_pruned
from .config import BlockPruneConfig
from .surgery import layer_skips

if TYPE_CHECKING:
    from .energy import EnergyModel

REPORT_NAME = "blockprune_report.json"
ENERGY_NAME = "blockprune_energy.safetensors"


def energy_file_name(round_number: int) -> str:
    """File of round ``round_number``'s energy model (1-based): the first round's (at the unpruned
    model) is ``blockprune_energy.safetensors``, later re-centring rounds add ``.round{r}``."""
    return (
        ENERGY_NAME
        if round_number == 1
        else ENERGY_NAME.replace(".safetensors", f".round{round_number}.safetensors")
    )


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
    energies: Sequence[EnergyModel] = (),
    write_report: bool = True,
) -> Path:
    """Write everything to a temporary sibling folder, then rename it into place.

    ``energies`` (one per selection round) are saved beside the model and listed in the report
    under ``energy_files`` (``report`` is updated in place). A model card (README.md) is always
    written; with ``write_report`` and energies the visual report too (see :mod:`.report`)."""
    from .modelcard import write_model_card

    target = Path(save_dir)
    with atomic_output_dir(target, overwrite) as tmp:
        model.save_pretrained(tmp)
        if layer_skips(model.config):
            mark_branch_pruned(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        config.save_pretrained(tmp)
        if energies:
            report["energy_files"] = [energy_file_name(r) for r in range(1, len(energies) + 1)]
            for name, energy in zip(report["energy_files"], energies, strict=True):
                energy.save(tmp / name)
        write_json_atomic(tmp / REPORT_NAME, {**report, "versions": versions()})
        visual = bool(write_report and energies)
        if visual:
            from .report import build_report

            build_report(tmp, name=target.name)
        write_model_card(tmp, name=target.name, with_report=visual)
    return target.resolve()
