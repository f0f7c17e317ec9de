"""Removable blocks and their stable public names (``layers.{i}``, ``layers.{i}.attn``, ...)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from optimum_blockprune.errors import BlockPruneError

BRANCH_KINDS = ("attn", "mlp", "moe", "mamba")
KINDS = ("layer", *BRANCH_KINDS)
#: ``layer``: whole decoder layers; ``sublayer``: single branches; ``mixed``: both in one problem.
GRANULARITIES = ("layer", "sublayer", "mixed")


@dataclass(frozen=True)
class Block:
    """One removable block: a whole decoder layer or one residual branch of it.

    ``layer`` is the index in the ORIGINAL model; names never change after pruning.
    """

    layer: int
    kind: str  # "layer" or one of BRANCH_KINDS
    num_params: int

    @property
    def name(self) -> str:
        return block_name(self.layer, self.kind)


def block_name(layer: int, kind: str = "layer") -> str:
    """Public name of a block: ``layers.3`` for a whole layer, ``layers.3.attn`` for a branch."""
    if kind not in KINDS:
        raise ValueError(f"unknown block kind {kind!r}; expected one of {', '.join(KINDS)}")
    return f"layers.{layer}" if kind == "layer" else f"layers.{layer}.{kind}"


def parse_block_name(name: str) -> tuple[int, str]:
    """Inverse of :func:`block_name`: ``"layers.3.attn"`` -> ``(3, "attn")``."""
    parts = name.split(".")
    if len(parts) in (2, 3) and parts[0] == "layers" and parts[1].isdigit():
        kind = parts[2] if len(parts) == 3 else "layer"
        if kind in KINDS:
            return int(parts[1]), kind
    raise ValueError(
        f"not a block name: {name!r}; expected 'layers.<i>' or 'layers.<i>.<{'|'.join(BRANCH_KINDS)}>'"
    )


def overlapping_blocks(blocks: list[Block]) -> list[tuple[str, str]]:
    """Pairs ``(layers.i, layers.i.<kind>)`` present together (``mixed`` granularity): removing both
    would count layer i twice, so no configuration may hold both."""
    layers = {b.layer for b in blocks if b.kind == "layer"}
    return [(block_name(b.layer), b.name) for b in blocks if b.kind != "layer" and b.layer in layers]


def positions(names: Sequence[str], wanted: Iterable[str]) -> list[int]:
    """Positions of the blocks ``wanted`` among ``names``; a one-line error for an unknown name."""
    lookup = {n: i for i, n in enumerate(names)}
    wanted = list(wanted)
    unknown = [w for w in wanted if w not in lookup]
    if unknown:
        raise BlockPruneError(f"unknown block {unknown[0]!r}; blocks are named {names[0]} ... {names[-1]}")
    return [lookup[w] for w in wanted]
