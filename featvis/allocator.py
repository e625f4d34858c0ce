"""Host memory reuse for CPU training: glibc's malloc keeps freed blocks instead of handing them back to the OS.

PyTorch's CPU allocator takes every tensor from ``malloc``. glibc serves blocks above its mmap threshold (at most
32 MiB) with a fresh ``mmap`` and unmaps them when freed, so every large activation and gradient of every training
step is a new mapping whose pages fault in one by one, each zeroed by the kernel. A 10-epoch CIFAR-10 fit of the
default net at batch 1000 faults about 400,000 pages per step that way. With mmap off for the heap and no trimming,
freed blocks are reused as they are: no faults after the first steps, about 1.2x the training steps per second at
some 12% more resident memory (``benchmarks/allocator.py``; a CUDA process's host allocations are small, so it
changes nothing there).

It is a process-wide setting, so the library never applies it on import: the ``featvis`` command line does, for
its own process, unless ``FEATVIS_KEEP_FREED_MEMORY=0``. A script that trains on the CPU calls
:func:`keep_freed_memory` itself.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

#: Environment variable that turns the command line's setting off (``0``).
ENV = "FEATVIS_KEEP_FREED_MEMORY"

# mallopt parameters, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_INT_MAX = 2**31 - 1


def keep_freed_memory() -> bool:
    """Make glibc's malloc reuse freed memory: no mmap for large blocks, no trimming of the heap.

    Returns:
        True when applied; False where the C library is not glibc (macOS, musl, Windows), which is left as it is.
    """
    if not _glibc():
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    # Both calls return 1 on success. Large blocks then come from the heap, which is never trimmed, so a freed
    # block's pages stay mapped and are handed out again without faulting.
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _INT_MAX))


def keep_freed_memory_unless_disabled() -> bool:
    """:func:`keep_freed_memory`, unless the environment variable ``FEATVIS_KEEP_FREED_MEMORY`` is ``0``.

    Returns:
        Whether the setting was applied.
    """
    return keep_freed_memory() if enabled() else False


def enabled() -> bool:
    """Whether :func:`keep_freed_memory_unless_disabled` applies the setting here: glibc, and not turned off.

    Returns:
        False where the C library is not glibc or ``FEATVIS_KEEP_FREED_MEMORY`` is ``0``.
    """
    return os.environ.get(ENV, "1").strip() != "0" and _glibc()


def _glibc() -> bool:
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
