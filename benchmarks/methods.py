"""Every selection method on SmolLM2-135M: held-out perplexity and cost, and energy vs true loss.

For M = 2, 4, 6, 8, 10 whole layers and for sublayer budgets (attention / MLP branches): the
held-out perplexity of the blocks each method removes (this project's default ``energy`` method
and the peers' baselines of ``optimum_blockprune.baselines``), with the method's cost: forward
passes over the calibration set (dense-forward equivalents of decoder work; cached results are
counted as recomputed), backward passes and seconds. Greedy baselines run once to the largest
budget: their first k picks are their answer for k (and the cost so far is its cost).

Then, for each M, the Spearman rank correlation between the energies and the true calibration
loss over random configurations of M layers: ``secant`` (the default ``recentred`` energy's first
round), ``additive``, and the gradient energies ``fisher`` and ``taylor``.

Writes the JSON after every method, so an interrupted run still leaves its rows.

    python benchmarks/methods.py [--ms 2,4,6,8,10] [--sublayers 4,8,12] [--num-samples 8] [--random 100]
    python benchmarks/methods.py --table benchmarks/results/methods.json   # reprint a result
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
from optimum_blockprune.selection.baselines import BASELINES, random_configurations, select_baseline

BATCH = 8
GREEDY = ("shortgpt-iterative", "sleb", "blockpruner")
#: Cheap methods first, then the expensive loss-based ones, so a partial run has the most rows.
ORDER = (
    "last",
    "random",
    "shortgpt",
    "shortgpt-iterative",
    "angular",
    "taylor",
    "energy",
    "sleb",
    "blockpruner",
    "evopress",
)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


class HeldOut:
    """Held-out perplexity of configurations (block names of any granularity), memoised, via zero gates."""

    def __init__(self, pruner: BlockPruner, samples: int, seq_len: int) -> None:
        self.pruner = pruner
        self.data = heldout_data(pruner.tokenizer, samples, seq_len)
        self.blocks = pruner.blocks("mixed")
        self.names = [b.name for b in self.blocks]
        self.memo: dict[frozenset[str], float] = {}

    def __call__(self, removed: list[str]) -> float:
        key = frozenset(removed)
        if key not in self.memo:
            with Gates(self.pruner.model, self.pruner.adapter, self.blocks) as gates:
                gates.values = (
                    removal_gates(len(self.blocks), [self.names.index(n) for n in key]) if key else None
                )
                self.memo[key] = perplexity(self.pruner.model, self.data)
        return self.memo[key]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ms", default="2,4,6,8,10", help="layer counts")
    parser.add_argument("--sublayers", default="4,8,12", help="sublayer (attention / MLP branch) counts")
    parser.add_argument("--methods", default=",".join(ORDER))
    parser.add_argument("--num-samples", type=int, default=8, help="calibration blocks")
    parser.add_argument("--seq-len", type=int, default=128, help="tokens per calibration block")
    parser.add_argument("--heldout-samples", type=int, default=16)
    parser.add_argument("--heldout-seq-len", type=int, default=128)
    parser.add_argument("--random", type=int, default=100, help="random configurations per M (Spearman)")
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument(
        "--evopress-generations", type=int, default=None, help="evopress budget (default: k(n-k)/1.5)"
    )
    parser.add_argument("--no-spearman", action="store_true")
    parser.add_argument("--out", default="benchmarks/results/methods.json")
    parser.add_argument("--table", default=None, help="only print the tables of an earlier JSON result")
    parser.add_argument(
        "--merge",
        default=None,
        help="add the rows and correlations of this results file (a part run separately, e.g. with "
        "--ms '' --sublayers 4) to --out, print the table and exit",
    )
    args = parser.parse_args()
    if args.table:
        print_table(json.loads(Path(args.table).read_text()))
        return
    if args.merge:
        merge(Path(args.out), Path(args.merge))
        return
    torch.manual_seed(0)
    methods = [m for m in ORDER if m in args.methods.split(",")]
    budgets = {
        "layer": [int(x) for x in args.ms.split(",") if x],
        "sublayer": [int(x) for x in args.sublayers.split(",") if x],
    }

    t_start = time.perf_counter()
    pruner = BlockPruner.from_pretrained()
    base = {
        "num_samples": args.num_samples,
        "seq_len": args.seq_len,
        "top_k": args.top_k,
        "batch_size": BATCH,
    }
    data = pruner.calibration(BlockPruneConfig(remove=1, **base))
    heldout = HeldOut(pruner, args.heldout_samples, args.heldout_seq_len)
    results: dict = {
        "benchmark": "methods",
        "model": "SmolLM2-135M-Instruct (demo, 30 layers)",
        "settings": vars(args),
        "calibration_tokens": data.num_tokens,
        "heldout_tokens": heldout.data.num_tokens,
        "dense_perplexity": heldout([]),
        "threads": torch.get_num_threads(),
        "rows": [],
        "spearman": [],
    }
    out = Path(args.out)
    print(
        f"dense held-out perplexity {results['dense_perplexity']:.2f} ({heldout.data.num_tokens} tokens)",
        flush=True,
    )
    scorer = LossScorer(pruner.model, pruner.adapter, data, BATCH)
    kl_scorers: list[LossScorer] = []  # evopress's fitness, as in its paper: KL to the dense model

    def method_scorer(method: str) -> LossScorer:
        if method != "evopress":
            return scorer
        if not kl_scorers:
            kl_scorers.append(LossScorer(pruner.model, pruner.adapter, data, BATCH, objective="kl"))
        return kl_scorers[0]

    def save() -> None:
        results["seconds"] = round(time.perf_counter() - t_start, 1)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".json.partial")
        tmp.write_text(json.dumps(results, indent=2))
        tmp.replace(out)

    def record(method: str, granularity: str, removed: list[str], cost: dict) -> None:
        row = {
            "method": method,
            "granularity": granularity,
            "removed": len(removed),
            "perplexity": heldout(removed),
            "forward_passes": round(float(cost["forward_passes"]), 2),
            "backward_passes": int(cost["backward_passes"]),
            "seconds": round(float(cost["seconds"]), 2),
            "blocks": sorted(removed, key=lambda n: [int(p) if p.isdigit() else p for p in n.split(".")]),
        }
        results["rows"].append(row)
        print(
            f"  {granularity:<8} {method:<20} {len(removed):>3}  ppl {row['perplexity']:10.2f}  "
            f"{row['forward_passes']:7.1f} fwd {row['backward_passes']} bwd {row['seconds']:7.1f} s  {' '.join(row['blocks'])}",
            flush=True,
        )

    def run_methods(granularity: str) -> None:
        for method in methods:
            if method != "energy" and granularity not in BASELINES[method].granularities:
                continue
            if method == "energy":
                for m in budgets[granularity]:
                    config = BlockPruneConfig(remove=m, granularity=granularity, **base)
                    selection = pruner.select(config, scorer=scorer)
                    record(method, granularity, selection.removed, selection.cost)
            elif method in GREEDY:
                top = max(budgets[granularity])
                choice = select_baseline(
                    method, pruner.model, pruner.adapter, data, top, granularity=granularity, scorer=scorer
                )
                for step in choice.steps:
                    if len(step["removed"]) in budgets[granularity]:
                        record(method, granularity, step["removed"], step)
            else:
                for m in budgets[granularity]:
                    choice = select_baseline(
                        method,
                        pruner.model,
                        pruner.adapter,
                        data,
                        m,
                        granularity=granularity,
                        scorer=method_scorer(method),
                        generations=args.evopress_generations,
                    )
                    record(method, granularity, choice.removed, choice.cost.as_dict())
            save()

    if budgets["layer"]:
        run_methods("layer")
    if not args.no_spearman and budgets["layer"]:
        results["spearman"] = correlations(pruner, scorer, data, budgets["layer"], args.random)
        save()
    if budgets["sublayer"]:
        run_methods("sublayer")
    save()
    print_table(results)
    print(f"wrote {out} ({results['seconds']:.0f} s)")


def merge(out: Path, part: Path) -> None:
    """Add the rows / correlations of ``part`` to ``out`` (rows of the same method, granularity and
    size are replaced), keeping each part's settings."""
    results, extra = json.loads(out.read_text()), json.loads(part.read_text())
    keys = {(r["method"], r["granularity"], r["removed"]) for r in extra["rows"]}
    results["rows"] = [
        r for r in results["rows"] if (r["method"], r["granularity"], r["removed"]) not in keys
    ]
    results["rows"] += extra["rows"]
    results["spearman"] = results["spearman"] or extra["spearman"]
    results.setdefault("parts", []).append({"settings": extra["settings"], "seconds": extra.get("seconds")})
    out.write_text(json.dumps(results, indent=2))
    print_table(results)


def correlations(pruner: BlockPruner, scorer: LossScorer, data, ms: list[int], count: int) -> list[dict]:
    """Spearman(energy, true calibration loss) over ``count`` random configurations of each M."""
    blocks = pruner.blocks("layer")
    n = len(blocks)
    scorer.set_base([])
    A, _ = gate_gradients(pruner.model, pruner.adapter, blocks, data, BATCH)
    energies = {
        "secant": loss_energy("secant", scorer, blocks),
        "additive": loss_energy("additive", scorer, blocks),
        "fisher": gradient_energy("fisher", A, blocks),
        "taylor": gradient_energy("taylor", A, blocks),
    }
    rows = []
    for m in ms:
        configs = random_configurations(n, m, count, seed=m)
        X = np.zeros((len(configs), n))
        for r, c in enumerate(configs):
            X[r, c] = 1
        true = np.array([scorer.loss(c) for c in configs])
        for name, energy in energies.items():
            rho = spearman(energy.energies(X), true)
            rows.append({"M": m, "energy": name, "rho": rho, "configs": len(configs)})
        print(
            f"  spearman M={m}: " + ", ".join(f"{r['energy']} {r['rho']:.3f}" for r in rows if r["M"] == m),
            flush=True,
        )
    return rows


def _ppl(value: float) -> str:
    return f"{value:.2f}" if value < 1e5 else f"{value:.1e}"


def print_table(results: dict) -> None:
    """The results as markdown tables: perplexity per budget with the cost at the largest, then
    the Spearman correlations."""
    print(
        f"\nheld-out perplexity (dense {results['dense_perplexity']:.2f}, {results['heldout_tokens']} tokens; "
        f"calibration {results['calibration_tokens']} tokens)"
    )
    for granularity in ("layer", "sublayer"):
        rows = [r for r in results["rows"] if r["granularity"] == granularity]
        if not rows:
            continue
        sizes = sorted({r["removed"] for r in rows})
        print(f"\n| method ({granularity}s removed) | " + " | ".join(map(str, sizes)), end="")
        print(f" | cost at {sizes[-1]}: fwd / bwd / s |")
        print("|---" * (len(sizes) + 2) + "|")
        for method in dict.fromkeys(r["method"] for r in rows):
            mine = {r["removed"]: r for r in rows if r["method"] == method}
            best = {s: min(r["perplexity"] for r in rows if r["removed"] == s) for s in sizes}
            cells = [
                ("**{}**" if mine[s]["perplexity"] == best[s] else "{}").format(_ppl(mine[s]["perplexity"]))
                if s in mine
                else ""
                for s in sizes
            ]
            last = mine[max(mine)]
            cost = f"{last['forward_passes']:.1f} / {last['backward_passes']} / {last['seconds']:.0f}"
            print(f"| {method} | " + " | ".join(cells) + f" | {cost} |")
    if results["spearman"]:
        ms = sorted({r["M"] for r in results["spearman"]})
        print("\nSpearman(energy, true calibration loss) over random configurations of M layers\n")
        print("| energy | " + " | ".join(f"M={m}" for m in ms) + " |")
        print("|---" * (len(ms) + 1) + "|")
        for energy in dict.fromkeys(r["energy"] for r in results["spearman"]):
            vals = {r["M"]: r["rho"] for r in results["spearman"] if r["energy"] == energy}
            print(f"| {energy} | " + " | ".join(f"{vals[m]:.3f}" for m in ms) + " |")


if __name__ == "__main__":
    main()
