"""Prune a causal LM from Python: choose blocks on calibration text, remove them, save the model.

    python examples/prune_model.py --model HuggingFaceTB/SmolLM2-1.7B --remove 6 --output pruned/
    python examples/prune_model.py --model path/to/model --calibration my.txt --granularity sublayer \
        --remove 8 --output pruned/

The saved folder loads with ``optimum_blockprune.load_pruned`` (and, when only whole layers went,
with plain ``AutoModelForCausalLM.from_pretrained``).
"""

from __future__ import annotations

import argparse

import torch

from optimum_blockprune import BlockPruneConfig, BlockPruner, load_pruned


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="Hub id or model folder")
    parser.add_argument("--output", required=True, help="folder to write the pruned model to")
    parser.add_argument("--remove", type=int, default=6, help="blocks to remove")
    parser.add_argument("--granularity", default="layer", choices=["layer", "sublayer", "mixed"])
    parser.add_argument(
        "--calibration", default="demo", help="'demo', a .txt/.jsonl file or a dataset folder"
    )
    parser.add_argument("--num-samples", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args()

    pruner = BlockPruner.from_pretrained(args.model, dtype=getattr(torch, args.dtype))
    config = BlockPruneConfig(
        remove=args.remove,
        granularity=args.granularity,
        calibration=args.calibration,
        num_samples=args.num_samples,
        seq_len=args.seq_len,
        batch_size=min(8, args.num_samples),
    )
    result = pruner.prune(config, args.output)
    report = result.report
    print(f"removed: {', '.join(result.removed)}")
    print(f"calibration loss: {report['dense_loss']:.4f} -> {report['pruned_loss']:.4f}")
    model = load_pruned(result.path)
    print(f"saved to {result.path} ({sum(p.numel() for p in model.parameters()):,} parameters)")


if __name__ == "__main__":
    main()
