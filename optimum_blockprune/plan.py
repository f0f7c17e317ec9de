"""Check a whole pruning request before any weights load.

:func:`validate_request` reads only the model's ``config.json`` (a folder, a Hub id or ``demo``),
builds the model's skeleton on the meta device where its adapter is certain, and checks every
setting against it: solver and method names, method × granularity, block names of ``protect`` /
``force``, block counts and kinds, the calibration source and the output folder. Each refusal is
a :class:`~optimum_blockprune.errors.SettingError` naming the setting (the CLI names its flag)."""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from optimum_blockprune.blocks import Block, parse_block_name
from optimum_blockprune.config import BlockPruneConfig
from optimum_blockprune.data.texts import DEMO_SOURCE
from optimum_blockprune.errors import BlockPruneError, SettingError
from optimum_blockprune.model.marker import CONFIG_KEY
from optimum_blockprune.output.saving import check_output as check_saving_output

if TYPE_CHECKING:
    from optimum_blockprune.model.adapters.base import Adapter

__all__ = [
    "DEMO_MODEL",
    "Plan",
    "check_blocks",
    "granularity_of",
    "check_settings",
    "resolve_model",
    "validate_request",
]

#: The value of ``model`` (``--model demo``) that selects the bundled demo model.
DEMO_MODEL = "demo"
#: ``name`` or ``owner/name``, as the Hub spells repository ids.
_HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")


@dataclass
class Plan:
    """A checked request: what ``from_pretrained`` gets, the model's config, its adapter and
    blocks (``None`` where they are known only once the model is loaded, e.g. the generic
    adapter, which proves itself with a real forward pass)."""

    model: str
    model_config: Any
    adapter: Adapter | None
    blocks: list[Block] | None
    revision: str | None = None


def _local_looking(source: str) -> bool:
    """A path rather than a Hub id: starts like a path, or its parent folder exists."""
    if source.startswith((".", "/", "~", "\\")) or not _HUB_ID.fullmatch(source):
        return True
    parent = Path(source).parent
    return str(parent) not in ("", ".") and parent.is_dir()


def resolve_model(model: str | Path | None, revision: str | None = None) -> tuple[str, Any]:
    """``(source, config)``: the folder or Hub id to load (``demo``: the bundled model) and its
    transformers config, read without weights."""
    if model is None or str(model).strip() == "":
        raise SettingError(
            "model", "say which model to use: {name} FOLDER, {name} HUB_ID, or {name} demo (the bundled demo)"
        )
    source = str(model)
    if source == DEMO_MODEL:
        from optimum_blockprune.data.demo_assets import demo_model_path

        source = str(demo_model_path())
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise SettingError(
                "model", f"{source} has no config.json; give {{name}} a folder saved with save_pretrained"
            )
        from optimum_blockprune.model.pruned_format import read_config

        return str(path), _read(lambda: read_config(path), source)
    if path.exists() or _local_looking(source):
        raise SettingError(
            "model", f"model folder not found: {source}; give {{name}} a folder, a Hub id or demo"
        )
    from transformers import AutoConfig

    return source, _read(lambda: AutoConfig.from_pretrained(source, revision=revision), source)


def _read(load: Any, source: str) -> Any:
    """The config ``load()`` returns; a one-line error naming ``--model`` otherwise."""
    try:
        return load()
    except BlockPruneError as exc:
        raise SettingError("model", f"{{name}} {source}: {exc}") from None
    except Exception as exc:  # transformers raises OSError, ValueError, KeyError, ...
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise SettingError("model", f"cannot read the config of {{name}} {source}: {first}") from None


def adapter_for(model_config: Any, name: str | None = None) -> Adapter | None:
    """The adapter named ``name``, or the specific adapter declaring the config's model type;
    ``None`` when only the generic fallback might apply (decided once the model is loaded)."""
    from optimum_blockprune.model.registry import adapters

    registry = adapters()
    if name is not None:
        if name not in registry:
            raise SettingError(
                "adapter", f"unknown {{name}} {name!r}; registered: {', '.join(sorted(registry))}"
            )
        return registry[name]
    model_type = getattr(model_config, "model_type", None)
    for adapter in registry.values():
        if not getattr(adapter, "fallback", False) and model_type in adapter.model_types:
            return adapter
    return None


def skeleton(model_config: Any, adapter: Adapter | None) -> Any:
    """The model built on the meta device (no memory, no weights), or ``None`` when that is not
    certain to show its blocks (the generic adapter proves itself on real weights)."""
    if adapter is None or getattr(adapter, "fallback", False):
        return None
    import torch
    from transformers import AutoModelForCausalLM

    from optimum_blockprune.model.pruned_format import skips_applied

    try:
        with skips_applied(model_config), torch.device("meta"):
            return AutoModelForCausalLM.from_config(model_config)
    except Exception:  # an architecture the skeleton cannot show: the checks wait for the model
        return None


def skeleton_blocks(model_config: Any, adapter: Adapter | None, granularity: str) -> list[Block] | None:
    """The adapter's blocks of the weightless model, or ``None`` when not certain."""
    model = skeleton(model_config, adapter)
    return None if model is None else _blocks(adapter, model, granularity)


def _blocks(adapter: Adapter, model: Any, granularity: str) -> list[Block] | None:
    try:
        return adapter.blocks(model, granularity)
    except Exception:
        return None


def _raw_config(model: str | Path | None) -> Any | None:
    """``model_type`` and ``num_hidden_layers`` of a local folder's plain ``config.json``, read as
    JSON (importing transformers' config classes costs about a second); ``None`` otherwise."""
    if model is None or str(model) == DEMO_MODEL:
        return None
    try:
        data = json.loads((Path(str(model)).expanduser() / "config.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or CONFIG_KEY in data or not isinstance(data.get("model_type"), str):
        return None
    return SimpleNamespace(model_type=data["model_type"], num_hidden_layers=data.get("num_hidden_layers"))


def _check_layer_counts(
    config: BlockPruneConfig, model_config: Any, chosen: Adapter | None, blocks: Sequence[str] | None
) -> None:
    """What the layer count alone settles, without a skeleton: counts at layer granularity and the
    ranges of named blocks (only for architectures a specific adapter declares)."""
    layers = getattr(model_config, "num_hidden_layers", None) if chosen is not None else None
    if isinstance(layers, int) and layers > 0:
        whole = [Block(i, "layer", 0) for i in range(layers)]
        if config.granularity == "layer":
            _check_counts(config, whole)
        for setting, names in (("protect", config.protect), ("force", config.force), ("blocks", blocks)):
            _check_range(names or [], layers, setting)


def validate_request(
    config: BlockPruneConfig,
    model: str | Path | None,
    *,
    output: str | Path | None = None,
    overwrite: bool = False,
    revision: str | None = None,
    adapter: str | None = None,
    blocks: Sequence[str] | None = None,
) -> Plan:
    """Check everything about a pruning request that can be checked without weights; a
    :class:`SettingError` naming the setting and the fix for the first problem found. ``blocks``:
    names to remove as given (``apply``), checked against the model's layers and branches."""
    check_settings(config)
    if blocks is not None:
        granularity_of(blocks)
    if output is not None:  # first: a filesystem check, before transformers is imported
        check_output(output, overwrite, None if model is None else str(Path(str(model)).expanduser()))
    raw = _raw_config(model)
    if raw is not None:  # a local folder: what its config.json settles, before transformers is imported
        _check_layer_counts(config, raw, adapter_for(raw, adapter), blocks)
    source, model_config = resolve_model(model, revision)
    chosen = adapter_for(model_config, adapter)
    _check_layer_counts(config, model_config, chosen, blocks)
    meta = skeleton(model_config, chosen)
    if meta is not None and blocks is not None:
        every = (_blocks(chosen, meta, "mixed") or []) + (_blocks(chosen, meta, "sublayer") or [])
        check_blocks(blocks, every)
    found = None if meta is None else _blocks(chosen, meta, config.granularity)
    if found is not None:
        check_settings(config, found)
    return Plan(source, model_config, chosen, found, revision)


def check_output(output: str | Path, overwrite: bool, source: str | None = None) -> Path:
    """The output folder as :func:`~optimum_blockprune.output.saving.save_pruned` will want it:
    never inside or around the model's own folder ``source``; empty, or ``overwrite`` with only
    files this tool writes in it."""
    local = source if source is not None and Path(source).exists() else None
    try:
        return check_saving_output(output, overwrite, source=local)
    except SettingError:
        raise
    except BlockPruneError as exc:
        raise SettingError("output", str(exc).replace("--output", "{name}")) from None


def check_settings(config: BlockPruneConfig, blocks: Sequence[Block] | None = None) -> None:
    """The settings against the registries (solver, method × granularity), the calibration
    source and, given ``blocks`` (the model's blocks at ``config.granularity``), block names and
    counts."""
    from optimum_blockprune.selection.registry import get_method
    from optimum_blockprune.solvers.registry import solvers

    known = solvers()
    if config.solver != "auto" and config.solver not in known:
        raise SettingError(
            "solver", f"unknown {{name}} {config.solver!r}; choose auto or one of {', '.join(sorted(known))}"
        )
    method = get_method(config.method)
    if config.granularity not in method.granularities:
        raise SettingError(
            "granularity",
            f"method {config.method!r} works at {{name}} {' or '.join(method.granularities)}, "
            f"not {config.granularity!r}; pass {{name}} {method.granularities[0]} or choose another method",
        )
    if config.latency_budget and not method.budget:
        setting = "target_speedup" if config.target_speedup is not None else "target_latency"
        raise SettingError(
            setting,
            f"method {config.method!r} takes a block count (--remove or --ratio), not a latency budget; "
            "use --method energy for {name}",
        )
    _check_kinds(config)
    _check_objective(config)
    check_calibration(config.calibration)
    for setting in ("protect", "force"):  # spelling first: it needs no model
        granularity_of(getattr(config, setting) or [], setting)
    if blocks is not None:
        _check_counts(config, blocks)
        for setting in ("protect", "force"):
            check_blocks(getattr(config, setting) or [], blocks, setting)


def _check_objective(config: BlockPruneConfig) -> None:
    """``kl`` needs a loss-measured energy (the gradient ones differentiate cross-entropy), and
    only ``evopress`` takes a generation budget."""
    from optimum_blockprune.energy.variants import GRADIENT_VARIANTS

    if config.objective != "ce" and config.method == "energy" and config.energy in GRADIENT_VARIANTS:
        raise SettingError(
            "objective",
            f"{{name}} {config.objective} needs an energy measured on real loss, not the gradient energy "
            f"{config.energy!r} (of cross-entropy); pass --energy recentred or {{name}} ce",
        )
    if config.generations is not None and config.method != "evopress":
        raise SettingError(
            "generations", "{name} is the budget of --method evopress; drop it or use that method"
        )
    if config.search_budget is not None and (config.method != "energy" or config.search == "none"):
        raise SettingError(
            "search_budget",
            "{name} is the budget of the energy method's swap search; drop it, or use --method energy "
            "with --search swap or certify",
        )


def _check_kinds(config: BlockPruneConfig) -> None:
    """Counts per kind must match the granularity: branches are blocks only below ``layer``."""
    if not isinstance(config.remove, dict):
        return
    kinds = [k for k, n in config.remove.items() if n]
    if config.granularity == "layer" and any(k != "layer" for k in kinds):
        raise SettingError(
            "remove", f"{{name}} {','.join(kinds)} counts branches; use --granularity sublayer (or mixed)"
        )
    if config.granularity == "sublayer" and "layer" in kinds:
        raise SettingError("remove", "{name} layer= counts whole layers; use --granularity layer (or mixed)")


def _check_counts(config: BlockPruneConfig, blocks: Sequence[Block]) -> None:
    """Block counts no larger than the model has (of each kind asked for)."""
    if isinstance(config.remove, int) and config.remove >= len(blocks):
        raise SettingError(
            "remove",
            f"{{name}} {config.remove}: the model has {len(blocks)} blocks at granularity "
            f"{config.granularity}; choose between 1 and {len(blocks) - 1}",
        )
    if isinstance(config.remove, dict):
        have: dict[str, int] = {}
        for block in blocks:
            have[block.kind] = have.get(block.kind, 0) + 1
        for kind, count in config.remove.items():
            if count and kind not in have:
                raise SettingError(
                    "remove",
                    f"{{name}} {kind}={count}: this model has no {kind} blocks (it has {', '.join(have)})",
                )
            if count > have.get(kind, 0):
                raise SettingError(
                    "remove",
                    f"{{name}} {kind}={count}: the model has {have[kind]} {kind} blocks; ask for fewer",
                )


def check_blocks(names: Iterable[str], blocks: Sequence[Block], setting: str = "blocks") -> None:
    """Every name is a block of the model (given its ``blocks``); one line naming ``setting`` and
    the closest valid name otherwise."""
    valid = [b.name for b in blocks]
    layers = sorted({b.layer for b in blocks})
    for name in names:
        try:
            layer, kind = parse_block_name(name)
        except ValueError:
            raise SettingError(
                setting, f"{{name}}: {name!r} is not a block name; did you mean {_guess(name)}?"
            ) from None
        if layers and not layers[0] <= layer <= layers[-1]:
            raise SettingError(
                setting,
                f"{{name}}: {name} is out of range; the model's layers are layers.{layers[0]} ... layers.{layers[-1]}",
            )
        if name not in valid:
            close = difflib.get_close_matches(name, valid, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise SettingError(
                setting,
                f"{{name}}: {name} is not a block at this granularity; {hint}blocks are {valid[0]} ... {valid[-1]}",
            )


def _check_range(names: Iterable[str], layers: int, setting: str) -> None:
    """Every (well-spelt) name's layer index lies below the model's layer count."""
    for name in names:
        if parse_block_name(name)[0] >= layers:
            raise SettingError(
                setting,
                f"{{name}}: {name} is out of range; the model's layers are layers.0 ... layers.{layers - 1}",
            )


def granularity_of(names: Iterable[str], setting: str = "blocks") -> str:
    """The granularity a list of block names needs: ``layer``, ``sublayer`` or ``mixed``; a
    misspelt name is an error naming ``setting`` and the name most likely meant."""
    kinds = set()
    for name in names:
        try:
            kinds.add(parse_block_name(name)[1])
        except ValueError:
            raise SettingError(
                setting, f"{{name}}: {name!r} is not a block name; did you mean {_guess(name)}?"
            ) from None
    return "layer" if kinds <= {"layer"} else "sublayer" if "layer" not in kinds else "mixed"


def _guess(name: str) -> str:
    """The block name a mistyped one most likely meant: ``layer.3`` -> ``layers.3``."""
    digits = re.search(r"\d+", name)
    kind = next((k for k in ("attn", "mlp", "moe", "mamba") if k in name), None)
    index = digits.group(0) if digits else "0"
    return f"layers.{index}" + (f".{kind}" if kind else "")


def check_calibration(source: str, setting: str = "calibration") -> None:
    """``demo``, an existing file or a saved dataset folder; a demo-like typo gets a hint."""
    if source == DEMO_SOURCE or Path(source).exists():
        return
    if difflib.get_close_matches(source.lower(), [DEMO_SOURCE], n=1, cutoff=0.6):
        raise SettingError(
            setting, f"{{name}} {source!r} is neither a file nor 'demo'; did you mean {{name}} demo?"
        )
    raise SettingError(
        setting,
        f"{{name}} {source}: file not found; give a .txt/.jsonl/.json/.csv/.parquet file, a saved dataset folder or demo",
    )
