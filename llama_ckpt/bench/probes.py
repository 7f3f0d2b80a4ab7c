"""Probes the protocol uses beside the approaches: the storage reference."""

from __future__ import annotations

import os
import statistics
import time

from ..store import Location

# Samples of the reference per run: one sample proved untrustworthy here (the
# same write measured 341 then 1,869 MB/s back to back).
REFERENCE_SAMPLES = 3
# Block size of the reference's sequential writes and reads.
REFERENCE_BLOCK = 16 << 20
REFERENCE_FILE = "reference.bin"


def reference_sample(nbytes: int, loc: Location) -> dict:
    """The storage itself, in this run: one file (or object) of ``nbytes``
    written sequentially in 16 MiB blocks and made durable (fsync; the
    completed multipart upload), then evicted and read back cold in one stream."""
    block = os.urandom(min(REFERENCE_BLOCK, max(nbytes, 1)))
    try:
        t0 = time.perf_counter()
        with loc.open_write(REFERENCE_FILE) as f:
            left = nbytes
            while left > 0:
                n = min(left, len(block))
                f.write(block[:n] if n < len(block) else block)
                left -= n
            f.finish()
        write_s = time.perf_counter() - t0
        cold, _frac = loc.evict()
        t0 = time.perf_counter()
        stream = loc.open_read(REFERENCE_FILE)
        try:
            while stream.read(REFERENCE_BLOCK):
                pass
        finally:
            stream.close()
        read_s = time.perf_counter() - t0
    finally:
        loc.remove()
    return {"write_s": write_s, "read_s": read_s, "read_cold": cold}


def reference(nbytes: int, loc: Location, samples: int = REFERENCE_SAMPLES) -> dict:
    """The reference as the medians of its samples (write and read each),
    every sample kept in ``reference_samples``."""
    got = [reference_sample(nbytes, loc) for _ in range(samples)]
    w = statistics.median(s["write_s"] for s in got)
    r = statistics.median(s["read_s"] for s in got)
    colds = [s["read_cold"] for s in got]
    return {"reference_kind": loc.reference_kind, "reference_bytes": nbytes, "reference_write_s": w,
            "reference_read_s": r, "reference_read_cold": None if None in colds else all(colds),
            "reference_write_Bps": nbytes / w if w else None, "reference_read_Bps": nbytes / r if r else None,
            "reference_samples": got}
