"""The branch-pruned marker, carried by the config itself (see :mod:`.pruned_format`): the
per-layer overrides a config holds, and the in-place switch of a config that skips a branch to a
subclass of its own class whose JSON form says ``model_type: blockpruned_<type>``. At the bottom
of ``model/``, so that surgery (which sets skips) and the checkpoint format (which reads them) both
build on it."""

from __future__ import annotations

import json
from typing import Any


def layer_overrides(config: Any) -> dict[int, dict]:
    """The raw ``per_layer_config`` entries, ``{layer: {"skip": [...], ...}}`` (a copy).

    ``config.per_layer_config`` itself reads back resolved per-layer views of the whole config,
    so the sparse overrides are taken from the heterogeneity spec behind it.
    """
    spec = config.__dict__.get("_heterogeneity_spec")
    overrides = getattr(spec, "per_layer_overrides", None) or {}
    return {int(k): dict(v) for k, v in overrides.items()}


def layer_skips(config: Any) -> dict[int, list[str]]:
    """``{layer: skip list}`` for the layers whose ``per_layer_config`` skips a branch."""
    return {i: list(v["skip"]) for i, v in layer_overrides(config).items() if v.get("skip")}


PRUNED_TYPE_PREFIX = "blockpruned_"
#: Key of ``config.json`` that says how to load a branch-pruned checkpoint.
CONFIG_KEY = "blockprune"
_CLASS_PREFIX = "Blockpruned"


def marked_dict(data: dict[str, Any]) -> dict[str, Any]:
    """The ``config.json`` content ``data`` with the branch-pruned marker (unchanged if it has one)."""
    if CONFIG_KEY in data:
        return data
    base_type = data["model_type"]
    return {
        **data,
        "model_type": PRUNED_TYPE_PREFIX + base_type,
        CONFIG_KEY: {
            "base_model_type": base_type,
            "load_with": "optimum_blockprune.load_pruned",
            "why": "branches listed under per_layer_config.skip were removed; "
            "plain transformers would re-create them",
        },
    }


class BranchPrunedConfig:
    """Mixin of the marked config classes: their JSON form carries the branch-pruned marker
    whenever the config skips a branch (see the module doc)."""

    def to_json_string(self, use_diff: bool = True) -> str:
        text = super().to_json_string(use_diff)  # type: ignore[misc]
        if not layer_skips(self):  # type: ignore[arg-type]
            return text
        return json.dumps(marked_dict(json.loads(text)), indent=2, sort_keys=True) + "\n"


def marked_class(base: type) -> type:
    """The marked subclass of the config class ``base`` (one per class, kept in this module)."""
    if issubclass(base, BranchPrunedConfig):
        return base
    qualname = _CLASS_PREFIX + base.__name__
    cls = globals().get(qualname)
    if cls is None or cls.__bases__[1] is not base:
        namespace = {"__module__": __name__, "__qualname__": qualname, "__doc__": base.__doc__}
        cls = type(base.__name__, (BranchPrunedConfig, base), namespace)
        globals()[qualname] = cls
    return cls


def __getattr__(name: str) -> type:
    """Create a marked config class on first access by name (how pickle finds it)."""
    if name.startswith(_CLASS_PREFIX) and name.endswith("Config"):
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING, CONFIG_MAPPING_NAMES

        base_name = name[len(_CLASS_PREFIX) :]
        for model_type, class_name in CONFIG_MAPPING_NAMES.items():
            if class_name == base_name:
                return marked_class(CONFIG_MAPPING[model_type])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def mark_config(config: Any) -> Any:
    """Switch ``config`` in place to its marked class if it skips any branch; return it."""
    if layer_skips(config) and not isinstance(config, BranchPrunedConfig):
        config.__class__ = marked_class(type(config))
    return config
