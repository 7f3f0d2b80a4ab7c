"""Checkpoints taken inside a training loop: ways to save that give the loop
back before the bytes are durable.

A :class:`Saver` takes a checkpoint of a state dict whose tensors the loop
will go on updating in place. ``start`` returns a :class:`Pending` as soon as
the loop may step again (the *blocking* time); the checkpoint is *durable*
when the background work has written every byte (fsynced) and committed it
(manifest, then marker: :func:`llama_ckpt.checkpoint.finish`). Whatever the
loop does after ``start`` returns must not reach the checkpoint: each saver
either copies the weights before it returns (a staging copy, DCP's staging,
TensorStore's write copies) or writes them from a copy-on-write snapshot
(``fork``). The commit is always made by this process, after the writer has
finished: a process killed mid-save leaves a staging temporary, never a
committed checkpoint.

The checkpoint's files are the format's own, so ``fmt.read`` (and ``verify``)
read them like any other checkpoint of that format. :data:`SAVERS` is the
catalogue of the ways the training phase (07) measures.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from .. import checkpoint
from ..digests import tensor_digest
from ..recorders import Steps
from ..store import Location
from ..formats.base import Format, no_progress
from ..formats.dcp import DistributedCheckpoint
from ..formats.tensorstore import TensorStoreZarr
from ..registry import APPROACHES, variant


def _nothing() -> None:
    pass


@contextlib.contextmanager
def _stderr_to(path):
    """File descriptor 2 (what child processes inherit) sent to ``path`` for
    the block; nothing changes when ``path`` is None."""
    if path is None:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 2)
    os.close(fd)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


@dataclass(frozen=True)
class Hooks:
    """Points in the background work where tests can step in (pause, or be
    killed): ``started`` before the first byte is written, ``written`` once
    the format's files are durable and before the commit."""

    started: Callable[[], None] = _nothing
    written: Callable[[], None] = _nothing


NO_HOOKS = Hooks()  # a save nothing steps into


class Pending:
    """One checkpoint in flight. ``done()`` says whether it has finished
    (committed or failed); ``wait()`` returns the seconds from the call to
    the moment it was committed (set by the background, not by the caller's
    wait), or raises the background's error."""

    def __init__(self, t0: float):
        self.t0 = t0
        self._event = threading.Event()
        self.error: BaseException | None = None
        self.durable_at: float | None = None
        self.writer_cpu_s: float | None = None  # CPU seconds of the writer, where it is a thread or process of its own
        self.staging_s: float | None = None  # seconds of the staging copy, where the saver makes one itself
        # Where staging goes on after the call (DCP's async staging): what the loop must wait for before it
        # next updates the state in place, called with a timeout in seconds (TimeoutError when it passes); None
        # where there is nothing to wait for.
        self.gate: Callable[[float | None], None] | None = None

    def done(self) -> bool:
        return self._event.is_set()

    def finished(self, error: BaseException | None = None) -> None:
        self.durable_at = None if error else time.perf_counter()
        self.error = error
        self._event.set()

    def wait(self, timeout: float | None = None) -> float:
        if not self._event.wait(timeout):
            raise TimeoutError(f"the checkpoint was not durable within {timeout} s")
        if self.error is not None:
            raise self.error
        return self.durable_at - self.t0


class Saver:
    """A way of checkpointing inside a training loop: ``mode`` is ``sync``
    (blocking until durable), ``thread``, ``process`` or ``fork`` (where the
    writing happens); ``fmt`` is the format whose files it writes (and reads
    them back); ``sync_of`` names the synchronous saver of the same format,
    against which its blocking time is judged."""

    mode = "sync"
    blocked_by = "the whole save"  # what the loop waits for, in words
    # Whether it can checkpoint a loop whose state is in an accelerator's memory: every saver but a fork()
    # snapshot, which copies the host's pages only (07's accelerator-bound loop leaves it out).
    on_accelerator = True

    def __init__(self, name: str, description: str, fmt: Format, sync_of: str | None = None):
        self.name, self.description, self.fmt = name, description, fmt
        self.sync_of = sync_of or name

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    def knobs(self) -> dict:
        return {"format": self.fmt.name, **self.fmt.knobs()}

    def prepare(self, scratch: Location) -> None:
        """Once, before any timing: what a library sets up on first use (the
        DCP writer process); ``scratch`` is removed after."""
        self.fmt.warm_up(scratch)

    def close(self) -> None:
        """After the last checkpoint."""

    def kept_bytes(self) -> int:
        """Memory the saver holds from one checkpoint to the next (a staging copy)."""
        return 0

    def load(self, loc: Location) -> dict[str, torch.Tensor]:
        return checkpoint.load(self.fmt, loc)

    def start(self, state_dict: dict[str, torch.Tensor], loc: Location, digests: dict[str, str],
              hooks: Hooks = NO_HOOKS) -> Pending:
        """Begin a checkpoint of ``state_dict`` (whose tensors the caller may
        change once this returns) at ``loc``; ``digests`` are its tensors'
        SHA-256 in the stored dtype, taken at this step, for the manifest."""
        pending = Pending(time.perf_counter())
        staged, man = checkpoint.begin(self.fmt, state_dict, loc, digests, saved_by=self.name, mode=self.mode)
        try:
            work = self._launch(dict(state_dict), staged, pending)
        except BaseException:
            checkpoint.finish(loc, staged, man, ok=False)  # nothing half-written is left behind
            raise
        self._finish_in(work, loc, staged, man, pending, hooks)
        return pending

    def _launch(self, state_dict, staged: Location, pending: Pending) -> Callable[[], None]:
        """Do what must happen before the loop may go on; return the rest of
        the write (run where the mode says), durable when it returns."""
        raise NotImplementedError

    def _finish_in(self, work, loc, staged, man, pending, hooks) -> None:
        threading.Thread(target=_complete, args=(work, loc, staged, man, pending, hooks), daemon=True,
                         name=f"checkpoint-{self.name}").start()


def _complete(work, loc, staged, man, pending: Pending, hooks: Hooks) -> None:
    """The background half: the rest of the write, then the commit; on any
    failure the staged files are removed and the error kept for ``wait``."""
    try:
        hooks.started()
        work()
        hooks.written()
    except BaseException as exc:  # noqa: BLE001 - handed to the caller through wait()
        try:
            checkpoint.finish(loc, staged, man, ok=False)
        finally:
            pending.finished(exc)
        return
    try:
        checkpoint.finish(loc, staged, man, ok=True)
    except BaseException as exc:  # noqa: BLE001
        pending.finished(exc)
        return
    pending.finished()


class Sync(Saver):
    """The format's ordinary save: the loop waits until it is durable."""

    mode = "sync"

    def _launch(self, state_dict, staged, pending):
        self.fmt.write(state_dict, staged, Steps(), no_progress)
        return _nothing

    def _finish_in(self, work, loc, staged, man, pending, hooks):
        _complete(work, loc, staged, man, pending, hooks)


class StagedThread(Saver):
    """What teams hand-roll: copy the weights into a staging buffer (kept and
    reused from one checkpoint to the next, as DCP's cached staging does),
    then the format's save of the copy in a background thread."""

    mode = "thread"
    blocked_by = "staging copy"

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self._buffers: dict[str, torch.Tensor] = {}

    def stage(self, state_dict) -> dict[str, torch.Tensor]:
        out = {}
        for k, v in state_dict.items():
            b = self._buffers.get(k)
            if b is None or b.shape != v.shape or b.dtype != v.dtype:
                b = self._buffers[k] = torch.empty_like(v, memory_format=torch.contiguous_format)
            out[k] = b.copy_(v)
        return out

    def close(self) -> None:
        self._buffers.clear()

    def kept_bytes(self) -> int:
        return sum(b.nbytes for b in self._buffers.values())

    def _launch(self, state_dict, staged, pending):
        t0 = time.perf_counter()
        copy = self.stage(state_dict)
        pending.staging_s = time.perf_counter() - t0

        def write():
            t0 = time.thread_time()
            self.fmt.write(copy, staged, Steps(), no_progress)
            pending.writer_cpu_s = time.thread_time() - t0
        return write


def _fork_writer(fmt: Format, state_dict, staged: Location, pending: Pending) -> Callable[[], None]:
    """Fork a child that writes ``state_dict`` (its copy-on-write view of it)
    with ``fmt`` and exits; returns the wait for it, which raises if it
    failed. The child runs only the format's writer, never the loop."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: write, report, exit without running the parent's cleanup
        code = 0
        try:
            os.close(r)
            fmt.write(state_dict, staged, Steps(), no_progress)
        except BaseException as exc:  # noqa: BLE001 - reported to the parent through the pipe
            code = 1
            try:
                os.write(w, f"{type(exc).__name__}: {exc}".encode()[:4000])
            except OSError:
                pass
        os._exit(code)
    os.close(w)

    def wait() -> None:
        msg = b""
        while chunk := os.read(r, 4096):
            msg += chunk
        os.close(r)
        _, status, usage = os.wait4(pid, 0)
        pending.writer_cpu_s = usage.ru_utime + usage.ru_stime
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            raise RuntimeError(f"the writer process (pid {pid}) failed: "
                               + (msg.decode(errors="replace") or f"exit status {code}"))
    return wait


class StagedProcess(StagedThread):
    """A staging copy, then a forked process writes the copy. The child only
    reads the copy, which the loop leaves alone; but a fork shares every page
    of the process, so while the child lives the loop's updates of the
    weights are copied on write, as with ``ForkSnapshot``."""

    mode = "process"
    blocked_by = "staging copy + fork()"

    def _launch(self, state_dict, staged, pending):
        t0 = time.perf_counter()
        copy = self.stage(state_dict)
        pending.staging_s = time.perf_counter() - t0
        return _fork_writer(self.fmt, copy, staged, pending)


class ForkSnapshot(Saver):
    """A copy-on-write snapshot: ``fork()``, and the child writes the weights
    as they were at the fork while the parent trains on. The loop is blocked
    only for the fork; every page the loop then updates while the child is
    alive is copied by the kernel first, inside the steps that follow."""

    mode = "fork"
    blocked_by = "fork()"
    on_accelerator = False  # a device's memory is not in the pages fork() shares: it needs a copy to the host first

    def _launch(self, state_dict, staged, pending):
        return _fork_writer(self.fmt, state_dict, staged, pending)


class TensorStoreAsync(Saver):
    """TensorStore's own asynchrony: every write issued in one transaction;
    the loop goes on once TensorStore has copied each source array (the
    write futures' ``copy``), and the checkpoint is durable when the
    transaction's commit is. ``can_reference_source_data_indefinitely`` must
    be off: with it TensorStore keeps the loop's own tensors and writes
    whatever they hold at the commit."""

    mode = "thread"
    blocked_by = "TensorStore's copies of the arrays"

    def __init__(self, name, description, fmt: TensorStoreZarr, sync_of=None):
        if not fmt.k.transaction or fmt.k.commit_bytes:
            raise ValueError(f"{name}: TensorStore's asynchronous save needs one transaction (transaction=True, "
                             "commit_bytes=0)")
        super().__init__(name, description, fmt, sync_of)

    def _launch(self, state_dict, staged, pending):
        return self.fmt.write_async(state_dict, staged)


def _timed_stager(options):
    """DCP's ``DefaultStager`` that keeps the seconds of its last staging copy (``last_s``), made in the call
    or, with async staging, in its own thread."""
    from torch.distributed.checkpoint.staging import DefaultStager

    class TimedStager(DefaultStager):
        last_s: float | None = None

        def _stage(self, state_dict, **kwargs):
            t0 = time.perf_counter()
            out = super()._stage(state_dict, **kwargs)
            self.last_s = time.perf_counter() - t0
            return out
    return TimedStager(options)


class DcpAsync(Saver):
    """``torch.distributed.checkpoint.async_save``: DCP's ``DefaultStager``
    copies the state dict into CPU memory (its copies kept from one
    checkpoint to the next), then DCP writes it from a thread of this process
    (``thread``) or from DCP's own writer process (``process``: started
    on the first save, kept for the next; it needs a process group, so a
    one-rank gloo group is made when there is none). With ``async_staging``
    the copy itself is made by the stager's thread after the call returns
    (``use_async_staging``): the loop may step on, but must wait for the
    staging (``AsyncSaveResponse.staging_completion``, :attr:`Pending.gate`)
    before it next updates the state in place."""

    def __init__(self, name, description, fmt: DistributedCheckpoint, sync_of=None, process: bool = False,
                 async_staging: bool = False):
        super().__init__(name, description, fmt, sync_of)
        self.mode = "process" if process else "thread"
        self.async_staging = async_staging
        self.blocked_by = ("DCP's staging copy (shared memory) + the request to its writer process" if process
                           else "the wait for DCP's staging before the next update" if async_staging
                           else "DCP's staging copy")
        self._stager = None
        self._own_group = False
        self._staged_bytes = 0  # what its stager has cached: the last state dict it staged

    def kept_bytes(self) -> int:
        return self._staged_bytes if self._stager is not None else 0

    def knobs(self) -> dict:
        return super().knobs() | {"async_checkpointer_type": self.mode, "stager": "DefaultStager, cached, "
                                  + ("shared memory" if self.mode == "process" else "no shared memory")
                                  + (", async staging" if self.async_staging else "")}

    def prepare(self, scratch):
        import torch.distributed as dist

        if self.mode == "process" and not dist.is_initialized():
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")  # the writer process's store, on loopback
            dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
            self._own_group = True
        # "assuming the intent is to save in a single process", from every thread-mode save: it is
        warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        # The first save starts DCP's machinery, and its writer process: not a checkpoint's cost. That
        # process logs every request at INFO level to the stderr it inherits: a file beside the
        # checkpoints instead of the notebook.
        log = scratch.parent.local_file() / "dcp-writer-process.log" if self.mode == "process" else None
        with _stderr_to(log):
            self.start({"warm_up": torch.zeros(4)}, scratch, {"warm_up": tensor_digest(torch.zeros(4))}).wait()

    def close(self):
        import torch.distributed as dist

        if self._stager is not None:
            self._stager.close()
            self._stager = None
        if self._own_group and dist.is_initialized():
            dist.destroy_process_group()
            self._own_group = False

    def _launch(self, state_dict, staged, pending):
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.staging import StagingOptions
        from torch.distributed.checkpoint.state_dict_saver import AsyncCheckpointerType

        if self._stager is None:
            # Staging copies kept from one checkpoint to the next (keyed by the source's storage), in
            # shared memory for the writer process; no pinned memory or non-blocking copies (no
            # accelerator here), staged before async_save returns (with async staging: by its own thread after).
            self._stager = _timed_stager(StagingOptions(use_pinned_memory=False,
                                                       use_shared_memory=self.mode == "process",
                                                       use_async_staging=self.async_staging,
                                                       use_non_blocking_copy=False))
        kind = AsyncCheckpointerType.PROCESS if self.mode == "process" else AsyncCheckpointerType.THREAD
        self._staged_bytes = sum(v.nbytes for v in state_dict.values())
        out = dcp.async_save(self.fmt.cast_consuming(state_dict),
                             storage_writer=dcp.FileSystemWriter(str(staged.local_file()), sync_files=True,
                                                                 thread_count=self.fmt.threads()),
                             async_checkpointer_type=kind, async_stager=self._stager, no_dist=self.mode == "thread")
        future = getattr(out, "upload_completion", out)
        stager = self._stager
        if self.async_staging:
            pending.gate = out.staging_completion.result
            out.staging_completion.add_done_callback(lambda _f: setattr(pending, "staging_s", stager.last_s))
        else:
            pending.staging_s = stager.last_s
        return lambda: future.result()


def _savers() -> dict[str, Saver]:
    fp32, st, dcp = APPROACHES["pytorch-fp32"], APPROACHES["safetensors"], APPROACHES["dcp"]
    return {s.name: s for s in [
        # -- synchronous: the loop waits until the checkpoint is durable (blocking = time to durable)
        Sync("pytorch-fp32", "torch.save of the float32 state dict", fp32),
        Sync("safetensors", "safetensors save_file, fsynced", st),
        Sync("dcp", "torch.distributed.checkpoint.save in this process", dcp),
        Sync("ts+best", "TensorStore's ts+best (it references the source, safe only because the loop waits)",
             APPROACHES["ts+best"]),
        # -- asynchronous: the loop goes on while the bytes are written
        DcpAsync("dcp-async", "dcp.async_save, written from a thread (DefaultStager's cached copy)", dcp, "dcp"),
        DcpAsync("dcp-async-staging", "dcp.async_save from a thread, staged by DefaultStager's own thread "
                 "(use_async_staging): the loop waits for the staging only before its next in-place update", dcp,
                 "dcp", async_staging=True),
        DcpAsync("dcp-async-process", "dcp.async_save, written by DCP's writer process (staged in shared memory)",
                 dcp, "dcp", process=True),
        TensorStoreAsync("ts+best-async", "ts+best's configuration in one transaction, source copied by "
                         "TensorStore (no reference_source, no batched commits); the loop goes on once every write's "
                         "copy is done, durable at the commit",
                         variant("ts+best", reference_source=False, commit_bytes=0), "ts+best"),
        StagedThread("copy+pytorch-thread", "a staging copy (buffers reused), torch.save of it in a thread", fp32,
                     "pytorch-fp32"),
        StagedThread("copy+safetensors-thread", "a staging copy (buffers reused), safetensors of it in a thread", st,
                     "safetensors"),
        StagedProcess("copy+safetensors-process", "a staging copy (buffers reused), safetensors of it in a forked "
                      "process", st, "safetensors"),
        ForkSnapshot("fork+safetensors", "fork(): the child writes its copy-on-write view with safetensors while the "
                     "parent trains", st, "safetensors"),
    ]}


# The ways to checkpoint inside a training loop (07-training): name -> saver.
# Savers keep state between checkpoints (staging buffers, DCP's stager): the
# training phase closes each one after its last checkpoint.
SAVERS: dict[str, Saver] = _savers()

# The savers the CPU-bound loop measures by default (07's CPU_SAVERS; "all" for every one): on that loop every
# background writer takes its cores from the steps, which one saver per way of writing in the background shows
# (a thread of the loop's process, DCP's staging before or after the call, a forked process), beside the
# synchronous saves of their formats. The accelerator-bound loop measures every saver.
CPU_SAVERS: tuple[str, ...] = ("safetensors", "dcp", "dcp-async", "dcp-async-staging", "copy+safetensors-thread",
                               "fork+safetensors")
