"""Probes the protocol uses beside the approaches: the storage reference."""

from __future__ import annotations

import json
import mmap
import os
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from ..model import get_model
from ..recorders import CpuIO
from ..registry import APPROACHES
from ..store import Location

# Samples of the reference per run: one sample proved untrustworthy (docs/decisions.md#reference-samples).
REFERENCE_SAMPLES = 3
# Block size of the reference's writes and reads.
REFERENCE_BLOCK = 16 << 20
# Threads of the parallel write and read (the parallel loaders use 4-16).
REFERENCE_THREADS = 8
REFERENCE_FILE = "reference.bin"


def _pieces(nbytes: int) -> list[tuple[int, int]]:
    return [(off, min(REFERENCE_BLOCK, nbytes - off)) for off in range(0, nbytes, REFERENCE_BLOCK)]


def _write_stream(loc: Location, nbytes: int, block: bytes) -> None:
    with loc.open_write(REFERENCE_FILE) as f:
        left = nbytes
        while left > 0:
            n = min(left, len(block))
            f.write(block[:n] if n < len(block) else block)
            left -= n
        f.finish()


def _pwrite_all(fd: int, data: memoryview, off: int) -> None:
    while len(data):  # pwrite may write less than asked
        n = os.pwrite(fd, data, off)
        data, off = data[n:], off + n


def _write_parallel(path, nbytes: int, block: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        with ThreadPoolExecutor(REFERENCE_THREADS) as pool:
            list(pool.map(lambda p: _pwrite_all(fd, memoryview(block)[:p[1]], p[0]), _pieces(nbytes)))
        os.fsync(fd)
    finally:
        os.close(fd)
    dfd = os.open(os.path.dirname(path), os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


# The reads fill buffers made (and touched) before their timers, again and again: the disk's rate, not fresh
# memory's, which a format's own work counts apart (its faults). Why: docs/decisions.md#reference-read
def _buffers(nbytes: int, n: int) -> queue.SimpleQueue:
    """``n`` buffers of a piece each (at most ``nbytes``), every page already written."""
    out: queue.SimpleQueue = queue.SimpleQueue()
    for _ in range(n):
        out.put(bytearray(b"\1") * max(1, min(REFERENCE_BLOCK, nbytes)))
    return out


def _read_stream(loc: Location, bufs: queue.SimpleQueue) -> None:
    buf = bufs.get()
    stream = loc.open_read(REFERENCE_FILE)
    try:
        if hasattr(stream, "readinto"):
            while stream.readinto(buf):
                pass
        else:
            while stream.read(REFERENCE_BLOCK):
                pass
    finally:
        stream.close()
        bufs.put(buf)


def _read_parallel(path, nbytes: int, bufs: queue.SimpleQueue) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        def one(piece):
            off, n = piece
            buf = bufs.get()  # one per thread in flight: as many as the pool's threads
            try:
                view = memoryview(buf)
                while n > 0:  # preadv may return less than asked
                    got = os.preadv(fd, [view[:n]], off)
                    if got == 0:
                        raise EOFError(f"{path}: short read at {off}")
                    off, n = off + got, n - got
            finally:
                bufs.put(buf)

        with ThreadPoolExecutor(REFERENCE_THREADS) as pool:
            list(pool.map(one, _pieces(nbytes)))
    finally:
        os.close(fd)


def _read_mapped(path) -> None:
    """Every page of the file touched through a read-only mapping: the kernel's readahead pulls it in, no copy."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            for i in range(0, len(m), mmap.PAGESIZE):
                m[i]


def _timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def reference_sample(nbytes: int, loc: Location) -> dict:
    """The storage itself, in this run: one file (or object) of ``nbytes``
    written in 16 MiB blocks and made durable (fsync; the completed multipart
    upload), evicted, and read back cold in one stream. On a file system the
    same file is also written by ``REFERENCE_THREADS`` threads (``pwrite`` of
    16 MiB pieces, then fsync), read cold by as many threads (``preadv``),
    the way parallel writers and loaders do, and read cold through a mapping
    (the kernel's readahead, as a memory-mapped loader reads); each is timed
    on its own. The reads reuse their buffers."""
    block = os.urandom(min(REFERENCE_BLOCK, max(nbytes, 1)))
    path = loc.local_file(REFERENCE_FILE)
    out: dict = {}
    try:
        out["write_stream_s"] = _timed(_write_stream, loc, nbytes, block)
        cold, _frac = loc.evict()
        bufs = _buffers(nbytes, REFERENCE_THREADS)
        out["read_stream_s"] = _timed(_read_stream, loc, bufs)
        if path is not None:
            loc.remove()
            path.parent.mkdir(parents=True, exist_ok=True)
            out["write_parallel_s"] = _timed(_write_parallel, str(path), nbytes, block)
            cold2, _frac = loc.evict()
            cold = cold and cold2
            out["read_parallel_s"] = _timed(_read_parallel, str(path), nbytes, bufs)
            cold3, _frac = loc.evict()
            cold = cold and cold3
            out["read_mapped_s"] = _timed(_read_mapped, str(path))
    finally:
        loc.remove()
    out["write_s"] = min(v for k, v in out.items() if k.startswith("write_"))
    out["read_s"] = min(v for k, v in out.items() if k.startswith("read_"))
    out["read_cold"] = cold
    return out


# The short reference beside each round of saves: at most this many bytes (never more than the model's)
ROUND_REFERENCE_BYTES = 256 << 20


def round_reference(nbytes: int, loc: Location, start_state) -> dict:
    """The disk's state beside a round of saves: from the same start as a save (``start_state(loc)``: the
    run's removal, trim and drop), ``nbytes`` written in one stream in 16 MiB blocks and made durable, evicted,
    and read back cold in one stream; each timed on its own (a read whose eviction was not confirmed gives no
    read rate). Returns the rates, how it started and what it cost
    the run (``took_s``: all of it, the start included)."""
    t0 = time.perf_counter()
    loc.remove()
    started = start_state(loc)
    block = os.urandom(min(REFERENCE_BLOCK, max(nbytes, 1)))
    try:
        write_s = _timed(_write_stream, loc, nbytes, block)
        cold, _frac = loc.evict()
        read_s = _timed(_read_stream, loc, _buffers(nbytes, 1))
    finally:
        loc.remove()
    return {"bytes": nbytes, "write_s": write_s, "read_s": read_s, "write_Bps": nbytes / write_s,
            "read_Bps": nbytes / read_s if cold else None, "read_cold": cold, **started,
            "took_s": time.perf_counter() - t0}


def _way(name: str) -> str:
    return {"stream": "one stream", "mapped": "mapped"}.get(name, f"{REFERENCE_THREADS} threads")


def reference(nbytes: int, loc: Location, samples: int = REFERENCE_SAMPLES) -> dict:
    """The reference: for writing and for reading, the fastest way (one
    stream; on a file system also parallel threads, and for reading a
    mapping) by the medians of its
    samples; every sample kept in ``reference_samples``, each way's median
    in ``reference_ways``."""
    got = [reference_sample(nbytes, loc) for _ in range(samples)]
    ways = {k: statistics.median(s[k] for s in got) for k in got[0] if k.endswith(("stream_s", "parallel_s",
                                                                                      "mapped_s"))}
    best = {}
    for op in ("write", "read"):
        way = min((k for k in ways if k.startswith(op + "_")), key=ways.get)
        best[op] = (ways[way], way.removeprefix(op + "_").removesuffix("_s"))
    (w, w_way), (r, r_way) = best["write"], best["read"]
    colds = [s["read_cold"] for s in got]
    return {"reference_kind": loc.reference_kind, "reference_bytes": nbytes, "reference_write_s": w,
            "reference_read_s": r, "reference_write_way": _way(w_way), "reference_read_way": _way(r_way),
            "reference_ways": ways,
            "reference_read_cold": None if None in colds else all(colds),
            "reference_write_Bps": nbytes / w if w else None, "reference_read_Bps": nbytes / r if r else None,
            "reference_samples": got}


# -- why a save takes the time it does: its system calls -----------------------------
PROFILE_TIMEOUT_S = 1800
TRACED = ("write", "pwrite64", "writev", "pwritev", "pwritev2", "fsync", "fdatasync", "sync_file_range")


def syscall_profile(approach: str, model: str, workdir) -> dict | None:
    """One save of ``approach`` (a registered name) on the preset ``model`` in
    a child process under ``strace -f -c``: the save's CPU seconds, write
    calls and bytes (``CpuIO`` around the save), and the fsync/fdatasync
    calls strace counted in the child (building the model makes none; every
    traced call is in ``traced_calls``). Outside any timing: strace slows
    the process. None where strace is not installed; ``error`` where it
    could not trace or the save failed."""
    if shutil.which("strace") is None:
        return None
    with tempfile.TemporaryDirectory(dir=workdir, prefix="strace-") as tmp:
        counts = os.path.join(tmp, "counts.txt")
        try:
            proc = subprocess.run(["strace", "-f", "-qq", "-c", "-e", "trace=" + ",".join(TRACED), "-o", counts,
                                   sys.executable, "-m", "llama_ckpt.bench.probes", "save", approach, model, tmp],
                                  capture_output=True, text=True, timeout=PROFILE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return {"approach": approach, "model": model, "error": f"no result within {PROFILE_TIMEOUT_S} s"}
        if proc.returncode != 0:  # strace cannot trace here (ptrace not allowed), or the save failed
            return {"approach": approach, "model": model,
                    "error": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]}
        calls = {}
        for line in open(counts):
            parts = line.split()
            if parts and parts[-1] in TRACED and len(parts) >= 5:
                calls[parts[-1]] = int(parts[3])
    cpu = json.loads(proc.stdout.strip().splitlines()[-1])  # the save's own CpuIO
    return {"approach": approach, "model": model, **cpu,
            "mean_write_bytes": cpu["write_bytes"] / cpu["write_calls"] if cpu["write_calls"] else None,
            "fsync_calls": calls.get("fsync", 0) + calls.get("fdatasync", 0), "traced_calls": calls}


def _save_once(approach: str, model: str, workdir: str) -> None:
    """The child of ``syscall_profile``: build the model, save it once, print the save's CpuIO as JSON."""
    sd = get_model(model).materialize()
    with CpuIO() as cpu:
        APPROACHES[approach].save(sd, os.path.join(workdir, "ckpt"))
    print(json.dumps(cpu.result))


if __name__ == "__main__":
    if len(sys.argv) != 5 or sys.argv[1] != "save":
        sys.exit("usage: python -m llama_ckpt.bench.probes save APPROACH MODEL DIR")
    _save_once(*sys.argv[2:])
