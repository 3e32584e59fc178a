"""Keep freed C-heap memory for reuse instead of giving it back to the kernel on every read.

glibc's malloc adapts two thresholds as a process runs: once a block over 128 KiB that was
mapped on its own is freed, blocks that size come from the heap instead, and the heap's
top is given back to the kernel (`brk`) whenever more than twice that size lies free on
it. Moving bulk data, each side allocates and frees a few 256 KiB buffers per socket read
(the read, the decrypted records, their join), so the heap grew and shrank on every read
and each reuse of a page was a fresh page: 590,000-630,000 minor page faults per GiB
received and 1.5 CPU-seconds per GB more than the same transfer without them (bench/).
Whether it happened depended on what the process had done before, so one direction or the
other was slow by turns.

Fixed thresholds end the adaptation: blocks under `MMAP_THRESHOLD` come from the heap, and
up to `TRIM_THRESHOLD` of free memory stays on it for the next read. Both are documented
`mallopt` settings. Elsewhere (macOS, Windows, musl) nothing is done: their allocators are
other ones. A setting the user made (`GLIBC_TUNABLES` or `MALLOC_*_` variables for malloc)
is theirs, and is left in force.
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "keep_freed_memory"]

# glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 4 << 20  # a block at least this big is mapped, and unmapped, on its own
TRIM_THRESHOLD = 16 << 20  # free memory kept on the heap's top before any is given back


def _user_tuned(environ: dict[str, str]) -> bool:
    tunables = environ.get("GLIBC_TUNABLES", "")
    return "glibc.malloc." in tunables or any(
        name in environ for name in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_")
    )


def keep_freed_memory(environ: dict[str, str] | None = None) -> str:
    """Fix glibc's thresholds for this process; what was done, in a phrase for the log."""
    environ = dict(os.environ) if environ is None else environ
    if not sys.platform.startswith("linux"):
        return "not glibc: its allocator as it is"
    if _user_tuned(environ):
        return "malloc tuned by the environment: left as set"
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 (only glibc has it)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return "not glibc: its allocator as it is"
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) != 1 or mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1:
        return "glibc refused fixed malloc thresholds: its own, adapting"
    return f"malloc keeps up to {TRIM_THRESHOLD >> 20} MiB freed; blocks under {MMAP_THRESHOLD >> 20} MiB from the heap"
