"""HealingTrainer: a trl ``SFTTrainer`` whose loss mixes cross-entropy with distillation from the
unpruned teacher (see :mod:`.loss`), and the teacher's loading and checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from trl import SFTTrainer

from optimum_blockprune.errors import BlockPruneError
from optimum_blockprune.healing.config import HealingConfig
from optimum_blockprune.healing.loss import distillation_terms
from optimum_blockprune.model.loading import load_model_and_tokenizer

TEACHER_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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


def load_teacher(
    path: str | Path, dtype: torch.dtype | str | None = None, **placement: Any
) -> tuple[nn.Module, Any]:
    """(model, tokenizer) of the unpruned teacher folder, the model in ``dtype`` (default float32),
    in eval mode without gradients; ``placement`` (``device``, ``device_map``, ...) goes to
    :func:`~optimum_blockprune.model.loading.load_model_and_tokenizer`."""
    teacher, tokenizer, _ = load_model_and_tokenizer(path, dtype=_dtype(dtype), **placement)
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
