"""The machine's free memory kept from its host while a run measures
(``--prepare hold-memory``).

A virtual machine whose kernel reports free memory to its host (free page
reporting through ``virtio_balloon``; the ``page_reporting`` module's
parameters in sysfs) hands the host every large block that stays free for a
moment. The host takes it back, and the next use of that memory faults it in
from the host again: on the machine this suite was built on, filling such
memory ran 18x slower than memory used before, and the write calls of a
page-cache write of the model took about 5x the system CPU
(docs/decisions.md#host-memory). Whether a save or a load
meets such memory depends on how long the memory it gets sat free before it:
the moment, not the format.

Where the run may (root, and a kernel that takes the value: recent
mainline kernels refuse an order above their largest, so there the run says
it cannot and measures anyway), it raises
``page_reporting_order`` above the largest free block the kernel keeps (the
orders of ``/proc/buddyinfo``), so that no free block is reported, then
touches every page of the memory available once, less ``SPARE`` (fetching
back what the host had taken: which free pages a later allocation gets is
the kernel's choice, so touching only what the run will use is not enough),
and puts the order back when it ends: normally, on an error, on Ctrl-C or on
SIGTERM. A SIGKILL leaves it set; so before the order is
written, the one found is kept in a state file (``fsutil.MACHINE_DIR``) and
the next run puts it back (:func:`restore_left`) where the order is still
the killed run's. A run inside one that holds the memory (a suite phase
under the runner) finds it held and leaves it to its holder.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import psutil

from .. import fsutil
from .diskcap import _sigterm_exits

# the kernel's parameters; LLAMA_CKPT_PAGE_REPORTING points them elsewhere (the tests: a directory of their own)
REPORTING = Path(os.environ.get("LLAMA_CKPT_PAGE_REPORTING", "/sys/module/page_reporting/parameters"))
BUDDYINFO = Path("/proc/buddyinfo")
BALLOON = Path("/sys/bus/virtio/drivers/virtio_balloon")  # its bound devices: virtio0, ...
STATE_NAME = "hostmem.json"  # in fsutil.MACHINE_DIR while the order is raised: what to put back
SPARE = 1 << 30  # memory left untouched beside the run's (the rest of the machine's, the page cache's growth)


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def found(reporting: Path | None = None) -> dict | None:
    """Free page reporting here: its ``order`` (blocks of 2**order pages and
    larger are reported) and ``reported_kib`` (reported since boot, where the
    kernel counts it); None where the kernel reports nothing to a host: no
    parameter, no balloon device bound to report to (bare metal with the
    module built in), or an order of -1 (none registered)."""
    reporting = reporting or REPORTING
    order = _read_int(reporting / "page_reporting_order")
    if order is None or order < 0 or not _balloon():
        return None
    return {"order": order, "reported_kib": _read_int(reporting / "reported_kib")}


def _balloon() -> bool:
    """Whether a virtio balloon device, the one free pages are reported through, is bound here."""
    try:
        return any(p.name.startswith("virtio") for p in BALLOON.iterdir())
    except OSError:
        return False


def describe(reporting: Path | None = None, buddyinfo: Path | None = None) -> dict | None:
    """What a measurement now meets: :func:`found` and ``held`` (no free block is reported: the order is above
    the largest block); None where the kernel reports no free memory to a host."""
    now = found(reporting)
    return None if now is None else dict(now, held=now["order"] >= off_order(buddyinfo))


def off_order(buddyinfo: Path | None = None) -> int:
    """An order no free block reaches: one above the largest the kernel keeps (``/proc/buddyinfo`` has a column
    per order, 0 up)."""
    try:
        first = (buddyinfo or BUDDYINFO).read_text().splitlines()[0].split()
        return len(first) - 4  # "Node 0, zone NAME" then one count per order
    except (OSError, IndexError):
        return 11  # orders 0-10: x86-64 and arm64 with 4 KiB pages


def touch(nbytes: int, step: int = 1 << 30) -> float:
    """Write one byte into each page of ``nbytes`` of fresh private anonymous memory, ``step`` bytes at a time
    (so that Ctrl-C and SIGTERM are served between steps), every step kept until the last is touched (a step freed
    early would hand its pages to the next, never reaching the rest), then free it all; seconds taken. Memory the
    host had taken back is fetched again; freed, it stays the guest's while nothing reports it."""
    t0 = time.perf_counter()
    kept: list[mmap.mmap] = []
    try:
        done = 0
        while done < nbytes:
            n = min(step, nbytes - done)
            kept.append(mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS))
            view = np.frombuffer(kept[-1], dtype=np.uint8)
            view[::mmap.PAGESIZE] = 1
            del view
            done += n
    finally:
        for buf in kept:
            buf.close()
    return time.perf_counter() - t0


def _cgroup_room() -> int | None:
    """Bytes this process's cgroup (v2) may still use under its ``memory.max``; None: no limit, or no cgroup v2."""
    try:
        rel = next(line.split(":", 2)[2] for line in Path("/proc/self/cgroup").read_text().splitlines()
                   if line.startswith("0::")).strip()
        here = Path("/sys/fs/cgroup") / rel.lstrip("/")
        limit = (here / "memory.max").read_text().strip()
        return None if limit == "max" else int(limit) - int((here / "memory.current").read_text())
    except (OSError, ValueError, StopIteration):
        return None


def hold_size() -> int:
    """The bytes a hold touches: what the machine has available (and its cgroup allows) less ``SPARE``."""
    room = psutil.virtual_memory().available
    cg = _cgroup_room()
    return max(0, min(room, cg if cg is not None else room) - SPARE)


def _set_order(knob: Path, order: int) -> None:
    knob.write_text(f"{order}\n")


def _state(directory: Path | None = None) -> Path:
    return Path(directory or fsutil.MACHINE_DIR) / STATE_NAME


def _read_state(path: Path) -> dict:
    """A state file's record, checked: written by this user, not writable by others, small integer orders, a pid."""
    st = path.lstat()
    if st.st_uid != os.geteuid() or st.st_mode & 0o022 or not os.path.isfile(path) or os.path.islink(path):
        raise ValueError(f"not this user's plain file, or writable by others (uid {st.st_uid}, "
                         f"mode {st.st_mode & 0o777:o})")
    left = json.loads(path.read_text())
    if not all(isinstance(left.get(k), int) and -1 <= left[k] <= 64 for k in ("before", "set")) \
            or not isinstance(left.get("pid"), int):
        raise ValueError(f"not a hold's record: {left}")
    return left


def _write_state(path: Path, record: dict) -> None:
    """``record`` into ``path`` (in a directory every user may write): a new file of this user's, renamed over
    whatever was there (a link too, never followed)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(record, f)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _started(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _own(left: dict) -> bool:
    """Whether a state names this process or a live ancestor (the run this one is part of), the very process
    (its start time too: a pid can be reused)."""
    pid = left["pid"]
    return (pid == os.getpid() or pid in fsutil.ancestors()) and _started(pid) == left.get("started")


def _holder(directory: Path | None = None) -> dict | None:
    """The state of a hold by this process or a live ancestor; None: no such."""
    try:
        left = _read_state(_state(directory))
    except (OSError, ValueError):
        return None
    return left if _own(left) else None


def _cannot_hold(knob: Path, state: Path, before: int, off: int) -> str | None:
    """Why this run cannot raise the order (None: it may, and its state file, for the next run to put ``before``
    back, is written)."""
    if not os.access(knob, os.W_OK):
        return f"{knob} is not writable (not root)"
    try:
        _write_state(state, {"before": before, "set": off, "pid": os.getpid(), "started": _started(os.getpid())})
    except OSError as exc:
        return f"its state file {state} cannot be written ({exc.strerror or exc})"
    return None


@contextlib.contextmanager
def held(say: Callable[[str], None], reporting: Path | None = None,
         buddyinfo: Path | None = None) -> Iterator[dict | None]:
    """Free memory kept from the host for the block, the memory available
    touched first (:func:`hold_size`). Yields the record:
    ``reporting_order_found``, ``reporting_order_set``, ``touched_bytes``,
    ``touch_s``; ``held_by`` (the pid of the run this one is part of) with
    the orders, where that run keeps the memory already; ``not_held`` with
    why (said); None where the kernel reports no free memory to a host.
    Take the machine lock first: an order a killed run left is put back
    here (:func:`restore_left`) before the one found is recorded."""
    reporting = reporting or REPORTING
    knob, off = reporting / "page_reporting_order", off_order(buddyinfo)
    outer = _holder()
    if outer is not None:  # kept already, and touched, by the run this one is part of
        yield {"held_by": outer["pid"], "reporting_order_found": outer["before"], "reporting_order_set": outer["set"]}
        return
    restore_left(say, reporting=reporting)
    now = found(reporting)
    if now is None or now["order"] >= off:  # nothing reported here, or no block large enough to be
        yield None
        return
    state = fsutil.shared_dir(fsutil.MACHINE_DIR) / STATE_NAME
    why = _cannot_hold(knob, state, now["order"], off)
    if why is None:
        with _sigterm_exits():
            written = False
            try:
                try:
                    written = True  # first: a signal after the write still puts the order back (harmless before)
                    _set_order(knob, off)
                except OSError as exc:
                    written = False
                    why = f"the kernel refused page_reporting_order {off} ({exc.strerror or exc})"
                if written:
                    size = hold_size()
                    took = touch(size)
                    yield {"reporting_order_found": now["order"], "reporting_order_set": off, "touched_bytes": size,
                           "touch_s": round(took, 3), "reported_kib_before": now["reported_kib"]}
            finally:
                if written:
                    try:
                        _set_order(knob, now["order"])
                    except OSError as exc:
                        say(f"warning: page_reporting_order could not be put back to {now['order']} "
                            f"({exc.strerror or exc}); write {now['order']} into {knob} (the next run tries again)")
                        written = None  # the state file stays, for the next run
                if written is not None:
                    with contextlib.suppress(OSError):
                        state.unlink(missing_ok=True)
        if why is None:
            return
    say(f"memory: {why}: free memory is reported to the VM's host as it comes, and work meeting memory the host "
        "took back fetches it again, several times slower (docs/decisions.md#host-memory)")
    yield {"not_held": why, "reporting_order_found": now["order"]}


def restore_left(say: Callable[[str], None], directory: Path | None = None,
                 reporting: Path | None = None) -> dict | None:
    """Put back the reporting order a run killed while holding the memory
    left (its state file in ``directory``, default ``fsutil.MACHINE_DIR``),
    where the knob (always ``reporting``'s, never a path from the file)
    still holds that run's value, saying what it did. This run's own hold,
    or a live ancestor's, is left alone; any other is a leftover, as only
    the machine lock's holder holds the memory. Call it holding the
    machine lock. Returns the state found (None: none, or this run's)."""
    path = _state(directory)
    knob = (reporting or REPORTING) / "page_reporting_order"
    if not path.exists():
        return None
    try:
        left = _read_state(path)
    except (OSError, ValueError) as exc:
        say(f"memory: the state file {path} of an earlier run is not used ({exc}); nothing put back")
        with contextlib.suppress(OSError):
            path.unlink()
        return None
    if _own(left):
        return None
    try:
        if _read_int(knob) == left["set"]:
            _set_order(knob, left["before"])
            did = f"put back page_reporting_order {left['before']}"
        else:
            did = "left page_reporting_order as it is (no longer that run's)"
        path.unlink(missing_ok=True)
    except OSError as exc:
        did = f"could not put back page_reporting_order {left['before']} ({exc.strerror or exc}; kept for the next run)"
    say(f"memory: run {left.get('pid')} ended without putting back the free memory it kept from the host; {did}")
    return left
