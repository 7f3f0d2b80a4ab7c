"""Ranks: N processes joined by torch.distributed (gloo, CPU) that save one
logical checkpoint together, or load one back, each its own rows.

Sharding: every tensor is split along its first dimension into contiguous
row blocks (:func:`llama_ckpt.checkpoint.shard_rows`, torch.chunk's split,
the one DTensor's ``Shard(0)`` uses), so every format sees the same layout.
Every rank builds only its own rows of the preset's seeded weights.

Commit, as for one process: the parent stages the checkpoint; every rank
writes its files and makes them durable; all meet at a barrier; rank 0
writes the manifest (with each shard's rows and SHA-256, gathered from the
ranks before the timer started) and the marker, and publishes. A rank that
dies before that barrier leaves no committed checkpoint; the others fail
their next collective (gloo notices the closed connection, or the collective
timeout ends the wait) and exit with an error naming the step.

One rank's part is a :class:`Job`, the same whether this suite spawned the
rank (:func:`launch`, :func:`worker`: one host) or a launcher started it
(:mod:`llama_ckpt.bench.cluster`: torchrun, any number of nodes). Each rank
reports its own times, bytes, storage requests, peak RSS and where it ran
(rank, node, local rank, host).

Timing (MLPerf Storage's definitions): each rank's own write time (until its
bytes are durable) and bytes; the checkpoint time is from the barrier that
starts every rank together to the commit, i.e. the slowest rank plus the
commit. A load's time is the slowest rank's.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import tempfile
import time
import traceback
from datetime import timedelta
from pathlib import Path

import torch

from .. import checkpoint
from ..digests import tensor_digest
from ..formats.base import RankContext
from ..model import DRAW, parse_model, seeded_tensor
from ..recorders import CpuIO, PeakRSS
from ..registry import approach_of

COLLECTIVE_TIMEOUT_S = 120  # a rank waiting longer than this on the others gives up with an error
RANK_GROUP_TIMEOUT_S = 3600  # a group of ranks still running after this is killed
FAULT_ENV = "LLAMA_CKPT_FAULT"  # tests: "kill-rank-R-mid-save" SIGKILLs rank R half way through its save


def _fault(stage: str, rank: int):
    def hit():
        if os.environ.get(FAULT_ENV) == f"kill-rank-{rank}-{stage}":
            os.kill(os.getpid(), signal.SIGKILL)
    return hit


def _own_rows(specs, seed: int, model: str, rank: int, world: int,
              keep: bool = True) -> tuple[dict, dict[str, dict]]:
    """This rank's rows of every tensor of the unsharded source (kept only
    when ``keep``: a load needs just their digests), and per tensor the rows
    and their SHA-256, taken before anything is written. Only these rows are
    drawn (``seeded_tensor``'s ``rows``)."""
    rows, digests, origin = {}, {}, parse_model(model)[1]
    for s in specs:
        a, b = checkpoint.shard_rows(s.shape[0], rank, world)
        mine = seeded_tensor(s, seed, origin, rows=(a, b))
        digests[s.name] = {"rows": [a, b], "sha256": tensor_digest(mine)}
        if keep:
            rows[s.name] = mine
    return rows, digests


def _shard_digests(specs, seed: int, model: str, rank: int, world: int) -> dict[str, dict]:
    """This rank's rows of every tensor of the unsharded source: rows and SHA-256."""
    return _own_rows(specs, seed, model, rank, world, keep=False)[1]


def topology(rank: int) -> dict:
    """Where this rank runs: its rank, its node (torchrun's ``GROUP_RANK``;
    0 when this suite spawned the ranks itself), its rank on that node and
    the host's name."""
    return {"rank": rank, "node": int(os.environ.get("GROUP_RANK", 0)),
            "local_rank": int(os.environ.get("LOCAL_RANK", rank)), "host": socket.gethostname()}


class Job:
    """One rank's part of a save or a load, in a process group already
    joined; ``step`` names what it is doing, for the error message."""

    def __init__(self, job: dict, rank: int, world: int, dist):
        self.job, self.rank, self.world, self.dist = job, rank, world, dist
        self.step = "starting"
        self.fmt = approach_of(job["approach"])
        self.ctx = RankContext(rank, world, dist, _fault("mid-save", rank))
        self.rss: PeakRSS | None = None  # the sampler around the step (run)

    def save(self) -> dict:
        job, dist, rank, world, fmt, ctx = self.job, self.dist, self.rank, self.world, self.fmt, self.ctx
        specs, staged = job["specs"], job["staged"]
        self.step = "building this rank's rows and recording their digests"
        shards, mine = _own_rows(specs, job["seed"], job["model"], rank, world)
        every = [None] * world
        dist.all_gather_object(every, mine)
        self.step = "preparing"
        fmt.prepare_rank(ctx, staged, saving=True)
        self.step = "waiting for every rank to start the save"
        dist.barrier()
        with staged.count_requests() as requests, CpuIO(self.rss) as work:
            t0 = time.perf_counter()
            self.step = "writing this rank's rows"
            fmt.write_rank(shards, staged, specs, ctx)
            own = time.perf_counter() - t0
            self.step = "waiting for every rank's rows to be durable"
            dist.barrier()
            if rank == 0:
                self.step = "committing"
                tensors = [{"name": s.name, "shape": list(s.shape), "dtype": str(fmt.stored(s.dtype)).removeprefix(
                    "torch."), "shards": [every[r][s.name] for r in range(world)]} for s in specs]
                checkpoint.commit(job["final"], staged, checkpoint.manifest(
                    fmt, tensors, world_size=world, sharding=checkpoint.SHARDING,
                    source={"model": job["model"], "seed": job["seed"], "draw": DRAW}))
            self.step = "waiting for the commit"
            dist.barrier()
            total = time.perf_counter() - t0
        return dict(write_s=own, checkpoint_s=total, requests=requests, work=work.result,
                    bytes=sum(t.numel() * t.element_size() for t in shards.values()))

    def load(self) -> dict:
        job, dist, rank, world, fmt, ctx = self.job, self.dist, self.rank, self.world, self.fmt, self.ctx
        final, specs = job["final"], job["specs"]
        self.step = "reading the manifest"
        man = checkpoint.read_manifest(final)
        self.step = "recording the digests of this rank's slice"
        expected = {n: d["sha256"] for n, d in _shard_digests(specs, job["seed"], job["model"], rank, world).items()}
        self.step = "preparing"
        fmt.prepare_rank(ctx, final, saving=False)
        self.step = "waiting for every rank to start the load"
        dist.barrier()
        with final.count_requests() as requests, CpuIO(self.rss) as work:
            t0 = time.perf_counter()
            self.step = "reading this rank's rows"
            got = fmt.read_rank(final, man, specs, ctx)
            own = time.perf_counter() - t0
            self.step = "waiting for every rank's load"
            dist.barrier()
            total = time.perf_counter() - t0
        bad = [n for n, d in expected.items() if n not in got or tensor_digest(got[n].contiguous()) != d]
        return dict(read_s=own, checkpoint_s=total, verified=not bad, bad=bad[:5], requests=requests,
                    work=work.result,
                    bytes=sum(t.numel() * t.element_size() for t in got.values()))

    def run(self) -> dict:
        """This rank's report; an exception is re-raised as a RankFailed naming the step."""
        report = topology(self.rank)
        try:
            with PeakRSS() as rss:  # this step's peak: a launched rank does every step in one process
                self.rss = rss  # its samples' own reads are left out of the rank's counted work
                report.update(self.save() if self.job["kind"] == "save" else self.load())
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - named with the step, then the rank ends
            raise RankFailed(self.rank, self.step, exc) from exc
        report.update(peak_rss_bytes=rss.peak, peak_rss_anon_bytes=rss.peak_anon, peak_rss_file_bytes=rss.peak_file)
        return report


class RankFailed(BaseException):
    """A rank could not do its part. Not an ``Exception``: in a launched job
    it must end the job, never become one approach's error row while the
    other ranks wait in a collective."""

    def __init__(self, rank: int, step: str, exc: BaseException):
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        super().__init__(f"rank {rank} failed while {step}: {type(exc).__name__}: {msg[:300]}")


def worker(rank: int, job: dict) -> None:
    """One rank spawned by :func:`launch`: join the group, do the job's save
    or load, write rank<r>.json."""
    import torch.distributed as dist

    # TensorStore's gRPC (the OCDBT coordinator) logs every connection its
    # server closes at exit at INFO level: keep the console to the suite's lines
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    out = Path(job["report_dir"]) / f"rank{rank}.json"
    report: dict = topology(rank)
    try:
        torch.set_num_threads(1)  # ranks share the machine's cores; said beside the numbers
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(job["port"]))
        world = job["world"]
        try:
            dist.init_process_group("gloo", rank=rank, world_size=world,
                                    timeout=timedelta(seconds=job.get("timeout", COLLECTIVE_TIMEOUT_S)))
        except BaseException as exc:  # noqa: BLE001
            raise RankFailed(rank, "joining the process group", exc) from exc
        report = Job(job, rank, world, dist).run()
        dist.barrier()
        dist.destroy_process_group()
    except BaseException as exc:  # noqa: BLE001 - reported, then the rank exits non-zero
        report["error"] = (str(exc) if isinstance(exc, RankFailed)
                           else f"rank {rank} failed: {type(exc).__name__}: {exc}")
        report["traceback"] = traceback.format_exc()[-2000:]
        out.write_text(json.dumps(report))
        sys.exit(1)
    out.write_text(json.dumps(report))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(job: dict, world: int, timeout: float = RANK_GROUP_TIMEOUT_S) -> list[dict]:
    """Run ``world`` ranks of ``job`` and return their reports (rank order).
    A rank that dies without a report is reported as such; if one fails, the
    others get a grace period to fail their collectives by themselves, then
    are killed."""
    import torch.multiprocessing as mp

    # A fork server that has imported torch and this module once: every
    # rank forks from it instead of starting a fresh interpreter and
    # importing torch, which takes far longer. Outside the timer either way.
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    with tempfile.TemporaryDirectory(prefix="llama-ckpt-ranks-") as rd:
        job = dict(job, world=world, port=free_port(), report_dir=rd)
        procs = [ctx.Process(target=worker, args=(r, job), daemon=False) for r in range(world)]
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


# -- the ranks' reports as one row's fields -------------------------------------------------
def add_counts(*counts: dict | None) -> dict | None:
    """Counts of several processes added up (requests, work; None: none counted, such as requests off S3)."""
    if all(c is None for c in counts):
        return None
    out: dict[str, int | None] = {}
    for c in counts:
        for k, v in (c or {}).items():
            if v is None or (k in out and out[k] is None):  # not counted by one of them: not counted
                out[k] = None
            else:
                out[k] = max(out.get(k, 0), v) if k in ("busiest_thread_s", "ended_threads_s") else out.get(k, 0) + v
    return out


def load_verdict(loads: list[dict]) -> tuple[list[str], str | None]:
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
    errors, error = load_verdict(loads)
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
