"""BlockPruner: analyze → solve → rerank → surgery → save."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .adapters.base import Adapter, count_params
from .analysis import GRADIENT_VARIANTS, gradient_energy, loss_energy
from .blocks import Block, overlapping_blocks
from .calibration import CalibrationData, build_calibration, load_texts
from .config import BlockPruneConfig
from .distributed import Processes
from .energy import EnergyModel, penalise_overlaps
from .errors import BlockPruneError
from .gradients import gate_gradients
from .methods import ENERGY_METHOD
from .plugins import get_adapter
from .scoring import LossScorer

#: Blocks added per re-centring round of the ``recentred`` energy.
RECENTRE_STEP = 2
#: In later rounds, only this many of the previous round's cheapest blocks are rescanned.
RECENTRE_POOL = 12


@dataclass
class Selection:
    """The chosen blocks and everything measured while choosing them."""

    removed: list[str]
    dense_loss: float
    pruned_loss: float
    rounds: list[dict[str, Any]] = field(default_factory=list)
    cost: dict[str, float] = field(default_factory=dict)
    #: The energy model of each round (what the report's heatmap and fields show).
    energies: list[EnergyModel] = field(default_factory=list)
    method: str = "energy"


@dataclass
class PruneResult:
    path: Path
    removed: list[str]
    report: dict[str, Any]


class BlockPruner:
    """Prune a causal LM by deleting whole decoder layers chosen by constrained binary optimisation."""

    def __init__(self, model: nn.Module, tokenizer: Any, adapter: Adapter, model_id: str = "") -> None:
        self.model, self.tokenizer, self.adapter, self.model_id = model, tokenizer, adapter, model_id
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
        device_map: str | dict | None = None,
        max_memory: dict | None = None,
        offload_folder: str | Path | None = None,
    ) -> BlockPruner:
        """Load a model folder (default: the bundled demo model) or wrap an in-memory model.

        ``device_map`` / ``max_memory`` / ``offload_folder`` place a large model over GPUs, CPU
        and disk (see :func:`optimum_blockprune.loading.load_model_and_tokenizer`)."""
        from .loading import load_model_and_tokenizer

        model, tokenizer, model_id = load_model_and_tokenizer(
            model_or_path,
            tokenizer=tokenizer,
            dtype=dtype,
            device_map=device_map,
            max_memory=max_memory,
            offload_folder=offload_folder,
        )
        return cls(model, tokenizer, get_adapter(model, adapter), model_id)

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
        base_pos = _positions(names, base or [])
        data = self.calibration(config)
        meta = {
            "model_id": self.model_id,
            "model_params": count_params(self.model),
            "calibration": data.metadata,
            "num_tokens": data.num_tokens,
        }
        if config.energy in GRADIENT_VARIANTS:
            A, losses = gate_gradients(
                self.model,
                self.adapter,
                blocks,
                data,
                config.batch_size,
                base_pos,
                progress,
                checkpoint=checkpoint,
                resume=resume,
                gradient_checkpointing=gradient_checkpointing,
            )
            energy = gradient_energy(config.energy, A, blocks, base_pos)
            energy.sources["losses"] = losses
        else:
            if Processes.current().world > 1:
                raise BlockPruneError(
                    f"the {config.energy!r} energy runs in one process; drop accelerate launch "
                    "or use --energy fisher / taylor for a data-parallel analysis"
                )
            scorer = scorer or LossScorer(self.model, self.adapter, data, config.batch_size)
            energy = loss_energy(
                config.energy, scorer, blocks, base_pos, _positions(names, exclude or []), progress
            )
        energy.metadata.update(meta)
        return energy

    def solve(self, energy: EnergyModel, remove: int | Mapping[str, int] | None = None, **options: Any):
        """Lowest-energy configurations (a dimod SampleSet); see :func:`optimum_blockprune.solve`
        (``remove`` a count or counts per kind, ``min_params=`` a parameter budget)."""
        from .solvers import solve

        return solve(energy, remove, **options)

    # ----------------------------------------------------------------- selection
    def select(
        self, config: BlockPruneConfig, progress: bool = False, scorer: LossScorer | None = None
    ) -> Selection:
        """Choose the blocks to remove: solve (in re-centring rounds for ``recentred``, each
        round's ground state fixed for the next), then rerank the last round's top-K candidates
        by their real calibration loss."""
        from .rerank import rerank
        from .solvers import solution_names

        if config.method != ENERGY_METHOD:
            return self._select_baseline(config, progress, scorer)
        t_start = time.perf_counter()
        blocks = self.blocks(config.granularity)
        names = [b.name for b in blocks]
        remove, min_params = config.removal_target(blocks, count_params(self.model))
        protect, force = list(config.protect or []), list(config.force or [])
        _positions(names, protect + force)  # validates names early
        conflicts = overlapping_blocks(blocks)
        data = self.calibration(config)
        scorer = scorer or LossScorer(self.model, self.adapter, data, config.batch_size)
        work_before = scorer.forward_equivalents
        dense_loss = scorer.loss()
        chosen = list(force)
        rounds: list[dict[str, Any]] = []
        energies: list[EnergyModel] = []
        backward_passes = 0
        pool: list[str] | None = None
        targets = _round_targets(
            remove, min_params, [blocks[i] for i in _positions(names, force)], blocks, config.energy
        )
        for r, (target, target_params) in enumerate(targets):
            last = r == len(targets) - 1
            t0 = time.perf_counter()
            exclude = [n for n in names if pool is not None and n not in pool and n not in chosen]
            energy = self.analyze(config, base=chosen, scorer=scorer, exclude=exclude, progress=progress)
            energies.append(energy)
            if config.energy in GRADIENT_VARIANTS:
                backward_passes += 1
            taken = {*chosen, *exclude, *protect}
            free = [i for i, name in enumerate(names) if name not in taken]
            pool = _cheapest_per_kind(energy, blocks, free, RECENTRE_POOL)
            # Intermediate rounds keep their ground state; only the last round's top-K is reranked
            # (measured on SmolLM2: reranking every round did 40% more work at M=8 and picked the same layers).
            for top_k in dict.fromkeys([config.top_k if last else 1, config.top_k]):
                samples = self.solve(
                    penalise_overlaps(energy, conflicts) if conflicts else energy,
                    target,
                    min_params=target_params,
                    solver=config.solver,
                    top_k=top_k,
                    protect=protect + exclude,
                    force=chosen,
                )
                reasons = [self._refusal(c, conflicts) for c in solution_names(samples)]
                keep = np.array([r is None for r in reasons])
                if keep.any():  # an intermediate round whose ground state is refused retries with top-K
                    break
            if not keep.any():
                raise BlockPruneError(
                    f"every one of the {len(reasons)} lowest-energy candidates is refused ({reasons[0]}); "
                    "raise --top-k or protect a block"
                )
            if not last:  # an intermediate round keeps its lowest-energy allowed configuration
                keep[np.flatnonzero(keep)[1:]] = False
            candidates = [c for c, k in zip(solution_names(samples), keep, strict=True) if k]
            scores = rerank(scorer, candidates, base=chosen, progress=progress)
            best = int(np.argmin(scores))
            chosen = candidates[best]
            rounds.append(
                {
                    "target": target,
                    "min_params": target_params,
                    "candidates": [
                        {"removed": c, "energy": float(e), "loss": float(s)}
                        for c, e, s in zip(candidates, samples.record.energy[keep], scores, strict=True)
                    ],
                    "chosen": best,
                    "solver": {
                        k: v
                        for k, v in samples.info.items()
                        if isinstance(v, (bool, int, float, str, type(None)))
                    },
                    "seconds": time.perf_counter() - t0,
                }
            )
        scorer.set_base([])
        pruned_loss = scorer.loss(chosen)
        cost = {  # + 1: the dense pass that records every layer's input
            "forward_equivalents": round(scorer.forward_equivalents - work_before + 1, 2),
            "backward_passes": backward_passes,
            "calibration_tokens": data.num_tokens,
        }
        cost["forward_passes"] = cost["forward_equivalents"]
        cost["seconds"] = round(time.perf_counter() - t_start, 3)
        return Selection(sorted(chosen, key=names.index), dense_loss, pruned_loss, rounds, cost, energies)

    def _refusal(self, removed: list[str], conflicts: list[tuple[str, str]]) -> str | None:
        """Why a candidate cannot be removed: a layer with one of its own branches (``mixed``), or
        the adapter's rule (see ``Adapter.removal_error``); None when it can."""
        chosen = set(removed)
        pair = next(((a, b) for a, b in conflicts if a in chosen and b in chosen), None)
        if pair:
            return f"{pair[0]} is removed together with its own branch {pair[1]}"
        return self.adapter.removal_error(self.model, removed)

    def _select_baseline(
        self, config: BlockPruneConfig, progress: bool, scorer: LossScorer | None
    ) -> Selection:
        """Choose blocks with a peer method (``config.method``); its cost excludes the dense and
        pruned calibration losses measured for the report."""
        from .baselines import select_baseline

        blocks = self.blocks(config.granularity)
        names = [b.name for b in blocks]
        remove, min_params = config.removal_target(blocks, count_params(self.model))
        if remove is None or min_params is not None:
            raise BlockPruneError(
                f"method {config.method!r} takes a block count (--remove or --ratio), not a parameter "
                "budget; use --method energy for --target-params / --param-ratio"
            )
        data = self.calibration(config)
        scorer = scorer or LossScorer(self.model, self.adapter, data, config.batch_size)
        choice = select_baseline(
            config.method,
            self.model,
            self.adapter,
            data,
            remove,
            granularity=config.granularity,
            protect=config.protect or (),
            force=config.force or (),
            batch_size=config.batch_size,
            seed=config.seed,
            progress=progress,
            scorer=scorer,
        )
        scorer.set_base([])
        dense_loss, pruned_loss = scorer.loss(), scorer.loss(choice.removed)
        cost = {**choice.cost.as_dict(), "calibration_tokens": data.num_tokens}
        return Selection(
            sorted(choice.removed, key=names.index), dense_loss, pruned_loss, [], cost, method=config.method
        )

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
        pruned in place."""
        from .atomic import check_output_dir
        from .saving import save_pruned

        if Processes.current().world > 1:  # every process would write the same folder
            raise BlockPruneError(
                "prune runs in one process; under accelerate launch run 'analyze' "
                "(--energy fisher or taylor), then 'solve'"
            )
        check_output_dir(save_dir, overwrite)
        t0 = time.perf_counter()
        params_before = count_params(self.model)
        num_blocks = len(self.blocks(config.granularity))
        selection = self.select(config, progress=progress)
        t_select = time.perf_counter() - t0
        surgery = self.adapter.remove_blocks(self.model, selection.removed)
        config.removed_blocks = selection.removed
        report = {
            "model_id": self.model_id,
            "adapter": self.adapter.name,
            "method": selection.method,
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
        return PruneResult(path, selection.removed, report)


def _positions(names: list[str], wanted: list[str]) -> list[int]:
    lookup = {n: i for i, n in enumerate(names)}
    unknown = [w for w in wanted if w not in lookup]
    if unknown:
        raise BlockPruneError(f"unknown block {unknown[0]!r}; blocks are named {names[0]} ... {names[-1]}")
    return [lookup[w] for w in wanted]


def _round_targets(
    remove: int | dict | None,
    min_params: int | None,
    forced: list[Block],
    blocks: list[Block],
    variant: str,
) -> list[tuple[int | dict | None, int | None]]:
    """``(remove, min_params)`` of each round: one round, or for ``recentred`` rounds that each add
    about RECENTRE_STEP blocks, every constraint scaled by the fraction of rounds done."""
    already = len(forced)
    if isinstance(remove, int) and remove <= already:
        raise BlockPruneError(f"{already} forced blocks already reach the requested {remove}; raise --remove")
    if variant != "recentred":
        return [(remove, min_params)]
    if isinstance(remove, int):
        total = remove
    elif isinstance(remove, dict):
        total = sum(remove.values())
    else:  # a budget only: estimate the count from the average block
        total = math.ceil(min_params / max(np.mean([b.num_params for b in blocks]), 1))
    rounds = max(1, math.ceil((total - already) / RECENTRE_STEP))
    out = []
    for r in range(1, rounds + 1):
        if isinstance(remove, int):
            step = already + math.ceil((remove - already) * r / rounds)
        elif isinstance(remove, dict):
            step = {
                k: max(sum(b.kind == k for b in forced), math.ceil(c * r / rounds)) for k, c in remove.items()
            }
        else:
            step = None
        out.append((step, None if min_params is None else math.ceil(min_params * r / rounds)))
    return out


def _cheapest_per_kind(energy: EnergyModel, blocks: list[Block], free: list[int], size: int) -> list[str]:
    """Names of the ``size`` lowest-field free blocks of each kind (the next round's pool)."""
    pool = []
    for kind in dict.fromkeys(b.kind for b in blocks):
        of_kind = [i for i in free if blocks[i].kind == kind]
        order = np.argsort(energy.fields[of_kind], kind="stable")[:size]
        pool += [blocks[of_kind[j]].name for j in order]
    return pool
