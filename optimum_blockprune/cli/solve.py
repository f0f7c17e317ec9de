"""``optimum-cli blockprune solve``: the lowest-energy removal configurations of an energy file."""

from __future__ import annotations

from argparse import ArgumentParser, Namespace

from optimum.commands.base import CommandInfo

from optimum_blockprune.cli.options import (
    Leaf,
    add_model_arg,
    add_output_arg,
    add_placement_args,
    add_target_args,
    name_list,
    placement_from_args,
    require,
    target_settings,
)
from optimum_blockprune.errors import BlockPruneError


class SolveCommand(Leaf):
    COMMAND = CommandInfo(
        name="solve", help="List the lowest-energy removal configurations of an energy file."
    )

    @staticmethod
    def parse_args(parser: ArgumentParser) -> None:
        parser.add_argument(
            "--energy-file", "-e", default="energy.safetensors", help="file written by 'analyze'"
        )
        add_target_args(parser, granularity=False)
        parser.add_argument(
            "--min-params", type=int, default=None, help="parameters the removed blocks must hold at least"
        )
        parser.add_argument("--json", default=None, help="also write the candidates to this JSON file")
        group = parser.add_argument_group("apply the best candidate (like 'apply --blocks')")
        group.add_argument(
            "--apply", action="store_true", help="remove the rank-0 candidate's blocks from --model"
        )
        add_model_arg(group, "the model the energy file was computed for")
        group.add_argument("--adapter", default=None, help="architecture adapter name (default: detected)")
        add_output_arg(group, "the pruned model (with --apply)")
        group.add_argument(
            "--calibration",
            default="demo",
            help="text for the report's loss before and after (default: demo)",
        )
        group.add_argument("--text-field", default="text", help="field holding the text in .jsonl / datasets")
        group.add_argument("--num-samples", type=int, default=32, help="calibration samples (default: 32)")
        group.add_argument("--seq-len", type=int, default=128, help="tokens per sample (default: 128)")
        group.add_argument("--batch-size", type=int, default=8, help="samples per forward pass (default: 8)")
        add_placement_args(parser)

    def execute(self, args: Namespace) -> None:
        from optimum_blockprune.config import BlockPruneConfig
        from optimum_blockprune.energy.model import EnergyModel
        from optimum_blockprune.solvers import solution_names, solve

        place = None
        if args.apply:  # the model, the output folder and the placement are checked before solving
            from optimum_blockprune.plan import check_output, resolve_model

            source, _ = resolve_model(args.model, args.revision)
            check_output(require(args, "output", "where to save the pruned model"), args.overwrite, source)
            place = placement_from_args(args)
        energy = EnergyModel.load(args.energy_file)
        target = target_settings(args)
        model_params = energy.metadata.get("model_params")
        if (target["target_params"] is not None or target["param_ratio"] is not None) and not model_params:
            raise BlockPruneError(
                f"{args.energy_file} does not record the model's parameter count; use --min-params instead"
            )
        remove, min_params = BlockPruneConfig(**target).removal_target(
            energy.blocks(), int(model_params or 0)
        )
        if min_params is None:
            min_params = args.min_params
        samples = solve(
            energy,
            remove,
            min_params=min_params,
            solver=args.solver,
            top_k=args.top_k,
            protect=name_list(args.protect),
            force=name_list(args.force),
        )
        rows = [
            {"rank": i, "energy": float(e), "removed": names}
            for i, (e, names) in enumerate(zip(samples.record.energy, solution_names(samples), strict=True))
        ]
        print(f"{'rank':>4}  {'energy':>12}  removed blocks")
        for row in rows:
            print(f"{row['rank']:>4}  {row['energy']:>12.6g}  {' '.join(row['removed'])}")
        info = {k: v for k, v in samples.info.items() if isinstance(v, (bool, int, float, str, type(None)))}
        print(solver_line(info))
        if args.json:
            from optimum_blockprune.data.atomic import write_json_atomic

            write_json_atomic(args.json, {"candidates": rows, "info": info})
        if args.apply:
            from optimum_blockprune.cli.prune import apply_blocks

            apply_blocks(args, rows[0]["removed"], args.output, place)


def solver_line(info: dict) -> str:
    """The solver's info as one readable line: which solver, optimal or not, bound, gap, time."""
    name = info.get("used") or info.get("solver", "?")
    parts = [f"solver {name}" + (f" (chosen by {info['solver']})" if info.get("used") else "")]
    if info.get("optimal"):
        parts.append("rank 0 is proven optimal")
    else:
        parts.append("optimality not proven")
        if info.get("lower_bound") is not None:
            parts.append(f"lower bound {info['lower_bound']:.6g}")
        if info.get("gap") is not None:
            parts.append(f"gap {info['gap']:.3g}")
    if info.get("num_configurations"):
        parts.append(f"{info['num_configurations']} configurations")
    parts.append(f"{info.get('seconds', 0):.2f} s")
    return "; ".join(parts)
