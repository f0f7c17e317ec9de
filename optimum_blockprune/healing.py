"""Healing: short retraining of a pruned model, with cross-entropy and/or distillation from the
unpruned teacher, through a trl ``SFTTrainer`` subclass; LoRA (peft) or full fine-tuning.

The loss on next-token distributions, over every position whose target is a real token, is
``alpha * CE + (1 - alpha) * T**2 * KL(teacher || student)`` with both distributions taken at
temperature ``T``. ``alpha=1`` is plain fine-tuning; ``alpha=0`` is pure distillation.
"""

from __future__ import annotations

import math
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from trl import SFTConfig, SFTTrainer

from .errors import BlockPruneError

TEACHER_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# --------------------------------------------------------------------------------------------- loss
def distillation_terms(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    labels: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summed next-token cross-entropy, summed ``KL(teacher || student)`` at ``temperature`` (zero
    without a teacher), and the number of positions they cover: positions whose target label is
    not -100 and whose input token is not padding."""
    target = labels[:, 1:]
    valid = target != -100
    if attention_mask is not None:
        valid &= attention_mask[:, :-1].bool()
    student = student_logits[:, :-1][valid].float()
    ce = F.cross_entropy(student, target[valid], reduction="sum")
    if teacher_logits is None:
        kl = student.new_zeros(())
    else:
        teacher = teacher_logits[:, :-1][valid].float()
        log_p_student = F.log_softmax(student / temperature, dim=-1)
        log_p_teacher = F.log_softmax(teacher / temperature, dim=-1)
        kl = F.kl_div(log_p_student, log_p_teacher, reduction="sum", log_target=True)
    return ce, kl, valid.sum()


# --------------------------------------------------------------------------------------------- config
def _bf16_default() -> bool:
    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


@dataclass
class HealingConfig(SFTConfig):
    """``SFTConfig`` plus the distillation mix. Defaults suit a short LoRA healing run: learning
    rate 1e-3 with cosine decay (lower it, e.g. to 1e-4, for full fine-tuning), no gradient
    checkpointing, bf16 only where the GPU supports it (never on CPU), and pinned memory only
    with a GPU."""

    alpha: float = field(
        default=0.5, metadata={"help": "weight of cross-entropy; 1 - alpha weighs the distillation term"}
    )
    temperature: float = field(default=2.0, metadata={"help": "distillation temperature T"})
    gradient_checkpointing: bool | None = None
    activation_checkpointing: bool | None = False
    learning_rate: float = 1e-3
    lr_scheduler_type: str = "cosine"
    warmup_steps: float = 0.05
    logging_steps: float = 10
    save_total_limit: int | None = 2
    dataloader_pin_memory: bool | None = None

    def __post_init__(self) -> None:
        if self.bf16 is None:
            self.bf16 = (not self.fp16) and not self.use_cpu and _bf16_default()
        if self.dataloader_pin_memory is None:
            self.dataloader_pin_memory = torch.cuda.is_available() and not self.use_cpu
        check_mix(self.alpha, self.temperature)
        super().__post_init__()


def check_mix(alpha: float, temperature: float) -> None:
    """Refuse an ``alpha`` outside [0, 1] or a non-positive ``temperature``."""
    if not 0.0 <= float(alpha) <= 1.0:
        raise BlockPruneError(f"alpha must lie in [0, 1] (1 = cross-entropy only), got {alpha!r}")
    if not float(temperature) > 0:
        raise BlockPruneError(f"temperature must be positive, got {temperature!r}")


# --------------------------------------------------------------------------------------------- trainer
class HealingTrainer(SFTTrainer):
    """``SFTTrainer`` whose loss mixes cross-entropy with distillation from ``teacher``.

    ``teacher`` is the unpruned model (an ``nn.Module`` or a folder, loaded in ``teacher_dtype``);
    it is needed when ``args.alpha < 1``, runs in eval mode without gradients, and must share
    the student's vocabulary. Everything else is ``SFTTrainer``: pass ``peft_config=LoraConfig(...)``
    (see :func:`lora_config`) for LoRA, or nothing for full fine-tuning.
    """

    def __init__(
        self,
        model: nn.Module,
        args: HealingConfig | None = None,
        *,
        teacher: nn.Module | str | Path | None = None,
        teacher_dtype: torch.dtype | str | None = None,
        **kwargs: Any,
    ) -> None:
        args = args if args is not None else HealingConfig(output_dir="healing-checkpoints")
        if not isinstance(args, HealingConfig):
            raise BlockPruneError(
                "HealingTrainer needs a HealingConfig as args (it carries alpha and temperature)"
            )
        teacher_tokenizer = None
        if teacher is not None and not isinstance(teacher, nn.Module):
            teacher, teacher_tokenizer = load_teacher(teacher, teacher_dtype)
        elif isinstance(teacher, nn.Module) and teacher_dtype is not None:
            teacher = teacher.to(_dtype(teacher_dtype))
        if teacher is None and args.alpha < 1:
            raise BlockPruneError(
                f"alpha={args.alpha} asks for distillation but no teacher was given; "
                "pass the unpruned model as teacher or set alpha=1"
            )
        if teacher is not None:
            check_teacher(model, teacher, kwargs.get("processing_class"), teacher_tokenizer)
        super().__init__(model, args=args, **kwargs)
        self.alpha, self.temperature = float(args.alpha), float(args.temperature)
        self.teacher = None
        if teacher is not None and self.alpha < 1:
            teacher.eval().requires_grad_(False)
            self.teacher = self.accelerator.prepare_model(teacher, evaluation_mode=True)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.teacher is None or return_outputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        mode = "train" if self.model.training else "eval"
        forward = {k: v for k, v in inputs.items() if k != "labels"}
        forward["use_cache"] = False
        student_logits = model(**forward).logits
        with torch.no_grad():
            teacher_logits = self.teacher(**forward).logits
        ce, kl, count = distillation_terms(
            student_logits, teacher_logits, inputs["labels"], inputs.get("attention_mask"), self.temperature
        )
        denom = torch.as_tensor(num_items_in_batch if num_items_in_batch is not None else count).clamp(min=1)
        denom = denom.to(ce.device)
        loss = (self.alpha * ce + (1 - self.alpha) * self.temperature**2 * kl) / denom
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes
        n = max(int(count), 1)
        self._metrics[mode]["ce"].append(float(ce.detach()) / n)
        self._metrics[mode]["kl"].append(float(kl.detach()) / n)
        return loss


def _dtype(value: torch.dtype | str | None) -> torch.dtype:
    if value is None:
        return torch.float32
    if isinstance(value, torch.dtype):
        return value
    if value not in TEACHER_DTYPES:
        raise BlockPruneError(f"unknown teacher dtype {value!r}; use one of {', '.join(TEACHER_DTYPES)}")
    return TEACHER_DTYPES[value]


def load_teacher(path: str | Path, dtype: torch.dtype | str | None = None) -> tuple[nn.Module, Any]:
    """(model, tokenizer) of the unpruned teacher folder, the model in ``dtype`` (default float32),
    in eval mode without gradients."""
    from .loading import load_model_and_tokenizer

    teacher, tokenizer, _ = load_model_and_tokenizer(path, dtype=_dtype(dtype))
    return teacher.eval().requires_grad_(False), tokenizer


def check_teacher(
    student: nn.Module, teacher: nn.Module, tokenizer: Any = None, teacher_tokenizer: Any = None
) -> None:
    """Refuse a teacher whose vocabulary or tokenizer differs from the student's: their
    next-token distributions must be over the same tokens."""
    s_vocab = student.get_output_embeddings().weight.shape[0]
    t_vocab = teacher.get_output_embeddings().weight.shape[0]
    if s_vocab != t_vocab:
        raise BlockPruneError(
            f"the teacher has {t_vocab} output tokens but the model has {s_vocab}; "
            "distil only from the unpruned model with the same tokenizer"
        )
    if (
        tokenizer is not None
        and teacher_tokenizer is not None
        and teacher_tokenizer.get_vocab() != tokenizer.get_vocab()
    ):
        raise BlockPruneError(
            "the teacher's tokenizer differs from the model's; distil only from the unpruned model "
            "with the same tokenizer"
        )


# --------------------------------------------------------------------------------------------- LoRA
def lora_config(model: nn.Module, r: int = 16, alpha: int | None = None, dropout: float = 0.0, **kwargs: Any):
    """A peft ``LoraConfig`` on every linear layer (the LM head excluded) and, for mixture-of-experts
    models whose experts are 3-D parameters, on those parameters through ``target_parameters``."""
    from peft import LoraConfig

    if not isinstance(r, int) or r < 1:
        raise BlockPruneError(f"LoRA rank must be a positive integer, got {r!r}")
    experts = sorted(
        {
            ".".join(name.split(".")[-2:])
            for name, p in model.named_parameters()
            if p.dim() == 3 and ".experts." in name
        }
    )
    return LoraConfig(
        r=r,
        lora_alpha=alpha if alpha is not None else 2 * r,
        lora_dropout=dropout,
        target_modules="all-linear",
        target_parameters=experts or None,
        task_type="CAUSAL_LM",
        **kwargs,
    )


# --------------------------------------------------------------------------------------------- data
def healing_dataset(tokenizer: Any, texts: list[str], num_blocks: int, seq_len: int, seed: int = 0):
    """Packed blocks of ``seq_len`` tokens from ``texts`` (shuffled with ``seed``) as a ``datasets``
    Dataset with an ``input_ids`` column: up to ``num_blocks``, fewer if the text runs out."""
    import datasets

    from .calibration import build_calibration

    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise BlockPruneError("healing data is empty; give a file or dataset with text in it")
    texts = list(texts)
    random.Random(seed).shuffle(texts)
    try:
        data = build_calibration(tokenizer, texts, num_blocks, seq_len, source="healing")
    except BlockPruneError as exc:
        if "too short" not in str(exc):
            raise
        total = sum(len(ids) + 1 for ids in tokenizer(texts)["input_ids"])
        available = total // seq_len
        if available < 1:
            raise BlockPruneError(
                f"healing data has {total} tokens, fewer than one block of {seq_len}; give more text "
                "or lower --seq-len"
            ) from None
        data = build_calibration(tokenizer, texts, available, seq_len, source="healing")
    return datasets.Dataset.from_dict({"input_ids": data.input_ids.tolist()})


# --------------------------------------------------------------------------------------------- run
@dataclass
class HealResult:
    path: Path
    report: dict[str, Any]


def _read_pruning(path: Path) -> tuple[Any, dict[str, Any]]:
    """(BlockPruneConfig or None, report dict or {}) of a folder written by this project."""
    import json

    from .config import BlockPruneConfig
    from .saving import REPORT_NAME

    if not path.is_dir() or not (path / BlockPruneConfig.CONFIG_NAME).is_file():
        return None, {}
    config = BlockPruneConfig.from_pretrained(path)
    report_file = path / REPORT_NAME
    report = json.loads(report_file.read_text()) if report_file.is_file() else {}
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
    teacher_dtype: str = "float32",
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
    """
    from .calibration import load_texts
    from .callbacks import BlockPruneMetadataCallback
    from .loading import load_model_and_tokenizer

    t_start = time.perf_counter()
    output = Path(output)
    ckpt_dir, resume_from = _plan_checkpoints(output, checkpoint_dir, resume, overwrite)
    if max_steps < 1 or batch_size < 1 or seq_len < 2 or save_steps < 0:
        raise BlockPruneError("max_steps and batch_size must be >= 1, seq_len >= 2 and save_steps >= 0")
    check_mix(alpha, temperature)
    texts = [t for t in load_texts(data, "calibration", text_field) if t and t.strip()]
    if not texts:
        raise BlockPruneError(f"healing data {data!r} is empty; give a file or dataset with text in it")
    student, tokenizer, model_id = load_model_and_tokenizer(model)
    prune_config, prune_report = _read_pruning(Path(model_id))
    teacher_model, teacher_id = None, None
    if alpha < 1:
        teacher_model, teacher_id = _resolve_teacher(
            student, tokenizer, model_id, prune_config, prune_report, teacher, teacher_dtype
        )

    full = lora_r is None
    lr = learning_rate if learning_rate is not None else (1e-4 if full else 1e-3)
    dataset = healing_dataset(tokenizer, texts, max_steps * batch_size, seq_len, seed)
    heldout = None
    ppl: dict[str, float] = {}
    if heldout_samples:
        from .evaluation import heldout_data, perplexity

        heldout = heldout_data(tokenizer, heldout_samples, seq_len)
        ppl.update(known_perplexity or {})
        if "before" not in ppl:
            ppl["before"] = perplexity(student.eval(), heldout, progress=progress)
        if teacher_model is not None and "teacher" not in ppl:
            ppl["teacher"] = perplexity(teacher_model, heldout, progress=progress)

    if ckpt_dir.exists() and not resume:
        shutil.rmtree(ckpt_dir)
    args = HealingConfig(
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
    metadata = BlockPruneMetadataCallback(prune_config, {**prune_report, "healing": {"running": True}})
    trainer = HealingTrainer(
        student.train(),
        args,
        teacher=teacher_model,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=None if full else lora_config(student, lora_r),
        callbacks=[metadata],
    )
    t0 = time.perf_counter()
    train_out = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    train_seconds = time.perf_counter() - t0
    steps_this_run = trainer.state.global_step - (int(resume_from.name.split("-")[-1]) if resume_from else 0)
    healed = trainer.model
    if hasattr(healed, "merge_and_unload"):
        healed = healed.merge_and_unload()
    healed.eval()
    if heldout is not None:
        ppl["after"] = perplexity(healed, _on_device(heldout, healed), progress=progress)

    healing = {
        "method": "full" if full else "lora",
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
        "final_train_loss": train_out.training_loss,
        "tokens_per_second": steps_this_run * batch_size * seq_len / max(train_seconds, 1e-9),
        "seconds": {"train": train_seconds, "total": time.perf_counter() - t_start},
        "heldout_perplexity": ppl,
    }
    if {"before", "after", "teacher"} <= ppl.keys() and ppl["before"] > ppl["teacher"]:
        healing["gap_closed"] = gap_closed(ppl["before"], ppl["after"], ppl["teacher"])
    report = {**prune_report, "healing": healing}
    if not prune_report:
        report["model_id"] = model_id
    _save_healed(output, overwrite, healed, tokenizer, prune_config, report, source=Path(model_id))
    if not keep_checkpoints:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    return HealResult(output.resolve(), report)


def _on_device(data: Any, model: nn.Module) -> Any:
    """``data`` (CalibrationData) with its tensors on ``model``'s device (the Trainer may move it)."""
    from .calibration import CalibrationData

    device = next(model.parameters()).device
    return CalibrationData(data.input_ids.to(device), data.attention_mask.to(device), data.metadata)


def _plan_checkpoints(
    output: Path, checkpoint_dir: str | Path | None, resume: bool, overwrite: bool
) -> tuple[Path, Path | None]:
    """(checkpoint folder, checkpoint to resume from); refuses what would lose or mix runs."""
    from .atomic import check_output_dir

    check_output_dir(output, overwrite)
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
    return ckpt_dir, None


def _resolve_teacher(
    student: nn.Module,
    tokenizer: Any,
    model_id: str,
    prune_config: Any,
    prune_report: dict[str, Any],
    teacher: str | Path | None,
    teacher_dtype: str,
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
    teacher_model, teacher_tokenizer = load_teacher(teacher_id, teacher_dtype)
    check_teacher(student, teacher_model, tokenizer, teacher_tokenizer)
    removed = len(prune_config.removed_blocks or [])
    n_student, n_teacher = student.config.num_hidden_layers, teacher_model.config.num_hidden_layers
    if removed and n_teacher != n_student + removed:
        raise BlockPruneError(
            f"the teacher has {n_teacher} layers but {model_id} was pruned from a {n_student + removed}-layer "
            "model; pass its unpruned model with --teacher"
        )
    return teacher_model, teacher_id


def _save_healed(
    output: Path,
    overwrite: bool,
    model: nn.Module,
    tokenizer: Any,
    prune_config: Any,
    report: dict,
    source: Path | None = None,
) -> None:
    """Write the healed model like a pruned model of this project, atomically.

    The pruned folder's energy files (``source``) come along, so the visual report and the
    model card are rebuilt for the healed folder (with the healing figures in the card)."""
    from .atomic import atomic_output_dir, write_json_atomic
    from .modelcard import write_model_card
    from .saving import REPORT_NAME, versions

    energy_files = [n for n in report.get("energy_files") or [] if source and (source / n).is_file()]
    with atomic_output_dir(output, overwrite) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if prune_config is not None:
            prune_config.save_pretrained(tmp)
        for name in energy_files:
            shutil.copy2(source / name, tmp / name)
        write_json_atomic(tmp / REPORT_NAME, {**report, "versions": {**versions(), **_heal_versions()}})
        visual = bool(energy_files) and len(energy_files) == len(report["energy_files"])
        if visual:
            from .report import build_report

            build_report(tmp, name=output.name)
        if prune_config is not None:
            write_model_card(tmp, name=output.name, with_report=visual)


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
