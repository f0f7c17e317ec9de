"""Healing on SmolLM2-135M with 6 of 30 layers removed: what each loss and method recovers.

Every run gets the same step budget on the same data (packed blocks of the demo corpus's
calibration split): cross-entropy only (alpha = 1), distillation only from the unpruned model
(alpha = 0), and the mix, each with LoRA and with full fine-tuning. Each healed model is merged,
saved like any pruned model of this project, reloaded with stock transformers, and measured on
the held-out split. Prints a table and writes JSON with ratios against the pruned model and the
fraction of the dense-pruned perplexity gap closed, all measured in this run.

    python benchmarks/healing.py [--steps 24] [--only lora-mix,full-mix] [--removed layers.13,...]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from optimum_blockprune.config import BlockPruneConfig
from optimum_blockprune.data.demo_assets import cache_dir, demo_model_path
from optimum_blockprune.healing import gap_closed, heal
from optimum_blockprune.model.loading import load_model_and_tokenizer
from optimum_blockprune.model.registry import get_adapter
from optimum_blockprune.output.evaluation import heldout_data, perplexity
from optimum_blockprune.output.saving import save_pruned

#: The layers `make demo` removes (the default energy's choice for M = 6).
DEMO_REMOVED = [f"layers.{i}" for i in range(13, 19)]


def pruned_model(removed: list[str]) -> Path:
    """The demo model with ``removed`` deleted, saved once in the cache like ``blockprune prune`` would."""
    indices = sorted(int(n.split(".")[1]) for n in removed)
    target = cache_dir() / f"smollm2-135m-instruct-minus-{'-'.join(map(str, indices))}"
    if (target / "blockprune_config.json").is_file():
        return target
    model, tokenizer, model_id = load_model_and_tokenizer(None)
    adapter = get_adapter(model)
    before = sum(p.numel() for p in model.parameters())
    adapter.remove_layers(model, indices)
    config = BlockPruneConfig(remove=len(indices), removed_blocks=list(removed))
    report = {
        "model_id": model_id,
        "adapter": adapter.name,
        "removed": list(removed),
        "num_blocks": len(indices) + model.config.num_hidden_layers,
        "parameters_before": before,
        "parameters_after": sum(p.numel() for p in model.parameters()),
    }
    save_pruned(model, tokenizer, config, report, target, overwrite=True)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=24, help="optimizer steps per run (default: 24)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--alpha", type=float, default=0.5, help="cross-entropy weight of the mixed runs")
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--lora-lr", type=float, default=1e-3)
    parser.add_argument("--full-lr", type=float, default=1e-4)
    parser.add_argument("--heldout-samples", type=int, default=32)
    parser.add_argument("--removed", default=",".join(DEMO_REMOVED))
    parser.add_argument(
        "--only", default=None, help="comma-separated run names, merged into an existing --out"
    )
    parser.add_argument("--out", default="benchmarks/results/healing.json")
    args = parser.parse_args()
    torch.manual_seed(0)

    removed = [n.strip() for n in args.removed.split(",") if n.strip()]
    pruned = pruned_model(removed)
    dense, tokenizer, _ = load_model_and_tokenizer(demo_model_path())
    heldout = heldout_data(tokenizer, args.heldout_samples, args.seq_len)
    t0 = time.perf_counter()
    ppl_dense = perplexity(dense.eval(), heldout, progress=True)
    pruned_model_, _, _ = load_model_and_tokenizer(pruned)
    ppl_pruned = perplexity(pruned_model_.eval(), heldout, progress=True)
    del dense, pruned_model_
    print(
        f"held-out perplexity: dense {ppl_dense:.2f}, pruned {ppl_pruned:.2f} ({time.perf_counter() - t0:.0f} s)"
    )

    runs = {
        f"{method}-{loss}": (lora_r, lr, alpha)
        for method, lora_r, lr in (("lora", args.lora_r, args.lora_lr), ("full", None, args.full_lr))
        for loss, alpha in (("ce", 1.0), ("kd", 0.0), ("mix", args.alpha))
    }
    only = [n.strip() for n in args.only.split(",")] if args.only else list(runs)
    unknown = [n for n in only if n not in runs]
    if unknown:
        parser.error(f"unknown run {unknown[0]!r}; runs: {', '.join(runs)}")
    out_path = Path(args.out)
    previous = json.loads(out_path.read_text()) if args.only and out_path.is_file() else {}
    results = dict(previous.get("runs", {}))
    work = Path(tempfile.mkdtemp(prefix="healing-bench-"))
    try:
        for name in only:
            lora_r, lr, alpha = runs[name]
            print(
                f"\n== {name}: alpha {alpha}, {'LoRA r=' + str(lora_r) if lora_r else 'full'}, lr {lr}",
                flush=True,
            )
            result = heal(
                pruned,
                work / name,
                alpha=alpha,
                temperature=args.temperature,
                lora_r=lora_r,
                max_steps=args.steps,
                learning_rate=lr,
                batch_size=args.batch_size,
                seq_len=args.seq_len,
                save_steps=0,
                heldout_samples=args.heldout_samples,
                known_perplexity={"before": ppl_pruned, "teacher": ppl_dense},
            )
            healing = result.report["healing"]
            reloaded, _, _ = load_model_and_tokenizer(result.path)
            ppl_reloaded = perplexity(reloaded.eval(), heldout)
            ppl = healing["heldout_perplexity"]["after"]
            results[name] = {
                "method": healing["method"],
                "lora_r": lora_r,
                "alpha": alpha,
                "temperature": args.temperature if alpha < 1 else None,
                "learning_rate": lr,
                "steps": healing["steps"],
                "heldout_perplexity": ppl,
                "reloaded_perplexity": ppl_reloaded,
                "ratio_to_pruned": ppl / ppl_pruned,
                "ratio_to_dense": ppl / ppl_dense,
                "gap_closed": gap_closed(ppl_pruned, ppl, ppl_dense),
                "tokens_per_second": healing["tokens_per_second"],
                "train_seconds": healing["seconds"]["train"],
                "final_train_loss": healing["final_train_loss"],
            }
            print(json.dumps({name: results[name]}), flush=True)
            shutil.rmtree(result.path, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    report = {
        "model": "SmolLM2-135M-Instruct",
        "removed": removed,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "tokens_per_step": args.batch_size * args.seq_len,
        "heldout_tokens": heldout.num_tokens,
        "dense_perplexity": ppl_dense,
        "pruned_perplexity": ppl_pruned,
        "runs": results,
        "note": "tokens/s measured on a shared 2-core CPU; compare ratios within one run",
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=2) + "\n")
    print()
    print(
        f"dense {ppl_dense:.2f}, pruned {ppl_pruned:.2f}; {args.steps} steps x {args.batch_size} x {args.seq_len} tokens"
    )
    print("| run | loss | method | held-out ppl | / pruned | gap closed | reloaded ppl | tokens/s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        loss = {1.0: "CE"}.get(r["alpha"], "KD" if r["alpha"] == 0 else f"{r['alpha']}·CE + KD")
        print(
            f"| {name} | {loss} | {r['method']} | {r['heldout_perplexity']:.2f} | {r['ratio_to_pruned']:.3f} "
            f"| {100 * r['gap_closed']:.1f}% | {r['reloaded_perplexity']:.2f} | {r['tokens_per_second']:.0f} |"
        )
    print(f"\nwritten to {out_path}")


if __name__ == "__main__":
    main()
