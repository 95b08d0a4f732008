"""Keep freed memory in the process for reuse, instead of handing it back to the kernel.

A training step allocates and frees the same large buffers every step: the output layer's
probabilities, activations, gradients. By default glibc's malloc gives blocks above a moving
threshold (128 KiB at first) their own mmap, and returns the free top of its heap to the kernel
once it passes twice that threshold, so such a buffer keeps coming back as fresh pages, each
zeroed by a page fault on first touch. Fixing both thresholds high lets the heap keep those
blocks and hand them out again. Preloading jemalloc or tcmalloc does the same for a whole
process; this needs no dependency and no wrapper around the command.
"""

from __future__ import annotations

import ctypes
import ctypes.util

#: mallopt's parameter numbers (malloc.h).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
#: glibc's ceiling for the mmap threshold on 64-bit systems; larger blocks still get an mmap.
MMAP_THRESHOLD = 32 * 2**20
#: Free memory at the top of the heap that is kept rather than returned to the kernel.
TRIM_THRESHOLD = 512 * 2**20


def keep_freed_memory() -> bool:
    """Set both thresholds in this process. Returns whether the C library took them: False
    where it is not glibc (musl, macOS, Windows), which then keeps its own behaviour."""
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        return False
    if mallopt is None:
        return False
    # Both or neither: setting one turns off glibc's moving threshold, and the trim threshold
    # alone would leave every block above the 128 KiB default threshold to its own mmap.
    if not mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD):
        return False
    return bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
