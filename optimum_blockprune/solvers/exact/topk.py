"""The one running top-K of the exact solvers: the K lowest-energy rows seen so far."""

from __future__ import annotations

import numpy as np


class TopK:
    """Exact running top-``k`` of (energy, row). A row is admitted only below the current K-th best
    energy (``threshold``); ties keep the row seen first. With ``distinct`` a row already held is
    not admitted again (branch and bound meets the same configuration on many paths)."""

    def __init__(self, k: int, n: int = 0, dtype: type = np.int8, distinct: bool = False) -> None:
        self.k, self.distinct = k, distinct
        self.threshold = np.inf
        self.energy = np.empty(0)
        self.rows = np.empty((0, n), dtype=dtype)

    def candidates(self, energies: np.ndarray) -> np.ndarray:
        """Positions of the (at most k) lowest entries of ``energies`` below the threshold."""
        pick = np.flatnonzero(energies < self.threshold)
        if len(pick) > self.k:
            pick = pick[np.argpartition(energies[pick], self.k - 1)[: self.k]]
        return pick

    def add(self, rows: np.ndarray, energies: np.ndarray) -> None:
        """Offer ``rows`` with their ``energies`` (aligned)."""
        pick = self.candidates(energies)
        rows, energies = rows[pick], energies[pick]
        if self.distinct and len(rows):
            rows, first = np.unique(rows, axis=0, return_index=True)
            energies = energies[first]
            held = {r.tobytes() for r in self.rows}
            new = np.array([r.tobytes() not in held for r in rows], dtype=bool)
            rows, energies = rows[new], energies[new]
        if not len(rows):
            return
        energy = np.concatenate([self.energy, energies])
        rows = (
            np.concatenate([self.rows, rows.astype(self.rows.dtype, copy=False)]) if len(self.rows) else rows
        )
        keep = np.argsort(energy, kind="stable")[: self.k]
        self.energy, self.rows = energy[keep], rows[keep]
        if len(self.energy) == self.k:
            self.threshold = self.energy[-1]

    def sorted(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows, energies) held, lowest energy first."""
        return self.rows, self.energy

    def add_pairs(self, energies: np.ndarray, left: np.ndarray, right: np.ndarray, join) -> None:
        """Offer every pair (left[r], right[c]) whose energy is ``energies[r, c]``; only the pairs
        that can enter are joined into rows (``join(left_rows, right_rows)``)."""
        flat = energies.ravel()
        pick = self.candidates(flat)
        if len(pick):
            r, c = np.divmod(pick, energies.shape[1])
            self.add(join(left[r], right[c]), flat[pick])
