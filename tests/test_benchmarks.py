"""The cost benchmarks run end to end at their small scales: every phase is timed, the chosen
layers are gone, decoding made its tokens, and the cost model is fitted from real runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("init", "decode_dense", "calibrate", "select", "surgery", "decode_pruned")


def bench(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_gpu_benchmark_small_scale(tmp_path):
    out = tmp_path / "gpu.json"
    proc = bench("gpu.py", "--scale", "small", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(out.read_text())
    remove = int(results["settings"]["remove"])
    new_tokens = int(results["settings"]["new_tokens"])
    assert set(results["models"]) == {"llama-3.1-8b", "qwen3-8b", "qwen3-moe-15b"}
    for name, r in results["models"].items():
        assert set(r["seconds"]) == set(PHASES) == set(r["peak_gib"]), name
        assert all(s > 0 for s in r["seconds"].values()), (name, r["seconds"])
        assert len(r["removed"]) == remove
        assert r["layers_pruned"] == r["layers_dense"] - remove == r["shape"]["num_hidden_layers"] - remove
        assert r["forward_passes"] > 1 and r["forward_passes_per_s"] > 0
        decode = r["decode"]
        assert decode["dense_tokens"] == decode["pruned_tokens"] == new_tokens
        assert decode["pruned_vs_dense"] > 0
    assert name in proc.stdout and "pruned tok/s" in proc.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="the full scale runs where CUDA is")
def test_gpu_benchmark_full_scale_needs_cuda():
    proc = bench("gpu.py", "--models", "qwen3-8b")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "gpu.py: no CUDA device here; run the CPU check with --scale small"
    ]


def test_scaling_benchmark_quick(tmp_path):
    out = tmp_path / "scaling.json"
    proc = bench("scaling.py", "--quick", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(out.read_text())
    rows = results["rows"]
    assert [r["sweep"] for r in rows] == ["size", "tokens", "depth"]
    for r in rows:
        assert len(r["removed"]) == r["remove"]
        assert r["tokens"] == r["samples"] * r["seq_len"]
        assert r["seconds"]["select"] > 0 and r["forward_equivalents"] > 1 and r["head_evaluations"] >= 1
        rss = r["rss_mib"]
        assert rss["peak"] >= rss["model"] >= rss["start"] > 0
    assert rows[0]["tokens"] * 2 == rows[1]["tokens"]  # the calibration sweep doubled the tokens
    assert rows[2]["layers"] > rows[0]["layers"]
    model = results["model"]
    assert model["a_seconds_per_param_token"] > 0
    extrapolated = results["extrapolated"]
    assert {e["model"] for e in extrapolated} == {"Llama-3.1-8B", "Llama-3.1-70B"}
    for e in extrapolated:
        assert e["total_gib"] == pytest.approx(e["weights_gib"] + e["cache_gib"] + e["work_gib"], abs=0.2)
    assert "EXTRAPOLATED" in proc.stdout
