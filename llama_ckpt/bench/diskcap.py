"""The disk capped by the kernel's I/O controller, so a run can be measured
in a second state of the same machine: its disk at a stated rate.

The cap is cgroup v1's ``blkio`` throttle on the root cgroup
(``blkio.throttle.read_bps_device`` / ``write_bps_device``) for the whole
block device that holds the checkpoints. On the root cgroup it covers every
process, the kernel's writeback of the page cache included, so a buffered
write that is fsynced later is capped too. It needs root and a v1 ``blkio``
hierarchy; cgroup v2's ``io.max`` cannot be set on the root cgroup, and a
child cgroup does not hold the kernel's writeback, so it is not used. Where
the cap cannot be set, the run stops with one line saying why. The values
the device had before are put back when the block ends: normally, on an
error, on Ctrl-C or on SIGTERM (turned into an exit while the cap is held).
A SIGKILL leaves the cap set; so before the cap is written, the values
found are kept in a state file (``fsutil.MACHINE_DIR``), removed once they
are back, and the next run on the machine, capped or not, puts them back
(:func:`restore_left`) where the throttle still holds the killed run's cap.
Every run reads the throttle of its checkpoints' disk at its start
(:func:`found`), so a run on a disk capped by someone else says so.
Why this controller: docs/decisions.md#disk-cap
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Iterator

import psutil

from .. import fsutil
from ..errors import UserError

BLKIO = Path("/sys/fs/cgroup/blkio")
FILES = ("blkio.throttle.read_bps_device", "blkio.throttle.write_bps_device")
SYS_BLOCK = Path("/sys/dev/block")
STATE_NAME = "diskcap.json"  # in fsutil.MACHINE_DIR while a cap is set: what to put back


def _state(directory: Path | None = None) -> Path:
    return Path(directory or fsutil.MACHINE_DIR) / STATE_NAME


def device_of(path: Path, sys_block: Path | None = None) -> str:
    """``MAJOR:MINOR`` of the whole block device holding ``path`` (a partition's disk)."""
    sys_block = sys_block or SYS_BLOCK
    while not path.exists() and path != path.parent:  # a directory not made yet: the disk it will be on
        path = path.parent
    st = os.stat(path)
    dev = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    node = sys_block / dev
    if not node.exists():
        raise UserError(f"cannot cap the disk of {path}: its file system is on no block device ({dev}: not in "
                        f"{sys_block}; tmpfs, overlay or a network file system)")
    if (node / "partition").exists():  # the throttle takes the whole disk: the partition's parent
        dev = (node.resolve().parent / "dev").read_text().strip()
    return dev


def _value(text: str, dev: str) -> int:
    """The throttle's bytes per second for ``dev`` in a throttle file's text (0: none)."""
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == dev:
            return int(parts[1])
    return 0


@contextlib.contextmanager
def capped(path: Path, bps: int, root: Path | None = None, sys_block: Path | None = None) -> Iterator[dict]:
    """The disk holding ``path`` read and written at most ``bps`` bytes per
    second for the block; yields what was set (``device``, ``bps``, the
    values before). ``root``, ``sys_block``: where the throttle files and
    the block devices are (default ``BLKIO``, ``SYS_BLOCK``)."""
    root = root or BLKIO
    if bps < 1:
        raise UserError(f"--disk-cap must be a positive rate, got {bps} bytes/s")
    dev = device_of(Path(path), sys_block)
    files = [root / f for f in FILES]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise UserError(f"cannot cap the disk: no cgroup v1 blkio throttle here ({missing[0]} is missing; cgroup "
                        "v2's io.max cannot cap the root cgroup, where the kernel's writeback runs)")
    if not all(os.access(f, os.W_OK) for f in files):
        raise UserError(f"cannot cap the disk: {files[0]} is not writable (run as root)")
    before = [_value(f.read_text(), dev) for f in files]
    state = fsutil.shared_dir(fsutil.MACHINE_DIR) / STATE_NAME
    state.write_text(json.dumps({"device": dev, "bps": bps, "before_bps": before, "files": [str(f) for f in files],
                                 "pid": os.getpid()}))
    with _sigterm_exits():
        try:
            for f in files:
                try:
                    f.write_text(f"{dev} {bps}\n")
                except OSError as exc:
                    raise UserError(f"cannot cap the disk {dev}: the kernel refused {f.name} "
                                    f"({exc.strerror or exc})") from None
            yield {"device": dev, "bps": bps, "before_bps": before}
        finally:
            failed = []
            for f, b in zip(files, before):
                try:
                    f.write_text(f"{dev} {b}\n")  # 0 removes the rule
                except OSError as exc:
                    failed.append(f"{f}: {exc}")
            if failed:
                print(f"warning: the disk cap of {dev} could not be put back ({'; '.join(failed)}); write "
                      f"'{dev} 0' into each file to lift it", file=sys.stderr)
            else:
                state.unlink(missing_ok=True)


def restore_left(say, directory: Path | None = None) -> dict | None:
    """Put back the throttle a run killed while capping left (its state file,
    ``directory``: default ``fsutil.MACHINE_DIR``), where each throttle file
    still holds that run's cap (one changed since is left as it is), saying
    what it did. The state file goes once nothing is left to put back; one
    written by this process or a live ancestor (a run whose children share
    its machine lock) is that run's own cap, and is left alone. Call it
    holding the machine lock. Returns the state found (None: none, or a live
    run's)."""
    path = _state(directory)
    try:
        left = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        say(f"disk cap: the state file {path} of an earlier run cannot be read ({exc}); nothing put back")
        _forget(path, say)
        return None
    if left.get("pid") == os.getpid() or (left.get("pid") in fsutil.ancestors() and psutil.pid_exists(left["pid"])):
        return None  # the cap of the run this one is part of
    dev, put, kept, failed = left["device"], [], [], []
    for f, b in zip(map(Path, left["files"]), left["before_bps"]):
        try:
            if _value(f.read_text(), dev) == left["bps"]:
                f.write_text(f"{dev} {b}\n")
                put.append(f"{f.name} {b / 1e6:,.0f} MB/s" if b else f"{f.name} none")
            else:
                kept.append(f.name)
        except OSError as exc:
            failed.append(f"{f.name} ({exc.strerror or exc})")
    say(f"disk cap: run {left.get('pid')} ended without lifting its cap of {left['bps'] / 1e6:,.0f} MB/s on {dev}; "
        + (f"put back what it found: {', '.join(put)}" if put else "nothing put back")
        + (f"; left as it is (no longer that cap): {', '.join(kept)}" if kept else "")
        + (f"; could not put back (kept for the next run): {', '.join(failed)}" if failed else ""))
    if not failed:
        _forget(path, say)
    return left


def _forget(path: Path, say) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        say(f"disk cap: the state file {path} cannot be removed ({exc.strerror or exc})")


def found(path: Path, root: Path | None = None, sys_block: Path | None = None) -> dict | None:
    """The throttle on the disk holding ``path`` now: ``device``, ``read_bps``
    and ``write_bps`` (0: none); None where it cannot be read (no block
    device, no cgroup v1 blkio)."""
    root = root or BLKIO
    try:
        dev = device_of(Path(path), sys_block)
        read, write = (_value((root / f).read_text(), dev) for f in FILES)
    except (UserError, OSError):
        return None
    return {"device": dev, "read_bps": read, "write_bps": write}


@contextlib.contextmanager
def _sigterm_exits() -> Iterator[None]:
    """SIGTERM raises SystemExit for the block (so ``finally`` clauses run), then the handler before comes back;
    nothing changes off the main thread, where handlers cannot be set."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise SystemExit(128 + signum)
    before = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)
