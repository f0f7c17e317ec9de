"""Trainer callbacks inside a plain ``transformers.Trainer`` run on a tiny model."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from conftest import CORPUS, tiny_model
from transformers import Trainer, TrainerCallback, TrainingArguments, default_data_collator

from optimum_blockprune.config import BlockPruneConfig
from optimum_blockprune.errors import BlockPruneError
from optimum_blockprune.healing import healing_dataset
from optimum_blockprune.healing.callbacks import BlockPruneMetadataCallback, GradualRemovalCallback


@pytest.fixture
def train_data(tokenizer):
    data = healing_dataset(tokenizer, CORPUS, 32, 16)
    return data.map(lambda row: {"labels": row["input_ids"]})


def _args(tmp_path, **kw) -> TrainingArguments:
    settings = dict(
        output_dir=str(tmp_path / "run"),
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        logging_steps=1,
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
        save_strategy="steps",
    )
    return TrainingArguments(**{**settings, **kw})


class Snapshot(TrainerCallback):
    """Deep copies of the model at the end of given steps (placed before the removal callback)."""

    def __init__(self, steps):
        self.steps, self.models = set(steps), {}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step in self.steps:
            self.models[state.global_step] = copy.deepcopy(model)


def test_gradual_removal_in_a_plain_trainer(tmp_path, tokenizer, text_file, train_data):
    from transformers import AutoModelForCausalLM

    from optimum_blockprune.model.registry import get_adapter
    from optimum_blockprune.pruner import BlockPruner

    model = tiny_model("llama", 6)
    original_layers = list(model.model.layers)
    config = BlockPruneConfig(
        remove=1, energy="additive", calibration=str(text_file), num_samples=4, seq_len=16, batch_size=4
    )
    removal = GradualRemovalCallback({2: 1, 4: 2}, tokenizer, config)
    snapshot = Snapshot([2, 4, 5])
    args = _args(tmp_path, max_steps=6, save_steps=3)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_data,
        data_collator=default_data_collator,
        callbacks=[snapshot, removal],
    )
    removal.attach(trainer)
    trainer.train()

    # the scheduled blocks are gone; names are the ORIGINAL indices
    kept = [original_layers.index(layer) for layer in model.model.layers]
    assert len(kept) == 3 and model.config.num_hidden_layers == 3
    assert removal.removed == [f"layers.{i}" for i in sorted(set(range(6)) - set(kept))]
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1, 2]

    # each removal is what the energy method picks on the model as it was at that step
    first, second = removal.events
    adapter = get_adapter(model)
    pick1 = BlockPruner(snapshot.models[2], tokenizer, adapter).select(config).removed
    assert first["removed"] == pick1 and first["step"] == 2
    before_second = [i for i in range(6) if f"layers.{i}" not in first["removed"]]
    pick2 = BlockPruner(snapshot.models[4], tokenizer, adapter).select(_remove(config, 2)).removed
    assert second["removed"] == [f"layers.{before_second[int(n.split('.')[1])]}" for n in pick2]

    # the optimizer holds exactly the live parameters, and training went on after the last removal
    live = {id(p) for p in model.parameters()}
    in_optimizer = [p for g in trainer.optimizer.param_groups for p in g["params"]]
    assert {id(p) for p in in_optimizer} == live and len(in_optimizer) == len(live)
    assert all(id(p) in live for p in trainer.optimizer.optimizer.state)
    assert not torch.equal(snapshot.models[5].lm_head.weight, model.lm_head.weight)
    losses = [e for e in trainer.state.log_history if "loss" in e]
    assert [e["step"] for e in losses] == [1, 2, 3, 4, 5, 6]

    # the figures went to the Trainer's loggers
    logged = [e for e in trainer.state.log_history if "blockprune/layers" in e]
    assert [(e["step"], e["blockprune/layers"]) for e in logged] == [(2, 5.0), (4, 3.0)]

    # every checkpoint carries the pruning metadata, and loads with stock transformers
    run = Path(args.output_dir)
    assert BlockPruneConfig.from_pretrained(run / "checkpoint-3").removed_blocks == first["removed"]
    assert BlockPruneConfig.from_pretrained(run / "checkpoint-6").removed_blocks == removal.removed
    report = json.loads((run / "checkpoint-6" / "blockprune_report.json").read_text())
    assert report["gradual_removal"]["events"][1]["removed"] == second["removed"]

    final = tmp_path / "final"
    trainer.save_model(final)
    removal.save(final)
    reloaded, info = AutoModelForCausalLM.from_pretrained(final, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ids = torch.tensor(train_data[:2]["input_ids"])
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, model(input_ids=ids).logits)
    assert BlockPruneConfig.from_pretrained(final).removed_blocks == removal.removed
    ckpt = AutoModelForCausalLM.from_pretrained(run / "checkpoint-6")
    assert ckpt.config.num_hidden_layers == 3


def _remove(config: BlockPruneConfig, n: int) -> BlockPruneConfig:
    from optimum_blockprune.healing.callbacks import _with

    return _with(config, remove=n)


def test_gradual_removal_logs_without_attach_and_keeps_protected_blocks(
    tmp_path, tokenizer, text_file, train_data
):
    model = tiny_model("llama", 4)
    config = BlockPruneConfig(
        remove=1,
        energy="additive",
        calibration=str(text_file),
        num_samples=4,
        seq_len=16,
        batch_size=4,
        protect=["layers.0", "layers.1", "layers.2"],
    )
    removal = GradualRemovalCallback({1: 1}, tokenizer, config)
    trainer = Trainer(
        model=model,
        args=_args(tmp_path, max_steps=2, save_strategy="no"),
        train_dataset=train_data,
        data_collator=default_data_collator,
        callbacks=[removal],
    )
    trainer.train()
    assert removal.removed == ["layers.3"]
    logged = [e for e in trainer.state.log_history if "blockprune/layers" in e]
    assert [(e["step"], e["blockprune/layers"]) for e in logged] == [(1, 3.0)]


def test_schedule_and_config_are_checked(tokenizer):
    with pytest.raises(BlockPruneError, match="schedule"):
        GradualRemovalCallback({}, tokenizer)
    with pytest.raises(BlockPruneError, match="schedule"):
        GradualRemovalCallback({0: 1}, tokenizer)
    with pytest.raises(BlockPruneError, match="force"):
        GradualRemovalCallback({1: 1}, tokenizer, BlockPruneConfig(remove=1, force=["layers.1"]))


def test_metadata_callback_writes_into_every_checkpoint(tmp_path, train_data):
    config = BlockPruneConfig(remove=2, removed_blocks=["layers.1", "layers.4"])
    trainer = Trainer(
        model=tiny_model("llama", 4),
        args=_args(tmp_path, max_steps=4, save_steps=2),
        train_dataset=train_data,
        data_collator=default_data_collator,
        callbacks=[BlockPruneMetadataCallback(config, {"removed": ["layers.1", "layers.4"]})],
    )
    trainer.train()
    for step in (2, 4):
        folder = Path(trainer.args.output_dir) / f"checkpoint-{step}"
        assert BlockPruneConfig.from_pretrained(folder).removed_blocks == ["layers.1", "layers.4"]
        report = json.loads((folder / "blockprune_report.json").read_text())
        assert report["checkpoint_step"] == step and report["removed"] == ["layers.1", "layers.4"]
