"""Built-in architecture adapters, registered through the same hook as third-party plugins."""

from __future__ import annotations

from collections.abc import Callable

from ..plugins import hookimpl
from .base import Adapter
from .llama import LlamaAdapter

__all__ = ["Adapter", "LlamaAdapter"]


@hookimpl
def register_adapters(register: Callable[[Adapter], None]) -> None:
    register(LlamaAdapter())
