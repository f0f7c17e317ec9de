"""Selection quality on SmolLM2-135M: which layers each method removes, and what it costs.

For each number M of removed layers: held-out perplexity of the configuration picked by every
energy variant (ground state alone, and best of its top-K by real calibration loss), ShortGPT
block influence, and the best / median of random configurations; each energy's Spearman rank
correlation with the true calibration loss over the random configurations; each method's cost
in forward-pass equivalents and backward passes. Prints a table and writes JSON.

    python benchmarks/selection.py [--ms 4,6,8,2] [--num-samples 32] [--random 20]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from optimum_blockprune.config import BlockPruneConfig
from optimum_blockprune.energy.gradients import gate_gradients
from optimum_blockprune.energy.scoring import LossScorer
from optimum_blockprune.energy.variants import gradient_energy, loss_energy
from optimum_blockprune.model.gates import Gates, removal_gates
from optimum_blockprune.output.evaluation import heldout_data, perplexity
from optimum_blockprune.pruner import BlockPruner
from optimum_blockprune.selection.baselines import block_influence, lowest, random_configurations
from optimum_blockprune.solvers import solution_names, solve

ONE_SHOT = ("fisher", "taylor", "additive", "secant")


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


class HeldOut:
    """Held-out perplexity of layer-removal configurations, memoised, via zero gates."""

    def __init__(self, pruner: BlockPruner, samples: int) -> None:
        self.pruner, self.data = pruner, heldout_data(pruner.tokenizer, samples)
        self.blocks = pruner.blocks()
        self.memo: dict[tuple[int, ...], float] = {}

    def __call__(self, removed: list[int]) -> float:
        key = tuple(sorted(removed))
        if key not in self.memo:
            with Gates(self.pruner.model, self.pruner.adapter, self.blocks) as gates:
                gates.values = removal_gates(len(self.blocks), key) if key else None
                self.memo[key] = perplexity(self.pruner.model, self.data)
        return self.memo[key]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ms", default="4,6,8,2")
    parser.add_argument("--num-samples", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--heldout-samples", type=int, default=32)
    parser.add_argument("--random", type=int, default=20)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--out", default="benchmarks/results/selection.json")
    parser.add_argument(
        "--only", default=None, help="re-measure just this method and merge it into the existing --out file"
    )
    args = parser.parse_args()
    torch.manual_seed(0)

    if args.only:
        remeasure(args)
        return
    pruner = BlockPruner.from_pretrained()
    config = BlockPruneConfig(remove=1, num_samples=args.num_samples, seq_len=args.seq_len, top_k=args.top_k)
    blocks = pruner.blocks()
    n = len(blocks)
    data = pruner.calibration(config)
    heldout = HeldOut(pruner, args.heldout_samples)
    results: dict = {"settings": vars(args), "calibration_tokens": data.num_tokens, "by_m": {}}
    t0 = time.perf_counter()
    results["dense_ppl"] = heldout([])
    print(
        f"dense held-out perplexity {results['dense_ppl']:.2f} ({heldout.data.num_tokens} tokens)", flush=True
    )

    scorer = LossScorer(pruner.model, pruner.adapter, data, config.batch_size)
    per_forward = scorer.forward_equivalents
    A, _ = gate_gradients(pruner.model, pruner.adapter, blocks, data, config.batch_size)
    secant = loss_energy("secant", scorer, blocks)
    scan_cost = scorer.forward_equivalents - per_forward
    energies = {
        "fisher": gradient_energy("fisher", A, blocks),
        "taylor": gradient_energy("taylor", A, blocks),
        "additive": loss_energy("additive", scorer, blocks),
        "secant": secant,
    }
    base_cost = {
        "fisher": (1.0, 1),
        "taylor": (1.0, 1),
        "additive": (1.0 + scan_cost, 0),
        "secant": (1.0 + scan_cost, 0),
    }
    bi = block_influence(pruner.model, pruner.adapter, data, config.batch_size)
    print(f"analysis done in {time.perf_counter() - t0:.0f} s", flush=True)

    for m in [int(x) for x in args.ms.split(",")]:
        rows: dict[str, dict] = {}

        def record(name: str, removed: list[int], fwd: float, bwd: int, m=m, rows=rows, **extra) -> None:
            rows[name] = {
                "removed": [blocks[i].name for i in sorted(removed)],
                "ppl": heldout(removed),
                "calibration_loss": scorer.loss([blocks[i].layer for i in removed]),
                "forward_equivalents": round(fwd, 2),
                "backward_passes": bwd,
                **extra,
            }
            print(
                f"  M={m} {name:<22} ppl {rows[name]['ppl']:8.2f}  cost {fwd:6.1f} fwd {bwd} bwd  {rows[name]['removed']}",
                flush=True,
            )

        for variant in ONE_SHOT:
            fwd, bwd = base_cost[variant]
            samples = solve(energies[variant], m, top_k=args.top_k)
            candidates = [[int(x.split(".")[1]) for x in c] for c in solution_names(samples)]
            record(f"{variant}", candidates[0], fwd, bwd)
            before = scorer.forward_equivalents
            losses = [scorer.loss(c) for c in candidates]
            rerank_cost = scorer.forward_equivalents - before
            record(f"{variant}+rerank", candidates[int(np.argmin(losses))], fwd + rerank_cost, bwd)
        for top_k, name in ((1, "recentred"), (args.top_k, "recentred+rerank")):
            cfg = BlockPruneConfig(remove=m, num_samples=args.num_samples, seq_len=args.seq_len, top_k=top_k)
            selection = pruner.select(cfg, scorer=scorer)
            removed = [int(x.split(".")[1]) for x in selection.removed]
            record(name, removed, selection.cost["forward_equivalents"], 0, rounds=len(selection.rounds))
        record("block_influence", lowest(bi, m), 1.0, 0)
        record("additive_criterion", lowest(energies["additive"].fields, m), base_cost["additive"][0], 0)
        randoms = random_configurations(n, m, args.random, seed=m)
        ppls = [heldout(c) for c in randoms]
        cal = np.array([scorer.loss(c) for c in randoms])
        X = np.zeros((len(randoms), n))
        for r, c in enumerate(randoms):
            X[r, c] = 1
        corr = {v: spearman(energies[v].energies(X), cal) for v in ONE_SHOT}
        results["by_m"][m] = {
            "methods": rows,
            "random": {"best_ppl": float(min(ppls)), "median_ppl": float(np.median(ppls)), "ppls": ppls},
            "spearman_vs_calibration_loss": corr,
        }
        print(
            f"  M={m} random best {min(ppls):.2f} median {np.median(ppls):.2f}; spearman {json.dumps({k: round(v, 3) for k, v in corr.items()})}",
            flush=True,
        )
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2))

    print_table(results)
    results["seconds"] = time.perf_counter() - t0
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


def remeasure(args: argparse.Namespace) -> None:
    """Re-run one re-centring method (after a change to it) and merge it into the saved results."""
    top_k = {"recentred": 1, "recentred+rerank": args.top_k}.get(args.only)
    if top_k is None:
        raise SystemExit("--only supports recentred and recentred+rerank")
    results = json.loads(Path(args.out).read_text())
    pruner = BlockPruner.from_pretrained()
    heldout = HeldOut(pruner, results["settings"]["heldout_samples"])
    config = BlockPruneConfig(remove=1, num_samples=args.num_samples, seq_len=args.seq_len)
    scorer = LossScorer(pruner.model, pruner.adapter, pruner.calibration(config), config.batch_size)
    for m in [int(x) for x in args.ms.split(",")]:
        cfg = BlockPruneConfig(remove=m, num_samples=args.num_samples, seq_len=args.seq_len, top_k=top_k)
        selection = pruner.select(cfg, scorer=scorer)
        removed = [int(x.split(".")[1]) for x in selection.removed]
        row = {
            "removed": selection.removed,
            "ppl": heldout(removed),
            "calibration_loss": selection.pruned_loss,
            "forward_equivalents": selection.cost["forward_equivalents"],
            "backward_passes": 0,
            "rounds": len(selection.rounds),
        }
        results["by_m"][str(m)]["methods"][args.only] = row
        print(
            f"  M={m} {args.only:<22} ppl {row['ppl']:8.2f}  cost {row['forward_equivalents']:6.1f} fwd  {row['removed']}",
            flush=True,
        )
        Path(args.out).write_text(json.dumps(results, indent=2))
    print_table(results)


def print_table(results: dict) -> None:
    ms = sorted(results["by_m"], key=int)
    names = list(next(iter(results["by_m"].values()))["methods"])
    print(
        f"\nheld-out perplexity (dense {results['dense_ppl']:.2f}); cost = forward-pass equivalents / backward passes"
    )
    print(
        f"{'method':<22}"
        + "".join(f"{'M=' + str(m):>12}" for m in ms)
        + f"{'cost (M=' + str(ms[-1]) + ')':>20}"
    )
    for name in names:
        cells = "".join(f"{results['by_m'][m]['methods'][name]['ppl']:>12.2f}" for m in ms)
        last = results["by_m"][ms[-1]]["methods"][name]
        print(f"{name:<22}{cells}{last['forward_equivalents']:>14.1f} / {last['backward_passes']}")
    for key, label in (("best_ppl", "random (best of N)"), ("median_ppl", "random (median)")):
        print(f"{label:<22}" + "".join(f"{results['by_m'][m]['random'][key]:>12.2f}" for m in ms))
    print("\nSpearman(energy, calibration loss) over the random configurations")
    for v in ONE_SHOT:
        print(
            f"{v:<22}"
            + "".join(f"{results['by_m'][m]['spearman_vs_calibration_loss'][v]:>12.3f}" for m in ms)
        )


if __name__ == "__main__":
    main()
