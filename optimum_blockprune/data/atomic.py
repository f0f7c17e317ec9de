"""Atomic writes: files and folders appear complete or not at all; nothing existing is lost on failure.

Everything written here gets the permissions a plain ``open`` or ``mkdir`` would give under the
user's umask (files ``0o666 & ~umask``, folders ``0o777 & ~umask``), not the private modes of
:mod:`tempfile`. Replacing a folder (``overwrite``) is allowed only when every entry in it is one
the caller says it wrote (``owned``); anything else makes the write refuse, so no foreign file is
ever deleted.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from optimum_blockprune.errors import BlockPruneError

#: Says whether a top-level entry name of an output folder is one this tool writes.
Owned = Callable[[str], bool]


def current_umask() -> int:
    """The process umask: from ``/proc/self/status`` where the kernel reports it; elsewhere by
    setting and restoring it (``os.umask`` has no read-only form, so another thread creating a
    file in that instant would get mode 0; acceptable for a command-line tool)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0)
    os.umask(old)
    return old


def file_mode() -> int:
    """Mode of a new file under the current umask."""
    return 0o666 & ~current_umask()


def dir_mode() -> int:
    """Mode of a new folder under the current umask."""
    return 0o777 & ~current_umask()


def normalize_modes(folder: Path) -> None:
    """Give ``folder`` and everything under it the modes of a plain mkdir / open (symlinks untouched)."""
    fmode, dmode = file_mode(), dir_mode()
    os.chmod(folder, dmode)
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            if not os.path.islink(os.path.join(root, name)):
                os.chmod(os.path.join(root, name), dmode)
        for name in files:
            if not os.path.islink(os.path.join(root, name)):
                os.chmod(os.path.join(root, name), fmode)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, default=str)
            f.write("\n")
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def _within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def foreign_entries(folder: Path, owned: Owned | None) -> list[str]:
    """Sorted names of the entries of ``folder`` that ``owned`` does not claim (all without it)."""
    return sorted(p.name for p in folder.iterdir() if owned is None or not owned(p.name))


def check_output_dir(
    target: str | os.PathLike,
    overwrite: bool,
    *,
    owned: Owned | None = None,
    source: str | os.PathLike | None = None,
) -> Path:
    """Refuse an output folder that cannot be written: a file in its place; the input model's
    folder ``source`` (or a folder inside it or around it, symlinks resolved); a non-empty folder
    without ``overwrite``; with ``overwrite`` and ``owned``, a folder holding entries ``owned``
    does not claim (they would be lost). Without ``owned`` the last check is left to
    :func:`atomic_output_dir`, which never replaces a folder it cannot fully account for."""
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise BlockPruneError(f"output {target} is a file, not a folder; choose another --output")
    if source is not None and Path(source).exists():
        here, there = target.resolve(), Path(source).resolve()
        if _within(here, there) or _within(there, here):
            raise BlockPruneError(
                f"output {target} would write into the input model's folder {source}; choose another --output"
            )
    if not target.is_dir() or not any(target.iterdir()):
        return target
    if not overwrite:
        raise BlockPruneError(
            f"output folder {target} is not empty; pass --overwrite to replace it or choose another --output"
        )
    if owned is not None:
        _refuse_foreign(target, owned)
    return target


def _refuse_foreign(target: Path, owned: Owned | None) -> None:
    foreign = foreign_entries(target, owned)
    if foreign:
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        raise BlockPruneError(
            f"output folder {target} holds files optimum-blockprune did not write "
            f"({', '.join(foreign[:3])}{more}); --overwrite replaces only its own files: "
            "move them or choose another --output"
        )


def remove_owned(folder: str | os.PathLike, owned: Owned) -> None:
    """Delete the entries of ``folder`` that ``owned`` claims, then ``folder`` itself if that left
    it empty; anything else in it stays."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        if owned(entry.name):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    if not any(folder.iterdir()):
        folder.rmdir()


@contextmanager
def atomic_output_dir(
    target: str | os.PathLike,
    overwrite: bool = False,
    *,
    owned: Owned | None = None,
    source: str | os.PathLike | None = None,
) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``target``, on failure it vanishes.

    An existing non-empty ``target`` is replaced only with ``overwrite`` and only when ``owned``
    claims every entry in it (without ``owned``, only an empty one is); the new folder and all it
    holds get normal permissions under the umask."""
    target = check_output_dir(target, overwrite, owned=owned, source=source).resolve()
    if target.is_dir():
        _refuse_foreign(target, owned if owned is not None else (lambda name: False))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        normalize_modes(tmp)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old / "x")
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def atomic_file(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path to write; on success it is flushed to disk, given the mode
    of a new file under the umask and renamed over ``target`` (a reader, or a process killed at any
    moment, sees the old file or the new one)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, file_mode())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
