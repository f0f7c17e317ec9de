"""Built-in architecture adapters, registered through the same hook as third-party plugins."""

from __future__ import annotations

from collections.abc import Callable

from ..plugins import hookimpl
from .base import Adapter
from .gemma import Gemma3Adapter
from .generic import GenericAdapter
from .gpt2 import GPT2Adapter
from .llama import LlamaAdapter
from .moe import MoEAdapter
from .nemotron_h import NemotronHAdapter

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
