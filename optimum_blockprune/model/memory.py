"""How much memory a run will need, estimated from the model's config before any weights load, and
whether the chosen devices have it.

The estimate has three parts (bytes):

* **weights**: parameter count (of the weightless meta-device model, else a Llama-shaped count
  from the config) × the dtype's bytes (for training, × ``1 + train_factor`` for gradients and
  optimizer state);
* **activation cache**: what the loss scorer keeps, one input of every layer for every calibration
  sample: ``num_layers × num_samples × seq_len × hidden_size × dtype bytes``;
* **work**: one batch's largest transients, its MLP activations and its logits in float32:
  ``batch × seq_len × (intermediate_size + vocab_size) × 4``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from optimum_blockprune.errors import BlockPruneError

#: Where weights spread over several devices (``--device-map auto`` or a map naming several).
SPREAD = "auto"
CACHE = "activation cache"
_UNITS = (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024))


def size_text(n: float) -> str:
    """``1.5 GiB``, ``3.2 MiB``: bytes in the largest binary unit that keeps the number >= 1."""
    for unit, scale in _UNITS:
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def _text_config(model_config: Any) -> Any:
    get = getattr(model_config, "get_text_config", None)
    return get() if callable(get) else model_config


def param_count(model_config: Any) -> int:
    """Parameters of the model ``model_config`` describes: counted on a meta-device skeleton (no
    memory; a pruned folder's removed branches are skipped), else from the config's sizes."""
    from transformers import AutoModelForCausalLM

    from optimum_blockprune.model.pruned_format import skips_applied

    try:
        with skips_applied(model_config), torch.device("meta"):
            model = AutoModelForCausalLM.from_config(model_config)
        return sum(p.numel() for p in model.parameters())
    except Exception:  # an architecture the skeleton cannot build: the config's sizes
        return _config_params(_text_config(model_config))


def _config_params(cfg: Any) -> int:
    """A Llama-shaped count: embeddings (twice unless tied) + per layer attention and gated MLP."""
    h, inter, vocab = cfg.hidden_size, getattr(cfg, "intermediate_size", 4 * cfg.hidden_size), cfg.vocab_size
    heads = getattr(cfg, "num_attention_heads", 1)
    head_dim = getattr(cfg, "head_dim", None) or h // heads
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    attn = h * head_dim * (2 * heads + 2 * kv)
    embed = vocab * h * (1 if getattr(cfg, "tie_word_embeddings", False) else 2)
    return embed + cfg.num_hidden_layers * (attn + 3 * h * inter)


def dtype_bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


@dataclass(frozen=True)
class Part:
    """One named use of memory on one device (``SPREAD``: the weights' devices)."""

    name: str
    bytes: int
    device: str


@dataclass
class MemoryEstimate:
    """The parts of a run's memory and where each lives."""

    parts: list[Part]
    dtype: torch.dtype
    available: dict[str, int | None] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(p.bytes for p in self.parts)

    def needs(self) -> dict[str, int]:
        """Bytes per device."""
        out: dict[str, int] = {}
        for part in self.parts:
            out[part.device] = out.get(part.device, 0) + part.bytes
        return out

    def with_cache_on(self, device: str) -> MemoryEstimate:
        """The same estimate with the activation cache on ``device``."""
        parts = [replace(p, device=device) if p.name == CACHE else p for p in self.parts]
        return MemoryEstimate(parts, self.dtype)

    def line(self) -> str:
        """``memory: weights 15.0 GiB (bfloat16 on cuda:0) + ... = 18.0 GiB; cuda:0 has 79.1 GiB free``."""
        dtype = str(self.dtype).removeprefix("torch.")
        texts = []
        for i, part in enumerate(self.parts):
            device = "the device map's devices" if part.device == SPREAD else part.device
            where = f"{dtype} on {device}" if i == 0 else f"on {device}"
            texts.append(f"{part.name} {size_text(part.bytes)} ({where})")
        free = [f"{d} has {size_text(n)} free" for d, n in self.available.items() if n is not None]
        tail = f"; {', '.join(free)}" if free else ""
        return f"memory: {' + '.join(texts)} = {size_text(self.total)}{tail}"


def estimate_memory(
    model_config: Any,
    dtype: torch.dtype,
    device: str,
    *,
    cache_device: str | None = None,
    num_samples: int = 0,
    seq_len: int = 128,
    batch_size: int = 8,
    train_factor: float = 0.0,
) -> MemoryEstimate:
    """The memory of a run on the model ``model_config`` describes (see the module docstring).
    ``device``: the weights' device or ``SPREAD``; ``cache_device``: the activation cache's (none
    without it); ``train_factor``: extra bytes per weight byte when training (gradients, Adam)."""
    cfg = _text_config(model_config)
    weights = param_count(model_config) * dtype_bytes(dtype)
    parts = [Part("weights", int(weights * (1 + train_factor)), device)]
    if cache_device is not None:
        cache = cfg.num_hidden_layers * num_samples * seq_len * cfg.hidden_size * dtype_bytes(dtype)
        parts.append(Part(CACHE, cache, cache_device))
    inter = getattr(cfg, "intermediate_size", None) or 4 * cfg.hidden_size
    work = batch_size * seq_len * (inter + cfg.vocab_size) * 4
    parts.append(Part("work", work, _first_device(device)))
    return MemoryEstimate(parts, dtype)


def _first_device(device: str) -> str:
    """Where a batch's inputs go: the device, or the first GPU when weights are spread."""
    if device != SPREAD:
        return device
    return "cuda:0" if torch.cuda.is_available() else "cpu"


def _limit(device: str, max_memory: Mapping[Any, Any] | None) -> int | None:
    """``--max-memory``'s limit of ``device`` in bytes (GPU keys may be ``0`` or ``cuda:0``)."""
    if not max_memory:
        return None
    from accelerate.utils import convert_file_size_to_int

    index = device.partition(":")[2] or ("0" if device == "cuda" else "")
    for key in (device, int(index) if index.isdigit() else None, index or None):
        if key is not None and key in max_memory:
            value = max_memory[key]
            return convert_file_size_to_int(value) if isinstance(value, str) else int(value)
    return None


def free_memory(device: str, max_memory: Mapping[Any, Any] | None = None) -> int | None:
    """Bytes ``device`` can give: ``--max-memory``'s limit if set, else what is free now (CUDA:
    ``torch.cuda.mem_get_info``; CPU: available RAM); ``None`` where unknown."""
    limit = _limit(device, max_memory)
    if limit is not None:
        return limit
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.mem_get_info(torch.device(device))[0]
    if device == "cpu":
        return _cpu_available()
    return None


def _cpu_available() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None


def _pool(max_memory: Mapping[Any, Any] | None) -> list[str]:
    """The devices ``device_map="auto"`` may use: the ``--max-memory`` keys, else every GPU and the CPU."""
    if max_memory:
        return [f"cuda:{k}" if isinstance(k, int) or str(k).isdigit() else str(k) for k in max_memory]
    return [f"cuda:{i}" for i in range(torch.cuda.device_count())] + ["cpu"]


def check_memory(
    estimate: MemoryEstimate, max_memory: Mapping[Any, Any] | None = None, offload: bool = False
) -> MemoryEstimate:
    """Fill in what each device has; a one-line :class:`BlockPruneError` naming the fix when the
    estimate cannot fit (``offload``: spread weights may go to disk, so they always fit)."""
    needs = estimate.needs()
    for device in needs:
        if device == SPREAD:
            for d in _pool(max_memory):
                estimate.available.setdefault(d, free_memory(d, max_memory))
        else:
            estimate.available[device] = free_memory(device, max_memory)
    for device, need in needs.items():
        if device == SPREAD:
            pool = _pool(max_memory)
            have = sum(n for d, n in estimate.available.items() if n is not None and d in pool)
            have -= sum(n for d, n in needs.items() if d != SPREAD)  # the other parts come first
            if not offload and need > have:
                raise BlockPruneError(
                    f"{estimate.line()}: the weights do not fit on the devices; "
                    "add --offload-folder (layers go to disk) or raise --max-memory"
                )
            continue
        have = estimate.available.get(device)
        if have is not None and need > have:
            raise BlockPruneError(
                f"{estimate.line()}: does not fit on {device}; {_fix(estimate, device, have)}"
            )
    return estimate


def _fix(estimate: MemoryEstimate, device: str, have: int) -> str:
    """What to change when ``device``, which has ``have`` bytes, is short of memory."""
    mine = {p.name: p.bytes for p in estimate.parts if p.device == device}
    need, cache = sum(mine.values()), mine.get(CACHE, 0)
    fixes = []
    if cache:
        fixes.append(
            "pass --cache-device cpu" if device != "cpu" else "use fewer --num-samples or a shorter --seq-len"
        )
    if "weights" in mine and (not cache or need - cache > have):
        fixes.append("pass --device-map auto (with --offload-folder) or a smaller --dtype")
    if mine.get("work", 0) > have / 4:
        fixes.append("use a smaller --batch-size")
    return "; or ".join(fixes) or "free some memory"


def cache_device_for(estimate: MemoryEstimate, max_memory: Mapping[Any, Any] | None = None) -> str:
    """``--cache-device auto``: the weights' device when the whole estimate fits there, else ``cpu``."""
    device = estimate.parts[0].device
    if device in (SPREAD, "cpu"):
        return "cpu"
    have = free_memory(device, max_memory)
    return device if have is None or estimate.total <= have else "cpu"
