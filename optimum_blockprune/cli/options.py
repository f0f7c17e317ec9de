"""The argument groups the subcommands share, the settings they turn into, and :class:`Leaf`, the
base of every subcommand (user errors become one line on stderr and exit status 2)."""

from __future__ import annotations

import sys
from argparse import ArgumentParser, Namespace
from dataclasses import dataclass
from typing import Any

from optimum.commands.base import BaseOptimumCLICommand

from optimum_blockprune.config import DEFAULT_METHOD, ENERGY_VARIANTS, OBJECTIVES, SEARCHES
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
    add_latency_args(group)
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


def add_latency_args(group) -> None:
    """The latency budget: a speedup and/or seconds, in the phase, batch and context it is timed at."""
    from optimum_blockprune.config import LATENCY_PHASES

    group.add_argument(
        "--target-speedup",
        type=float,
        default=None,
        help="latency budget: the pruned model at least this much faster, e.g. 1.5 (blocks timed on the device)",
    )
    group.add_argument(
        "--target-latency",
        type=float,
        default=None,
        help="latency budget: seconds per forward (prefill) or per token (decode) the pruned model may take",
    )
    group.add_argument(
        "--latency-phase",
        default=LATENCY_PHASES[0],
        choices=LATENCY_PHASES,
        help="what the latency budget times: one token with a KV cache (decode, default) or one forward pass",
    )
    group.add_argument(
        "--latency-batch", type=int, default=1, help="sequences per timed forward pass (default: 1)"
    )
    group.add_argument(
        "--latency-context",
        type=int,
        default=None,
        help="tokens of context (decode) or per sequence (prefill) when timing (default: --seq-len)",
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
    group.add_argument(
        "--search",
        default=SEARCHES[0],
        choices=SEARCHES,
        help="after the energy method's rerank: improve the best candidate by single swaps on real "
        "loss until none helps or the budget is spent (swap, default), until no single swap helps, "
        "a certificate of local optimality (certify), or keep it (none)",
    )
    group.add_argument(
        "--search-budget",
        type=float,
        default=None,
        metavar="PASSES",
        help="the most forward passes (over the calibration set) the swap search may spend before "
        "it stops without a certificate (default: half of those spent before it with --search swap, "
        "no limit with --search certify)",
    )


def target_settings(args: Namespace) -> dict:
    from optimum_blockprune.config import AMOUNTS, parse_params, parse_remove

    if all(getattr(args, k) is None for k in AMOUNTS):
        raise BlockPruneError(
            "say how much to remove: --remove N (or attn=2,mlp=3), --ratio R, --target-params P, "
            "--param-ratio R, --target-speedup S or --target-latency SECONDS"
        )
    return {
        "remove": None if args.remove is None else parse_remove(args.remove),
        "ratio": args.ratio,
        "target_params": None if args.target_params is None else parse_params(args.target_params),
        "param_ratio": args.param_ratio,
        "target_speedup": args.target_speedup,
        "target_latency": args.target_latency,
        "latency_phase": args.latency_phase,
        "latency_batch": args.latency_batch,
        "latency_context": args.latency_context,
        "granularity": getattr(args, "granularity", "layer"),
    }


DTYPES = ("auto", "float32", "bfloat16", "float16")
#: The ``device_map`` strings with which accelerate splits a model over the devices it finds.
AUTO_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


def add_placement_args(parser: ArgumentParser, cache: bool = False) -> None:
    """Where the model runs and in which dtype, the same on every command that loads one;
    ``cache``: also ``--cache-device`` (the commands whose selection caches layer inputs)."""
    group = parser.add_argument_group("placement (devices, dtype, memory)")
    group.add_argument(
        "--device", default=None, help="the whole model on one device: cpu, cuda, cuda:1, mps (default: cpu)"
    )
    group.add_argument(
        "--dtype",
        default="auto",
        choices=DTYPES,
        help="weights' dtype (default: auto = bfloat16 on a CUDA GPU that supports it, else float32)",
    )
    group.add_argument(
        "--device-map",
        default=None,
        help="'auto' splits the model over GPUs, CPU and disk; or a device such as cuda:0 (default: none)",
    )
    group.add_argument(
        "--max-memory",
        default=None,
        help="per-device limits, e.g. 0=70GiB,1=70GiB,cpu=200GiB: the memory check holds each device to "
        "them, and --device-map gets them (under accelerate launch with --device-map auto, GPU numbers "
        "count within each process's share of the GPUs)",
    )
    group.add_argument("--offload-folder", default=None, help="folder for layers offloaded to disk")
    if cache:
        group.add_argument(
            "--cache-device",
            default="auto",
            help="where the loss scorer keeps every layer's input for every calibration sample: auto "
            "(the model's device when the memory estimate fits there, else cpu), cpu, cuda, cuda:N",
        )


def add_scale_args(parser: ArgumentParser) -> None:
    group = parser.add_argument_group(
        "long runs (gradient energies; under 'accelerate launch' the samples are shared)"
    )
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


@dataclass
class Placement:
    """The placement flags, checked: what ``from_pretrained`` gets, and what the memory check needs."""

    dtype: Any
    device: str | None = None
    device_map: str | dict | None = None
    max_memory: dict | None = None
    offload_folder: str | None = None
    is_main: bool = True

    def load_kwargs(self) -> dict:
        """Keyword arguments of ``load_model_and_tokenizer`` / ``BlockPruner.from_pretrained``."""
        return {
            "dtype": self.dtype,
            "device": self.device,
            "device_map": self.device_map,
            "max_memory": self.max_memory if self.device_map is not None else None,
            "offload_folder": self.offload_folder,
        }

    @property
    def weights_device(self) -> str:
        """The weights' one device, or ``SPREAD`` when a device map may split them."""
        from optimum_blockprune.model.memory import SPREAD

        if self.device is not None:
            return self.device
        if self.device_map is None:
            return "cpu"
        if isinstance(self.device_map, dict) and set(self.device_map) == {""}:
            return str(self.device_map[""])
        if isinstance(self.device_map, str) and self.device_map not in AUTO_MAPS:
            return self.device_map
        return SPREAD


def placement_from_args(args: Namespace) -> Placement:
    """The checked placement flags (under ``accelerate launch`` each process gets its own device,
    as :func:`optimum_blockprune.energy.distributed.placement` decides); with ``--dtype auto`` on a
    GPU the chosen dtype is printed."""
    from optimum_blockprune.energy.distributed import Processes, placement
    from optimum_blockprune.model.loading import check_device, on_gpu, parse_max_memory, resolve_dtype

    if args.device and args.device_map:
        raise BlockPruneError("--device and --device-map both place the model; give one of them")
    processes = Processes.current()
    if args.device and processes.world > 1:
        raise BlockPruneError(
            "under accelerate launch each process puts the model on its own device; drop --device"
        )
    device = check_device(args.device) if args.device else None
    max_memory = parse_max_memory(args.max_memory) if args.max_memory else None
    device_map = args.device_map
    if isinstance(device_map, str) and device_map not in (*AUTO_MAPS, "disk"):  # one device, as --device
        device_map = check_device(device_map, "device_map")
    if device is None:
        device_map, max_memory = placement(device_map, max_memory, processes)
    gpu = on_gpu(device, device_map)
    place = Placement(
        resolve_dtype(args.dtype, gpu), device, device_map, max_memory, args.offload_folder, processes.is_main
    )
    if args.dtype == "auto" and gpu and processes.is_main:
        print(f"dtype: {str(place.dtype).removeprefix('torch.')} (--dtype auto on a GPU)")
    return place


def check_memory_from_args(
    args: Namespace,
    place: Placement,
    model_config: Any,
    *,
    cache: bool = False,
    train_factor: float = 0.0,
) -> str | None:
    """Estimate the run's memory from the model's config, print it, and stop with one line when
    it cannot fit; ``cache``: count the loss scorer's activation cache and return its device
    (``--cache-device``, ``auto`` resolved)."""
    from optimum_blockprune.model.loading import check_device
    from optimum_blockprune.model.memory import cache_device_for, check_memory, estimate_memory

    wanted = getattr(args, "cache_device", "auto") if cache else None
    cache_device = None
    if wanted is not None and wanted != "auto":
        cache_device = check_device(wanted, "cache_device")
    estimate = estimate_memory(
        model_config,
        place.dtype,
        place.weights_device,
        cache_device=cache_device or (place.weights_device if cache else None),
        num_samples=getattr(args, "num_samples", 0) if cache else 0,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        train_factor=train_factor,
    )
    if wanted == "auto":
        cache_device = cache_device_for(estimate, place.max_memory)
        estimate = estimate.with_cache_on(cache_device)
    check_memory(estimate, place.max_memory, offload=place.offload_folder is not None)
    if place.is_main:
        print(estimate.line(), flush=True)
    return cache_device


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
        search=getattr(args, "search", SEARCHES[0]),
        search_budget=getattr(args, "search_budget", None),
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
