"""Checkpoints with removed branches: how they are written and how they load back exactly.

Whole-layer removals need nothing special: the saved folder is a stock transformers checkpoint.
A checkpoint with single removed branches holds no weights for them, and its ``config.json``
records them as ``per_layer_config`` ``skip`` entries. Plain ``from_pretrained`` would silently
re-create those branches with random weights, so such a ``config.json`` gets the model type
``blockpruned_<type>`` and a ``blockprune`` entry: plain transformers then refuses it loudly
("does not recognize this architecture") and :func:`load_pruned` restores the original type and
installs the no-op stand-ins while the model is built, so no weight is missing and none is random.

The marker is written by the config itself, so that every way a model is saved carries it
(``save_pretrained`` after :func:`load_pruned`, Trainer checkpoints, healing, callbacks): a config
with skips is switched in place (:func:`~optimum_blockprune.model.marker.mark_config`, done by
surgery and by :func:`read_config`) to a subclass of its own class whose JSON form (``to_json_string``, which ``save_pretrained`` and
``to_json_file`` write) is marked. In memory nothing changes: ``model_type`` stays the base type
and the class keeps its base's ``__name__``, which is what transformers' auto mappings and peft
look up; ``to_dict`` is untouched. The subclasses live in this module under
``Blockpruned<ConfigClass>`` (created on first use, also when unpickling), so such a config
deep-copies and pickles.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch import nn

from optimum_blockprune.errors import BlockPruneError
from optimum_blockprune.model.marker import CONFIG_KEY, layer_skips, mark_config, marked_dict


def mark_branch_pruned(folder: str | Path) -> None:
    """Add the marker to ``folder/config.json`` if it is missing (a folder saved by other means)."""
    path = Path(folder) / "config.json"
    data = json.loads(path.read_text())
    if CONFIG_KEY not in data:
        path.write_text(json.dumps(marked_dict(data), indent=2, sort_keys=True) + "\n")


def read_config(folder: str | Path) -> Any:
    """The transformers config of a checkpoint folder, branch-pruned or not."""
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    path = Path(folder) / "config.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BlockPruneError(f"cannot read {path}: {exc}") from None
    info = data.pop(CONFIG_KEY, None)
    if info is None:
        return AutoConfig.from_pretrained(folder)
    base_type = info.get("base_model_type", "")
    if base_type not in CONFIG_MAPPING:
        raise BlockPruneError(f"{path} names an unknown base model type {base_type!r}; upgrade transformers")
    data["model_type"] = base_type
    config = CONFIG_MAPPING[base_type].from_dict(data)
    config._name_or_path = str(folder)
    return mark_config(config)


@contextlib.contextmanager
def skips_applied(config: Any) -> Iterator[None]:
    """While active, decoder layers built for ``config`` get the no-op stand-ins its
    ``per_layer_config`` skips (the layer classes' ``__init__`` is wrapped, then restored)."""
    from transformers import AutoModelForCausalLM

    from optimum_blockprune.model.registry import adapter_for_type

    skips = layer_skips(config)
    if not skips:
        yield
        return
    adapter = adapter_for_type(config.model_type)
    model_class = AutoModelForCausalLM._model_mapping[type(config)]
    module = sys.modules[model_class.__module__]
    classes = [
        getattr(module, n)
        for n in getattr(model_class, "_no_split_modules", None) or []
        if hasattr(module, n)
    ]
    classes = [c for c in classes if "layer_idx" in inspect.signature(c.__init__).parameters]
    if not classes:
        raise BlockPruneError(
            f"cannot find the decoder layer class of {model_class.__name__} to restore removed branches"
        )
    originals = {cls: cls.__init__ for cls in classes}

    def wrap(cls: type, init: Any) -> Any:
        signature = inspect.signature(init)

        def __init__(self: nn.Module, *args: Any, **kwargs: Any) -> None:
            init(self, *args, **kwargs)
            bound = signature.bind(self, *args, **kwargs)
            layer_idx = bound.arguments.get("layer_idx")
            if type(self) is cls and layer_idx in skips:
                adapter.apply_skips(self, skips[layer_idx])

        return __init__

    try:
        for cls, init in originals.items():
            cls.__init__ = wrap(cls, init)
        yield
    finally:
        for cls, init in originals.items():
            cls.__init__ = init


def load_pruned(path: str | Path, **kwargs: Any) -> nn.Module:
    """Load any checkpoint this project wrote (whole layers or single branches removed) exactly.

    ``kwargs`` go to ``AutoModelForCausalLM.from_pretrained`` (``dtype``, ``device_map``, ...).
    """
    from transformers import AutoModelForCausalLM

    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise BlockPruneError(
            f"{folder} has no config.json; give a folder saved by optimum-blockprune or save_pretrained"
        )
    config = read_config(folder)
    with skips_applied(config):
        return AutoModelForCausalLM.from_pretrained(folder, config=config, **kwargs)
