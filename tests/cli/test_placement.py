"""The placement flags (--device, --dtype, --device-map, --max-memory, --cache-device) on every
command that loads a model, and the memory estimate printed (or refused) before weights load."""

from __future__ import annotations

import shutil

import pytest
import torch
from conftest import tiny_config
from helpers import CAL, assert_user_error, run
from safetensors.torch import load_file

from optimum_blockprune.model.memory import check_memory, estimate_memory

BF16 = ("--device", "cpu", "--dtype", "bfloat16")


def floating_dtypes(folder) -> set[torch.dtype]:
    """The dtypes of every floating tensor in a saved folder's weights (not its energy files)."""
    files = sorted(folder.glob("model*.safetensors"))
    assert files
    return {t.dtype for f in files for t in load_file(f).values() if t.is_floating_point()}


def test_estimate_matches_a_hand_computation():
    # 6 layers, hidden 32, MLP 64, 4 heads (head 8), 2 KV heads, vocab 300, untied embeddings
    per_layer = 32 * 32 * 2 + 32 * 16 * 2 + 3 * 32 * 64 + 2 * 32  # q, o; k, v; gate, up, down; 2 norms
    params = 2 * 300 * 32 + 6 * per_layer + 32
    estimate = estimate_memory(
        tiny_config(), torch.bfloat16, "cpu", cache_device="cpu", num_samples=4, seq_len=16, batch_size=2
    )
    parts = {p.name: p.bytes for p in estimate.parts}
    assert parts == {
        "weights": params * 2,
        "activation cache": 6 * 4 * 16 * 32 * 2,
        "work": 2 * 16 * (64 + 300) * 4,
    }
    assert {p.device for p in estimate.parts} == {"cpu"}
    line = check_memory(estimate, {"cpu": "1GiB"}).line()
    assert line.startswith("memory: weights 146.3 KiB (bfloat16 on cpu) + activation cache 24.0 KiB (on cpu)")
    assert line.endswith("+ work 45.5 KiB (on cpu) = 215.8 KiB; cpu has 1.0 GiB free")


def test_prune_then_heal_save_bfloat16_weights(tmp_path, tiny_model_dir, text_file):
    pruned, healed = tmp_path / "pruned", tmp_path / "healed"
    proc = run(
        "prune", "-m", str(tiny_model_dir), "--calibration", str(text_file), *CAL, "--remove", "2",
        "--top-k", "2", "--no-report", "-o", str(pruned), *BF16, "--cache-device", "cpu",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "(bfloat16 on cpu) + activation cache" in proc.stdout
    assert floating_dtypes(pruned) == {torch.bfloat16}
    proc = run(
        "heal", "-m", str(pruned), "--data", str(text_file), "--max-steps", "1", "--batch-size", "2",
        "--seq-len", "16", "--lora-r", "2", "--heldout-samples", "0", "--save-steps", "0",
        "-o", str(healed), *BF16,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert floating_dtypes(healed) == {torch.bfloat16}


@pytest.mark.parametrize("dtype", [("--dtype", "bfloat16"), ()], ids=["bfloat16", "auto"])
def test_apply_saves_the_dtype_asked_for_auto_is_float32(tmp_path, tiny_model_dir, text_file, dtype):
    out = tmp_path / "out"
    proc = run(
        "apply", "-m", str(tiny_model_dir), "--blocks", "layers.2", "--calibration", str(text_file), *CAL,
        "--no-report", "-o", str(out), "--device", "cpu", *dtype,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert floating_dtypes(out) == {torch.bfloat16 if dtype else torch.float32}


def test_analyze_and_eval_run_in_bfloat16(tmp_path, tiny_model_dir, text_file):
    from optimum_blockprune.energy.model import EnergyModel

    fields = {}
    for name, dtype in (("bf16", BF16), ("auto", ())):
        out = tmp_path / f"{name}.safetensors"
        proc = run(
            "analyze", "-m", str(tiny_model_dir), "--calibration", str(text_file), *CAL,
            "--energy", "additive", "-o", str(out), *dtype,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert f"({'bfloat16' if dtype else 'float32'} on cpu)" in proc.stdout
        fields[name] = EnergyModel.load(out).fields
    assert fields["bf16"].shape == fields["auto"].shape and (fields["bf16"] != fields["auto"]).any()
    ppl = {}
    for name, dtype in (("bf16", BF16), ("auto", ())):
        proc = run("eval", "-m", str(tiny_model_dir), "--data", str(text_file), "--seq-len", "16", *dtype)
        assert proc.returncode == 0, proc.stderr
        assert f"({'bfloat16' if dtype else 'float32'} on cpu)" in proc.stdout
        ppl[name] = next(line for line in proc.stdout.splitlines() if line.startswith("perplexity"))
    assert ppl["bf16"] != ppl["auto"]  # the weights really were rounded


def test_the_memory_check_refuses_before_weights_load(tmp_path, tiny_model_dir, text_file):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    for weights in model.glob("*.safetensors"):
        weights.write_bytes(b"not weights")  # loading them would fail with another message
    out = tmp_path / "out"
    proc = run(
        "prune", "-m", str(model), "--calibration", str(text_file), *CAL, "--remove", "1",
        "-o", str(out), "--max-memory", "cpu=100KiB",
    )  # fmt: skip
    assert_user_error(proc, "cpu has 100.0 KiB free: does not fit on cpu; use fewer --num-samples")
    assert "memory: weights 292.6 KiB (float32 on cpu)" in proc.stderr
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_devices_and_conflicting_flags_are_one_line_errors(tmp_path, tiny_model_dir):
    base = ("eval", "-m", str(tiny_model_dir))
    assert_user_error(run(*base, "--device", "cuda"), "--device cuda: this machine has no cuda device")
    assert_user_error(run(*base, "--device", "cpu", "--device-map", "auto"), "--device and --device-map")
    proc = run(
        "prune", "-m", str(tiny_model_dir), "--remove", "1", "-o", str(tmp_path / "o"), "--cache-device", "cuda:1",
    )  # fmt: skip
    assert_user_error(proc, "--cache-device cuda:1")
