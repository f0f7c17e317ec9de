"""Remove layers gradually while training, inside a plain ``transformers.Trainer``.

    python examples/gradual_removal.py --model path/to/model --schedule 100:2,200:2 --max-steps 300 \
        --output gradual/

``GradualRemovalCallback`` removes the scheduled number of layers at the end of each listed step
(chosen by the energy method on the model as it is then) and training goes on;
``BlockPruneMetadataCallback`` writes the removals into every checkpoint. The saved folder loads
with plain ``from_pretrained``.
"""

from __future__ import annotations

import argparse

from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    DataCollatorForLanguageModeling,
    Trainer,
    TrainingArguments,
)

from optimum_blockprune import BlockPruneConfig, GradualRemovalCallback
from optimum_blockprune.data.texts import load_texts
from optimum_blockprune.healing import healing_dataset


def parse_schedule(text: str) -> dict[int, int]:
    """``"100:2,200:2"`` -> ``{100: 2, 200: 2}`` (step: layers to remove)."""
    return {int(step): int(count) for step, count in (item.split(":") for item in text.split(","))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="Hub id or model folder")
    parser.add_argument("--output", required=True)
    parser.add_argument("--schedule", default="100:2,200:2", help="step:layers,... (default 100:2,200:2)")
    parser.add_argument("--max-steps", type=int, default=300)
    parser.add_argument("--data", default="demo", help="'demo', a .txt/.jsonl file or a dataset folder")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--num-samples", type=int, default=16, help="calibration samples per removal")
    args = parser.parse_args()

    model = AutoModelForCausalLM.from_pretrained(args.model)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    texts = load_texts(args.data, split="calibration")
    train = healing_dataset(tokenizer, texts, args.max_steps * args.batch_size, args.seq_len)

    calibration = BlockPruneConfig(
        remove=1,
        calibration=args.data,
        num_samples=args.num_samples,
        seq_len=args.seq_len,
        batch_size=min(8, args.num_samples),
    )
    removal = GradualRemovalCallback(parse_schedule(args.schedule), tokenizer, calibration)
    trainer = Trainer(
        model=model,
        args=TrainingArguments(
            output_dir=f"{args.output}-checkpoints",
            max_steps=args.max_steps,
            per_device_train_batch_size=args.batch_size,
            learning_rate=1e-4,
            save_strategy="no",
            report_to=[],
        ),
        train_dataset=train,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        callbacks=[removal],
    )
    removal.attach(trainer)
    trainer.train()
    trainer.save_model(args.output)
    tokenizer.save_pretrained(args.output)
    removal.save(args.output)
    print(f"removed while training: {', '.join(removal.removed)}")
    print(f"layers left: {trainer.model.config.num_hidden_layers}; saved to {args.output}")


if __name__ == "__main__":
    main()
