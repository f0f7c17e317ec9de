"""Load a causal LM and its tokenizer from a folder, a hub id, or an in-memory model."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from optimum_blockprune.errors import BlockPruneError, SettingError
from optimum_blockprune.model.pruned_format import load_pruned

_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
#: The weights' dtypes a user may ask for by name.
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def check_device(device: str, setting: str = "device") -> str:
    """``device`` as torch spells it (``cuda`` -> ``cuda:0``); a one-line error naming ``setting``
    when it is not a device or not available on this machine."""
    try:
        where = torch.device(device)
    except (RuntimeError, TypeError):
        raise SettingError(setting, f"unknown {{name}} {device!r}; use cpu, cuda, cuda:N or mps") from None
    if where.type == "cpu":
        return "cpu"
    backend = getattr(torch, where.type, None)
    if where.type == "mps":
        backend = getattr(torch.backends, "mps", None)
    if backend is None or not backend.is_available():
        raise SettingError(setting, f"{{name}} {device}: this machine has no {where.type} device; use cpu")
    if where.type == "cuda":
        index = 0 if where.index is None else where.index
        if index >= torch.cuda.device_count():
            raise SettingError(
                setting, f"{{name}} {device}: this machine has {torch.cuda.device_count()} CUDA devices"
            )
        return f"cuda:{index}"
    return str(where)


def on_gpu(device: str | None, device_map: str | dict | None) -> bool:
    """Whether the weights go (at least partly) to a CUDA GPU."""
    if device is not None:
        return device.startswith("cuda")
    if device_map in ("auto", "balanced", "balanced_low_0", "sequential"):
        return torch.cuda.is_available()
    wanted = device_map.values() if isinstance(device_map, dict) else [device_map]
    return any(isinstance(d, int) or str(d).startswith("cuda") for d in wanted if d is not None)


def resolve_dtype(name: str, gpu: bool) -> torch.dtype:
    """The weights' dtype of ``--dtype NAME``: ``auto`` is bfloat16 on a CUDA GPU that supports
    it, float32 elsewhere."""
    if name == "auto":
        return torch.bfloat16 if gpu and torch.cuda.is_bf16_supported() else torch.float32
    if name not in DTYPES:
        raise SettingError("dtype", f"unknown {{name}} {name!r}; use auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_model_and_tokenizer(
    model_or_path: str | Path | nn.Module | None,
    *,
    tokenizer: Any = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
    device_map: str | dict | None = None,
    max_memory: dict | None = None,
    offload_folder: str | Path | None = None,
    revision: str | None = None,
) -> tuple[nn.Module, Any, str]:
    """(model, tokenizer, model_id). ``None`` or ``"demo"`` means the bundled demo model;
    ``revision`` picks a Hub id's branch, tag or commit. ``device`` (``cpu``, ``cuda:1``, ...)
    puts the whole model on one device; it excludes ``device_map``.

    ``device_map`` (``"auto"``, ``"cuda:1"``, a module-to-device dict, ...), ``max_memory`` and
    ``offload_folder`` (for layers mapped to ``"disk"``) go to ``from_pretrained``; they split a
    model too large for one device over GPUs, CPU memory and disk.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if isinstance(model_or_path, nn.Module):
        config = getattr(model_or_path, "config", None)
        return (
            model_or_path,
            tokenizer,
            str(getattr(config, "_name_or_path", "") or type(model_or_path).__name__),
        )
    if model_or_path is None or str(model_or_path) == "demo":
        from optimum_blockprune.data.demo_assets import demo_model_path

        model_or_path = demo_model_path()
    source = str(model_or_path)
    path = Path(source)
    if not path.exists() and (source.startswith((".", "/", "~")) or not _HUB_ID.match(source)):
        raise BlockPruneError(f"model folder not found: {source}; give a folder with config.json and weights")
    if path.exists() and not (path / "config.json").is_file():
        raise BlockPruneError(f"{source} has no config.json; give a folder saved with save_pretrained")
    if device is not None:
        if device_map is not None:
            raise BlockPruneError("give a device or a device map, not both (--device or --device-map)")
        where = check_device(str(device))
        device_map = None if where == "cpu" else {"": where}
    placement = _placement(device_map, max_memory, offload_folder)
    hub = {} if revision is None or path.exists() else {"revision": revision}
    try:
        if path.exists():
            model = load_pruned(path, dtype=dtype, **placement)
        else:
            model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **placement, **hub)
    except ValueError as exc:
        if "Unrecognized configuration class" in str(exc) or "model_type" in str(exc):
            raise BlockPruneError(f"unknown architecture in {source}: {_first_line(exc)}") from None
        raise BlockPruneError(f"cannot load model {source}: {_first_line(exc)}") from None
    except (OSError, KeyError, RuntimeError) as exc:
        raise BlockPruneError(f"cannot load model {source}: {_first_line(exc)}") from None
    if tokenizer is None:
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, **hub)
        except Exception as exc:
            raise BlockPruneError(f"cannot load the tokenizer of {source}: {_first_line(exc)}") from None
    return model, tokenizer, source


def _placement(
    device_map: str | dict | None, max_memory: dict | None, offload_folder: str | Path | None
) -> dict[str, Any]:
    """``from_pretrained`` placement arguments, checked so that mistakes give one-line errors."""
    if device_map is None:
        if max_memory or offload_folder:
            raise BlockPruneError("max memory and offload folder need a device map; add --device-map auto")
        return {}
    wanted = device_map.values() if isinstance(device_map, dict) else [device_map]
    if any(str(d).startswith("cuda") or isinstance(d, int) for d in wanted) and not torch.cuda.is_available():
        raise BlockPruneError(
            f"device map {device_map} needs CUDA, which this machine lacks; use cpu or auto"
        )
    if "disk" in wanted and offload_folder is None:
        raise BlockPruneError("the device map offloads to disk; give a folder with --offload-folder")
    out: dict[str, Any] = {"device_map": device_map}
    if max_memory:
        out["max_memory"] = max_memory
    if offload_folder is not None:
        Path(offload_folder).mkdir(parents=True, exist_ok=True)
        out["offload_folder"] = str(offload_folder)
    return out


def parse_max_memory(text: str) -> dict[int | str, str]:
    """``"0=70GiB,1=70GiB,cpu=200GiB"`` -> ``{0: "70GiB", 1: "70GiB", "cpu": "200GiB"}``."""
    out: dict[int | str, str] = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        device, sep, amount = item.partition("=")
        if not sep or not amount.strip():
            raise BlockPruneError(f"bad max memory {item!r}; write DEVICE=AMOUNT, e.g. 0=70GiB,cpu=200GiB")
        device = device.strip()
        out[int(device) if device.isdigit() else device] = amount.strip()
    return out


def rank_max_memory(
    local_rank: int,
    local_world: int,
    requested: dict[int | str, Any] | None = None,
    available: dict[int | str, int] | None = None,
) -> dict[int | str, Any] | None:
    """For ``device_map="auto"`` under a data-parallel launch: this process's share of the node's
    GPUs (each of ``local_world`` processes gets ``gpus // local_world`` of them, in order).

    Without ``requested``: all of each GPU of the share and a ``1/local_world`` share of CPU
    memory. With ``requested`` (``--max-memory``), GPU numbers count within the share: ``0`` is
    this process's first GPU. ``available`` defaults to what accelerate measures.
    """
    if available is None:
        from accelerate.utils import get_max_memory

        available = get_max_memory() if torch.cuda.is_available() else {}
    gpus = sorted(k for k in available if isinstance(k, int))
    if local_world <= 1 or not gpus:
        return requested
    per = len(gpus) // local_world
    if per == 0:
        raise BlockPruneError(
            f"{local_world} processes share {len(gpus)} GPUs; launch at most {len(gpus)} with --device-map auto"
        )
    share = gpus[local_rank * per : (local_rank + 1) * per]
    if requested is None:
        mine: dict[int | str, Any] = {g: available[g] for g in share}
        if "cpu" in available:
            mine["cpu"] = available["cpu"] // local_world
        return mine
    mine = {}
    for device, amount in requested.items():
        if isinstance(device, int) and device >= per:
            raise BlockPruneError(
                f"max memory names GPU {device}, but each of the {local_world} processes has {per} GPUs "
                f"(0-{per - 1}); under accelerate launch GPU numbers count within each process's share"
            )
        mine[share[device] if isinstance(device, int) else device] = amount
    return mine
