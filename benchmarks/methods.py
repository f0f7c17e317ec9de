"""Every selection method on SmolLM2-135M at 10-50 % budgets: held-out perplexity with a
bootstrap confidence interval, a local multiple-choice task, and what choosing cost.

Budgets are a share of the 30 decoder layers (``layer`` granularity: 10 % = 3 layers) or of the
decoder layers' parameters (``sublayer`` and ``mixed``: the removed blocks hold at least that
share). Every method chooses on the same calibration set (``--num-samples`` x ``--seq-len``
tokens of the demo calibration split) and is judged on ``--heldout-samples`` x 128 tokens of the
held-out split (disjoint documents: every tenth article) and on the 50 questions of the local
``blockprune_mc`` task (accuracy, log-likelihood of each answer, 0-shot).

Each cell's 95 % interval is a bootstrap over the held-out samples (perplexity) or the questions
(accuracy); a method whose interval overlaps the best one's is reported as tied with it.

Cost: forward passes over the calibration set (dense-forward equivalents of decoder work, the
scorer's cached prefixes credited, a result asked for twice counted twice), backward passes and
seconds. Each method run gets its own loss scorer, so seconds are comparable. Greedy methods
(``shortgpt-iterative``, ``sleb``, ``blockpruner``) run once to the largest budget: their first
picks that reach a budget are their answer for it, at the cost so far. ``evopress`` runs on KL
to the dense model (its paper's fitness) for ``--evopress-generations`` generations per budget;
``evopress-paper`` the same at its script's ``k (n - k) / 1.5`` generations.
``energy`` is the default; ``energy-certify`` the same with ``--search certify`` (the swap search
runs until no single swap helps); ``energy-kl`` the default on ``--objective kl``.

Writes the JSON after every method, so an interrupted run still leaves its rows.

    python benchmarks/methods.py [--granularities layer] [--budgets 10,20,30,40,50] [--methods ...]
    python benchmarks/methods.py --granularities sublayer,mixed --budgets 10,20 --out part.json
    python benchmarks/methods.py --merge part.json        # add a part's rows to --out
    python benchmarks/methods.py --table benchmarks/results/methods.json   # reprint a result
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from optimum_blockprune.config import BlockPruneConfig
from optimum_blockprune.energy.scoring import LossScorer
from optimum_blockprune.model.gates import Gates, removal_gates
from optimum_blockprune.output.evaluation import heldout_data
from optimum_blockprune.pruner import BlockPruner
from optimum_blockprune.selection.baselines import select_baseline
from optimum_blockprune.selection.rules import Rules

BATCH = 8
GREEDY = ("shortgpt-iterative", "sleb", "blockpruner")
#: Per granularity, the methods compared (cheap first, so a partial run has the most rows).
METHODS = {
    "layer": (
        "shortgpt",
        "shortgpt-iterative",
        "angular",
        "energy",
        "energy-certify",
        "energy-kl",
        "sleb",
        "evopress",
        "evopress-paper",
    ),
    "sublayer": (
        "shortgpt",
        "shortgpt-iterative",
        "energy",
        "energy-certify",
        "blockpruner",
        "evopress",
        "evopress-paper",
    ),
    "mixed": ("shortgpt", "shortgpt-iterative", "energy", "energy-certify"),
}
QUESTIONS = Path(__file__).parents[1] / "examples" / "lm_eval_tasks" / "blockprune_mc" / "questions.jsonl"
LEVEL = 0.95


def bootstrap(values: np.ndarray, stat, resamples: int, seed: int = 0) -> tuple[float, float]:
    """The ``LEVEL`` percentile interval of ``stat`` over resamples of ``values`` (rows)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), (resamples, len(values)))
    stats = np.array([stat(values[i]) for i in idx])
    tail = (1 - LEVEL) / 2 * 100
    return float(np.percentile(stats, tail)), float(np.percentile(stats, 100 - tail))


class HeldOut:
    """Held-out per-sample losses of configurations (block names of any granularity): a loss scorer
    over the held-out samples, so each configuration runs from its first removed block."""

    def __init__(self, pruner: BlockPruner, samples: int, seq_len: int) -> None:
        self.data = heldout_data(pruner.tokenizer, samples, seq_len)
        self.scorer = LossScorer(pruner.model, pruner.adapter, self.data, BATCH)

    def __call__(self, removed: list[str], resamples: int) -> dict[str, float]:
        losses = self.scorer.configuration_losses(removed)
        low, high = bootstrap(losses, lambda x: math.exp(x.mean()), resamples)
        return {"perplexity": math.exp(losses.mean()), "ppl_low": low, "ppl_high": high}


class MultipleChoice:
    """0-shot accuracy on the local ``blockprune_mc`` questions: the answer whose tokens are most
    likely after ``Question: ...\\nAnswer:``, via zero gates: lm-evaluation-harness's ``acc`` (the
    tests check they agree), per question so that it can be bootstrapped."""

    def __init__(self, pruner: BlockPruner) -> None:
        self.pruner = pruner
        self.blocks = pruner.blocks("mixed")
        self.names = [b.name for b in self.blocks]
        rows = [json.loads(line) for line in QUESTIONS.read_text().splitlines() if line.strip()]
        self.answers = np.array([r["answer"] for r in rows])
        self.items: list[tuple[list[int], int]] = []  # (context + choice token ids, choice length)
        tok = pruner.tokenizer
        for r in rows:
            context = tok(f"Question: {r['question']}\nAnswer:")["input_ids"]
            for choice in r["choices"]:
                ids = tok(f"Question: {r['question']}\nAnswer: {choice}")["input_ids"]
                self.items.append((ids, len(ids) - len(context)))
        self.choices = len(rows[0]["choices"])

    @torch.no_grad()
    def correct(self, removed: list[str]) -> np.ndarray:
        """1 / 0 per question."""
        model, scores = self.pruner.model, []
        with Gates(model, self.pruner.adapter, self.blocks) as gates:
            off = [self.names.index(n) for n in removed]
            gates.values = removal_gates(len(self.blocks), off) if off else None
            for start in range(0, len(self.items), 40):
                chunk = self.items[start : start + 40]
                width = max(len(ids) for ids, _ in chunk)
                ids = torch.zeros(len(chunk), width, dtype=torch.long)
                mask = torch.zeros(len(chunk), width, dtype=torch.long)
                for r, (seq, _) in enumerate(chunk):
                    ids[r, : len(seq)], mask[r, : len(seq)] = torch.tensor(seq), 1
                logp = model(input_ids=ids, attention_mask=mask).logits.float().log_softmax(-1)
                for r, (seq, n) in enumerate(chunk):
                    targets = torch.tensor(seq[-n:])
                    scores.append(
                        float(logp[r, len(seq) - n - 1 : len(seq) - 1].gather(-1, targets[:, None]).sum())
                    )
        picks = np.asarray(scores).reshape(-1, self.choices).argmax(axis=1)
        return (picks == self.answers).astype(float)

    def __call__(self, removed: list[str], resamples: int) -> dict[str, float]:
        correct = self.correct(removed)
        low, high = bootstrap(correct, np.mean, resamples)
        return {"mc_accuracy": float(correct.mean()), "mc_low": low, "mc_high": high}


def decoder_params(pruner: BlockPruner) -> int:
    return sum(b.num_params for b in pruner.blocks("layer"))


def budget_amount(pruner: BlockPruner, granularity: str, percent: int) -> int:
    """Blocks to remove (``layer``) or parameters the removed blocks must hold (others)."""
    if granularity == "layer":
        return round(percent / 100 * len(pruner.blocks("layer")))
    return math.ceil(percent / 100 * decoder_params(pruner))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--granularities", default="layer", help="layer, sublayer, mixed (comma-separated)")
    parser.add_argument("--budgets", default="10,20,30,40,50", help="percent of the layers / parameters")
    parser.add_argument("--methods", default=None, help="a subset of each granularity's methods")
    parser.add_argument("--num-samples", type=int, default=8, help="calibration blocks")
    parser.add_argument("--seq-len", type=int, default=128, help="tokens per calibration block")
    parser.add_argument("--heldout-samples", type=int, default=128, help="held-out blocks of 128 tokens")
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument(
        "--evopress-generations",
        type=int,
        default=30,
        help="evopress generations per budget (evopress-paper: its script's k (n - k) / 1.5)",
    )
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples per cell")
    parser.add_argument("--out", default="benchmarks/results/methods.json")
    parser.add_argument("--table", default=None, help="only print the tables of an earlier JSON result")
    parser.add_argument("--merge", default=None, help="add this part's rows to --out, print the table, exit")
    args = parser.parse_args()
    if args.table:
        print_table(json.loads(Path(args.table).read_text()))
        return
    if args.merge:
        merge(Path(args.out), Path(args.merge))
        return
    torch.manual_seed(0)
    t_start = time.perf_counter()
    pruner = BlockPruner.from_pretrained()
    base = {
        "num_samples": args.num_samples,
        "seq_len": args.seq_len,
        "top_k": args.top_k,
        "batch_size": BATCH,
    }
    data = pruner.calibration(BlockPruneConfig(remove=1, **base))
    heldout = HeldOut(pruner, args.heldout_samples, 128)
    mc = MultipleChoice(pruner)
    total_params = sum(p.numel() for p in pruner.model.parameters())
    results: dict = {
        "benchmark": "methods",
        "model": "SmolLM2-135M-Instruct (demo, 30 layers)",
        "settings": vars(args),
        "calibration_tokens": data.num_tokens,
        "heldout_tokens": heldout.data.num_tokens,
        "questions": len(mc.answers),
        "threads": torch.get_num_threads(),
        "rows": [],
    }
    dense = {**heldout([], args.bootstrap), **mc([], args.bootstrap)}
    results["dense"] = dense
    results["dense_perplexity"] = dense["perplexity"]
    out = Path(args.out)
    print(
        f"dense: held-out perplexity {dense['perplexity']:.2f} [{dense['ppl_low']:.2f}, {dense['ppl_high']:.2f}] "
        f"({heldout.data.num_tokens} tokens), multiple choice {dense['mc_accuracy']:.2f}",
        flush=True,
    )

    def save() -> None:
        results["seconds"] = round(time.perf_counter() - t_start, 1)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".json.partial")
        tmp.write_text(json.dumps(results, indent=2))
        tmp.replace(out)

    def record(
        method: str, granularity: str, percent: int, removed: list[str], cost: dict, extra=None
    ) -> None:
        blocks = {b.name: b for b in pruner.blocks("mixed")}
        row = {
            "method": method,
            "granularity": granularity,
            "budget": percent,
            "removed": len(removed),
            "removed_params": sum(blocks[n].num_params for n in removed) / decoder_params(pruner),
            **heldout(removed, args.bootstrap),
            **mc(removed, args.bootstrap),
            "forward_passes": round(float(cost["forward_passes"]), 2),
            "backward_passes": int(cost.get("backward_passes", 0)),
            "seconds": round(float(cost["seconds"]), 2),
            "blocks": sorted(removed, key=lambda n: [int(p) if p.isdigit() else p for p in n.split(".")]),
            **(extra or {}),
        }
        results["rows"].append(row)
        save()  # after every cell: a long run stopped early keeps what it measured
        print(
            f"  {granularity:<8} {percent:>3}% {method:<18} ppl {row['perplexity']:9.2f} "
            f"[{row['ppl_low']:.2f}, {row['ppl_high']:.2f}] mc {row['mc_accuracy']:.2f} "
            f"{row['forward_passes']:7.1f} fwd {row['seconds']:7.1f} s  {' '.join(row['blocks'])}",
            flush=True,
        )

    budgets = [int(x) for x in args.budgets.split(",") if x]
    for granularity in [g for g in args.granularities.split(",") if g]:
        wanted = METHODS[granularity]
        if args.methods:
            wanted = tuple(m for m in wanted if m in args.methods.split(","))
        for method in wanted:
            run_method(pruner, data, base, granularity, method, budgets, total_params, args, record)
            save()
    save()
    print_table(results)
    print(f"wrote {out} ({results['seconds']:.0f} s)")


def run_method(pruner, data, base, granularity, method, budgets, total_params, args, record) -> None:
    """Every budget of one method at one granularity."""
    amounts = {p: budget_amount(pruner, granularity, p) for p in budgets}
    blocks = {b.name: b for b in pruner.blocks(granularity)}

    def scorer(objective: str = "ce") -> LossScorer:
        return LossScorer(pruner.model, pruner.adapter, data, BATCH, objective=objective)

    if method.startswith("energy"):  # the default, with --search certify, with --objective kl
        mode = "certify" if method == "energy-certify" else "swap"
        objective = "kl" if method == "energy-kl" else "ce"
        for p, amount in amounts.items():
            target = (
                {"remove": amount} if granularity == "layer" else {"target_params": total_params - amount}
            )
            t0 = time.perf_counter()
            selection = pruner.select(
                BlockPruneConfig(granularity=granularity, search=mode, objective=objective, **target, **base),
                scorer=scorer(objective),
            )
            cost = {**selection.cost, "seconds": time.perf_counter() - t0}
            search = selection.cost.get("search") or {}
            certificate = search.get("certificate") or {}
            extra = {
                "calibration_loss": selection.pruned_loss,
                "local_optimum": certificate.get("local_optimum"),
                "swaps_accepted": len(search.get("accepted", [])),
                "trajectory": [[q["forward_passes"], q["loss"]] for q in search.get("trajectory", [])],
                "certificate": certificate,
            }
            record(method, granularity, p, selection.removed, cost, extra)
        return
    if method in GREEDY or (method == "shortgpt" and granularity != "layer"):
        # run to the largest budget (enough blocks for a parameter budget), take each budget's prefix
        if granularity == "layer":
            count = max(amounts.values())
        else:
            sizes = sorted(b.num_params for b in blocks.values())  # enough even if it takes the smallest
            count = next(k for k in range(1, len(sizes)) if sum(sizes[:k]) >= max(amounts.values()))
        choice = select_baseline(
            method, pruner.model, pruner.adapter, data, count, granularity=granularity, scorer=scorer()
        )
        steps = choice.steps or [
            {"removed": choice.removed[:k], **choice.cost.as_dict()}
            for k in range(1, len(choice.removed) + 1)
        ]
        if method == "shortgpt":  # one shot: lowest scores first, the whole cost at every budget
            order = np.argsort(choice.scores, kind="stable")
            names = list(blocks)
            steps = [
                {"removed": [names[i] for i in order[:k]], **choice.cost.as_dict()}
                for k in range(1, count + 1)
            ]

        def size(step: dict) -> int:  # blocks (layer counts) or parameters removed
            removed = step["removed"]
            return len(removed) if granularity == "layer" else sum(blocks[n].num_params for n in removed)

        for p, amount in amounts.items():
            step = next((s for s in steps if size(s) >= amount), None)
            if step is not None and rule_ok(pruner, granularity, step["removed"]):
                record(method, granularity, p, step["removed"], step)
        return
    evopress = method.startswith("evopress")  # evopress-paper: the same search at its own schedule
    for p, amount in amounts.items():  # layer counts; branches: as many attention as MLP (EvoPress's way)
        remove = (
            amount
            if granularity == "layer"
            else dict.fromkeys(("attn", "mlp"), budget_amount(pruner, "layer", p))
        )
        choice = select_baseline(
            "evopress" if evopress else method,
            pruner.model,
            pruner.adapter,
            data,
            remove,
            granularity=granularity,
            scorer=scorer("kl" if evopress else "ce"),
            generations=args.evopress_generations if method == "evopress" else None,
        )
        extra = {"generations": len(choice.steps) - 1} if evopress and choice.steps else None
        record(method, granularity, p, choice.removed, choice.cost.as_dict(), extra)


def rule_ok(pruner: BlockPruner, granularity: str, removed: list[str]) -> bool:
    """Whether the request's rules allow ``removed`` (a prefix of one-shot scores at ``mixed``
    granularity may remove a layer and its own branch)."""
    return Rules(pruner.model, pruner.adapter, pruner.blocks(granularity)).refusal(removed) is None


def merge(out: Path, part: Path) -> None:
    """Add the rows of ``part`` to ``out`` (rows of the same method, granularity and budget are
    replaced), keeping each part's settings."""
    results, extra = json.loads(out.read_text()), json.loads(part.read_text())
    keys = {(r["method"], r["granularity"], r["budget"]) for r in extra["rows"]}
    results["rows"] = [r for r in results["rows"] if (r["method"], r["granularity"], r["budget"]) not in keys]
    results["rows"] += extra["rows"]
    settings = {**extra["settings"], "out": Path(extra["settings"]["out"]).name}  # no machine paths
    results.setdefault("parts", []).append({"settings": settings, "seconds": extra.get("seconds")})
    out.write_text(json.dumps(results, indent=2))
    print_table(results)


def _ppl(value: float) -> str:
    return f"{value:.2f}" if value < 1e4 else f"{value:.1e}"


def print_table(results: dict) -> None:
    """Per granularity: held-out perplexity [95 % interval] per budget (bold: the best; bold with
    "=": tied with it, the intervals overlap), the multiple-choice accuracy, then the cost."""
    dense = results["dense"]
    print(
        f"\nheld-out perplexity [95% bootstrap interval] (dense {dense['perplexity']:.2f}, "
        f"{results['heldout_tokens']} tokens; calibration {results['calibration_tokens']} tokens); "
        f"multiple choice: {results['questions']} questions, dense {dense['mc_accuracy']:.2f}"
    )
    for granularity in ("layer", "sublayer", "mixed"):
        rows = [r for r in results["rows"] if r["granularity"] == granularity]
        if not rows:
            continue
        budgets = sorted({r["budget"] for r in rows})
        what = "layers" if granularity == "layer" else "decoder parameters"
        print(f"\n| {granularity}: % of the {what} | " + " | ".join(f"{b}%" for b in budgets) + " |")
        print("|---" * (len(budgets) + 1) + "|")
        best = {b: min((r for r in rows if r["budget"] == b), key=lambda r: r["perplexity"]) for b in budgets}
        known = METHODS[granularity]  # in their order, then any other method in the file
        methods = sorted(
            dict.fromkeys(r["method"] for r in rows),
            key=lambda m: (m not in known, known.index(m) if m in known else 0),
        )
        for method in methods:
            mine = {r["budget"]: r for r in rows if r["method"] == method}
            cells = []
            for b in budgets:
                if b not in mine:
                    cells.append("")
                    continue
                r, top = mine[b], best[b]
                text = f"{_ppl(r['perplexity'])} [{_ppl(r['ppl_low'])}, {_ppl(r['ppl_high'])}]"
                if r is top:
                    text = f"**{text}**"
                elif r["ppl_low"] <= top["ppl_high"]:
                    text = f"= {text}"
                cells.append(text)
            print(f"| {method} | " + " | ".join(cells) + " |")
        print(
            f"\n| {granularity}: multiple choice / forward passes / seconds | "
            + " | ".join(f"{b}%" for b in budgets)
            + " |"
        )
        print("|---" * (len(budgets) + 1) + "|")
        for method in methods:
            mine = {r["budget"]: r for r in rows if r["method"] == method}
            cells = [
                f"{mine[b]['mc_accuracy']:.2f} / {mine[b]['forward_passes']:.0f} / {mine[b]['seconds']:.0f}"
                if b in mine
                else ""
                for b in budgets
            ]
            print(f"| {method} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
