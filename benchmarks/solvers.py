"""Solvers on random and real block-removal energies: proofs, gaps, speed, agreement.

(a) Random instances shaped like real ones: a per-sample gate-gradient-like matrix A (2048 rows)
    with a few dominant directions (the spectrum of SmolLM2's), an isotropic tail and block
    scales spread over 25x; the paper's energy ``xᵀHx``, ``H = AᵀA/m``. N = 32, 40, 80 and M from
    N/8 to N/2.
(b) Real energies of SmolLM2-135M from this project's own analysis (the paper's Fisher energy):
    whole layers (N = 30) and sublayers (N = 60: ``layers.i.attn`` / ``layers.i.mlp``), from 64
    and 512 calibration samples of 128 tokens, M = 4, 8, 12, 16. Built once (minutes of CPU) and
    cached in ``$OPTIMUM_BLOCKPRUNE_CACHE/solver-benchmark`` (default ``~/.cache/optimum_blockprune``).

For every instance and solver (bnb, tabu, exhaustive where it fits, the CP-SAT certifier plugin
when installed): best energy, whether it is proven, the relative gap, nodes, seconds, and the
agreement of its top-K with exhaustive's. Prints a table and writes JSON.

    python benchmarks/solvers.py [--only random|real] [--time-limit 60] [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import numpy as np

from optimum_blockprune.energy.model import EnergyModel
from optimum_blockprune.solvers.exact.bnb import BranchAndBoundSolver
from optimum_blockprune.solvers.exact.exhaustive import ExhaustiveSolver
from optimum_blockprune.solvers.heuristic.dwave import TabuSolver
from optimum_blockprune.solvers.problem import build_problem

EXHAUSTIVE_LIMIT = 12_000_000  # configurations; beyond this exhaustive is skipped
SPECTRUM = np.array([1.0, 0.65, 0.47, 0.32, 0.28, 0.27, 0.25, 0.24])  # SmolLM2 layers, 64 samples


def random_instance(n: int, samples: int = 2048, seed: int = 0) -> EnergyModel:
    """Gradient-like A: dominant directions with SmolLM2's singular-value decay, a tail, and
    block scales log-uniform over 25x; the paper's energy from it."""
    rng = np.random.default_rng(seed)
    F = rng.normal(size=(samples, len(SPECTRUM))) * SPECTRUM
    A = F @ rng.normal(size=(len(SPECTRUM), n)) / np.sqrt(len(SPECTRUM)) * 1.2
    A += 0.5 * rng.normal(size=(samples, n))
    A *= np.exp(rng.uniform(0, np.log(5), n))
    return EnergyModel(A, [f"layers.{i}" for i in range(n)], variant="fisher")


def real_instance(granularity: str, samples: int) -> EnergyModel:
    """The Fisher energy of SmolLM2's layers or sublayers from ``samples`` calibration samples."""
    from optimum_blockprune.data.demo_assets import cache_dir

    path = cache_dir() / "solver-benchmark" / f"smollm2-{granularity}-{samples}.safetensors"
    if path.is_file():
        return EnergyModel.load(path)
    import torch

    from optimum_blockprune.blocks import Block
    from optimum_blockprune.config import BlockPruneConfig
    from optimum_blockprune.energy.gradients import gate_gradients
    from optimum_blockprune.model.adapters.base import count_params
    from optimum_blockprune.pruner import BlockPruner

    torch.manual_seed(0)
    print(f"building the {granularity} energy from {samples} samples (cached afterwards) ...", flush=True)
    pruner = BlockPruner.from_pretrained()
    config = BlockPruneConfig(remove=1, energy="fisher", num_samples=samples, seq_len=128)
    if granularity == "layer":
        energy = pruner.analyze(config, progress=True)
    else:  # one gate per residual branch
        layers = pruner.adapter.decoder_layers(pruner.model)
        blocks = [
            Block(i, kind, count_params(module))
            for i, layer in enumerate(layers)
            for kind, module in pruner.adapter.branches(layer).items()
        ]
        data = pruner.calibration(config)
        A, _ = gate_gradients(pruner.model, pruner.adapter, blocks, data, config.batch_size, progress=True)
        energy = EnergyModel(
            A,
            [b.name for b in blocks],
            num_params=[b.num_params for b in blocks],
            variant="fisher",
            metadata={"model_id": pruner.model_id, "num_samples": samples},
        )
    energy.save(path)
    return energy


def agreement(rows: np.ndarray, energies: np.ndarray, reference) -> float | None:
    """Fraction of the reference top-K found (configurations with the same energy count as found)."""
    if reference is None:
        return None
    ref_rows, ref_energies = reference.record.sample, reference.record.energy
    found = {tuple(r) for r in rows}
    hits = sum(
        tuple(r) in found or np.any(np.isclose(energies, e, rtol=1e-10, atol=1e-14))
        for r, e in zip(ref_rows, ref_energies, strict=True)
    )
    return hits / len(ref_rows)


def run_instance(name: str, energy: EnergyModel, m: int, top_k: int, args) -> list[dict]:
    from optimum_blockprune.solvers.registry import solvers

    problem = build_problem(energy, m)
    rows = []
    count = math.comb(len(energy), m)
    exact = None
    if count <= EXHAUSTIVE_LIMIT:
        t0 = time.perf_counter()
        exact = ExhaustiveSolver().sample(problem, top_k=top_k)
        rows.append(record(name, energy, m, top_k, "exhaustive", exact, time.perf_counter() - t0, None))
    t0 = time.perf_counter()
    tabu = TabuSolver().sample(problem, top_k=top_k)
    rows.append(record(name, energy, m, top_k, "tabu", tabu, time.perf_counter() - t0, exact))
    t0 = time.perf_counter()
    bnb = BranchAndBoundSolver().sample(problem, top_k=top_k, time_limit=args.time_limit, incumbents=tabu)
    rows.append(
        record(name, energy, m, top_k, "bnb", bnb, time.perf_counter() - t0 + tabu.info["seconds"], exact)
    )
    rows[-1]["vs_tabu"] = float(bnb.first.energy - tabu.first.energy)
    if "cpsat" in solvers() and not args.no_cpsat:
        t0 = time.perf_counter()
        cp = solvers()["cpsat"].sample(problem, top_k=1, time_limit=args.time_limit)
        rows.append(record(name, energy, m, 1, "cpsat", cp, time.perf_counter() - t0, None))
    for row in rows:
        print(format_row(row), flush=True)
    return rows


def record(name, energy, m, top_k, solver, result, seconds, exact) -> dict:
    info = result.info
    best = float(result.first.energy)
    lower = info.get("lower_bound")
    optimal = bool(info.get("optimal"))
    gap = 0.0 if optimal else (None if lower is None else (best - lower) / max(abs(best), 1e-300))
    return {
        "instance": name,
        "N": len(energy),
        "M": m,
        "K": top_k,
        "solver": solver,
        "best": best,
        "kth": float(result.record.energy[-1]),
        "proven": optimal,
        "proven_of_k": int(info.get("proven", len(result) if optimal else 0)),
        "lower_bound": lower,
        "gap": gap,
        "nodes": info.get("nodes"),
        "seconds": seconds,
        "topk_agreement": agreement(result.record.sample, result.record.energy, exact),
    }


HEADER = (
    "| instance | N | M | K | solver | best energy | ground state gap | top-K proven | nodes | seconds "
    "| top-K = exhaustive |\n|" + "---|" * 11
)


def format_row(r: dict) -> str:
    """One table row: the ground-state gap (0 = proven optimal) and how many of the K are certified."""
    certifies = r["solver"] not in ("tabu",)
    gap = "-" if r["gap"] is None or not certifies else f"{100 * r['gap']:.2f}%"
    proven = f"{r['proven_of_k']}/{r['K']}" if certifies else "-"
    agree = "-" if r["topk_agreement"] is None else f"{r['topk_agreement']:.2f}"
    nodes = "-" if r["nodes"] is None else str(r["nodes"])
    return (
        f"| {r['instance']} | {r['N']} | {r['M']} | {r['K']} | {r['solver']} | {r['best']:.6g} | {gap} | "
        f"{proven} | {nodes} | {r['seconds']:.1f} | {agree} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", choices=("random", "real"), default=None)
    parser.add_argument("--time-limit", type=float, default=60.0)
    parser.add_argument("--quick", action="store_true", help="a few small instances (a smoke test)")
    parser.add_argument("--no-cpsat", action="store_true", help="skip the CP-SAT plugin even if installed")
    parser.add_argument("--out", default="benchmarks/results/solvers.json")
    parser.add_argument("--table", default=None, help="only print the table of an earlier JSON result")
    args = parser.parse_args()
    if args.table:
        print(HEADER)
        for row in json.loads(Path(args.table).read_text())["rows"]:
            print(format_row(row))
        return
    print(HEADER, flush=True)
    rows: list[dict] = []
    if args.only in (None, "random"):
        plan = (
            [(32, [4, 8], 20)]
            if args.quick
            else [(32, [4, 8, 12, 16], 20), (40, [5, 10, 15, 20], 20), (80, [8, 16, 24, 32, 40], 20)]
        )
        for n, ms, top_k in plan:
            energy = random_instance(n, seed=n)
            for m in ms:
                rows += run_instance(f"random-{n}", energy, m, top_k, args)
    if args.only in (None, "real") and not args.quick:
        for granularity in ("layer", "sublayer"):
            for samples in (64, 512):
                energy = real_instance(granularity, samples)
                for m in (4, 8, 12, 16):
                    rows += run_instance(f"smollm2-{granularity}-{samples}", energy, m, 10, args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "rows": rows,
        "time_limit": args.time_limit,
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
        },
    }
    tmp = out.with_name(out.name + ".partial")
    tmp.write_text(json.dumps(payload, indent=1))
    tmp.replace(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
