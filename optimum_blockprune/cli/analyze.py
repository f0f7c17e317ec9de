"""``optimum-cli blockprune analyze``: the energy model of a model's blocks, written to a file."""

from __future__ import annotations

from argparse import ArgumentParser, Namespace

from optimum.commands.base import CommandInfo

from optimum_blockprune.cli.options import (
    Leaf,
    add_calibration_args,
    add_granularity_arg,
    add_model_args,
    add_placement_args,
    add_scale_args,
    calibration_settings,
    check_memory_from_args,
    placement_from_args,
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
        add_placement_args(parser, cache=True)
        add_scale_args(parser)
        parser.add_argument("--output", "-o", default="energy.safetensors", help="energy file to write")
        parser.add_argument("--overwrite", action="store_true", help="replace an existing energy file")

    def execute(self, args: Namespace) -> None:
        from pathlib import Path

        from optimum_blockprune.config import BlockPruneConfig
        from optimum_blockprune.energy.distributed import Processes
        from optimum_blockprune.energy.partial import partial_path
        from optimum_blockprune.energy.variants import GRADIENT_VARIANTS
        from optimum_blockprune.pruner import BlockPruner

        out = Path(args.output)
        if out.exists() and not args.overwrite:
            raise BlockPruneError(f"{out} already exists; pass --overwrite to replace it")
        config = BlockPruneConfig(remove=1, granularity=args.granularity, **calibration_settings(args))
        plan = plan_from_args(args, config)  # everything checked before the model loads
        processes = Processes.current()
        place = placement_from_args(args)
        scored = args.energy not in GRADIENT_VARIANTS  # the loss scorer caches layer inputs
        cache_device = check_memory_from_args(args, place, plan.model_config, cache=scored)
        pruner = BlockPruner.from_pretrained(
            plan.model,
            revision=plan.revision,
            adapter=args.adapter,
            cache_device=cache_device,
            **place.load_kwargs(),
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
