"""BlockPruneConfig: everything that decides a pruning run, saved as ``blockprune_config.json``."""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from collections.abc import Mapping, Sequence
from functools import cache

from optimum.configuration_utils import BaseConfig

from optimum_blockprune.blocks import GRANULARITIES, KINDS, Block
from optimum_blockprune.errors import BlockPruneError, SettingError
from optimum_blockprune.hookspecs import collect

#: Energy variants (see :mod:`optimum_blockprune.energy.variants`); the first is the default.
ENERGY_VARIANTS = ("recentred", "secant", "fisher", "taylor", "additive")
DEFAULT_ENERGY = ENERGY_VARIANTS[0]
#: Real-loss objectives (see :mod:`optimum_blockprune.energy.scoring`): next-token cross-entropy
#: or KL divergence from the dense model's next-token distribution; the first is the default.
OBJECTIVES = ("ce", "kl")
#: The energy method's last step: a swap search on real loss, or none.
SEARCHES = ("swap", "certify", "none")
#: The swap search's default budget, as a share of the forward passes the selection spent before it.
SEARCH_BUDGET_SHARE = 0.5
#: The default selection method (see :mod:`optimum_blockprune.selection`).
DEFAULT_METHOD = "energy"
#: Settings that say how much to remove (at least one is needed).
AMOUNTS = ("remove", "ratio", "target_params", "param_ratio", "target_speedup", "target_latency")
#: What a latency budget times: one token per step with a KV cache, or one whole forward pass.
LATENCY_PHASES = ("decode", "prefill")


class BlockPruneConfig(BaseConfig):
    """Configuration of a block-removal run (validated on construction).

    Say how much to remove with a block count (``remove``: a number, or counts per kind such as
    ``{"attn": 2, "mlp": 3}``; or ``ratio``: a fraction of the blocks) and/or a parameter budget
    (``target_params``: parameters the pruned model may keep at most; or ``param_ratio``: the
    fraction of the model's parameters to remove) or a latency budget (``target_speedup``: the
    pruned model at most ``1 / target_speedup`` of the dense time; ``target_latency``: at most so
    many seconds per forward (``prefill``) or per token (``decode``), in the ``latency_phase`` at
    ``latency_batch`` sequences of ``latency_context`` tokens, default ``seq_len``; the blocks are
    timed on the model's device). ``removed_blocks`` is filled in by
    :meth:`BlockPruner.prune` with the chosen block names. ``method`` chooses the blocks:
    ``energy`` (this project's method, default) or any other registered method, such as the
    peers' baselines (they need a block count, not a parameter budget). ``objective`` is the real
    loss that loss-based methods minimise: ``ce`` (cross-entropy, default) or ``kl`` (KL divergence
    from the dense model). ``generations``: the budget of ``evopress`` (None: its default).
    ``search``: after the energy method's rerank, ``swap`` (default) improves the best candidate by
    single swaps on real loss until none helps (a certificate of local optimality) or its budget
    is spent (``search_budget`` forward passes; default: half of those spent before the search);
    ``certify`` goes on until the certificate (or ``search_budget``, if given); ``none`` keeps
    the reranked candidate. An
    unknown setting is a one-line error naming the closest valid one.
    """

    CONFIG_NAME = "blockprune_config.json"
    FULL_CONFIGURATION_FILE = "blockprune_config.json"

    remove: int | dict | None = None
    ratio: float | None = None
    target_params: int | None = None
    param_ratio: float | None = None
    target_speedup: float | None = None
    target_latency: float | None = None
    latency_phase: str = "decode"
    latency_batch: int = 1
    latency_context: int | None = None
    granularity: str = "layer"
    method: str = DEFAULT_METHOD
    energy: str = DEFAULT_ENERGY
    objective: str = OBJECTIVES[0]
    solver: str = "auto"
    top_k: int = 10
    protect: list | None = None
    force: list | None = None
    calibration: str = "demo"
    text_field: str = "text"
    num_samples: int = 32
    seq_len: int = 128
    batch_size: int = 8
    chat_template: bool = False
    pack: bool = True
    seed: int = 0
    generations: int | None = None
    search: str = "swap"
    search_budget: float | None = None
    removed_blocks: list | None = None

    def __post_init__(self, **kwargs) -> None:
        unknown = [k for k in kwargs if not k.startswith("_") and k not in _inherited_keys()]
        if unknown:
            own = [f.name for f in dataclasses.fields(BlockPruneConfig) if f.name not in _inherited_keys()]
            close = difflib.get_close_matches(unknown[0], own, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"settings are {', '.join(own)}"
            raise BlockPruneError(f"unknown setting {unknown[0]!r}; {hint}")
        super().__post_init__(**kwargs)
        self.validate_settings()

    def validate_settings(self) -> None:
        """Raise :class:`SettingError` naming the first bad setting and how to fix it."""
        if self.remove is not None and self.ratio is not None:
            raise SettingError(
                "ratio", "give remove (a block count) or {name} (a fraction of blocks), not both"
            )
        if self.target_params is not None and self.param_ratio is not None:
            raise SettingError("param_ratio", "give target_params or {name} (a parameter budget), not both")
        if all(getattr(self, k) is None for k in AMOUNTS):
            raise BlockPruneError(
                "say how much to remove: remove (blocks, or counts per kind), ratio, target_params, "
                "param_ratio, target_speedup or target_latency"
            )
        self._validate_amounts()
        self._validate_latency()
        self._validate_choices()
        for name in ("top_k", "num_samples", "batch_size", "generations"):
            value = getattr(self, name)
            if name == "generations" and value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SettingError(name, "{name} must be a whole number >= 1, got " + repr(value))
        if not isinstance(self.seq_len, int) or self.seq_len < 2:
            raise SettingError("seq_len", f"{{name}} must be a whole number >= 2, got {self.seq_len!r}")

    def _validate_amounts(self) -> None:
        """How much to remove: counts, ratios and the parameter budget."""
        if isinstance(self.remove, Mapping):
            self.remove = {str(k): v for k, v in self.remove.items()}
            for kind, count in self.remove.items():
                if kind not in KINDS:
                    raise SettingError(
                        "remove", f"unknown block kind {kind!r} in {{name}}; kinds are {', '.join(KINDS)}"
                    )
                if not isinstance(count, int) or isinstance(count, bool) or count < 0:
                    raise SettingError(
                        "remove", f"{{name}} {kind}= must be a whole number >= 0, got {count!r}"
                    )
            if not any(self.remove.values()):
                raise SettingError(
                    "remove", "{name} names no blocks; give a positive count for at least one kind"
                )
        elif self.remove is not None and (
            not isinstance(self.remove, int) or isinstance(self.remove, bool) or self.remove <= 0
        ):
            raise SettingError("remove", f"{{name}} must be a positive number of blocks, got {self.remove!r}")
        for name in ("ratio", "param_ratio"):
            value = getattr(self, name)
            if value is not None and not 0 < float(value) < 1:
                raise SettingError(name, f"{{name}} must lie strictly between 0 and 1, got {value!r}")
        if self.target_params is not None and (
            not isinstance(self.target_params, int)
            or isinstance(self.target_params, bool)
            or self.target_params <= 0
        ):
            raise SettingError(
                "target_params",
                f"{{name}} must be a positive number of parameters, got {self.target_params!r}",
            )

    @property
    def latency_budget(self) -> bool:
        """Whether a latency budget (``target_speedup`` / ``target_latency``) is set."""
        return self.target_speedup is not None or self.target_latency is not None

    def _validate_latency(self) -> None:
        """The latency budget and the phase, batch and context it is timed at."""
        if self.latency_budget and (self.target_params is not None or self.param_ratio is not None):
            setting = "target_speedup" if self.target_speedup is not None else "target_latency"
            raise SettingError(setting, "give a parameter budget or a latency budget ({name}), not both")
        if self.target_speedup is not None and not _number(self.target_speedup) > 1:
            raise SettingError(
                "target_speedup",
                f"{{name}} must be a number above 1 (1.5: 1.5x faster), got {self.target_speedup!r}",
            )
        if self.target_latency is not None and not _number(self.target_latency) > 0:
            raise SettingError(
                "target_latency",
                f"{{name}} must be a positive number of seconds, got {self.target_latency!r}",
            )
        if self.latency_phase not in LATENCY_PHASES:
            raise SettingError(
                "latency_phase",
                f"{{name}} must be one of {', '.join(LATENCY_PHASES)}, got {self.latency_phase!r}",
            )
        for name in ("latency_batch", "latency_context"):
            value = getattr(self, name)
            if (value is not None or name == "latency_batch") and (
                not isinstance(value, int) or isinstance(value, bool) or value < 1
            ):
                raise SettingError(name, "{name} must be a whole number >= 1, got " + repr(value))

    def latency_settings(self) -> dict:
        """``phase``, ``batch`` and ``context`` (default: ``seq_len``) the cost table is timed at."""
        context = self.seq_len if self.latency_context is None else self.latency_context
        return {"phase": self.latency_phase, "batch": self.latency_batch, "context": context}

    def allowed_seconds(self, dense: float) -> float:
        """The most seconds the pruned model may take, given the dense model's ``dense``."""
        allowed = dense / float(self.target_speedup) if self.target_speedup is not None else dense
        if self.target_latency is not None:
            allowed = min(allowed, float(self.target_latency))
        return allowed

    def _validate_choices(self) -> None:
        """Settings chosen from a list: granularity, method, energy, objective."""
        if self.granularity not in GRANULARITIES:
            raise SettingError(
                "granularity", f"{{name}} must be one of {', '.join(GRANULARITIES)}, got {self.granularity!r}"
            )
        methods = collect("register_methods", lambda method: method.name)
        if self.method not in methods:
            raise SettingError("method", f"{{name}} must be one of {', '.join(methods)}, got {self.method!r}")
        if self.energy not in ENERGY_VARIANTS:
            raise SettingError(
                "energy", f"{{name}} must be one of {', '.join(ENERGY_VARIANTS)}, got {self.energy!r}"
            )
        if self.search not in SEARCHES:
            raise SettingError(
                "search", f"{{name}} must be one of {', '.join(SEARCHES)}, got {self.search!r}"
            )
        if self.search_budget is not None and not _number(self.search_budget) > 0:
            raise SettingError(
                "search_budget",
                f"{{name}} must be a positive number of forward passes, got {self.search_budget!r}",
            )
        if self.objective not in OBJECTIVES:
            raise SettingError(
                "objective", f"{{name}} must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}"
            )

    def removal_target(
        self, blocks: Sequence[Block], model_params: int, timed: bool = False
    ) -> tuple[int | dict | None, int | None]:
        """``(remove, min_params)`` for :func:`build_problem`: the block count (or counts per kind)
        and the parameters the removed blocks must hold at least, checked against the model. A
        latency budget needs the model's blocks timed: only a caller that times them (``timed``)
        may ask; it turns the budget into cost units itself."""
        if self.latency_budget and not timed:
            setting = "target_speedup" if self.target_speedup is not None else "target_latency"
            raise SettingError(
                setting,
                "{name} is a latency budget that only 'prune' with method energy meets (it times the "
                "model's blocks); give a block count (remove or ratio) here",
            )
        remove: int | dict | None = self.remove
        if self.ratio is not None:
            remove = round(float(self.ratio) * len(blocks))
        if isinstance(remove, int) and not 0 < remove < len(blocks):
            raise BlockPruneError(
                f"cannot remove {remove} of {len(blocks)} blocks; choose between 1 and {len(blocks) - 1}"
            )
        min_params = None
        if self.param_ratio is not None:
            min_params = math.ceil(float(self.param_ratio) * model_params)
        elif self.target_params is not None:
            if self.target_params >= model_params:
                raise BlockPruneError(
                    f"target_params {self.target_params:,} is not below the model's {model_params:,} parameters; "
                    "give a smaller target"
                )
            min_params = model_params - self.target_params
        return remove, min_params


def _number(value: object) -> float:
    """``value`` as a float; NaN (never above any bound) for what is not a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


@cache
def _inherited_keys() -> frozenset[str]:
    """Keys a saved config may carry from ``PretrainedConfig`` (versions, flags): not typos."""
    from transformers import PretrainedConfig

    return frozenset(PretrainedConfig().to_dict()) | {"optimum_version", "model_type"}


def parse_remove(text: str) -> int | dict[str, int]:
    """``"6"`` -> 6; ``"attn=2,mlp=3"`` -> ``{"attn": 2, "mlp": 3}`` (one-line error otherwise)."""
    text = text.strip()
    if re.fullmatch(r"\d+", text):
        return int(text)
    counts = {}
    for part in text.split(","):
        kind, _, count = part.partition("=")
        if not re.fullmatch(r"\s*\d+\s*", count):
            raise BlockPruneError(
                f"cannot read --remove {text!r}; give a block count (6) or counts per kind (attn=2,mlp=3)"
            )
        counts[kind.strip()] = int(count)
    return counts


_SUFFIX = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9}


def parse_params(text: str) -> int:
    """``"100M"`` -> 100_000_000 (suffixes K, M, B; plain numbers too)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMBG]?)\s*", text, flags=re.IGNORECASE)
    if not match:
        raise BlockPruneError(
            f"cannot read a parameter count from {text!r}; write e.g. 100M, 1.5B or 90000000"
        )
    return round(float(match.group(1)) * _SUFFIX[match.group(2).upper()])
