"""``heal``: short retraining of a pruned model folder, with cross-entropy and/or distillation from
the unpruned teacher, through :class:`HealingTrainer`; LoRA (peft) or full fine-tuning. The healed
model is saved like a pruned folder (its energy files, report and model card come along)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from optimum_blockprune.config import BlockPruneConfig
from optimum_blockprune.data.atomic import check_output_dir, remove_owned
from optimum_blockprune.data.calibration import CalibrationData, load_texts
from optimum_blockprune.errors import BlockPruneError
from optimum_blockprune.healing.callbacks import BlockPruneMetadataCallback
from optimum_blockprune.healing.config import HealingConfig, check_mix
from optimum_blockprune.healing.data import healing_dataset
from optimum_blockprune.healing.lora import lora_config
from optimum_blockprune.healing.trainer import HealingTrainer, check_teacher, load_teacher
from optimum_blockprune.model.loading import load_model_and_tokenizer
from optimum_blockprune.output.evaluation import heldout_data, perplexity
from optimum_blockprune.output.layout import REPORT_NAME, is_tool_file, read_json
from optimum_blockprune.output.saving import check_output, save_pruned


@dataclass
class HealResult:
    path: Path
    report: dict[str, Any]


def _read_pruning(path: Path) -> tuple[Any, dict[str, Any]]:
    """(BlockPruneConfig or None, report dict or {}) of a folder written by this project."""
    if not path.is_dir() or not (path / BlockPruneConfig.CONFIG_NAME).is_file():
        return None, {}
    config = BlockPruneConfig.from_pretrained(path)
    report_file = path / REPORT_NAME
    report = read_json(report_file) if report_file.is_file() else {}
    return config, report


def last_complete_checkpoint(folder: Path) -> Path | None:
    """The newest ``checkpoint-N`` of ``folder`` that was written to the end (has trainer_state.json)."""
    if not folder.is_dir():
        return None
    done = [
        p
        for p in folder.glob("checkpoint-*")
        if p.name.split("-")[-1].isdigit() and (p / "trainer_state.json").is_file()
    ]
    return max(done, key=lambda p: int(p.name.split("-")[-1])) if done else None


def heal(
    model: str | Path | None,
    output: str | Path,
    *,
    teacher: str | Path | None = None,
    data: str = "demo",
    text_field: str = "text",
    alpha: float = 0.5,
    temperature: float = 2.0,
    lora_r: int | None = 16,
    max_steps: int = 100,
    learning_rate: float | None = None,
    batch_size: int = 8,
    seq_len: int = 128,
    teacher_dtype: str | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | None = None,
    device_map: str | dict | None = None,
    max_memory: dict | None = None,
    offload_folder: str | Path | None = None,
    save_steps: int = 25,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    keep_checkpoints: bool = False,
    heldout_samples: int = 32,
    known_perplexity: dict[str, float] | None = None,
    overwrite: bool = False,
    seed: int = 0,
    progress: bool = True,
) -> HealResult:
    """Heal a pruned model folder and save the merged result as a pruned-model folder at ``output``.

    ``model`` is a folder written by :meth:`BlockPruner.prune` (or any causal LM when
    ``alpha=1``). ``teacher`` defaults to the model the pruned folder was made from. ``lora_r=None``
    means full fine-tuning. Checkpoints go to ``checkpoint_dir`` (default ``OUTPUT-checkpoints``)
    every ``save_steps`` steps (0: none); ``resume=True`` continues from the newest one. Every input is
    checked before anything is written. ``known_perplexity`` may give the held-out perplexities
    ``before`` (the pruned model) and ``teacher`` already measured on the same held-out blocks.
    The model loads in ``dtype`` (the healed weights are saved in it) on ``device`` or over
    ``device_map`` (with ``max_memory`` / ``offload_folder``); without either the Trainer picks
    the device. The teacher goes where the model goes, in ``teacher_dtype`` (default: ``dtype``).
    """
    t_start = time.perf_counter()
    output = Path(output)
    ckpt_dir, resume_from = _plan_checkpoints(output, checkpoint_dir, resume, overwrite, model)
    if max_steps < 1 or batch_size < 1 or seq_len < 2 or save_steps < 0:
        raise BlockPruneError("max_steps and batch_size must be >= 1, seq_len >= 2 and save_steps >= 0")
    check_mix(alpha, temperature)
    texts = [t for t in load_texts(data, "calibration", text_field) if t and t.strip()]
    if not texts:
        raise BlockPruneError(f"healing data {data!r} is empty; give a file or dataset with text in it")
    placement = {"device": device, "device_map": device_map, "max_memory": max_memory}
    placement["offload_folder"] = offload_folder
    student, tokenizer, model_id = load_model_and_tokenizer(model, dtype=dtype, **placement)
    prune_config, prune_report = _read_pruning(Path(model_id))
    teacher_dtype = teacher_dtype or str(dtype).removeprefix("torch.")
    teacher_model, teacher_id = None, None
    if alpha < 1:
        teacher_model, teacher_id = _resolve_teacher(
            student, tokenizer, model_id, prune_config, prune_report, teacher, teacher_dtype, placement
        )
    lr = learning_rate if learning_rate is not None else (1e-4 if lora_r is None else 1e-3)
    dataset = healing_dataset(tokenizer, texts, max_steps * batch_size, seq_len, seed)
    heldout = heldout_data(tokenizer, heldout_samples, seq_len) if heldout_samples else None
    ppl = _perplexities(student, teacher_model, heldout, known_perplexity, progress)
    if not resume:
        remove_owned(ckpt_dir, is_tool_file)
    args = _training_args(
        ckpt_dir,
        alpha,
        temperature,
        max_steps,
        batch_size,
        lr,
        save_steps,
        seq_len,
        seed,
        progress,
        use_cpu=device == "cpu",
    )
    metadata = BlockPruneMetadataCallback(prune_config, {**prune_report, "healing": {"running": True}})
    trainer = HealingTrainer(
        student.train(),
        args,
        teacher=teacher_model,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=None if lora_r is None else lora_config(student, lora_r),
        callbacks=[metadata],
    )
    healed, run = _train(trainer, resume_from, batch_size * seq_len)
    if heldout is not None:
        ppl["after"] = perplexity(healed, _on_device(heldout, healed), progress=progress)
    healing = {
        "method": "full" if lora_r is None else "lora",
        "lora_r": lora_r,
        "alpha": alpha,
        "temperature": temperature,
        "teacher": teacher_id,
        "teacher_dtype": teacher_dtype if teacher_model is not None else None,
        "data": data,
        "steps": trainer.state.global_step,
        "batch_size": batch_size,
        "seq_len": seq_len,
        "learning_rate": lr,
        "train_blocks": len(dataset),
        "resumed_from": resume_from.name if resume_from else None,
        **run,
        "heldout_perplexity": ppl,
    }
    healing["seconds"]["total"] = time.perf_counter() - t_start
    if {"before", "after", "teacher"} <= ppl.keys() and ppl["before"] > ppl["teacher"]:
        healing["gap_closed"] = gap_closed(ppl["before"], ppl["after"], ppl["teacher"])
    report = {**prune_report, "healing": healing}
    if not prune_report:
        report["model_id"] = model_id
    save_pruned(  # like a pruned folder: the energy files come along, so report and card are rebuilt
        healed,
        tokenizer,
        prune_config,
        report,
        output,
        overwrite=overwrite,
        energy_source=Path(model_id),
        extra_versions=_heal_versions(),
        source=model_id,
    )
    if not keep_checkpoints:
        remove_owned(ckpt_dir, is_tool_file)
    return HealResult(output.resolve(), report)


def _training_args(
    ckpt_dir: Path,
    alpha: float,
    temperature: float,
    max_steps: int,
    batch_size: int,
    lr: float,
    save_steps: int,
    seq_len: int,
    seed: int,
    progress: bool,
    use_cpu: bool = False,
) -> HealingConfig:
    """The Trainer settings of a healing run (checkpoints every ``save_steps``; 0: none;
    ``use_cpu``: keep the model on the CPU, where the Trainer would move it to a GPU)."""
    return HealingConfig(
        use_cpu=use_cpu,
        output_dir=str(ckpt_dir),
        alpha=alpha,
        temperature=temperature,
        max_steps=max_steps,
        per_device_train_batch_size=batch_size,
        learning_rate=lr,
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
        logging_steps=max(1, min(10, max_steps // 10)),
        seed=seed,
        data_seed=seed,
        max_length=seq_len,
        disable_tqdm=not progress,
        dataloader_num_workers=0,
    )


def _perplexities(
    student: nn.Module,
    teacher: nn.Module | None,
    heldout: Any,
    known: dict[str, float] | None,
    progress: bool,
) -> dict[str, float]:
    """Held-out perplexity ``before`` healing (and of the ``teacher``), unless already ``known``."""
    ppl: dict[str, float] = {}
    if heldout is None:
        return ppl
    ppl.update(known or {})
    if "before" not in ppl:
        ppl["before"] = perplexity(student.eval(), heldout, progress=progress)
    if teacher is not None and "teacher" not in ppl:
        ppl["teacher"] = perplexity(teacher, heldout, progress=progress)
    return ppl


def _train(trainer: HealingTrainer, resume_from: Path | None, tokens_per_step: int) -> tuple[nn.Module, dict]:
    """Train (continuing from ``resume_from``), merge LoRA; the healed model in eval mode and what
    the run measured (final loss, throughput, seconds)."""
    t0 = time.perf_counter()
    train_out = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    train_seconds = time.perf_counter() - t0
    steps_this_run = trainer.state.global_step - (int(resume_from.name.split("-")[-1]) if resume_from else 0)
    healed = trainer.model
    if hasattr(healed, "merge_and_unload"):
        healed = healed.merge_and_unload()
    healed.eval()
    return healed, {
        "final_train_loss": train_out.training_loss,
        "tokens_per_second": steps_this_run * tokens_per_step / max(train_seconds, 1e-9),
        "seconds": {"train": train_seconds},
    }


def _on_device(data: Any, model: nn.Module) -> Any:
    """``data`` (CalibrationData) with its tensors on ``model``'s device (the Trainer may move it)."""
    device = next(model.parameters()).device
    return CalibrationData(data.input_ids.to(device), data.attention_mask.to(device), data.metadata)


def _plan_checkpoints(
    output: Path,
    checkpoint_dir: str | Path | None,
    resume: bool,
    overwrite: bool,
    source: str | Path | None = None,
) -> tuple[Path, Path | None]:
    """(checkpoint folder, checkpoint to resume from); refuses what would lose or mix runs, write
    into the model's own folder ``source``, or delete files this tool did not write."""
    check_output(output, overwrite, source=source)
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir else output.with_name(output.name + "-checkpoints")
    if resume:
        resume_from = last_complete_checkpoint(ckpt_dir)
        if resume_from is None:
            raise BlockPruneError(f"no complete checkpoint in {ckpt_dir} to resume from; drop --resume")
        return ckpt_dir, resume_from
    if ckpt_dir.exists() and any(ckpt_dir.iterdir()) and not overwrite:
        raise BlockPruneError(
            f"checkpoint folder {ckpt_dir} holds an earlier run; pass --resume to continue it "
            "or --overwrite to start over"
        )
    check_output_dir(ckpt_dir, overwrite, owned=is_tool_file, source=source)
    return ckpt_dir, None


def _resolve_teacher(
    student: nn.Module,
    tokenizer: Any,
    model_id: str,
    prune_config: Any,
    prune_report: dict[str, Any],
    teacher: str | Path | None,
    teacher_dtype: str,
    placement: dict[str, Any] | None = None,
) -> tuple[nn.Module, str]:
    """Load and check the teacher of a pruned model: ``teacher`` or the model it was pruned from."""
    if prune_config is None:
        raise BlockPruneError(
            f"{model_id} was not pruned by optimum-blockprune (no blockprune_config.json), so distillation "
            "has no known teacher; heal a folder written by 'blockprune prune' or use --alpha 1"
        )
    teacher_id = str(teacher) if teacher is not None else prune_report.get("model_id")
    if not teacher_id or not Path(teacher_id).is_dir():
        raise BlockPruneError(
            f"the unpruned model of {model_id} ({teacher_id or 'unknown'}) is not a folder here; "
            "pass it with --teacher"
        )
    teacher_model, teacher_tokenizer = load_teacher(teacher_id, teacher_dtype, **(placement or {}))
    check_teacher(student, teacher_model, tokenizer, teacher_tokenizer)
    removed = len(prune_config.removed_blocks or [])
    n_student, n_teacher = student.config.num_hidden_layers, teacher_model.config.num_hidden_layers
    if removed and n_teacher != n_student + removed:
        raise BlockPruneError(
            f"the teacher has {n_teacher} layers but {model_id} was pruned from a {n_student + removed}-layer "
            "model; pass its unpruned model with --teacher"
        )
    return teacher_model, teacher_id


def _heal_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("peft", "trl", "accelerate"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return out


def gap_closed(pruned: float, healed: float, dense: float) -> float:
    """Fraction of the perplexity gap between the pruned and the dense model that healing closed."""
    return (pruned - healed) / (pruned - dense) if not math.isclose(pruned, dense) else float("nan")
