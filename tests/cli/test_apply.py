"""Applying a selection writes exactly what ``prune`` writes for the same blocks: ``apply``,
``prune --blocks``, ``solve --apply`` and ``prune --energy-file``, through the real ``optimum-cli``."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import CAL, run

from optimum_blockprune import BlockPruner, load_pruned

IDS = torch.tensor([[5, 17, 42, 99, 7, 3, 250, 11]])


def _logits(folder) -> torch.Tensor:
    with torch.no_grad():
        return load_pruned(folder)(input_ids=IDS).logits


def _removed(folder) -> list[str]:
    return json.loads((folder / "blockprune_config.json").read_text())["removed_blocks"]


def _prune(tmp_path, model, text_file, *args: str):
    out = tmp_path / "pruned"
    cal = ["--calibration", str(text_file), *CAL]
    proc = run("prune", "-m", str(model), *cal, "--energy", "additive", *args, "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    return out, cal


@pytest.mark.parametrize("granularity,remove", [("layer", "2"), ("sublayer", "attn=1,mlp=1")])
def test_apply_reproduces_prune_bit_for_bit(tmp_path, tiny_model_dir, text_file, granularity, remove):
    pruned, cal = _prune(
        tmp_path, tiny_model_dir, text_file, "--granularity", granularity, "--remove", remove
    )
    blocks = _removed(pruned)
    applied = tmp_path / "applied"
    proc = run("apply", "-m", str(tiny_model_dir), "--blocks", ",".join(blocks), *cal, "-o", str(applied))
    assert proc.returncode == 0, proc.stderr
    assert _removed(applied) == blocks
    assert torch.equal(_logits(pruned), _logits(applied))
    for name in ("config.json", "model.safetensors", "blockprune_report.json", "README.md", "tokenizer.json"):
        assert (applied / name).is_file(), name
    report = json.loads((applied / "blockprune_report.json").read_text())
    assert report["method"] == "given" and report["removed"] == blocks
    again = tmp_path / "again"
    proc = run("prune", "-m", str(tiny_model_dir), "--blocks", ",".join(blocks), *cal, "-o", str(again))
    assert proc.returncode == 0, proc.stderr
    assert torch.equal(_logits(pruned), _logits(again))


def test_energy_file_and_solve_apply_reuse_an_analysis(tmp_path, tiny_model_dir, text_file):
    energy = tmp_path / "e.safetensors"
    cal = ["--calibration", str(text_file), *CAL]
    proc = run("analyze", "-m", str(tiny_model_dir), *cal, "--energy", "additive", "-o", str(energy))
    assert proc.returncode == 0, proc.stderr
    from_file = tmp_path / "from-file"
    proc = run(
        "prune", "-m", str(tiny_model_dir), *cal, "-e", str(energy), "--remove", "2", "-o", str(from_file)
    )
    assert proc.returncode == 0, proc.stderr
    assert "energy model" not in proc.stderr  # no new analysis
    solved = tmp_path / "solved"
    args = ["-e", str(energy), "--remove", "2", "--top-k", "3", "--apply", "-m", str(tiny_model_dir)]
    proc = run("solve", *args, "--calibration", str(text_file), *CAL, "-o", str(solved))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].split() == ["rank", "energy", "removed", "blocks"]
    assert "solver exhaustive" in proc.stdout and "{" not in proc.stdout
    rank0 = proc.stdout.splitlines()[1].split()[2:]
    assert _removed(solved) == rank0
    assert len(_removed(from_file)) == 2


def test_python_remove_matches_prune(tmp_path, tiny_model_dir, text_file):
    from optimum_blockprune import BlockPruneConfig

    config = BlockPruneConfig(
        remove=2, energy="additive", calibration=str(text_file), num_samples=4, seq_len=16
    )
    first = BlockPruner.from_pretrained(tiny_model_dir).prune(config, tmp_path / "a")
    cal = BlockPruneConfig(remove=1, calibration=str(text_file), num_samples=4, seq_len=16)
    second = BlockPruner.from_pretrained(tiny_model_dir).remove(first.removed, tmp_path / "b", config=cal)
    assert second.removed == first.removed
    assert torch.equal(_logits(tmp_path / "a"), _logits(tmp_path / "b"))
