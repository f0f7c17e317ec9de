"""Time and memory of choosing and removing 8 layers of real-shape 8B models on one GPU.

No download: each model is built from a config written here (Llama-3.1-8B, Qwen3-8B, and a
Qwen3-MoE of Qwen3-30B-A3B's layer shape at 24 of its 48 layers) with random weights, directly
on the device in bfloat16. Calibration is 32 x 128 random tokens. Per model, in this order:

* ``init``: build the model on the device;
* ``decode_dense``: greedy decoding, batch 1, 128 new tokens with the KV cache;
* ``calibrate``: the dense pass that records every layer's input (``LossScorer``);
* ``select``: ``BlockPruner.select`` with the default settings (``energy`` method, ``recentred``
  energy, top-10 rerank) for 8 layers;
* ``surgery``: ``adapter.remove_blocks``;
* ``decode_pruned``: the same decoding on the pruned model.

Prints each phase's seconds and peak memory (``torch.cuda.max_memory_allocated``, reset before
each phase; on CPU the process's peak RSS so far), forward-pass equivalents per second and the
pruned model's decode speed against the dense one's, and writes JSON.

    python benchmarks/gpu.py                       # one 80 GB GPU, about 5 minutes
    python benchmarks/gpu.py --models qwen3-8b      # one shape
    python benchmarks/gpu.py --scale small          # the same code on CPU, tiny shapes (< 1 minute)
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import resource
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from optimum_blockprune.config import BlockPruneConfig
from optimum_blockprune.data.calibration import CalibrationData
from optimum_blockprune.energy.scoring import LossScorer
from optimum_blockprune.model.adapters.base import count_params
from optimum_blockprune.model.registry import get_adapter
from optimum_blockprune.pruner import BlockPruner

HERE = Path(__file__).resolve().parent
GIB = 2**30

#: Full-size configs (fields of the published config.json files that set the compute shape).
SHAPES: dict[str, dict[str, Any]] = {
    "llama-3.1-8b": dict(
        model_type="llama",
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
        max_position_embeddings=8192,
        tie_word_embeddings=False,
    ),
    "qwen3-8b": dict(
        model_type="qwen3",
        hidden_size=4096,
        intermediate_size=12288,
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        vocab_size=151936,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        max_position_embeddings=8192,
        tie_word_embeddings=False,
    ),
    # Qwen3-30B-A3B's layers (128 experts, 8 active) at 24 of its 48 layers: 15.6B parameters.
    "qwen3-moe-15b": dict(
        model_type="qwen3_moe",
        hidden_size=2048,
        intermediate_size=6144,
        moe_intermediate_size=768,
        num_experts=128,
        num_experts_per_tok=8,
        norm_topk_prob=True,
        num_hidden_layers=24,
        num_attention_heads=32,
        num_key_value_heads=4,
        head_dim=128,
        vocab_size=151936,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        max_position_embeddings=8192,
        tie_word_embeddings=False,
    ),
}


@dataclass(frozen=True)
class Scale:
    """How big a run is: shapes, removed layers, calibration, decoding, dtype."""

    name: str
    shrink: Callable[[dict[str, Any]], dict[str, Any]]
    remove: int
    num_samples: int
    seq_len: int
    new_tokens: int
    dtype: torch.dtype


def small(shape: dict[str, Any]) -> dict[str, Any]:
    """The shape shrunk for a CPU check: width and vocabulary / 32, heads / 8, layers / 2,
    experts / 16 (active experts / 4)."""
    out = dict(shape)
    for key in ("hidden_size", "intermediate_size", "moe_intermediate_size", "vocab_size"):
        if key in out:
            out[key] = max(8, out[key] // 32)
    out["num_hidden_layers"] //= 2
    out["num_attention_heads"] //= 8
    out["num_key_value_heads"] = max(1, out["num_key_value_heads"] // 8)
    if "head_dim" in out:
        out["head_dim"] //= 4
    if "num_experts" in out:
        out["num_experts"] //= 16
        out["num_experts_per_tok"] //= 4
    return out


SCALES = {
    "full": Scale("full", dict, 8, 32, 128, 128, torch.bfloat16),
    "small": Scale("small", small, 4, 8, 64, 16, torch.float32),
}


class Phases:
    """Wall time and peak memory of each named phase of one model's run: ``with phases("init"):``."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = {}
        self.peak_gib: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        yield
        if cuda:
            torch.cuda.synchronize()
        self.seconds[name] = round(time.perf_counter() - t0, 5)
        if cuda:
            self.peak_gib[name] = round(torch.cuda.max_memory_allocated() / GIB, 2)
        else:  # the process's peak so far (ru_maxrss is KiB on Linux)
            self.peak_gib[name] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
        print(f"  {name:<14} {self.seconds[name]:8.2f} s  peak {self.peak_gib[name]:6.2f} GiB", flush=True)


def free(device: torch.device) -> None:
    """Return freed memory (so the next phase's or model's peak is its own)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def build_model(shape: dict[str, Any], dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
    """Random weights of ``shape``, allocated and initialised on ``device`` in ``dtype``."""
    kwargs = dict(shape)
    config = AutoConfig.for_model(kwargs.pop("model_type"), **kwargs)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


@torch.no_grad()
def decode(model: torch.nn.Module, prompt: torch.Tensor, new_tokens: int) -> tuple[int, float]:
    """Greedy decoding of exactly ``new_tokens`` tokens with the KV cache (after a short warm-up):
    the tokens made and tokens per second."""
    options = dict(do_sample=False, use_cache=True, pad_token_id=0)
    model.generate(prompt, max_new_tokens=4, min_new_tokens=4, **options)
    if prompt.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **options)
    if prompt.device.type == "cuda":
        torch.cuda.synchronize()
    made = out.shape[1] - prompt.shape[1]
    return made, made / (time.perf_counter() - t0)


def run_model(name: str, scale: Scale, device: torch.device, seed: int = 0) -> dict[str, Any]:
    """Every phase of one shape; what the JSON records about it."""
    shape = scale.shrink(SHAPES[name])
    print(f"{name} ({scale.name}): {shape}", flush=True)
    torch.manual_seed(seed)
    phases = Phases(device)
    with phases("init"):
        model = build_model(shape, scale.dtype, device)
    adapter = get_adapter(model)
    params = count_params(model)
    layers_before = len(adapter.decoder_layers(model))
    ids = torch.randint(0, shape["vocab_size"], (scale.num_samples, scale.seq_len), device=device)
    data = CalibrationData(ids, torch.ones_like(ids), {"source": "random tokens"})
    prompt = ids[:1, :32]
    with phases("decode_dense"):
        dense_made, dense_tps = decode(model, prompt, scale.new_tokens)
    config = BlockPruneConfig(remove=scale.remove, num_samples=scale.num_samples, seq_len=scale.seq_len)
    pruner = BlockPruner(model, None, adapter, name)
    with phases("calibrate"):
        scorer = LossScorer(model, adapter, data, config.batch_size)
    with phases("select"):
        selection = pruner.select(config, scorer=scorer, calibration=data)
    del scorer  # its cache of every layer's input
    free(device)
    with phases("surgery"):
        adapter.remove_blocks(model, selection.removed)
    with phases("decode_pruned"):
        pruned_made, pruned_tps = decode(model, prompt, scale.new_tokens)
    forward = selection.cost["forward_passes"]  # includes the calibrate pass
    choose_s = phases.seconds["calibrate"] + phases.seconds["select"]
    result = {
        "shape": shape,
        "dtype": str(scale.dtype).removeprefix("torch."),
        "parameters": params,
        "weights_gib": round(params * model.dtype.itemsize / GIB, 2),
        "layers_dense": layers_before,
        "layers_pruned": len(adapter.decoder_layers(model)),
        "removed": selection.removed,
        "calibration_tokens": data.num_tokens,
        "forward_passes": forward,
        "forward_passes_per_s": round(forward / choose_s, 2),
        "seconds": phases.seconds,
        "peak_gib": phases.peak_gib,
        "peak_gib_max": max(phases.peak_gib.values()),
        "decode": {
            "new_tokens": scale.new_tokens,
            "dense_tokens": dense_made,
            "pruned_tokens": pruned_made,
            "dense_tokens_per_s": round(dense_tps, 2),
            "pruned_tokens_per_s": round(pruned_tps, 2),
            "pruned_vs_dense": round(pruned_tps / dense_tps, 3),
        },
    }
    del model, pruner, selection
    free(device)
    return result


def billions(params: int) -> str:
    return f"{params / 1e9:.2f}B" if params >= 1e8 else f"{params / 1e6:.1f}M"


def print_table(results: dict[str, Any]) -> None:
    """One row per model: phase seconds, peak memory, choosing throughput, decode speed-up."""
    phases = ("init", "decode_dense", "calibrate", "select", "surgery", "decode_pruned")
    print(f"\n{results['device']} ({results['scale']} scale)")
    head = "".join(f"{p + ' s':>16}" for p in phases)
    print(
        f"{'model':<16}{'params':>9}{'layers':>9}{head}{'fwd eq':>8}{'fwd/s':>7}{'peak GiB':>10}"
        f"{'dense tok/s':>13}{'pruned tok/s':>14}{'ratio':>7}"
    )
    for name, r in results["models"].items():
        d = r["decode"]
        cells = "".join(f"{r['seconds'][p]:>16.2f}" for p in phases)
        print(
            f"{name:<16}{billions(r['parameters']):>9}{r['layers_dense']:>5}->{r['layers_pruned']:<3}{cells}"
            f"{r['forward_passes']:>8.1f}{r['forward_passes_per_s']:>7.2f}{r['peak_gib_max']:>10.2f}"
            f"{d['dense_tokens_per_s']:>13.1f}{d['pruned_tokens_per_s']:>14.1f}{d['pruned_vs_dense']:>6.2f}x"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scale", choices=tuple(SCALES), default="full", help="full (GPU) or small (CPU)")
    parser.add_argument("--models", default=",".join(SHAPES), help=f"comma-separated; of {', '.join(SHAPES)}")
    parser.add_argument(
        "--out", default=None, help="JSON path (default: results/gpu.json, gpu-cpu-small.json)"
    )
    args = parser.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in SHAPES]
    if unknown or not args.models:
        parser.error(
            f"--models: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(SHAPES)}"
        )
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cuda = torch.cuda.is_available()
    if args.scale == "full" and not cuda:
        sys.exit("gpu.py: no CUDA device here; run the CPU check with --scale small")
    device = torch.device("cuda" if cuda else "cpu")
    if not cuda:  # tiny matrices: threads gain nothing, and on a shared machine they wait on each other
        torch.set_num_threads(1)
    scale = SCALES[args.scale]
    default_name = "gpu.json" if cuda and args.scale == "full" else f"gpu-{device.type}-{args.scale}.json"
    out = Path(args.out or HERE / "results" / default_name)
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
        "scale": args.scale,
        "settings": {k: str(v) for k, v in vars(scale).items() if k != "shrink"},
        "torch": torch.__version__,
        "models": {},
    }
    t0 = time.perf_counter()
    for name in args.models:
        results["models"][name] = run_model(name, scale, device)
    results["seconds"] = round(time.perf_counter() - t0, 1)
    print_table(results)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out} ({results['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
