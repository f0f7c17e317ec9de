"""Loss-based selection under ``accelerate launch`` (two gloo processes on the CPU), and the loss
scorer's cache kept on another device than the model."""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import CPU_ONLY, accelerate_cli, run

from optimum_blockprune.config import BlockPruneConfig
from optimum_blockprune.data.calibration import CalibrationData
from optimum_blockprune.energy.distributed import Processes
from optimum_blockprune.energy.scoring import LossScorer
from optimum_blockprune.pruner import BlockPruner
from optimum_blockprune.selection.baselines import residual_states, similarity_scores

#: Run under ``accelerate launch``: every process saves the per-sample losses it got.
SHARD_LOSSES = textwrap.dedent(
    """
    import sys
    import numpy as np
    from optimum_blockprune.config import BlockPruneConfig
    from optimum_blockprune.energy.distributed import Processes
    from optimum_blockprune.energy.scoring import LossScorer
    from optimum_blockprune.pruner import BlockPruner
    from optimum_blockprune.selection.baselines import residual_states, similarity_scores

    model, text, out = sys.argv[1:4]
    pruner = BlockPruner.from_pretrained(model)
    config = BlockPruneConfig(remove=1, calibration=text, num_samples=5, seq_len=16, batch_size=2)
    scorer = LossScorer(pruner.model, pruner.adapter, pruner.calibration(config), 2)
    dense, pruned = scorer.losses(), scorer.losses(["layers.2", "layers.4.mlp"])
    processes = Processes.current()
    np.save(f"{out}/rank{processes.rank}.npy", np.stack([dense, pruned]))
    kl = LossScorer(pruner.model, pruner.adapter, pruner.calibration(config), 2, objective="kl")
    part = kl.losses(["layers.3"], samples=[4, 1, 2])  # samples of both shares, one batch cut
    np.save(f"{out}/kl{processes.rank}.npy", np.concatenate([part, kl.losses(["layers.3"])]))
    model, adapter, data = pruner.model, pruner.adapter, scorer.data
    similarity = similarity_scores(model, adapter, data, pruner.blocks("mixed"), 2)
    np.save(f"{out}/similarity{processes.rank}.npy", similarity)
    np.save(f"{out}/states{processes.rank}.npy", residual_states(model, adapter, data, 2).numpy())
    work = scorer.forward_equivalents
    print(f"rank {processes.rank} scored {len(scorer._batches)} batches, work {work}")
    processes.close()
    """
)


def launched(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=CPU_ONLY, cwd=cwd, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_contiguous_shares_in_rank_order_are_the_samples_in_order(world):
    ids = torch.arange(7 * 3).view(7, 3)
    data = CalibrationData(ids, torch.ones_like(ids))
    for n in range(9):
        spans = [Processes(rank=r, world=world).bounds(n) for r in range(world)]
        assert [i for lo, hi in spans for i in range(lo, hi)] == list(range(n))
    shares = [Processes(rank=r, world=world).shard(data).input_ids for r in range(world)]
    assert torch.equal(torch.cat(shares), ids)


def test_gathered_losses_are_every_sample_in_order(tmp_path, tiny_model_dir, text_file):
    """5 samples in batches of 2 over 2 processes (shares of 2 and 3): both processes get the
    one-process per-sample losses (cross-entropy, and KL on a subset of the samples and on all),
    sample by sample, and the similarity baselines' scores and residual states."""
    (tmp_path / "shard_losses.py").write_text(SHARD_LOSSES)
    proc = launched(
        accelerate_cli(str(tiny_model_dir), str(text_file), str(tmp_path), module="shard_losses"), tmp_path
    )
    assert "rank 0 scored 1 batches" in proc.stdout and "rank 1 scored 2 batches" in proc.stdout
    pruner = BlockPruner.from_pretrained(tiny_model_dir)
    config = BlockPruneConfig(remove=1, calibration=str(text_file), num_samples=5, seq_len=16, batch_size=2)
    scorer = LossScorer(pruner.model, pruner.adapter, pruner.calibration(config), 2)
    reference = np.stack([scorer.losses(), scorer.losses(["layers.2", "layers.4.mlp"])])
    assert np.ptp(reference[0]) > 1e-3  # the samples differ, so an order mix-up would show
    for rank in (0, 1):
        np.testing.assert_allclose(np.load(tmp_path / f"rank{rank}.npy"), reference, rtol=0, atol=1e-6)
    kl = LossScorer(pruner.model, pruner.adapter, pruner.calibration(config), 2, objective="kl")
    full = kl.losses(["layers.3"])
    for rank in (0, 1):  # the KL objective and a subset of the samples, gathered in sample order
        np.testing.assert_allclose(
            np.load(tmp_path / f"kl{rank}.npy"), np.concatenate([full[[1, 2, 4]], full]), rtol=0, atol=1e-6
        )
    # the work counts the whole calibration set once, as in one process
    assert f"work {scorer.forward_equivalents}" in proc.stdout
    blocks = pruner.blocks("mixed")
    similarity = similarity_scores(pruner.model, pruner.adapter, scorer.data, blocks, 2)
    states = residual_states(pruner.model, pruner.adapter, scorer.data, 2).numpy()
    for rank in (0, 1):
        np.testing.assert_allclose(np.load(tmp_path / f"similarity{rank}.npy"), similarity, rtol=0, atol=1e-6)
        np.testing.assert_allclose(np.load(tmp_path / f"states{rank}.npy"), states, rtol=0, atol=1e-5)


@pytest.mark.parametrize("method", ["energy", "sleb"])
def test_launched_prune_removes_what_one_process_removes(tmp_path, tiny_model_dir, text_file, method):
    from transformers import AutoModelForCausalLM

    args = ["prune", "--model", str(tiny_model_dir), "--calibration", str(text_file)]
    args += ["--num-samples", "4", "--seq-len", "16", "--batch-size", "2", "--remove", "2"]
    args += ["--method", method, "--no-report"]
    one = run(*args, "--output", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr[-3000:]
    two = launched(accelerate_cli(*args, "--output", str(tmp_path / "two")), tmp_path)
    assert two.stdout.count("pruned model written to") == 1  # printed and written by the main one only
    single, parallel = (
        json.loads((tmp_path / d / "blockprune_report.json").read_text()) for d in ("one", "two")
    )
    assert parallel["removed"] == single["removed"] and parallel["method"] == method
    for key in ("dense_loss", "pruned_loss"):
        assert abs(parallel[key] - single[key]) <= 1e-4
    assert parallel["cost"]["forward_passes"] == single["cost"]["forward_passes"]
    written = {p.name for p in tmp_path.iterdir()} - {text_file.name, tiny_model_dir.name}
    assert written == {"one", "two"}  # no temporary leftovers
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "two")
    assert model.config.num_hidden_layers == 6 - 2


def test_cache_device_keeps_the_cache_there_and_selects_the_same(tiny_model_dir, text_file):
    """The cache on the CPU beside the model (on a GPU when there is one): same losses, same choice."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    # three blocks: two re-centring rounds, the second re-records the cache on top of the first's
    config = BlockPruneConfig(remove=3, calibration=str(text_file), num_samples=4, seq_len=16, batch_size=2)
    default = BlockPruner.from_pretrained(tiny_model_dir)
    cached = BlockPruner.from_pretrained(tiny_model_dir)
    cached.cache_device = "cpu"
    for pruner in (default, cached):
        pruner.model.to(device)
    expected, got = default.select(config), cached.select(config)
    assert got.removed == expected.removed
    assert (
        abs(got.dense_loss - expected.dense_loss) <= 1e-6
        and abs(got.pruned_loss - expected.pruned_loss) <= 1e-6
    )
    data = cached.calibration(config)
    for scorer, where in (
        (LossScorer(cached.model, cached.adapter, data, 2, cache_device="cpu"), "cpu"),
        (LossScorer(default.model, default.adapter, data, 2), device),
    ):
        np.testing.assert_allclose(scorer.losses(["layers.1"]), expected_losses(default, data), atol=1e-6)
        tensors = [h for batch in scorer._inputs for h in batch]
        tensors += [v for batch in scorer._kwargs for kw in batch for v in _tensors(kw)]
        assert tensors and {t.device.type for t in tensors} == {where}


def expected_losses(pruner: BlockPruner, data: CalibrationData) -> np.ndarray:
    return LossScorer(pruner.model, pruner.adapter, data, 4).losses(["layers.1"])


def _tensors(obj: object) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [t for o in obj for t in _tensors(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _tensors(o)]
    return []
