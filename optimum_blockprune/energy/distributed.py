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
from torch import nn

from optimum_blockprune.data.calibration import CalibrationData


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


# Kept over a bare accelerate.PartialState: outside a launcher this must stay a plain one-process
# value (no accelerate state, no device probing), and the launched case is PartialState's own.
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

    def bounds(self, n: int) -> tuple[int, int]:
        """This process's contiguous share ``[lo, hi)`` of ``n`` items in order: rank r gets
        ``[r·n/world, (r+1)·n/world)``, so the shares concatenated in rank order are the items."""
        return self.rank * n // self.world, (self.rank + 1) * n // self.world

    def shard(self, data: CalibrationData) -> CalibrationData:
        """This process's contiguous share of the calibration samples (all of them in one process)."""
        if self.world == 1:
            return data
        lo, hi = self.bounds(len(data))
        return CalibrationData(data.input_ids[lo:hi], data.attention_mask[lo:hi], data.metadata)

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


def input_device(model: nn.Module) -> torch.device:
    """Where the model's inputs go: the first accelerator of a ``device_map``, else its weights' device."""
    device_map = getattr(model, "hf_device_map", None) or {}
    for where in device_map.values():
        if where not in ("cpu", "disk", "meta"):
            return torch.device(where)
    if device_map:
        return torch.device("cpu")
    param = next(model.parameters(), None)
    return param.device if param is not None and param.device.type != "meta" else torch.device("cpu")


def placement(
    device_map: str | dict | None, max_memory: dict | None, processes: Processes | None = None
) -> tuple[str | dict | None, dict | None]:
    """``(device_map, max_memory)`` for this process: under a data-parallel launch without a device
    map each process holds one whole model on its own device; with ``device_map="auto"`` each
    process splits the model over its own share of the GPUs."""
    from optimum_blockprune.model.loading import rank_max_memory

    processes = processes or Processes.current()
    if processes.world > 1 and device_map is None and processes.device.type != "cpu":
        device_map = {"": str(processes.device)}
    elif processes.world > 1 and device_map == "auto":
        max_memory = rank_max_memory(processes.local_rank, processes.local_world, max_memory)
    return device_map, max_memory
