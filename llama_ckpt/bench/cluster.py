"""One rank of a job started by a launcher: ``torchrun`` on one or many
nodes (under SLURM, ``srun`` starts one ``torchrun`` per node).

``python -m llama_ckpt run`` under a launcher takes its rank, world size,
local rank and node from the launcher's environment and joins the job's
process group (gloo, ``env://``) instead of spawning ranks. Rank 0 leads:
it does what the parent does when this suite spawns the ranks itself (the
output lock, the storage's preflight, the disk or object reference, the
results file, staging and removing checkpoints) and sends every other rank
each step, which all ranks then do together: save, evict (one rank per
node), load. Every rank's report (its own timings, bytes, requests, peak
RSS, node and host) comes back to rank 0 and into the row.

The storage must be one every rank sees (a shared file system or a
bucket): rank 0 checks it once with a probe file every rank must read, and
each rank writes only its own rows. The commit stays atomic across nodes:
rank 0 commits after a barrier that every rank reaches once its bytes are
durable.

A rank that fails ends the job (the launcher stops the others): its error
names the rank, the step and the exception; the results file then has no
end record, so the run reads as incomplete.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from .. import checkpoint, fsutil
from ..errors import FAILURES, UserError
from ..store import TMP_TAG
from . import ranks

LAUNCHER_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
# Rank 0 alone measures the reference (minutes on the 3B model) while the
# others wait in a collective; a failed rank ends the job through the launcher.
JOB_TIMEOUT_S = 3600


def launched() -> bool:
    """Started by torchrun (or another launcher setting its variables)."""
    return all(k in os.environ for k in LAUNCHER_ENV)


@dataclass
class Group:
    """This process's place in a launched job."""

    rank: int
    world: int
    local_rank: int
    local_world: int
    dist: Any

    @property
    def lead(self) -> bool:
        return self.rank == 0

    def bcast(self, obj=None):
        holder = [obj]
        self.dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def gather(self, obj) -> list | None:
        out = [None] * self.world if self.lead else None
        self.dist.gather_object(obj, out, dst=0)
        return out


def join() -> Group:
    import torch
    import torch.distributed as dist

    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # see ranks.worker
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // local_world))  # a node's ranks share its cores
    try:
        dist.init_process_group("gloo", timeout=timedelta(seconds=JOB_TIMEOUT_S))
    except Exception as exc:  # noqa: BLE001 - one line, not a traceback
        raise UserError(f"could not join the launcher's process group at "
                        f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}: {exc}") from None
    return Group(dist.get_rank(), dist.get_world_size(), int(os.environ["LOCAL_RANK"]), local_world, dist)


# -- the steps every rank does together -------------------------------------------------
def _do(group: Group, cmd: str, arg):
    if cmd == "evict":  # one rank per node drops the node's caches
        return arg.evict() if group.local_rank == 0 else None
    if cmd == "settle":  # one rank per node writes back and drops the node's caches before a save
        return fsutil.settle() if group.local_rank == 0 else None
    if cmd == "probe":
        loc, token = arg
        try:
            return loc.read_text("token") == token
        except FAILURES:  # not there: this rank's node does not share the storage
            return False
    if cmd == "job":
        return ranks.Job(arg, group.rank, group.world, group.dist).run()
    raise ValueError(f"unknown step {cmd!r}")


def _answer(group: Group, cmd: str, arg):
    """This rank's answer, or the exception it raised: every rank reaches the
    gather either way, so a failed step never leaves the collectives out of
    step (a rank's failed save or load, RankFailed, still ends the job)."""
    try:
        return _do(group, cmd, arg)
    except FAILURES as exc:
        return exc


def ask(group: Group, cmd: str, arg=None) -> list:
    """Rank 0: every rank does ``cmd`` (this one too); their answers in rank
    order. The first rank's exception, if any, is raised here after all answered."""
    try:
        group.bcast((cmd, arg))
    except FAILURES as exc:  # the group is broken (a rank died): the job cannot go on
        raise ranks.RankFailed(group.rank, f"sending step {cmd!r} to the other ranks", exc) from exc
    mine = _answer(group, cmd, arg)
    try:
        answers = group.gather(None if isinstance(mine, BaseException) else mine)
    except FAILURES as exc:
        raise ranks.RankFailed(group.rank, f"gathering the answers to step {cmd!r}", exc) from exc
    answers[0] = mine
    failed = next((a for a in answers if isinstance(a, BaseException)), None)
    if failed is not None:
        raise failed
    return answers


def serve(group: Group) -> int:
    """Ranks other than 0: do what rank 0 sends until it says done; the exit
    code rank 0 ends with. Every rank ends with it: torchrun keeps the agents
    of ranks that succeeded waiting (5 minutes) for a node that failed."""
    while True:
        cmd, arg = group.bcast()
        if cmd == "done":
            _leave(group)
            return arg
        answer = _answer(group, cmd, arg)
        if isinstance(answer, BaseException):  # its text travels (any exception pickles as this)
            answer = RuntimeError(f"rank {group.rank}: {type(answer).__name__}: {answer}")
        group.gather(answer)


def _leave(group: Group) -> None:
    """Every rank leaves the group together; a group left to the interpreter's
    exit can abort the process (gloo's threads)."""
    group.dist.barrier()
    group.dist.destroy_process_group()


class Outcome:
    code = 1  # rank 0's exit code; 1 unless the run said otherwise (an error, for one)


@contextlib.contextmanager
def leading(group: Group):
    """Rank 0's side: ``with leading(group) as outcome: ...; outcome.code = 0``.
    Whatever happens, the others are then told to stop with rank 0's exit
    code. A failed rank (RankFailed) ends the job: the collectives cannot go on."""
    outcome = Outcome()
    try:
        yield outcome
    except ranks.RankFailed as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        os._exit(1)  # the launcher stops the other ranks
    except UserError:
        outcome.code = 2
        raise
    finally:
        group.bcast(("done", outcome.code))
        _leave(group)


def check_shared(group: Group, root) -> None:
    """Every rank sees what rank 0 writes under ``root``, or one error naming
    the first that does not."""
    probe = root / f"ranks{TMP_TAG}probe-{uuid.uuid4().hex[:8]}"  # an interrupted one is stale
    token = uuid.uuid4().hex
    with probe.open_write("token") as f:
        f.write(token.encode())
    try:
        seen = ask(group, "probe", (probe, token))
    finally:
        probe.remove()
    blind = [r for r, ok in enumerate(seen) if not ok]
    if blind:
        raise UserError(f"the checkpoint storage {root} is not shared by every rank: rank {blind[0]} "
                        f"({len(blind)} of {group.world}) does not see a file rank 0 wrote there; on a cluster "
                        "put --out on a file system every node mounts, or use --storage s3://BUCKET/PREFIX")


def evict(group: Group, loc) -> tuple:
    """Rank 0: ``loc`` dropped from every node's caches (one rank per node):
    (cold on every node, or None where unknown; the largest share still resident)."""
    evicted = [e for e in ask(group, "evict", loc) if e is not None]
    cold = None if any(c is None for c, _ in evicted) else all(c for c, _ in evicted)
    fracs = [f for _, f in evicted if f is not None]
    return cold, max(fracs) if fracs else None


def settle(group: Group) -> bool:
    """Rank 0: every node's caches written back and dropped (one rank per
    node, ``fsutil.settle``); True only where every node's were."""
    return all(d for d in ask(group, "settle") if d is not None)


def sharded(group: Group, job: dict, loc) -> tuple:
    """Rank 0: one save and one cold load of ``job`` on every rank of the
    job, at ``loc``. Returns (save reports, load reports, footprint, cold,
    resident fraction, and None twice: every request is in the ranks' own
    counts, rank 0's included, since it runs its part in this process)."""
    staged = loc.stage()
    try:
        saves = ask(group, "job", dict(job, staged=staged))
    except FAILURES as exc:
        checkpoint.discard(loc, staged, exc)  # no commit happened
        raise
    fp = loc.footprint()
    cold, frac = evict(group, loc)
    loads = ask(group, "job", dict(job, kind="load"))
    return saves, loads, fp, cold, frac, None, None


# -- starting jobs (tests, and 06 on one machine) ------------------------------------------
def torchrun(nnodes: int, nproc: int, args: list[str], timeout: float = 3600, cwds: list | None = None) -> list:
    """``nnodes`` torchrun launches of ``nproc`` ranks each on this machine,
    side by side, acting as nodes of one job (c10d rendezvous on loopback),
    each running ``python -m llama_ckpt ARGS``; their CompletedProcesses in
    launch order (``cwds``: each launch's working directory, as on machines
    of their own). On a cluster each node runs one such torchrun itself."""
    import subprocess
    from concurrent.futures import ThreadPoolExecutor

    port = ranks.free_port()

    def one(node: int):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nnodes), "--nproc-per-node", str(nproc),
               "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", f"llama-ckpt-{port}",
               "-m", "llama_ckpt", *args]
        # a session of its own: on a timeout torchrun and every rank it started go, not torchrun alone
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                              cwd=cwds[node] if cwds else None) as p:
            try:
                out, err = p.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                out, err = p.communicate()
                err += f"\nkilled after {timeout:g} s"
            return subprocess.CompletedProcess(cmd, p.returncode, out, err)

    with ThreadPoolExecutor(nnodes) as pool:
        return list(pool.map(one, range(nnodes)))
