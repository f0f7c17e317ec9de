"""The visual report of a pruning run: ``report.html`` (self-contained: PNGs inlined as base64, no
scripts, no external assets) and ``report.md`` with its PNGs in ``report_files/``.

Built from a pruned model folder alone (``blockprune_report.json``, ``blockprune_config.json`` and
the energy model of each round), so ``optimum-cli blockprune report`` can rebuild it at any time.
"""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optimum_blockprune.data.atomic import atomic_file, atomic_output_dir
from optimum_blockprune.errors import BlockPruneError
from optimum_blockprune.output.layout import (
    FILES_DIR,
    HTML_NAME,
    MARKDOWN_NAME,
    Run,
    is_report_image,
    load_run,
    read_json,
)
from optimum_blockprune.output.modelcard import base_model_id


@dataclass
class Plot:
    key: str  # file stem in report_files/ and the <img> id
    title: str
    caption: str
    png: bytes


@dataclass
class ReportFiles:
    html: Path
    markdown: Path
    images: list[Path]


# ----------------------------------------------------------------- inputs
@dataclass
class Methods:
    """Per-method perplexities: ``series[(method, granularity)] = [(removed, perplexity), ...]``."""

    series: dict[tuple[str, str], list[tuple[int, float]]]
    dense: float | None = None  # the unpruned model's perplexity, where the file gives it


def read_methods(path: str | Path) -> Methods:
    """Rows ``{"method", "granularity", "removed", "perplexity"}`` from a JSON list, or from an
    object holding it under ``rows`` (then an optional ``dense_perplexity`` too), as
    ``benchmarks/results/methods.json``; ``removed`` is a count or a list of block names."""
    path = Path(path)
    data = read_json(path)
    dense = None
    if isinstance(data, dict):
        dense = data.get("dense_perplexity")
        data = next((data[k] for k in ("rows", "results", "methods") if isinstance(data.get(k), list)), None)
    if not isinstance(data, list) or not data:
        raise BlockPruneError(
            f"{path} holds no rows; --methods expects a JSON list of "
            '{"method", "granularity", "removed", "perplexity"} objects'
        )
    series: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for i, row in enumerate(data):
        if not isinstance(row, dict) or not {"method", "removed", "perplexity"} <= row.keys():
            raise BlockPruneError(f"{path}: row {i} needs the keys method, removed and perplexity")
        removed = row["removed"]
        count = len(removed) if isinstance(removed, list) else removed
        ppl = row["perplexity"]
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise BlockPruneError(
                f"{path}: row {i} has removed={removed!r}; give a count or a list of blocks"
            )
        if ppl is None:
            continue  # a method that did not run at this size
        if not _positive(ppl):
            raise BlockPruneError(f"{path}: row {i} has perplexity={ppl!r}; give a positive number")
        key = (str(row["method"]), str(row.get("granularity") or "layer"))
        series.setdefault(key, []).append((count, float(ppl)))
    return Methods(series, float(dense) if _positive(dense) else None)


def _positive(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


# ----------------------------------------------------------------- figures
def make_plots(run: Run, methods: Methods | None = None) -> list[Plot]:
    """Every figure of the report, as PNG bytes."""
    from optimum_blockprune.output.report import plots as rp

    removed = run.removed
    cands, chosen = run.candidates, run.chosen
    first = run.energies[0]
    plots = []

    def add(key: str, title: str, caption: str, fig: Any) -> None:
        plots.append(Plot(key, title, caption, rp.png_bytes(fig)))

    add(
        "coupling",
        "Coupling matrix",
        f"Pairwise couplings J of the '{first.variant}' energy E(x) = hᵀx + xᵀJx over removal vectors x. "
        "Red: two blocks hurt more together than the sum of their own energies; blue: less. "
        "The diagonal (grey) belongs to each block's own energy (next figure). Removed blocks in red.",
        rp.coupling_figure(first, removed),
    )
    add(
        "fields",
        "Per-block fields",
        "Energy of removing each block alone (h_i + J_ii). Bars: the first round, on the unpruned model; "
        "dots: later re-centring rounds, re-measured on the partially pruned model (only the blocks "
        "they scored). Red bars: blocks removed in the end.",
        rp.fields_figure(run.energies, removed),
    )
    add(
        "spectrum",
        "Energy spectrum",
        f"Energies of the {len(cands)} lowest-energy configurations the solver returned in the last "
        "round, in order; the star is the one with the lowest real calibration loss, which was kept.",
        rp.spectrum_figure(cands, chosen),
    )
    add(
        "removal_map",
        "Removal map",
        "Which blocks each of the top configurations removes (rows, lowest energy first). "
        "Grey: blocks fixed before the last round (forced or chosen by earlier re-centring rounds).",
        rp.removal_map_figure(cands, chosen, run.block_names, run.fixed),
    )
    add(
        "loss_vs_energy",
        "Rerank: loss vs energy",
        "Real calibration loss of each reranked configuration against its energy. A good energy "
        "ranks configurations as the real loss does (Spearman ρ near 1).",
        rp.loss_energy_figure(cands, chosen),
    )
    caption, fig = _perplexity_plot(run, methods)
    add("perplexity", "Perplexity vs removed blocks", caption, fig)
    cost = run.report.get("cost") or {}
    search = cost.get("search") or {}
    points = search.get("trajectory") or cost.get("trajectory")
    if points:
        certified = (search.get("certificate") or {}).get("local_optimum")
        add(
            "trajectory",
            "Search trajectory",
            "Real calibration loss of the search's configuration against the forward passes spent "
            "since the selection began (the swap search starts from the best reranked candidate). "
            + _certificate_text(search.get("certificate")),
            rp.trajectory_figure(points, certified),
        )
    return plots


def _certificate_text(certificate: dict | None) -> str:
    """The local-optimality certificate of a swap search, in words."""
    if not certificate:
        return ""
    swaps, settled, bound = certificate["swaps"], certificate["settled"], certificate["by_bound"]
    if certificate["local_optimum"]:
        return (
            f"Certified local optimum: none of its {swaps} single swaps lowers the calibration loss "
            f"({bound} of them shown by the loss bound before every sample was scored)."
        )
    return f"Not certified: {certificate['reason']} after {settled} of its {swaps} single swaps were settled."


def _perplexity_plot(run: Run, methods: Methods | None) -> tuple[str, Any]:
    """Caption and figure of perplexity against removed blocks: per method from ``methods``, else
    this run's own rounds and reranked candidates."""
    from optimum_blockprune.output.report import plots as rp

    if methods:
        caption = (
            "Perplexity of each method (from the --methods file) by number of removed blocks; solid "
            "lines: whole layers, dashed: single branches (sublayer blocks), dotted: mixed."
        )
        return caption, rp.perplexity_figure(methods.series, "perplexity", dense=methods.dense)
    cands, chosen = run.candidates, run.chosen
    own = run.own_perplexities()
    extra = [(len(c["removed"]), math.exp(c["loss"])) for i, c in enumerate(cands) if i != chosen]
    caption = (
        "Calibration perplexity of this run: the unpruned model (0) and the configuration kept in "
        "each round; grey dots: the other reranked candidates. Pass --methods FILE to compare methods."
    )
    return caption, rp.perplexity_figure({("this run", ""): own}, "calibration perplexity", extra)


# ----------------------------------------------------------------- text
def _fmt_params(n: Any) -> str:
    return f"{n / 1e6:.2f}M" if isinstance(n, (int, float)) else "?"


def _solver_text(run: Run) -> str:
    """The configured solver, the one that ran when they differ, and whether it proved optimality."""
    info = run.rounds[-1].get("solver", {}) if run.rounds else {}
    solver = str(run.config.get("solver", "?"))
    if info.get("solver") and info.get("solver") != solver:
        solver += f" ({info['solver']})"
    if "optimal" in info:
        solver += ", ground state proven optimal" if info["optimal"] else ", optimality not proven"
    return solver


def summary_rows(run: Run) -> list[tuple[str, str]]:
    """(label, value) pairs describing what was removed, how, and what was measured."""
    r, c = run.report, run.config
    model_id = str(r.get("model_id", "?"))
    rows = [
        ("model", base_model_id(model_id) or model_id),
        ("architecture adapter", str(r.get("adapter", "?"))),
    ]
    removed = run.removed
    rows.append(("removed", f"{len(removed)} of {r.get('num_blocks', '?')} blocks: {', '.join(removed)}"))
    before, after = r.get("parameters_before"), r.get("parameters_after")
    if isinstance(before, int) and isinstance(after, int) and before:
        rows.append(
            (
                "parameters",
                f"{_fmt_params(before)} → {_fmt_params(after)} ({100 * (before - after) / before:.1f}% removed)",
            )
        )
    dense, pruned = r.get("dense_loss"), r.get("pruned_loss")
    if isinstance(dense, (int, float)) and isinstance(pruned, (int, float)):
        rows.append(
            (
                "calibration loss (perplexity)",
                f"{dense:.4f} ({math.exp(dense):.2f}) → {pruned:.4f} ({math.exp(pruned):.2f})",
            )
        )
    healing = r.get("healing") or {}
    ppl = healing.get("heldout_perplexity") or {}
    if ppl:
        rows.append(("held-out perplexity (healing)", ", ".join(f"{k} {v:.2f}" for k, v in ppl.items())))
    rows.append(("granularity", str(c.get("granularity", "layer"))))
    rows.append(("energy", str(c.get("energy", "?"))))
    rows.append(("solver", _solver_text(run)))
    rows.append(
        ("rounds", f"{len(run.rounds)} (top-{len(run.candidates)} reranked on real loss in the last)")
    )
    cal = f"{c.get('calibration', '?')}: {c.get('num_samples', '?')} samples x {c.get('seq_len', '?')} tokens"
    tokens = (r.get("cost") or {}).get("calibration_tokens")
    rows.append(("calibration", cal + (f" ({tokens} tokens)" if tokens else "")))
    cost = r.get("cost") or {}
    if cost:
        rows.append(
            (
                "selection cost",
                f"{cost.get('forward_equivalents', '?')} forward-pass equivalents, "
                f"{cost.get('backward_passes', 0)} backward passes, "
                f"{(r.get('seconds') or {}).get('select', 0):.0f} s",
            )
        )
    search = cost.get("search")
    if search:
        rows.append(
            (
                "swap search",
                f"{len(search['accepted'])} swaps accepted, calibration loss {search['start_loss']:.4f} → "
                f"{search['loss']:.4f}. {_certificate_text(search['certificate'])}",
            )
        )
    if c.get("protect") or c.get("force"):
        rows.append(("protected / forced", f"{c.get('protect') or '-'} / {c.get('force') or '-'}"))
    versions = r.get("versions") or {}
    if versions:
        rows.append(("versions", ", ".join(f"{k} {v}" for k, v in versions.items())))
    return rows


def _candidate_rows(run: Run) -> list[list[str]]:
    return [
        [
            f"{i}{' (chosen)' if i == run.chosen else ''}",
            f"{c['energy']:.6g}",
            f"{c['loss']:.4f}",
            f"{math.exp(c['loss']):.2f}",
            " ".join(c["removed"]),
        ]
        for i, c in enumerate(run.candidates)
    ]


_CANDIDATE_HEADER = ["rank", "energy", "calibration loss", "perplexity", "removed blocks"]

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1200px; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.92em; }
td, th { border: 1px solid #ddd; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } tr.chosen td { background: #fdecea; font-weight: bold; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.92em; max-width: 900px; }
code { background: #f3f3f3; padding: 0 0.2em; }
"""


def render_html(title: str, run: Run, plots: list[Plot]) -> str:
    e = html.escape
    summary = "\n".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in summary_rows(run))
    figures = "\n".join(
        f'<h2 id="{p.key}">{e(p.title)}</h2>\n<figure>\n'
        f'<img class="plot" id="plot-{p.key}" alt="{e(p.title)}" '
        f'src="data:image/png;base64,{base64.b64encode(p.png).decode("ascii")}">\n'
        f"<figcaption>{e(p.caption)}</figcaption>\n</figure>"
        for p in plots
    )
    head = "".join(f"<th>{e(h)}</th>" for h in _CANDIDATE_HEADER)
    body = "\n".join(
        f"<tr{' class=chosen' if i == run.chosen else ''}>"
        + "".join(f"<td>{e(x)}</td>" for x in row)
        + "</tr>"
        for i, row in enumerate(_candidate_rows(run))
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{e(title)}</title>
<style>{_CSS}</style>
</head>
<body>
<h1>{e(title)}</h1>
<p>Written by optimum-blockprune from the pruned model folder's <code>blockprune_report.json</code>,
<code>blockprune_config.json</code> and energy model files.</p>
<h2 id="summary">Summary</h2>
<table>
{summary}
</table>
{figures}
<h2 id="candidates">Reranked candidates (last round)</h2>
<table>
<tr>{head}</tr>
{body}
</table>
</body>
</html>
"""


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(title: str, run: Run, plots: list[Plot]) -> str:
    lines = [f"# {title}", "", "## Summary", "", "| | |", "|---|---|"]
    lines += [f"| {_md_cell(k)} | {_md_cell(v)} |" for k, v in summary_rows(run)]
    for p in plots:
        lines += ["", f"## {p.title}", "", f"![{p.title}]({FILES_DIR}/{p.key}.png)", "", p.caption]
    lines += ["", "## Reranked candidates (last round)", ""]
    lines += ["| " + " | ".join(_CANDIDATE_HEADER) + " |", "|" + "---|" * len(_CANDIDATE_HEADER)]
    lines += ["| " + " | ".join(_md_cell(x) for x in row) + " |" for row in _candidate_rows(run)]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------- writing
def build_report(
    folder: str | Path,
    output: str | Path | None = None,
    methods: str | Path | None = None,
    *,
    name: str | None = None,
) -> ReportFiles:
    """Write ``report.html``, ``report.md`` and ``report_files/*.png`` for the pruned model in
    ``folder`` into ``output`` (default: ``folder``). ``methods``: a JSON file of per-method
    perplexities for the perplexity figure. ``name`` titles the report (default: the folder's name)."""
    run = load_run(folder)
    series = read_methods(methods) if methods is not None else None
    output = Path(folder if output is None else output)
    if output.exists() and not output.is_dir():
        raise BlockPruneError(f"output {output} is a file, not a folder; choose another --output")
    title = f"Block pruning report: {name or Path(folder).resolve().name}"
    plots = make_plots(run, series)
    pages = {MARKDOWN_NAME: render_markdown(title, run, plots), HTML_NAME: render_html(title, run, plots)}
    try:
        output.mkdir(parents=True, exist_ok=True)
        # the PNG folder is swapped whole and the pages come last: a reader never sees a page without its images
        with atomic_output_dir(output / FILES_DIR, overwrite=True, owned=is_report_image) as images:
            for p in plots:
                (images / f"{p.key}.png").write_bytes(p.png)
        for page, text in pages.items():
            with atomic_file(output / page) as tmp:
                tmp.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise BlockPruneError(f"cannot write the report to {output}: {exc.strerror or exc}") from None
    return ReportFiles(
        output / HTML_NAME, output / MARKDOWN_NAME, [output / FILES_DIR / f"{p.key}.png" for p in plots]
    )
