"""Rows of A checkpointed as they are computed, so a killed analysis resumes where it stopped.

The partial file sits next to the output as ``OUTPUT.partial``: a safetensors file with its own
format marker (an energy-file reader refuses it), holding A, the per-sample losses, which
calibration batches are finished, and a fingerprint of everything that decides those rows
(model, config, dtype, blocks, removed blocks, calibration tokens, batch size). It is replaced
atomically after each batch, so a process killed at any moment leaves the last good state.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from optimum_blockprune.data.atomic import atomic_file
from optimum_blockprune.errors import BlockPruneError

FORMAT = "optimum_blockprune.gate-gradients-partial/1"
SUFFIX = ".partial"


def partial_path(output: str | os.PathLike) -> Path:
    """Where the rows of the analysis writing ``output`` are checkpointed."""
    output = Path(output)
    return output.with_name(output.name + SUFFIX)


def sha256(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _normalised(fingerprint: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(fingerprint, sort_keys=True, default=str))


@dataclass
class PartialRows:
    """A (samples x blocks, float64) and per-sample losses, filled one calibration batch at a time."""

    A: np.ndarray
    losses: np.ndarray
    done: np.ndarray  # one flag per batch of ``batch_size`` samples
    batch_size: int
    fingerprint: dict[str, Any]
    path: Path | None = None

    @classmethod
    def start(
        cls,
        samples: int,
        blocks: int,
        batch_size: int,
        fingerprint: dict[str, Any],
        path: str | os.PathLike | None = None,
    ) -> PartialRows:
        return cls(
            A=np.zeros((samples, blocks)),
            losses=np.zeros(samples),
            done=np.zeros(math.ceil(samples / batch_size), dtype=bool),
            batch_size=batch_size,
            fingerprint=_normalised(fingerprint),
            path=None if path is None else Path(path),
        )

    @classmethod
    def open(
        cls,
        path: str | os.PathLike | None,
        samples: int,
        blocks: int,
        batch_size: int,
        fingerprint: dict[str, Any],
        resume: bool = True,
    ) -> PartialRows:
        """The rows already in ``path`` when it belongs to this analysis (and ``resume``), else a
        fresh start that will be saved there; a partial file of another analysis is an error."""
        fresh = cls.start(samples, blocks, batch_size, fingerprint, path)
        if path is not None:
            _remove_stale_temporaries(Path(path))
        if path is None or not resume or not Path(path).exists():
            return fresh
        found = cls.load(path)
        differ = sorted(
            k
            for k in set(fresh.fingerprint) | set(found.fingerprint)
            if fresh.fingerprint.get(k) != found.fingerprint.get(k)
        )
        if differ:
            raise BlockPruneError(
                f"{path} holds rows of a different analysis ({', '.join(differ)} differ); "
                "delete it or pass --no-resume to start over"
            )
        return found

    @classmethod
    def load(cls, path: str | os.PathLike) -> PartialRows:
        from safetensors import safe_open

        path = Path(path)
        try:
            with safe_open(str(path), framework="numpy") as f:
                meta = f.metadata() or {}
                if meta.get("format") != FORMAT:
                    raise ValueError(f"format is {meta.get('format')!r}, expected {FORMAT!r}")
                A, losses, done = (f.get_tensor(k) for k in ("A", "losses", "done"))
            batch_size = int(meta["batch_size"])
            if A.ndim != 2 or losses.shape != (len(A),) or len(done) != math.ceil(len(A) / batch_size):
                raise ValueError("inconsistent shapes")
            fingerprint = json.loads(meta["fingerprint"])
        except Exception as exc:  # safetensors / json raise many types on damaged files
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise BlockPruneError(
                f"unreadable partial analysis {path}: {reason}; delete it or pass --no-resume"
            ) from None
        return cls(A, losses, done.astype(bool), batch_size, fingerprint, path)

    @property
    def complete(self) -> bool:
        return bool(self.done.all())

    def todo(self) -> list[int]:
        """Indices of the batches still to compute, in order."""
        return [int(k) for k in np.flatnonzero(~self.done)]

    def rows(self, batch: int) -> slice:
        return slice(batch * self.batch_size, min((batch + 1) * self.batch_size, len(self.A)))

    def put(self, batch: int, A: np.ndarray, losses: np.ndarray) -> None:
        self.A[self.rows(batch)] = A
        self.losses[self.rows(batch)] = losses
        self.done[batch] = True

    def save(self) -> None:
        """Replace the partial file atomically (no-op without a path)."""
        if self.path is None:
            return
        from safetensors.numpy import save_file

        tensors = {"A": self.A, "losses": self.losses, "done": self.done.astype(np.uint8)}
        meta = {
            "format": FORMAT,
            "batch_size": str(self.batch_size),
            "fingerprint": json.dumps(self.fingerprint, sort_keys=True),
        }
        with atomic_file(self.path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)

    def remove(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def _remove_stale_temporaries(path: Path) -> None:
    """Temporary files left by writers killed mid-write (their process is gone)."""
    for tmp in path.parent.glob(f".{path.name}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
