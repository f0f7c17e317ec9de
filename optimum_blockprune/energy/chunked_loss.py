"""Forward, per-sample loss and backward of one batch without holding all of its logits.

The logits of a batch (tokens x vocabulary, in float32 for the loss) are the largest tensors of
the analysis: about half its memory on SmolLM2 (49k vocabulary), more than all decoder layers
together under gradient checkpointing on a 128k-vocabulary model. Here the model runs up to its
final norm only (``logits_to_keep`` with no position), and the LM head and the loss run over
chunks of positions: each chunk's backward gives the gradient of the last hidden state there;
one backward pass through the decoder follows. Same values as the plain loss, no recomputation.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from optimum_blockprune.energy.scoring import per_sample_loss, token_losses
from optimum_blockprune.model.adapters.base import Adapter
from optimum_blockprune.model.hooks import layer_input

#: Logit elements per chunk: 16 MB in float32 on CPU (small enough for the allocator to reuse),
#: 256 MB on accelerators (large enough to keep them busy).
CHUNK_ELEMENTS = {"cpu": 2**22}
DEFAULT_CHUNK_ELEMENTS = 2**26


def loss_and_backward(
    model: nn.Module, adapter: Adapter, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """Run the batch forward and backward (gradients land in whatever requires grad, e.g. gates);
    return the detached per-sample mean next-token losses, shape [batch]."""
    hidden = last_hidden(model, adapter, input_ids, attention_mask)
    if hidden is None:  # the model cannot skip its LM head: plain loss over full logits
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        loss = per_sample_loss(logits, input_ids.to(logits.device), attention_mask.to(logits.device))
        loss.sum().backward()
        return loss.detach()
    batch, length = input_ids.shape
    vocab = model.get_output_embeddings().weight.shape[0]
    budget = CHUNK_ELEMENTS.get(hidden.device.type, DEFAULT_CHUNK_ELEMENTS)
    step = max(1, budget // (batch * vocab))
    mask = attention_mask.to(hidden.device)
    ids = input_ids.to(hidden.device)
    count = (mask[:, 1:] * mask[:, :-1]).sum(dim=1).clamp_min(1).float()
    total = torch.zeros(batch, device=hidden.device)
    grad = torch.zeros_like(hidden)
    for start in range(0, length - 1, step):
        stop = min(start + step + 1, length)  # one more position: its token is the last target
        part = hidden[:, start:stop].detach().requires_grad_(True)
        logits = adapter.logits(model, part)
        ce, valid = token_losses(
            logits, ids[:, start:stop].to(logits.device), mask[:, start:stop].to(logits.device)
        )
        loss = (ce * valid).sum(dim=1) / count.to(logits.device)
        loss.sum().backward()
        grad[:, start : stop - 1] = part.grad[:, :-1]  # the extra position's logits were not used
        total += loss.detach().to(total.device)
    hidden.backward(grad)
    return total


def last_hidden(
    model: nn.Module, adapter: Adapter, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor | None:
    """The input of the final norm (the last decoder layer's output), with its graph, computed
    without the LM head; None when the model or the adapter does not allow it."""
    if "logits_to_keep" not in inspect.signature(model.forward).parameters:
        return None
    try:
        norm = adapter.final_norm(model)
    except (AttributeError, NotImplementedError):
        return None
    captured: list[torch.Tensor] = []

    def grab(module: nn.Module, args: tuple, kwargs: dict) -> None:
        captured.append(layer_input(args, kwargs))

    handle = norm.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        none = torch.zeros(0, dtype=torch.long, device=input_ids.device)
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, logits_to_keep=none)
    finally:
        handle.remove()
    return captured[-1] if captured else None
