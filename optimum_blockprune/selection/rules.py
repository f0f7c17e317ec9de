"""The rules every selection method honours, in one place: named blocks exist, protected blocks
stay and forced blocks go, a layer is never removed together with one of its own branches
(``mixed`` granularity), and the architecture's own rule (``Adapter.removal_error``)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from torch import nn

from optimum_blockprune.blocks import Block, overlapping_blocks, positions
from optimum_blockprune.model.adapters.base import Adapter


class Rules:
    """The rules of one request: ``protect`` / ``force`` (block positions) and :meth:`refusal`."""

    def __init__(
        self,
        model: nn.Module,
        adapter: Adapter,
        blocks: Sequence[Block],
        protect: Iterable[str] = (),
        force: Iterable[str] = (),
    ) -> None:
        self.model, self.adapter, self.blocks = model, adapter, list(blocks)
        self.names = [b.name for b in self.blocks]
        self.protect_names, self.force_names = list(protect), list(force)
        self.protect = positions(self.names, self.protect_names)
        self.force = positions(self.names, self.force_names)
        self.conflicts = overlapping_blocks(self.blocks)

    def refusal(self, removed: list[str]) -> str | None:
        """Why ``removed`` cannot be removed together: a layer with one of its own branches, or the
        adapter's rule; None when it can."""
        chosen = set(removed)
        pair = next(((a, b) for a, b in self.conflicts if a in chosen and b in chosen), None)
        if pair:
            return f"{pair[0]} is removed together with its own branch {pair[1]}"
        return self.adapter.removal_error(self.model, removed)
