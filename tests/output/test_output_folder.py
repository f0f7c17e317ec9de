"""The output folder: --overwrite replaces only files this tool writes and never the input model's
folder; a failed write leaves the old folder; everything written gets the umask's permissions."""

from __future__ import annotations

import contextlib
import json
import os
import stat
from pathlib import Path

import pytest
from conftest import tiny_model
from helpers import CAL, run

from optimum_blockprune.config import BlockPruneConfig
from optimum_blockprune.data.atomic import atomic_output_dir, check_output_dir
from optimum_blockprune.errors import BlockPruneError
from optimum_blockprune.output.layout import is_tool_file
from optimum_blockprune.output.saving import check_output, save_pruned


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _save(model, tokenizer, out: Path, **kw) -> Path:
    config = BlockPruneConfig(remove=1, removed_blocks=["layers.1"])
    return save_pruned(model, tokenizer, config, {"removed": ["layers.1"]}, out, **kw)


@pytest.fixture(scope="module")
def pruned_022(tmp_path_factory, tokenizer, corpus):
    """A folder written by ``BlockPruner.prune`` (report and energy files included) under umask 022."""
    from optimum_blockprune.pruner import BlockPruner

    root = tmp_path_factory.mktemp("modes")
    text = root / "cal.txt"
    text.write_text("\n\n".join(corpus))
    config = BlockPruneConfig(
        remove=1, energy="additive", calibration=str(text), num_samples=4, seq_len=16, batch_size=4
    )
    with umask(0o022):
        BlockPruner.from_pretrained(tiny_model("llama", 4), tokenizer=tokenizer).prune(config, root / "out")
    return root / "out"


# ------------------------------------------------------------------------------------------- overwrite
def test_overwrite_refuses_a_folder_with_foreign_files_and_keeps_them(tmp_path, tokenizer):
    out = _save(tiny_model("llama", 3), tokenizer, tmp_path / "out")
    (out / "notes.txt").write_text("mine")
    (out / "data").mkdir()
    before = _snapshot(out)
    for check in (
        lambda: check_output(out, overwrite=True),
        lambda: _save(tiny_model("llama", 3, seed=1), tokenizer, out, overwrite=True),
    ):
        with pytest.raises(BlockPruneError) as err:
            check()
        message = str(err.value)
        assert "data, notes.txt" in message and "move them or choose another --output" in message
        assert "\n" not in message
    assert _snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary folder left


def test_overwrite_replaces_the_tools_own_files(tmp_path, tokenizer):
    out = _save(tiny_model("llama", 3), tokenizer, tmp_path / "out")
    (out / "blockprune_energy.round2.safetensors").write_bytes(b"stale")  # an older run's file
    (out / "checkpoint-5").mkdir()
    first = (out / "model.safetensors").read_bytes()
    _save(tiny_model("llama", 3, seed=1), tokenizer, out, overwrite=True)
    assert (out / "model.safetensors").read_bytes() != first
    assert not (out / "blockprune_energy.round2.safetensors").exists()
    assert not (out / "checkpoint-5").exists()
    with pytest.raises(BlockPruneError, match="not empty; pass --overwrite"):
        _save(tiny_model("llama", 3), tokenizer, out)


def test_foreign_files_are_named_up_to_three(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    for name in ("a.txt", "b.txt", "c.txt", "d.txt", "e.txt"):
        (tmp_path / name).write_text("x")
    with pytest.raises(BlockPruneError, match=r"\(a.txt, b.txt, c.txt and 2 more\)"):
        check_output_dir(tmp_path, True, owned=is_tool_file)
    assert is_tool_file("model-00001-of-00002.safetensors") and not is_tool_file("train.py")


def test_never_writes_into_the_input_models_folder(tmp_path, tokenizer, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    before = _snapshot(tiny_model_dir)
    link = tmp_path / "link"
    link.symlink_to(tiny_model_dir)
    for target in (tiny_model_dir, link, tiny_model_dir / "sub", tmp_path):
        with pytest.raises(BlockPruneError, match="input model's folder .*; choose another --output"):
            check_output(target, True, source=tiny_model_dir)
        with pytest.raises(BlockPruneError, match="input model's folder"):
            _save(model, tokenizer, target, overwrite=True)  # the source is where the model came from
    assert _snapshot(tiny_model_dir) == before and not (tiny_model_dir / "sub").exists()


def test_a_failed_write_leaves_the_old_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text("old")
    with pytest.raises(RuntimeError), atomic_output_dir(out, True, owned=is_tool_file) as tmp:
        (tmp / "config.json").write_text("new")
        raise RuntimeError("killed")
    assert (out / "config.json").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    with pytest.raises(BlockPruneError, match="did not write"), atomic_output_dir(out, True):
        pass  # without a list of its own files nothing is replaced


def test_cli_overwrite_keeps_a_foreign_file(tmp_path, tiny_model_dir, text_file):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    args = ["--calibration", str(text_file), *CAL, "--remove", "1", "--energy", "additive"]
    proc = run("prune", "--model", str(tiny_model_dir), *args, "--output", str(out), "--overwrite")
    assert proc.returncode == 2 and "keep.txt" in proc.stderr and "Traceback" not in proc.stderr
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "precious"


# ------------------------------------------------------------------------------------------- modes
def test_pruned_folder_is_0755_and_its_files_0644_under_umask_022(pruned_022):
    assert _mode(pruned_022) == 0o755
    entries = list(pruned_022.rglob("*"))
    names = {p.name for p in entries}
    assert {"model.safetensors", "blockprune_report.json", "blockprune_energy.safetensors"} <= names
    for path in entries:
        assert _mode(path) == (0o755 if path.is_dir() else 0o644), path


def test_energy_and_solve_json_files_are_0644_under_umask_022(pruned_022, tmp_path):
    from optimum_blockprune.energy.model import EnergyModel

    energy = EnergyModel.load(pruned_022 / "blockprune_energy.safetensors")
    with umask(0o022):
        saved = energy.save(tmp_path / "energy.safetensors")
        proc = run("solve", "--energy-file", str(saved), "--remove", "1", "--json", str(tmp_path / "c.json"))
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "c.json").read_text())["candidates"]
    assert _mode(Path(saved)) == 0o644 and _mode(tmp_path / "c.json") == 0o644


def test_modes_follow_a_private_umask(tmp_path, tokenizer):
    with umask(0o077):
        out = _save(tiny_model("llama", 3), tokenizer, tmp_path / "out")
    assert _mode(out) == 0o700 and all(_mode(p) == 0o600 for p in out.iterdir() if p.is_file())
