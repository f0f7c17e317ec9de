"""EnergyModel: the quadratic energy E(x) = hᵀx + xᵀJx over removal vectors x (x_i = 1: remove).

It holds fields ``h`` and symmetric couplings ``J`` (float64), the block names, kinds and
parameter counts, and whatever the energy was built from (``A``, ``g``, ``H``, single-removal
losses, ...). It saves as one safetensors file, so problems can be re-solved without the model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from optimum_blockprune.blocks import Block, parse_block_name
from optimum_blockprune.data.atomic import atomic_file
from optimum_blockprune.errors import BlockPruneError

FORMAT = "optimum_blockprune.energy/1"


class EnergyModel:
    """Quadratic energy over blocks.

    ``EnergyModel(A, block_names)`` builds the paper's variant from a per-sample gate-gradient
    matrix ``A`` (m samples x N blocks): ``H = AᵀA/m`` in float64, ``E(x) = xᵀHx``.
    ``EnergyModel(block_names=..., fields=..., couplings=...)`` takes any fields and couplings.
    """

    def __init__(
        self,
        A: np.ndarray | None = None,
        block_names: Sequence[str] = (),
        *,
        fields: np.ndarray | None = None,
        couplings: np.ndarray | None = None,
        num_params: Sequence[int] | None = None,
        variant: str = "fisher",
        sources: dict[str, np.ndarray] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self.block_names = list(block_names)
        n = len(self.block_names)
        if n == 0:
            raise BlockPruneError("an energy model needs at least one block name")
        if len(set(self.block_names)) != n:
            raise BlockPruneError("block names must be unique")
        for name in self.block_names:
            try:
                parse_block_name(name)
            except ValueError as exc:
                raise BlockPruneError(str(exc)) from None
        self.sources: dict[str, np.ndarray] = {k: np.asarray(v) for k, v in (sources or {}).items()}
        if A is not None:
            A64 = np.asarray(A, dtype=np.float64)
            if A64.ndim != 2 or A64.shape[1] != n:
                raise BlockPruneError(f"A must have shape (samples, {n}); got {A64.shape}")
            self.sources.setdefault("A", A64)
            self.sources.setdefault("g", A64.mean(axis=0))
            H = A64.T @ A64 / A64.shape[0]
            self.sources.setdefault("H", H)
            if couplings is None:
                couplings = H
        self.fields = np.zeros(n) if fields is None else np.asarray(fields, dtype=np.float64).copy()
        self.couplings = (
            np.zeros((n, n)) if couplings is None else np.asarray(couplings, dtype=np.float64).copy()
        )
        if self.fields.shape != (n,) or self.couplings.shape != (n, n):
            raise BlockPruneError(
                f"fields must have shape ({n},) and couplings ({n}, {n}); got {self.fields.shape} and {self.couplings.shape}"
            )
        if not (np.isfinite(self.fields).all() and np.isfinite(self.couplings).all()):
            raise BlockPruneError("fields and couplings must be finite numbers")
        self.couplings = (self.couplings + self.couplings.T) / 2
        self.num_params = (
            np.zeros(n, dtype=np.int64) if num_params is None else np.asarray(num_params, dtype=np.int64)
        )
        if self.num_params.shape != (n,):
            raise BlockPruneError(f"num_params must have {n} entries")
        self.variant = variant
        self.metadata: dict[str, Any] = dict(metadata or {})

    # ----------------------------------------------------------------- evaluation
    @property
    def kinds(self) -> list[str]:
        return [parse_block_name(n)[1] for n in self.block_names]

    def __len__(self) -> int:
        return len(self.block_names)

    def blocks(self) -> list[Block]:
        """The blocks this energy covers, with their parameter counts."""
        return [
            Block(*parse_block_name(n), int(p))
            for n, p in zip(self.block_names, self.num_params, strict=True)
        ]

    def index(self, names: Iterable[str]) -> list[int]:
        """Positions of the given block names; a clear error for unknown names."""
        lookup = {n: i for i, n in enumerate(self.block_names)}
        out = []
        for name in names:
            if name not in lookup:
                raise BlockPruneError(f"unknown block {name!r}; known blocks: {', '.join(self.block_names)}")
            out.append(lookup[name])
        return out

    def vector(self, removed: Iterable[str]) -> np.ndarray:
        """Removal vector x for a set of block names."""
        x = np.zeros(len(self), dtype=np.float64)
        x[self.index(removed)] = 1.0
        return x

    def energy(self, removed: Iterable[str]) -> float:
        """E(x) for the configuration that removes exactly the named blocks."""
        return float(self.energies(self.vector(removed)[None, :])[0])

    def energies(self, X: np.ndarray) -> np.ndarray:
        """E for each row of a (k, N) 0/1 matrix, vectorised."""
        X = np.asarray(X, dtype=np.float64)
        return X @ self.fields + np.einsum("ki,ij,kj->k", X, self.couplings, X, optimize=True)

    def qubo_terms(self) -> tuple[np.ndarray, np.ndarray]:
        """(linear, upper-triangular quadratic) coefficients of the same energy as a QUBO."""
        linear = self.fields + np.diag(self.couplings)
        quad = np.triu(2 * self.couplings, k=1)
        return linear, quad

    # ----------------------------------------------------------------- persistence
    def save(self, path: str | os.PathLike) -> Path:
        """Write one safetensors file atomically; returns the path."""
        from safetensors.numpy import save_file

        path = Path(path)
        tensors = {"fields": self.fields, "couplings": self.couplings, "num_params": self.num_params}
        tensors.update({f"source.{k}": np.ascontiguousarray(v) for k, v in self.sources.items()})
        meta = {
            "format": FORMAT,
            "variant": self.variant,
            "block_names": json.dumps(self.block_names),
            "metadata": json.dumps(self.metadata, default=str),
        }
        with atomic_file(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> EnergyModel:
        """Read a file written by :meth:`save`; a one-line error for missing or corrupt files."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise BlockPruneError(
                f"energy file not found: {path}; run 'optimum-cli blockprune analyze' first"
            )
        try:
            with safe_open(str(path), framework="numpy") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
            if meta.get("format") != FORMAT:
                raise ValueError(f"format is {meta.get('format')!r}, expected {FORMAT!r}")
            names = json.loads(meta["block_names"])
            metadata = json.loads(meta.get("metadata", "{}"))
            sources = {k.removeprefix("source."): v for k, v in tensors.items() if k.startswith("source.")}
            return cls(
                block_names=names,
                fields=tensors["fields"],
                couplings=tensors["couplings"],
                num_params=tensors["num_params"],
                variant=meta.get("variant", "unknown"),
                sources=sources,
                metadata=metadata,
            )
        except BlockPruneError as exc:
            raise BlockPruneError(f"corrupt energy file {path}: {exc}") from None
        except Exception as exc:  # safetensors / json raise many types on damaged files
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise BlockPruneError(
                f"corrupt energy file {path}: {reason}; re-run 'optimum-cli blockprune analyze'"
            ) from None

    def __repr__(self) -> str:
        return f"EnergyModel(variant={self.variant!r}, blocks={len(self)})"


def penalise_overlaps(energy: EnergyModel, pairs: Iterable[tuple[str, str]]) -> EnergyModel:
    """A copy of ``energy`` in which removing both blocks of any pair costs more than any
    configuration without such a pair: coupling ``P = Σ|h| + Σ|J| + 1`` on each pair, so an
    exact solver ranks every overlap-free configuration first (used for ``mixed`` granularity,
    where a layer and its own branches are both blocks)."""
    couplings = energy.couplings.copy()
    penalty = float(np.abs(energy.fields).sum() + np.abs(energy.couplings).sum() + 1.0)
    for a, b in pairs:
        i, j = energy.index([a, b])
        couplings[i, j] = couplings[j, i] = penalty
    return EnergyModel(
        block_names=energy.block_names,
        fields=energy.fields,
        couplings=couplings,
        num_params=energy.num_params,
        variant=energy.variant,
        sources=energy.sources,
        metadata={**energy.metadata, "overlap_penalty": penalty},
    )
