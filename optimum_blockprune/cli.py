"""``optimum-cli blockprune analyze | solve | prune | heal | report | eval``. Heavy imports happen inside ``run()``.

Also runnable as ``python -m optimum_blockprune.cli <subcommand> ...``.
"""

from __future__ import annotations

import json
import math
import sys
from argparse import ArgumentParser, Namespace

from optimum.commands.base import BaseOptimumCLICommand, CommandInfo

from .energy import ENERGY_VARIANTS
from .errors import BlockPruneError


def _add_model_args(parser: ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        "-m",
        default=None,
        help="model folder (default: the bundled SmolLM2-135M-Instruct demo model)",
    )
    group.add_argument("--adapter", default=None, help="architecture adapter name (default: detected)")
    group.add_argument("--list-adapters", action="store_true", help="list registered adapters and exit")


def _add_calibration_args(parser: ArgumentParser) -> None:
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


def _add_granularity_arg(group) -> None:
    from .blocks import GRANULARITIES

    group.add_argument(
        "--granularity",
        default="layer",
        choices=GRANULARITIES,
        help="blocks: whole layers, single branches (attn/mlp/moe/mamba), or both (default: layer)",
    )


def _add_target_args(parser: ArgumentParser, granularity: bool = True) -> None:
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
        _add_granularity_arg(group)
    group.add_argument(
        "--protect", default="", help="comma-separated block names never removed, e.g. layers.0,layers.29"
    )
    group.add_argument("--force", default="", help="comma-separated block names always removed")
    group.add_argument("--solver", default="auto", help="solver name (default: auto); see --list-solvers")
    group.add_argument("--list-solvers", action="store_true", help="list registered solvers and exit")
    group.add_argument(
        "--top-k", type=int, default=10, help="candidates to rerank by real loss (default: 10)"
    )


def _add_method_args(parser: ArgumentParser) -> None:
    from .methods import ENERGY_METHOD, METHODS

    group = parser.add_argument_group("selection method")
    group.add_argument(
        "--method",
        default=ENERGY_METHOD,
        choices=METHODS,
        help="how blocks are chosen: 'energy' (this project's method, default) or a peer baseline "
        "(shortgpt, shortgpt-iterative, angular, last, sleb, blockpruner, taylor, random; they take "
        "--remove / --ratio, not a parameter budget)",
    )
    group.add_argument("--seed", type=int, default=0, help="seed of --method random (default: 0)")


def _target_settings(args: Namespace) -> dict:
    from .config import parse_params, parse_remove

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


_DTYPES = ("float32", "bfloat16", "float16")


def _add_scale_args(parser: ArgumentParser) -> None:
    group = parser.add_argument_group(
        "large models and long runs (gradient energies; under 'accelerate launch' the samples are shared)"
    )
    group.add_argument(
        "--dtype",
        default="float32",
        choices=_DTYPES,
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


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _calibration_settings(args: Namespace) -> dict:
    return {
        "energy": args.energy,
        "calibration": args.calibration,
        "text_field": args.text_field,
        "num_samples": args.num_samples,
        "seq_len": args.seq_len,
        "batch_size": args.batch_size,
        "chat_template": args.chat_template,
        "pack": not args.no_pack,
    }


def _config_from_args(args: Namespace):
    from .config import BlockPruneConfig

    return BlockPruneConfig(
        **_target_settings(args),
        method=getattr(args, "method", "energy"),
        seed=getattr(args, "seed", 0),
        solver=args.solver,
        top_k=args.top_k,
        protect=_names(args.protect) or None,
        force=_names(args.force) or None,
        **_calibration_settings(args),
    )


def _listing(args: Namespace) -> bool:
    from . import plugins

    if getattr(args, "list_adapters", False):
        for name, adapter in sorted(plugins.adapters().items()):
            print(f"{name}\t{', '.join(adapter.model_types)}")
        return True
    if getattr(args, "list_solvers", False):
        for name in sorted(plugins.solvers()):
            print(name)
        return True
    return False


class _Leaf(BaseOptimumCLICommand):
    """A leaf command: user errors become one line on stderr and exit status 2."""

    def run(self) -> None:
        try:
            if not _listing(self.args):
                self.execute(self.args)
        except BlockPruneError as exc:
            print(f"optimum-cli blockprune {self.COMMAND.name}: error: {exc}", file=sys.stderr)
            sys.exit(2)

    def execute(self, args: Namespace) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class AnalyzeCommand(_Leaf):
    COMMAND = CommandInfo(
        name="analyze", help="Compute the energy model of a model's blocks on calibration text."
    )

    @staticmethod
    def parse_args(parser: ArgumentParser) -> None:
        _add_model_args(parser)
        _add_calibration_args(parser)
        _add_granularity_arg(parser)
        _add_scale_args(parser)
        parser.add_argument("--output", "-o", default="energy.safetensors", help="energy file to write")
        parser.add_argument("--overwrite", action="store_true", help="replace an existing energy file")

    def execute(self, args: Namespace) -> None:
        from pathlib import Path

        import torch

        from .config import BlockPruneConfig
        from .distributed import Processes
        from .loading import parse_max_memory, rank_max_memory
        from .pruner import BlockPruner
        from .resume import partial_path

        out = Path(args.output)
        if out.exists() and not args.overwrite:
            raise BlockPruneError(f"{out} already exists; pass --overwrite to replace it")
        config = BlockPruneConfig(remove=1, granularity=args.granularity, **_calibration_settings(args))
        processes = Processes.current()
        device_map = args.device_map
        max_memory = parse_max_memory(args.max_memory) if args.max_memory else None
        if processes.world > 1 and device_map is None and processes.device.type != "cpu":
            device_map = {"": str(processes.device)}  # data parallel: one whole model per process
        elif processes.world > 1 and device_map == "auto":  # each process its own GPUs
            max_memory = rank_max_memory(processes.local_rank, processes.local_world, max_memory)
        pruner = BlockPruner.from_pretrained(
            args.model,
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


class SolveCommand(_Leaf):
    COMMAND = CommandInfo(
        name="solve", help="List the lowest-energy removal configurations of an energy file."
    )

    @staticmethod
    def parse_args(parser: ArgumentParser) -> None:
        parser.add_argument(
            "--energy-file", "-e", default="energy.safetensors", help="file written by 'analyze'"
        )
        _add_target_args(parser, granularity=False)
        parser.add_argument(
            "--min-params", type=int, default=None, help="parameters the removed blocks must hold at least"
        )
        parser.add_argument("--json", default=None, help="also write the candidates to this JSON file")

    def execute(self, args: Namespace) -> None:
        from .energy import EnergyModel
        from .solvers import solution_names, solve

        energy = EnergyModel.load(args.energy_file)
        target = _target_settings(args)
        remove = target["remove"]
        if target["ratio"] is not None:
            remove = round(target["ratio"] * len(energy))
        min_params = args.min_params
        if target["target_params"] is not None or target["param_ratio"] is not None:
            model_params = energy.metadata.get("model_params")
            if not model_params:
                raise BlockPruneError(
                    f"{args.energy_file} does not record the model's parameter count; use --min-params instead"
                )
            if target["param_ratio"] is not None:
                min_params = math.ceil(target["param_ratio"] * model_params)
            else:
                min_params = int(model_params) - target["target_params"]
        if remove is None and min_params is None:
            raise BlockPruneError(
                "say how much to remove: --remove, --ratio, --min-params, --target-params or --param-ratio"
            )
        samples = solve(
            energy,
            remove,
            min_params=min_params,
            solver=args.solver,
            top_k=args.top_k,
            protect=_names(args.protect),
            force=_names(args.force),
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
            from .atomic import write_json_atomic

            write_json_atomic(args.json, {"candidates": rows, "info": info})


class PruneCommand(_Leaf):
    COMMAND = CommandInfo(name="prune", help="Choose blocks, remove them and save the pruned model.")

    @staticmethod
    def parse_args(parser: ArgumentParser) -> None:
        _add_model_args(parser)
        _add_calibration_args(parser)
        _add_target_args(parser)
        _add_method_args(parser)
        parser.add_argument("--output", "-o", default=None, help="folder for the pruned model (required)")
        parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
        parser.add_argument(
            "--no-report",
            action="store_true",
            help="skip the visual report (report.html, report.md); the model card is still written",
        )

    def execute(self, args: Namespace) -> None:
        from .pruner import BlockPruner

        if not args.output:
            raise BlockPruneError("say where to save the pruned model: --output DIR")
        config = _config_from_args(args)
        pruner = BlockPruner.from_pretrained(args.model, adapter=args.adapter)
        result = pruner.prune(
            config, args.output, overwrite=args.overwrite, progress=True, write_report=not args.no_report
        )
        print(f"removed {len(result.removed)} blocks: {' '.join(result.removed)}")
        cost = result.report["cost"]
        print(
            f"chosen by method {result.report['method']}: {cost['forward_passes']:g} forward passes, "
            f"{cost['backward_passes']} backward passes, {cost['seconds']:.1f} s"
        )
        print(f"calibration loss {result.report['dense_loss']:.4f} -> {result.report['pruned_loss']:.4f}")
        print(f"pruned model written to {result.path}")
        if not args.no_report:
            print(f"report: {result.path / 'report.html'} (and report.md)")


class HealCommand(_Leaf):
    COMMAND = CommandInfo(
        name="heal",
        help="Retrain a pruned model briefly (LoRA or full; cross-entropy and/or distillation), merge, save.",
    )

    @staticmethod
    def parse_args(parser: ArgumentParser) -> None:
        parser.add_argument("--model", "-m", default=None, help="pruned model folder (required)")
        parser.add_argument(
            "--teacher",
            default=None,
            help="unpruned model folder for distillation (default: the model the pruned folder came from)",
        )
        parser.add_argument(
            "--teacher-dtype",
            default="float32",
            choices=("float32", "bfloat16", "float16"),
            help="precision of the teacher (default: float32)",
        )
        parser.add_argument(
            "--data",
            default="demo",
            help="training text: 'demo' (calibration split), a .txt/.jsonl file or a saved datasets folder",
        )
        parser.add_argument(
            "--text-field", default="text", help="field holding the text in .jsonl / datasets"
        )
        parser.add_argument("--output", "-o", default=None, help="folder for the healed model (required)")
        parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
        group = parser.add_argument_group("training")
        group.add_argument("--lora-r", type=int, default=16, help="LoRA rank (default: 16)")
        group.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA")
        group.add_argument("--max-steps", type=int, default=100, help="optimizer steps (default: 100)")
        group.add_argument(
            "--learning-rate", type=float, default=None, help="default: 1e-3 with LoRA, 1e-4 full fine-tuning"
        )
        group.add_argument(
            "--alpha",
            type=float,
            default=0.5,
            help="weight of cross-entropy; 1 - alpha on distillation (0.5)",
        )
        group.add_argument("--temperature", type=float, default=2.0, help="distillation temperature (2.0)")
        group.add_argument("--batch-size", type=int, default=8, help="blocks per step (default: 8)")
        group.add_argument("--seq-len", type=int, default=128, help="tokens per block (default: 128)")
        group.add_argument("--seed", type=int, default=0, help="data order and initialisation seed")
        group = parser.add_argument_group("checkpoints and evaluation")
        group.add_argument("--save-steps", type=int, default=25, help="checkpoint every N steps (25)")
        group.add_argument(
            "--checkpoint-dir", default=None, help="where checkpoints go (default: OUTPUT-checkpoints)"
        )
        group.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
        group.add_argument(
            "--keep-checkpoints", action="store_true", help="keep the checkpoint folder after success"
        )
        group.add_argument(
            "--heldout-samples",
            type=int,
            default=32,
            help="held-out demo blocks for perplexity before/after (0: skip; default: 32)",
        )

    def execute(self, args: Namespace) -> None:
        from .healing import heal

        if not args.model:
            raise BlockPruneError("say which pruned model to heal: --model DIR")
        if not args.output:
            raise BlockPruneError("say where to save the healed model: --output DIR")
        result = heal(
            args.model,
            args.output,
            teacher=args.teacher,
            data=args.data,
            text_field=args.text_field,
            alpha=args.alpha,
            temperature=args.temperature,
            lora_r=None if args.full else args.lora_r,
            max_steps=args.max_steps,
            learning_rate=args.learning_rate,
            batch_size=args.batch_size,
            seq_len=args.seq_len,
            teacher_dtype=args.teacher_dtype,
            save_steps=args.save_steps,
            checkpoint_dir=args.checkpoint_dir,
            resume=args.resume,
            keep_checkpoints=args.keep_checkpoints,
            heldout_samples=args.heldout_samples,
            overwrite=args.overwrite,
            seed=args.seed,
        )
        healing = result.report["healing"]
        ppl = healing["heldout_perplexity"]
        if ppl:
            line = f"held-out perplexity {ppl['before']:.2f} -> {ppl['after']:.2f}"
            if "gap_closed" in healing:
                line += f" (unpruned: {ppl['teacher']:.2f}; gap closed: {100 * healing['gap_closed']:.1f}%)"
            print(line)
        print(f"{healing['steps']} steps, {healing['tokens_per_second']:.0f} tokens/s")
        print(f"healed model written to {result.path}")


class ReportCommand(_Leaf):
    COMMAND = CommandInfo(
        name="report",
        help="Write the visual report (HTML page and markdown with plots) of a pruned model folder.",
    )

    @staticmethod
    def parse_args(parser: ArgumentParser) -> None:
        parser.add_argument("--input", "-i", default=None, help="pruned model folder written by 'prune'")
        parser.add_argument(
            "--output",
            "-o",
            default=None,
            help="folder for report.html, report.md, report_files/ (default: --input)",
        )
        parser.add_argument(
            "--methods",
            default=None,
            help="JSON rows {method, granularity, removed, perplexity} to plot perplexity per method "
            "(e.g. benchmarks/results/methods.json)",
        )

    def execute(self, args: Namespace) -> None:
        from .report import build_report

        if not args.input:
            raise BlockPruneError("say which pruned model folder to report on: --input DIR")
        files = build_report(args.input, args.output, args.methods)
        print(f"report written to {files.html} and {files.markdown} ({len(files.images)} plots)")


class EvalCommand(_Leaf):
    COMMAND = CommandInfo(
        name="eval", help="Perplexity and lm-evaluation-harness tasks of a (pruned) model, offline."
    )

    @staticmethod
    def parse_args(parser: ArgumentParser) -> None:
        parser.add_argument(
            "--model", "-m", default=None, help="model folder, pruned or not (default: the demo model)"
        )
        group = parser.add_argument_group("perplexity")
        group.add_argument(
            "--data",
            default=None,
            help="'demo' (held-out split), a .txt/.jsonl/.json/.csv/.parquet file or a saved dataset folder "
            "(default: demo; with --tasks and no --data, perplexity is skipped)",
        )
        group.add_argument("--text-column", default="text", help="column holding the text (default: text)")
        group.add_argument("--seq-len", type=int, default=128, help="tokens per block (default: 128)")
        group.add_argument(
            "--max-samples", type=int, default=None, help="at most this many blocks (default: all; demo: 64)"
        )
        group = parser.add_argument_group("lm-evaluation-harness")
        group.add_argument("--tasks", default="", help="comma-separated lm-eval task names")
        group.add_argument(
            "--include-path",
            action="append",
            default=[],
            help="folder of task YAMLs (repeatable), e.g. examples/lm_eval_tasks",
        )
        group.add_argument(
            "--num-fewshot", type=int, default=None, help="few-shot examples (default: task's)"
        )
        group.add_argument("--limit", type=int, default=None, help="at most this many examples per task")
        parser.add_argument("--batch-size", type=int, default=8, help="samples per forward pass (default: 8)")
        parser.add_argument(
            "--dtype", default="float32", choices=_DTYPES, help="weights' dtype (default: float32)"
        )
        parser.add_argument("--output-json", default=None, help="also write the results to this JSON file")

    def execute(self, args: Namespace) -> None:
        import time
        from pathlib import Path

        import torch

        from .loading import load_model_and_tokenizer

        tasks = _names(args.tasks)
        if args.model is not None and not Path(args.model).is_dir():
            raise BlockPruneError(
                f"model folder not found: {args.model}; give a folder with config.json and weights"
            )
        for name in ("batch_size", "seq_len"):
            if getattr(args, name) < 1:
                raise BlockPruneError(f"--{name.replace('_', '-')} must be a positive integer")
        data_source = args.data or ("demo" if not tasks else None)
        manager = None
        if tasks:  # before the model loads: unknown tasks and folders fail fast
            from .lm_eval_tasks import offline, task_manager

            with offline():
                manager = task_manager(tasks, args.include_path)
        t0 = time.perf_counter()
        model, tokenizer, model_id = load_model_and_tokenizer(args.model, dtype=getattr(torch, args.dtype))
        model.eval()
        out: dict = {"model": model_id, "perplexity": None, "tasks": {}}
        if data_source is not None:
            from .evaluation import eval_data, perplexity

            data = eval_data(tokenizer, data_source, args.text_column, args.seq_len, args.max_samples)
            value = perplexity(model, data, args.batch_size, progress=True)
            out["perplexity"] = {
                "value": value,
                "data": data_source,
                "samples": len(data),
                "tokens": data.num_tokens,
            }
        if tasks:
            from .lm_eval_tasks import run_tasks

            out["tasks"] = run_tasks(
                model,
                tokenizer,
                tasks,
                args.include_path,
                batch_size=args.batch_size,
                num_fewshot=args.num_fewshot,
                limit=args.limit,
                manager=manager,
            )
        out["seconds"] = round(time.perf_counter() - t0, 2)
        print(_eval_table(out))
        if args.output_json:
            from .atomic import write_json_atomic

            write_json_atomic(args.output_json, out)
            print(f"results written to {args.output_json}")


def _eval_table(out: dict) -> str:
    """The evaluation results as a plain-text table."""
    rows = [("model", "", str(out["model"]))]
    ppl = out["perplexity"]
    if ppl:
        rows.append(("perplexity", f"{ppl['data']}, {ppl['tokens']} tokens", f"{ppl['value']:.3f}"))
    for task, metrics in out["tasks"].items():
        n = metrics.get("samples")
        for metric, value in metrics.items():
            if metric != "samples":
                rows.append((task, metric + (f" ({n} samples)" if n is not None else ""), f"{value:.4f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    return "\n".join(f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c}" for a, b, c in rows)


class BlockPruneCommand(BaseOptimumCLICommand):
    COMMAND = CommandInfo(
        name="blockprune",
        help="Depth pruning: remove whole transformer blocks chosen by constrained binary optimisation.",
    )
    SUBCOMMANDS = (
        CommandInfo(name="analyze", help=AnalyzeCommand.COMMAND.help, subcommand_class=AnalyzeCommand),
        CommandInfo(name="solve", help=SolveCommand.COMMAND.help, subcommand_class=SolveCommand),
        CommandInfo(name="prune", help=PruneCommand.COMMAND.help, subcommand_class=PruneCommand),
        CommandInfo(name="heal", help=HealCommand.COMMAND.help, subcommand_class=HealCommand),
        CommandInfo(name="report", help=ReportCommand.COMMAND.help, subcommand_class=ReportCommand),
        CommandInfo(name="eval", help=EvalCommand.COMMAND.help, subcommand_class=EvalCommand),
    )


def main(argv: list[str] | None = None) -> None:
    """Entry point for ``python -m optimum_blockprune.cli``: same as ``optimum-cli blockprune``."""
    from optimum.commands.optimum_cli import main as optimum_main

    sys.argv = ["optimum-cli", "blockprune", *(sys.argv[1:] if argv is None else argv)]
    optimum_main()


if __name__ == "__main__":
    main()
