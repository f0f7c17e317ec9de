"""``optimum-cli blockprune eval``: perplexity and lm-evaluation-harness tasks of a model."""

from __future__ import annotations

from argparse import SUPPRESS, ArgumentParser, Namespace

from optimum.commands.base import CommandInfo

from optimum_blockprune.cli.options import (
    Leaf,
    add_model_arg,
    add_placement_args,
    check_memory_from_args,
    name_list,
    placement_from_args,
)
from optimum_blockprune.errors import SettingError


class EvalCommand(Leaf):
    COMMAND = CommandInfo(
        name="eval", help="Perplexity and lm-evaluation-harness tasks of a (pruned) model, offline."
    )

    @staticmethod
    def parse_args(parser: ArgumentParser) -> None:
        add_model_arg(parser, "model to evaluate, pruned or not")
        group = parser.add_argument_group("perplexity")
        group.add_argument(
            "--data",
            default=None,
            help="'demo' (held-out split), a .txt/.jsonl/.json/.csv/.parquet file or a saved dataset folder "
            "(default: demo; with --tasks and no --data, perplexity is skipped)",
        )
        group.add_argument("--text-field", default="text", help="field holding the text (default: text)")
        group.add_argument("--text-column", dest="text_field", help=SUPPRESS)  # the old name, still accepted
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
        add_placement_args(parser)
        parser.add_argument("--output-json", default=None, help="also write the results to this JSON file")

    def execute(self, args: Namespace) -> None:
        import time

        from optimum_blockprune.model.loading import load_model_and_tokenizer
        from optimum_blockprune.plan import check_calibration, resolve_model

        tasks = name_list(args.tasks)
        for name in ("batch_size", "seq_len"):
            if getattr(args, name) < 1:
                raise SettingError(name, "{name} must be a whole number >= 1")
        if args.data is not None:
            check_calibration(args.data, "data")
        data_source = args.data or ("demo" if not tasks else None)
        manager = None
        if tasks:  # before the model loads: unknown tasks and folders fail fast
            from optimum_blockprune.output.lm_eval import offline, task_manager

            with offline():
                manager = task_manager(tasks, args.include_path)
        source, model_config = resolve_model(args.model, args.revision)
        place = placement_from_args(args)
        check_memory_from_args(args, place, model_config)
        t0 = time.perf_counter()
        model, tokenizer, model_id = load_model_and_tokenizer(
            source, revision=args.revision, **place.load_kwargs()
        )
        model.eval()
        out: dict = {"model": model_id, "perplexity": None, "tasks": {}}
        if data_source is not None:
            from optimum_blockprune.output.evaluation import eval_data, perplexity

            data = eval_data(tokenizer, data_source, args.text_field, args.seq_len, args.max_samples)
            value = perplexity(model, data, args.batch_size, progress=True)
            out["perplexity"] = {
                "value": value,
                "data": data_source,
                "samples": len(data),
                "tokens": data.num_tokens,
            }
        if tasks:
            from optimum_blockprune.output.lm_eval import run_tasks

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
            from optimum_blockprune.data.atomic import write_json_atomic

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
