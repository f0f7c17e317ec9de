"""The pruned model's model card: ``README.md`` with Hugging Face YAML front matter saying what was
removed, how it was chosen, and what was measured."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from optimum_blockprune.blocks import parse_block_name
from optimum_blockprune.data.atomic import atomic_file
from optimum_blockprune.energy.model import EnergyModel
from optimum_blockprune.errors import BlockPruneError
from optimum_blockprune.output.layout import CARD_NAME, CONFIG_NAME, ENERGY_NAME, REPORT_NAME, Run, read_json

TAGS = ["optimum-blockprune", "pruned", "depth-pruning", "block-removal"]
#: The demo model is a local conversion of this hub model (from its Q4_1 GGUF file).
DEMO_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def base_model_id(model_id: str) -> str | None:
    """The hub id to name as ``base_model``: the id itself when it is one, the demo model's hub id
    for the bundled demo model, else None (a local folder has no hub id)."""
    from optimum_blockprune.data.demo_assets import DEMO_MODEL, cache_dir

    if not model_id:
        return None
    path = Path(model_id)
    if path.exists():
        try:
            same = path.resolve() == (cache_dir() / DEMO_MODEL).resolve()
        except OSError:
            same = False
        return DEMO_HUB_ID if same else None
    return model_id if _HUB_ID.match(model_id) and not model_id.startswith(".") else None


def _kind(name: str) -> str:
    try:
        return {"layer": "decoder layer", "attn": "attention", "mlp": "MLP", "moe": "MoE", "mamba": "Mamba"}[
            parse_block_name(name)[1]
        ]
    except ValueError:
        return "?"


ENERGY_SUMMARY = (
    "minimising a quadratic energy over removal configurations (a constrained binary problem), "
    "then the best candidates were checked on real calibration loss"
)


def render_model_card(run: Run, name: str, with_report: bool) -> str:
    """The card's text (front matter + markdown)."""
    from huggingface_hub import ModelCardData

    r = run.report
    base = base_model_id(str(r.get("model_id") or ""))
    branch_pruned = bool(r.get("skipped_branches"))
    data = ModelCardData(
        base_model=base,
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=TAGS + (["branch-pruned"] if branch_pruned else []),
    )
    lines = ["---", data.to_yaml(), "---", "", f"# {name}", ""]
    lines += _what_was_removed(run, base)
    lines += _how_chosen(run)
    lines += _measured(run)
    lines += _use(branch_pruned)
    if with_report:
        lines += [
            "## Report",
            "",
            "[report.html](report.html) (self-contained page) and [report.md](report.md) show the "
            "coupling matrix, per-block fields, energy spectrum and removal map of the top candidates, "
            "real loss against energy, and perplexity against the number of removed blocks. Rebuild "
            "them with `optimum-cli blockprune report --input .`.",
            "",
        ]
    lines += [
        "Everything measured while choosing is in `blockprune_report.json`; the settings in "
        "`blockprune_config.json`; the energy model of each round in `blockprune_energy*.safetensors`.",
        "",
    ]
    return "\n".join(lines)


def _method(run: Run) -> tuple[str, str]:
    """(method name, how it chose) as the report records them."""
    method = str(run.report.get("method") or run.config.get("method") or "energy")
    summary = run.report.get("method_summary") or (
        ENERGY_SUMMARY if method == "energy" else f"the {method} method"
    )
    return method, str(summary)


def _what_was_removed(run: Run, base: str | None) -> list[str]:
    r, c = run.report, run.config
    model_id = str(r.get("model_id") or "")
    shown = base or (Path(model_id).name if model_id else "the base model")
    removed, params = run.removed, run.num_params()
    lines = [
        f"`{shown}` with {len(removed)} of its {r.get('num_blocks', '?')} "
        f"{'decoder layers' if c.get('granularity', 'layer') == 'layer' else 'blocks'} removed by "
        f"optimum-blockprune: the blocks were chosen by {_method(run)[1]}."
    ]
    lines += ["", "## What was removed", "", "| block | kind | parameters |", "|---|---|---|"]
    for block in removed:
        count = f"{params[block]:,}" if block in params else "?"
        lines.append(f"| `{block}` | {_kind(block)} | {count} |")
    before, after = r.get("parameters_before"), r.get("parameters_after")
    if isinstance(before, int) and isinstance(after, int) and before:
        lines += [
            "",
            f"Parameters: {before:,} before, {after:,} after "
            f"({100 * (before - after) / before:.1f}% removed).",
        ]
    if r.get("deleted_layers") is not None:
        deleted = ", ".join(str(i) for i in r.get("deleted_layers") or []) or "none"
        lines.append(f"Decoder layers deleted (original indices): {deleted}.")
    if r.get("skipped_branches"):
        lines.append(f"Single branches removed (no-op stand-ins): {', '.join(r['skipped_branches'])}.")
    return lines


def _how_chosen(run: Run) -> list[str]:
    r, c = run.report, run.config
    cal = f"{c.get('num_samples', '?')} samples of {c.get('seq_len', '?')} tokens from `{c.get('calibration', '?')}`"
    tokens = (r.get("cost") or {}).get("calibration_tokens")
    method, summary = _method(run)
    label = "optimum-blockprune (energy minimisation + rerank on real loss)" if method == "energy" else method
    rows = [("method", label), ("granularity", str(c.get("granularity", "layer")))]
    if method == "energy":
        rows += [("energy variant", str(c.get("energy", "?"))), ("solver", str(c.get("solver", "?")))]
    rows.append(("calibration", cal + (f" ({tokens:,} tokens)" if isinstance(tokens, int) else "")))
    if method == "energy":
        rows += [("selection rounds", str(len(run.rounds))), ("top-K reranked", str(len(run.candidates)))]
        certificate = ((r.get("cost") or {}).get("search") or {}).get("certificate")
        if certificate:
            proof = "certified local optimum" if certificate["local_optimum"] else "not certified"
            rows.append(
                ("swap search", f"{proof}: {certificate['settled']} of {certificate['swaps']} swaps settled")
            )
    if c.get("protect") or c.get("force"):
        rows.append(("protected / forced", f"{c.get('protect') or '-'} / {c.get('force') or '-'}"))
    return ["", "## How they were chosen", "", "| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]


def _measured(run: Run) -> list[str]:
    r = run.report
    lines = ["", "## Measured", "", "| | loss | perplexity |", "|---|---|---|"]
    for label, key in (("unpruned (calibration)", "dense_loss"), ("pruned (calibration)", "pruned_loss")):
        value = r.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            lines.append(f"| {label} | {value:.4f} | {math.exp(value):.2f} |")
    cands = run.candidates
    if cands:
        losses = [x["loss"] for x in cands]
        lines.append(
            f"| top-{len(cands)} candidates (calibration) | {min(losses):.4f} to {max(losses):.4f} "
            f"| {math.exp(min(losses)):.2f} to {math.exp(max(losses)):.2f} |"
        )
    ppl = (r.get("healing") or {}).get("heldout_perplexity") or {}
    labels = {"before": "before healing", "after": "after healing", "teacher": "unpruned teacher"}
    for key, value in ppl.items():
        lines.append(f"| held-out, {labels.get(key, key)} | | {value:.2f} |")
    return lines


def _use(branch_pruned: bool) -> list[str]:
    lines = ["", "## Use", "", "```python"]
    if branch_pruned:
        lines += [
            "from optimum_blockprune import load_pruned",
            "",
            'model = load_pruned("path/to/this/folder")  # single branches removed: needs optimum-blockprune',
        ]
    else:
        lines += [
            "from transformers import AutoModelForCausalLM",
            "",
            'model = AutoModelForCausalLM.from_pretrained("path/to/this/folder")  # plain transformers',
        ]
    return lines + ["```", ""]


def write_model_card(folder: str | Path, name: str | None = None, with_report: bool = False) -> Path:
    """Write ``README.md`` into the pruned model folder (atomically); returns its path."""
    folder = Path(folder)
    report, config = read_json(folder / REPORT_NAME), read_json(folder / CONFIG_NAME)
    if not isinstance(report, dict) or not isinstance(config, dict):
        raise BlockPruneError(f"{folder} holds no pruning report to describe in a model card")
    run = Run(folder, report, config)  # not load_run: a card needs no selection rounds
    try:
        if (folder / ENERGY_NAME).is_file():
            run.energies = [EnergyModel.load(folder / ENERGY_NAME)]
    except BlockPruneError:  # parameter counts per block are optional in the card
        run.energies = []
    text = render_model_card(run, name or folder.resolve().name, with_report)
    with atomic_file(folder / CARD_NAME) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return folder / CARD_NAME


def card_metadata(path: str | Path) -> dict[str, Any]:
    """The YAML front matter of a model card, parsed."""
    from huggingface_hub import ModelCard

    return ModelCard.load(Path(path)).data.to_dict()
