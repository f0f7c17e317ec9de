"""The report's figures, drawn with matplotlib's object API (Agg, no pyplot state, no display)."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import ListedColormap, TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from optimum_blockprune.energy.model import EnergyModel

REMOVED = "#c0392b"
FIXED = "#7f8c8d"
KEPT = "#3b6ea5"
DPI = 110


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG (no timestamp metadata, so equal figures give equal bytes)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


def _label_size(n: int) -> float:
    return 9 if n <= 20 else 7.5 if n <= 36 else 6 if n <= 64 else 4.5


def _block_axis(ax: Any, axis: str, names: Sequence[str], marked: set[str]) -> None:
    """One tick per block, labelled with its name; removed blocks in bold red."""
    size = _label_size(len(names))
    ticks = range(len(names))
    if axis == "x":
        ax.set_xticks(ticks, names, rotation=90, fontsize=size)
        labels = ax.get_xticklabels()
    else:
        ax.set_yticks(ticks, names, fontsize=size)
        labels = ax.get_yticklabels()
    for label, name in zip(labels, names, strict=True):
        if name in marked:
            label.set_color(REMOVED)
            label.set_fontweight("bold")


def _width(n: int) -> float:
    return float(min(max(0.2 * n + 2.5, 8.0), 18.0))


def coupling_figure(energy: EnergyModel, removed: Sequence[str]) -> Figure:
    """Heatmap of the off-diagonal couplings J (the diagonal is part of each block's own energy,
    shown in the fields figure), with the removed blocks' names in red."""
    n = len(energy)
    J = energy.couplings.copy()
    np.fill_diagonal(J, np.nan)
    off = np.abs(J[~np.isnan(J)])
    # Scale to the 99th percentile so a few strong pairs do not wash out the rest (clipped: arrows).
    vmax = float(np.percentile(off, 99)) if off.size else 0.0
    vmax = vmax if vmax > 0 else float(off.max()) if off.size and off.max() > 0 else 1.0
    clipped = bool(off.size and off.max() > vmax)
    side = float(min(max(0.19 * n + 3.0, 7.0), 17.0))
    fig = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = fig.add_subplot()
    cmap = colormaps["RdBu_r"].with_extremes(bad="#d9d9d9")
    image = ax.imshow(J, cmap=cmap, norm=TwoSlopeNorm(0.0, -vmax, vmax), interpolation="nearest")
    names = energy.block_names
    _block_axis(ax, "x", names, set(removed))
    _block_axis(ax, "y", names, set(removed))
    ax.set_xlabel("block j")
    ax.set_ylabel("block i")
    base = energy.metadata.get("base") or []
    where = f"after removing {len(base)} blocks" if base else "on the unpruned model"
    ax.set_title(f"Couplings J of the '{energy.variant}' energy ({where})")
    bar = fig.colorbar(image, ax=ax, shrink=0.6, extend="both" if clipped else "neither")
    bar.set_label("J_ij (red: worse together, blue: better)")
    return fig


def single_energies(energy: EnergyModel) -> np.ndarray:
    """Energy of removing each block alone, h_i + J_ii (NaN for blocks the round did not score)."""
    linear = energy.fields + np.diag(energy.couplings)
    base = set(energy.metadata.get("base") or [])
    unscored = np.array(
        [
            name in base or (linear[i] == 0 and not np.any(energy.couplings[i]))
            for i, name in enumerate(energy.block_names)
        ]
    )
    out = linear.astype(float)
    out[unscored] = np.nan
    return out


def fields_figure(energies: Sequence[EnergyModel], removed: Sequence[str]) -> Figure:
    """Bars: each block's energy alone in the first round; dots: later re-centring rounds."""
    first = energies[0]
    names = first.block_names
    n = len(names)
    fig = Figure(figsize=(_width(n), 4.6), layout="constrained")
    ax = fig.add_subplot()
    values = single_energies(first)
    gone = set(removed)
    colors = [REMOVED if name in gone else KEPT for name in names]
    ax.bar(range(n), np.nan_to_num(values), color=colors, width=0.8)
    handles = [
        Patch(color=KEPT, label="round 1 (unpruned model): kept"),
        Patch(color=REMOVED, label="round 1: removed in the end"),
    ]
    markers = "os^Dv<>p"
    for r, energy in enumerate(energies[1:], start=2):
        later = single_energies(energy)
        pos = [names.index(b) for b in energy.block_names]
        (line,) = ax.plot(
            pos,
            later,
            linestyle="none",
            marker=markers[(r - 2) % len(markers)],
            markersize=5,
            color="#222222" if r == len(energies) else "#8e6c8a",
            label=f"round {r} (after removing {len(energy.metadata.get('base') or [])} blocks)",
        )
        handles.append(line)
    _block_axis(ax, "x", names, gone)
    ax.set_xlim(-0.7, n - 0.3)
    ax.axhline(0, color="black", linewidth=0.6)
    scale = np.abs(values[np.isfinite(values) & (values != 0)])
    if scale.size and scale.max() / np.median(scale) > 30:  # a few blocks dwarf the rest
        if (values[np.isfinite(values)] > 0).all():
            ax.set_yscale("log")
            ax.set_ylim(bottom=float(scale.min()) / 3)
        else:
            ax.set_yscale("symlog", linthresh=float(np.percentile(scale, 10)), linscale=1.0)
    ax.set_xlabel("block (red: removed)")
    ax.set_ylabel("h_i + J_ii: energy of removing block i alone")
    ax.set_title(f"Per-block fields of the '{first.variant}' energy")
    fig.legend(handles=handles, fontsize=8, loc="outside lower center", ncol=min(len(handles), 4))
    ax.grid(axis="y", alpha=0.3)
    return fig


def spectrum_figure(candidates: Sequence[dict[str, Any]], chosen: int) -> Figure:
    """Energies of the top-K configurations in the solver's order, the reranked choice starred."""
    energies = np.array([c["energy"] for c in candidates], dtype=float)
    k = len(energies)
    fig = Figure(figsize=(7.5, 4.2), layout="constrained")
    ax = fig.add_subplot()
    ax.hlines(energies, np.arange(k) - 0.35, np.arange(k) + 0.35, color=KEPT, linewidth=2.5)
    ax.plot(range(k), energies, color=KEPT, alpha=0.35, linewidth=1)
    ax.plot(
        [chosen],
        [energies[chosen]],
        marker="*",
        markersize=15,
        color=REMOVED,
        linestyle="none",
        label=f"chosen: lowest real loss (rank {chosen})",
    )
    ax.set_xticks(range(k))
    ax.set_xlabel("configuration rank (by energy; 0 = ground state)")
    ax.set_ylabel("energy E(x)")
    ax.set_title(f"Energy spectrum of the top-{k} configurations")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    return fig


def removal_map_figure(
    candidates: Sequence[dict[str, Any]], chosen: int, names: Sequence[str], fixed: Sequence[str]
) -> Figure:
    """Configurations (rows, lowest energy first) x blocks (columns): removed blocks filled
    (grey: fixed before this round, red: chosen by the solver), the reranked choice marked."""
    k, n = len(candidates), len(names)
    col = {name: j for j, name in enumerate(names)}
    fixed_set = set(fixed)
    grid = np.zeros((k, n))
    for i, c in enumerate(candidates):
        for name in c["removed"]:
            if name in col:
                grid[i, col[name]] = 2 if name in fixed_set else 1
    fig = Figure(figsize=(_width(n), min(max(0.32 * k + 2.2, 3.5), 14.0)), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(
        grid,
        cmap=ListedColormap(["#f5f5f5", REMOVED, FIXED]),
        vmin=0,
        vmax=2,
        aspect="auto",
        interpolation="nearest",
    )
    ax.set_xticks(np.arange(-0.5, n), minor=True)
    ax.set_yticks(np.arange(-0.5, k), minor=True)
    ax.grid(which="minor", color="white", linewidth=0.8)
    ax.tick_params(which="minor", length=0)
    _block_axis(ax, "x", names, set())
    labels = [
        f"{'▶ ' if i == chosen else ''}#{i}  E={c['energy']:.4g}  loss={c['loss']:.4f}"
        for i, c in enumerate(candidates)
    ]
    ax.set_yticks(range(k), labels, fontsize=8 if k <= 20 else 6.5, family="monospace")
    ax.get_yticklabels()[chosen].set_fontweight("bold")
    ax.get_yticklabels()[chosen].set_color(REMOVED)
    ax.add_patch(
        Rectangle((-0.5, chosen - 0.5), n, 1, fill=False, edgecolor="black", linewidth=1.6, clip_on=False)
    )
    ax.set_xlabel("block")
    ax.set_ylabel("configuration (lowest energy first)")
    ax.set_title(f"Removal map of the top-{k} configurations")
    handles = [Patch(color=REMOVED, label="removed")]
    if fixed_set:
        handles.append(Patch(color=FIXED, label="fixed before the last round"))
    handles.append(Patch(fill=False, edgecolor="black", label="▶ chosen after reranking on real loss"))
    fig.legend(handles=handles, fontsize=8, loc="outside lower center", ncol=len(handles))
    return fig


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties); NaN when undefined."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 3:
        return math.nan

    def ranks(v: np.ndarray) -> np.ndarray:
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v))
        for value in np.unique(v):
            same = v == value
            r[same] = r[same].mean()
        return r

    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return math.nan
    return float(np.corrcoef(rx, ry)[0, 1])


def loss_energy_figure(candidates: Sequence[dict[str, Any]], chosen: int) -> Figure:
    """Real calibration loss of each reranked candidate against its energy."""
    energies = [c["energy"] for c in candidates]
    losses = [c["loss"] for c in candidates]
    fig = Figure(figsize=(7.5, 4.8), layout="constrained")
    ax = fig.add_subplot()
    ax.scatter(energies, losses, color=KEPT, s=30, zorder=2, label="candidate (label: energy rank)")
    ax.scatter(
        [energies[chosen]], [losses[chosen]], marker="*", s=220, color=REMOVED, zorder=3, label="chosen"
    )
    if len(candidates) <= 30:
        for i, (e, loss) in enumerate(zip(energies, losses, strict=True)):
            ax.annotate(str(i), (e, loss), textcoords="offset points", xytext=(4, 3), fontsize=7)
    rho = spearman(energies, losses)
    note = f" (Spearman ρ = {rho:.2f})" if math.isfinite(rho) else ""
    ax.set_title(f"Rerank: real loss vs energy of the top-{len(candidates)}{note}")
    ax.set_xlabel("energy E(x)")
    ax.set_ylabel("calibration loss with the blocks removed")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def perplexity_figure(
    series: dict[tuple[str, str], list[tuple[int, float]]],
    ylabel: str,
    extra: list[tuple[int, float]] | None = None,
    dense: float | None = None,
) -> Figure:
    """Perplexity against the number of removed blocks: one colour per method, one line style per
    granularity; ``extra`` as grey dots, ``dense`` (the unpruned model) as a dashed level."""
    fig = Figure(figsize=(8.5, 5.2), layout="constrained")
    ax = fig.add_subplot()
    methods = list(dict.fromkeys(m for m, _ in series))
    palette = colormaps["tab10" if len(methods) <= 10 else "tab20"]
    styles = {"layer": "-", "sublayer": "--", "mixed": ":"}
    values = [p for pts in series.values() for _, p in pts] + [p for _, p in extra or []]
    for (method, granularity), points in series.items():
        points = sorted(points)
        ax.plot(
            [x for x, _ in points],
            [y for _, y in points],
            marker="o",
            markersize=4,
            color=palette(methods.index(method) % palette.N),
            linestyle=styles.get(granularity or "layer", "-."),
            label=f"{method} ({granularity})" if granularity else method,
        )
    if extra:
        ax.scatter(
            [x for x, _ in extra],
            [y for _, y in extra],
            s=14,
            color="#999999",
            zorder=1,
            label="other top-K candidates",
        )
    if dense is not None:
        ax.axhline(dense, color="black", linestyle=(0, (2, 2)), linewidth=1, label=f"unpruned ({dense:.2f})")
        values.append(dense)
    if values and max(values) / max(min(values), 1e-12) > 20:
        ax.set_yscale("log")
    xs = sorted({x for pts in series.values() for x, _ in pts})
    if xs and len(xs) <= 25:
        ax.set_xticks(xs)
    ax.set_xlabel("blocks removed")
    ax.set_ylabel(ylabel)
    ax.set_title("Perplexity vs number of removed blocks")
    entries = len(series) + bool(extra) + (dense is not None)
    if entries > 8:
        fig.legend(fontsize=7.5, loc="outside right upper")
    else:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return fig


def trajectory_figure(points: Sequence[dict[str, Any]], certified: bool | None) -> Figure:
    """A search's real calibration loss (``loss``, or EvoPress's ``fitness``) against the forward
    passes spent so far; ``certified``: whether the last point is a proven local optimum."""
    xs = [p["forward_passes"] for p in points]
    ys = [p.get("loss", p.get("fitness")) for p in points]
    fig = Figure(figsize=(7.5, 4.4), layout="constrained")
    ax = fig.add_subplot()
    ax.step(xs, ys, where="post", color=KEPT, zorder=2)
    ax.scatter(xs, ys, color=KEPT, s=18, zorder=3, label="after each accepted move")
    if certified is not None:
        label = "certified local optimum" if certified else "last (not certified)"
        ax.scatter(xs[-1:], ys[-1:], marker="*", s=220, color=REMOVED, zorder=4, label=label)
    ax.set_xlabel("forward passes over the calibration set, from the start of the selection")
    ax.set_ylabel("calibration loss")
    ax.set_title("Search trajectory: real loss vs work")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig
