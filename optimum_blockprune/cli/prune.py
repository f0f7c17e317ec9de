"""``optimum-cli blockprune prune``: choose blocks, remove them, save the pruned model."""

from __future__ import annotations

from argparse import ArgumentParser, Namespace

from optimum.commands.base import CommandInfo

from optimum_blockprune.cli.options import (
    Leaf,
    Placement,
    add_calibration_args,
    add_method_args,
    add_model_args,
    add_output_arg,
    add_placement_args,
    add_target_args,
    calibration_settings,
    check_memory_from_args,
    config_from_args,
    name_list,
    placement_from_args,
    plan_from_args,
    require,
)


def add_report_arg(parser: ArgumentParser) -> None:
    parser.add_argument(
        "--no-report",
        action="store_true",
        help="skip the visual report (report.html, report.md); the model card is still written",
    )


def print_result(result, report: bool) -> None:
    """What a prune (or apply) run prints: the blocks, the cost, the losses, where it went."""
    print(f"removed {len(result.removed)} blocks: {' '.join(result.removed)}")
    cost = result.report["cost"]
    print(
        f"chosen by method {result.report['method']}: {cost['forward_passes']:g} forward passes, "
        f"{cost['backward_passes']} backward passes, {cost['seconds']:.1f} s"
    )
    print(f"calibration loss {result.report['dense_loss']:.4f} -> {result.report['pruned_loss']:.4f}")
    print(f"pruned model written to {result.path}")
    if report and (result.path / "report.html").is_file():
        print(f"report: {result.path / 'report.html'} (and report.md)")


class PruneCommand(Leaf):
    COMMAND = CommandInfo(name="prune", help="Choose blocks, remove them and save the pruned model.")

    @staticmethod
    def parse_args(parser: ArgumentParser) -> None:
        add_model_args(parser)
        add_calibration_args(parser)
        add_target_args(parser)
        add_method_args(parser)
        group = parser.add_argument_group("a selection made before")
        choice = group.add_mutually_exclusive_group()
        choice.add_argument(
            "--blocks",
            default=None,
            help="remove exactly these blocks (e.g. layers.3,layers.7.attn) instead of choosing; same as 'apply'",
        )
        choice.add_argument(
            "--energy-file",
            "-e",
            default=None,
            help="reuse an energy file written by 'analyze': solve it and rerank on real loss, no new analysis",
        )
        add_output_arg(parser, "the pruned model")
        add_report_arg(parser)
        add_placement_args(parser, cache=True)

    def execute(self, args: Namespace) -> None:
        from optimum_blockprune.pruner import BlockPruner

        output = require(args, "output", "where to save the pruned model")
        if args.blocks is not None:
            return apply_blocks(args, name_list(args.blocks), output)
        config = config_from_args(args)
        plan = plan_from_args(args, config, output, args.overwrite)
        place = placement_from_args(args)
        cache_device = check_memory_from_args(args, place, plan.model_config, cache=True)
        pruner = BlockPruner.from_pretrained(
            plan.model,
            adapter=args.adapter,
            revision=plan.revision,
            cache_device=cache_device,
            **place.load_kwargs(),
        )
        if args.energy_file:
            result = pruner.prune_from_energy(
                config, args.energy_file, output, overwrite=args.overwrite, write_report=not args.no_report
            )
        else:
            result = pruner.prune(
                config, output, overwrite=args.overwrite, progress=True, write_report=not args.no_report
            )
        finish(result, not args.no_report)


def apply_blocks(args: Namespace, blocks: list[str], output: str, place: Placement | None = None) -> None:
    """Remove ``blocks`` from ``--model`` and save to ``output`` (``apply``, ``prune --blocks``,
    ``solve --apply``), checked before the model loads; ``place``: the placement flags, if checked
    already."""
    from optimum_blockprune.config import BlockPruneConfig
    from optimum_blockprune.plan import granularity_of, validate_request
    from optimum_blockprune.pruner import BlockPruner

    if not blocks:
        from optimum_blockprune.errors import SettingError

        raise SettingError("blocks", "{name} names no blocks; give e.g. layers.3,layers.7.attn")
    config = BlockPruneConfig(remove=len(blocks), granularity=granularity_of(blocks), **_calibration(args))
    plan = validate_request(
        config,
        args.model,
        output=output,
        overwrite=args.overwrite,
        revision=args.revision,
        adapter=args.adapter,
        blocks=blocks,
    )
    place = place or placement_from_args(args)
    check_memory_from_args(args, place, plan.model_config)
    pruner = BlockPruner.from_pretrained(
        plan.model, adapter=args.adapter, revision=plan.revision, **place.load_kwargs()
    )
    no_report = getattr(args, "no_report", False)
    result = pruner.remove(
        blocks, output, config=config, overwrite=args.overwrite, write_report=not no_report
    )
    finish(result, not no_report)


def finish(result, report: bool) -> None:
    """Print the result on the main process only, then end an ``accelerate launch``'s process group."""
    from optimum_blockprune.energy.distributed import Processes

    processes = Processes.current()
    if processes.is_main:
        print_result(result, report)
    processes.close()


def _calibration(args: Namespace) -> dict:
    """The calibration settings of ``args``; ``solve --apply`` has only some of them."""
    if hasattr(args, "energy"):
        return calibration_settings(args)
    keys = ("calibration", "text_field", "num_samples", "seq_len", "batch_size")
    return {k: getattr(args, k) for k in keys if hasattr(args, k)}
