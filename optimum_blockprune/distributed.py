"""The processes that share one analysis: just this one, or those of an ``accelerate launch``.

Under ``accelerate launch`` (or ``torchrun``) every process runs the same program; the work is
split by rank and the results are exchanged with accelerate's object collectives (gloo on CPU,
NCCL on GPUs). Outside a launcher everything here is a no-op for a single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch


def _launched() -> bool:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return True
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _cpu_only() -> bool:
    """CPU processes when asked (``accelerate launch --cpu``) or when no accelerator is present."""
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"):
        return True
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None:
        return not accelerator.is_available()
    return not torch.cuda.is_available()


@dataclass
class Processes:
    """This process's place among ``world`` processes (``rank`` 0 is the main one)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @classmethod
    def current(cls) -> Processes:
        """The launch this process belongs to (one process when not launched)."""
        if not _launched():
            return cls()
        from accelerate import PartialState

        state = PartialState(cpu=_cpu_only())
        return cls(
            rank=state.process_index,
            world=state.num_processes,
            local_rank=state.local_process_index,
            local_world=int(os.environ.get("LOCAL_WORLD_SIZE", state.num_processes)),
            device=state.device,
        )

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def gather(self, obj: Any) -> list[Any]:
        """Every process's ``obj``, in rank order, on every process."""
        if self.world == 1:
            return [obj]
        from accelerate.utils import gather_object

        return gather_object([obj])

    def broadcast(self, obj: Any) -> Any:
        """The main process's ``obj`` on every process."""
        if self.world == 1:
            return obj
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([obj])[0]

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def close(self) -> None:
        """End the process group (at the end of a launched program)."""
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
