"""Recorders handed to the code they measure (never held in class attributes,
so that nothing silently records nothing)."""

from __future__ import annotations

import contextlib
import os
import resource
import threading
import time
from typing import Iterator



class Steps:
    """Where a save's time goes: ``with steps("commit"):`` adds the block's
    wall time to ``steps.seconds["commit"]``."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0


def high_water_mark() -> int:
    """This process's peak resident set size (``VmHWM``), in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def _parts(status: str) -> tuple[int, int]:
    anon = file = 0
    for line in status.splitlines():
        if line.startswith("RssAnon:"):
            anon = int(line.split()[1]) * 1024
        elif line.startswith(("RssFile:", "RssShmem:")):
            file += int(line.split()[1]) * 1024
    return anon, file


def rss_parts() -> tuple[int, int]:
    """This process's resident memory now, split: (anonymous, file-backed
    and shared), from ``RssAnon`` and ``RssFile`` + ``RssShmem``, in bytes."""
    with open("/proc/self/status") as f:
        return _parts(f.read())


@contextlib.contextmanager
def settled_objects() -> Iterator[None]:
    """While measuring, the objects that already exist (modules, the
    notebook's state, the source's specs) are left out of every garbage
    collection (``gc.freeze``): a full collection then walks only what the
    measurements made, instead of some 400,000 objects (0.2 s each time, a
    few times per measurement). They go back to the collector afterwards."""
    import gc

    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def release_memory() -> None:
    """Collect garbage and hand the allocator's free memory back to the
    system (glibc ``malloc_trim``), so that what earlier steps freed does not
    stay resident and count in the next step's peak."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MMAP_THRESHOLD = 1 << 20  # bytes: every allocation at least this large gets pages of its own, returned on free


def fix_mmap_threshold(nbytes: int = MMAP_THRESHOLD) -> bool:
    """Make every allocation of ``nbytes`` or more a mapping of its own,
    unmapped when freed (glibc ``mallopt(M_MMAP_THRESHOLD)``, which also turns
    off glibc's dynamic threshold). By default glibc raises the threshold to
    the size of each large block freed, so later buffers of that size come
    from the heap and stay resident after they are freed, in amounts that
    depend on what ran before (docs/decisions.md#mmap-threshold).
    Process-wide and for the rest of the process; False where
    the C library is not glibc."""
    import ctypes

    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, nbytes))
    except (OSError, AttributeError):
        return False


class _Sampler:
    """A file of /proc (``PATH``) read by ``_sample_once`` now, every
    ``INTERVAL`` seconds in a thread, and once more when sampling stops."""

    PATH = "/proc/self/status"
    INTERVAL = 0.005

    def _sample_once(self) -> None:
        raise NotImplementedError

    def _start_sampling(self) -> None:
        self._fd = os.open(self.PATH, os.O_RDONLY)
        self._stop = threading.Event()
        self._sample_once()
        self.sampler = threading.Thread(target=self._sample, daemon=True)
        self.sampler.start()

    def _sample(self) -> None:
        while not self._stop.wait(self.INTERVAL):
            self._sample_once()

    def _stop_sampling(self) -> None:
        self._stop.set()
        self.sampler.join()
        self._sample_once()
        os.close(self._fd)


class PeakRSS(_Sampler):
    """Peak resident set size of this process over a block of code: the
    kernel's high-water mark, reset on entry (where that reset is not
    allowed, the sampled peak); and, sampled every 5 ms, the peaks of its
    anonymous part (``peak_anon``: memory that must fit) and its file-backed
    part (``peak_file``: mapped files' pages in the page cache, which the
    kernel can drop). A part's peak held for less than a sample's interval
    can be missed; the whole peak cannot. ``base`` is the resident size on
    entry, ``above`` the peak above it."""

    def __enter__(self):
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.hwm = True
        except OSError:
            self.hwm = False
        self.peak = self.peak_anon = self.peak_file = self._sampled = 0
        self.reads = self.read_bytes = 0  # the sampler's own read calls, for CpuIO to leave out
        self.base = sum(rss_parts())  # resident on entry: the baseline the peak stands on
        self._start_sampling()
        return self

    def _sample_once(self):
        data = os.pread(self._fd, 1 << 16, 0)  # one read call per sample
        self.reads += 1
        self.read_bytes += len(data)
        anon, file = _parts(data.decode())
        self.peak_anon = max(self.peak_anon, anon)
        self.peak_file = max(self.peak_file, file)
        self._sampled = max(self._sampled, anon + file)

    def __exit__(self, *exc):
        self._stop_sampling()
        self.peak = max(high_water_mark(), self._sampled) if self.hwm else self._sampled
        return False

    @property
    def above(self) -> int:
        return max(0, self.peak - self.base)


class MachineMemory(_Sampler):
    """The machine's memory in use (``MemTotal - MemAvailable``) over a block
    of code, sampled every 5 ms: ``peak`` in bytes. It counts every process,
    so it sees what a process's own peak cannot: a forked writer's pages, the
    copies the kernel makes of pages a parent and child share, another
    process's staging copy."""

    PATH = "/proc/meminfo"

    def __enter__(self):
        self.peak = 0
        self._start_sampling()
        return self

    def _sample_once(self):
        total = avail = 0
        for line in os.pread(self._fd, 1 << 14, 0).decode().splitlines():
            if line.startswith("MemTotal:"):
                total = int(line.split()[1]) * 1024
            elif line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
        self.peak = max(self.peak, total - avail)

    def __exit__(self, *exc):
        self._stop_sampling()
        return False


def cpu_seconds() -> float:
    """User and system CPU seconds of this process (every thread) and of its
    children that have been waited for."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _proc_io() -> dict[str, int]:
    out = {}
    with open("/proc/self/io") as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = int(v)
    return out


_SYNCS = {"calls": 0}  # fsync/fdatasync calls made through Python's os module since the counter was installed
_SYNCS_LOCK = threading.Lock()


def count_syncs() -> None:
    """Count every ``os.fsync`` and ``os.fdatasync`` call of this process from now on (each wrapped once, for
    the rest of the process; code that bound the function before, or native code, is not counted)."""
    for name in ("fsync", "fdatasync"):
        real = getattr(os, name, None)
        if real is None or getattr(real, "counted", False):
            continue

        def counted(fd, _real=real):
            with _SYNCS_LOCK:
                _SYNCS["calls"] += 1
            return _real(fd)

        counted.counted = True
        counted.__doc__ = real.__doc__
        setattr(os, name, counted)


def sync_calls() -> int:
    """fsync/fdatasync calls made through Python's os module so far (since :func:`count_syncs`)."""
    return _SYNCS["calls"]


def huge_page_bytes() -> int | None:
    """This process's anonymous memory in transparent huge pages now (``AnonHugePages`` of
    ``/proc/self/smaps_rollup``, a walk of its page tables: outside any timer); None where the kernel does not say."""
    try:
        with open("/proc/self/smaps_rollup") as f:
            for line in f:
                if line.startswith("AnonHugePages:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def thread_cpu() -> dict[int, float]:
    """User and system CPU seconds of each thread of this process now, by thread id (``/proc/self/task/*/stat``,
    in the kernel's clock ticks); a thread that ended while it was read is left out."""
    tick, out = os.sysconf("SC_CLK_TCK"), {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        rest = stat[stat.rindex(")") + 2:].split()  # the name may hold spaces; fields 14 and 15 are utime, stime
        out[int(tid)] = (int(rest[11]) + int(rest[12])) / tick
    return out


class CpuIO:
    """The work of this process, all its threads, over a block of code:
    CPU seconds (user, system), page faults (minor: a page mapped without a
    read, such as fresh memory; major: a page read from storage), read/write
    system calls with their bytes (``/proc/self/io``: ``syscr``, ``rchar``,
    ``syscw``, ``wchar``), the bytes that went to and came from storage
    (``read_bytes``, ``write_bytes``: what the page cache did not absorb,
    including memory-mapped reads) and the fsync/fdatasync calls made through
    Python's os module (``fsync_calls``; a format's native code's are its
    ``native_fsyncs``), and the CPU seconds of its busiest thread
    (``busiest_thread_s``, of the threads alive at its end) with the count of
    those that used a clock tick or more (``busy_threads``) and the CPU
    seconds of the threads that ended inside the block (``ended_threads_s``:
    the total less the others'), and the anonymous memory in transparent huge
    pages at its end less at its start (``huge_page_bytes``, a net change that
    a step freeing an earlier step's huge pages makes negative: a load's
    result where the format asks for huge pages, whose faults are then one
    per huge page; None where the kernel does not say). ``result`` is the difference as a dict."""

    def __init__(self, sampler: "PeakRSS | None" = None):
        self.sampler = sampler  # a PeakRSS running around this block: its own reads are left out

    def _own(self) -> tuple[int, int]:
        return (self.sampler.reads, self.sampler.read_bytes) if self.sampler is not None else (0, 0)

    def __enter__(self):
        count_syncs()
        self._syncs = sync_calls()
        self._huge = huge_page_bytes()  # first: its page-table walk is outside every other count's window
        self._threads = thread_cpu()
        self._t, self._io, self._own0 = resource.getrusage(resource.RUSAGE_SELF), _proc_io(), self._own()
        return self

    def __exit__(self, *exc):
        own = self._own()  # before /proc/self/io, so that no sample falls between them uncounted
        t, io = resource.getrusage(resource.RUSAGE_SELF), _proc_io()
        used = [s - self._threads.get(tid, 0.0) for tid, s in thread_cpu().items()]
        used = [u for u in used if u > 0]
        own_calls, own_bytes = own[0] - self._own0[0], own[1] - self._own0[1]
        self.result = {"user_s": t.ru_utime - self._t.ru_utime, "sys_s": t.ru_stime - self._t.ru_stime,
                       "read_calls": io["syscr"] - self._io["syscr"] - own_calls,
                       "read_bytes": io["rchar"] - self._io["rchar"] - own_bytes,
                       "write_calls": io["syscw"] - self._io["syscw"],
                       "write_bytes": io["wchar"] - self._io["wchar"],
                       "minor_faults": t.ru_minflt - self._t.ru_minflt,
                       "major_faults": t.ru_majflt - self._t.ru_majflt,
                       "storage_read_bytes": io["read_bytes"] - self._io["read_bytes"],
                       "storage_write_bytes": io["write_bytes"] - self._io["write_bytes"],
                       "fsync_calls": sync_calls() - self._syncs,
                       "busiest_thread_s": max(used, default=0.0), "busy_threads": len(used)}
        cpu = self.result["user_s"] + self.result["sys_s"]
        self.result["ended_threads_s"] = max(0.0, cpu - sum(used))  # threads that ended inside the block
        huge = huge_page_bytes()
        self.result["huge_page_bytes"] = None if huge is None or self._huge is None else huge - self._huge
        return False


# A timed step is marked busy where, beside it, other processes (and the kernel's own threads) took more than
# BUSY_CORES of a core on average, or the hypervisor more than BUSY_STEAL of the cores' time (steal): a figure to
# read with care. Counted in cores, not as a share of them: one competing process matters as much on 16 cores as on 2.
BUSY_CORES, BUSY_STEAL = 0.5, 0.05
BUSY_MIN_S = 0.05  # below this much CPU time (5 of the kernel's 10 ms ticks) no step is marked: the counters' grain


def _machine_ticks() -> tuple[int, int]:
    """Every core's busy time (user, nice, system, irq, softirq) and steal time so far, in clock ticks
    (``/proc/stat``'s first line)."""
    with open("/proc/stat") as f:
        parts = f.readline().split()
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in parts[1:9])
    return user + nice + system + irq + softirq, steal


def _descendants_cpu() -> dict[int, float]:
    """CPU seconds so far of each live process this one started (and those they started), by pid, with
    the children each has waited for (a fork server's ranks, gone by the time the block ends)."""
    import psutil

    out = {}
    for p in psutil.Process().children(recursive=True):
        try:
            t = p.cpu_times()
            out[p.pid] = t.user + t.system + t.children_user + t.children_system
        except psutil.Error:  # gone meanwhile
            pass
    return out


class MachineBusy:
    """How busy the machine was beside this run over a block of code, from
    outside it: every core's busy CPU time (``/proc/stat``) less this
    process's, its children's it waited for, and its live descendants' (a
    writer process, a local S3 server): ``others_cpu_s``, other processes
    and the kernel's own threads (the writeback of this run's dirty pages
    among them); the time the hypervisor gave this machine's virtual cores
    to something else (``steal_s``); the block's wall time and the
    machine's cores. ``result`` is a dict; its ``busy`` is True where others
    took more than ``BUSY_CORES`` of a core on average or steal more than
    ``BUSY_STEAL`` of the cores' time (at least ``BUSY_MIN_S`` either way)."""

    def __enter__(self):
        self._kids = _descendants_cpu()
        self._ticks, self._own, self._t = _machine_ticks(), cpu_seconds(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        (busy, steal), own, wall = _machine_ticks(), cpu_seconds() - self._own, time.perf_counter() - self._t
        kids = _descendants_cpu()
        # a live descendant's CPU in the block, with the children it waited for; one gone since was waited for
        # by this process (in cpu_seconds) or a live descendant (in its count), its time before the block with it.
        # Assumed: the run reaps its own processes (one reparented to init is subtracted, never counted: others
        # read high, a busy mark in doubt's favour)
        own += sum(c - self._kids.get(pid, 0.0) for pid, c in kids.items()) - \
            sum(c for pid, c in self._kids.items() if pid not in kids)
        hz, cores = os.sysconf("SC_CLK_TCK"), os.cpu_count() or 1
        others = max(0.0, (busy - self._ticks[0]) / hz - own)
        stolen = (steal - self._ticks[1]) / hz
        marked = (others >= BUSY_MIN_S and others > BUSY_CORES * wall) or \
            (stolen >= BUSY_MIN_S and stolen > BUSY_STEAL * wall * cores)
        self.result = {"others_cpu_s": round(others, 3), "steal_s": round(stolen, 3), "wall_s": round(wall, 4),
                       "cores": cores, "busy": marked}
        return False
