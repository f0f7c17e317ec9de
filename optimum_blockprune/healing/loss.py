"""The healing loss on next-token distributions, over every position whose target is a real token:
``alpha * CE + (1 - alpha) * T**2 * KL(teacher || student)`` with both distributions taken at
temperature ``T``. ``alpha=1`` is plain fine-tuning; ``alpha=0`` is pure distillation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
