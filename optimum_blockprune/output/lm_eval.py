"""lm-evaluation-harness tasks on an in-memory model, offline.

Tasks come from lm-eval's own registry or from task YAMLs in ``include_path`` folders (tasks
built from local data files, such as ``examples/lm_eval_tasks/blockprune_mc``). The hub is
switched off while tasks are listed, built and run: a local task never touches the network, and
a built-in task whose dataset is not cached fails with a one-line error.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from torch import nn

from optimum_blockprune.errors import BlockPruneError, require_extra

_OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@contextmanager
def offline() -> Iterator[None]:
    """Hub and datasets in offline mode (environment and the already imported libraries' flags)."""
    saved_env = {k: os.environ.get(k) for k in _OFFLINE_ENV}
    os.environ.update(_OFFLINE_ENV)
    flags = []
    try:
        import datasets.config
        import huggingface_hub.constants

        flags = [(datasets.config, "HF_DATASETS_OFFLINE"), (huggingface_hub.constants, "HF_HUB_OFFLINE")]
    except ImportError:  # pragma: no cover - both come with transformers / datasets
        pass
    saved = [(module, name, getattr(module, name, None)) for module, name in flags]
    for module, name in flags:
        setattr(module, name, True)
    try:
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def task_manager(tasks: Sequence[str], include_path: Sequence[str | Path] = ()) -> Any:
    """An lm-eval TaskManager that knows every task in ``tasks`` (one-line error otherwise).

    lm-eval's built-in tasks are indexed only when a task is not found in ``include_path``."""
    require_extra("lm_eval", "eval", "evaluating lm-eval tasks (--tasks)")
    from lm_eval.tasks import TaskManager

    paths = [str(p) for p in include_path]
    for path in paths:
        if not Path(path).exists():
            raise BlockPruneError(
                f"task folder not found: {path}; give a folder or YAML file with --include-path"
            )
    manager = TaskManager(include_path=paths or None, include_defaults=False) if paths else None
    if manager is None or _unknown(manager, tasks):
        manager = TaskManager(include_path=paths or None, include_defaults=True)
    unknown = _unknown(manager, tasks)
    if unknown:
        where = f" in {', '.join(paths)} or" if paths else ""
        raise BlockPruneError(
            f"unknown lm-eval task {unknown[0]!r}: not found{where} among lm-eval's tasks; "
            "check the name or add --include-path FOLDER with its YAML"
        )
    return manager


def _unknown(manager: Any, tasks: Sequence[str]) -> list[str]:
    known = set(manager.all_tasks)
    return [t for t in tasks if t not in known and not manager.match_tasks([t])]


def run_tasks(
    model: nn.Module,
    tokenizer: Any,
    tasks: Sequence[str],
    include_path: Sequence[str | Path] = (),
    *,
    batch_size: int = 8,
    num_fewshot: int | None = None,
    limit: int | None = None,
    manager: Any = None,
) -> dict[str, dict[str, float]]:
    """Run lm-eval ``tasks`` on the in-memory ``model`` through ``HFLM``.

    Returns ``{task: {metric: value, ..., "samples": n}}`` (metrics without lm-eval's ``,none``
    filter suffix; standard errors are not computed). ``manager``: a :func:`task_manager` to reuse."""
    if not tasks:
        raise BlockPruneError("no lm-eval task given; pass --tasks NAME[,NAME...]")
    require_extra("lm_eval", "eval", "evaluating lm-eval tasks (--tasks)")
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    from optimum_blockprune.energy.gradients import input_device

    with offline():
        manager = manager or task_manager(tasks, include_path)
        lm = HFLM(
            pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(input_device(model))
        )
        try:
            out = lm_eval.simple_evaluate(
                model=lm,
                tasks=list(tasks),
                task_manager=manager,
                num_fewshot=num_fewshot,
                limit=limit,
                log_samples=False,
                bootstrap_iters=0,
            )
        except (ConnectionError, OSError, FileNotFoundError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BlockPruneError(
                f"an lm-eval task needs data that is not available offline ({first}); "
                "use a task built from local files (--include-path)"
            ) from None
    return _flatten(out)


def _flatten(out: dict[str, Any]) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    samples = out.get("n-samples", {})
    for task, metrics in out["results"].items():
        row: dict[str, float] = {}
        for key, value in metrics.items():
            metric, _, flt = key.partition(",")
            if metric.endswith("_stderr") or metric == "sample_len" or not isinstance(value, (int, float)):
                continue
            row[metric if flt in ("", "none") else f"{metric},{flt}"] = float(value)
        if task in samples:
            row["samples"] = int(samples[task]["effective"])
        results[task] = row
    return results
