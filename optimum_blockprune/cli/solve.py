"""``optimum-cli blockprune solve``: the lowest-energy removal configurations of an energy file."""

from __future__ import annotations

import json
from argparse import ArgumentParser, Namespace

from optimum.commands.base import CommandInfo

from optimum_blockprune.cli.options import (
    Leaf,
    add_target_args,
    name_list,
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

    def execute(self, args: Namespace) -> None:
        from optimum_blockprune.config import BlockPruneConfig
        from optimum_blockprune.energy.model import EnergyModel
        from optimum_blockprune.solvers import solution_names, solve

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
        for row in rows:
            print(f"{row['rank']:>3}  {row['energy']:.6g}  {' '.join(row['removed'])}")
        info = {k: v for k, v in samples.info.items() if isinstance(v, (bool, int, float, str, type(None)))}
        print(f"solver: {json.dumps(info)}")
        if args.json:
            from optimum_blockprune.data.atomic import write_json_atomic

            write_json_atomic(args.json, {"candidates": rows, "info": info})
