"""``make demo``: prune 6 of SmolLM2-135M's 30 layers and show held-out perplexity before and after.

``make demo-heal`` (``--heal-steps N``) then heals the pruned model: a short LoRA run mixing
cross-entropy with distillation from the unpruned model, on the calibration split."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--remove", type=int, default=6, help="decoder layers to remove (default: 6)")
    parser.add_argument(
        "--output", default="outputs/smollm2-135m-pruned", help="where to save the pruned model"
    )
    parser.add_argument(
        "--heldout-samples", type=int, default=32, help="held-out blocks of 128 tokens (default: 32)"
    )
    parser.add_argument(
        "--heal-steps",
        type=int,
        default=0,
        help="heal the pruned model for N steps afterwards (default: 0, no)",
    )
    parser.add_argument(
        "--heal-output", default="outputs/smollm2-135m-healed", help="where to save the healed model"
    )
    parser.add_argument(
        "--heal-batch-size", type=int, default=4, help="blocks of 128 tokens per healing step (default: 4)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    from transformers import AutoModelForCausalLM

    from optimum_blockprune.config import BlockPruneConfig
    from optimum_blockprune.data.demo_assets import demo_model_path
    from optimum_blockprune.output.evaluation import heldout_data, perplexity
    from optimum_blockprune.pruner import BlockPruner

    args = parse_args(argv)
    t0 = time.perf_counter()
    total = 5 if args.heal_steps > 0 else 4
    print(f"[1/{total}] preparing the demo model (converted once from the bundled GGUF file) ...", flush=True)
    path = demo_model_path()
    pruner = BlockPruner.from_pretrained(path)
    heldout = heldout_data(pruner.tokenizer, args.heldout_samples)
    print(
        f"[2/{total}] held-out perplexity of the dense model on {heldout.num_tokens} tokens ...", flush=True
    )
    dense_ppl = perplexity(pruner.model, heldout, progress=True)
    config = BlockPruneConfig(remove=args.remove)
    print(
        f"[3/{total}] choosing {args.remove} of 30 layers with the '{config.energy}' energy and removing them ...",
        flush=True,
    )
    result = pruner.prune(config, args.output, overwrite=True, progress=True)
    print(f"[4/{total}] reloading the saved model with stock transformers and measuring it ...", flush=True)
    pruned = AutoModelForCausalLM.from_pretrained(result.path, dtype=torch.float32).eval()
    pruned_ppl = perplexity(pruned, heldout, progress=True)
    _summary(result, dense_ppl, pruned_ppl)
    if args.heal_steps > 0:
        _heal(args, result.path, path, dense_ppl, pruned_ppl, total)
    print(f"total time         : {time.perf_counter() - t0:.0f} s")


def _summary(result, dense_ppl: float, pruned_ppl: float) -> None:
    report = result.report
    print()
    print(f"removed layers     : {', '.join(result.removed)}")
    print(
        f"parameters         : {report['parameters_before'] / 1e6:.1f}M -> {report['parameters_after'] / 1e6:.1f}M"
    )
    print(f"held-out perplexity: {dense_ppl:.2f} (dense) -> {pruned_ppl:.2f} (pruned)")
    print(
        f"selection cost     : {report['cost']['forward_equivalents']} forward-pass equivalents, "
        f"{report['cost']['backward_passes']} backward passes, {report['seconds']['select']:.0f} s"
    )
    print(f"pruned model saved : {Path(result.path)} (model card: README.md)")
    print(f"report             : {Path(result.path) / 'report.html'} (and report.md)")


def _heal(
    args: argparse.Namespace,
    pruned_path: Path,
    dense_path: Path,
    dense_ppl: float,
    pruned_ppl: float,
    total: int,
) -> None:
    from optimum_blockprune.healing import heal

    print(
        f"[5/{total}] healing for {args.heal_steps} steps (LoRA, cross-entropy + distillation "
        "from the dense model) ...",
        flush=True,
    )
    t_heal = time.perf_counter()
    healed = heal(
        pruned_path,
        args.heal_output,
        teacher=dense_path,
        max_steps=args.heal_steps,
        batch_size=args.heal_batch_size,
        save_steps=0,
        heldout_samples=args.heldout_samples,
        known_perplexity={"before": pruned_ppl, "teacher": dense_ppl},
        overwrite=True,
    ).report["healing"]
    print()
    print(
        f"held-out perplexity: {dense_ppl:.2f} (dense) -> {pruned_ppl:.2f} (pruned) -> "
        f"{healed['heldout_perplexity']['after']:.2f} (healed, {100 * healed['gap_closed']:.0f}% of the gap closed)"
    )
    print(f"healing            : {healed['steps']} steps, {time.perf_counter() - t_heal:.0f} s")
    print(f"healed model saved : {Path(args.heal_output).resolve()}")


if __name__ == "__main__":
    main()
