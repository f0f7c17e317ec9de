"""Trainer callbacks: pruning metadata in every checkpoint, and gradual block removal during training.

They follow transformers' callback rules: the model is never restructured before the optimizer
exists; after a removal the removed parameters leave the optimizer (its param groups and state)
in place, so the optimizer and the learning-rate scheduler the Trainer holds stay the ones in use.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from torch import nn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from optimum_blockprune.config import BlockPruneConfig
from optimum_blockprune.data.atomic import write_json_atomic
from optimum_blockprune.data.calibration import CalibrationData
from optimum_blockprune.energy.scoring import LossScorer
from optimum_blockprune.errors import BlockPruneError
from optimum_blockprune.model.registry import get_adapter
from optimum_blockprune.output.layout import REPORT_NAME
from optimum_blockprune.pruner import BlockPruner


def _base_model(model: nn.Module) -> nn.Module:
    """The transformers model under peft / accelerate wrappers."""
    while True:
        if hasattr(model, "get_base_model"):
            model = model.get_base_model()
        elif hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        else:
            return model


def _write_metadata(folder: Path, config: Any, report: dict[str, Any]) -> None:
    if config is not None:
        config.save_pretrained(folder)
    write_json_atomic(folder / REPORT_NAME, report)


class BlockPruneMetadataCallback(TrainerCallback):
    """Write ``blockprune_config.json`` and ``blockprune_report.json`` into every checkpoint.

    ``config`` is the model's :class:`BlockPruneConfig` (``None`` for a model this project did
    not prune: then only the report is written); ``report`` is any JSON-able dict, to which the
    step of the checkpoint is added.
    """

    def __init__(self, config: Any = None, report: dict[str, Any] | None = None) -> None:
        self.config, self.report = config, dict(report or {})

    def metadata(self, state: TrainerState) -> tuple[Any, dict[str, Any]]:
        return self.config, {**self.report, "checkpoint_step": state.global_step}

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        if not state.is_world_process_zero:
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir():
            _write_metadata(folder, *self.metadata(state))


class GradualRemovalCallback(BlockPruneMetadataCallback):
    """Remove whole decoder layers at scheduled steps of a Trainer run, healing in between.

    ``schedule`` maps a training step to the number of layers removed at the end of that step,
    e.g. ``{100: 2, 200: 2}``. Layers are chosen on the CURRENT model by
    :meth:`BlockPruner.select` with ``config`` (its ``remove`` / ``ratio`` is replaced by the
    scheduled count; ``protect`` uses ORIGINAL block names; ``force`` is refused), on
    calibration text tokenised with ``tokenizer``. Block names everywhere are those of the original model:
    ``removed`` lists them, and every checkpoint holds ``blockprune_config.json`` with
    ``removed_blocks`` and a report of each removal.

    The figures of each removal (layers left, parameters, calibration loss before and after)
    go to the Trainer's loggers through ``trainer.log`` when the callback was bound with
    :meth:`attach`; otherwise they are added to the next log entry of the run.
    """

    def __init__(
        self,
        schedule: dict[int, int],
        tokenizer: Any,
        config: Any = None,
        *,
        adapter: str | None = None,
        progress: bool = False,
    ) -> None:
        if not schedule or any(int(s) < 1 or int(n) < 1 for s, n in schedule.items()):
            raise BlockPruneError("schedule must map training steps >= 1 to block counts >= 1, e.g. {100: 2}")
        self.schedule = {int(s): int(n) for s, n in sorted(schedule.items())}
        self.tokenizer = tokenizer
        self.base_config = config if config is not None else BlockPruneConfig(remove=1)
        if self.base_config.granularity != "layer":
            raise BlockPruneError("gradual removal removes whole layers; use granularity='layer'")
        if self.base_config.force:
            raise BlockPruneError("gradual removal chooses every block on the current model; drop force")
        self.adapter_name, self.progress = adapter, progress
        self.original: list[int] | None = None  # original index of each current layer
        self.removed: list[str] = []
        self.events: list[dict[str, Any]] = []
        self.trainer = None
        self._pending: dict[str, float] = {}
        super().__init__(None, {})

    # -------------------------------------------------------------- wiring
    def attach(self, trainer: Any) -> GradualRemovalCallback:
        """Add this callback to ``trainer`` (if needed) and log through ``trainer.log``."""
        if self not in trainer.callback_handler.callbacks:
            trainer.add_callback(self)
        self.trainer = trainer
        return self

    def _adapter(self, model: nn.Module):
        return get_adapter(model, self.adapter_name)

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        model = _base_model(kwargs["model"])
        if args.world_size > 1:
            raise BlockPruneError(
                "gradual removal changes the model's structure and runs in a single process; "
                "launch the Trainer without distributed data parallelism"
            )
        if self.original is None:
            n = len(self._adapter(model).decoder_layers(model))
            total = sum(self.schedule.values())
            if total >= n:
                raise BlockPruneError(f"the schedule removes {total} of {n} layers; keep at least one")
            self.original = list(range(n))
        if (
            state.global_step > 0
            and any(step <= state.global_step for step in self.schedule)
            and not self.removed
        ):
            raise BlockPruneError(
                "cannot resume a gradual-removal run past a removal step: the checkpoint's model has "
                "fewer layers; restart the run, or heal the saved checkpoint with a new Trainer"
            )

    # -------------------------------------------------------------- removal
    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        count = self.schedule.get(state.global_step)
        if not count:
            return
        model = _base_model(kwargs["model"])
        event = self.remove(model, count, kwargs.get("optimizer"))
        event["step"] = state.global_step
        self.events.append(event)
        figures = {
            "blockprune/layers": float(event["layers_after"]),
            "blockprune/removed": float(len(self.removed)),
            "blockprune/parameters": float(event["parameters_after"]),
            "blockprune/calibration_loss_before": event["loss_before"],
            "blockprune/calibration_loss_after": event["loss_after"],
        }
        if self.trainer is not None:
            should_log = control.should_log  # Trainer.log resets it; keep this step's own log
            self.trainer.log(figures)
            control.should_log = should_log
        else:
            self._pending.update(figures)
            control.should_log = True
        return control

    def on_log(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, logs=None, **kwargs
    ):
        if self._pending and logs is not None:
            logs.update(self._pending)
            if state.log_history and state.log_history[-1].get("step") == state.global_step:
                state.log_history[-1].update(self._pending)
            self._pending = {}

    def remove(self, model: nn.Module, count: int, optimizer: Any = None) -> dict[str, Any]:
        """Choose ``count`` layers of ``model`` with the energy method, delete them, drop their
        parameters from ``optimizer``; return the figures of this removal."""
        t0 = time.perf_counter()
        adapter = self._adapter(model)
        if self.original is None:
            self.original = list(range(len(adapter.decoder_layers(model))))
        current = {f"layers.{orig}": f"layers.{i}" for i, orig in enumerate(self.original)}
        cfg = self.base_config
        config = _with(
            cfg, remove=count, protect=[current[n] for n in cfg.protect or [] if n in current] or None
        )
        was_training = model.training
        pruner = BlockPruner(model, self.tokenizer, adapter)
        device = next(model.parameters()).device
        data = pruner.calibration(config)
        data = CalibrationData(data.input_ids.to(device), data.attention_mask.to(device), data.metadata)
        scorer = LossScorer(model, adapter, data, config.batch_size)
        params_before = sum(p.numel() for p in model.parameters())
        try:
            selection = pruner.select(config, progress=self.progress, scorer=scorer)
        finally:
            model.train(was_training)
        layers = sorted(int(n.split(".")[1]) for n in selection.removed)
        gone = {id(p) for i in layers for p in adapter.decoder_layers(model)[i].parameters()}
        adapter.remove_layers(model, layers)
        if optimizer is not None:
            drop_parameters(optimizer, gone)
        names = [f"layers.{self.original[i]}" for i in layers]
        self.original = [orig for i, orig in enumerate(self.original) if i not in set(layers)]
        self.removed = sorted(self.removed + names, key=lambda n: int(n.split(".")[1]))
        return {
            "removed": names,
            "layers_after": len(self.original),
            "parameters_before": params_before,
            "parameters_after": sum(p.numel() for p in model.parameters()),
            "loss_before": selection.dense_loss,
            "loss_after": selection.pruned_loss,
            "cost": selection.cost,
            "seconds": time.perf_counter() - t0,
        }

    # -------------------------------------------------------------- metadata
    def metadata(self, state: TrainerState) -> tuple[Any, dict[str, Any]]:
        if not self.removed:
            return None, {
                "checkpoint_step": state.global_step,
                "gradual_removal": {"schedule": self.schedule},
            }
        config = _with(self.base_config, remove=len(self.removed), removed_blocks=list(self.removed))
        report = {
            "removed": list(self.removed),
            "checkpoint_step": state.global_step,
            "gradual_removal": {"schedule": self.schedule, "events": self.events},
        }
        return config, report

    def save(self, folder: str | Path, state: TrainerState | None = None) -> None:
        """Write the pruning metadata into a saved model folder (e.g. after ``trainer.save_model``)."""
        _write_metadata(Path(folder), *self.metadata(state or TrainerState()))


def _with(config: Any, **changes: Any) -> Any:
    """A copy of a BlockPruneConfig with some settings changed (``ratio`` cleared)."""
    settings = {k: getattr(config, k) for k in type(config).__annotations__ if hasattr(config, k)}
    settings.update(ratio=None, removed_blocks=None)
    settings.update(changes)
    return type(config)(**settings)


def drop_parameters(optimizer: Any, gone: set[int]) -> int:
    """Remove the parameters whose ``id`` is in ``gone`` from ``optimizer``'s param groups and
    state, in place (so a scheduler bound to it stays valid); return how many were removed."""
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer
    dropped = 0
    for group in inner.param_groups:
        kept = [p for p in group["params"] if id(p) not in gone]
        dropped += len(group["params"]) - len(kept)
        group["params"] = kept
    for p in [p for p in inner.state if id(p) in gone]:
        del inner.state[p]
    return dropped
