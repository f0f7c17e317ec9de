"""``optimum-cli blockprune heal``: retrain a pruned model briefly and save it."""

from __future__ import annotations

from argparse import ArgumentParser, Namespace

from optimum.commands.base import CommandInfo

from optimum_blockprune.cli.options import (
    Leaf,
    add_output_arg,
    add_placement_args,
    check_memory_from_args,
    placement_from_args,
    require,
)


class HealCommand(Leaf):
    COMMAND = CommandInfo(
        name="heal",
        help="Retrain a pruned model briefly (LoRA or full; cross-entropy and/or distillation), merge, save.",
    )

    @staticmethod
    def parse_args(parser: ArgumentParser) -> None:
        parser.add_argument("--model", "-m", default=None, help="pruned model folder (required)")
        parser.add_argument(
            "--teacher",
            default=None,
            help="unpruned model folder for distillation (default: the model the pruned folder came from)",
        )
        parser.add_argument(
            "--teacher-dtype",
            default=None,
            choices=("float32", "bfloat16", "float16"),
            help="precision of the teacher (default: --dtype's)",
        )
        parser.add_argument(
            "--data",
            default="demo",
            help="training text: 'demo' (calibration split), a .txt/.jsonl file or a saved datasets folder",
        )
        parser.add_argument(
            "--text-field", default="text", help="field holding the text in .jsonl / datasets"
        )
        add_output_arg(parser, "the healed model")
        group = parser.add_argument_group("training")
        group.add_argument("--lora-r", type=int, default=16, help="LoRA rank (default: 16)")
        group.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA")
        group.add_argument("--max-steps", type=int, default=100, help="optimizer steps (default: 100)")
        group.add_argument(
            "--learning-rate", type=float, default=None, help="default: 1e-3 with LoRA, 1e-4 full fine-tuning"
        )
        group.add_argument(
            "--alpha",
            type=float,
            default=0.5,
            help="weight of cross-entropy; 1 - alpha on distillation (0.5)",
        )
        group.add_argument("--temperature", type=float, default=2.0, help="distillation temperature (2.0)")
        group.add_argument("--batch-size", type=int, default=8, help="blocks per step (default: 8)")
        group.add_argument("--seq-len", type=int, default=128, help="tokens per block (default: 128)")
        group.add_argument("--seed", type=int, default=0, help="data order and initialisation seed")
        group = parser.add_argument_group("checkpoints and evaluation")
        group.add_argument("--save-steps", type=int, default=25, help="checkpoint every N steps (25)")
        group.add_argument(
            "--checkpoint-dir", default=None, help="where checkpoints go (default: OUTPUT-checkpoints)"
        )
        group.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
        group.add_argument(
            "--keep-checkpoints", action="store_true", help="keep the checkpoint folder after success"
        )
        group.add_argument(
            "--heldout-samples",
            type=int,
            default=32,
            help="held-out demo blocks for perplexity before/after (0: skip; default: 32)",
        )
        add_placement_args(parser)

    def execute(self, args: Namespace) -> None:
        from optimum_blockprune.healing import heal
        from optimum_blockprune.plan import check_calibration, check_output, resolve_model

        model = require(args, "model", "which pruned model to heal")
        output = require(args, "output", "where to save the healed model")
        source, model_config = resolve_model(model)  # checked before anything loads
        check_calibration(args.data, "data")
        check_output(output, args.overwrite, source)
        place = placement_from_args(args)
        # gradients and AdamW's two states of full fine-tuning; the teacher counted at the model's size
        train_factor = (3.0 if args.full else 0.0) + (1.0 if args.alpha < 1 else 0.0)
        check_memory_from_args(args, place, model_config, train_factor=train_factor)
        result = heal(
            source,
            output,
            teacher=args.teacher,
            data=args.data,
            text_field=args.text_field,
            alpha=args.alpha,
            temperature=args.temperature,
            lora_r=None if args.full else args.lora_r,
            max_steps=args.max_steps,
            learning_rate=args.learning_rate,
            batch_size=args.batch_size,
            seq_len=args.seq_len,
            teacher_dtype=args.teacher_dtype,
            **place.load_kwargs(),
            save_steps=args.save_steps,
            checkpoint_dir=args.checkpoint_dir,
            resume=args.resume,
            keep_checkpoints=args.keep_checkpoints,
            heldout_samples=args.heldout_samples,
            overwrite=args.overwrite,
            seed=args.seed,
        )
        healing = result.report["healing"]
        ppl = healing["heldout_perplexity"]
        if ppl:
            line = f"held-out perplexity {ppl['before']:.2f} -> {ppl['after']:.2f}"
            if "gap_closed" in healing:
                line += f" (unpruned: {ppl['teacher']:.2f}; gap closed: {100 * healing['gap_closed']:.1f}%)"
            print(line)
        print(f"{healing['steps']} steps, {healing['tokens_per_second']:.0f} tokens/s")
        print(f"healed model written to {result.path}")
