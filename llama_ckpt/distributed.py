"""Sharded checkpoints written and read by many processes over torch.distributed.

``python -m llama_ckpt run --world-size N [--load-world-size M]`` starts N
processes (``torch.multiprocessing``, spawn) joined by torch.distributed on
the gloo backend (CPU), has them save one logical checkpoint together, then
starts M processes that load it back, each its own slice, verified against
digests of the same slice of the unsharded source.

Sharding: every tensor is split along its first dimension into contiguous
row blocks of ``ceil(rows / world)`` rows, rank r owning rows
``[r*s, min((r+1)*s, rows))`` (the last ranks may own fewer, or none); 1-D
tensors (norms) are split the same way. This is ``torch.chunk``'s split, the
one DTensor's ``Shard(0)`` uses, so every approach sees the same layout.

The approaches (:data:`SHARDED`):

- ``dcp-sharded``: each rank's rows as a DTensor (``Shard(0)`` on a CPU
  device mesh), ``torch.distributed.checkpoint`` save and load from all
  ranks; DCP reshards on load.
- ``ts-sharded``: one zarr array per tensor on the file kvstore (or S3);
  rank 0 creates the arrays, every rank writes its rows; chunk boundaries
  fall on shard boundaries (the row chunk divides the shard), so no two ranks
  write the same chunk.
- ``ts-sharded+ocdbt``: the same through one OCDBT database, with
  TensorStore's OCDBT coordinator (rank 0 starts the server and broadcasts its
  address) so that every rank commits into the same database.
- ``pytorch-per-rank``: each rank ``torch.save``s its own rows into
  ``rank<r>.pth``; a load on another number of ranks maps (``mmap``) every file
  overlapping its slice and copies out its rows.

Commit, as for one process: ranks write into ``<name>.tmp-<id>`` (rank 0 makes
it and broadcasts the name), each makes its own files durable, all meet at a
barrier, then rank 0 writes the manifest and ``COMMITTED`` and renames. A rank
that dies before that barrier leaves no committed checkpoint; the others fail
their next collective (gloo notices the closed connection, or the collective
timeout ends the wait) and exit with an error naming the step.

Timing (MLPerf Storage's definitions): each rank's own write time (until its
bytes are durable) and bytes; the checkpoint time is from the barrier that
starts every rank together to the commit, i.e. the slowest rank plus the
commit; aggregate throughput = all ranks' bytes / checkpoint time. A load's
time is the slowest rank's.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import sys
import time
import traceback
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch

from .errors import UserError

COLLECTIVE_TIMEOUT_S = 120  # a rank waiting longer than this on the others gives up with an error
RANK_GROUP_TIMEOUT_S = 3600  # a group of ranks still running after this is killed
FAULT_ENV = "LLAMA_CKPT_FAULT"  # tests: "kill-rank-R-mid-save" SIGKILLs rank R half way through its save
RANK_OVERHEAD = 500 << 20  # a rank's interpreter, torch and TensorStore, measured ~0.4 GB here
TARGET_CHUNK = 16 << 20  # ts-sharded: row chunks of at most this many bytes, dividing the shard


def shard_rows(rows: int, rank: int, world: int) -> tuple[int, int]:
    """Rank ``rank``'s rows [start, stop) of a dimension of ``rows`` split in
    ``world`` contiguous blocks of ceil(rows / world) (torch.chunk's split)."""
    s = max(1, math.ceil(rows / world))
    start = min(rows, rank * s)
    return start, min(rows, start + s)


def row_chunk(shape: tuple[int, ...], itemsize: int, world: int) -> int:
    """Rows per chunk for ts-sharded: the largest divisor of the shard's rows
    whose chunk is at most TARGET_CHUNK bytes, so chunk boundaries fall on
    shard boundaries."""
    s = max(1, math.ceil(shape[0] / world)) if shape else 1
    row_bytes = itemsize * math.prod(shape[1:]) if len(shape) > 1 else itemsize
    best = 1
    for d in range(1, int(math.isqrt(s)) + 1):
        if s % d == 0:
            for c in (d, s // d):
                if c * row_bytes <= TARGET_CHUNK and c > best:
                    best = c
    return best


# -- the approaches -------------------------------------------------------------
@dataclass(frozen=True)
class Sharded:
    name: str
    description: str
    s3_unsupported: str | None = None

    @property
    def stored_dtype(self) -> torch.dtype:
        return torch.float32


SHARDED: dict[str, Sharded] = {a.name: a for a in [
    Sharded("dcp-sharded", "torch.distributed.checkpoint from every rank, each rank's rows as a DTensor "
            "(Shard(0)); resharded by DCP on load",
            s3_unsupported="DCP's FileSystemWriter writes a local directory; its fsspec writer would need s3fs"),
    Sharded("ts-sharded", "zarr arrays on the file kvstore, every rank writes its rows; chunks aligned to "
            "the shards (<= 16 MiB), one transaction per rank"),
    Sharded("ts-sharded+ocdbt", "the same in one OCDBT database, ranks committing through TensorStore's OCDBT "
            "coordinator (started by rank 0)"),
    Sharded("pytorch-per-rank", "torch.save of each rank's rows into rank<r>.pth; other world sizes map the "
            "overlapping files and copy out their rows"),
]}


def resolve(names: str) -> list[Sharded]:
    names_l = list(SHARDED) if names.strip() == "all" else [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in names_l if n not in SHARDED]
    if unknown:
        raise UserError(f"unknown approach {', '.join(map(repr, unknown))} with --world-size; valid: all, "
                        f"{', '.join(SHARDED)}")
    if not names_l:
        raise UserError(f"no approach given; valid with --world-size: all, {', '.join(SHARDED)}")
    return [SHARDED[n] for n in dict.fromkeys(names_l)]


# -- inside a rank ----------------------------------------------------------------
def _fault(stage: str, rank: int) -> None:
    if os.environ.get(FAULT_ENV) == f"kill-rank-{rank}-{stage}":
        os.kill(os.getpid(), signal.SIGKILL)


def _np(t: torch.Tensor):
    return t.detach().contiguous().numpy()


def _kv(root, sub: str) -> dict:
    from .s3 import S3Path

    if isinstance(root, S3Path):
        return root.kvstore(sub)
    return {"driver": "file", "path": f"{Path(root).resolve()}/{sub}/"}


def _ts_spec(root, name: str, ocdbt: bool, shape=None, chunk_rows=None) -> dict:
    from .s3 import S3Path

    if ocdbt:
        base = root.target.kvstore(root.key) if isinstance(root, S3Path) else f"file://{Path(root).resolve()}/"
        kv = {"driver": "ocdbt", "base": base, "path": f"{name}/"}
    else:
        kv = _kv(root, name)
    spec = {"driver": "zarr", "kvstore": kv}
    if shape is not None:
        spec["metadata"] = {"shape": list(shape), "chunks": [chunk_rows] + list(shape[1:]), "dtype": "<f4",
                            "compressor": None, "order": "C"}
        spec["store_data_equal_to_fill_value"] = True
    else:
        spec["fill_missing_data_reads"] = False  # strict: a missing chunk is an error
    return spec


def _ts_context(root, coordinator: str | None):
    import tensorstore as ts

    from .s3 import S3Path

    c: dict = {"file_io_concurrency": {"limit": 128}, "file_io_sync": True}
    if isinstance(root, S3Path):
        c = {"s3_request_concurrency": {"limit": 128},
             "s3_request_retries": {"max_retries": 2, "initial_delay": "200ms", "max_delay": "2s"}}
    if coordinator:
        c["ocdbt_coordinator"] = {"address": coordinator}
    return ts.Context(c)


def _contiguous_stride(shape) -> tuple[int, ...]:
    return tuple(math.prod(shape[i + 1:]) for i in range(len(shape)))


def _prepare(approach: str, world: int):
    """Imports and the device mesh, before the timer starts."""
    if approach == "dcp-sharded":
        import shutil
        import tempfile

        import torch.distributed as dist
        import torch.distributed.checkpoint as dcp
        from torch.distributed.tensor import DTensor, Shard, init_device_mesh

        mesh = init_device_mesh("cpu", (world,))
        # A throwaway save and load of one small DTensor: DTensor and DCP import
        # much of torch lazily on first use (~0.5 s here), which is process
        # start-up, not checkpointing; a training job pays it once.
        holder = [tempfile.mkdtemp(prefix="llama-ckpt-dcp-warmup-")] if dist.get_rank() == 0 else [None]
        dist.broadcast_object_list(holder, src=0)
        one = {"w": DTensor.from_local(torch.zeros(1, 4), mesh, [Shard(0)], run_check=False,
                                       shape=torch.Size((world, 4)), stride=(4, 1))}
        dcp.save(one, storage_writer=dcp.FileSystemWriter(holder[0], thread_count=1))
        dcp.load(one, storage_reader=dcp.FileSystemReader(holder[0]))
        dist.barrier()
        if dist.get_rank() == 0:
            shutil.rmtree(holder[0], ignore_errors=True)
        return mesh
    if approach.startswith("ts-"):
        import tensorstore  # noqa: F401
    return None


def _save_rank(approach: str, root, shards: dict, specs, rank: int, world: int, coordinator: str | None,
               mesh=None) -> int:
    """Write this rank's rows; return once they are durable. Returns the bytes written."""
    import torch.distributed as dist

    nbytes = sum(t.numel() * t.element_size() for t in shards.values())
    if approach == "pytorch-per-rank":
        from .s3 import S3Path

        if isinstance(root, S3Path):
            with (root / f"rank{rank}.pth").open_writer() as f:
                torch.save(shards, f)
        else:
            with open(Path(root) / f"rank{rank}.pth", "wb") as f:
                torch.save(shards, f)
                f.flush()
                _fault("mid-save", rank)  # written, not yet durable
                os.fsync(f.fileno())
        return nbytes
    if approach == "dcp-sharded":
        import torch.distributed.checkpoint as dcp
        from torch.distributed.tensor import DTensor, Shard

        sd = {s.name: DTensor.from_local(shards[s.name], mesh, [Shard(0)], run_check=False, shape=torch.Size(s.shape),
                                         stride=_contiguous_stride(s.shape)) for s in specs}
        _fault("mid-save", rank)
        dcp.save(sd, storage_writer=dcp.FileSystemWriter(str(root), sync_files=True, thread_count=1))
        return nbytes
    # TensorStore: rank 0 creates every array, then every rank writes its rows in one transaction
    import tensorstore as ts

    ocdbt = approach == "ts-sharded+ocdbt"
    ctx = _ts_context(root, coordinator)
    if rank == 0:
        for s in specs:
            ts.open(_ts_spec(root, s.name, ocdbt, s.shape, row_chunk(s.shape, 4, world)), create=True,
                    context=ctx).result()
    dist.barrier()
    txn = ts.Transaction()
    keep = []
    for i, s in enumerate(specs):
        a, b = shard_rows(s.shape[0], rank, world)
        if a == b:
            continue
        store = ts.open(_ts_spec(root, s.name, ocdbt), open=True, context=ctx, transaction=txn).result()
        arr = _np(shards[s.name])
        store[a:b].write(arr, can_reference_source_data_indefinitely=True).result()
        keep.append(arr)
        if i == len(specs) // 2:
            _fault("mid-save", rank)
    txn.commit_async().result()
    return nbytes


def _load_rank(approach: str, root, manifest: dict, specs, rank: int, world: int, mesh=None) -> dict:
    """This rank's rows of every tensor, in memory."""
    out = {}
    if approach == "pytorch-per-rank":
        from .s3 import S3Path

        saved_world = manifest["world_size"]
        files = {}
        for s in specs:
            a, b = shard_rows(s.shape[0], rank, world)
            parts = []
            for r in range(saved_world):
                sa, sb = shard_rows(s.shape[0], r, saved_world)
                lo, hi = max(a, sa), min(b, sb)
                if lo >= hi:
                    continue
                if r not in files:
                    if isinstance(root, S3Path):
                        import io

                        files[r] = torch.load(io.BytesIO((root / f"rank{r}.pth").read_bytes()), weights_only=True)
                    else:
                        files[r] = torch.load(Path(root) / f"rank{r}.pth", mmap=True, weights_only=True)
                parts.append(files[r][s.name][lo - sa:hi - sa])
            shape = (b - a,) + tuple(s.shape[1:])
            out[s.name] = torch.cat(parts).clone() if parts else torch.empty(shape)
        return out
    if approach == "dcp-sharded":
        import torch.distributed.checkpoint as dcp
        from torch.distributed.tensor import DTensor, Shard

        sd = {}
        for s in specs:
            a, b = shard_rows(s.shape[0], rank, world)
            local = torch.empty((b - a,) + tuple(s.shape[1:]))
            sd[s.name] = DTensor.from_local(local, mesh, [Shard(0)], run_check=False, shape=torch.Size(s.shape),
                                            stride=_contiguous_stride(s.shape))
        dcp.load(sd, storage_reader=dcp.FileSystemReader(str(root)))
        return {k: v.to_local() for k, v in sd.items()}
    import tensorstore as ts

    ocdbt = approach == "ts-sharded+ocdbt"
    ctx = _ts_context(root, None)
    pending = []
    for s in specs:
        a, b = shard_rows(s.shape[0], rank, world)
        store = ts.open(_ts_spec(root, s.name, ocdbt), open=True, read=True, context=ctx).result()
        pending.append((s.name, store[a:b].read()))
    for name, fut in pending:
        out[name] = torch.from_numpy(fut.result())
    return out


def _expected(seed: int, specs, rank: int, world: int) -> dict[str, str]:
    """SHA-256 of this rank's slice of every tensor, from the unsharded source."""
    from .model import seeded_tensor
    from .verify import tensor_digest

    return {s.name: tensor_digest(seeded_tensor(s, seed)[slice(*shard_rows(s.shape[0], rank, world))].contiguous())
            for s in specs}


def _peak_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def _worker(rank: int, job: dict) -> None:
    """One rank: join the group, do the job's save or load, write rank<r>.json."""
    import torch.distributed as dist

    from .model import TensorSpec, seeded_tensor
    from .s3 import S3Path, Target

    out = Path(job["report_dir"]) / f"rank{rank}.json"
    report: dict = {"rank": rank}
    step = "joining the process group"
    try:
        torch.set_num_threads(1)  # ranks share the machine's cores; say so beside the numbers
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(job["port"]))
        dist.init_process_group("gloo", rank=rank, world_size=job["world"],
                                timeout=timedelta(seconds=job.get("timeout", COLLECTIVE_TIMEOUT_S)))
        world = job["world"]
        specs = [TensorSpec(n, tuple(shape), torch.float32) for n, shape in job["specs"]]
        root = job["root"]
        if job.get("s3"):
            t = Target(**job["s3"])
            root = S3Path(t, root)
        else:
            root = Path(root)
        if job["kind"] == "save":
            step = "building this rank's rows"
            shards = {}
            for s in specs:
                shards[s.name] = seeded_tensor(s, job["seed"])[slice(*shard_rows(s.shape[0], rank, world))].clone()
            coordinator = None
            if job["approach"] == "ts-sharded+ocdbt":
                step = "starting the OCDBT coordinator"
                holder = [None]
                if rank == 0:
                    import tensorstore as ts

                    server = ts.ocdbt.DistributedCoordinatorServer({"bind_addresses": ["127.0.0.1:0"]})
                    holder = [f"127.0.0.1:{server.port}"]
                dist.broadcast_object_list(holder, src=0)
                coordinator = holder[0]
            step = "preparing"
            mesh = _prepare(job["approach"], world)
            step = "waiting for every rank to start the save"
            dist.barrier()
            t0 = time.perf_counter()
            step = "writing this rank's rows"
            nbytes = _save_rank(job["approach"], root, shards, specs, rank, world, coordinator, mesh)
            own = time.perf_counter() - t0
            step = "waiting for every rank's rows to be durable"
            dist.barrier()
            if rank == 0:
                step = "committing"
                _commit(root, job, specs)
            step = "waiting for the commit"
            dist.barrier()
            report.update(write_s=own, checkpoint_s=time.perf_counter() - t0, bytes=nbytes)
        else:
            step = "reading the manifest"
            from .approaches import read_manifest

            manifest = read_manifest(root)
            step = "recording the digests of this rank's slice"
            expected = _expected(job["seed"], specs, rank, world)
            step = "preparing"
            mesh = _prepare(job["approach"], world)
            step = "waiting for every rank to start the load"
            dist.barrier()
            t0 = time.perf_counter()
            step = "reading this rank's rows"
            got = _load_rank(job["approach"], root, manifest, specs, rank, world, mesh)
            own = time.perf_counter() - t0
            step = "waiting for every rank's load"
            dist.barrier()
            total = time.perf_counter() - t0
            from .verify import tensor_digest

            bad = [n for n, d in expected.items() if n not in got or tensor_digest(got[n].contiguous()) != d]
            report.update(read_s=own, checkpoint_s=total, verified=not bad, bad=bad[:5],
                          bytes=sum(t.numel() * t.element_size() for t in got.values()))
        report["peak_rss_bytes"] = _peak_rss()
        dist.barrier()
        dist.destroy_process_group()
    except BaseException as exc:  # noqa: BLE001 - reported, then the rank exits non-zero
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        report["error"] = f"rank {rank} failed while {step}: {type(exc).__name__}: {msg[:300]}"
        report["traceback"] = traceback.format_exc()[-2000:]
        out.write_text(json.dumps(report))
        sys.exit(1)
    out.write_text(json.dumps(report))


def _commit(root, job: dict, specs) -> None:
    """Rank 0, after every rank's rows are durable: the suite's commit."""
    from .approaches import commit
    from .s3 import S3Path

    manifest = {"approach": job["approach"], "mechanism": "Sharded", "world_size": job["world"],
                "sharding": "rows: ceil(rows / world_size) per rank, torch.chunk's split",
                "tensors": [{"name": s.name, "shape": list(s.shape), "dtype": "float32"} for s in specs]}
    commit(root, root if isinstance(root, S3Path) else Path(job["final"]), manifest)


# -- the parent -------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(job: dict, world: int, timeout: float) -> list[dict]:
    """Run ``world`` ranks of ``job`` and return their reports (rank order).
    A rank that dies without a report is reported as such; if one fails, the
    others get a grace period to fail their collectives by themselves, then
    are killed."""
    import tempfile

    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="llama-ckpt-ranks-") as rd:
        job = dict(job, world=world, port=_free_port(), report_dir=rd)
        procs = [ctx.Process(target=_worker, args=(r, job), daemon=False) for r in range(world)]
        for p in procs:
            p.start()
        deadline = time.monotonic() + timeout
        failed_at = None
        while any(p.is_alive() for p in procs):
            time.sleep(0.05)
            if failed_at is None and any(p.exitcode not in (None, 0) for p in procs):
                failed_at = time.monotonic()
            grace_over = failed_at is not None and time.monotonic() - failed_at > 30
            if grace_over or time.monotonic() > deadline:
                for p in procs:
                    if p.is_alive():
                        p.kill()
        for p in procs:
            p.join()
        reports = []
        for r, p in enumerate(procs):
            f = Path(rd) / f"rank{r}.json"
            rep = json.loads(f.read_text()) if f.exists() else {"rank": r}
            if p.exitcode != 0 and "error" not in rep:
                how = f"killed by signal {-p.exitcode}" if p.exitcode and p.exitcode < 0 else f"exit code {p.exitcode}"
                rep["error"] = f"rank {r} died ({how}) without a report"
            rep["exitcode"] = p.exitcode
            reports.append(rep)
        return reports


def measure_sharded(approach: Sharded, source, world: int, load_world: int, repeat: int, run_id: str,
                    ckpt_path) -> dict:
    """One save on ``world`` ranks and one cold load on ``load_world`` ranks: one row."""
    from datetime import datetime, timezone

    from . import fsutil, s3
    from .results import measurement_row

    on_s3 = isinstance(ckpt_path, s3.S3Path)
    base = dict(run_id=run_id, approach=approach.name, model=source.name, path=str(ckpt_path), knobs={},
                n_tensors=len(source.specs), n_params=source.n_params, tensor_set=source.tensor_set_digest(),
                repeat=repeat, stored_dtype="float32", source_dtype="float32", world_size=world,
                load_world_size=load_world, storage=ckpt_path.target.url if on_s3 else "local",
                s3_delay_ms=ckpt_path.target.delay_ms if on_s3 else None)
    finished = lambda: datetime.now(timezone.utc).isoformat(timespec="seconds")  # noqa: E731
    s3job = None
    if on_s3:
        t = ckpt_path.target
        s3job = dict(bucket=t.bucket, prefix=t.prefix, endpoint=t.endpoint, delay_ms=t.delay_ms,
                     server_dir=t.server_dir)
    if approach.s3_unsupported and on_s3:
        return measurement_row(**base, verified=False, error=f"{approach.name} cannot target S3: "
                               f"{approach.s3_unsupported}", finished_at=finished())
    timeout = RANK_GROUP_TIMEOUT_S
    if on_s3:
        ckpt_path.remove()
        tmp = ckpt_path
        root = ckpt_path.key
    else:
        fsutil.remove(ckpt_path)
        ckpt_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = ckpt_path.with_name(f"{ckpt_path.name}.tmp-{uuid.uuid4().hex[:8]}")
        tmp.mkdir()
        root = str(tmp)
    job = dict(kind="save", approach=approach.name, specs=[(s.name, list(s.shape)) for s in source.specs],
               seed=source.seed, root=root, final=str(ckpt_path), s3=s3job)
    saves = launch(job, world, timeout)
    errors = [r["error"] for r in saves if r.get("error")]
    if errors:
        # no commit happened: the temporary (or the uncommitted prefix) goes
        ckpt_path.remove() if on_s3 else fsutil.remove(tmp)
        return measurement_row(**base, verified=False, ranks_save=saves, error="save failed: " + "; ".join(errors),
                               finished_at=finished())
    if on_s3:
        n_obj, n_bytes = ckpt_path.footprint()
        fp = fsutil.Footprint(n_files=n_obj, bytes_on_disk=n_bytes, bytes_apparent=n_bytes)
        sdir = ckpt_path.target.server_dir
        cold, frac = s3.evict_server(sdir) if sdir else (None, None)
    else:
        fp = fsutil.footprint(ckpt_path)
        cold, frac = fsutil.evict_and_confirm(ckpt_path)
    job = dict(job, kind="load", root=ckpt_path.key if on_s3 else str(ckpt_path))
    loads = launch(job, load_world, timeout)
    errors = [r["error"] for r in loads if r.get("error")]
    unverified = [f"rank {r['rank']}: {', '.join(r.get('bad', []))}" for r in loads
                  if not r.get("error") and not r.get("verified")]
    save_s = max(r["checkpoint_s"] for r in saves)
    row = measurement_row(
        **base, save_s=save_s, load_s=max((r.get("checkpoint_s") or 0) for r in loads) if not errors else None,
        load_cold=cold, resident_after_evict=frac, bytes_on_disk=fp.bytes_on_disk, bytes_apparent=fp.bytes_apparent,
        n_files=fp.n_files, payload_bytes=source.nbytes,
        peak_rss_save_bytes=max(r.get("peak_rss_bytes", 0) for r in saves),
        peak_rss_load_bytes=max((r.get("peak_rss_bytes") or 0) for r in loads),
        ranks_save=[{k: r.get(k) for k in ("rank", "write_s", "checkpoint_s", "bytes", "peak_rss_bytes")} for r in saves],
        ranks_load=[{k: r.get(k) for k in ("rank", "read_s", "checkpoint_s", "bytes", "peak_rss_bytes", "verified")}
                    for r in loads],
        verified=not errors and not unverified,
        error=("load failed: " + "; ".join(errors)) if errors else
        (f"verification failed: {'; '.join(unverified)}" if unverified else None),
        finished_at=finished())
    return row


def run(approaches: list[Sharded], source, opts, world: int, load_world: int | None = None,
        on_row=lambda r: None, say=lambda s: None) -> tuple[dict, list[dict]]:
    """Measure each sharded approach ``opts.repeats`` times (interleaved):
    a save on ``world`` ranks, a cold load on ``load_world`` (default: the
    same) ranks. Rows go to the results file as they finish."""
    import psutil

    from . import measure
    from .model import PresetModel

    load_world = load_world or world
    if world < 1 or load_world < 1:
        raise UserError(f"--world-size and --load-world-size must be at least 1, got {world} and {load_world}")
    if not isinstance(source, PresetModel):
        raise UserError("--world-size needs a model preset (--model): every rank builds its own rows of the "
                        "seeded weights; --model-path is not supported there")
    if opts.repeats < 1:
        raise UserError(f"--repeats must be at least 1, got {opts.repeats}")
    # every rank holds its rows, builds one whole tensor at a time, and starts its own interpreter and torch
    ranks = max(world, load_world)
    need = 1.2 * source.nbytes + ranks * (max(s.nbytes for s in source.specs) + RANK_OVERHEAD)
    if need > psutil.virtual_memory().available:
        raise UserError(f"{source.name} on {ranks} ranks needs about {need / 1e9:.1f} GB of memory; "
                        f"{psutil.virtual_memory().available / 1e9:.1f} GB available")
    return measure.locked(opts, say, lambda o, out: _run(approaches, source, o, world, load_world, out, on_row, say))


def _run(approaches, source, opts, world, load_world, out, on_row, say):
    from . import measure
    from .results import environment_record

    run_id = opts.run_id or measure.new_run_id()
    target = opts.storage
    results_path = Path(opts.results) if opts.results else out / "results" / f"{run_id}.jsonl"
    skipped = {}
    if target is not None:
        approaches, skipped = measure.s3_preflight(approaches, target, say)
        ckpt_root = target.path(run_id)
    else:
        if opts.disk_reference:
            measure.check_disk([], source, out, False, opts.disk_reference)
        ckpt_root = Path(opts.checkpoints) if opts.checkpoints else out / "checkpoints" / run_id
    measure.remove_stale(target, ckpt_root, say)
    log = measure.RunLog(results_path, run_id, len(approaches) * opts.repeats, on_row)
    cores = len(os.sched_getaffinity(0))
    say(f"run {run_id}: {len(approaches)} sharded approach(es) x {opts.repeats} repeat(s) on {source.name}, "
        f"saved by {world} rank(s), loaded by {load_world}; {cores} cores"
        + (f": ranks beyond {cores} share them" if max(world, load_world) > cores else "")
        + f"; results -> {results_path}")
    # the disk reference only: no object reference for sharded runs on S3
    ref = measure.reference(source, ckpt_root, None, say) if opts.disk_reference and target is None else {}
    env = environment_record(run_id, out, model=source.name, n_tensors=len(source.specs), n_params=source.n_params,
                             source_bytes=source.nbytes, repeats=opts.repeats, approaches=[a.name for a in approaches],
                             world_size=world, load_world_size=load_world, cores=cores,
                             **({} if target is None else dict(storage=target.url, s3_delay_ms=target.delay_ms,
                                                               skipped=skipped)),
                             **ref)
    log.write(env)
    try:
        for a, k in measure.plan(approaches, opts):
            path = ckpt_root / f"{a.name}-w{world}"
            log.add(measure_sharded(a, source, world, load_world, k, run_id, path))
            if not (opts.keep and k == opts.repeats):
                measure.remove_checkpoint(path)
    except KeyboardInterrupt:
        log.end(False, interrupted="KeyboardInterrupt")
        raise
    if not opts.keep:
        measure.remove_checkpoint(ckpt_root)
    log.end(True)
    return env | {"results_path": str(results_path)}, log.rows
