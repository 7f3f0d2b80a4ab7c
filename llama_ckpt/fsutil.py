"""File-system facts the measurement needs: durable writes, page-cache eviction
and residency, sizes on disk, free space."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import mmap
import os
import random
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import psutil

from .errors import UserError

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
_MAP_FAILED = ctypes.c_void_p(-1).value

# Residency is checked on at most this many files (all of them when there are
# fewer); a 64-element-chunk checkpoint of OpenLLaMA-3B has ~840k files.
RESIDENCY_SAMPLE_FILES = 2000
# Eviction counts as confirmed when at most this share of the sampled pages
# is still in the page cache.
RESIDENCY_CONFIRM_MAX = 0.01


def iter_files(path: Path) -> Iterator[Path]:
    """Every regular file under ``path`` (or ``path`` itself if it is a file);
    symbolic links are not followed."""
    return map(Path, _file_paths(Path(path)))


def _file_paths(path: Path) -> Iterator[str]:
    """The regular files under ``path``, their type taken from the directory
    listing (no stat per file), or ``path`` itself if it is a regular file."""
    if path.is_file() and not path.is_symlink():
        yield str(path)
        return
    stack = [str(path)]
    while stack:
        try:
            it = os.scandir(stack.pop())
        except OSError:  # gone meanwhile, or unreadable: skipped, as os.walk does
            continue
        with it:
            for entry in it:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    yield entry.path


@dataclass(frozen=True)
class Footprint:
    bytes_on_disk: int  # allocated blocks (st_blocks * 512)
    bytes_apparent: int  # sum of file sizes
    n_files: int  # regular files


def footprint(path: Path) -> Footprint:
    """What ``du --block-size=1`` / ``du --apparent-size`` / ``find -type f`` count
    for the files (directories' own blocks are not counted)."""
    on_disk = apparent = n = 0
    for f in _file_paths(Path(path)):
        st = os.stat(f, follow_symlinks=False)
        on_disk += st.st_blocks * 512
        apparent += st.st_size
        n += 1
    return Footprint(on_disk, apparent, n)


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> int:
    """fsync every file under ``path``, then every directory (their entries);
    returns the number of fsync calls."""
    n = 0
    dirs = {path}
    for f in iter_files(path):
        fsync_path(f)
        n += 1
        dirs.update(p for p in f.parents if p == path or path in p.parents)
    for d in sorted(dirs, key=lambda p: -len(p.parts)):
        fsync_path(d)
        n += 1
    return n


def evict(*paths: Path) -> None:
    """Drop every file under each of ``paths`` from the page cache: write back
    what is dirty (dirty pages cannot be dropped; one ``sync`` for all the
    files, as an fsync per file costs a system call each on a checkpoint of
    42,000 files), then POSIX_FADV_DONTNEED on each whole file."""
    os.sync()
    for f in (f for p in paths for f in _file_paths(Path(p))):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


# the kernel's knob; LLAMA_CKPT_DROP_CACHES points it elsewhere (the tests: a file, so that
# they never drop the caches of a benchmark running beside them)
DROP_CACHES = Path(os.environ.get("LLAMA_CKPT_DROP_CACHES", "/proc/sys/vm/drop_caches"))


def settle() -> bool:
    """Put the file system in the same state before every timed save: write
    back what is dirty, then drop the kernel's clean page and buffer cache
    (``drop_caches``, root only). Without it a save's time depends on the
    measurement before it: ext4 without a journal skips every inode deleted
    in the last 60 s (300 s more while its inode-table block is dirty), one
    buffer-cache lookup each, so a save of many small files right after many
    were removed is slower (docs/decisions.md#drop-caches). True where
    the caches were dropped; False where they could not be (not root, no
    procfs)."""
    os.sync()
    try:
        DROP_CACHES.write_text("1")
    except OSError:
        return False
    return True


# fstrim(8), or "off" (the tests: a save's disk state is not what they check, and trimming costs each save time)
FSTRIM = os.environ.get("LLAMA_CKPT_FSTRIM", "fstrim")


def trim(path: Path) -> bool:
    """Discard the free space of the file system holding ``path`` (``fstrim``
    on its mount point; root only), so that every save writes into space in
    the same state: on a virtual disk, writing to blocks freed a moment ago
    and to blocks the host has reclaimed can differ several fold in speed. True
    where it was trimmed; False where it cannot be (not root, no fstrim, a
    file system or device without discard)."""
    if FSTRIM == "off" or os.geteuid() != 0 or shutil.which(FSTRIM) is None:
        return False
    os.sync()  # blocks freed by a removal are free for fstrim once the journal has committed it
    mount = filesystem_of(path)["mount"]
    if mount is None:
        return False
    try:
        return subprocess.run([FSTRIM, mount], capture_output=True, timeout=600).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def resident_fraction_file(path: Path) -> tuple[int, int]:
    """(resident pages, total pages) of one file, from mincore(2)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            return 0, 0
        addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, _MAP_FAILED):
            raise OSError(ctypes.get_errno(), f"mmap failed on {path}")
        try:
            pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
            vec = (ctypes.c_ubyte * pages)()
            if _libc.mincore(addr, size, vec) != 0:
                raise OSError(ctypes.get_errno(), f"mincore failed on {path}")
            return sum(v & 1 for v in vec), pages
        finally:
            _libc.munmap(addr, size)
    finally:
        os.close(fd)


def resident_fraction(path: Path, sample: int = RESIDENCY_SAMPLE_FILES, seed: int = 0) -> float | None:
    """Share of the checkpoint's pages in the page cache, over all files or a
    seeded sample of ``sample`` files (the largest file always included).
    None where mincore is not available."""
    files = list(_file_paths(Path(path)))
    if not files:
        return 0.0
    if len(files) > sample:
        largest = max(files, key=lambda f: os.stat(f).st_size)
        files = random.Random(seed).sample(files, sample - 1) + [largest]
    resident = total = 0
    try:
        for f in files:
            r, t = resident_fraction_file(f)
            resident += r
            total += t
    except OSError as exc:
        if exc.errno in (errno.ENOSYS, errno.EPERM, errno.EACCES, errno.ENODEV):
            return None
        raise
    return resident / total if total else 0.0


def evict_and_confirm(path: Path) -> tuple[bool, float | None]:
    """Evict ``path`` and report (confirmed, resident fraction after)."""
    evict(path)
    frac = resident_fraction(path)
    return (frac is not None and frac <= RESIDENCY_CONFIRM_MAX), frac


def free_bytes(path: Path) -> int:
    """Free bytes for an unprivileged writer on the file system holding ``path``
    (or its nearest existing ancestor)."""
    p = Path(path).resolve()
    while not p.exists():
        p = p.parent
    return shutil.disk_usage(p).free


def block_size(path: Path) -> int:
    p = Path(path).resolve()
    while not p.exists():
        p = p.parent
    return os.statvfs(p).f_bsize


def filesystem_of(path: Path) -> dict:
    """Mount point, type and device of the file system holding ``path``, from
    /proc/mounts (longest matching mount point)."""
    p = str(Path(path).resolve())
    best = {"mount": None, "fstype": None, "device": None}
    try:
        with open("/proc/mounts") as f:
            for line in f:
                dev, mnt, fstype = line.split()[:3]
                if (p == mnt or p.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best["mount"] or ""):
                    best = {"mount": mnt, "fstype": fstype, "device": dev}
    except OSError:
        pass
    return best


MEMORY_FS = ("tmpfs", "ramfs")  # file systems whose files live in memory: no disk under them


def in_memory(path: Path) -> bool:
    """Whether ``path`` is on a file system held in memory (:data:`MEMORY_FS`): a load from it is never cold."""
    return filesystem_of(path)["fstype"] in MEMORY_FS


def remove(path: Path) -> None:
    """Remove a file or a directory tree if it exists."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


# The machine's own state, shared by every run on it: the machine lock and what a disk cap must put back.
# LLAMA_CKPT_MACHINE_DIR points it elsewhere (the tests: a directory of their own, so that they never wait for, or
# stop, a benchmark running beside them).
MACHINE_DIR = Path(os.environ.get("LLAMA_CKPT_MACHINE_DIR", "/tmp/llama_ckpt-machine"))
LOCK_NAME = "run.lock"


def shared_dir(directory: Path) -> Path:
    """``directory``, made where missing, writable by every user of the machine (sticky, as /tmp): its files are
    the machine's, whoever ran first."""
    if not directory.is_dir():
        directory.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            directory.chmod(0o1777)
    return directory


def ancestors() -> set[int]:
    try:
        return {p.pid for p in psutil.Process().parents()}
    except psutil.Error:
        return set()


def _holder(fd: int) -> tuple[int | None, str]:
    """The pid and the output directory a lock file names."""
    pid, _, where = os.pread(fd, 4096, 0).decode(errors="replace").partition("\n")
    try:
        return int(pid), where.strip()
    except ValueError:
        return None, where.strip()


@contextlib.contextmanager
def machine_lock(what: Path, directory: Path | None = None):
    """Hold the machine's lock while a run measures (``what``: its output
    directory, named to a run that finds the lock held): two runs on one
    machine would measure each other's I/O, and one could lift the other's
    disk cap, so a second run refuses, naming the first. This process, or
    one whose ancestor holds the lock (the suite's notebook kernels), shares
    it. ``directory``: where the lock is (default ``MACHINE_DIR``)."""
    directory = shared_dir(Path(directory or MACHINE_DIR))
    path = directory / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise UserError(f"cannot take the machine's lock {path}: {exc.strerror or exc}") from None
    with contextlib.suppress(OSError):
        os.fchmod(fd, 0o666)  # every user's runs take the same lock (only its creator can change its mode)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder, where = _holder(fd)
            if holder is not None and (holder == os.getpid() or holder in ancestors()):
                yield
                return
            raise UserError(f"this machine is in use by another run (pid {holder}, writing to {where or 'unknown'}): "
                            "two runs at once measure each other's I/O; wait for it to finish "
                            f"(lock: {path})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n{Path(what).resolve()}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def check_writable(out: Path) -> None:
    """``out`` can be created and written, or one clear error."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        with open(probe, "w") as f:
            f.write("x")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"output directory {out} cannot be written: {exc.strerror or exc}") from None
