"""Real calibration loss of configurations that remove whole layers, computed fast.

One dense forward per batch records each decoder layer's call arguments; a configuration is
then scored by running only its kept layers. A *base* configuration keeps every layer's input
cached, so scoring ``base ∪ extra`` starts at the first extra layer instead of the embedding.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .adapters.base import Adapter
from .calibration import CalibrationData


def token_losses(
    logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token cross-entropy of every position, shape [batch, seq-1], and the float mask of
    positions whose input and target are both real (non-padding) tokens."""
    ce = F.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]), input_ids[:, 1:].reshape(-1), reduction="none"
    ).view(input_ids.shape[0], -1)
    return ce, (attention_mask[:, 1:] * attention_mask[:, :-1]).float()


def per_sample_loss(
    logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """Mean next-token cross-entropy of each sample over its non-padding targets, shape [batch]."""
    ce, mask = token_losses(logits, input_ids, attention_mask)
    return (ce * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)


class LayerLossScorer:
    """Per-sample calibration losses of layer-removal configurations (indices are ORIGINAL layers)."""

    def __init__(
        self, model: nn.Module, adapter: Adapter, data: CalibrationData, batch_size: int = 8
    ) -> None:
        self.model, self.adapter, self.data = model, adapter, data
        self.layers = list(adapter.decoder_layers(model))
        self.n_layers = len(self.layers)
        # Decoder-layer forwards over one calibration batch, memoised results counted as recomputed.
        self.requested_layer_calls = 0
        self._memo: dict[frozenset[int], np.ndarray] = {}
        self._batches = list(data.batches(batch_size))
        self._kwargs: list[list[dict]] = []
        self._inputs: list[list[torch.Tensor]] = []  # per batch, input of every layer under the base
        self.base: frozenset[int] = frozenset()
        self._record_dense()

    @property
    def forward_equivalents(self) -> float:
        """Work asked for so far (memoised results counted as recomputed), in dense forward
        passes over the calibration set: decoder-layer forwards / number of layers."""
        return self.requested_layer_calls / (self.n_layers * len(self._batches))

    @torch.no_grad()
    def _record_dense(self) -> None:
        captured: list[tuple] = []

        def grab(module: nn.Module, args: tuple, kwargs: dict) -> None:
            captured.append(
                (
                    args[0] if args else kwargs["hidden_states"],
                    {k: v for k, v in kwargs.items() if k != "hidden_states"},
                )
            )

        handles = [layer.register_forward_pre_hook(grab, with_kwargs=True) for layer in self.layers]
        try:
            for ids, mask in self._batches:
                captured.clear()
                self.model(input_ids=ids, attention_mask=mask, use_cache=False)
                self._inputs.append([h for h, _ in captured])
                self._kwargs.append([kw for _, kw in captured])
                self.requested_layer_calls += self.n_layers
        finally:
            for handle in handles:
                handle.remove()

    def _run(
        self, b: int, hidden: torch.Tensor, start: int, removed: frozenset[int], record: bool = False
    ) -> torch.Tensor:
        for j in range(start, self.n_layers):
            if record:
                self._inputs[b][j] = hidden
            if j in removed:
                continue
            out = self.layers[j](hidden, **self._kwargs[b][j])
            hidden = out[0] if isinstance(out, tuple) else out
        return hidden

    @torch.no_grad()
    def set_base(self, removed: Iterable[int]) -> None:
        """Make ``removed`` the base configuration (recomputes cached inputs after its first change)."""
        new = frozenset(removed)
        changed = new.symmetric_difference(self.base)
        if not changed:
            return
        start = min(changed)
        for b in range(len(self._batches)):
            self._run(b, self._inputs[b][start], start, new, record=True)
        self.base = new

    @torch.no_grad()
    def losses(self, extra: Iterable[int] = ()) -> np.ndarray:
        """Per-sample losses of the configuration ``base ∪ extra``."""
        extra = frozenset(extra) - self.base
        removed = self.base | extra
        start = min(extra) if extra else self.n_layers
        self.requested_layer_calls += len(self._batches) * sum(
            1 for j in range(min(start, self.n_layers - 1), self.n_layers) if j not in removed
        )
        if removed in self._memo:
            return self._memo[removed]
        out = []
        for b, (ids, mask) in enumerate(self._batches):
            if start < self.n_layers:
                hidden = self._run(b, self._inputs[b][start], start, removed)
            else:
                hidden = self._last_output(b)
            logits = self.adapter.logits(self.model, hidden)
            out.append(per_sample_loss(logits, ids, mask).double().numpy())
        self._memo[removed] = np.concatenate(out)
        return self._memo[removed]

    def _last_output(self, b: int) -> torch.Tensor:
        last = self.n_layers - 1
        hidden = self._inputs[b][last]
        if last in self.base:
            return hidden
        out = self.layers[last](hidden, **self._kwargs[b][last])
        return out[0] if isinstance(out, tuple) else out

    def loss(self, extra: Iterable[int] = ()) -> float:
        """Mean calibration loss of ``base ∪ extra``."""
        return float(self.losses(extra).mean())
