"""``optimum-cli blockprune analyze``: the energy model of a model's blocks, written to a file."""

from __future__ import annotations

from argparse import ArgumentParser, Namespace

from optimum.commands.base import CommandInfo

from optimum_blockprune.cli.options import (
    Leaf,
    add_calibration_args,
    add_granularity_arg,
    add_model_args,
    add_scale_args,
    calibration_settings,
    plan_from_args,
)
from optimum_blockprune.errors import BlockPruneError


class AnalyzeCommand(Leaf):
    COMMAND = CommandInfo(
        name="analyze", help="Compute the energy model of a model's blocks on calibration text."
    )

    @staticmethod
    def parse_args(parser: ArgumentParser) -> None:
        add_model_args(parser)
        add_calibration_args(parser)
        add_granularity_arg(parser)
        add_scale_args(parser)
        parser.add_argument("--output", "-o", default="energy.safetensors", help="energy file to write")
        parser.add_argument("--overwrite", action="store_true", help="replace an existing energy file")

    def execute(self, args: Namespace) -> None:
        from pathlib import Path

        import torch

        from optimum_blockprune.config import BlockPruneConfig
        from optimum_blockprune.energy.distributed import Processes, placement
        from optimum_blockprune.energy.partial import partial_path
        from optimum_blockprune.model.loading import parse_max_memory
        from optimum_blockprune.pruner import BlockPruner

        out = Path(args.output)
        if out.exists() and not args.overwrite:
            raise BlockPruneError(f"{out} already exists; pass --overwrite to replace it")
        config = BlockPruneConfig(remove=1, granularity=args.granularity, **calibration_settings(args))
        plan = plan_from_args(args, config)  # everything checked before the model loads
        processes = Processes.current()
        max_memory = parse_max_memory(args.max_memory) if args.max_memory else None
        device_map, max_memory = placement(args.device_map, max_memory, processes)
        pruner = BlockPruner.from_pretrained(
            plan.model,
            revision=plan.revision,
            adapter=args.adapter,
            dtype=getattr(torch, args.dtype),
            device_map=device_map,
            max_memory=max_memory,
            offload_folder=args.offload_folder,
        )
        partial = partial_path(out)
        energy = pruner.analyze(
            config,
            progress=True,
            checkpoint=partial,
            resume=not args.no_resume,
            gradient_checkpointing=args.gradient_checkpointing,
        )
        if processes.is_main:
            energy.save(out)
            partial.unlink(missing_ok=True)
            by = f" by {processes.world} processes" if processes.world > 1 else ""
            print(f"energy model ({energy.variant}, {len(energy)} blocks) computed{by}, written to {out}")
        processes.close()
