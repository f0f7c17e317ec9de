"""A branch-pruned model keeps its marker through every save path: plain ``from_pretrained`` keeps
refusing, ``load_pruned`` gives the same logits; whole-layer pruning stays a stock checkpoint."""

from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path

import pytest
import torch
from conftest import CORPUS, tiny_model
from transformers import AutoModelForCausalLM, Trainer, TrainingArguments, default_data_collator

from optimum_blockprune.config import BlockPruneConfig
from optimum_blockprune.healing import HealingConfig, HealingTrainer, healing_dataset
from optimum_blockprune.healing.callbacks import GradualRemovalCallback
from optimum_blockprune.model.marker import layer_skips
from optimum_blockprune.model.pruned_format import load_pruned
from optimum_blockprune.model.registry import get_adapter

IDS = torch.randint(4, 300, (2, 12), generator=torch.Generator().manual_seed(0))
BRANCHES = ["layers.1.attn", "layers.3.mlp"]


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(input_ids=IDS).logits


def assert_marked(folder: Path, model) -> None:
    """Plain transformers refuses ``folder``; load_pruned loads it with ``model``'s exact logits."""
    data = json.loads((folder / "config.json").read_text())
    assert data["model_type"] == "blockpruned_llama" and data["blockprune"]["base_model_type"] == "llama"
    with pytest.raises(ValueError, match="blockpruned_llama"):
        AutoModelForCausalLM.from_pretrained(folder)
    reloaded = load_pruned(folder)
    assert layer_skips(reloaded.config) == layer_skips(model.config)
    assert torch.equal(_logits(reloaded), _logits(model))


@pytest.fixture
def branch_pruned(tmp_path, tokenizer) -> Path:
    """A 6-layer tiny Llama with an attention and an MLP branch removed, saved with its tokenizer."""
    model = tiny_model("llama", 6)
    get_adapter(model).remove_blocks(model, BRANCHES)
    model.save_pretrained(tmp_path / "pruned")
    tokenizer.save_pretrained(tmp_path / "pruned")
    return tmp_path / "pruned"


def test_save_pretrained_after_load_pruned_keeps_the_marker(tmp_path, branch_pruned):
    model = load_pruned(branch_pruned)
    assert model.config.model_type == "llama"  # in memory the base type, as transformers and peft expect
    assert AutoModelForCausalLM._model_mapping[type(model.config)] is type(model)
    model.save_pretrained(tmp_path / "again")
    assert_marked(tmp_path / "again", model)
    for copied in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        copied.save_pretrained(tmp_path / "copy")
        assert_marked(tmp_path / "copy", model)


def test_lora_on_a_branch_pruned_model_finds_its_modules_and_merges_marked(tmp_path, branch_pruned):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        load_pruned(branch_pruned), LoraConfig(r=2, target_modules="all-linear", task_type="CAUSAL_LM")
    )
    lora = {name.split(".lora_A")[0] for name, _ in model.named_parameters() if "lora_A" in name}
    assert any(".self_attn.q_proj" in n for n in lora) and any(".mlp.down_proj" in n for n in lora)
    assert not any(".layers.1.self_attn." in n or ".layers.3.mlp." in n for n in lora)  # the stand-ins
    merged = model.merge_and_unload()
    merged.save_pretrained(tmp_path / "merged")
    assert_marked(tmp_path / "merged", merged)


def test_whole_layer_pruning_stays_a_stock_checkpoint(tmp_path):
    model = tiny_model("llama", 6)
    get_adapter(model).remove_blocks(model, ["layers.1", "layers.4"])
    model.save_pretrained(tmp_path / "layers")
    data = json.loads((tmp_path / "layers" / "config.json").read_text())
    assert data["model_type"] == "llama" and "blockprune" not in data
    assert torch.equal(_logits(AutoModelForCausalLM.from_pretrained(tmp_path / "layers")), _logits(model))


def test_healing_trainer_save_and_checkpoint_keep_the_marker(tmp_path, branch_pruned, tokenizer):
    args = HealingConfig(
        output_dir=str(tmp_path / "run"), alpha=1.0, max_steps=2, save_strategy="steps", save_steps=2,
        per_device_train_batch_size=2, learning_rate=1e-3, use_cpu=True, report_to="none",
        disable_tqdm=True, max_length=16,
    )  # fmt: skip
    data = healing_dataset(tokenizer, CORPUS, 4, 16)
    trainer = HealingTrainer(
        load_pruned(branch_pruned).train(), args, train_dataset=data, processing_class=tokenizer
    )
    trainer.train()
    trainer.save_model(str(tmp_path / "healed"))
    assert not torch.equal(_logits(trainer.model), _logits(load_pruned(branch_pruned)))  # it trained
    assert_marked(tmp_path / "healed", trainer.model)
    assert_marked(tmp_path / "run" / "checkpoint-2", trainer.model)


def test_heal_output_of_a_branch_pruned_folder_keeps_the_marker(tmp_path, branch_pruned, text_file):
    from optimum_blockprune.healing import heal

    small = dict(batch_size=2, seq_len=16, save_steps=0, heldout_samples=0, learning_rate=1e-2)
    heal(branch_pruned, tmp_path / "healed", data=str(text_file), alpha=1.0, lora_r=2, max_steps=2, **small)
    healed = load_pruned(tmp_path / "healed")
    assert layer_skips(healed.config) == layer_skips(load_pruned(branch_pruned).config)
    with pytest.raises(ValueError, match="blockpruned_llama"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "healed")


def test_gradual_removal_checkpoint_keeps_the_marker(tmp_path, branch_pruned, tokenizer, text_file):
    config = BlockPruneConfig(
        remove=1, energy="additive", calibration=str(text_file), num_samples=4, seq_len=16, batch_size=4
    )
    data = healing_dataset(tokenizer, CORPUS, 8, 16).map(lambda row: {"labels": row["input_ids"]})
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"), max_steps=2, save_strategy="steps", save_steps=2,
        per_device_train_batch_size=4, learning_rate=1e-3, use_cpu=True, report_to="none", disable_tqdm=True,
    )  # fmt: skip
    callback = GradualRemovalCallback({1: 1}, tokenizer, config)
    trainer = Trainer(
        model=load_pruned(branch_pruned).train(), args=args, train_dataset=data,
        data_collator=default_data_collator, callbacks=[callback],
    )  # fmt: skip
    trainer.train()
    assert len(callback.removed) == 1 and trainer.model.config.num_hidden_layers == 5
    assert layer_skips(trainer.model.config)  # the skipped branches are still recorded, renumbered
    assert_marked(tmp_path / "run" / "checkpoint-2", trainer.model)
