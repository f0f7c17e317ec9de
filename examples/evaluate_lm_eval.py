"""Evaluate a (pruned) model: held-out perplexity and lm-evaluation-harness tasks, offline.

    python examples/evaluate_lm_eval.py --model pruned/ --tasks blockprune_mc \
        --include-path examples/lm_eval_tasks

Needs the ``eval`` extra (``pip install 'optimum-blockprune[eval]'``). ``optimum-cli blockprune
eval`` does the same from the command line.
"""

from __future__ import annotations

import argparse

from transformers import AutoTokenizer

from optimum_blockprune import load_pruned
from optimum_blockprune.output.lm_eval import offline, run_tasks, task_manager


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model folder (pruned or not)")
    parser.add_argument("--tasks", default="blockprune_mc", help="comma-separated lm-eval task names")
    parser.add_argument("--include-path", action="append", default=[], help="folder of task YAMLs")
    parser.add_argument("--limit", type=int, default=None, help="questions per task")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()

    model = load_pruned(args.model).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    with offline():
        manager = task_manager(tasks, args.include_path)  # unknown tasks fail here
        results = run_tasks(
            model,
            tokenizer,
            tasks,
            args.include_path,
            batch_size=args.batch_size,
            limit=args.limit,
            manager=manager,
        )
    for task, metrics in results.items():
        print(
            task, " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
        )


if __name__ == "__main__":
    main()
