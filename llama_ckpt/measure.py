"""The timing protocol, one function for every approach.

For each repeat, every approach in turn (interleaved, so that drift of the
shared machine hits every approach alike; ``interleave=False`` runs each
approach's repeats back to back), after the disk reference measured
``REFERENCE_SAMPLES`` times:

1. build a fresh float32 source (outside the timer);
2. time ``save`` from the call until its bytes are durable (each approach
   fsyncs what it writes; a float16 approach's cast is inside the timer),
   including the suite's atomic commit (manifest, commit marker, rename: a
   few small fsyncs) but not the digests, recorded before the timer;
3. free the source, evict the checkpoint's files from the page cache and
   confirm it with mincore (outside the timer);
4. time ``load`` until every tensor is materialised in memory;
5. after the timer, check every tensor against the digests recorded before
   the first save; a mismatch makes the row invalid;
6. with ``warm``, load again from the page cache, timed and checked alike.

Peak resident memory is reset before each save and load (Linux's
``clear_refs``) and read from ``VmHWM`` after. Before anything is written
the free disk is checked against each approach's estimated footprint. A
failure inside one approach becomes an ``error`` row, its partial checkpoint
is removed, and the next approach runs.
"""

from __future__ import annotations

import errno
import gc
import os
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import psutil

from . import fsutil
from . import s3
from .approaches import Approach, SavePhases, stale_temporaries
from .errors import FAILURES, UserError
from .model import ModelSource
from .results import ResultsWriter, environment_record, measurement_row
from .verify import check, expected_digests

# Headroom left free on the output file system beyond the estimate.
DISK_HEADROOM = 256 << 20
# Samples of the disk (or object) reference per run: one sample proved
# untrustworthy here (the same write measured 341 then 1,869 MB/s back to back).
REFERENCE_SAMPLES = 3
# Block size of the disk reference's sequential writes and reads.
REFERENCE_BLOCK = 16 << 20


def new_run_id() -> str:
    return datetime.now().strftime("%Y%m%d-%H%M%S")


@dataclass
class Options:
    out: Path  # where checkpoints/ and results/ go
    repeats: int = 3  # timed save+load cycles per approach
    keep: bool = False  # keep each approach's last checkpoint
    warm: bool = False  # also time a warm (page-cached) load
    results: Path | None = None  # results file; default <out>/results/<run_id>.jsonl
    run_id: str | None = None
    progress: bool | None = None  # tqdm bars; default: only on a terminal
    disk_reference: bool = True  # time one sequential file of the model's size (REFERENCE_SAMPLES times)
    interleave: bool = True  # repeat k of every approach before repeat k+1 of any, so drift hits all alike
    checkpoints: Path | None = None  # where checkpoints go; default <out>/checkpoints/<run_id>
    lock: Path | None = None  # the directory whose lock the run holds; default out
    storage: "s3.Target | None" = None  # checkpoints on an S3 bucket instead of the local disk


class PeakRSS:
    """Peak resident set size of this process over a block of code. Uses the
    kernel's high-water mark, reset on entry; where that reset is not allowed
    a thread samples the RSS every 5 ms instead."""

    def __enter__(self):
        self.sampler = None
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            self.peak = 0
            self._stop = threading.Event()
            self.sampler = threading.Thread(target=self._sample, daemon=True)
            self.sampler.start()
        return self

    def _sample(self):
        proc = psutil.Process()
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, proc.memory_info().rss)

    def __exit__(self, *exc):
        if self.sampler is not None:
            self._stop.set()
            self.sampler.join()
            self.peak = max(self.peak, psutil.Process().memory_info().rss)
        else:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        self.peak = int(line.split()[1]) * 1024
        return False


def check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        with open(probe, "w") as f:
            f.write("x")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"output directory {out} cannot be written: {exc.strerror or exc}") from None


def disk_needed(approaches: list[Approach], source: ModelSource, out: Path, keep: bool, reference: bool) -> dict[str, int]:
    """Bytes each approach's checkpoint is estimated to occupy (chunk files
    rounded up to the file system's block size)."""
    block = fsutil.block_size(out)
    return {a.name: a.estimate_bytes(source.specs, block) for a in approaches} | (
        {"disk reference": -(-source.nbytes // block) * block} if reference else {})


def check_disk(approaches: list[Approach], source: ModelSource, out: Path, keep: bool, reference: bool) -> dict[str, int]:
    need = disk_needed(approaches, source, out, keep, reference)
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


def disk_reference(nbytes: int, directory: Path) -> dict:
    """The disk itself, in this run: one sequential file of ``nbytes`` written
    in 16 MiB blocks and fsynced, then evicted and read back cold."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "disk-reference.bin"
    block = os.urandom(min(REFERENCE_BLOCK, max(nbytes, 1)))
    try:
        t0 = time.perf_counter()
        with open(path, "wb") as f:
            left = nbytes
            while left > 0:
                n = min(left, len(block))
                f.write(block[:n] if n < len(block) else block)
                left -= n
            f.flush()
            os.fsync(f.fileno())
        fsutil.fsync_path(directory)
        write_s = time.perf_counter() - t0
        cold, frac = fsutil.evict_and_confirm(path)
        buf = bytearray(len(block))
        t0 = time.perf_counter()
        with open(path, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass
        read_s = time.perf_counter() - t0
    finally:
        fsutil.remove(path)
    return {"reference_kind": "disk", "reference_bytes": nbytes, "reference_write_s": write_s, "reference_read_s": read_s,
            "reference_read_cold": cold, "reference_write_Bps": nbytes / write_s if write_s else None,
            "reference_read_Bps": nbytes / read_s if read_s else None}


def object_reference(nbytes: int, root: "s3.S3Path", server_dir: str | None) -> dict:
    """The object store itself, in this run: one object of ``nbytes`` put by
    multipart upload in 64 MiB parts (the single-file approaches' path), then
    read back in one streamed GET; the server's files evicted in between
    where the server's data directory is known."""
    path = root / "object-reference.bin"
    block = os.urandom(min(REFERENCE_BLOCK, max(nbytes, 1)))
    try:
        t0 = time.perf_counter()
        with path.open_writer() as f:
            left = nbytes
            while left > 0:
                n = min(left, len(block))
                f.write(block[:n] if n < len(block) else block)
                left -= n
        write_s = time.perf_counter() - t0
        cold = s3.evict_server(server_dir)[0] if server_dir else None
        t0 = time.perf_counter()
        body = path.target.client().get_object(Bucket=path.target.bucket, Key=path.key)["Body"]
        while body.read(REFERENCE_BLOCK):
            pass
        read_s = time.perf_counter() - t0
    finally:
        path.target.client().delete_object(Bucket=path.target.bucket, Key=path.key)
    return {"reference_kind": "s3 object", "reference_bytes": nbytes, "reference_write_s": write_s,
            "reference_read_s": read_s, "reference_read_cold": cold,
            "reference_write_Bps": nbytes / write_s if write_s else None,
            "reference_read_Bps": nbytes / read_s if read_s else None}


def _median_reference(samples: list[dict]) -> dict:
    """The reference as the medians of its samples (write and read each),
    with every sample kept in ``reference_samples``."""
    import statistics

    out = dict(samples[0])
    for key in ("reference_write_s", "reference_read_s"):
        out[key] = statistics.median(s[key] for s in samples)
    n = out["reference_bytes"]
    out["reference_write_Bps"] = n / out["reference_write_s"] if out["reference_write_s"] else None
    out["reference_read_Bps"] = n / out["reference_read_s"] if out["reference_read_s"] else None
    colds = [s["reference_read_cold"] for s in samples]
    out["reference_read_cold"] = None if None in colds else all(colds)
    out["reference_samples"] = [{"write_s": s["reference_write_s"], "read_s": s["reference_read_s"],
                                 "read_cold": s["reference_read_cold"]} for s in samples]
    return out


def remove_checkpoint(path) -> None:
    """Remove a checkpoint (or anything) at a local path or an S3 prefix."""
    if isinstance(path, s3.S3Path):
        path.remove()
    else:
        fsutil.remove(path)


def _describe_error(exc: BaseException, path: Path) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or "No space left" in str(exc):
        return f"disk full while writing {path}: {text}"
    return f"{type(exc).__name__}: {text}"


def _bar(enabled: bool, total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="tensor", leave=False, disable=not enabled, file=sys.stderr)


def _by_kind(approach: Approach, source: ModelSource, path: Path, verdict) -> dict[str, dict]:
    """Per tensor kind: the data's bytes as stored before compression
    (``payload_bytes``), the bytes its files take (``bytes_apparent``, where
    the format keeps a directory per tensor) and the cast's error."""
    from .model import tensor_kind

    out: dict[str, dict] = {}
    for sp in source.specs:
        k = out.setdefault(tensor_kind(sp.name), {"n_tensors": 0, "payload_bytes": 0, "bytes_apparent": 0})
        k["n_tensors"] += 1
        k["payload_bytes"] += approach.payload_bytes(sp)
        d = approach.tensor_dir(path, sp.name)
        if d is None or k["bytes_apparent"] is None:
            k["bytes_apparent"] = None
        else:
            k["bytes_apparent"] += fsutil.footprint(d).bytes_apparent
    for kind, errs in verdict.by_kind.items():
        out.setdefault(kind, {}).update(errs)
    return out


def measure_approach(approach: Approach, source: ModelSource, expected: dict, ckpt_path: Path, repeat: int,
                     run_id: str, opts: Options) -> dict:
    """One save + cold load (+ warm load) of one approach: one result row."""
    progress = sys.stderr.isatty() if opts.progress is None else opts.progress
    on_s3 = isinstance(ckpt_path, s3.S3Path)
    storage = dict(storage=ckpt_path.target.url, s3_delay_ms=ckpt_path.target.delay_ms) if on_s3 \
        else dict(storage="local")
    base = dict(run_id=run_id, approach=approach.name, model=source.name, path=str(ckpt_path.resolve()), **storage,
                knobs=approach.knobs(), n_tensors=len(source.specs), n_params=source.n_params,
                tensor_set=source.tensor_set_digest(), repeat=repeat,
                stored_dtype=str(approach.stored_dtype).removeprefix("torch."),
                source_dtype=",".join(sorted({str(s.dtype).removeprefix("torch.") for s in source.specs})))
    digests = {k: e.digest for k, e in expected[approach.stored_dtype].items()}
    stage = "save"
    try:
        remove_checkpoint(ckpt_path)  # each repeat saves into a fresh directory
        sd = source.materialize()
        gc.collect()
        with PeakRSS() as rss_save, _bar(progress, len(sd), f"{approach.name} save #{repeat}") as bar, \
                s3.Requests() as req_save, SavePhases() as save_phases:
            t0 = time.perf_counter()
            approach.save(sd, ckpt_path, bar.update, digests=digests)
            save_s = time.perf_counter() - t0
        del sd
        gc.collect()
        if on_s3:  # objects and bytes stored, from listing the bucket
            n_obj, n_bytes = ckpt_path.footprint()
            fp = fsutil.Footprint(n_files=n_obj, bytes_on_disk=n_bytes, bytes_apparent=n_bytes)
        else:
            fp = fsutil.footprint(ckpt_path)

        stage = "load"
        if on_s3:  # cold on the server's side where its files are known, else unknown
            sdir = ckpt_path.target.server_dir
            cold, frac = s3.evict_server(sdir) if sdir else (None, None)
        else:
            cold, frac = fsutil.evict_and_confirm(ckpt_path)
        with PeakRSS() as rss_load, _bar(progress, len(source.specs), f"{approach.name} load #{repeat}") as bar, \
                s3.Requests() as req_load:
            t0 = time.perf_counter()
            loaded = approach.load(ckpt_path, bar.update)
            load_s = time.perf_counter() - t0
        verdict = check(loaded, expected[approach.stored_dtype])
        del loaded
        gc.collect()
        by_kind = _by_kind(approach, source, ckpt_path, verdict)

        warm_s = None
        if opts.warm and verdict.verified:
            stage = "warm load"
            t0 = time.perf_counter()
            loaded = approach.load(ckpt_path)
            warm_s = time.perf_counter() - t0
            warm_verdict = check(loaded, expected[approach.stored_dtype])
            del loaded
            gc.collect()
            if not warm_verdict.verified:
                verdict = warm_verdict
        return measurement_row(
            **base, save_s=save_s, load_s=load_s, load_cold=cold, resident_after_evict=frac, load_warm_s=warm_s,
            bytes_on_disk=fp.bytes_on_disk, bytes_apparent=fp.bytes_apparent, n_files=fp.n_files,
            payload_bytes=sum(approach.payload_bytes(sp) for sp in source.specs), by_kind=by_kind,
            peak_rss_save_bytes=rss_save.peak, peak_rss_load_bytes=rss_load.peak,
            save_phases=save_phases.seconds,
            requests_save=req_save.counts if on_s3 else None, requests_load=req_load.counts if on_s3 else None,
            verified=verdict.verified, max_abs_err=verdict.max_abs_err, max_rel_err=verdict.max_rel_err,
            n_overflow=verdict.n_overflow, n_flushed=verdict.n_flushed,
            error=None if verdict.verified else f"verification failed: {verdict.summary()}",
            finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    except (KeyboardInterrupt, SystemExit):
        remove_checkpoint(ckpt_path)
        raise
    except FAILURES as exc:  # one approach failing must not stop the others
        gc.collect()
        try:
            remove_checkpoint(ckpt_path)
        except FAILURES:  # the store went away: the error row says why
            pass  # a partial checkpoint is never kept or measured
        return measurement_row(**base, verified=False, error=f"{stage} failed: {_describe_error(exc, ckpt_path)}",
                               finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))


def run(approaches: list[Approach], source: ModelSource, opts: Options,
        on_row: Callable[[dict], None] = lambda r: None, say: Callable[[str], None] = lambda s: None) -> tuple[dict, list[dict]]:
    """Measure every approach ``opts.repeats`` times; rows go to the results
    file as they finish and to ``on_row``. Returns (environment, rows)."""
    if opts.repeats < 1:
        raise UserError(f"--repeats must be at least 1, got {opts.repeats}")
    return locked(opts, say, lambda o, out: _run_locked(approaches, source, o, out, on_row, say))


def locked(opts: Options, say, fn):
    """``fn(opts, out)`` with the output directory checked and locked, and,
    for a run on S3 with an added delay, the endpoint behind the delay proxy."""
    out = Path(opts.out)
    check_writable(out)
    with fsutil.output_lock(Path(opts.lock) if opts.lock else out):
        target = opts.storage
        if target is None:
            return fn(opts, out)
        from dataclasses import replace

        from .netdelay import delayed

        with delayed(target.endpoint, target.delay_ms) as endpoint:
            if target.delay_ms:
                say(f"S3 requests go through a proxy adding {target.delay_ms:g} ms of round trip: {endpoint}")
            return fn(replace(opts, storage=replace(target, endpoint=endpoint)), out)


def s3_preflight(approaches: list, target: "s3.Target", say) -> tuple[list, dict[str, str]]:
    """The endpoint answers and the bucket exists; the approaches that can
    target S3, and the others with the reason each is skipped."""
    s3.check_target(target, say)
    skipped = {a.name: a.s3_unsupported for a in approaches if a.s3_unsupported}
    for name, why in skipped.items():
        say(f"skipped {name}: it cannot target S3 ({why})")
    approaches = [a for a in approaches if not a.s3_unsupported]
    if not approaches:
        raise UserError("none of the chosen approaches can target S3; see `python -m llama_ckpt list`")
    return approaches, skipped


def remove_stale(target: "s3.Target | None", ckpt_root, say) -> None:
    """Remove what interrupted saves left: ``*.tmp-*`` directories beside the
    run's checkpoints, or uncommitted prefixes on S3."""
    for st in s3.stale_saves(target.path()) if target else stale_temporaries(Path(ckpt_root).parent):
        remove_checkpoint(st)
        say(f"removed the stale temporary of an interrupted save: {st}")


def reference(source: ModelSource, ckpt_root, target: "s3.Target | None", say) -> dict:
    """The disk (or, on S3, object) reference: REFERENCE_SAMPLES samples, medians."""
    if target is not None:
        say(f"object reference: one {source.nbytes / 1e9:.2f} GB object put + read, {REFERENCE_SAMPLES} times")
        return _median_reference([object_reference(source.nbytes, ckpt_root, target.server_dir)
                                  for _ in range(REFERENCE_SAMPLES)])
    say(f"disk reference: {source.nbytes / 1e9:.2f} GB sequential write + cold read, {REFERENCE_SAMPLES} times")
    return _median_reference([disk_reference(source.nbytes, ckpt_root) for _ in range(REFERENCE_SAMPLES)])


def plan(approaches: list, opts: Options) -> list[tuple]:
    """(approach, repeat) in measuring order: round k of every approach, then
    round k+1 (interleaved), or each approach's repeats back to back."""
    if opts.interleave:
        return [(a, k) for k in range(1, opts.repeats + 1) for a in approaches]
    return [(a, k) for a in approaches for k in range(1, opts.repeats + 1)]


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
                           "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), **why})


def _run_locked(approaches, source, opts, out, on_row, say):
    run_id = opts.run_id or new_run_id()
    target = opts.storage
    skipped = {}
    if target is not None:
        approaches, skipped = s3_preflight(approaches, target, say)
        need = {}
        ckpt_root = target.path(run_id)
    else:
        need = check_disk(approaches, source, out, opts.keep, opts.disk_reference)
        ckpt_root = Path(opts.checkpoints) if opts.checkpoints else out / "checkpoints" / run_id
    results_path = Path(opts.results) if opts.results else out / "results" / f"{run_id}.jsonl"
    log = RunLog(results_path, run_id, len(approaches) * opts.repeats, on_row)

    say(f"run {run_id}: {len(approaches)} approach(es) x {opts.repeats} repeat(s) on {source.name} "
        f"({len(source.specs)} tensors, {source.n_params:,} parameters, {source.nbytes / 1e9:.2f} GB); "
        f"results -> {results_path}")
    remove_stale(target, ckpt_root, say)
    ref = reference(source, ckpt_root, target, say) if opts.disk_reference else {}
    where = {} if target is None else dict(storage=target.url, s3_delay_ms=target.delay_ms,
                                           s3_server_dir=target.server_dir, skipped=skipped)
    env = environment_record(run_id, out, model=source.name, n_tensors=len(source.specs),
                             n_params=source.n_params, source_bytes=source.nbytes, repeats=opts.repeats,
                             approaches=[a.name for a in approaches], disk_estimate_bytes=need, **where, **ref)
    log.write(env)

    say("recording per-tensor digests of the source")
    sd = source.materialize()
    expected = expected_digests(sd, {a.stored_dtype for a in approaches})
    del sd
    gc.collect()

    try:
        for a, k in plan(approaches, opts):
            log.add(measure_approach(a, source, expected, ckpt_root / a.name, k, run_id, opts))
            if not (opts.keep and k == opts.repeats):  # one checkpoint on disk at a time; keep: the last
                remove_checkpoint(ckpt_root / a.name)
    except KeyboardInterrupt:
        log.end(False, interrupted="KeyboardInterrupt")  # a SIGKILL leaves no end record: incomplete too
        raise
    if not opts.keep:
        remove_checkpoint(ckpt_root)
    log.end(True)
    return env | {"results_path": str(results_path)}, log.rows
