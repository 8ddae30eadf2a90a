"""glibc's malloc, set once per process for how the repair allocates and so that every run gives the same result.

The repair allocates and frees many frame-sized arrays, and glibc returns every freed block above its mmap
threshold to the kernel and faults it back in on the next allocation: on bbb 720p at 5% loss that was 3.2 s
of system time in a 9.8 s run. Serving them from the heap instead: 7.7 s, with peak memory 474 / 478 MB
for a 10 s / 40 s input (429 / 449 MB before), still flat in the length.

Heap blocks come back holding whatever their last owner left, and libx264 reads some memory it never
wrote: the same frames, encoded with the same settings (one thread or several) after a repair in the
same process, came out as 4 different bitstreams in 5 runs (bbb 352x288, simulate-loss's re-encode), so
the damaged clips, and every figure measured on them, changed from run to run. Blocks malloc hands out
are therefore zeroed, as fresh pages are (M_PERTURB): 5 runs out of 5 then gave the one bitstream an
encode in a fresh process gives, for 5% more time in `conceal` (bbb 720p at 5% loss: 1.85 -> 1.95 times a
plain decode and encode) and 7-22% more in bitstream detection against a plain decode (bikes 10% 2.68 ->
2.88, carphone 10% 5.05 -> 5.59). Zeroing only while simulate-loss runs was not enough (2 bitstreams in
5 runs): it stays on once set.
"""
from __future__ import annotations

import ctypes
import functools

MMAP_THRESHOLD = 64 << 20
TRIM_THRESHOLD = 256 << 20
# M_PERTURB fills each block malloc returns with the complement of this byte, and each freed one with it.
ZEROED_ON_ALLOCATION = 0xFF
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_PERTURB = -1, -3, -6


def _mallopt(*settings: tuple[int, int]) -> None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        for parameter, value in settings:
            libc.mallopt(parameter, value)
    except (OSError, AttributeError):
        pass  # not glibc: its own allocator's defaults stay


@functools.cache
def keep_large_blocks() -> None:
    """Keep frame-sized blocks for reuse (process-wide, once; glibc only). Enough where nothing is encoded:
    damage detection, whose pixel detector network allocates and frees frame-sized activations each frame
    (132 baked frames of bbb 720p: 16.1 s, 14.8 s of it system time, without; 7.4 s with; 8.9 s zeroed too)."""
    _mallopt((M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD))


@functools.cache
def tune_malloc() -> None:
    """Keep frame-sized blocks for reuse and hand every block out zeroed (process-wide, once; glibc only):
    for whatever encodes with libx264 afterwards."""
    keep_large_blocks()
    _mallopt((M_PERTURB, ZEROED_ON_ALLOCATION))
