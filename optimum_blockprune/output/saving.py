"""Save a pruned model folder atomically: weights, config, tokenizer, blockprune config and report,
the energy model of each selection round, a model card and the visual report."""

from __future__ import annotations

import platform
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from optimum_blockprune.config import BlockPruneConfig
from optimum_blockprune.data.atomic import atomic_output_dir, check_output_dir, write_json_atomic
from optimum_blockprune.model.marker import mark_config
from optimum_blockprune.output.layout import REPORT_NAME, energy_file_name, is_tool_file
from optimum_blockprune.output.modelcard import write_model_card
from optimum_blockprune.output.report import build_report

if TYPE_CHECKING:
    from optimum_blockprune.energy.model import EnergyModel


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


def check_output(save_dir: str | Path, overwrite: bool = False, *, source: str | Path | None = None) -> Path:
    """Refuse, before any work, an output folder :func:`save_pruned` would refuse: a file, the
    input model's folder ``source``, a non-empty folder without ``overwrite``, or one holding files
    this tool does not write (``--overwrite`` replaces only its own files)."""
    return check_output_dir(save_dir, overwrite, owned=is_tool_file, source=source)


def save_pruned(
    model: nn.Module,
    tokenizer: Any,
    config: BlockPruneConfig | None,
    report: dict[str, Any],
    save_dir: str | Path,
    *,
    overwrite: bool = False,
    energies: Sequence[EnergyModel] = (),
    write_report: bool = True,
    energy_source: Path | None = None,
    extra_versions: dict[str, str] | None = None,
    source: str | Path | None = None,
) -> Path:
    """Write a pruned (or healed) model folder to a temporary sibling, then rename it into place.

    ``energies`` (one per selection round) are saved beside the model and listed in the report
    under ``energy_files`` (``report`` is updated in place); or, for a healed copy, the files the
    report lists are copied from ``energy_source``. A model card (README.md) is written whenever
    there is a ``config``; with ``write_report`` and every energy file the visual report too (see
    :mod:`optimum_blockprune.output.report`). ``extra_versions`` join the recorded package versions.
    An existing ``save_dir`` is replaced only with ``overwrite`` and only if it holds nothing but
    files this tool writes; ``source`` (the input model's folder, by default the folder ``model``
    was loaded from) is never written into. A model
    with removed branches is saved with the branch-pruned marker (see
    :mod:`optimum_blockprune.model.pruned_format`)."""
    target = Path(save_dir)
    source = source if source is not None else loaded_from(model)
    with atomic_output_dir(target, overwrite, owned=is_tool_file, source=source) as tmp:
        mark_config(model.config)
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if config is not None:
            config.save_pretrained(tmp)
        visual = _write_energies(tmp, report, energies, energy_source) and write_report
        write_json_atomic(tmp / REPORT_NAME, {**report, "versions": {**versions(), **(extra_versions or {})}})
        if visual:
            build_report(tmp, name=target.name)
        if config is not None:
            write_model_card(tmp, name=target.name, with_report=visual)
    return target.resolve()


def loaded_from(model: nn.Module) -> Path | None:
    """The local folder ``model`` was loaded from, if any (``name_or_path`` of its config)."""
    name = getattr(getattr(model, "config", None), "_name_or_path", "") or ""
    return Path(name) if name and Path(name).is_dir() else None


def _write_energies(
    folder: Path, report: dict[str, Any], energies: Sequence[EnergyModel], source: Path | None
) -> bool:
    """Save ``energies`` (or copy the report's energy files from ``source``) into ``folder``;
    whether every energy file the report lists is there."""
    if energies:
        report["energy_files"] = [energy_file_name(r) for r in range(1, len(energies) + 1)]
        for name, energy in zip(report["energy_files"], energies, strict=True):
            energy.save(folder / name)
        return True
    listed = report.get("energy_files") or []
    present = [n for n in listed if source and (source / n).is_file()]
    for name in present:
        shutil.copy2(source / name, folder / name)
    return bool(present) and len(present) == len(listed)
