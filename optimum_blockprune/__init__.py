"""optimum-blockprune: remove whole transformer blocks chosen by constrained binary optimisation.

The pipeline, one folder per stage (each imports only the stages below it; see docs/architecture.md):
``data`` → ``model`` → ``energy`` → ``solvers`` → ``selection`` → ``output`` → ``pruner`` →
``healing`` → ``cli``. Public names are imported lazily so that ``optimum-cli`` starts fast.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "Adapter": "optimum_blockprune.model.adapters.base",
    "BlockPruneConfig": "optimum_blockprune.config",
    "BlockPruneError": "optimum_blockprune.errors",
    "BlockPruneMetadataCallback": "optimum_blockprune.healing.callbacks",
    "BlockPruner": "optimum_blockprune.pruner",
    "EnergyModel": "optimum_blockprune.energy.model",
    "GradualRemovalCallback": "optimum_blockprune.healing.callbacks",
    "HealingConfig": "optimum_blockprune.healing.config",
    "HealingTrainer": "optimum_blockprune.healing.trainer",
    "Method": "optimum_blockprune.selection.registry",
    "Solver": "optimum_blockprune.solvers.base",
    "SolverSampler": "optimum_blockprune.solvers.sampler",
    "build_report": "optimum_blockprune.output.report.build",
    "get_adapter": "optimum_blockprune.model.registry",
    "heal": "optimum_blockprune.healing.run",
    "hookimpl": "optimum_blockprune.hookspecs",
    "load_pruned": "optimum_blockprune.model.pruned_format",
    "lora_config": "optimum_blockprune.healing.lora",
    "perplexity": "optimum_blockprune.output.evaluation",
    "solve": "optimum_blockprune.solvers.registry",
    "validate_request": "optimum_blockprune.plan",
}

__all__ = [
    "Adapter",
    "BlockPruneConfig",
    "BlockPruneError",
    "BlockPruneMetadataCallback",
    "BlockPruner",
    "build_report",
    "EnergyModel",
    "get_adapter",
    "GradualRemovalCallback",
    "heal",
    "HealingConfig",
    "HealingTrainer",
    "hookimpl",
    "load_pruned",
    "lora_config",
    "Method",
    "perplexity",
    "solve",
    "Solver",
    "SolverSampler",
    "validate_request",
    "__version__",
]

if TYPE_CHECKING:  # what IDEs and type checkers see; at run time each name loads on first use
    from optimum_blockprune.config import BlockPruneConfig
    from optimum_blockprune.energy.model import EnergyModel
    from optimum_blockprune.errors import BlockPruneError
    from optimum_blockprune.healing.callbacks import BlockPruneMetadataCallback, GradualRemovalCallback
    from optimum_blockprune.healing.config import HealingConfig
    from optimum_blockprune.healing.lora import lora_config
    from optimum_blockprune.healing.run import heal
    from optimum_blockprune.healing.trainer import HealingTrainer
    from optimum_blockprune.hookspecs import hookimpl
    from optimum_blockprune.model.adapters.base import Adapter
    from optimum_blockprune.model.pruned_format import load_pruned
    from optimum_blockprune.model.registry import get_adapter
    from optimum_blockprune.output.evaluation import perplexity
    from optimum_blockprune.output.report.build import build_report
    from optimum_blockprune.plan import validate_request
    from optimum_blockprune.pruner import BlockPruner
    from optimum_blockprune.selection.registry import Method
    from optimum_blockprune.solvers.base import Solver
    from optimum_blockprune.solvers.registry import solve
    from optimum_blockprune.solvers.sampler import SolverSampler


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'optimum_blockprune' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
