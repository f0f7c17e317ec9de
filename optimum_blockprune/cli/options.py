"""The argument groups the subcommands share, the settings they turn into, and :class:`Leaf`, the
base of every subcommand (user errors become one line on stderr and exit status 2)."""

from __future__ import annotations

import sys
from argparse import ArgumentParser, Namespace

from optimum.commands.base import BaseOptimumCLICommand

from optimum_blockprune.config import DEFAULT_METHOD, ENERGY_VARIANTS, OBJECTIVES
from optimum_blockprune.errors import BlockPruneError, SettingError


def add_model_args(parser: ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    add_model_arg(group)
    group.add_argument("--adapter", default=None, help="architecture adapter name (default: detected)")
    group.add_argument("--list-adapters", action="store_true", help="list registered adapters and exit")


def add_model_arg(group, what: str = "model") -> None:
    """``--model/-m`` (a folder, a Hub id or ``demo``) and ``--revision``."""
    group.add_argument(
        "--model",
        "-m",
        default=None,
        help=f"{what}: a folder, a Hub id, or 'demo' for the bundled SmolLM2-135M-Instruct (required)",
    )
    group.add_argument("--revision", default=None, help="branch, tag or commit of a Hub id (default: main)")


def add_output_arg(parser: ArgumentParser, what: str) -> None:
    """``--output/-o`` (required) and ``--overwrite``."""
    parser.add_argument("--output", "-o", default=None, help=f"folder for {what} (required)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace this tool's own files in a non-empty output folder (other files are never deleted: they stop the run)",
    )


def require(args: Namespace, setting: str, what: str) -> str:
    """The value of a required flag; a one-line error saying what it is for otherwise."""
    value = getattr(args, setting, None)
    if not value:
        raise SettingError(setting, f"say {what}: {{name}} ...")
    return value


def plan_from_args(args: Namespace, config, output: str | None = None, overwrite: bool = False):
    """The checked request (:func:`optimum_blockprune.plan.validate_request`), before any load."""
    from optimum_blockprune.plan import validate_request

    return validate_request(
        config,
        args.model,
        output=output,
        overwrite=overwrite,
        revision=getattr(args, "revision", None),
        adapter=getattr(args, "adapter", None),
    )


def add_calibration_args(parser: ArgumentParser) -> None:
    group = parser.add_argument_group("calibration")
    group.add_argument(
        "--calibration",
        default="demo",
        help="'demo', a .txt/.jsonl file or a saved datasets folder (default: demo)",
    )
    group.add_argument(
        "--text-field", default="text", help="field holding the text in .jsonl / dataset sources"
    )
    group.add_argument("--num-samples", type=int, default=32, help="calibration samples (default: 32)")
    group.add_argument("--seq-len", type=int, default=128, help="tokens per sample (default: 128)")
    group.add_argument("--batch-size", type=int, default=8, help="samples per forward pass (default: 8)")
    group.add_argument(
        "--chat-template", action="store_true", help="render texts with the tokenizer's chat template"
    )
    group.add_argument(
        "--no-pack", action="store_true", help="one padded sample per document instead of packed blocks"
    )
    group.add_argument(
        "--energy",
        default=ENERGY_VARIANTS[0],
        choices=ENERGY_VARIANTS,
        help=f"energy variant (default: {ENERGY_VARIANTS[0]})",
    )
    group.add_argument(
        "--objective",
        default=OBJECTIVES[0],
        choices=OBJECTIVES,
        help="real loss that loss-based selection minimises: next-token cross-entropy (ce, default) "
        "or KL divergence from the dense model's next-token distribution (kl, over its top-128 tokens)",
    )


def add_granularity_arg(group) -> None:
    from optimum_blockprune.blocks import GRANULARITIES

    group.add_argument(
        "--granularity",
        default="layer",
        choices=GRANULARITIES,
        help="blocks: whole layers, single branches (attn/mlp/moe/mamba), or both (default: layer)",
    )


def add_target_args(parser: ArgumentParser, granularity: bool = True) -> None:
    group = parser.add_argument_group("what to remove")
    count = group.add_mutually_exclusive_group()
    count.add_argument(
        "--remove",
        "-n",
        default=None,
        help="blocks to remove: a number (6) or counts per kind (attn=2,mlp=3; kinds not named stay)",
    )
    count.add_argument("--ratio", type=float, default=None, help="fraction of the blocks to remove")
    budget = group.add_mutually_exclusive_group()
    budget.add_argument(
        "--target-params", default=None, help="parameters the pruned model may keep at most, e.g. 100M"
    )
    budget.add_argument(
        "--param-ratio", type=float, default=None, help="fraction of the model's parameters to remove"
    )
    if granularity:
        add_granularity_arg(group)
    group.add_argument(
        "--protect", default="", help="comma-separated block names never removed, e.g. layers.0,layers.29"
    )
    group.add_argument("--force", default="", help="comma-separated block names always removed")
    group.add_argument("--solver", default="auto", help="solver name (default: auto); see --list-solvers")
    group.add_argument("--list-solvers", action="store_true", help="list registered solvers and exit")
    group.add_argument(
        "--top-k", type=int, default=10, help="candidates to rerank by real loss (default: 10)"
    )


def add_method_args(parser: ArgumentParser) -> None:
    group = parser.add_argument_group("selection method")
    group.add_argument(
        "--method",
        default=DEFAULT_METHOD,
        help="how blocks are chosen: 'energy' (this project's method, default), a peer baseline "
        "(shortgpt, shortgpt-iterative, angular, last, sleb, blockpruner, taylor, random, evopress; they take "
        "--remove / --ratio, not a parameter budget) or a plugin's method; see --list-methods",
    )
    group.add_argument("--list-methods", action="store_true", help="list registered methods and exit")
    group.add_argument(
        "--seed", type=int, default=0, help="seed of --method random and evopress (default: 0)"
    )
    group.add_argument(
        "--generations",
        type=int,
        default=None,
        help="generations of --method evopress (default: its paper's k(n-k)/1.5 for k of n blocks)",
    )


def target_settings(args: Namespace) -> dict:
    from optimum_blockprune.config import parse_params, parse_remove

    if all(getattr(args, k) is None for k in ("remove", "ratio", "target_params", "param_ratio")):
        raise BlockPruneError(
            "say how much to remove: --remove N (or attn=2,mlp=3), --ratio R, --target-params P or --param-ratio R"
        )
    return {
        "remove": None if args.remove is None else parse_remove(args.remove),
        "ratio": args.ratio,
        "target_params": None if args.target_params is None else parse_params(args.target_params),
        "param_ratio": args.param_ratio,
        "granularity": getattr(args, "granularity", "layer"),
    }


DTYPES = ("float32", "bfloat16", "float16")


def add_scale_args(parser: ArgumentParser) -> None:
    group = parser.add_argument_group(
        "large models and long runs (gradient energies; under 'accelerate launch' the samples are shared)"
    )
    group.add_argument(
        "--dtype",
        default="float32",
        choices=DTYPES,
        help="weights' dtype (default: float32); gates and their gradients stay float32",
    )
    group.add_argument(
        "--device-map",
        default=None,
        help="'auto' splits the model over GPUs, CPU and disk; or a device such as cuda:0 (default: CPU)",
    )
    group.add_argument(
        "--max-memory",
        default=None,
        help="per device limits, e.g. 0=70GiB,1=70GiB,cpu=200GiB (under accelerate launch with "
        "--device-map auto, GPU numbers count within each process's share of the GPUs)",
    )
    group.add_argument("--offload-folder", default=None, help="folder for layers offloaded to disk")
    group.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="keep only each layer's input for the backward pass (less memory, one more forward)",
    )
    group.add_argument(
        "--no-resume",
        action="store_true",
        help="ignore OUTPUT.partial (rows checkpointed by an interrupted run) and start over",
    )


def name_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def calibration_settings(args: Namespace) -> dict:
    return {
        "energy": args.energy,
        "objective": args.objective,
        "calibration": args.calibration,
        "text_field": args.text_field,
        "num_samples": args.num_samples,
        "seq_len": args.seq_len,
        "batch_size": args.batch_size,
        "chat_template": args.chat_template,
        "pack": not args.no_pack,
    }


def config_from_args(args: Namespace):
    from optimum_blockprune.config import BlockPruneConfig

    return BlockPruneConfig(
        **target_settings(args),
        method=getattr(args, "method", "energy"),
        seed=getattr(args, "seed", 0),
        generations=getattr(args, "generations", None),
        solver=args.solver,
        top_k=args.top_k,
        protect=name_list(args.protect) or None,
        force=name_list(args.force) or None,
        **calibration_settings(args),
    )


def listing(args: Namespace) -> bool:
    """Print a registry when asked (--list-adapters, --list-solvers, --list-methods)."""
    if getattr(args, "list_adapters", False):
        from optimum_blockprune.model.registry import adapters

        for name, adapter in sorted(adapters().items()):
            print(f"{name}\t{', '.join(adapter.model_types)}")
        return True
    if getattr(args, "list_solvers", False):
        from optimum_blockprune.solvers.registry import solvers

        for name in sorted(solvers()):
            print(name)
        return True
    if getattr(args, "list_methods", False):
        from optimum_blockprune.selection.registry import methods

        for name, method in methods().items():
            print(f"{name}\t{method.help}")
        return True
    return False


class Leaf(BaseOptimumCLICommand):
    """A leaf command: user errors become one line on stderr and exit status 2."""

    def run(self) -> None:
        try:
            if not listing(self.args):
                self.execute(self.args)
        except BlockPruneError as exc:
            message = exc.flagged() if isinstance(exc, SettingError) else str(exc)
            print(f"optimum-cli blockprune {self.COMMAND.name}: error: {message}", file=sys.stderr)
            sys.exit(2)

    def execute(self, args: Namespace) -> None:  # pragma: no cover - abstract
        raise NotImplementedError
