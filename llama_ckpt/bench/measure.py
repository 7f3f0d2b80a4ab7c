"""The timing protocol: one function for one approach, single-process or on
ranks, and the run that measures many (the scaffold every driver shares is
:mod:`.scaffold`; back-to-back saves are :mod:`.sustained`).

For each repeat, every approach in turn (interleaved, so that drift of the
shared machine hits every approach alike; each round in a seeded random
order, recorded; ``interleave=False`` runs each approach's repeats back to
back), after the machine profile (``bench.machine``; on S3 the storage
reference, ``REFERENCE_SAMPLES`` times):

0. set the state the save starts from, as the run's ``prepare`` allows
   (:meth:`.scaffold.Prepared.start_state`): the free space discarded, what
   is dirty written back and the kernel's caches dropped (root only);
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
``clear_refs``) and read from ``VmHWM`` after; how busy the machine was
beside each is read from ``/proc/stat``. Before anything is written the
free disk is checked against each approach's estimated footprint. A failure
inside one approach becomes an ``error`` row, its partial checkpoint is
removed, and the next approach runs.
"""

from __future__ import annotations

import gc
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import psutil

from .. import checkpoint, fsutil
from ..digests import expected_digests
from ..errors import FAILURES, UserError
from ..formats.base import Format
from ..model import DRAW, KeptSource, ModelSource, PresetModel, tensor_kind
from ..recorders import MMAP_THRESHOLD, CpuIO, MachineBusy, PeakRSS, Steps, fix_mmap_threshold, release_memory, \
    settled_objects
from ..results import measurement_row, read_results
from ..store import LocalDir, Location, at
from . import cluster, probes, ranks, scaffold, sustained
from .probes import REFERENCE_SAMPLES, reference
from .scaffold import NOTHING, Prepared, RunLog, describe_error, now


@dataclass(kw_only=True)
class Options(scaffold.RunOptions):
    warm: bool = False  # also time a warm (page-cached) load
    interleave: bool = True  # repeat k of every approach before repeat k+1 of any, so drift hits all alike
    shuffle: bool = True  # each round in its own seeded random order, so that no approach always goes first
    order_seed: int | None = None  # the rounds' seed; default: drawn from the run id and the phase (recorded)
    checkpoints: Location | Path | None = None  # the run's checkpoints; default <storage>/<run_id>
    storage: Location | None = None  # where runs' checkpoints live; default <out>/checkpoints (an S3 prefix...)
    world_size: int | None = None  # sharded approaches: ranks saving
    load_world_size: int | None = None  # ranks loading (default: world_size)
    group: Any = None  # a launched job (bench.cluster.Group): its ranks save and load; this is rank 0
    done: dict[str, int] | None = None  # repeats of an approach already measured in this run (shared): it gets the rest
    deadline: float | None = None  # time.perf_counter() after which no new measurement starts (the rest is skipped)
    fewer: dict[str, int] | None = None  # approaches measured fewer than ``repeats`` times (a sweep's costly points)
    sustained: tuple[str, ...] = ()  # approaches also saved back to back (bench.sustained), after the rounds
    sustained_saves: int = 5  # checkpoints in a row each (fewer where the disk cannot hold them together)
    prepared: Prepared | None = None  # what the run does to the machine (set by run; None: nothing)

    def repeats_of(self, name: str) -> int:
        """How many repeats of ``name`` the run holds when complete."""
        return min(self.repeats, (self.fewer or {}).get(name, self.repeats))

    def start_state(self, loc: Location) -> dict:
        return (self.prepared or NOTHING).start_state(loc)


def plan(approaches: list, opts: Options, seed: int = 0) -> list[tuple]:
    """(approach, repeat) in measuring order (:func:`.scaffold.plan` with the run's options)."""
    return scaffold.plan(approaches, opts.repeats_of, opts.done, opts.interleave, opts.shuffle, seed)


def order_seed(run_id: str, opts: Options) -> int:
    """The seed of the rounds' order: ``opts.order_seed``, or one drawn from the run id, the phase and the ranks
    (each configuration of a sharded phase its own orders)."""
    if opts.order_seed is not None:
        return opts.order_seed
    return scaffold.order_seed(run_id, opts.phase, opts.world_size, opts.load_world_size, opts.group is not None)


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
        base.update(opts.start_state(loc))
        if approach.sharded and opts.group is not None:
            saves, loads, *rest = cluster.sharded(opts.group, sharded_job(approach, source, loc), loc)
            return measurement_row(**base, **ranks.sharded_fields(saves, loads, *rest, source.nbytes, "torchrun"),
                                   finished_at=now())
        if approach.sharded:
            return measurement_row(**base, **_sharded(approach, source, loc, world, load_world), finished_at=now())
        return measurement_row(**base, **_single(approach, source, expected, loc, repeat, opts), finished_at=now())
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
    return measurement_row(**base, verified=False, error=f"{stage} failed: {describe_error(exc, loc)}",
                           finished_at=now())


class _StageFailed(Exception):
    def __init__(self, stage: str, exc: BaseException):
        super().__init__(str(exc))
        self.stage, self.exc = stage, exc


def _timed_save(approach: Format, source: ModelSource, digests: dict, loc: Location, repeat: int,
                opts: Options) -> dict:
    """A fresh source saved at ``loc``, timed until durable, with its peak
    memory, counted work, requests, steps and how busy the machine was."""
    sd = source.materialize()
    release_memory()
    steps = Steps()
    with PeakRSS() as rss, CpuIO(rss) as work, MachineBusy() as busy, loc.count_requests() as req, \
            scaffold.bar(opts.progress, len(sd), f"{approach.name} save #{repeat}") as bar:
        t0 = time.perf_counter()
        approach.save(sd, loc, bar.update, digests=digests, steps=steps)
        save_s = time.perf_counter() - t0
    del sd
    release_memory()
    return dict(save_s=save_s, peak_rss_save_bytes=rss.peak, rss_before_save_bytes=rss.base,
                peak_rss_anon_save_bytes=rss.peak_anon, peak_rss_file_save_bytes=rss.peak_file,
                save_phases=steps.seconds, requests_save=req, cpu_io_save=work.result, busy_save=busy.result)


def _single(approach: Format, source: ModelSource, expected: dict, loc: Location, repeat: int, opts: Options) -> dict:
    exp = expected[approach.stored_dtype]
    stage = "save"
    try:
        saved = _timed_save(approach, source, {k: e.digest for k, e in exp.items()}, loc, repeat, opts)
        fp = loc.footprint()
        stage = "load"
        with scaffold.bar(opts.progress, len(source.specs), f"{approach.name} load #{repeat}") as bar:
            cold = scaffold.timed_load(lambda: approach.load(loc, bar.update), loc, exp)
        verdict, warm_s = cold.verdict, None
        by_kind = _by_kind(approach, source, loc, verdict)
        if opts.warm and verdict.verified:
            stage = "warm load"
            warm = scaffold.timed_load(lambda: approach.load(loc), loc, exp, cold=False)
            warm_s, verdict = warm.seconds, (verdict if warm.verdict.verified else warm.verdict)
    except (KeyboardInterrupt, SystemExit):
        raise
    except FAILURES as exc:
        raise _StageFailed(stage, exc) from exc
    return dict(**saved, load_s=cold.seconds, load_cold=cold.cold, resident_after_evict=cold.resident,
                load_warm_s=warm_s, bytes_on_disk=fp.bytes_on_disk, bytes_apparent=fp.bytes_apparent,
                n_files=fp.n_files, payload_bytes=sum(approach.payload_bytes(sp) for sp in source.specs),
                fsyncs_save=_fsyncs(approach, loc, saved["cpu_io_save"], fp.n_files),
                by_kind=by_kind, peak_rss_load_bytes=cold.rss.peak, rss_before_load_bytes=cold.rss.base,
                peak_rss_anon_load_bytes=cold.rss.peak_anon, peak_rss_file_load_bytes=cold.rss.peak_file,
                requests_load=None if approach.own_s3_client else cold.requests,
                cpu_io_load=cold.work, busy_load=cold.busy,
                verified=verdict.verified, max_abs_err=verdict.max_abs_err, max_rel_err=verdict.max_rel_err,
                n_overflow=verdict.n_overflow, n_flushed=verdict.n_flushed,
                error=None if verdict.verified else f"verification failed: {verdict.summary()}")


def _fsyncs(approach: Format, loc: Location, work: dict, n_files: int) -> int | None:
    """The save's fsync calls: Python's, counted, plus the format's native ones on local storage (its policy)."""
    native = approach.native_fsyncs(n_files) if loc.row_fields()["storage"] == "local" else 0
    return None if native is None else work["fsync_calls"] + native


def sharded_job(approach: Format, source: ModelSource, loc: Location) -> dict:
    """What every rank needs to save or load ``approach``'s checkpoint of ``source`` at ``loc``."""
    return dict(kind="save", approach={"approach": approach.name, "mechanism": approach.MECHANISM,
                                       "knobs": approach.knobs(), "world_size": None},
                specs=source.specs, seed=source.seed, model=source.name, final=loc)


def _sharded(approach: Format, source: ModelSource, loc: Location, world: int, load_world: int) -> dict:
    """A save on ``world`` ranks and a cold load on ``load_world`` ranks, spawned here."""
    job = sharded_job(approach, source, loc)
    staged = loc.stage()
    with loc.count_requests() as req_save, MachineBusy() as busy_save:  # the ranks are children waited for
        saves = ranks.launch(dict(job, staged=staged), world)
    errors = [r["error"] for r in saves if r.get("error")]
    if errors:  # no commit happened: what was staged goes
        left = checkpoint.discard(loc, staged)
        return dict(verified=False, ranks_save=saves,
                    error="save failed: " + "; ".join(errors) + (f"; {left}" if left else ""))
    fp = loc.footprint()
    cold, frac = loc.evict()
    with loc.count_requests() as req_load, MachineBusy() as busy_load:
        loads = ranks.launch(dict(job, kind="load"), load_world)
    return ranks.sharded_fields(saves, loads, fp, cold, frac, req_save, req_load, source.nbytes, launcher="spawn") \
        | {"busy_save": busy_save.result, "busy_load": busy_load.result}


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
    errors, error = ranks.load_verdict(loads)
    return dict(path=str(loc), approach=man["approach"], model=source.name, world_size=man["world_size"],
                load_world_size=len(loads), **{k: v for k, v in ranks.topology_fields(loads).items()},
                load_s=None if errors else max(r["checkpoint_s"] for r in loads), load_cold=cold,
                resident_after_evict=frac, requests_load=ranks.add_counts(req, *(r.get("requests") for r in loads)),
                ranks_load=[{k: r.get(k) for k in ranks.LOAD_KEYS} for r in loads],
                bytes=sum(r.get("bytes") or 0 for r in loads), verified=error is None, error=error)


# -- a run -------------------------------------------------------------------------------
def run(approaches: list[Format], source: ModelSource, opts: Options,
        on_row: Callable[[dict], None] = lambda r: None, say: Callable[[str], None] = lambda s: None):
    """Measure every approach ``opts.repeats`` times; rows go to the results
    file as they finish and to ``on_row``. Returns (environment, rows).
    Sharded approaches (all or none of them) run on ``opts.world_size`` ranks."""
    opts = _checked(approaches, source, opts)
    out = Path(opts.out)
    fsutil.check_writable(out)
    fix_mmap_threshold()  # every repeat starts from the same memory state (large buffers are returned on free)
    storage = at(opts.storage) if opts.storage is not None else LocalDir(out / "checkpoints")
    ckpts = (at(opts.checkpoints) if opts.checkpoints is not None else storage).local_file()
    with scaffold.hold_machine(opts, ckpts, say, launched=opts.group) as prepared, \
            storage.delayed(say) as storage:
        return _run(approaches, source, replace(opts, storage=storage, prepared=prepared), out, on_row, say)


def _checked(approaches: list[Format], source: ModelSource, opts: Options) -> Options:
    """The options, once they are known to fit the approaches (sharded ones: ranks, a preset, the memory)."""
    if opts.repeats < 1:
        raise UserError(f"--repeats must be at least 1, got {opts.repeats}")
    sharded = {a.sharded for a in approaches}
    if len(sharded) > 1:
        raise UserError("sharded and single-process approaches cannot be measured in one run")
    if True not in sharded:
        return opts
    world, load_world = opts.world_size, opts.load_world_size or opts.world_size
    if not world or world < 1 or load_world < 1:
        raise UserError(f"--world-size and --load-world-size must be at least 1, got {world} and {load_world}")
    if not isinstance(source, PresetModel):
        raise UserError("--world-size needs a model preset (--model): every rank builds its own rows of the "
                        "seeded weights; --model-path is not supported there")
    if opts.group is not None:
        scaffold.check_memory(source, world, opts.group.local_world)
    else:
        scaffold.check_memory(source, max(world, load_world))
    return replace(opts, load_world_size=load_world)


def _announce(approaches, source, opts: Options, run_id: str, n_todo: int, results_path: Path, say) -> None:
    """The run's first line: what it measures, on what, where its rows go."""
    if not approaches[0].sharded:
        shared = (f", {n_todo} measurement(s) here, the rest already measured in this run" if opts.done else "")
        say(f"run {run_id}: {len(approaches)} approach(es) x {opts.repeats} repeat(s) on {source.name} "
            f"({len(source.specs)} tensors, {source.n_params:,} parameters, {source.nbytes / 1e9:.2f} GB{shared}); "
            f"results -> {results_path}")
        return
    cores = len(os.sched_getaffinity(0))
    w, lw = opts.world_size, opts.load_world_size
    here = opts.group.local_world if opts.group is not None else max(w, lw)
    who = (f"saved and loaded by the {w} ranks of a launched job ({here} on this node, {cores} cores"
           if opts.group is not None else f"saved by {w} rank(s), loaded by {lw}; {cores} cores")
    say(f"run {run_id}: {len(approaches)} sharded approach(es) x {opts.repeats} repeat(s) on {source.name}, {who}"
        + (f": ranks beyond {cores} share them" if here > cores else "")
        + (")" if opts.group is not None else "") + f"; results -> {results_path}")


def _environment(approaches, source, opts: Options, run_id: str, root: Location, out: Path, skipped, need,
                 in_a_row, seed, say) -> dict:
    """The run's environment record, with the machine profile (on S3: the storage reference)."""
    profile, ref = None, None
    if root.local_file() is not None:
        profile = scaffold.run_profile(opts, root.local_file(), source.nbytes, say)
    elif opts.disk_reference:
        say(f"{root.reference_kind} reference: {source.nbytes / 1e9:.2f} GB written and read cold, in one stream, "
            f"{REFERENCE_SAMPLES} times")
        ref = reference(source.nbytes, root / "reference")
    extra = dict(world_size=opts.world_size, load_world_size=opts.load_world_size,
                 cores=len(os.sched_getaffinity(0)),
                 launcher="spawn" if opts.group is None else "torchrun") if approaches[0].sharded else {}
    order = ("interleaved, each round shuffled" if opts.interleave and opts.shuffle
             else "interleaved" if opts.interleave else "repeats back to back")
    return scaffold.environment(
        run_id, out, opts.prepared or NOTHING, profile, ref, model=source.name, weights=source.weights,
        phase=opts.phase, n_tensors=len(source.specs), n_params=source.n_params, source_bytes=source.nbytes,
        repeats=opts.repeats, approaches=[a.name for a in approaches], disk_estimate_bytes=need,
        **opts.storage.env_fields(), **({} if skipped is None else {"skipped": skipped}),
        **({"shared": opts.done} if opts.done else {}), **({"fewer": opts.fewer} if opts.fewer else {}),
        malloc_mmap_threshold=MMAP_THRESHOLD,
        **({"sustained": [a.name for a in in_a_row], "sustained_saves": opts.sustained_saves}
           if opts.sustained else {}),
        order=order, **({"order_seed": seed} if opts.interleave and opts.shuffle else {}), **extra)


def _measure_all(todo, source, expected, root: Location, run_id: str, opts: Options, log: RunLog, say) -> int:
    """Every planned (approach, repeat), one checkpoint at a time (with
    ``keep``, each approach's last stays), each round after a short disk
    reference (:func:`disk_state`) where there is one; returns how many the
    deadline left unstarted."""
    # rounds are numbered over the results file: a phase that calls run again (08's rounds) goes on counting
    state, seen, n = None, set(), len(read_results([log.path]).disk_states) if log.path.exists() else 0
    for i, (a, k) in enumerate(todo):
        if opts.deadline is not None and time.perf_counter() > opts.deadline:
            say(f"time is up: {len(todo) - i} planned measurement(s) not started")
            return len(todo) - i
        if (state is None or a.name in seen) and disk_states_here(a, root, opts):  # a new round begins
            n, seen = n + 1, set()
            state = disk_state(root, source, opts, log, n, run_id, say)
        seen.add(a.name)
        loc = root / (f"{a.name}-w{opts.world_size}" if a.sharded else a.name)
        row = measure_approach(a, source, expected, loc, k, run_id, opts)
        log.add(row | {"disk_state": state} if state else row)
        if not (opts.keep and k == opts.repeats_of(a.name)):
            loc.remove()
    return 0


def disk_states_here(approach: Format, root: Location, opts: Options) -> bool:
    """Whether a round's disk reference is taken: single-process saves on a local disk (not on S3, not in
    memory, not by the ranks of a launched job)."""
    return (not approach.sharded and opts.group is None and root.local_file() is not None
            and root.row_fields().get("medium") != "memory")


def disk_state(root: Location, source: ModelSource, opts: Options, log: RunLog, n: int, run_id: str,
               say) -> dict | None:
    """Round ``n``'s disk reference (:func:`llama_ckpt.bench.probes.round_reference`), from the state every save
    starts from; its record goes to the results file, and what each row of the round keeps of it is returned.
    One that fails is a record with its error and the round's rows keep none (their bounds take the profile's)."""
    nbytes = min(probes.ROUND_REFERENCE_BYTES, source.nbytes)
    head = {"record": "disk_state", "run_id": run_id, "phase": opts.phase, "model": source.name, "round": n,
            "at": now()}
    loc = root / "disk-state"
    try:
        ref = probes.round_reference(nbytes, loc, opts.start_state)
    except FAILURES as exc:
        error = describe_error(exc, loc)
        say(f"round {n}: the disk reference failed ({error}); its rows' bounds take the profile's rates")
        log.write(head | {"bytes": nbytes, "error": error})
        try:
            loc.remove()
        except FAILURES:
            pass
        return None
    log.write(head | ref)
    return {"round": n, "write_Bps": ref["write_Bps"], "read_Bps": ref["read_Bps"], "bytes": nbytes}


def _run(approaches, source, opts: Options, out: Path, on_row, say):
    run_id = opts.run_id or scaffold.new_run_id()
    root = at(opts.checkpoints) if opts.checkpoints is not None else opts.storage / run_id
    opts.storage.preflight(say)
    approaches, skipped, need = scaffold.admit(approaches, source, root, opts.keep, opts.disk_reference, say)
    results_path = opts.results_path(run_id)
    seed = order_seed(run_id, opts)
    todo = plan(approaches, opts, seed)
    measured = [a for a in approaches if any(t[0] is a for t in todo)]
    log = RunLog(results_path, run_id, len(todo), on_row)
    _announce(approaches, source, opts, run_id, len(todo), results_path, say)
    scaffold.remove_stale_saves(root.parent, say)
    in_a_row = [a for a in approaches if a.name in opts.sustained] if not approaches[0].sharded else []
    if opts.group is not None:  # a launched job: every rank must see what rank 0 writes
        cluster.check_shared(opts.group, root)
    env = _environment(approaches, source, opts, run_id, root, out, skipped, need, in_a_row, seed, say)
    log.write(env)
    kept = None
    try:
        expected = None
        writing = list({a.name: a for a in measured + in_a_row}.values())
        if not approaches[0].sharded and writing:
            say("recording per-tensor digests of the source")
            if KeptSource.keeps(source, psutil.virtual_memory().total):
                source = kept = KeptSource(source)
            sd = source.materialize()
            expected = expected_digests(sd, {a.stored_dtype for a in writing})
            del sd
            gc.collect()
        for a in writing:  # first-use set-up of a library, outside every timing
            scaffold.warm_up(a.name, a.warm_up, root / f"warm-up-{a.name}", say)
        with settled_objects():
            skipped_late = _measure_all(todo, source, expected, root, run_id, opts, log, say)
            if in_a_row and not skipped_late:
                sustained.all_in_a_row(in_a_row, source, expected, root, run_id, opts, log, say)
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
