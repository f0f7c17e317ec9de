"""The layout of a pruned model folder: its file names, and the readers of what ``prune`` wrote
(report, config, energy models). The bottom of :mod:`optimum_blockprune.output`: the writers
(saving, model card, report) import it, never the other way round."""

from __future__ import annotations

import fnmatch
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optimum_blockprune.blocks import parse_block_name
from optimum_blockprune.config import BlockPruneConfig
from optimum_blockprune.energy.model import EnergyModel
from optimum_blockprune.errors import BlockPruneError

REPORT_NAME = "blockprune_report.json"
ENERGY_NAME = "blockprune_energy.safetensors"
CONFIG_NAME = BlockPruneConfig.CONFIG_NAME
CARD_NAME = "README.md"
HTML_NAME = "report.html"
MARKDOWN_NAME = "report.md"
FILES_DIR = "report_files"

#: Every top-level name this tool (with transformers' ``save_pretrained``, a tokenizer's
#: ``save_pretrained`` and the Trainer's checkpoints) may write in an output or checkpoint folder.
#: ``--overwrite`` replaces a folder only when all its entries match one of these.
TOOL_FILE_PATTERNS = (
    "blockprune_*",
    CARD_NAME,
    HTML_NAME,
    MARKDOWN_NAME,
    FILES_DIR,
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model-*-of-*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "checkpoint-*",
    "runs",
    "trainer_state.json",
    "training_args.bin",
    ".*.tmp-*",
)


def is_tool_file(name: str) -> bool:
    """Whether ``name`` (an entry at the top of an output folder) is one this tool writes."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in TOOL_FILE_PATTERNS)


def is_report_image(name: str) -> bool:
    """Whether ``name`` (an entry of ``report_files/``) is one of the report's plots."""
    return fnmatch.fnmatchcase(name, "*.png")


def energy_file_name(round_number: int) -> str:
    """File of round ``round_number``'s energy model (1-based): the first round's (at the unpruned
    model) is ``blockprune_energy.safetensors``, later re-centring rounds add ``.round{r}``."""
    return (
        ENERGY_NAME
        if round_number == 1
        else ENERGY_NAME.replace(".safetensors", f".round{round_number}.safetensors")
    )


_HINT = "give the output folder of 'optimum-cli blockprune prune'"


def read_json(path: Path) -> Any:
    """Parsed JSON of ``path``; a one-line error for a missing or damaged file."""
    if not path.is_file():
        raise BlockPruneError(f"file not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BlockPruneError(f"cannot read {path}: {reason}") from None


@dataclass
class Run:
    """One pruning run as saved in its output folder."""

    folder: Path
    report: dict[str, Any]
    config: dict[str, Any]
    energies: list[EnergyModel] = field(default_factory=list)

    @property
    def removed(self) -> list[str]:
        return list(self.report.get("removed") or self.config.get("removed_blocks") or [])

    @property
    def rounds(self) -> list[dict[str, Any]]:
        return list(self.report.get("rounds") or [])

    @property
    def candidates(self) -> list[dict[str, Any]]:
        """The last round's candidates (the top-K that were reranked), lowest energy first."""
        return list(self.rounds[-1]["candidates"]) if self.rounds else []

    @property
    def chosen(self) -> int:
        return int(self.rounds[-1].get("chosen", 0)) if self.rounds else 0

    @property
    def fixed(self) -> list[str]:
        """Blocks every last-round candidate shares: forced, or kept from earlier re-centring rounds."""
        cands = self.candidates
        if not cands:
            return []
        common = set(cands[0]["removed"]).intersection(*(set(c["removed"]) for c in cands[1:]))
        if len(self.rounds) > 1:
            earlier = self.rounds[-2]
            common &= set(earlier["candidates"][earlier.get("chosen", 0)]["removed"])
        else:
            common &= set(self.config.get("force") or [])
        return sorted(common, key=_block_order)

    @property
    def block_names(self) -> list[str]:
        if self.energies:
            return list(self.energies[0].block_names)
        names = {n for c in self.candidates for n in c["removed"]} | set(self.removed)
        return sorted(names, key=_block_order)

    def num_params(self) -> dict[str, int]:
        """Parameter count of every block (from the energy model; empty without one)."""
        if not self.energies:
            return {}
        e = self.energies[0]
        return {n: int(p) for n, p in zip(e.block_names, e.num_params, strict=True)}

    def own_perplexities(self) -> list[tuple[int, float]]:
        """(blocks removed, calibration perplexity) of the unpruned model and each round's choice."""
        points = []
        if _finite(self.report.get("dense_loss")):
            points.append((0, math.exp(self.report["dense_loss"])))
        for r in self.rounds:
            best = r["candidates"][r.get("chosen", 0)]
            if _finite(best.get("loss")):
                points.append((len(best["removed"]), math.exp(best["loss"])))
        return points


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _block_order(name: str) -> tuple[int, str]:
    try:
        layer, kind = parse_block_name(name)
    except ValueError:
        return (10**9, name)
    return (layer, "" if kind == "layer" else kind)


def load_run(folder: str | Path, require_energy: bool = True) -> Run:
    """The run saved in ``folder``; one-line errors for anything that is not a pruned output."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BlockPruneError(f"{folder} is not a folder; {_HINT}")
    for name in (REPORT_NAME, CONFIG_NAME):
        if not (folder / name).is_file():
            raise BlockPruneError(f"{folder} is not a pruned model folder (no {name}); {_HINT}")
    report = read_json(folder / REPORT_NAME)
    config = read_json(folder / CONFIG_NAME)
    if not isinstance(report, dict) or not isinstance(config, dict):
        raise BlockPruneError(f"{folder / REPORT_NAME} is not a pruning report; {_HINT}")
    rounds = report.get("rounds")
    valid = isinstance(rounds, list) and rounds
    valid = valid and all(
        isinstance(r, dict)
        and isinstance(r.get("candidates"), list)
        and r["candidates"]
        and all(isinstance(c, dict) and {"removed", "energy", "loss"} <= c.keys() for c in r["candidates"])
        for r in rounds
    )
    if not valid:
        raise BlockPruneError(
            f"{folder / REPORT_NAME} holds no selection rounds (candidates with energies and losses); {_HINT}"
        )
    energies = []
    if require_energy:
        for name in report.get("energy_files") or [ENERGY_NAME]:
            path = folder / name
            if not path.is_file():
                raise BlockPruneError(
                    f"{folder} lacks {name}, the energy model the report plots; build the report from the "
                    "folder 'prune' wrote (a healed copy does not carry it), or prune again with this version"
                )
            energies.append(EnergyModel.load(path))
    return Run(folder, report, config, energies)
