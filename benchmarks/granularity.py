"""Granularity on SmolLM2-135M: whole layers vs single branches vs both, at equal parameter budgets.

For each budget (a fraction of the model's parameters that the removed blocks must hold at
least) and each granularity, the project's default selection (``BlockPruner.select`` with the
given energy) picks the blocks; the table gives the parameters actually removed, the held-out
perplexity of the result (gates at zero: exactly the physically pruned model's loss), the
calibration loss, and the selection cost. One loss scorer is shared by every run, so work
that two runs both ask for is done once (the cost column still counts it for each).

    python benchmarks/granularity.py [--budgets 0.1,0.2,0.3] [--num-samples 16] [--energy recentred]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from optimum_blockprune.config import ENERGY_VARIANTS, BlockPruneConfig
from optimum_blockprune.energy.scoring import LossScorer
from optimum_blockprune.model.adapters.base import count_params
from optimum_blockprune.model.gates import Gates, removal_gates
from optimum_blockprune.output.evaluation import heldout_data, perplexity
from optimum_blockprune.pruner import BlockPruner

GRANULARITIES = ("layer", "sublayer", "mixed")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--budgets", default="0.1,0.2,0.3")
    parser.add_argument("--granularities", default=",".join(GRANULARITIES))
    parser.add_argument("--energy", default=ENERGY_VARIANTS[0], choices=ENERGY_VARIANTS)
    parser.add_argument("--num-samples", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--heldout-samples", type=int, default=32)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--out", default="benchmarks/results/granularity.json")
    args = parser.parse_args()
    torch.manual_seed(0)

    pruner = BlockPruner.from_pretrained()
    model_params = count_params(pruner.model)
    every = pruner.blocks("mixed")  # every layer and branch, so any selection can be gated
    params = {b.name: b.num_params for b in every}
    heldout = heldout_data(pruner.tokenizer, args.heldout_samples)

    def heldout_ppl(removed: list[str]) -> float:
        names = [b.name for b in every]
        with Gates(pruner.model, pruner.adapter, every) as gates:
            gates.values = removal_gates(len(every), [names.index(n) for n in removed]) if removed else None
            return perplexity(pruner.model, heldout)

    base = BlockPruneConfig(remove=1, num_samples=args.num_samples, seq_len=args.seq_len)
    scorer = LossScorer(pruner.model, pruner.adapter, pruner.calibration(base), base.batch_size)
    dense = heldout_ppl([])
    results = {
        "settings": vars(args),
        "model_params": model_params,
        "dense_ppl": dense,
        "dense_loss": scorer.loss(),
        "runs": [],
    }
    print(f"dense held-out perplexity {dense:.2f}; model parameters {model_params:,}", flush=True)
    header = f"{'budget':>6} {'granularity':>11} {'blocks':>6} {'removed':>9} {'ppl':>8} {'vs layer':>8} {'cal loss':>8} {'fwd eq':>7} {'s':>6}"
    rows = [header]
    for budget in [float(b) for b in args.budgets.split(",")]:
        layer_ppl = None
        for granularity in args.granularities.split(","):
            config = BlockPruneConfig(
                param_ratio=budget,
                granularity=granularity,
                energy=args.energy,
                num_samples=args.num_samples,
                seq_len=args.seq_len,
                top_k=args.top_k,
            )
            t0 = time.perf_counter()
            selection = pruner.select(config, scorer=scorer)
            seconds = time.perf_counter() - t0
            ppl = heldout_ppl(selection.removed)
            layer_ppl = ppl if granularity == "layer" else layer_ppl
            removed_params = sum(params[n] for n in selection.removed)
            run = {
                "budget": budget,
                "granularity": granularity,
                "removed": selection.removed,
                "removed_params": removed_params,
                "removed_fraction": removed_params / model_params,
                "heldout_ppl": ppl,
                "ppl_vs_layer": None if layer_ppl is None else ppl / layer_ppl,
                "calibration_loss": selection.pruned_loss,
                "cost": selection.cost,
                "seconds": seconds,
            }
            results["runs"].append(run)
            ratio = f"{run['ppl_vs_layer']:.3f}" if run["ppl_vs_layer"] else "-"
            rows.append(
                f"{budget:>6.0%} {granularity:>11} {len(selection.removed):>6} {run['removed_fraction']:>9.1%} "
                f"{ppl:>8.2f} {ratio:>8} {selection.pruned_loss:>8.4f} {selection.cost['forward_equivalents']:>7.1f} {seconds:>6.0f}"
            )
            print(rows[-1], flush=True)
            print("    removed:", " ".join(selection.removed), flush=True)
            write(args.out, results)  # after every run, so a long run keeps what it measured
    print("\n".join(rows))
    print(f"written to {args.out}")


def write(path: str, results: dict) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
