"""What forward hooks read from a decoder layer's call."""

from __future__ import annotations

from typing import Any

import torch


def layer_input(args: tuple, kwargs: dict[str, Any]) -> torch.Tensor:
    """The hidden states a decoder layer (or branch) was called with: the first positional argument,
    or ``hidden_states=`` when the model passes it by keyword."""
    return args[0] if args else kwargs["hidden_states"]
