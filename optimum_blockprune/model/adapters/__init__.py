"""Built-in architecture adapters, registered through the same hook as third-party plugins."""

from __future__ import annotations

from collections.abc import Callable

from optimum_blockprune.hookspecs import hookimpl
from optimum_blockprune.model.adapters.base import Adapter
from optimum_blockprune.model.adapters.gemma import Gemma3Adapter
from optimum_blockprune.model.adapters.generic import GenericAdapter
from optimum_blockprune.model.adapters.gpt2 import GPT2Adapter
from optimum_blockprune.model.adapters.llama import LlamaAdapter
from optimum_blockprune.model.adapters.moe import MoEAdapter
from optimum_blockprune.model.adapters.nemotron_h import NemotronHAdapter

__all__ = [
    "Adapter",
    "GPT2Adapter",
    "Gemma3Adapter",
    "GenericAdapter",
    "LlamaAdapter",
    "MoEAdapter",
    "NemotronHAdapter",
]


@hookimpl
def register_adapters(register: Callable[[Adapter], None]) -> None:
    for adapter in (
        LlamaAdapter(),
        Gemma3Adapter(),
        GPT2Adapter(),
        MoEAdapter(),
        NemotronHAdapter(),
        GenericAdapter(),
    ):
        register(adapter)
