"""Heal a pruned model with ``HealingTrainer`` (a trl ``SFTTrainer``): LoRA, cross-entropy mixed
with distillation from the unpruned teacher, then merge and save.

    python examples/heal_with_trainer.py --model pruned/ --teacher HuggingFaceTB/SmolLM2-1.7B \
        --data my.txt --max-steps 100 --output healed/

``optimum-cli blockprune heal`` does the same with checkpoints, resume and before/after perplexity;
this script shows the pieces for your own training code.
"""

from __future__ import annotations

import argparse

from transformers import AutoModelForCausalLM, AutoTokenizer

from optimum_blockprune import HealingConfig, HealingTrainer, load_pruned, lora_config
from optimum_blockprune.data.texts import load_texts
from optimum_blockprune.healing import healing_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="pruned model folder")
    parser.add_argument("--teacher", required=True, help="the unpruned model (Hub id or folder)")
    parser.add_argument("--data", default="demo", help="'demo', a .txt/.jsonl file or a dataset folder")
    parser.add_argument("--output", required=True, help="folder to write the healed model to")
    parser.add_argument("--max-steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--alpha", type=float, default=0.5, help="weight of cross-entropy vs distillation")
    args = parser.parse_args()

    student = load_pruned(args.model)
    teacher = AutoModelForCausalLM.from_pretrained(args.teacher)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    texts = load_texts(args.data, split="calibration")
    train = healing_dataset(tokenizer, texts, args.max_steps * args.batch_size, args.seq_len)

    config = HealingConfig(
        output_dir=f"{args.output}-checkpoints",
        alpha=args.alpha,
        temperature=2.0,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        save_strategy="no",
        report_to=[],
    )
    trainer = HealingTrainer(
        student,
        config,
        teacher=teacher,
        processing_class=tokenizer,
        train_dataset=train,
        peft_config=lora_config(student, r=args.lora_r),
    )
    trainer.train()
    healed = trainer.model.merge_and_unload()
    healed.save_pretrained(args.output)
    tokenizer.save_pretrained(args.output)
    print(f"final training loss {trainer.state.log_history[-1].get('train_loss', float('nan')):.4f}")
    print(f"healed model saved to {args.output}")


if __name__ == "__main__":
    main()
