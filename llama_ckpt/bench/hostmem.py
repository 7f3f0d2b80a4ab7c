"""The machine's free memory kept from its host while a run measures
(``--prepare hold-memory``).

A virtual machine whose kernel reports free memory to its host (free page
reporting through ``virtio_balloon``; the ``page_reporting`` module's
parameters in sysfs) hands the host every large block that stays free for a
moment. The host takes it back, and the next use of that memory faults it in
from the host again: on the machine this suite was built on, filling such
memory ran 18x slower than memory used before, and a page-cache write of the
model 5-7x slower (docs/decisions.md#host-memory). Whether a save or a load
meets such memory depends on how long the memory it gets sat free before it:
the moment, not the format.

Where the run may (root, and a kernel that takes the value), it raises
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
    kernel counts it); None where the kernel reports nothing to a host."""
    reporting = reporting or REPORTING
    order = _read_int(reporting / "page_reporting_order")
    if order is None:
        return None
    return {"order": order, "reported_kib": _read_int(reporting / "reported_kib")}


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


def touch(nbytes: int) -> float:
    """Write one byte into each page of ``nbytes`` of fresh anonymous memory, then free it; seconds taken. Memory
    the host had taken back is fetched again; freed, it stays the guest's while nothing reports it."""
    if nbytes <= 0:
        return 0.0
    t0 = time.perf_counter()
    buf = mmap.mmap(-1, nbytes)
    try:
        view = np.frombuffer(buf, dtype=np.uint8)
        view[::mmap.PAGESIZE] = 1
        del view
    finally:
        buf.close()
    return time.perf_counter() - t0


def hold_size() -> int:
    """The bytes a hold touches: what the machine has available less ``SPARE``."""
    return max(0, psutil.virtual_memory().available - SPARE)


def _state(directory: Path | None = None) -> Path:
    return Path(directory or fsutil.MACHINE_DIR) / STATE_NAME


def _holder(directory: Path | None = None) -> dict | None:
    """The state of a live hold by this process or an ancestor (the run this one is part of); None: no such."""
    try:
        left = json.loads(_state(directory).read_text())
    except (OSError, ValueError):
        return None
    pid = left.get("pid")
    mine = pid == os.getpid() or (pid in fsutil.ancestors() and psutil.pid_exists(pid))
    return left if mine else None


@contextlib.contextmanager
def held(say: Callable[[str], None], reporting: Path | None = None,
         buddyinfo: Path | None = None) -> Iterator[dict | None]:
    """Free memory kept from the host for the block, the memory available
    touched first (:func:`hold_size`). Yields the record:
    ``reporting_order_found``, ``reporting_order_set``, ``touched_bytes``,
    ``touch_s``; ``held_by`` (the pid of the run this one is part of) with
    the orders, where that run keeps the memory already; ``not_held`` with
    why (said); None where the kernel reports no free memory to a host."""
    reporting = reporting or REPORTING
    now = found(reporting)
    if now is None:
        yield None
        return
    outer = _holder()
    if outer is not None:  # kept already, and touched, by the run this one is part of
        yield {"held_by": outer["pid"], "reporting_order_found": outer["before"], "reporting_order_set": outer["set"]}
        return
    knob, off = reporting / "page_reporting_order", off_order(buddyinfo)
    if not os.access(knob, os.W_OK):
        why = (f"{knob} is not writable (not root): free memory is reported to the host as it comes, and a save "
               "or load meeting memory the host took back faults it in again, several times slower "
               "(docs/decisions.md#host-memory)")
        say(f"memory: {why}")
        yield {"not_held": why, "reporting_order_found": now["order"]}
        return
    state = fsutil.shared_dir(fsutil.MACHINE_DIR) / STATE_NAME
    state.write_text(json.dumps({"before": now["order"], "set": off, "knob": str(knob), "pid": os.getpid()}))
    with _sigterm_exits():
        try:
            try:
                knob.write_text(f"{off}\n")
            except OSError as exc:
                why = f"the kernel refused page_reporting_order {off} ({exc.strerror or exc})"
                say(f"memory: {why}: free memory is reported to the host as it comes")
                yield {"not_held": why, "reporting_order_found": now["order"]}
                return
            size = hold_size()
            took = touch(size)
            yield {"reporting_order_found": now["order"], "reporting_order_set": off, "touched_bytes": size,
                   "touch_s": round(took, 3), "reported_kib_before": now["reported_kib"]}
        finally:
            try:
                knob.write_text(f"{now['order']}\n")
                state.unlink(missing_ok=True)
            except OSError as exc:
                say(f"warning: page_reporting_order could not be put back to {now['order']} ({exc.strerror or exc}); "
                    f"write {now['order']} into {knob}")


def restore_left(say: Callable[[str], None], directory: Path | None = None) -> dict | None:
    """Put back the reporting order a run killed while holding the memory
    left (its state file in ``directory``, default ``fsutil.MACHINE_DIR``),
    where the knob still holds that run's value, saying what it did. A live
    holder's (this run's, an ancestor's, or one beside it) is left alone.
    Call it holding the machine lock. Returns the state found (None: none,
    or a live run's)."""
    path = _state(directory)
    try:
        left = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        say(f"memory: the state file {path} of an earlier run cannot be read ({exc}); nothing put back")
        path.unlink(missing_ok=True)
        return None
    if psutil.pid_exists(left.get("pid") or -1):
        return None  # a live run's hold
    knob = Path(left["knob"])
    try:
        if _read_int(knob) == left["set"]:
            knob.write_text(f"{left['before']}\n")
            did = f"put back page_reporting_order {left['before']}"
        else:
            did = "left page_reporting_order as it is (no longer that run's)"
        path.unlink(missing_ok=True)
    except OSError as exc:
        did = f"could not put back page_reporting_order {left['before']} ({exc.strerror or exc}; kept for the next run)"
    say(f"memory: run {left.get('pid')} ended without putting back the free memory it kept from the host; {did}")
    return left
