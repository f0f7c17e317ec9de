"""The healing stage: short retraining of a pruned model (LoRA or full; cross-entropy and/or
distillation from the unpruned teacher), and the Trainer callbacks that keep a run's metadata or
remove blocks gradually while training."""

from optimum_blockprune.healing.callbacks import BlockPruneMetadataCallback, GradualRemovalCallback
from optimum_blockprune.healing.config import HealingConfig, check_mix
from optimum_blockprune.healing.data import healing_dataset
from optimum_blockprune.healing.lora import lora_config
from optimum_blockprune.healing.loss import distillation_terms
from optimum_blockprune.healing.run import HealResult, gap_closed, heal, last_complete_checkpoint
from optimum_blockprune.healing.trainer import HealingTrainer, check_teacher, load_teacher

__all__ = [
    "BlockPruneMetadataCallback",
    "GradualRemovalCallback",
    "HealResult",
    "HealingConfig",
    "HealingTrainer",
    "check_mix",
    "check_teacher",
    "distillation_terms",
    "gap_closed",
    "heal",
    "healing_dataset",
    "last_complete_checkpoint",
    "load_teacher",
    "lora_config",
]
