"""The run scaffold every driver shares: the single-process and sharded
protocol (:mod:`.measure`), the back-to-back saves (:mod:`.sustained`) and
both training loops (:mod:`.training`).

What a run does before, around and after its measurements, in one place:

- its options (:class:`RunOptions`, the base of each driver's own);
- what it does to the machine outside its own files (:func:`hold_machine`,
  :class:`Prepared`): one run at a time per machine (the machine lock); a
  disk cap a killed run left put back; the throttle found on the disk read
  and recorded; then, each an option, announced once at the start and
  recorded: dropping the page cache of the whole machine before each save
  (``drop-caches``), discarding the free space of the checkpoints' file
  system (``trim``), keeping a VM's free memory from its host while the run
  lasts (``hold-memory``, :mod:`.hostmem`), capping the disk
  (``disk_cap_Bps``);
- the up-front checks: free disk (:func:`check_disk`), memory
  (:func:`check_memory`, :func:`memory_skips`);
- the environment record with the machine profile (:func:`environment`);
- the results file and each row's progress line (:class:`RunLog`,
  :func:`row_line`);
- stale saves removed and libraries warmed up (:func:`remove_stale_saves`,
  :func:`warm_up`);
- the state each timed save starts from (:meth:`Prepared.start_state`), and
  one timed load with its check (:func:`timed_load`);
- the order of the measurements (:func:`plan`, :func:`order_seed`).
"""

from __future__ import annotations

import contextlib
import errno
import gc
import os
import random
import sys
import time
import zlib
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import psutil
from tqdm import tqdm

from .. import fsutil
from ..digests import check
from ..errors import FAILURES, UserError
from ..formats.base import Format
from ..model import ModelSource
from ..recorders import CpuIO, MachineBusy, PeakRSS
from ..results import ResultsWriter, environment_record
from ..store import Location
from ..store.s3 import request_total
from . import cluster, diskcap, hostmem, machine, probes

DISK_HEADROOM = 256 << 20  # free space left on the output file system beyond the estimate
RANK_OVERHEAD = 500 << 20  # a rank's interpreter, torch and TensorStore, measured ~0.4 GB here
# What a run may do to the machine outside its own files, each before every isolated save (``--prepare``):
# "drop-caches": write back what is dirty and drop the page cache of the whole machine (root only);
# "trim": discard the free space of the checkpoints' file system (fstrim, root only);
# "hold-memory", for the whole run: keep the machine's free memory from its host, the run's touched once (hostmem).
PREPARE = ("drop-caches", "trim", "hold-memory")
DEFAULT_PREPARE = ("drop-caches", "hold-memory")  # why: docs/decisions.md#prepare, #host-memory


def new_run_id() -> str:
    return datetime.now().strftime("%Y%m%d-%H%M%S")


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def parse_prepare(text: str | tuple | list) -> tuple[str, ...]:
    """``--prepare``'s value (``drop-caches,trim``, ``none``) as a tuple; an unknown item is refused."""
    items = [x.strip() for x in (text.split(",") if isinstance(text, str) else text) if x.strip()]
    if items == ["none"]:
        return ()
    if "none" in items:
        raise UserError(f"--prepare: none means nothing, so it stands alone; got {','.join(items)}")
    if bad := [x for x in items if x not in PREPARE]:
        raise UserError(f"--prepare: no such preparation {', '.join(bad)}; the preparations: "
                        f"{', '.join(PREPARE)}, or none")
    return tuple(x for x in PREPARE if x in items)


@dataclass(kw_only=True)
class RunOptions:
    """What every driver's run takes (the drivers' own options extend it)."""

    out: Path  # the run's directory: results/, and its environment record's file system
    repeats: int = 3  # timed cycles (checkpoints) per approach or saver
    keep: bool = False  # keep each approach's last checkpoint
    results: Path | None = None  # results file; default <out>/results/<run_id>.jsonl
    run_id: str | None = None
    phase: str | None = None  # the suite's phase measuring (its slug, in every row)
    progress: bool | None = None  # tqdm bars; default: only on a terminal
    disk_reference: bool = True  # profile the machine (on a local disk; on S3: the storage reference) first
    profile: Path | None = None  # the run's machine profile, shared by its phases: read if there, else written
    prepare: tuple[str, ...] = DEFAULT_PREPARE  # what the run may do to the machine (PREPARE)
    disk_cap_Bps: int | None = None  # the checkpoints' disk capped at this rate for the run and its profile

    def results_path(self, run_id: str) -> Path:
        return Path(self.results) if self.results else Path(self.out) / "results" / f"{run_id}.jsonl"


# -- the machine: what a run does to it ---------------------------------------------------------------------
@dataclass(frozen=True)
class Prepared:
    """What this run does to the machine, decided at its start."""

    drop_caches: bool  # before each save: dirty pages written back, the whole machine's page cache dropped
    trim: bool | None  # ... the free space of its file system discarded (None: not a local disk, or a job of ranks)
    disk_cap_Bps: int | None  # the checkpoints' disk capped by this run at this rate
    throttle: dict | None  # the disk's throttle found at the start, before this run's cap (diskcap.found)
    launched: Any = None  # a launched job (cluster.Group): the drop is done on every node
    # free memory kept from the VM's host (hostmem.held's record), or, not asked for, what the run met
    # (hostmem.describe); None: the kernel reports no free memory to a host
    host_memory: dict | None = None

    def record(self) -> dict:
        """The environment record's fields."""
        return {"drop_caches": self.drop_caches, "trim": self.trim, "disk_cap_Bps": self.disk_cap_Bps,
                "disk_throttle_found": self.throttle, "host_memory": self.host_memory}

    def throttle_Bps(self) -> int | None:
        """The rate the checkpoints' disk is throttled at while the run measures (its own cap, or one it found);
        None: none, or unknown."""
        if self.disk_cap_Bps:
            return self.disk_cap_Bps
        t = self.throttle or {}
        rates = [x for x in (t.get("read_bps"), t.get("write_bps")) if x]
        return min(rates) if rates else None

    def start_state(self, loc: Location, trim: bool = True) -> dict:
        """Set the state a timed save starts from (``trim``: the free space
        too, where the run trims) and return the row's record of it."""
        here = loc.local_file() if self.launched is None else None
        trimmed = (fsutil.trim(here.parent) if self.trim and trim else False) if here is not None else None
        if not self.drop_caches:  # what is dirty is written back all the same: the save's fsync is its own
            os.sync()
            dropped = False
        else:
            dropped = cluster.settle(self.launched) if self.launched is not None else fsutil.settle()
        return {"free_space_trimmed": trimmed, "caches_dropped": dropped, "disk_throttle_Bps": self.throttle_Bps()}

    def announcement(self, where: Path | None) -> list[str]:
        """What the run does outside its own files, one line each, said once at its start."""
        out = []
        if self.drop_caches:
            out.append("before each save this run writes back every dirty page and drops the page cache of the "
                       "whole machine (/proc/sys/vm/drop_caches; --prepare without drop-caches turns it off)")
        if self.trim:
            out.append(f"before each isolated save this run discards the free space of the file system holding "
                       f"{where} (fstrim; --prepare without trim turns it off)")
        if self.disk_cap_Bps:
            out.append(f"this run caps the disk {self.throttle['device'] if self.throttle else ''} at "
                       f"{self.disk_cap_Bps / 1e6:,.0f} MB/s, read and write, for every process (cgroup v1 blkio "
                       "throttle), and puts back what it found when it ends")
        elif self.throttle_Bps():
            out.append(f"the checkpoints' disk {self.throttle['device']} is throttled at "
                       f"{self.throttle_Bps() / 1e6:,.0f} MB/s by a cap this run did not set (blkio): every row "
                       "records it (disk_throttle_Bps)")
        mem = self.host_memory or {}
        if "held_by" in mem:
            out.append(f"the machine's free memory is kept from its host by the run this one is part of (pid "
                       f"{mem['held_by']}, page_reporting_order {mem['reporting_order_set']})")
        elif "touched_bytes" in mem:
            out.append(f"this run keeps the machine's free memory from its host (page_reporting_order "
                       f"{mem['reporting_order_found']} -> {mem['reporting_order_set']}; it touched the "
                       f"{mem['touched_bytes'] / 1e9:.1f} GB available once, in {mem['touch_s']:.1f} s), and puts "
                       "the order back when it ends (--prepare without hold-memory turns it off)")
        return out or ["this run changes nothing on the machine outside its own files (no cache drop, no trim, "
                       "no disk cap, no memory held)"]


_said: set[str] = set()  # lines about the machine said in this process: each once (a suite phase runs many runs)


def say_once(say: Callable[[str], None], line: str) -> None:
    if line not in _said:
        _said.add(line)
        say(line)


NOTHING = Prepared(drop_caches=False, trim=None, disk_cap_Bps=None, throttle=None)  # a protocol called on its own


def _can_drop(wanted: bool, say) -> bool:
    if not wanted:
        return False
    if os.access(fsutil.DROP_CACHES, os.W_OK):
        return True
    say_once(say, f"caches: {fsutil.DROP_CACHES} is not writable (not root), so saves do not start from dropped "
        "caches: on ext4 without a journal, saving many files soon after removing others is slower (fsutil.settle)")
    return False


def _can_trim(wanted: bool, here: Path | None, say) -> bool | None:
    if here is None:  # an object store: no disk state of ours to set
        return None
    if not wanted:
        return False
    here.mkdir(parents=True, exist_ok=True)
    if fsutil.trim(here):
        return True
    say_once(say, f"disk state: the free space of {here}'s file system cannot be discarded here (fstrim: not root, not "
        "installed, or not supported), so each save writes into whatever state the last removal left the disk in")
    return False


@contextlib.contextmanager
def hold_machine(opts: RunOptions, checkpoints: Path | None, say: Callable[[str], None],
                 launched: Any = None, trims: bool = True) -> Iterator[Prepared]:
    """The machine held for a run writing its checkpoints under
    ``checkpoints`` (None: not a local disk): the machine lock taken; a disk
    cap or a memory hold a killed run left put back; the disk's throttle
    read; what the run will do to the machine (``opts.prepare``,
    ``opts.disk_cap_Bps``; ``trims``: False where the driver never trims)
    decided, set, said once and yielded. The cap is lifted, the
    memory given back to the host's reporting and the lock let go however
    the block ends."""
    if opts.disk_cap_Bps and checkpoints is None:
        raise UserError("--disk-cap caps a local disk; the checkpoints go to S3 here")
    with fsutil.machine_lock(opts.out):
        diskcap.restore_left(say)
        hostmem.restore_left(say)
        throttle = diskcap.found(checkpoints) if checkpoints is not None else None
        prepared = Prepared(drop_caches=_can_drop("drop-caches" in opts.prepare, say),
                            trim=_can_trim(trims and "trim" in opts.prepare, checkpoints, say)
                            if checkpoints is not None and launched is None else None,
                            disk_cap_Bps=opts.disk_cap_Bps, throttle=throttle, launched=launched)
        capping = diskcap.capped(checkpoints, opts.disk_cap_Bps) if opts.disk_cap_Bps else contextlib.nullcontext()
        # not held: what the run meets is recorded (a launched job's ranks are held by no one here)
        holding = (hostmem.held(lambda line: say_once(say, line))
                   if "hold-memory" in opts.prepare and launched is None else
                   contextlib.nullcontext(hostmem.describe()))
        with capping, holding as host:
            prepared = replace(prepared, host_memory=host)
            for line in prepared.announcement(checkpoints):
                say_once(say, line)
            yield prepared


# -- up-front checks ----------------------------------------------------------------------------------------
def check_free(need: int, where: Path, what: str) -> None:
    """``need`` bytes (and ``DISK_HEADROOM``) free under ``where``, or one line naming ``what`` needs them."""
    free = fsutil.free_bytes(where)
    if need + DISK_HEADROOM > free:
        total = need + DISK_HEADROOM
        raise UserError(f"not enough free disk in {where}: needs {total:,} bytes ({total / 1e9:.2f} GB, {what}), "
                        f"{free:,} bytes ({free / 1e9:.2f} GB) free")


def disk_needed(approaches: list[Format], source: ModelSource, out: Path, reference_too: bool) -> dict[str, int]:
    """Bytes each approach's checkpoint is estimated to occupy (chunk files
    rounded up to the file system's block size), and the machine profile's
    files (``disk reference``: its durable writes kept side by side)."""
    block = fsutil.block_size(out)
    return {a.name: a.estimate_bytes(source.specs, block) for a in approaches} | (
        {"disk reference": machine.DURABLE_FRESH * -(-min(source.nbytes, machine.PROFILE_MAX_BYTES) // block) * block}
        if reference_too else {})


def check_disk(approaches: list[Format], source: ModelSource, out: Path, keep: bool, reference_too: bool) -> dict:
    """The disk each approach needs (:func:`disk_needed`), or one line where
    the largest (with ``keep``: every kept checkpoint) does not fit."""
    need = disk_needed(approaches, source, out, reference_too)
    if not need:
        return need
    # Without keep, one checkpoint exists at a time (the short reference before a round, when none does); with
    # it, every approach's last one stays, and the reference beside them.
    block = fsutil.block_size(out)
    ref = -(-min(probes.ROUND_REFERENCE_BYTES, source.nbytes) // block) * block
    kept = sum(v for k, v in need.items() if k != "disk reference") + ref if keep else 0
    biggest = max(need, key=need.get)
    check_free(max(kept, need[biggest], ref), out,
               "every kept checkpoint" if keep and kept >= need[biggest]
               else f"largest: {biggest} {need[biggest] / 1e9:.2f} GB")
    return need


def check_memory(source: ModelSource, world: int, on_this_node: int | None = None) -> None:
    """Every rank holds its rows (drawn in blocks of ``DRAW_ROWS`` rows, so a
    block beyond them at most at each end) and starts its own interpreter and
    torch; ``on_this_node`` of the ``world`` ranks run here (default: all)."""
    here = world if on_this_node is None else on_this_node
    need = here * (1.2 * source.nbytes / world + RANK_OVERHEAD)
    if need > psutil.virtual_memory().available:
        raise UserError(f"{source.name} on {here} rank(s) of this node needs about {need / 1e9:.1f} GB of memory; "
                        f"{psutil.virtual_memory().available / 1e9:.1f} GB available")


def memory_skips(approaches: list[Format], source: ModelSource, held: int = 0,
                 checkpoint: dict[str, int] | None = None) -> dict[str, str]:
    """The approaches whose estimated peak (``Format.peak_estimate``, on top
    of this process's own memory now and ``held`` bytes more it will hold
    beside the save, and, where the checkpoints live in memory, the
    approach's own ``checkpoint`` bytes) exceeds the memory available, each
    with the reason: skipped up front rather than killed by the kernel mid-save."""
    available = psutil.virtual_memory().available + psutil.Process().memory_info().rss
    base = psutil.Process().memory_info().rss + held
    out = {}
    for a in approaches:
        need = a.peak_estimate(source.nbytes) + base + (checkpoint or {}).get(a.name, 0)
        if need > available:
            out[a.name] = (f"its estimated peak memory, {need / 1e9:.1f} GB ({need / source.nbytes:.2f}x the "
                           f"{source.nbytes / 1e9:.1f} GB model with this process"
                           f"{' and its checkpoint, held in memory' if checkpoint else ''}), exceeds the "
                           f"{available / 1e9:.1f} GB this machine has available")
    return out


def admit(approaches: list[Format], source: ModelSource, root: Location, keep: bool, reference_too: bool,
          say) -> tuple[list, dict | None, dict]:
    """The approaches this run can measure at ``root``: those that can target
    it (an object store: not the formats that need local files) and fit in
    memory; the skipped ones with why (None: none could be skipped), and the
    disk each needs (checked up front where the storage is local)."""
    storage_skips, need = None, {}
    if root.local_file() is None:  # an object store: formats that need local files are skipped
        storage_skips = {a.name: a.s3_unsupported for a in approaches if a.s3_unsupported}
        for name, why in storage_skips.items():
            say(f"skipped {name}: it cannot target S3 ({why})")
        approaches = [a for a in approaches if not a.s3_unsupported]
        if not approaches:
            raise UserError("none of the chosen approaches can target S3; see `python -m llama_ckpt list`")
    else:
        need = check_disk(approaches, source, root.local_file(), keep, reference_too)
    skipped = storage_skips
    if not approaches[0].sharded:
        in_memory = root.local_file() is not None and fsutil.in_memory(root.local_file())
        too_big = memory_skips(approaches, source, checkpoint=need if in_memory else None)
        for name, why in too_big.items():
            say(f"skipped {name}: {why}")
        if too_big:
            skipped = {**(skipped or {}), **too_big}
            approaches = [a for a in approaches if a.name not in too_big]
            if not approaches:
                raise UserError(f"none of the chosen approaches fits in this machine's memory with {source.name}: "
                                + "; ".join(f"{n}: {w}" for n, w in too_big.items()))
    return approaches, skipped, need


# -- the record ------------------------------------------------------------------------------------------------
def run_profile(opts: RunOptions, scratch: Path, nbytes: int, say) -> Any:
    """The run's machine profile (:func:`machine.shared_profile`: read where
    a phase before measured it, else measured in ``scratch``); None where
    the run takes none (``disk_reference`` off)."""
    if not opts.disk_reference:
        return None
    scratch.mkdir(parents=True, exist_ok=True)
    return machine.shared_profile(opts.profile, scratch, nbytes, say)


def environment(run_id: str, out: Path, prepared: Prepared, profile: Any = None, reference: dict | None = None,
                **fields) -> dict:
    """The run's environment record: versions, machine, file system, git
    commit (:func:`environment_record`), what the run does to the machine,
    the machine profile (with its disk reference's figures at the top level,
    as the comparison table reads them) or, on S3, the storage reference."""
    ref = dict(profile.reference, machine=profile.to_dict()) if profile is not None else (reference or {})
    return environment_record(run_id, out, **fields, **prepared.record(), **ref)


class RunLog:
    """A run's results file: records appended as they come, rows also passed
    to ``on_row``, and the ``end`` record (complete or not) last."""

    def __init__(self, path: Path, run_id: str, n_planned: int, on_row: Callable[[dict], None]):
        self.path, self.run_id, self.n_planned, self.on_row = Path(path), run_id, n_planned, on_row
        self.writer = ResultsWriter(self.path)
        self.rows: list[dict] = []

    def write(self, record: dict) -> None:
        self.writer.write(record)

    def add(self, row: dict) -> None:
        self.writer.write(row)
        self.rows.append(row)
        self.on_row(row)

    def end(self, complete: bool, **why) -> None:
        self.writer.write({"record": "end", "run_id": self.run_id, "complete": complete, "n_rows": len(self.rows),
                           "n_valid": sum(bool(r.get("verified")) for r in self.rows), "n_planned": self.n_planned,
                           "finished_at": now(), **why})


def row_line(r: dict, where: str = "", detail: bool = False) -> str:
    """A row's progress line, whichever driver measured it: ``  approach #k<where>: ...`` with its figures (a
    training row: its loop, blocking and durable times; with ``detail``, a measurement's size, files, requests,
    memory and ranks too), or its error; marked where the machine was busy beside it."""
    head = f"  {r['loop'] + ': ' if r.get('loop') else ''}{r['approach']} #{r['repeat']}{where}"
    busy = " (machine busy beside it)" if any((r.get(k) or {}).get("busy") for k in BUSY_FIELDS) else ""
    if r.get("error"):
        return f"{head}: ERROR {r['error']}"
    if r.get("record") == "training":
        return (f"{head} at step {r['step']}: blocked {r['blocking_s']:.3f} s, durable {r['durable_s']:.2f} s, "
                f"{len(r['steps_inflight_s'])} step(s) with it in flight{busy}")
    if not detail:
        return f"{head}: save {r['save_s']:.2f} s, load {r['load_s']:.2f} s{busy}"
    return f"{head}: {_measured(r)}{busy}" + (_ranks(r) if r.get("ranks_save") else "")


def _measured(r: dict) -> str:
    cold = " (from memory)" if r.get("medium") == "memory" else \
        {True: "", False: " (warm: eviction not confirmed)", None: " (server cache not evicted)"}[r["load_cold"]]
    on_s3 = r.get("requests_save") is not None
    load_reqs = request_total(r["requests_load"]) if r.get("requests_load") is not None else "uncounted"
    reqs = f"  requests {request_total(r['requests_save'])}/{load_reqs}" if on_s3 else ""
    return (f"save {r['save_s']:8.2f} s  load {r['load_s']:8.2f} s{cold}  {r['bytes_on_disk'] / 1e6:10.1f} MB"
            f"  {r['n_files']:>7} {'objects' if on_s3 else 'files'}{reqs}"
            f"  peak RSS {r['peak_rss_save_bytes'] / 1e9:.2f}/{r['peak_rss_load_bytes'] / 1e9:.2f} GB"
            f"  {'verified' if r['verified'] else 'NOT VERIFIED'}"
            + (f" (max abs err {r['max_abs_err']:.2e})" if r.get("max_abs_err") else ""))


def _ranks(r: dict) -> str:
    ws = ", ".join(f"{x['write_s']:.2f}" for x in r["ranks_save"] if x.get("write_s") is not None)
    rs = ", ".join(f"{x['read_s']:.2f}" for x in r.get("ranks_load") or [] if x.get("read_s") is not None)
    agg = r["bytes_on_disk"] / r["save_s"] / 1e6 if r.get("save_s") and r.get("bytes_on_disk") else None
    nodes = f" on {r['nodes']} node(s) x {r['ranks_per_node']}" if r.get("launcher") == "torchrun" else ""
    return (f"\n    {r['world_size']} -> {r['load_world_size']} ranks{nodes}; per-rank write s [{ws}], read s [{rs}]"
            + (f"; aggregate {agg:.0f} MB/s" if agg else ""))


BUSY_FIELDS = ("busy_save", "busy_load", "busy")  # the rows' MachineBusy records


# -- around the measurements ------------------------------------------------------------------------------------
def remove_stale_saves(where: Location, say) -> None:
    """Remove the temporaries interrupted saves left under ``where``, saying so."""
    for st in where.stale_saves():
        st.remove()
        say(f"removed the stale temporary of an interrupted save: {st}")


def warm_up(name: str, prepare: Callable[[Location], None], scratch: Location, say) -> None:
    """``prepare(scratch)``: a library's first-use set-up, outside every
    timing; a failure is said (the measurement's row will say what is wrong),
    and ``scratch`` is removed either way."""
    try:
        prepare(scratch)
    except FAILURES as exc:
        say(f"warm-up of {name} failed: {describe_error(exc, scratch)}")
    finally:
        try:
            scratch.remove()
        except FAILURES:
            pass


def describe_error(exc: BaseException, where) -> str:
    """A failure in one line: a full disk named as such, else the exception's type and first line."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or "No space left" in str(exc):
        return f"disk full while writing {where}: {text}"
    return f"{type(exc).__name__}: {text}"


def bar(enabled: bool | None, total: int, desc: str):
    """A progress bar over tensors on stderr (``enabled`` None: only on a terminal)."""
    on = sys.stderr.isatty() if enabled is None else enabled
    return tqdm(total=total, desc=desc, unit="tensor", leave=False, disable=not on, file=sys.stderr)


@dataclass
class Loaded:
    """One timed load and its check."""

    seconds: float
    verdict: Any  # digests.Verdict
    cold: bool | None  # the eviction before it confirmed (None: not asked, or unknown)
    resident: float | None  # the share of the checkpoint still in the page cache after the eviction
    rss: PeakRSS
    work: dict  # CpuIO's counts
    busy: dict  # MachineBusy's record
    requests: Any


def checked(load: Callable[[], dict], expected: dict):
    """``load()``'s tensors checked against ``expected`` digests, then freed: the verdict."""
    loaded = load()
    verdict = check(loaded, expected)
    del loaded
    gc.collect()
    return verdict


def timed_load(load: Callable[[], dict], loc: Location, expected: dict, cold: bool = True) -> Loaded:
    """``load()`` of the checkpoint at ``loc`` timed until every tensor is in
    memory (with ``cold``: after the checkpoint was evicted from the caches
    and the eviction checked; on a file system held in memory there is
    nothing to evict and the load is from memory: ``cold`` None), with its
    peak memory, counted work, requests and how busy the machine was; then,
    outside the timer, every tensor checked against ``expected``."""
    cold = cold and loc.row_fields().get("medium") != "memory"
    was_cold, frac = loc.evict() if cold else (None, None)
    with PeakRSS() as rss, CpuIO(rss) as work, MachineBusy() as busy, loc.count_requests() as req:
        t0 = time.perf_counter()
        loaded = load()
        seconds = time.perf_counter() - t0
    verdict = check(loaded, expected)
    del loaded
    gc.collect()
    return Loaded(seconds, verdict, was_cold, frac, rss, work.result, busy.result, req)


# -- the order of the measurements ----------------------------------------------------------------------------------
def plan(approaches: list, repeats_of: Callable[[str], int], done: dict[str, int] | None = None,
         interleave: bool = True, shuffle: bool = True, seed: int = 0) -> list[tuple]:
    """(approach, repeat) in measuring order: round k of every approach, then
    round k+1 (interleaved), or each approach's repeats back to back. With
    ``shuffle`` each round's order is drawn at random from ``seed`` and the
    round's number (no approach always runs first after the caches are
    dropped, or right after the costliest one). An approach with repeats
    already measured in this run (``done``) gets the rest, numbered after
    them; the approaches that need the most start first, so every round
    interleaves all that are still measured."""
    done = done or {}
    need = {a.name: max(0, repeats_of(a.name) - done.get(a.name, 0)) for a in approaches}
    if not interleave:
        return [(a, k) for a in approaches for k in range(done.get(a.name, 0) + 1, repeats_of(a.name) + 1)]
    most = max(need.values(), default=0)
    out = []
    for r in range(most):
        round_ = [(a, done.get(a.name, 0) + j) for a in approaches if (j := r - (most - need[a.name]) + 1) >= 1]
        if shuffle:  # by the round's repeat number: a later call for more repeats draws new orders
            random.Random(f"{seed}:{max(k for _a, k in round_)}").shuffle(round_)
        out += round_
    return out


def order_seed(run_id: str, *parts) -> int:
    """A seed of the rounds' order drawn from the run id and what tells its runs apart (the phase, the ranks)."""
    return zlib.crc32(":".join(map(str, (run_id, *parts))).encode())
