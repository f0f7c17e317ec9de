"""Physical removal of decoder layers (delete, renumber ``layer_idx``, rewrite per-layer config)
and the ``per_layer_config`` entries that record removed branches."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn
from transformers import PretrainedConfig

from optimum_blockprune.model.marker import layer_overrides, mark_config

# Lists with one entry per layer: keep the entries of kept layers.
PER_LAYER_LISTS = (
    "layer_types",
    "mlp_layer_types",
    "layers_block_type",
    "mtp_layer_types",
    "layer_rope_theta",
)
# Lists of layer indices: keep kept layers' indices, renumbered.
LAYER_INDEX_LISTS = ("mlp_only_layers", "no_rope_layers")


def delete_layers(layers: nn.ModuleList, remove: Sequence[int]) -> list[int]:
    """Delete ``remove`` (current indices) from ``layers`` in place, set ``layer_idx`` on every
    kept layer and its submodules to the new position; return the kept old indices."""
    n = len(layers)
    bad = sorted(i for i in set(remove) if not 0 <= i < n)
    if bad:
        raise ValueError(f"layer indices {bad} are out of range for a model with {n} layers")
    kept = [i for i in range(n) if i not in set(remove)]
    new_layers = [layers[i] for i in kept]
    for new_idx, layer in enumerate(new_layers):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_idx
    for i in range(n - 1, -1, -1):
        del layers[i]
    layers.extend(new_layers)
    return kept


def rewrite_layer_config(config: PretrainedConfig, kept: Sequence[int]) -> None:
    """Make every per-layer field of ``config`` describe only the ``kept`` (old) layers."""
    old_n = config.num_hidden_layers
    new_index = {old: new for new, old in enumerate(kept)}
    for field in PER_LAYER_LISTS:
        value = getattr(config, field, None)
        if isinstance(value, (list, tuple)) and len(value) == old_n:
            setattr(config, field, [value[i] for i in kept])
    for field in LAYER_INDEX_LISTS:
        value = getattr(config, field, None)
        if isinstance(value, (list, tuple)):
            setattr(config, field, [new_index[i] for i in value if i in new_index])
    max_window = getattr(config, "max_window_layers", None)
    if isinstance(max_window, int):
        config.max_window_layers = sum(1 for i in kept if i < max_window)
    overrides = layer_overrides(config)
    config.num_hidden_layers = len(kept)
    if overrides:
        set_layer_overrides(config, {new_index[k]: v for k, v in overrides.items() if k in new_index})


def set_layer_overrides(config: PretrainedConfig, overrides: dict[int, dict]) -> None:
    """Replace ``per_layer_config`` by ``overrides`` (validated by transformers on assignment); a
    config that now skips a branch is marked so that every save of it is a branch-pruned checkpoint."""
    config.per_layer_config = None
    if overrides:
        config.per_layer_config = {int(k): v for k, v in sorted(overrides.items())}
    mark_config(config)
