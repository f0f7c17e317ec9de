"""Healing: the distillation loss, HealingTrainer with LoRA / full fine-tuning, the saved merged
model, resume after a kill, and bad input. Tiny models only."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import CORPUS, tiny_config, tiny_model

from optimum_blockprune.config import BlockPruneConfig
from optimum_blockprune.errors import BlockPruneError
from optimum_blockprune.healing import (
    HealingConfig,
    HealingTrainer,
    distillation_terms,
    heal,
    healing_dataset,
    lora_config,
)

CLI = str(Path(sys.executable).with_name("optimum-cli"))
SMALL = dict(batch_size=4, seq_len=16, save_steps=5, heldout_samples=0, learning_rate=1e-2)


@pytest.fixture
def pruned_dir(tmp_path, tiny_model_dir, text_file) -> Path:
    """A tiny model pruned by the project (2 of 6 layers), as ``blockprune prune`` writes it."""
    from optimum_blockprune.pruner import BlockPruner

    config = BlockPruneConfig(
        remove=2, energy="additive", calibration=str(text_file), num_samples=4, seq_len=16, batch_size=4
    )
    out = tmp_path / "pruned"
    BlockPruner.from_pretrained(tiny_model_dir).prune(config, out)
    return out


def _kl_to_teacher(student, teacher, ids) -> float:
    with torch.no_grad():
        _, kl, n = distillation_terms(student(input_ids=ids).logits, teacher(input_ids=ids).logits, ids)
    return float(kl / n)


# ------------------------------------------------------------------------------------------- loss
def test_distillation_terms_match_a_per_position_computation():
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 5, 7), torch.randn(2, 5, 7)
    labels = torch.randint(0, 7, (2, 5))
    labels[0, 3] = -100
    mask = torch.ones(2, 5, dtype=torch.long)
    mask[1, 4] = 0
    ce, kl, n = distillation_terms(student, teacher, labels, mask, temperature=2.0)
    want_ce = want_kl = 0.0
    count = 0
    for b in range(2):
        for t in range(4):  # position t predicts token t + 1
            if labels[b, t + 1] == -100 or mask[b, t] == 0:
                continue
            count += 1
            want_ce += -F.log_softmax(student[b, t], -1)[labels[b, t + 1]].item()
            p = F.softmax(teacher[b, t] / 2, -1)
            q = F.softmax(student[b, t] / 2, -1)
            want_kl += (p * (p.log() - q.log())).sum().item()
    assert int(n) == count == 7
    assert float(ce) == pytest.approx(want_ce, rel=1e-5)
    assert float(kl) == pytest.approx(want_kl, rel=1e-5)
    _, kl_self, _ = distillation_terms(student, student, labels, mask)
    assert float(kl_self) == pytest.approx(0.0, abs=1e-5)


def test_trainer_loss_is_the_alpha_mix(tmp_path, tokenizer):
    teacher = tiny_model("llama", 4)
    student = tiny_model("llama", 3, seed=1)
    data = healing_dataset(tokenizer, CORPUS, 4, 16)
    args = HealingConfig(
        output_dir=str(tmp_path), alpha=0.25, temperature=3.0, use_cpu=True, report_to="none"
    )
    trainer = HealingTrainer(student, args, teacher=teacher, train_dataset=data, processing_class=tokenizer)
    batch = trainer.data_collator([data[i] for i in range(4)])
    loss = trainer.compute_loss(trainer.model, dict(batch)).detach()
    ids = batch["input_ids"]
    with torch.no_grad():
        ce, kl, n = distillation_terms(
            student(input_ids=ids).logits, teacher(input_ids=ids).logits, batch["labels"], temperature=3.0
        )
    assert float(loss) == pytest.approx(float((0.25 * ce + 0.75 * 9.0 * kl) / n), rel=1e-5)
    assert not args.bf16 and not args.activation_checkpointing


def test_config_and_teacher_are_checked(tmp_path, tokenizer):
    with pytest.raises(BlockPruneError, match="alpha"):
        HealingConfig(output_dir=str(tmp_path), alpha=1.5)
    with pytest.raises(BlockPruneError, match="temperature"):
        HealingConfig(output_dir=str(tmp_path), temperature=0)
    data = healing_dataset(tokenizer, CORPUS, 4, 16)
    args = HealingConfig(output_dir=str(tmp_path), alpha=0.5, use_cpu=True, report_to="none")
    with pytest.raises(BlockPruneError, match="no teacher"):
        HealingTrainer(tiny_model("llama", 2), args, train_dataset=data, processing_class=tokenizer)
    from transformers import AutoModelForCausalLM

    config = tiny_config("llama", 2)
    config.vocab_size = 280
    other = AutoModelForCausalLM.from_config(config)
    with pytest.raises(BlockPruneError, match="output tokens"):
        HealingTrainer(
            tiny_model("llama", 2), args, teacher=other, train_dataset=data, processing_class=tokenizer
        )


def test_lora_config_targets_moe_experts():
    from peft import get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        "qwen3_moe", vocab_size=300, hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
        num_experts=4, num_experts_per_tok=2, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_config(config)
    assert lora_config(tiny_model("llama", 2), 4).target_parameters in (None, [])
    lora = lora_config(model, 4)
    assert sorted(lora.target_parameters) == ["experts.down_proj", "experts.gate_up_proj"]
    peft_model = get_peft_model(model, lora)
    ids = torch.randint(0, 300, (2, 8))
    peft_model(input_ids=ids, labels=ids).loss.backward()
    expert_grads = [
        p.grad
        for n, p in peft_model.named_parameters()
        if "experts" in n and "lora_B" in n and p.requires_grad
    ]
    assert expert_grads and all(g is not None and g.abs().sum() > 0 for g in expert_grads)


# ------------------------------------------------------------------------------------------- runs
@pytest.mark.parametrize("lora_r", [4, None], ids=["lora", "full"])
def test_heal_distils_merges_and_saves_a_pruned_model(
    tmp_path, pruned_dir, tiny_model_dir, text_file, lora_r
):
    from transformers import AutoModelForCausalLM

    from optimum_blockprune.output.evaluation import heldout_data, perplexity

    before = AutoModelForCausalLM.from_pretrained(pruned_dir)
    teacher = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = torch.tensor(healing_dataset(before_tok := _tok(pruned_dir), CORPUS, 4, 16, seed=1)["input_ids"])
    out = tmp_path / "healed"
    result = heal(
        pruned_dir, out, data=str(text_file), alpha=0.0, lora_r=lora_r, max_steps=12,
        **{**SMALL, "heldout_samples": 4, "learning_rate": 1e-2 if lora_r else 1e-3},
    )  # fmt: skip
    healed, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert healed.config.num_hidden_layers == 4
    assert _kl_to_teacher(healed, teacher, ids) < 0.8 * _kl_to_teacher(before, teacher, ids)
    # the saved folder is a pruned model of this project, with the healing recorded
    assert (
        BlockPruneConfig.from_pretrained(out).removed_blocks
        == BlockPruneConfig.from_pretrained(pruned_dir).removed_blocks
    )
    report = json.loads((out / "blockprune_report.json").read_text())
    assert report["removed"] and report["healing"]["steps"] == 12
    assert report["healing"]["method"] == ("lora" if lora_r else "full")
    assert report["healing"]["teacher"] == str(tiny_model_dir)
    # the reloaded checkpoint reproduces the perplexity measured on the merged in-memory model
    ppl = perplexity(healed, heldout_data(before_tok, 4, 16))
    assert ppl == pytest.approx(report["healing"]["heldout_perplexity"]["after"], rel=1e-5)
    assert result.report["healing"]["heldout_perplexity"]["before"] != pytest.approx(ppl)
    assert not (tmp_path / "healed-checkpoints").exists()
    # the energy files come along: the visual report and a model card with the healing figures
    assert report["energy_files"] and all((out / n).is_file() for n in report["energy_files"])
    assert (out / "report.html").stat().st_size > 10_000
    card = (out / "README.md").read_text()
    assert all(name in card for name in report["removed"]) and "after healing" in card


def _tok(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def test_cross_entropy_healing_needs_no_teacher(tmp_path, tiny_model_dir, text_file):
    out = tmp_path / "healed"
    result = heal(tiny_model_dir, out, data=str(text_file), alpha=1.0, lora_r=4, max_steps=3, **SMALL)
    assert result.report["healing"]["teacher"] is None
    assert not (out / "blockprune_config.json").exists() and (out / "model.safetensors").is_file()


# ------------------------------------------------------------------------------------------- resume
def _cli(*args: str, log: Path | None = None) -> subprocess.Popen:
    """``optimum-cli blockprune heal ARGS``; output to ``log`` (a file: a pipe nobody reads could
    fill up and stall the run) or to pipes."""
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    out = log.open("w") if log else subprocess.PIPE
    return subprocess.Popen(
        [CLI, "blockprune", "heal", *args], stdout=out, stderr=subprocess.STDOUT if log else subprocess.PIPE,
        text=True, env=env,
    )  # fmt: skip


def test_killed_run_resumes_from_its_last_checkpoint(tmp_path, pruned_dir, text_file):
    from safetensors.torch import load_file

    common = [
        "--model", str(pruned_dir), "--data", str(text_file), "--max-steps", "20", "--save-steps", "5",
        "--batch-size", "4", "--seq-len", "16", "--heldout-samples", "0", "--lora-r", "4",
        "--learning-rate", "1e-2",
    ]  # fmt: skip
    out, ckpts = tmp_path / "healed", tmp_path / "healed-checkpoints"
    log = tmp_path / "killed.log"
    proc = _cli(*common, "--output", str(out), log=log)
    deadline = time.monotonic() + 300
    while not (ckpts / "checkpoint-5" / "trainer_state.json").is_file():
        assert proc.poll() is None, log.read_text()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists()  # nothing half-written
    done = sorted(int(p.name.split("-")[1]) for p in ckpts.glob("checkpoint-*"))
    assert done and max(done) < 20

    resumed = _cli(*common, "--output", str(out), "--resume")
    stdout, stderr = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, stderr[-3000:]
    report = json.loads((out / "blockprune_report.json").read_text())
    assert report["healing"]["steps"] == 20
    assert report["healing"]["resumed_from"].startswith("checkpoint-")
    assert int(report["healing"]["resumed_from"].split("-")[1]) in done
    assert not ckpts.exists()

    straight = tmp_path / "straight"  # the same run without interruption, in-process
    heal(pruned_dir, straight, data=str(text_file), alpha=0.5, lora_r=4, max_steps=20, **SMALL)
    a, b = load_file(out / "model.safetensors"), load_file(straight / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------- bad input
def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


def test_bad_input_gives_one_line_and_writes_nothing(
    tmp_path, pruned_dir, tiny_model_dir, text_file, tokenizer
):
    from transformers import AutoModelForCausalLM

    other_vocab = tmp_path / "other-vocab"
    config = tiny_config("llama", 6)
    config.vocab_size = 280
    AutoModelForCausalLM.from_config(config).save_pretrained(other_vocab)
    tokenizer.save_pretrained(other_vocab)
    other_tok = tmp_path / "other-tok"
    tiny_model("llama", 6).save_pretrained(other_tok)
    _other_tokenizer(["Completely different words in another corpus entirely."] * 50).save_pretrained(
        other_tok
    )
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n  \n")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("x")
    out = tmp_path / "out"
    cases = [
        (dict(model=pruned_dir, teacher=other_vocab), "output tokens"),
        (dict(model=pruned_dir, teacher=other_tok), "tokenizer differs"),
        (dict(model=pruned_dir, data=str(empty)), "empty"),
        (dict(model=tiny_model_dir), "not pruned by optimum-blockprune"),
        (dict(model=pruned_dir, output=busy), "not empty"),
        (dict(model=pruned_dir, resume=True), "no complete checkpoint"),
    ]
    before = _files(tmp_path)
    for kwargs, fragment in cases:
        kwargs = {"data": str(text_file), "output": out, **kwargs}
        with pytest.raises(BlockPruneError, match=fragment):
            heal(kwargs.pop("model"), kwargs.pop("output"), max_steps=2, **SMALL, **kwargs)
        assert _files(tmp_path) == before, fragment

    proc = _cli(
        "--model",
        str(pruned_dir),
        "--teacher",
        str(other_vocab),
        "--data",
        str(text_file),
        "--output",
        str(out),
    )
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 2 and "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "output tokens" in errors[0]
    assert _files(tmp_path) == before


def _other_tokenizer(corpus: list[str]):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(
        corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "</s>", "<s>", "<unk>"])
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", bos_token="<s>", unk_token="<unk>"
    )


def test_heal_keeps_model_copy_untouched(tmp_path, pruned_dir, text_file):
    """The input folder is never modified."""
    before = {p: p.read_bytes() for p in pruned_dir.iterdir() if p.is_file()}
    heal(pruned_dir, tmp_path / "h", data=str(text_file), alpha=0.5, lora_r=4, max_steps=2, **SMALL)
    assert {p: p.read_bytes() for p in pruned_dir.iterdir() if p.is_file()} == before
