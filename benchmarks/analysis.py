"""Throughput and peak memory of the gate-gradient analysis on SmolLM2-135M.

The batched analysis (one forward + backward per batch, a gate per sample) against the paper's
batch-1 loop (one forward + backward per sample) on the SAME calibration samples, for several
batch sizes and sequence lengths; the same under 2 data-parallel processes (``accelerate
launch``); and the largest batch with gradient checkpointing. Every configuration runs in a
fresh process, warmed up with one batch of its own size, so its peak memory is its own: peak
RSS (``VmHWM``, reset after loading) on CPU, ``torch.cuda.max_memory_allocated`` on GPU.
"analysis" memory is the peak minus what the process held before (model and calibration data).
Besides the separate batch-1 run, every batched run times the batch-1 loop on two of its samples
in the same process ("paired"). Each run's A is compared with the batch-1 loop's. Prints a table
and writes benchmarks/results/analysis.json.

    python benchmarks/analysis.py                                 # CPU, float32 (~15 min on 2 cores)
    python benchmarks/analysis.py --device cuda --dtype bfloat16  # one GPU (2 processes if 2 GPUs)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="model folder (default: the demo SmolLM2-135M)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--num-samples", type=int, default=16, help="calibration samples (default: 16)")
    parser.add_argument("--batch-sizes", type=_ints, default=[1, 4, 8, 16], help="default: 1,4,8,16")
    parser.add_argument("--seq-lens", type=_ints, default=[64, 128, 256], help="default: 64,128,256")
    parser.add_argument(
        "--processes", type=int, default=2, help="data-parallel processes (default: 2; 1: skip)"
    )
    parser.add_argument(
        "--parallel-batch-sizes",
        type=_ints,
        default=[1, 8],
        help="batch sizes run data-parallel (default: 1,8)",
    )
    parser.add_argument(
        "--parallel-seq-lens",
        type=_ints,
        default=[128],
        help="sequence lengths run data-parallel (default: 128)",
    )
    parser.add_argument(
        "--no-checkpointing-run", action="store_true", help="skip the gradient-checkpointing run"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads per process (default: 1 on CPU, where a shared machine makes more threads "
        "wait on each other; torch's choice on GPU)",
    )
    parser.add_argument("--output", default=str(HERE / "results" / "analysis.json"))
    # one configuration, in a fresh process (internal)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--seq-len", type=int, default=128, help=argparse.SUPPRESS)
    parser.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------- one configuration
def _memory_now(device) -> int:
    import psutil
    import torch

    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    return psutil.Process().memory_info().rss


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _release_free_memory() -> None:
    """Give freed memory back to the OS, so the analysis cannot reuse it without being measured."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # Linux: reset the high-water mark so that loading the model does not count
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _memory_peak(device) -> int:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    try:
        status = Path("/proc/self/status").read_text()
        return int(status.split("VmHWM:")[1].split()[0]) * 1024
    except (OSError, IndexError, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _saved_bytes_per_token(pruner, blocks, data) -> float:
    """Bytes the autograd graph keeps for the backward pass per token (without checkpointing),
    counted on one sample, excluding the frozen weights: what scales with the batch."""
    import torch

    from optimum_blockprune.energy.chunked_loss import last_hidden
    from optimum_blockprune.model.gates import Gates

    weights = {p.untyped_storage().data_ptr() for p in pruner.model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    device = next(pruner.model.parameters()).device
    ids, mask = data.input_ids[:1].to(device), data.attention_mask[:1].to(device)
    frozen = [p for p in pruner.model.parameters() if p.requires_grad]
    for p in frozen:  # as in the analysis: weights need no gradient, so their inputs are not kept
        p.requires_grad_(False)
    try:
        with Gates(pruner.model, pruner.adapter, blocks) as gates:
            gates.values = torch.ones(1, len(blocks), device=device, requires_grad=True)
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
                last_hidden(pruner.model, pruner.adapter, ids, mask)
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return sum(saved.values()) / ids.shape[1]


def worker(args: argparse.Namespace) -> None:
    import torch

    from optimum_blockprune.config import BlockPruneConfig
    from optimum_blockprune.data.calibration import CalibrationData
    from optimum_blockprune.energy.distributed import Processes
    from optimum_blockprune.energy.gradients import gate_gradients
    from optimum_blockprune.pruner import BlockPruner

    if args.threads:
        torch.set_num_threads(args.threads)
    processes = Processes.current()
    device = processes.device if processes.world > 1 else torch.device(args.device)
    pruner = BlockPruner.from_pretrained(args.model, dtype=getattr(torch, args.dtype))
    pruner.model.to(device)
    data = pruner.calibration(BlockPruneConfig(remove=1, num_samples=args.num_samples, seq_len=args.seq_len))
    blocks = pruner.blocks()
    # paging in the weights and first-call set-up are not measured
    first = CalibrationData(data.input_ids[:1], data.attention_mask[:1])
    gate_gradients(pruner.model, pruner.adapter, blocks, first, 1, processes=Processes())
    saved_per_token = _saved_bytes_per_token(pruner, blocks, data)

    def one_sample_loop(k: int) -> tuple[float, float, int]:
        """The batch-1 loop on sample k, in this process: (seconds, CPU seconds, tokens)."""
        one = CalibrationData(data.input_ids[k : k + 1], data.attention_mask[k : k + 1])
        t, c = time.perf_counter(), _cpu_seconds()
        gate_gradients(pruner.model, pruner.adapter, blocks, one, 1, processes=Processes())
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t, _cpu_seconds() - c, one.num_tokens

    _release_free_memory()
    before = _memory_now(device)
    _reset_peak(device)
    # Warm-up: one batch of this configuration's size, untimed. It makes the process touch the
    # batch's memory (first-touch page faults, a one-off per process that a long analysis
    # amortises) and sets the memory peak, which the timed run repeats.
    warm = CalibrationData(data.input_ids[: args.batch_size], data.attention_mask[: args.batch_size])
    gate_gradients(
        pruner.model,
        pruner.adapter,
        blocks,
        warm,
        args.batch_size,
        gradient_checkpointing=args.checkpointing,
        processes=Processes(),
    )
    # paired baseline: the batch-1 loop on one sample just before and one just after the timed run,
    # so a change of machine load between configurations does not distort the ratio
    paired = [one_sample_loop(0)] if processes.world == 1 and args.batch_size > 1 else []
    processes.barrier()
    t0, cpu0 = time.perf_counter(), _cpu_seconds()
    A, _ = gate_gradients(
        pruner.model,
        pruner.adapter,
        blocks,
        data,
        args.batch_size,
        gradient_checkpointing=args.checkpointing,
        processes=processes,
    )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
    memory = processes.gather({"peak": _memory_peak(device), "before": before, "cpu_seconds": cpu})
    if paired:
        paired.append(one_sample_loop(len(data) - 1))
    if processes.is_main:
        result = {
            "seconds": seconds,
            "tokens": data.num_tokens,
            "threads_per_process": torch.get_num_threads(),
            "memory": memory,
            "saved_for_backward_mb_per_token": saved_per_token / 2**20,
            "paired_batch1": [sum(x) for x in zip(*paired, strict=True)] if paired else None,
            "A": A.tolist(),
        }
        Path(args.result).write_text(json.dumps(result))
    processes.close()


# ----------------------------------------------------------------------------- orchestration
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_config(
    args: argparse.Namespace, batch: int, seq_len: int, processes: int, checkpointing: bool
) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        cmd = [
            str(Path(__file__).resolve()),
            "--worker",
            "--batch-size",
            str(batch),
            "--seq-len",
            str(seq_len),
        ]
        cmd += ["--device", args.device, "--dtype", args.dtype, "--num-samples", str(args.num_samples)]
        cmd += ["--result", str(result)] + (["--model", args.model] if args.model else [])
        cmd += ["--checkpointing"] if checkpointing else []
        cmd += ["--threads", str(args.threads)] if args.threads else []
        if processes == 1:
            cmd = [sys.executable, *cmd]
        else:
            accelerate = str(Path(sys.executable).with_name("accelerate"))
            launch = [accelerate, "launch", "--num_processes", str(processes), "--num_machines", "1"]
            launch += ["--mixed_precision", "no", "--dynamo_backend", "no"]
            launch += ["--main_process_port", str(_free_port())]
            cmd = [*launch, "--multi_gpu", *cmd]  # accelerate's torchrun launcher, on CPU too
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""} if args.device == "cpu" else None
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp, env=env)
        if proc.returncode != 0:
            sys.exit(f"configuration failed: {' '.join(cmd)}\n{proc.stderr[-4000:]}")
        out = json.loads(result.read_text())
        out["process_seconds"] = time.perf_counter() - t0
    peaks = [m["peak"] for m in out["memory"]]
    deltas = [m["peak"] - m["before"] for m in out["memory"]]
    return {
        "processes": processes,
        "batch_size": batch,
        "seq_len": seq_len,
        "gradient_checkpointing": checkpointing,
        "tokens": out["tokens"],
        "seconds": round(out["seconds"], 3),
        "tokens_per_second": round(out["tokens"] / out["seconds"], 2),
        "tokens_per_cpu_second": round(out["tokens"] / sum(m["cpu_seconds"] for m in out["memory"]), 2),
        "threads_per_process": out["threads_per_process"],
        "peak_mb_per_process": round(max(peaks) / 2**20, 1),
        "analysis_mb_per_process": round(max(deltas) / 2**20, 1),
        "saved_for_backward_mb_per_token": round(out["saved_for_backward_mb_per_token"], 4),
        "paired_batch1": out["paired_batch1"],
        "A": out["A"],
    }


def main() -> None:
    args = parse_args()
    if args.threads is None and args.device == "cpu":
        args.threads = 1
    if args.worker:
        worker(args)
        return
    import torch

    configs = []
    for seq_len in args.seq_lens:
        for batch in args.batch_sizes:
            if batch <= args.num_samples:
                configs.append((batch, seq_len, 1, False))
        if args.processes > 1 and seq_len in args.parallel_seq_lens:
            configs += [(b, seq_len, args.processes, False) for b in args.parallel_batch_sizes]
    if not args.no_checkpointing_run:
        configs.append((min(max(args.batch_sizes), args.num_samples), max(args.seq_lens), 1, True))
    if args.device == "cuda" and args.processes > torch.cuda.device_count():
        print(f"only {torch.cuda.device_count()} GPU(s): skipping the {args.processes}-process runs")
        configs = [c for c in configs if c[2] == 1]
    load = [round(x, 2) for x in os.getloadavg()]
    print(
        f"{len(configs)} configurations, {args.num_samples} samples each, {args.device} {args.dtype}, "
        f"threads per process: {args.threads or 'default'}; load average {load}"
    )
    print(
        "| processes x threads | batch | seq | checkpointing | tokens/s | vs batch-1 run | vs batch-1 paired "
        "| tokens/CPU-s | CPU vs batch-1 paired | analysis MB | MB/token | max abs(A - A batch-1) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows, baseline = [], {}
    t_start = time.perf_counter()
    for batch, seq_len, processes, checkpointing in configs:
        row = run_config(args, batch, seq_len, processes, checkpointing)
        A = np.asarray(row.pop("A"))
        if batch == 1 and processes == 1 and not checkpointing:
            baseline[seq_len] = row, A
        base, base_A = baseline.get(seq_len, (None, None))
        row["speedup_vs_batch1_run"] = (
            round(row["tokens_per_second"] / base["tokens_per_second"], 2) if base else None
        )
        paired = row.pop("paired_batch1")
        if paired:  # (seconds, CPU seconds, tokens) of the batch-1 loop on two samples, same process
            row["speedup_vs_batch1_paired"] = round(row["tokens_per_second"] / (paired[2] / paired[0]), 2)
            row["cpu_efficiency_vs_batch1_paired"] = round(
                row["tokens_per_cpu_second"] / (paired[2] / paired[1]), 2
            )
        elif batch == 1 and processes == 1:
            row["speedup_vs_batch1_paired"] = row["cpu_efficiency_vs_batch1_paired"] = 1.0
        else:
            row["speedup_vs_batch1_paired"] = row["cpu_efficiency_vs_batch1_paired"] = None
        row["analysis_mb_per_token"] = round(row["analysis_mb_per_process"] / (batch * seq_len), 3)
        row["max_abs_diff_A_vs_batch1"] = float(np.abs(A - base_A).max()) if base_A is not None else None
        row["max_abs_A"] = float(np.abs(A).max())
        rows.append(row)

        def ratio(value: float | None) -> str:
            return "-" if value is None else f"{value:.2f}x"

        print(
            f"| {processes} x {row['threads_per_process']} | {batch} | {seq_len} "
            f"| {'yes' if checkpointing else 'no'} | {row['tokens_per_second']:.1f} "
            f"| {ratio(row['speedup_vs_batch1_run'])} | {ratio(row['speedup_vs_batch1_paired'])} "
            f"| {row['tokens_per_cpu_second']:.1f} | {ratio(row['cpu_efficiency_vs_batch1_paired'])} "
            f"| {row['analysis_mb_per_process']:.0f} | {row['analysis_mb_per_token']:.2f} "
            f"| {row['max_abs_diff_A_vs_batch1']:.1e} |",
            flush=True,
        )
    total = time.perf_counter() - t_start
    saved = rows[0]["saved_for_backward_mb_per_token"]
    print(
        f"kept for the backward pass (autograd's saved tensors, no checkpointing): {saved:.3f} MB per token"
    )
    print(f"total {total / 60:.1f} min; load average {[round(x, 2) for x in os.getloadavg()]}")
    out = {
        "benchmark": "analysis",
        "model": args.model or "demo SmolLM2-135M-Instruct",
        "device": args.device,
        "dtype": args.dtype,
        "num_samples": args.num_samples,
        "threads_option": args.threads or "default",
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None,
            "load_average_start": load,
            "load_average_end": [round(x, 2) for x in os.getloadavg()],
        },
        "total_minutes": round(total / 60, 1),
        "rows": rows,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(out, indent=2) + "\n")
    print(f"written to {args.output}")


if __name__ == "__main__":
    main()
