"""Speed of pruned SmolLM2-135M: what the cost table predicts against what the pruned model measures.

Two modes, both on the bundled demo model on this machine's CPU:

* ``fixed``: fixed removals per granularity (whole layers, single branches, both). The cost table
  (``measure_costs`` at mixed granularity, so it holds layers and branches) predicts each one's
  prefill and decode speedup; a physically pruned copy is timed against the dense model in turns.
* ``target``: ``BlockPruner.select`` with ``--target-speedup`` S for each S and phase (it times
  its own cost table, as ``prune`` does); the chosen blocks are removed from a copy and timed.

The measured speedup is the median of paired ratios dense / pruned (each timing the mean of
``--steps`` forwards), so a change of machine load between runs hits both sides. "vs ideal" is
measured / predicted (fixed) or measured / requested (target); the acceptance target is >= 0.95.

    python benchmarks/speed.py            # the real measurement (see benchmarks/README.md)
    python benchmarks/speed.py --quick    # a small run: decode only, 1.3x, short timings, 1 thread
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from optimum_blockprune.config import BlockPruneConfig
from optimum_blockprune.model.latency import measure_costs, time_model
from optimum_blockprune.pruner import BlockPruner

PHASES = ("prefill", "decode")
#: Fixed removals (SmolLM2 has 30 layers): about a fifth of the decoder work at each granularity.
FIXED = {
    "layer": [f"layers.{i}" for i in range(13, 19)],
    "sublayer": [f"layers.{i}.attn" for i in range(8, 18)] + [f"layers.{i}.mlp" for i in range(19, 23)],
    "mixed": [f"layers.{i}" for i in (13, 14, 15)]
    + [f"layers.{i}.attn" for i in (5, 7, 9, 11)]
    + [f"layers.{i}.mlp" for i in (20, 22)],
}
#: Settings left out: (the real measurement, ``--quick``). Quick: one thread, as a busy shared
#: machine makes a second thread wait on the first.
DEFAULTS = {
    "phases": ("prefill,decode", "decode"),
    "speedups": ("1.2,1.3,1.5", "1.3"),
    "context": (128, 64),
    "repeats": (7, 5),
    "energy": ("recentred", "additive"),
    "num_samples": (8, 4),
    "seq_len": (128, 64),
    "threads": (None, 1),
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a small run (decode, 1.3x, short timings)")
    parser.add_argument("--modes", default="fixed,target")
    parser.add_argument("--phases", default=None, help="default: prefill,decode (--quick: decode)")
    parser.add_argument("--speedups", default=None, help="default: 1.2,1.3,1.5 (--quick: 1.3)")
    parser.add_argument("--granularity", default="layer", help="granularity of the target selections")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument(
        "--context", type=int, default=None, help="prefill / KV-cache tokens (128; --quick: 64)"
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="paired timings per measurement (7; --quick: 5)"
    )
    parser.add_argument("--steps", type=int, default=8, help="forwards averaged in one timing")
    parser.add_argument(
        "--energy", default=None, help="energy of the target selections (recentred; --quick: additive)"
    )
    parser.add_argument("--num-samples", type=int, default=None, help="calibration samples (8; --quick: 4)")
    parser.add_argument(
        "--seq-len", type=int, default=None, help="calibration tokens per sample (128; --quick: 64)"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's; --quick: 1)"
    )
    parser.add_argument("--out", default="benchmarks/results/speed.json")
    args = parser.parse_args()
    for name, values in DEFAULTS.items():  # (full run, --quick) where the flag is not given
        if getattr(args, name) is None:
            setattr(args, name, values[args.quick])
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    t_start = time.perf_counter()
    pruner = BlockPruner.from_pretrained()
    phases = args.phases.split(",")
    results = {
        "settings": vars(args),
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()},
        "rows": [],
    }
    rows = []
    if "fixed" in args.modes.split(","):
        every = pruner.blocks("mixed")
        for phase in phases:
            table = measure_costs(
                pruner.model,
                pruner.adapter,
                every,
                phase,
                args.batch,
                args.context,
                repeats=args.repeats,
                steps=args.steps,
            )
            results.setdefault("cost_tables", {})[phase] = table.to_dict()
            print(
                f"{phase} cost table: dense {table.dense * 1e3:.2f} ms, rest {table.rest * 1e3:.2f} ms",
                flush=True,
            )
            for entry in table.classes:
                print(
                    f"    {entry['kind']:>5} ({entry['num_params']:,} params): {entry['seconds_per_block'] * 1e3:.3f} ms"
                )
            for granularity, removed in FIXED.items():
                row = measure(pruner, removed, phase, args) | {
                    "mode": "fixed",
                    "granularity": granularity,
                    "requested": None,
                    "predicted": table.speedup(removed),
                }
                rows.append(report(row, results, args.out))
    if "target" in args.modes.split(","):
        for phase in phases:
            for speedup in [float(s) for s in args.speedups.split(",")]:
                config = BlockPruneConfig(
                    target_speedup=speedup,
                    latency_phase=phase,
                    latency_batch=args.batch,
                    latency_context=args.context,
                    granularity=args.granularity,
                    energy=args.energy,
                    num_samples=args.num_samples,
                    seq_len=args.seq_len,
                )
                t0 = time.perf_counter()
                selection = pruner.select(config)
                latency = selection.cost["latency"]
                row = measure(pruner, selection.removed, phase, args) | {
                    "mode": "target",
                    "granularity": args.granularity,
                    "requested": speedup,
                    "predicted": latency["predicted_speedup"],
                    "selection_seconds": time.perf_counter() - t0,
                    "cost_table": latency,
                }
                rows.append(report(row, results, args.out))
    results["seconds"] = time.perf_counter() - t_start
    write(args.out, results)
    print()
    print(table_text(rows))
    print(f"{results['seconds'] / 60:.1f} min; written to {args.out}")


def measure(pruner: BlockPruner, removed: list[str], phase: str, args) -> dict:
    """Dense and pruned (a physically pruned copy) timed in turns: tokens/s and the median ratio."""
    pruned = copy.deepcopy(pruner.model)
    pruner.adapter.remove_blocks(pruned, removed)
    tokens = args.batch * (args.context if phase == "prefill" else 1)

    def timed(model) -> float:
        return time_model(model, phase, args.batch, args.context, args.steps)

    timed(pruner.model), timed(pruned)  # warm-up
    dense, thin = [], []
    for _ in range(args.repeats):
        dense.append(timed(pruner.model))
        thin.append(timed(pruned))
    return {
        "phase": phase,
        "removed": removed,
        "dense_tokens_per_s": tokens / statistics.median(dense),
        "pruned_tokens_per_s": tokens / statistics.median(thin),
        "measured": statistics.median(d / p for d, p in zip(dense, thin, strict=True)),
    }


def report(row: dict, results: dict, out: str) -> dict:
    """Add the ratio to the ideal, print the row, keep what is measured so far."""
    ideal = row["requested"] or row["predicted"]
    row["vs_ideal"] = row["measured"] / ideal
    results["rows"].append(row)
    write(out, results)
    print(table_text([row], header=False), flush=True)
    return row


def table_text(rows: list[dict], header: bool = True) -> str:
    lines = (
        [
            "| mode | granularity | blocks | phase | requested | predicted | measured | vs ideal "
            "| dense tok/s | pruned tok/s |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        if header
        else []
    )
    for r in rows:
        requested = f"{r['requested']:.2f}x" if r["requested"] else "-"
        lines.append(
            f"| {r['mode']} | {r['granularity']} | {len(r['removed'])} | {r['phase']} | {requested} "
            f"| {r['predicted']:.3f}x | {r['measured']:.3f}x | {r['vs_ideal']:.3f} "
            f"| {r['dense_tokens_per_s']:.1f} | {r['pruned_tokens_per_s']:.1f} |"
        )
    return "\n".join(lines)


def write(path: str, results: dict) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
