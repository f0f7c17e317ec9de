"""BlockPruner, the pipeline in one object: load → calibrate → select (a registered method) →
surgery → save. It sits above every stage it drives (selection, output) and below healing and the CLI."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from optimum_blockprune.blocks import Block, positions
from optimum_blockprune.config import BlockPruneConfig
from optimum_blockprune.data.calibration import CalibrationData, build_calibration, load_texts
from optimum_blockprune.energy.distributed import Processes
from optimum_blockprune.energy.model import EnergyModel
from optimum_blockprune.energy.scoring import LossScorer
from optimum_blockprune.energy.variants import analyze
from optimum_blockprune.errors import BlockPruneError, SettingError
from optimum_blockprune.model.adapters.base import Adapter, count_params
from optimum_blockprune.model.registry import get_adapter
from optimum_blockprune.output.saving import save_pruned
from optimum_blockprune.plan import check_blocks, check_output, check_settings, granularity_of
from optimum_blockprune.selection.registry import Request, Selection, get_method
from optimum_blockprune.solvers import solve

__all__ = ["BlockPruner", "PruneResult", "Selection"]


#: The ``method`` a report records when the blocks were given (:meth:`BlockPruner.remove`).
GIVEN_METHOD = "given"
GIVEN_SUMMARY = "The blocks to remove were given by the user (optimum-cli blockprune apply)."


@dataclass
class PruneResult:
    path: Path
    removed: list[str]
    report: dict[str, Any]


class BlockPruner:
    """Prune a causal LM by deleting whole decoder layers chosen by constrained binary optimisation."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        adapter: Adapter,
        model_id: str = "",
        cache_device: str | torch.device | None = None,
    ) -> None:
        """``cache_device``: where the loss scorer keeps its cached layer inputs (default: the
        model's device)."""
        self.model, self.tokenizer, self.adapter, self.model_id = model, tokenizer, adapter, model_id
        self.cache_device = cache_device
        self.model.eval()
        self._data_cache: dict[tuple, CalibrationData] = {}

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_pretrained(
        cls,
        model_or_path: str | Path | nn.Module | None = None,
        *,
        tokenizer: Any = None,
        adapter: str | None = None,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device | None = None,
        device_map: str | dict | None = None,
        max_memory: dict | None = None,
        offload_folder: str | Path | None = None,
        revision: str | None = None,
        cache_device: str | torch.device | None = None,
    ) -> BlockPruner:
        """Load a model folder, a Hub id (at ``revision``) or ``"demo"`` (the bundled demo model;
        also ``None``), or wrap an in-memory model.

        ``device`` puts the whole model on one device; ``device_map`` / ``max_memory`` /
        ``offload_folder`` place a large model over GPUs, CPU and disk (see
        :func:`optimum_blockprune.model.loading.load_model_and_tokenizer`). ``cache_device``: where
        the loss scorer keeps its cached layer inputs (default: the model's device)."""
        from optimum_blockprune.model.loading import load_model_and_tokenizer

        model, tokenizer, model_id = load_model_and_tokenizer(
            model_or_path,
            tokenizer=tokenizer,
            dtype=dtype,
            device=device,
            device_map=device_map,
            max_memory=max_memory,
            offload_folder=offload_folder,
            revision=revision,
        )
        return cls(model, tokenizer, get_adapter(model, adapter), model_id, cache_device=cache_device)

    def blocks(self, granularity: str = "layer") -> list[Block]:
        return self.adapter.blocks(self.model, granularity)

    def calibration(self, config: BlockPruneConfig) -> CalibrationData:
        """Calibration batches described by ``config`` (cached per setting)."""
        key = (
            config.calibration,
            config.text_field,
            config.num_samples,
            config.seq_len,
            config.pack,
            config.chat_template,
        )
        if key not in self._data_cache:
            texts = load_texts(config.calibration, "calibration", config.text_field)
            self._data_cache[key] = build_calibration(
                self.tokenizer,
                texts,
                config.num_samples,
                config.seq_len,
                pack=config.pack,
                chat_template=config.chat_template,
                source=config.calibration,
            )
        return self._data_cache[key]

    # ----------------------------------------------------------------- analysis
    def analyze(
        self,
        config: BlockPruneConfig | None = None,
        *,
        base: list[str] | None = None,
        scorer: LossScorer | None = None,
        exclude: list[str] | None = None,
        progress: bool = False,
        checkpoint: str | Path | None = None,
        resume: bool = True,
        gradient_checkpointing: bool = False,
    ) -> EnergyModel:
        """The energy model of ``config.energy`` at the configuration that removes ``base``.

        For the gradient energies (``fisher``, ``taylor``): rows of A are checkpointed to
        ``checkpoint`` after every batch and, with ``resume``, continued from it (delete it once
        the energy is saved); ``gradient_checkpointing`` recomputes layers in the backward pass
        to save memory; under ``accelerate launch`` the calibration batches are shared among the
        processes and every process gets the whole energy."""
        config = config or BlockPruneConfig(remove=1)
        blocks = self.blocks(config.granularity)
        names = [b.name for b in blocks]
        base_pos = positions(names, base or [])
        data = self.calibration(config)
        meta = {
            "model_id": self.model_id,
            "model_params": count_params(self.model),
            "calibration": data.metadata,
            "num_tokens": data.num_tokens,
        }
        energy = analyze(
            config.energy,
            self.model,
            self.adapter,
            blocks,
            data,
            config.batch_size,
            base=base_pos,
            exclude=positions(names, exclude or []),
            scorer=scorer,
            progress=progress,
            checkpoint=checkpoint,
            resume=resume,
            gradient_checkpointing=gradient_checkpointing,
            objective=config.objective,
        )
        energy.metadata.update(meta)
        return energy

    def solve(self, energy: EnergyModel, remove: int | Mapping[str, int] | None = None, **options: Any):
        """Lowest-energy configurations (a dimod SampleSet); see :func:`optimum_blockprune.solve`
        (``remove`` a count or counts per kind, ``min_params=`` a parameter budget)."""
        return solve(energy, remove, **options)

    # ----------------------------------------------------------------- selection
    def select(
        self,
        config: BlockPruneConfig,
        progress: bool = False,
        scorer: LossScorer | None = None,
        energy: EnergyModel | None = None,
        calibration: CalibrationData | None = None,
    ) -> Selection:
        """Choose the blocks to remove with the registered method ``config.method`` (default:
        ``energy``; see :mod:`optimum_blockprune.selection`). ``calibration``: token batches to
        use instead of ``config``'s calibration text (e.g. random tokens, no tokenizer needed).
        Under ``accelerate launch`` every process runs it on its share of the calibration samples
        and gets the same selection."""
        method = get_method(config.method)
        t0 = time.perf_counter()
        blocks = self.blocks(config.granularity)
        request = Request(
            self.model,
            self.adapter,
            blocks,
            config,
            (lambda: calibration) if calibration is not None else (lambda: self.calibration(config)),
            count_params(self.model),
            self.model_id,
            scorer,
            progress and Processes.current().is_main,
            energy,
            cache_device=self.cache_device,
        )
        selection = method.select(request)
        # a plugin's method may leave its work uncounted: the report and the CLI read these keys
        selection.cost.setdefault("forward_passes", 0.0)
        selection.cost.setdefault("backward_passes", 0)
        selection.cost.setdefault("seconds", round(time.perf_counter() - t0, 3))
        return selection

    # ----------------------------------------------------------------- prune and save
    def prune(
        self,
        config: BlockPruneConfig,
        save_dir: str | Path,
        *,
        overwrite: bool = False,
        progress: bool = False,
        write_report: bool = True,
    ) -> PruneResult:
        """Select blocks, delete them from the model, and save model, tokenizer, config, report,
        each round's energy model and a model card (README.md) atomically to ``save_dir``; with
        ``write_report`` also the visual report (report.html, report.md). The in-memory model is
        pruned in place. Under ``accelerate launch`` every process selects (each on its share of
        the calibration samples) and prunes its model; only the main one writes ``save_dir``."""
        check_output(save_dir, overwrite, self.model_id)
        check_settings(config, self.blocks(config.granularity))
        t0 = time.perf_counter()
        selection = self.select(config, progress=progress)
        return self._finish(config, selection, save_dir, time.perf_counter() - t0, overwrite, write_report)

    def prune_from_energy(
        self,
        config: BlockPruneConfig,
        energy_file: str | Path,
        save_dir: str | Path,
        *,
        overwrite: bool = False,
        write_report: bool = True,
    ) -> PruneResult:
        """:meth:`prune` with the energy model ``analyze`` saved: solved once and reranked on real
        loss, not recomputed (the ``energy`` method only)."""
        energy = EnergyModel.load(energy_file)
        if config.method != "energy":
            raise SettingError("energy_file", "{name} needs --method energy")
        names = [b.name for b in self.blocks(config.granularity)]
        if list(energy.block_names) != names:
            raise SettingError(
                "energy_file",
                f"{{name}} {energy_file} holds blocks {energy.block_names[0]} ... {energy.block_names[-1]} "
                f"({len(energy)}), not this model's at granularity {config.granularity}; "
                "analyze this model at the same --granularity",
            )
        check_output(save_dir, overwrite, self.model_id)
        check_settings(config, self.blocks(config.granularity))
        t0 = time.perf_counter()
        selection = self.select(config, energy=energy)
        return self._finish(config, selection, save_dir, time.perf_counter() - t0, overwrite, write_report)

    def remove(
        self,
        blocks: Sequence[str],
        save_dir: str | Path,
        *,
        config: BlockPruneConfig | None = None,
        overwrite: bool = False,
        write_report: bool = True,
    ) -> PruneResult:
        """Remove exactly ``blocks`` (names such as ``layers.3``, ``layers.7.attn``) and save the
        folder :meth:`prune` would write for them. The calibration loss before and after is
        measured on ``config``'s calibration text (default: the demo corpus); ``config`` records
        the run (its ``remove``, ``granularity`` and ``removed_blocks`` are set here)."""
        names = list(dict.fromkeys(blocks))
        if not names:
            raise SettingError("blocks", "{name} names no blocks; give e.g. layers.3,layers.7.attn")
        check_blocks(names, self.blocks("mixed") + self.blocks("sublayer"), "blocks")
        check_output(save_dir, overwrite, self.model_id)
        config = config or BlockPruneConfig(remove=len(names))
        config.remove, config.granularity = len(names), granularity_of(names)
        t0 = time.perf_counter()
        scorer = LossScorer(
            self.model,
            self.adapter,
            self.calibration(config),
            config.batch_size,
            cache_device=self.cache_device,
            objective=config.objective,
        )
        dense, pruned = scorer.loss(), scorer.loss(names)
        cost = {"forward_passes": round(scorer.forward_equivalents, 2), "backward_passes": 0}
        cost["seconds"] = round(time.perf_counter() - t0, 3)
        selection = Selection(names, dense, pruned, cost=cost, method=GIVEN_METHOD, summary=GIVEN_SUMMARY)
        return self._finish(config, selection, save_dir, time.perf_counter() - t0, overwrite, write_report)

    def _finish(
        self,
        config: BlockPruneConfig,
        selection: Selection,
        save_dir: str | Path,
        t_select: float,
        overwrite: bool,
        write_report: bool,
    ) -> PruneResult:
        """Delete the selection's blocks and save the folder (model, tokenizer, config, report,
        energies, model card). Under ``accelerate launch`` every process deletes them and the main
        one alone writes, once every process has checked the folder; the others wait for it and
        get its report (or its error)."""
        params_before = count_params(self.model)
        num_blocks = len(self.blocks(config.granularity))
        surgery = self.adapter.remove_blocks(self.model, selection.removed)
        config.removed_blocks = selection.removed
        report = self._report(config, selection, surgery, params_before, num_blocks, t_select)
        processes = Processes.current()
        processes.barrier()  # every process's check_output ran before the folder appears
        path, error = Path(save_dir), None
        if processes.is_main:
            try:
                path = save_pruned(
                    self.model,
                    self.tokenizer,
                    config,
                    report,
                    save_dir,
                    overwrite=overwrite,
                    energies=selection.energies,
                    write_report=write_report,
                )
            except Exception as exc:  # the others must learn of it, or they wait forever
                error = exc
        report, message = processes.broadcast((report, None if error is None else str(error)))
        if error is not None:
            raise error
        if message is not None:
            raise BlockPruneError(f"the main process could not write {save_dir}: {message}")
        return PruneResult(path, selection.removed, report)

    def _report(
        self,
        config: BlockPruneConfig,
        selection: Selection,
        surgery: dict[str, Any],
        params_before: int,
        num_blocks: int,
        t_select: float,
    ) -> dict[str, Any]:
        """What ``blockprune_report.json`` records about the run."""
        return {
            "model_id": self.model_id,
            "adapter": self.adapter.name,
            "method": selection.method,
            "method_summary": selection.summary,
            "removed": selection.removed,
            "num_blocks": num_blocks,
            "parameters_before": params_before,
            "parameters_after": count_params(self.model),
            "deleted_layers": surgery["deleted_layers"],
            "skipped_branches": [f"layers.{i}.{kind}" for i, kind in surgery["skipped"]],
            "dense_loss": selection.dense_loss,
            "pruned_loss": selection.pruned_loss,
            "rounds": selection.rounds,
            "cost": selection.cost,
            "seconds": {"select": t_select},
            "config": config.to_dict(),
        }
