"""The timing protocol: one function for one approach, single-process or on
ranks, and the run that measures many.

For each repeat, every approach in turn (interleaved, so that drift of the
shared machine hits every approach alike; each round in a seeded random
order, recorded; ``interleave=False`` runs each approach's repeats back to
back), after the machine profile (``bench.machine``; on S3 the storage
reference, ``REFERENCE_SAMPLES`` times):

0. write back what is dirty and drop the kernel's caches (root only,
   ``fsutil.settle``), so that no save inherits the file-system state the
   measurement before it left;
1. build a fresh float32 source (outside the timer; a small one is a copy
   of the source kept for the run, ``model.KeptSource``; on ranks each rank
   builds its own rows);
2. time the save from the call until its bytes are durable (each format
   fsyncs what it writes; a float16 approach's cast is inside the timer),
   including the suite's atomic commit (manifest, commit marker, publish: a
   few small fsyncs) but not the digests, recorded before the timer;
3. free the source, evict the checkpoint from the caches and confirm it
   with mincore (outside the timer);
4. time the load until every tensor is materialised in memory;
5. after the timer, check every tensor against the digests recorded before
   the first save; a mismatch makes the row invalid;
6. with ``warm``, load again from the page cache, timed and checked alike.

Peak resident memory is reset before each save and load (Linux's
``clear_refs``) and read from ``VmHWM`` after. Before anything is written the
free disk is checked against each approach's estimated footprint. A failure
inside one approach becomes an ``error`` row, its partial checkpoint is
removed, and the next approach runs.
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
from typing import Any, Callable

import psutil
from tqdm import tqdm

from .. import checkpoint, fsutil
from ..digests import check, expected_digests
from ..errors import FAILURES, UserError
from ..formats.base import Format
from ..model import DRAW, KeptSource, ModelSource, PresetModel, tensor_kind
from ..recorders import MMAP_THRESHOLD, CpuIO, PeakRSS, Steps, fix_mmap_threshold, release_memory, \
    settled_objects
from ..results import ResultsWriter, environment_record, measurement_row, sustained_row
from ..store import LocalDir, Location, at
from . import cluster, diskcap, machine, ranks
from .probes import REFERENCE_SAMPLES, reference

DISK_HEADROOM = 256 << 20  # free space left on the output file system beyond the estimate
RANK_OVERHEAD = 500 << 20  # a rank's interpreter, torch and TensorStore, measured ~0.4 GB here


_said = {"no drop": False, "no trim": False}


def can_trim(root: Location, say: Callable[[str], None]) -> bool | None:
    """Whether saves can start from the free space discarded (fsutil.trim); where not, says so once per process."""
    here = root.local_file()
    if here is None:  # an object store: no disk state of ours to set
        return None
    here.mkdir(parents=True, exist_ok=True)
    can = fsutil.trim(here)
    if not can and not _said["no trim"]:
        _said["no trim"] = True
        say(f"disk state: the free space of {here}'s file system cannot be discarded here (fstrim: not root, not "
            "installed, turned off, or not supported), so each save writes into whatever state the last removal "
            "left the disk in")
    return can


def can_drop_caches(say: Callable[[str], None]) -> bool:
    """Whether saves can start from dropped caches (fsutil.settle); where not,
    says so once per process (a suite run measures per phase and round)."""
    can = os.access(fsutil.DROP_CACHES, os.W_OK)
    if not can and not _said["no drop"]:
        _said["no drop"] = True
        say(f"caches: {fsutil.DROP_CACHES} is not writable (not root), so saves do not start from dropped caches: "
            "on ext4 without a journal, saving many files soon after removing others is slower (fsutil.settle)")
    return can


def new_run_id() -> str:
    return datetime.now().strftime("%Y%m%d-%H%M%S")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class Options:
    out: Path  # where checkpoints/ and results/ go
    repeats: int = 3  # timed save+load cycles per approach
    keep: bool = False  # keep each approach's last checkpoint
    warm: bool = False  # also time a warm (page-cached) load
    results: Path | None = None  # results file; default <out>/results/<run_id>.jsonl
    run_id: str | None = None
    progress: bool | None = None  # tqdm bars; default: only on a terminal
    disk_reference: bool = True  # profile the machine (on a local disk; on S3: the storage reference) first
    profile: Path | None = None  # the run's machine profile, shared by its phases: read if there, else written
    interleave: bool = True  # repeat k of every approach before repeat k+1 of any, so drift hits all alike
    shuffle: bool = True  # each round in its own seeded random order, so that no approach always goes first
    order_seed: int | None = None  # the rounds' seed; default: drawn from the run id and the phase (recorded)
    checkpoints: Location | Path | None = None  # the run's checkpoints; default <storage>/<run_id>
    storage: Location | None = None  # where runs' checkpoints live; default <out>/checkpoints (an S3 prefix...)
    lock: Path | None = None  # the directory whose lock the run holds; default out
    world_size: int | None = None  # sharded approaches: ranks saving
    load_world_size: int | None = None  # ranks loading (default: world_size)
    group: Any = None  # a launched job (bench.cluster.Group): its ranks save and load; this is rank 0
    phase: str | None = None  # the suite's phase measuring (its slug, in every row)
    done: dict[str, int] | None = None  # repeats of an approach already measured in this run (shared): it gets the rest
    deadline: float | None = None  # time.perf_counter() after which no new measurement starts (the rest is skipped)
    fewer: dict[str, int] | None = None  # approaches measured fewer than ``repeats`` times (a sweep's costly points)
    trim: bool = True  # discard the free space before each save (fsutil.trim); the run turns it off where it cannot
    sustained: tuple[str, ...] = ()  # approaches also saved back to back (measure_sustained), after the rounds
    sustained_saves: int = 5  # checkpoints in a row each (fewer where the disk cannot hold them together)
    disk_cap_Bps: int | None = None  # the checkpoints' disk capped at this rate for the run and its profile (diskcap)

    def repeats_of(self, name: str) -> int:
        """How many repeats of ``name`` the run holds when complete."""
        return min(self.repeats, (self.fewer or {}).get(name, self.repeats))


# -- up-front checks -----------------------------------------------------------------
def disk_needed(approaches: list[Format], source: ModelSource, out: Path, reference_too: bool) -> dict[str, int]:
    """Bytes each approach's checkpoint is estimated to occupy (chunk files
    rounded up to the file system's block size), and the machine profile's
    files (``disk reference``: its durable writes kept side by side)."""
    block = fsutil.block_size(out)
    return {a.name: a.estimate_bytes(source.specs, block) for a in approaches} | (
        {"disk reference": machine.DURABLE_FRESH * -(-min(source.nbytes, machine.PROFILE_MAX_BYTES) // block) * block}
        if reference_too else {})


def check_disk(approaches: list[Format], source: ModelSource, out: Path, keep: bool, reference_too: bool) -> dict:
    need = disk_needed(approaches, source, out, reference_too)
    if not need:
        return need
    # Without keep, one checkpoint exists at a time; with it, every approach's last one stays.
    total = (sum(v for k, v in need.items() if k != "disk reference") if keep else 0)
    total = max(total, max(need.values())) + DISK_HEADROOM
    free = fsutil.free_bytes(out)
    if total > free:
        biggest = max(need, key=need.get)
        raise UserError(
            f"not enough free disk in {out}: needs {total:,} bytes ({total / 1e9:.2f} GB"
            + (", every kept checkpoint" if keep else f", largest: {biggest} {need[biggest] / 1e9:.2f} GB")
            + f"), {free:,} bytes ({free / 1e9:.2f} GB) free")
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


def memory_skips(approaches: list[Format], source: ModelSource, held: int = 0) -> dict[str, str]:
    """The approaches whose estimated peak (``Format.peak_estimate``, on top
    of this process's own memory now and ``held`` bytes more it will hold
    beside the save) exceeds the memory available, each with the reason:
    skipped up front rather than killed by the kernel mid-save."""
    available = psutil.virtual_memory().available + psutil.Process().memory_info().rss
    base = psutil.Process().memory_info().rss + held
    out = {}
    for a in approaches:
        need = a.peak_estimate(source.nbytes) + base
        if need > available:
            out[a.name] = (f"its estimated peak memory, {need / 1e9:.1f} GB ({need / source.nbytes:.2f}x the "
                           f"{source.nbytes / 1e9:.1f} GB model with this process), exceeds the "
                           f"{available / 1e9:.1f} GB this machine has available")
    return out


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
        say(f"warm-up of {name} failed: {_describe_error(exc, scratch)}")
    finally:
        try:
            scratch.remove()
        except FAILURES:
            pass


def _describe_error(exc: BaseException, where) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or "No space left" in str(exc):
        return f"disk full while writing {where}: {text}"
    return f"{type(exc).__name__}: {text}"


def _bar(enabled: bool, total: int, desc: str):
    return tqdm(total=total, desc=desc, unit="tensor", leave=False, disable=not enabled, file=sys.stderr)


# -- one approach, one repeat ------------------------------------------------------------
def _by_kind(approach: Format, source: ModelSource, loc: Location, verdict) -> dict[str, dict]:
    """Per tensor kind: the data's bytes as stored before compression
    (``payload_bytes``), the bytes its files take (``bytes_apparent``, where
    the format keeps a directory per tensor) and the cast's error."""
    out: dict[str, dict] = {}
    for sp in source.specs:
        k = out.setdefault(tensor_kind(sp.name), {"n_tensors": 0, "payload_bytes": 0, "bytes_apparent": 0})
        k["n_tensors"] += 1
        k["payload_bytes"] += approach.payload_bytes(sp)
        sub = approach.tensor_sub(sp.name)
        if sub is None or k["bytes_apparent"] is None:
            k["bytes_apparent"] = None
        else:
            k["bytes_apparent"] += loc.footprint(sub).bytes_apparent
    for kind, errs in verdict.by_kind.items():
        out.setdefault(kind, {}).update(errs)
    return out


def measure_approach(approach: Format, source: ModelSource, expected: dict | None, loc: Location, repeat: int,
                     run_id: str, opts: Options) -> dict:
    """One save + cold load (+ warm load) of one approach at ``loc``: one
    result row. ``expected`` holds the source's digests per stored dtype
    (single-process); sharded approaches check each rank's slice in the rank."""
    world = opts.world_size if approach.sharded else None
    load_world = (opts.load_world_size or world) if approach.sharded else None
    base = dict(run_id=run_id, approach=approach.name, model=source.name, weights=source.weights, phase=opts.phase,
                path=str(loc), **loc.row_fields(),
                knobs=approach.knobs(), n_tensors=len(source.specs), n_params=source.n_params,
                tensor_set=source.tensor_set_digest(), repeat=repeat,
                stored_dtype=str(approach.stored_dtype).removeprefix("torch."),
                source_dtype=",".join(sorted({str(s.dtype).removeprefix("torch.") for s in source.specs})),
                world_size=world, load_world_size=load_world,
                write_streams=None if approach.sharded else approach.write_streams())
    stage = "save"
    try:
        loc.remove()  # each repeat saves into a fresh location
        base.update(_start_state(loc, opts))
        if approach.sharded and opts.group is not None:
            saves, loads, *rest = cluster.sharded(opts.group, sharded_job(approach, source, loc), loc)
            return measurement_row(**base, **sharded_fields(saves, loads, *rest, source.nbytes, "torchrun"),
                                   finished_at=_now())
        if approach.sharded:
            return measurement_row(**base, **_sharded(approach, source, loc, world, load_world), finished_at=_now())
        return measurement_row(**base, **_single(approach, source, expected, loc, repeat, opts), finished_at=_now())
    except (KeyboardInterrupt, SystemExit):
        loc.remove()
        raise
    except _StageFailed as failed:
        stage, exc = failed.stage, failed.exc
    except FAILURES as exc_:  # one approach failing must not stop the others
        exc = exc_
    gc.collect()
    try:
        loc.remove()
    except FAILURES:  # the store went away: the error row says why
        pass  # a partial checkpoint is never kept or measured
    return measurement_row(**base, verified=False, error=f"{stage} failed: {_describe_error(exc, loc)}",
                           finished_at=_now())


def _start_state(loc: Location, opts: Options) -> dict:
    """The state every timed save starts from, set now: the free space of
    ``loc``'s file system discarded (root, a local disk, unless the run
    found it cannot), the file system written back and its caches dropped
    (root only; on every node of a launched job). Returns the row's record
    of both."""
    here = loc.local_file() if opts.group is None else None
    return {"free_space_trimmed": (fsutil.trim(here.parent) if opts.trim else False) if here is not None else None,
            "caches_dropped": cluster.settle(opts.group) if opts.group is not None else fsutil.settle()}


def measure_sustained(approach: Format, source: ModelSource, expected: dict, root: Location, n: int, run_id: str,
                      opts: Options) -> dict:
    """``n`` checkpoints of ``approach`` saved back to back, each to its own
    place, with nothing between them (no cache drop, no trim, no pause): the
    sustained rate beside the isolated saves of the rounds. The first starts
    from the same state as every isolated save (``_start_state``). One copy
    of the source is held through all of them, as a training run holds its
    state (an isolated save hands the save its only copy); only the saves
    are timed. Every checkpoint is then loaded and checked against the
    source; all are removed. One ``sustained`` record."""
    exp = expected[approach.stored_dtype]
    digests = {k: e.digest for k, e in exp.items()}
    locs = [root / f"{approach.name}-in-a-row-{i + 1}" for i in range(n)]
    base = dict(run_id=run_id, approach=approach.name, model=source.name, weights=source.weights, phase=opts.phase,
                knobs=approach.knobs(), n_saves=n)
    stage, k, saves = "save", 0, []
    try:
        for loc in locs:
            loc.remove()
        base.update(_start_state(locs[0], opts))
        sd = source.materialize()
        release_memory()
        for k, loc in enumerate(locs):
            t0 = time.perf_counter()
            approach.save(dict(sd), loc, digests=digests)  # a save empties the dict it is given, not the tensors
            saves.append(time.perf_counter() - t0)
        del sd
        release_memory()
        on_disk = sum(loc.footprint().bytes_on_disk for loc in locs)
        stage = "verify"
        for k, loc in enumerate(locs):
            loaded = approach.load(loc)
            verdict = check(loaded, exp)
            del loaded
            gc.collect()
            if not verdict.verified:
                return sustained_row(**base, saves_s=saves, bytes_on_disk=on_disk, verified=False,
                                     error=f"checkpoint {k + 1} of {n}: verification failed: {verdict.summary()}",
                                     finished_at=_now())
        return sustained_row(**base, saves_s=saves, bytes_on_disk=on_disk, verified=True, finished_at=_now())
    except (KeyboardInterrupt, SystemExit):
        raise
    except FAILURES as exc:
        return sustained_row(**base, saves_s=saves or None, verified=False,
                             error=f"{stage} of checkpoint {k + 1} of {n} failed: {_describe_error(exc, locs[k])}",
                             finished_at=_now())
    finally:
        gc.collect()
        for loc in locs:
            try:
                loc.remove()
            except FAILURES:
                pass  # the store went away: the record says why


def _sustained_all(approaches, source, expected, root: Location, run_id: str, opts: Options, log: "RunLog",
                   say) -> None:
    """``approaches`` back to back, each as many times in a row as the disk holds together (at most
    ``opts.sustained_saves``)."""
    local = root.local_file()
    for a in approaches:
        why = memory_skips([a], source, held=source.nbytes).get(a.name)  # the held copy beside a save's own peak
        if why:
            say(f"{a.name} back to back: skipped, holding the source beside its saves: {why}")
            continue
        n = opts.sustained_saves
        if local is not None:
            one = a.estimate_bytes(source.specs, fsutil.block_size(local.parent))
            n = min(n, max(0, (fsutil.free_bytes(local.parent) - DISK_HEADROOM) // max(one, 1)))
        if n < 2:
            say(f"{a.name} back to back: skipped, the disk cannot hold two of its checkpoints at once")
            continue
        rec = measure_sustained(a, source, expected, root, n, run_id, opts)
        log.write(rec)
        took = ", ".join(f"{x:.2f}" for x in rec["saves_s"] or [])
        say(f"  {a.name} back to back: " + (f"{n} saves in a row, {took} s; every one verified" if rec["verified"]
                                             else "ERROR " + rec["error"]))


class _StageFailed(Exception):
    def __init__(self, stage: str, exc: BaseException):
        super().__init__(str(exc))
        self.stage, self.exc = stage, exc


def _single(approach: Format, source: ModelSource, expected: dict, loc: Location, repeat: int, opts: Options) -> dict:
    progress = sys.stderr.isatty() if opts.progress is None else opts.progress
    exp = expected[approach.stored_dtype]
    digests = {k: e.digest for k, e in exp.items()}
    stage = "save"
    try:
        sd = source.materialize()
        release_memory()
        steps = Steps()
        with PeakRSS() as rss_save, CpuIO(rss_save) as cpu_save, \
                _bar(progress, len(sd), f"{approach.name} save #{repeat}") as bar, loc.count_requests() as req_save:
            t0 = time.perf_counter()
            approach.save(sd, loc, bar.update, digests=digests, steps=steps)
            save_s = time.perf_counter() - t0
        del sd
        release_memory()
        fp = loc.footprint()

        stage = "load"
        cold, frac = loc.evict()
        with PeakRSS() as rss_load, CpuIO(rss_load) as cpu_load, \
                _bar(progress, len(source.specs), f"{approach.name} load #{repeat}") as bar, \
                loc.count_requests() as req_load:
            t0 = time.perf_counter()
            loaded = approach.load(loc, bar.update)
            load_s = time.perf_counter() - t0
        verdict = check(loaded, exp)
        del loaded
        gc.collect()
        by_kind = _by_kind(approach, source, loc, verdict)

        warm_s = None
        if opts.warm and verdict.verified:
            stage = "warm load"
            t0 = time.perf_counter()
            loaded = approach.load(loc)
            warm_s = time.perf_counter() - t0
            warm_verdict = check(loaded, exp)
            del loaded
            gc.collect()
            if not warm_verdict.verified:
                verdict = warm_verdict
    except (KeyboardInterrupt, SystemExit):
        raise
    except FAILURES as exc:
        raise _StageFailed(stage, exc) from exc
    return dict(save_s=save_s, load_s=load_s, load_cold=cold, resident_after_evict=frac, load_warm_s=warm_s,
                bytes_on_disk=fp.bytes_on_disk, bytes_apparent=fp.bytes_apparent, n_files=fp.n_files,
                payload_bytes=sum(approach.payload_bytes(sp) for sp in source.specs), by_kind=by_kind,
                peak_rss_save_bytes=rss_save.peak, peak_rss_load_bytes=rss_load.peak,
                rss_before_save_bytes=rss_save.base, rss_before_load_bytes=rss_load.base,
                peak_rss_anon_save_bytes=rss_save.peak_anon, peak_rss_file_save_bytes=rss_save.peak_file,
                peak_rss_anon_load_bytes=rss_load.peak_anon, peak_rss_file_load_bytes=rss_load.peak_file,
                save_phases=steps.seconds, requests_save=req_save,
                requests_load=None if approach.own_s3_client else req_load,
                cpu_io_save=cpu_save.result, cpu_io_load=cpu_load.result,
                verified=verdict.verified, max_abs_err=verdict.max_abs_err, max_rel_err=verdict.max_rel_err,
                n_overflow=verdict.n_overflow, n_flushed=verdict.n_flushed,
                error=None if verdict.verified else f"verification failed: {verdict.summary()}")


def sharded_job(approach: Format, source: ModelSource, loc: Location) -> dict:
    """What every rank needs to save or load ``approach``'s checkpoint of ``source`` at ``loc``."""
    return dict(kind="save", approach={"approach": approach.name, "mechanism": approach.MECHANISM,
                                       "knobs": approach.knobs(), "world_size": None},
                specs=source.specs, seed=source.seed, model=source.name, final=loc)


def add_counts(*counts: dict | None) -> dict | None:
    """Counts of several processes added up (requests, work; None: none counted, such as requests off S3)."""
    if all(c is None for c in counts):
        return None
    out: dict[str, int] = {}
    for c in counts:
        for k, v in (c or {}).items():
            out[k] = out.get(k, 0) + v
    return out


def _sharded(approach: Format, source: ModelSource, loc: Location, world: int, load_world: int) -> dict:
    """A save on ``world`` ranks and a cold load on ``load_world`` ranks, spawned here."""
    job = sharded_job(approach, source, loc)
    staged = loc.stage()
    with loc.count_requests() as req_save:
        saves = ranks.launch(dict(job, staged=staged), world)
    errors = [r["error"] for r in saves if r.get("error")]
    if errors:  # no commit happened: what was staged goes
        loc.discard(staged)
        return dict(verified=False, ranks_save=saves, error="save failed: " + "; ".join(errors))
    fp = loc.footprint()
    cold, frac = loc.evict()
    with loc.count_requests() as req_load:
        loads = ranks.launch(dict(job, kind="load"), load_world)
    return sharded_fields(saves, loads, fp, cold, frac, req_save, req_load, source.nbytes, launcher="spawn")


def load_sharded(loc: Location, group=None, world: int | None = None) -> dict:
    """A cold load of the sharded checkpoint at ``loc`` on the ranks of a
    launched job (``group``) or on ``world`` ranks spawned here, whatever
    world size saved it; each rank checks its rows against the digests of
    the same rows of the source (the preset and seed in the manifest)."""
    man = checkpoint.read_manifest(loc)
    if "world_size" not in man:
        raise UserError(f"{loc}: saved by one process, not sharded; `python -m llama_ckpt verify` checks it")
    src = man.get("source")
    if not src:
        raise UserError(f"{loc}: the manifest does not name the model it was saved from (saved by an older "
                        "version): it cannot be checked against its source; `verify` checks its shards")
    if src.get("draw") != DRAW:
        raise UserError(f"{loc}: its source's weights were drawn another way (by an older version): it cannot be "
                        "checked against its source; `verify` checks its shards")
    source = PresetModel(src["model"], seed=src["seed"])
    job = dict(kind="load", approach={k: man[k] for k in ("approach", "mechanism", "knobs", "world_size")},
               specs=source.specs, seed=source.seed, model=source.name, final=loc)
    if group is not None:
        cold, frac = cluster.evict(group, loc)
        req = None  # rank 0 loads in this process: its requests are in its own report
        loads = cluster.ask(group, "job", job)
    else:
        cold, frac = loc.evict()
        with loc.count_requests() as req:
            loads = ranks.launch(job, world)
    errors, error = _load_verdict(loads)
    return dict(path=str(loc), approach=man["approach"], model=source.name, world_size=man["world_size"],
                load_world_size=len(loads), **{k: v for k, v in topology_fields(loads).items()},
                load_s=None if errors else max(r["checkpoint_s"] for r in loads), load_cold=cold,
                resident_after_evict=frac, requests_load=add_counts(req, *(r.get("requests") for r in loads)),
                ranks_load=[{k: r.get(k) for k in LOAD_KEYS} for r in loads],
                bytes=sum(r.get("bytes") or 0 for r in loads), verified=error is None, error=error)


def _load_verdict(loads: list[dict]) -> tuple[list[str], str | None]:
    """The ranks' load errors, and the row's error: a failed load, else rows that did not verify, else None."""
    errors = [r["error"] for r in loads if r.get("error")]
    unverified = [f"rank {r['rank']}: {', '.join(r.get('bad', []))}" for r in loads
                  if not r.get("error") and not r.get("verified")]
    return errors, (("load failed: " + "; ".join(errors)) if errors else
                    (f"verification failed: {'; '.join(unverified)}" if unverified else None))


SAVE_KEYS = ("rank", "node", "local_rank", "host", "write_s", "checkpoint_s", "bytes", "peak_rss_bytes",
             "peak_rss_anon_bytes", "peak_rss_file_bytes", "requests", "work")
LOAD_KEYS = ("rank", "node", "local_rank", "host", "read_s", "checkpoint_s", "bytes", "peak_rss_bytes",
             "peak_rss_anon_bytes", "peak_rss_file_bytes", "requests", "work",
             "verified")


def topology_fields(reports: list[dict]) -> dict:
    """Nodes, and ranks on each node, of one job's rank reports."""
    per_node: dict[int, int] = {}
    for r in reports:
        per_node[r.get("node", 0)] = per_node.get(r.get("node", 0), 0) + 1
    return {"nodes": len(per_node), "ranks_per_node": max(per_node.values()) if per_node else None}


def sharded_fields(saves: list[dict], loads: list[dict], fp, cold, frac, req_save, req_load, payload: int,
                   launcher: str) -> dict:
    """A sharded row's fields from the ranks' reports: the checkpoint time is
    the slowest rank's (each rank's own time is in ``ranks_save`` and
    ``ranks_load``), requests are every rank's plus this process's."""
    errors, error = _load_verdict(loads)
    topo_save, topo_load = topology_fields(saves), topology_fields(loads)
    return dict(
        save_s=max(r["checkpoint_s"] for r in saves),
        load_s=max((r.get("checkpoint_s") or 0) for r in loads) if not errors else None,
        load_cold=cold, resident_after_evict=frac, bytes_on_disk=fp.bytes_on_disk,
        bytes_apparent=fp.bytes_apparent, n_files=fp.n_files, payload_bytes=payload,
        peak_rss_save_bytes=max(r.get("peak_rss_bytes", 0) for r in saves),
        peak_rss_load_bytes=max((r.get("peak_rss_bytes") or 0) for r in loads),
        **{f"peak_rss_{part}_{step}_bytes": max((r.get(f"peak_rss_{part}_bytes") or 0) for r in rs)
           for part in ("anon", "file") for step, rs in (("save", saves), ("load", loads))},
        cpu_io_save=add_counts(*(r.get("work") for r in saves)),
        cpu_io_load=add_counts(*(r.get("work") for r in loads)),
        requests_save=add_counts(req_save, *(r.get("requests") for r in saves)),
        requests_load=add_counts(req_load, *(r.get("requests") for r in loads)),
        launcher=launcher, nodes=topo_save["nodes"], ranks_per_node=topo_save["ranks_per_node"],
        load_nodes=topo_load["nodes"], load_ranks_per_node=topo_load["ranks_per_node"],
        ranks_save=[{k: r.get(k) for k in SAVE_KEYS} for r in saves],
        ranks_load=[{k: r.get(k) for k in LOAD_KEYS} for r in loads],
        verified=error is None, error=error)


# -- a run -------------------------------------------------------------------------------
def plan(approaches: list, opts: Options, seed: int = 0) -> list[tuple]:
    """(approach, repeat) in measuring order: round k of every approach, then
    round k+1 (interleaved), or each approach's repeats back to back. With
    ``shuffle`` each round's order is drawn at random from ``seed`` and the
    round's number (no approach always runs first after the caches are
    dropped, or right after the costliest one). An approach with repeats
    already measured in this run (``opts.done``) gets the rest, numbered after
    them; the approaches that need the most start first, so every round
    interleaves all that are still measured."""
    done = opts.done or {}
    need = {a.name: max(0, opts.repeats_of(a.name) - done.get(a.name, 0)) for a in approaches}
    if not opts.interleave:
        return [(a, k) for a in approaches for k in range(done.get(a.name, 0) + 1, opts.repeats_of(a.name) + 1)]
    most = max(need.values(), default=0)
    out = []
    for r in range(most):
        round_ = [(a, done.get(a.name, 0) + j) for a in approaches if (j := r - (most - need[a.name]) + 1) >= 1]
        if opts.shuffle:  # by the round's repeat number: a later call for more repeats draws new orders
            random.Random(f"{seed}:{max(k for _a, k in round_)}").shuffle(round_)
        out += round_
    return out


def order_seed(run_id: str, opts: Options) -> int:
    """The seed of the rounds' order: ``opts.order_seed``, or one drawn from the run id, the phase and the ranks
    (each configuration of a sharded phase its own orders)."""
    if opts.order_seed is not None:
        return opts.order_seed
    return zlib.crc32(f"{run_id}:{opts.phase}:{opts.world_size}:{opts.load_world_size}:{opts.group is not None}"
                      .encode())


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
                           "finished_at": _now(), **why})


def run(approaches: list[Format], source: ModelSource, opts: Options,
        on_row: Callable[[dict], None] = lambda r: None, say: Callable[[str], None] = lambda s: None):
    """Measure every approach ``opts.repeats`` times; rows go to the results
    file as they finish and to ``on_row``. Returns (environment, rows).
    Sharded approaches (all or none of them) run on ``opts.world_size`` ranks."""
    if opts.repeats < 1:
        raise UserError(f"--repeats must be at least 1, got {opts.repeats}")
    sharded = {a.sharded for a in approaches}
    if len(sharded) > 1:
        raise UserError("sharded and single-process approaches cannot be measured in one run")
    if True in sharded:
        world, load_world = opts.world_size, opts.load_world_size or opts.world_size
        if not world or world < 1 or load_world < 1:
            raise UserError(f"--world-size and --load-world-size must be at least 1, got {world} and {load_world}")
        if not isinstance(source, PresetModel):
            raise UserError("--world-size needs a model preset (--model): every rank builds its own rows of the "
                            "seeded weights; --model-path is not supported there")
        if opts.group is not None:
            check_memory(source, world, opts.group.local_world)
        else:
            check_memory(source, max(world, load_world))
        opts = replace(opts, load_world_size=load_world)
    out = Path(opts.out)
    fsutil.check_writable(out)
    fix_mmap_threshold()  # every repeat starts from the same memory state (large buffers are returned on free)
    storage = at(opts.storage) if opts.storage is not None else LocalDir(out / "checkpoints")
    ckpts = (at(opts.checkpoints) if opts.checkpoints is not None else storage).local_file()
    if opts.disk_cap_Bps and ckpts is None:
        raise UserError("--disk-cap caps a local disk; the checkpoints go to S3 here")
    with fsutil.output_lock(Path(opts.lock) if opts.lock else out), storage.delayed(say) as storage, \
            (diskcap.capped(ckpts, opts.disk_cap_Bps) if opts.disk_cap_Bps else contextlib.nullcontext()) as cap:
        if cap:
            say(f"disk capped: device {cap['device']} read and written at most {cap['bps'] / 1e6:,.0f} MB/s for "
                "this run (cgroup v1 blkio throttle: every process's I/O to that disk)")
        return _run(approaches, source, replace(opts, storage=storage), out, on_row, say)


def _admit(approaches, source, opts: Options, root: Location, say) -> tuple[list, dict | None, dict]:
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
        need = check_disk(approaches, source, root.local_file(), opts.keep, opts.disk_reference)
    skipped = storage_skips
    if not approaches[0].sharded:
        too_big = memory_skips(approaches, source)
        for name, why in too_big.items():
            say(f"skipped {name}: {why}")
        if too_big:
            skipped = {**(skipped or {}), **too_big}
            approaches = [a for a in approaches if a.name not in too_big]
            if not approaches:
                raise UserError(f"none of the chosen approaches fits in this machine's memory with {source.name}: "
                                + "; ".join(f"{n}: {w}" for n, w in too_big.items()))
    return approaches, skipped, need


def _announce(approaches, source, opts: Options, run_id: str, n_todo: int, results_path: Path, cores: int,
              say) -> None:
    """The run's first line: what it measures, on what, where its rows go."""
    if approaches[0].sharded:
        w, lw = opts.world_size, opts.load_world_size
        if opts.group is not None:
            here = opts.group.local_world
            say(f"run {run_id}: {len(approaches)} sharded approach(es) x {opts.repeats} repeat(s) on {source.name}, "
                f"saved and loaded by the {w} ranks of a launched job ({here} on this node, {cores} cores"
                + (f": ranks beyond {cores} share them" if here > cores else "") + f"); results -> {results_path}")
        else:
            say(f"run {run_id}: {len(approaches)} sharded approach(es) x {opts.repeats} repeat(s) on {source.name}, "
                f"saved by {w} rank(s), loaded by {lw}; {cores} cores"
                + (f": ranks beyond {cores} share them" if max(w, lw) > cores else "") + f"; results -> {results_path}")
    else:
        shared = (f", {n_todo} measurement(s) here, the rest already measured in this run" if opts.done else "")
        say(f"run {run_id}: {len(approaches)} approach(es) x {opts.repeats} repeat(s) on {source.name} "
            f"({len(source.specs)} tensors, {source.n_params:,} parameters, {source.nbytes / 1e9:.2f} GB{shared}); "
            f"results -> {results_path}")


def _measure_all(todo, source, expected, root: Location, run_id: str, opts: Options, log: "RunLog", say) -> int:
    """Every planned (approach, repeat), one checkpoint at a time (with
    ``keep``, each approach's last stays); returns how many the deadline left
    unstarted."""
    for i, (a, k) in enumerate(todo):
        if opts.deadline is not None and time.perf_counter() > opts.deadline:
            say(f"time is up: {len(todo) - i} planned measurement(s) not started")
            return len(todo) - i
        loc = root / (f"{a.name}-w{opts.world_size}" if a.sharded else a.name)
        log.add(measure_approach(a, source, expected, loc, k, run_id, opts))
        if not (opts.keep and k == opts.repeats_of(a.name)):
            loc.remove()
    return 0


def _run(approaches, source, opts: Options, out: Path, on_row, say):
    run_id = opts.run_id or new_run_id()
    storage = opts.storage
    root = at(opts.checkpoints) if opts.checkpoints is not None else storage / run_id
    storage.preflight(say)
    approaches, skipped, need = _admit(approaches, source, opts, root, say)
    results_path = Path(opts.results) if opts.results else out / "results" / f"{run_id}.jsonl"
    seed = order_seed(run_id, opts)
    todo = plan(approaches, opts, seed)
    measured = [a for a in approaches if any(t[0] is a for t in todo)]
    log = RunLog(results_path, run_id, len(todo), on_row)
    sharded = approaches[0].sharded
    cores = len(os.sched_getaffinity(0))
    _announce(approaches, source, opts, run_id, len(todo), results_path, cores, say)
    remove_stale_saves(root.parent, say)
    can_drop = can_drop_caches(say)
    in_a_row = [a for a in approaches if a.name in opts.sustained] if not sharded else []  # also back to back
    can_trim_ = can_trim(root, say) if opts.group is None else None
    opts = replace(opts, trim=bool(can_trim_))
    if opts.group is not None:  # a launched job: every rank must see what rank 0 writes
        cluster.check_shared(opts.group, root)
    ref = {}
    if opts.disk_reference and root.local_file() is not None:
        scratch = root.local_file()
        scratch.mkdir(parents=True, exist_ok=True)
        prof = machine.shared_profile(opts.profile, scratch, source.nbytes, say)
        ref = {**prof["reference"], "machine": prof}
    elif opts.disk_reference:
        say(f"{root.reference_kind} reference: {source.nbytes / 1e9:.2f} GB written and read cold, in one stream, "
            f"{REFERENCE_SAMPLES} times")
        ref = reference(source.nbytes, root / "reference")
    extra = dict(world_size=opts.world_size, load_world_size=opts.load_world_size, cores=cores,
                 launcher="spawn" if opts.group is None else "torchrun") if sharded else {}
    env = environment_record(run_id, out, model=source.name, weights=source.weights, phase=opts.phase,
                             n_tensors=len(source.specs), n_params=source.n_params,
                             source_bytes=source.nbytes, repeats=opts.repeats, approaches=[a.name for a in approaches],
                             disk_estimate_bytes=need, **storage.env_fields(),
                             **({} if skipped is None else {"skipped": skipped}),
                             **({"shared": opts.done} if opts.done else {}),
                             **({"fewer": opts.fewer} if opts.fewer else {}), malloc_mmap_threshold=MMAP_THRESHOLD,
                             drop_caches=can_drop, trim=can_trim_, disk_cap_Bps=opts.disk_cap_Bps,
                             **({"sustained": [a.name for a in in_a_row],
                                 "sustained_saves": opts.sustained_saves} if opts.sustained else {}),
                             order="interleaved, each round shuffled" if opts.interleave
                             and opts.shuffle else "interleaved" if opts.interleave else "repeats back to back",
                             **({"order_seed": seed} if opts.interleave and opts.shuffle else {}),
                             **extra, **ref)
    log.write(env)
    kept = None
    try:
        expected = None
        writing = list({a.name: a for a in measured + in_a_row}.values())
        if not sharded and writing:
            say("recording per-tensor digests of the source")
            if KeptSource.keeps(source, psutil.virtual_memory().total):
                source = kept = KeptSource(source)
            sd = source.materialize()
            expected = expected_digests(sd, {a.stored_dtype for a in writing})
            del sd
            gc.collect()
        for a in writing:  # first-use set-up of a library, outside every timing
            warm_up(a.name, a.warm_up, root / f"warm-up-{a.name}", say)
        with settled_objects():
            skipped_late = _measure_all(todo, source, expected, root, run_id, opts, log, say)
            if in_a_row and not skipped_late:
                _sustained_all(in_a_row, source, expected, root, run_id, opts, log, say)
    except KeyboardInterrupt:
        log.end(False, interrupted="KeyboardInterrupt")  # a SIGKILL leaves no end record: incomplete too
        raise
    finally:
        if kept is not None:
            kept.close()
    if not opts.keep:
        root.remove()
    late = {"deadline_skipped": skipped_late} if skipped_late else {}
    log.end(True, **late)
    return env | {"results_path": str(results_path), **late}, log.rows
