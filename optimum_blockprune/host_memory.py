"""Keep freed host memory mapped while the CPU analysis runs.

glibc hands every allocation above its mmap threshold (at most 32 MiB) straight back to the
kernel when it is freed, so each batch of a large CPU analysis touches its activations' pages
afresh: about 5 s of page faults per 4,096 tokens of SmolLM2, which made large batches slower
than the batch-1 loop. Inside ``retained_heap`` large blocks come from the heap and stay there
for the next batch; on leaving, glibc's defaults return and the free pages go back to the kernel.
"""

from __future__ import annotations

import ctypes
import platform
from collections.abc import Iterator
from contextlib import contextmanager

# mallopt parameters and glibc's defaults (malloc.h, mallopt(3))
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_DEFAULT_TRIM_THRESHOLD, _DEFAULT_MMAP_MAX = 128 * 1024, 65536


def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


@contextmanager
def retained_heap(enabled: bool = True) -> Iterator[bool]:
    """Within the block, freed memory is kept for reuse (glibc only; elsewhere a no-op).

    Yields whether the setting took effect.
    """
    libc = _glibc() if enabled else None
    if libc is None:
        yield False
        return
    libc.mallopt(_M_MMAP_MAX, 0)  # large blocks from the heap, not from fresh mappings
    libc.mallopt(_M_TRIM_THRESHOLD, -1)  # never shrink the heap while inside
    try:
        yield True
    finally:
        libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
        libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
        libc.malloc_trim(0)
