"""The selection-method registry: what a method is, what it gets, what it returns, and every method
registered through the ``register_methods`` hook (the built-ins too, see :mod:`.methods`).

A third party adds a method the way it adds an adapter or a solver: a module with a
``@hookimpl def register_methods(register)`` that calls ``register(Method(...))``, declared as an
entry point in the group ``optimum_blockprune`` (or registered on
:func:`optimum_blockprune.hookspecs.plugin_manager`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from optimum_blockprune.energy.scoring import LossScorer
from optimum_blockprune.errors import BlockPruneError
from optimum_blockprune.hookspecs import collect

if TYPE_CHECKING:
    import torch
    from torch import nn

    from optimum_blockprune.blocks import Block
    from optimum_blockprune.config import BlockPruneConfig
    from optimum_blockprune.data.calibration import CalibrationData
    from optimum_blockprune.energy.model import EnergyModel
    from optimum_blockprune.model.adapters.base import Adapter

#: This project's method: energy model, solver, rerank by real loss (the default).
ENERGY_METHOD = "energy"


@dataclass
class Request:
    """Everything a method may use: the model and its adapter, the blocks at the configured
    granularity, the run's configuration, the calibration data (loaded on first use) and a loss
    scorer shared with the caller (built on first use for ``config.objective``, its cached layer
    inputs on ``cache_device``: default the model's)."""

    model: nn.Module
    adapter: Adapter
    blocks: list[Block]
    config: BlockPruneConfig
    calibration: Callable[[], CalibrationData]
    model_params: int
    model_id: str = ""
    scorer: LossScorer | None = None
    progress: bool = False
    #: An energy model computed before (``prune --energy-file``): solved in one round, not recomputed.
    energy: EnergyModel | None = None
    #: Where the loss scorer keeps its cached layer inputs (``"cpu"`` beside a GPU model), or None.
    cache_device: str | torch.device | None = None

    def data(self) -> CalibrationData:
        return self.calibration()

    def loss_scorer(self) -> LossScorer:
        if self.scorer is None:
            self.scorer = LossScorer(
                self.model,
                self.adapter,
                self.data(),
                self.config.batch_size,
                cache_device=self.cache_device,
                objective=self.config.objective,
            )
        return self.scorer


@dataclass
class Selection:
    """The chosen blocks and everything measured while choosing them."""

    removed: list[str]
    dense_loss: float
    pruned_loss: float
    #: Energy-style methods: each round's candidates, their energies and real losses.
    rounds: list[dict[str, Any]] = field(default_factory=list)
    #: Work done while choosing: ``forward_passes`` (dense-forward equivalents over the calibration
    #: set), ``backward_passes``, ``seconds``, ``calibration_tokens`` (the pipeline fills the first
    #: three with 0, 0 and the wall time when a method leaves them out).
    cost: dict[str, float] = field(default_factory=dict)
    #: The energy model of each round (what the report's heatmap and fields show).
    energies: list[EnergyModel] = field(default_factory=list)
    method: str = ENERGY_METHOD
    #: One sentence for the model card: how the blocks were chosen.
    summary: str = ""


@dataclass(frozen=True)
class Method:
    """A block-selection method: ``select(request) -> Selection``; ``granularities`` it works at;
    ``help``, one line saying how it chooses; ``budget``: whether it takes a parameter budget
    (``target_params`` / ``param_ratio``) besides a block count."""

    name: str
    select: Callable[[Request], Selection]
    granularities: tuple[str, ...]
    help: str
    budget: bool = False


def methods() -> dict[str, Method]:
    """All registered methods by name (built-ins first, in registration order)."""
    return collect("register_methods", lambda method: method.name)


def get_method(name: str) -> Method:
    """The method called ``name``; a one-line error naming the registered ones otherwise."""
    registry = methods()
    if name not in registry:
        raise BlockPruneError(f"unknown method {name!r}; choose one of {', '.join(registry)}")
    return registry[name]
