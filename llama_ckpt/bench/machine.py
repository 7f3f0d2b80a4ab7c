"""The machine profile: what this machine's disk, page cache, memory, file
system and cores can do, measured once per run before any approach, so that
every figure of the run can be read against the limits that bound it
(:mod:`llama_ckpt.results.bounds`).

Each unit cost is measured a few times (``PROFILE_SAMPLES``) and kept with
every sample, so its spread shows:

- durable writes of ``nbytes`` (the model's bytes, at most
  ``PROFILE_MAX_BYTES``) back to back, each to a new file on space not
  written in this profile (``fresh``), then each after the previous file was
  removed (``freed``): the rate of each, in order, so a burst or a slow
  first write shows;
- the storage reference (:func:`llama_ckpt.bench.probes.reference`): one
  file written and read cold in one stream and by several threads, and
  read cold through a mapping;
- one thread's buffered write into the page cache (no fsync: the copy a
  single-stream writer makes before its fsync), at the checkpoint's full
  size where memory allows (``pagecache_bytes``), so the kernel's dirty-page
  throttling is in it;
- the disk's direct I/O (``O_DIRECT``: no page cache) write, fsynced, and
  read, one stream (None on a file system that refuses it, such as tmpfs);
- memory copies between buffers already faulted in, on one thread and on
  every core;
- filling fresh memory (page faults on 4 KiB pages; and with transparent huge
  pages where the kernel offers them on request);
- small files (4 KiB) created, written and fsynced one after another; and
  apart: the files created and written, then each fsynced (a file's create
  and an fsync's cost each on its own);
- every codec an approach or a sweep of the suite compresses with
  (``CODECS``: gzip at levels 1 and 9, zstd, blosc-lz4), one core, through
  TensorStore's zarr codecs as the approaches configure them, on
  float16-origin weights;
- cores, memory, the file system, its mount options and the transparent huge
  page setting.

The profile of a suite run is measured by its first phase and read by the
others (``runs/<id>/machine-profile.json``).
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import time
import uuid
from pathlib import Path
from typing import Iterator

import psutil
import torch

from .. import fsutil
from . import hostmem
from ..formats.tensorstore import compressor as zarr_compressor
from ..model import TensorSpec, seeded_tensor
from ..results.profile import MachineProfile, Rate
from ..store import LocalDir
from .probes import REFERENCE_BLOCK, reference

PROFILE_SAMPLES = 3  # each unit cost measured this many times
PROFILE_MAX_BYTES = 1 << 30  # the durable writes' size: the model's bytes, at most this
DURABLE_FRESH = 4  # durable writes back to back, each to a new file
PAGECACHE_SHARE = 0.4  # the page-cache write's size: the model's bytes, at most this share of the available memory
DURABLE_FREED = 3  # durable writes after those, each after the previous file was removed
MEMORY_BYTES = 256 << 20  # buffers of the memory copy and fill (at most; a small model's bytes, at least 64 MiB)
SMALL_FILES = 500  # small files written and fsynced per sample (50 for a model under 64 MiB)
SMALL_FILE_BYTES = 4096  # each small file's bytes
CODEC_BYTES = 8 << 20  # weights compressed per codec sample (at most; a small model's bytes, at least 4 MiB)
# The compression settings the suite's approaches and sweeps use (`compression` knob of the TensorStore formats;
# a test keeps this in step with the registry and the phase catalogue)
CODECS = ("gzip", "gzip:9", "zstd", "blosc-lz4")
PAGE = mmap.PAGESIZE


def _write(path: Path, nbytes: int, block: bytes) -> tuple[float, float]:
    """``nbytes`` of ``block`` written to a new file at ``path``, then fsynced:
    (seconds until written into the page cache, seconds until durable with its
    directory entry)."""
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        left = nbytes
        while left > 0:
            left -= os.write(fd, block if left >= len(block) else block[:left])
        written = time.perf_counter() - t0
        os.fsync(fd)
    finally:
        os.close(fd)
    fsutil.fsync_path(path.parent)
    return written, time.perf_counter() - t0


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` for the block, then back."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def durable_writes(where: Path, nbytes: int) -> dict:
    """``DURABLE_FRESH`` files of ``nbytes`` written durably back to back,
    each kept (so each takes space not just freed by this profile), then
    ``DURABLE_FREED`` more, each after the previous file was removed; bytes
    per second of each write, in order."""
    block = os.urandom(REFERENCE_BLOCK)
    fresh, freed, paths = [], [], []
    try:
        for _ in range(DURABLE_FRESH):
            paths.append(where / f"fresh-{uuid.uuid4().hex[:8]}.bin")
            fresh.append(nbytes / _write(paths[-1], nbytes, block)[1])
        for _ in range(DURABLE_FREED):
            fsutil.remove(paths.pop())
            os.sync()
            paths.append(where / f"freed-{uuid.uuid4().hex[:8]}.bin")
            freed.append(nbytes / _write(paths[-1], nbytes, block)[1])
    finally:
        for p in paths:
            fsutil.remove(p)
    return {"fresh_Bps": fresh, "freed_Bps": freed}


def buffered_write(where: Path, nbytes: int) -> float:
    """One thread's write of ``nbytes`` into the page cache, no fsync (made
    durable and removed afterwards, outside the timing): bytes per second."""
    path = where / f"buffered-{uuid.uuid4().hex[:8]}.bin"
    try:
        return nbytes / _write(path, nbytes, os.urandom(REFERENCE_BLOCK))[0]
    finally:
        fsutil.remove(path)


def _aligned(nbytes: int) -> mmap.mmap:
    """A page-aligned buffer of ``nbytes`` (anonymous memory), filled with random bytes, for ``O_DIRECT``."""
    buf = mmap.mmap(-1, nbytes)
    buf.write(os.urandom(min(nbytes, REFERENCE_BLOCK)) * (nbytes // min(nbytes, REFERENCE_BLOCK)))
    return buf


DIRECT_BLOCK = 16 << 20  # bytes per O_DIRECT call


def direct_io(where: Path, nbytes: int) -> tuple[float, float]:
    """``nbytes`` (rounded down to whole blocks of ``DIRECT_BLOCK``, at least one) written to a new file with
    ``O_DIRECT`` and fsynced, then read back with ``O_DIRECT``, one stream: (write, read) bytes per second.
    OSError where the file system refuses direct I/O (tmpfs)."""
    n = max(1, nbytes // DIRECT_BLOCK)
    path = where / f"direct-{uuid.uuid4().hex[:8]}.bin"
    buf = _aligned(DIRECT_BLOCK)
    try:
        t0 = time.perf_counter()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o644)
        try:
            for i in range(n):
                os.pwrite(fd, buf, i * DIRECT_BLOCK)
            os.fsync(fd)
        finally:
            os.close(fd)
        fsutil.fsync_path(path.parent)
        wrote = time.perf_counter() - t0
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
        try:
            t0 = time.perf_counter()
            for i in range(n):
                os.preadv(fd, [buf], i * DIRECT_BLOCK)
            read = time.perf_counter() - t0
        finally:
            os.close(fd)
        return n * DIRECT_BLOCK / wrote, n * DIRECT_BLOCK / read
    finally:
        buf.close()
        fsutil.remove(path)


def memory_copy(threads: int, nbytes: int = MEMORY_BYTES) -> float:
    """Bytes per second copied between two buffers already in memory, on ``threads`` threads."""
    src, dst = torch.ones(nbytes // 4), torch.zeros(nbytes // 4)
    with _torch_threads(threads):
        dst.copy_(src)  # once untimed: every page faulted in
        t0 = time.perf_counter()
        dst.copy_(src)
        return nbytes / (time.perf_counter() - t0)


def fresh_memory(huge: bool, nbytes: int = MEMORY_BYTES) -> float | None:
    """Bytes per second of filling memory never touched (one page fault per
    page), on one thread: a new anonymous mapping, with transparent huge pages asked for
    when ``huge`` (None where the kernel offers none)."""
    mm = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        if huge:
            if not hasattr(mmap, "MADV_HUGEPAGE") or thp_mode() == "never":
                return None
            mm.madvise(mmap.MADV_HUGEPAGE)
        elif hasattr(mmap, "MADV_NOHUGEPAGE"):
            mm.madvise(mmap.MADV_NOHUGEPAGE)
        t = torch.frombuffer(mm, dtype=torch.uint8)
        with _torch_threads(1):  # one core's rate: the bounds multiply it by the cores
            t0 = time.perf_counter()
            t.fill_(1)
            took = time.perf_counter() - t0
        del t
        return nbytes / took
    finally:
        mm.close()


def small_files(where: Path, n: int = SMALL_FILES) -> float:
    """Small files created, written and fsynced per second, one after another in one directory."""
    d = where / f"small-{uuid.uuid4().hex[:8]}"
    d.mkdir()
    data = os.urandom(SMALL_FILE_BYTES)
    try:
        t0 = time.perf_counter()
        for i in range(n):
            fd = os.open(d / str(i), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
        fsutil.fsync_path(d)
        return n / (time.perf_counter() - t0)
    finally:
        fsutil.remove(d)


def files_apart(where: Path, n: int = SMALL_FILES) -> tuple[float, float]:
    """Small files created and written one after another (no fsync), then each fsynced, in one directory:
    (files created per second, fsyncs per second)."""
    d = where / f"apart-{uuid.uuid4().hex[:8]}"
    d.mkdir()
    data = os.urandom(SMALL_FILE_BYTES)
    fds = []
    try:
        t0 = time.perf_counter()
        for i in range(n):
            fds.append(os.open(d / str(i), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))
            os.write(fds[-1], data)
        created = time.perf_counter() - t0
        t0 = time.perf_counter()
        for fd in fds:
            os.fsync(fd)
        synced = time.perf_counter() - t0
        return n / created, n / synced
    finally:
        for fd in fds:
            os.close(fd)
        fsutil.remove(d)


def _weights(nbytes: int = CODEC_BYTES) -> torch.Tensor:
    """``nbytes`` of float32 weights as the presets draw them (float16-origin)."""
    rows = max(1, nbytes // 4 // 1024)
    return seeded_tensor(TensorSpec("model.layers.0.mlp.up_proj.weight", (rows, 1024), torch.float32), 0)


def codec(name: str, data: torch.Tensor) -> float:
    """Bytes per second of ``data`` compressed by TensorStore's zarr codec
    ``name`` (a ``compression`` knob's value) on one core (one chunk per MiB,
    in memory: no storage)."""
    import tensorstore as ts

    compressor = zarr_compressor(name)
    arr = data.numpy()
    spec = {"driver": "zarr", "kvstore": {"driver": "memory"}, "create": True, "delete_existing": True,
            "context": {"data_copy_concurrency": {"limit": 1}, "file_io_concurrency": {"limit": 1}},
            "metadata": {"shape": list(arr.shape), "chunks": [256, 1024], "dtype": "<f4",
                         "compressor": compressor}}
    store = ts.open(spec).result()
    t0 = time.perf_counter()
    store.write(arr).result()
    return arr.nbytes / (time.perf_counter() - t0)


def thp_mode() -> str | None:
    """The kernel's transparent huge page setting (``always``, ``madvise``, ``never``), None where unknown."""
    try:
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return None
    return text[text.index("[") + 1:text.index("]")] if "[" in text else None


def mount_options(path: Path) -> str | None:
    """The mount options of the file system holding ``path`` (``/proc/mounts``)."""
    mnt = fsutil.filesystem_of(path)["mount"]
    try:
        for line in open("/proc/mounts"):
            parts = line.split()
            if len(parts) >= 4 and parts[1] == mnt:
                return parts[3]
    except OSError:
        pass
    return None


def profile(where: Path, nbytes: int, say=lambda s: None) -> MachineProfile:
    """The machine profile, measured in a scratch directory under ``where``
    (removed after); ``nbytes``: the model's bytes. Each field's unit and
    meaning: :class:`llama_ckpt.results.profile.MachineProfile`."""
    where = Path(where)
    scratch = where / f"machine-profile-{uuid.uuid4().hex[:8]}"
    scratch.mkdir(parents=True)
    size = min(nbytes, PROFILE_MAX_BYTES)
    mem, codec_bytes = min(MEMORY_BYTES, max(64 << 20, size)), min(CODEC_BYTES, max(4 << 20, size))
    n_small = SMALL_FILES if size >= 64 << 20 else 50
    say(f"machine profile: disk, page cache, memory, small files and codecs ({size / 1e9:.2f} GB writes, "
        f"{PROFILE_SAMPLES} samples each)")
    t0 = time.perf_counter()
    not_measured: dict[str, str] = {}
    try:
        fs = fsutil.filesystem_of(where)
        out: dict = {"cores": len(os.sched_getaffinity(0)), "page_bytes": PAGE,
                     "memory_bytes": psutil.virtual_memory().total,
                     "fs_type": fs["fstype"], "fs_device": fs["device"], "mount_options": mount_options(where),
                     "thp": thp_mode(), "bytes": size, "samples": PROFILE_SAMPLES, "memory_sample_bytes": mem,
                     "small_files": n_small, "codec_sample_bytes": codec_bytes,
                     "host_memory": hostmem.describe()}
        writes = durable_writes(scratch, size)
        out.update(durable_fresh_Bps=Rate.of(writes["fresh_Bps"]), durable_freed_Bps=Rate.of(writes["freed_Bps"]),
                   durable_sequence_Bps=tuple(writes["fresh_Bps"] + writes["freed_Bps"]))
        out["reference"] = reference(size, LocalDir(scratch / "reference"))
        sample = lambda fn, *args: Rate.of(fn(*args) for _ in range(PROFILE_SAMPLES))
        full = min(nbytes, int(psutil.virtual_memory().available * PAGECACHE_SHARE))
        out["pagecache_bytes"] = full
        out["buffered_write_Bps"] = sample(buffered_write, scratch, full)
        out.update(_direct(scratch, size, not_measured))
        out["memory_copy_1_Bps"] = sample(memory_copy, 1, mem)
        out["memory_copy_all_Bps"] = sample(memory_copy, out["cores"], mem)
        out["fresh_memory_Bps"] = sample(fresh_memory, False, mem)
        huge = [fresh_memory(True, mem) for _ in range(PROFILE_SAMPLES)]
        out["fresh_memory_huge_Bps"] = None if None in huge else Rate.of(huge)
        out["small_files_per_s"] = sample(small_files, scratch, n_small)
        apart = [files_apart(scratch, n_small) for _ in range(PROFILE_SAMPLES)]
        out["file_creates_per_s"] = Rate.of(a[0] for a in apart)
        out["fsyncs_per_s"] = Rate.of(a[1] for a in apart)
        data = _weights(codec_bytes)
        out["codecs_Bps"] = {name: sample(codec, name, data) for name in CODECS}
    finally:
        fsutil.remove(scratch)
    return MachineProfile(**out, not_measured=not_measured or None, profile_s=time.perf_counter() - t0)


def _direct(where: Path, nbytes: int, not_measured: dict[str, str]) -> dict:
    """The direct-I/O write and read rates as the profile's fields; where the file system refuses direct I/O,
    none, and why in ``not_measured``."""
    try:
        got = [direct_io(where, nbytes) for _ in range(PROFILE_SAMPLES)]
    except OSError as exc:
        why = f"direct I/O refused on {fsutil.filesystem_of(where)['fstype']}: {exc.strerror or exc}"
        not_measured.update(direct_write_Bps=why, direct_read_Bps=why)
        return {}
    return {"direct_write_Bps": Rate.of(g[0] for g in got), "direct_read_Bps": Rate.of(g[1] for g in got)}


def shared_profile(path: Path | None, where: Path, nbytes: int, say=lambda s: None) -> MachineProfile:
    """The run's profile: read from ``path`` (its JSON,
    :meth:`~llama_ckpt.results.profile.MachineProfile.to_dict`) when an
    earlier phase of the run measured it for as many bytes, else measured
    now (and written there)."""
    got = MachineProfile.read(path) if path is not None else None
    if got is not None and got.bytes == min(nbytes, PROFILE_MAX_BYTES):
        say(f"machine profile: measured earlier in this run ({path})")
        return got
    got = profile(where, nbytes, say)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(path).with_name(Path(path).name + f".tmp-{uuid.uuid4().hex[:8]}")
        tmp.write_text(json.dumps(got.to_dict()))
        os.replace(tmp, path)
    return got
