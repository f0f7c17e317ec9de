"""How the time and memory of choosing grow with model size, calibration size and removed blocks.

Random-weight models of SmolLM2's shapes (135M, 360M, 1.7B; built from configs written here,
float32 on CPU) each choose layers with the default method (``energy``: ``recentred`` energy,
top-10 rerank) from random calibration tokens, then lose them (surgery; the folder is not saved).
Every measurement runs in its own process (one torch thread unless ``--threads``), so its peak
RSS is its own. Four sweeps:

* ``size``: 135M and 360M at 4 x 64 tokens removing 8 layers, 1.7B at 2 x 64 removing 4;
* ``tokens``: 135M at 2, 4 and 8 samples x 64 tokens, removing 4;
* ``remove``: 135M at 4 x 64 tokens removing 2 and 6 (4 and 8 are in the sweeps above);
* ``depth``: a narrow shape (hidden 64) at 16 to 80 layers: how the work in forward-pass
  equivalents grows with the number of layers (it does not depend on the width).

Then fits calibrate + select seconds = a * T * (P_decoder * F + P_head * E) (T: calibration
tokens; F: forward-pass equivalents of decoder work; E: passes through the LM head, one per
scored configuration), F and E = c0 + cN * layers + cM * removed, and memory = weights + the
cache of every layer's input (layers * T * hidden * bytes) + one batch's work, and extrapolates
(marked as such) to Llama-3.1-8B and Llama-3.1-70B on a GPU.

    python benchmarks/scaling.py           # the real measurement, about 10 minutes on one core
    python benchmarks/scaling.py --quick   # tiny shapes, seconds (what the tests run)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
MIB = 2**20

SMOLLM2 = dict(model_type="llama", vocab_size=49152, tie_word_embeddings=True, rms_norm_eps=1e-5)
#: SmolLM2's published shapes (the 135M one is the bundled demo model's config.json).
SHAPES: dict[str, dict[str, Any]] = {
    "135M": dict(
        SMOLLM2,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        rope_theta=100000.0,
    ),
    "360M": dict(
        SMOLLM2,
        hidden_size=960,
        intermediate_size=2560,
        num_hidden_layers=32,
        num_attention_heads=15,
        num_key_value_heads=5,
        rope_theta=100000.0,
    ),
    "1.7B": dict(
        SMOLLM2,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=24,
        num_attention_heads=32,
        num_key_value_heads=32,
        rope_theta=130000.0,
    ),
}
NARROW = dict(
    SMOLLM2,
    vocab_size=2048,
    hidden_size=64,
    intermediate_size=256,
    num_attention_heads=4,
    num_key_value_heads=2,
)
QUICK = dict(SMOLLM2, vocab_size=512, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2)

#: Targets of the extrapolation (published shapes; bfloat16 on one GPU).
TARGETS: dict[str, dict[str, Any]] = {
    "Llama-3.1-8B": dict(params=8.03e9, layers=32, hidden=4096, vocab=128256, inter=14336),
    "Llama-3.1-70B": dict(params=70.55e9, layers=80, hidden=8192, vocab=128256, inter=28672),
}
CALIBRATIONS = ((32, 128), (128, 2048))


def run(
    sweep: str, shape: dict[str, Any], samples: int, seq_len: int, remove: int, threads: int
) -> dict[str, Any]:
    """One measurement in a fresh process: what :func:`worker` reports, with the settings."""
    spec = dict(sweep=sweep, shape=shape, samples=samples, seq_len=seq_len, remove=remove)
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)],
        capture_output=True,
        text=True,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(threads)},
    )
    if proc.returncode:
        sys.exit(f"scaling.py: a measurement failed:\n{proc.stderr[-3000:]}")
    return {**spec, **json.loads(proc.stdout.strip().splitlines()[-1])}


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MIB


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Build the model, calibrate (the dense pass that caches every layer's input), select, and
    remove the chosen layers; seconds of each phase and memory."""
    import torch
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING, AutoConfig

    from optimum_blockprune.config import BlockPruneConfig
    from optimum_blockprune.data.calibration import CalibrationData
    from optimum_blockprune.energy.scoring import LossScorer
    from optimum_blockprune.model.registry import get_adapter
    from optimum_blockprune.pruner import BlockPruner

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    torch.manual_seed(0)
    shape = dict(spec["shape"])
    config = AutoConfig.for_model(shape.pop("model_type"), **shape)
    model_class = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]  # imported here, not timed
    rss_start = rss_mib()
    t0 = time.perf_counter()
    model = model_class(config).eval()
    seconds = {"init": time.perf_counter() - t0}
    rss_model = rss_mib()
    params = sum(p.numel() for p in model.parameters())  # a tied head is counted once
    head = model.get_output_embeddings()
    head_params = head.weight.numel()
    embedding = 0 if shape["tie_word_embeddings"] else model.get_input_embeddings().weight.numel()
    head_calls = [0]  # one per scored configuration and batch (memoised ones are not recomputed)
    head.register_forward_hook(lambda *_: head_calls.__setitem__(0, head_calls[0] + 1))
    adapter = get_adapter(model)
    ids = torch.randint(0, shape["vocab_size"], (spec["samples"], spec["seq_len"]))
    data = CalibrationData(ids, torch.ones_like(ids), {"source": "random tokens"})
    pruner = BlockPruner(model, None, adapter, "random")
    settings = BlockPruneConfig(remove=spec["remove"], num_samples=spec["samples"], seq_len=spec["seq_len"])
    t0 = time.perf_counter()
    scorer = LossScorer(model, adapter, data, settings.batch_size)
    seconds["calibrate"] = time.perf_counter() - t0
    rss_cache = rss_mib()
    t0 = time.perf_counter()
    selection = pruner.select(settings, scorer=scorer, calibration=data)
    seconds["select"] = time.perf_counter() - t0
    del scorer
    t0 = time.perf_counter()
    adapter.remove_blocks(model, selection.removed)
    seconds["surgery"] = time.perf_counter() - t0
    return {
        "params": params,
        "decoder_params": params - head_params - embedding,
        "head_params": head_params,
        "layers": shape["num_hidden_layers"],
        "tokens": data.num_tokens,
        "batch_size": settings.batch_size,
        "removed": selection.removed,
        "forward_equivalents": selection.cost["forward_passes"],
        "head_evaluations": head_calls[0] / -(-spec["samples"] // settings.batch_size),
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "rss_mib": {
            "start": round(rss_start),
            "model": round(rss_model),
            "cache": round(rss_cache),
            "peak": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        },
        "threads": torch.get_num_threads(),
    }


def plan(quick: bool) -> list[tuple[str, dict[str, Any], int, int, int]]:
    """(sweep, shape, samples, seq_len, remove) of every measurement."""
    if quick:
        tiny = dict(QUICK, hidden_size=32, num_hidden_layers=6)
        return [
            ("size", tiny, 4, 32, 2),
            ("tokens", tiny, 8, 32, 2),
            ("depth", dict(tiny, num_hidden_layers=8), 4, 32, 2),
        ]
    small = SHAPES["135M"]
    return [
        ("size", small, 4, 64, 8),
        ("size", SHAPES["360M"], 4, 64, 8),
        ("size", SHAPES["1.7B"], 2, 64, 4),
        *[("tokens", small, n, 64, 4) for n in (2, 4, 8)],
        *[("remove", small, 4, 64, m) for m in (2, 6)],
        *[("depth", dict(NARROW, num_hidden_layers=n), 4, 64, 8) for n in (16, 32, 48, 80)],
    ]


def work(r: dict[str, Any]) -> float:
    """Parameter-tokens multiplied while choosing: decoder work F plus one head pass per scored
    configuration, over the calibration tokens."""
    return r["tokens"] * (
        r["decoder_params"] * r["forward_equivalents"] + r["head_params"] * r["head_evaluations"]
    )


def fit(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The cost model's constants, least squares over the measurements."""
    timed = [r for r in rows if r["sweep"] != "depth"]  # narrow shapes: overheads, not multiply work
    x = np.array([work(r) for r in timed])
    t = np.array([r["seconds"]["calibrate"] + r["seconds"]["select"] for r in timed])
    a = float(x @ t / (x @ x))
    for r in rows:
        r["a"] = (r["seconds"]["calibrate"] + r["seconds"]["select"]) / work(r)
        r["predicted_s"] = a * work(r)
        r["memory_formula_mib"] = memory_mib(r)
        r["memory_measured_mib"] = r["rss_mib"]["peak"] - r["rss_mib"]["start"]
    X = np.array([[1.0, r["layers"], len(r["removed"])] for r in rows])
    growth = {}
    for key in ("forward_equivalents", "head_evaluations"):
        c, *_ = np.linalg.lstsq(X, np.array([r[key] for r in rows]), rcond=None)
        growth[key] = {"c0": float(c[0]), "per_layer": float(c[1]), "per_removed": float(c[2])}
    return {
        "a_seconds_per_param_token": a,
        "effective_gflops": 2 / a / 1e9,
        "a_spread": [min(r["a"] for r in timed), max(r["a"] for r in timed)],
        **growth,
    }


def memory_mib(r: dict[str, Any], dtype_bytes: int = 4) -> float:
    """Weights + cached layer inputs + one batch's work (logits in float32 three times over, the
    MLP's three intermediate activations)."""
    s = r["shape"]
    batch_tokens = min(r["batch_size"], r["samples"]) * r["seq_len"]
    weights = r["params"] * dtype_bytes
    cache = s["num_hidden_layers"] * r["tokens"] * s["hidden_size"] * dtype_bytes
    work = batch_tokens * (3 * s["vocab_size"] * 4 + 3 * s["intermediate_size"] * dtype_bytes)
    return (weights + cache + work) / MIB


def extrapolate(model: dict[str, Any], gpu_tflops: float, removed: int = 8) -> list[dict[str, Any]]:
    """EXTRAPOLATED selection time and memory of the ``TARGETS`` on a GPU (bfloat16)."""

    def grown(key: str, layers: int) -> float:
        c = model[key]
        return c["c0"] + c["per_layer"] * layers + c["per_removed"] * removed

    out = []
    for name, m in TARGETS.items():
        forward, heads = grown("forward_equivalents", m["layers"]), grown("head_evaluations", m["layers"])
        head = m["vocab"] * m["hidden"]
        decoder = m["params"] - 2 * head  # untied input embedding and head
        for samples, seq in CALIBRATIONS:
            tokens = samples * seq
            batch_tokens = min(8, samples) * seq
            cache = m["layers"] * tokens * m["hidden"] * 2
            work = batch_tokens * (3 * m["vocab"] * 4 + 3 * m["inter"] * 2)
            out.append(
                {
                    "model": name,
                    "calibration": f"{samples} x {seq}",
                    "removed": removed,
                    "forward_equivalents": round(forward, 1),
                    "head_evaluations": round(heads, 1),
                    "gpu_seconds": round(
                        2 * tokens * (decoder * forward + head * heads) / (gpu_tflops * 1e12), 1
                    ),
                    "weights_gib": round(m["params"] * 2 / 2**30, 1),
                    "cache_gib": round(cache / 2**30, 1),
                    "work_gib": round(work / 2**30, 1),
                    "total_gib": round((m["params"] * 2 + cache + work) / 2**30, 1),
                }
            )
    return out


def print_report(results: dict[str, Any]) -> None:
    print(f"\n{results['machine']}; float32, {results['rows'][0]['threads']} threads, one process per row")
    print(
        f"{'sweep':<8}{'shape':>26}{'P':>8}{'tokens':>8}{'M':>4}{'F':>8}{'E':>6}{'init s':>8}{'cal s':>7}"
        f"{'select s':>9}{'pred s':>8}{'a ns':>11}{'mem MiB':>9}{'formula':>9}"
    )
    for r in results["rows"]:
        s = r["shape"]
        label = f"h{s['hidden_size']} L{s['num_hidden_layers']} V{s['vocab_size']}"
        sec = r["seconds"]
        print(
            f"{r['sweep']:<8}{label:>26}{(r['decoder_params'] + r['head_params']) / 1e6:>7.0f}M{r['tokens']:>8}{len(r['removed']):>4}"
            f"{r['forward_equivalents']:>8.1f}{r['head_evaluations']:>6.1f}{sec['init']:>8.1f}{sec['calibrate']:>7.1f}{sec['select']:>9.1f}"
            f"{r['predicted_s']:>8.1f}{r['a'] * 1e9:>11.3f}{r['memory_measured_mib']:>9.0f}"
            f"{r['memory_formula_mib']:>9.0f}"
        )
    m = results["model"]
    lo, hi = m["a_spread"]
    print(
        f"\ncalibrate + select s ~ a * T * (P_decoder * F + P_head * E), a = "
        f"{m['a_seconds_per_param_token'] * 1e9:.3f} ns per parameter-token (runs: {lo * 1e9:.3f} to "
        f"{hi * 1e9:.3f}), i.e. {m['effective_gflops']:.1f} GFLOP/s effective"
    )
    for key, label in (
        ("forward_equivalents", "F (decoder forward passes)"),
        ("head_evaluations", "E (head passes)"),
    ):
        c = m[key]
        print(
            f"{label:<27} ~ {c['c0']:.1f} + {c['per_layer']:.2f} * layers + {c['per_removed']:.2f} * removed"
        )
    print(
        f"\nEXTRAPOLATED (not measured): one GPU at an assumed {results['gpu_tflops']:.0f} TFLOP/s of bfloat16 "
        "work, F from the fit above, memory = bf16 weights + cache + one batch of 8"
    )
    print(
        f"{'model':<15}{'calibration':>13}{'F':>7}{'E':>7}{'GPU s':>9}{'weights':>9}{'cache':>9}{'work':>7}{'GiB':>8}"
    )
    for e in results["extrapolated"]:
        print(
            f"{e['model']:<15}{e['calibration']:>13}{e['forward_equivalents']:>7.1f}{e['head_evaluations']:>7.1f}{e['gpu_seconds']:>9.1f}"
            f"{e['weights_gib']:>9.1f}{e['cache_gib']:>9.1f}{e['work_gib']:>7.1f}{e['total_gib']:>8.1f}"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny shapes, seconds (a smoke test)")
    parser.add_argument(
        "--gpu-tflops", type=float, default=400.0, help="assumed GPU throughput for the extrapolation"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per measurement (default: 1; on a shared machine more threads wait on each other)",
    )
    parser.add_argument("--out", default=None, help="JSON path (default: results/scaling[-quick].json)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    out = Path(args.out or HERE / "results" / ("scaling-quick.json" if args.quick else "scaling.json"))
    t0 = time.perf_counter()
    rows = []
    for sweep, shape, samples, seq_len, remove in plan(args.quick):
        rows.append(run(sweep, shape, samples, seq_len, remove, args.threads))
        r = rows[-1]
        print(
            f"{sweep:<7} h{shape['hidden_size']} L{shape['num_hidden_layers']} {samples}x{seq_len} M={remove}: "
            f"select {r['seconds']['select']:.1f} s, F {r['forward_equivalents']}, "
            f"peak {r['rss_mib']['peak']} MiB ({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
    model = fit(rows)
    results = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "quick": args.quick,
        "gpu_tflops": args.gpu_tflops,
        "rows": rows,
        "model": model,
        "extrapolated": extrapolate(model, args.gpu_tflops),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print_report(results)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out} ({results['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
