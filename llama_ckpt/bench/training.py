"""Checkpoints taken inside a training loop (07-training): how long the loop
is blocked, how long until the checkpoint is durable, and what the save
costs the steps around it.

The loop is a real one on the CPU: the preset's LLaMA built with
transformers from its config (the preset's seeded weights loaded into it),
AdamW, forward and backward on seeded random token batches. Each checkpoint
is one *segment*: ``steps_before`` steps with no save in flight, the saver's
call at step k (digests of the state at step k taken just before it, outside
every timing), then ``steps_after`` steps while the save finishes in the
background; the loop then waits for it if it is still in flight (``stall_s``).
The loop's time and CPU per step with no save in flight are taken from the
steps that began after the save was durable: the step before the call
follows the previous checkpoint's check (a cold load of the whole state,
then freed), and its memory traffic makes it no steady sample.
After the segment the checkpoint is loaded cold and checked against step k's
digests: a checkpoint holding later weights, or a mix, does not verify.

The savers (``savers.SAVERS``) are measured one at a time, each taking
its checkpoints in a row as a training run that uses it would: it keeps its
staging buffers from one checkpoint to the next, and is closed (its buffers
freed) before the next saver starts. Interleaving them instead would leave
every saver's staging copy in the process at once, which is not any real
run's memory, and would make ``fork()`` copy the page tables of all of them.
The drift between savers this order risks is why every slowdown is taken
against the saver's own steps with no save in flight.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import psutil
import torch

from .. import fsutil
from ..digests import check, expected_digests
from ..errors import FAILURES, UserError
from .savers import DcpAsync, Saver, StagedThread
from ..model import ModelSource, PresetModel, TensorSpec, tensor_set_digest
from ..recorders import MachineMemory, PeakRSS, cpu_seconds, release_memory, rss_parts
from ..results import environment_record, training_row
from ..store import LocalDir
from .measure import (DISK_HEADROOM, RunLog, _describe_error, _now, can_drop_caches, new_run_id, remove_stale_saves,
                      warm_up)

BATCH, SEQ_LEN = 1, 64  # token batch of one step: sequences x tokens
LEARNING_RATE = 1e-4
STEPS_BEFORE = 1  # steps with no save in flight before each checkpoint
STEPS_AFTER = 3  # steps after the call: the save finishes in the background meanwhile
# Memory a training run holds: the loop's own 4 copies of the model (weights,
# gradients, AdamW's two moments), and in copies of the checkpointed state a
# loaded copy for the check and one transient copy a save makes (safetensors'
# serialisation, TensorStore's write copies).
TRAIN_MODEL_COPIES, STATE_COPIES = 4, 2
# How long the loop waits for a checkpoint in flight before it calls the saver hung: at least WAIT_MIN_S, and
# as long as writing the state at WAIT_FLOOR_BPS would take (a writer slower than that is taken as stuck).
WAIT_MIN_S, WAIT_FLOOR_BPS = 120.0, 10e6
HUNG = "hung: "  # the error of a checkpoint that was not durable in time: the saver's later checkpoints are skipped


def wait_limit(state_bytes: int) -> float:
    """Seconds the loop waits for a checkpoint of ``state_bytes`` to be durable."""
    return max(WAIT_MIN_S, state_bytes / WAIT_FLOOR_BPS)


class Trainer:
    """The training loop stand-in: one ``step()`` is a forward and backward
    pass on a batch of random tokens and an AdamW update, in place."""

    def __init__(self, source: PresetModel, batch: int = BATCH, seq_len: int = SEQ_LEN, seed: int = 0):
        from transformers import AutoModelForCausalLM

        torch.manual_seed(seed)
        self.model = AutoModelForCausalLM.from_config(source.config)
        self.model.load_state_dict(source.materialize())
        self.model.train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=LEARNING_RATE)
        self.batch, self.seq_len, self.vocab = batch, seq_len, source.config.vocab_size
        self.tokens = torch.Generator().manual_seed(seed)
        self.step_no = 0
        self._names = {p: n for n, p in self.model.named_parameters()}

    def step(self) -> float:
        """One training step; its seconds."""
        x = torch.randint(0, self.vocab, (self.batch, self.seq_len), generator=self.tokens)
        t0 = time.perf_counter()
        loss = self.model(input_ids=x, labels=x).loss
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step_no += 1
        return time.perf_counter() - t0

    def state_dict(self, optimizer: bool = False) -> dict[str, torch.Tensor]:
        """What a checkpoint holds: the model's tensors (the loop's own, which
        it updates in place), and with ``optimizer`` AdamW's state too, as
        ``optimizer/<param>/<exp_avg|exp_avg_sq|step>`` (the step count as a
        one-element tensor). Take it after a step: AdamW's state is created
        by the first."""
        sd = {k: v.detach() for k, v in self.model.state_dict().items()}
        if optimizer:
            for p, st in self.optimizer.state.items():
                for k, v in st.items():
                    if torch.is_tensor(v):
                        sd[f"optimizer/{self._names[p]}/{k}"] = v.detach().reshape(-1) if v.dim() == 0 else v.detach()
        return sd


def specs_of(state_dict: dict[str, torch.Tensor]) -> list[TensorSpec]:
    return [TensorSpec(k, tuple(v.shape), v.dtype) for k, v in state_dict.items()]


@dataclass
class TrainingOptions:
    out: Path  # the run's directory (environment record: its file system)
    checkpoints: Path  # where the checkpoints go (one at a time, each removed once checked)
    results: Path  # results file
    run_id: str = ""
    repeats: int = 3  # checkpoints per saver
    steps_before: int = STEPS_BEFORE
    steps_after: int = STEPS_AFTER
    optimizer: bool = False  # checkpoint AdamW's state too (what a resumable checkpoint holds)
    batch: int = BATCH
    seq_len: int = SEQ_LEN
    keep: bool = False  # keep each saver's last checkpoint
    wait_timeout_s: float | None = None  # a checkpoint not durable this long after the call is hung (wait_limit)


def memory_needed(savers: list[Saver], model_bytes: int, state_bytes: int, rss_now: int) -> int:
    """The loop's copies of the model, the state copies of a checkpoint and
    its check, plus a staging copy where a saver keeps one (one saver at a
    time: the others are closed)."""
    staging = int(any(isinstance(s, (StagedThread, DcpAsync)) for s in savers))
    return TRAIN_MODEL_COPIES * model_bytes + (STATE_COPIES + staging) * state_bytes + rss_now


def state_bytes_of(source: ModelSource, optimizer: bool) -> int:
    return source.nbytes * (3 if optimizer else 1)  # AdamW: two moments the size of the weights


def too_big(savers: list[Saver], source: ModelSource, optimizer: bool) -> str | None:
    """Why training this model here would not fit in memory, or None."""
    state = state_bytes_of(source, optimizer)
    rss = psutil.Process().memory_info().rss
    need = memory_needed(savers, source.nbytes, state, rss)
    have = psutil.virtual_memory().available + rss
    if need <= have:
        return None
    return (f"training {source.name} with AdamW and checkpointing it with these {len(savers)} savers needs about "
            f"{need / 1e9:.1f} GB (weights, gradients, two AdamW moments, staging copies, a loaded copy for the "
            f"check: {need / source.nbytes:.1f}x the {source.nbytes / 1e9:.1f} GB model); {have / 1e9:.1f} GB is "
            "available here")


def run_training(savers: list[Saver], source: ModelSource, opts: TrainingOptions,
                 on_row: Callable[[dict], None] = lambda r: None, say: Callable[[str], None] = lambda s: None):
    """Every saver's ``opts.repeats`` checkpoints inside one training loop,
    one saver at a time; rows to the results file as they finish. Returns
    (environment record, rows); a model too large to train here is not
    measured: the environment's ``skipped`` says why and there are no rows."""
    if opts.repeats < 1:
        raise UserError(f"repeats must be at least 1, got {opts.repeats}")
    if not isinstance(source, PresetModel):
        raise UserError("07-training builds its model from a preset (MODEL); MODEL_PATH is not used there")
    run_id = opts.run_id or new_run_id()
    root = LocalDir(opts.checkpoints)
    fsutil.check_writable(Path(opts.checkpoints).parent)
    log = RunLog(Path(opts.results), run_id, len(savers) * opts.repeats, on_row)
    base = dict(model=source.name, weights=source.weights, n_params=source.n_params, repeats=opts.repeats, approaches=[s.name for s in savers],
                state="model+optimizer" if opts.optimizer else "model", batch=opts.batch, seq_len=opts.seq_len,
                steps_before=opts.steps_before, steps_after=opts.steps_after)
    why = too_big(savers, source, opts.optimizer)
    if why:
        say(f"skipped: {why}")
        env = environment_record(run_id, Path(opts.out), **base, skipped={"07-training": why})
        log.write(env)
        log.end(True, skipped=why)
        return env, []
    say(f"building {source.name} for training ({source.n_params:,} parameters) with AdamW; batches of "
        f"{opts.batch} x {opts.seq_len} tokens")
    trainer = Trainer(source, opts.batch, opts.seq_len)
    trainer.step()  # AdamW's state exists from the first step on
    state = trainer.state_dict(opts.optimizer)
    specs = specs_of(state)
    block = fsutil.block_size(Path(opts.checkpoints).parent)
    need = max(s.fmt.estimate_bytes(specs, block) for s in savers) * (len(savers) if opts.keep else 1)
    free = fsutil.free_bytes(Path(opts.checkpoints).parent)
    if need + DISK_HEADROOM > free:
        raise UserError(f"not enough free disk in {Path(opts.checkpoints).parent}: the checkpoints need about "
                        f"{(need + DISK_HEADROOM) / 1e9:.2f} GB, {free / 1e9:.2f} GB free")
    env = environment_record(run_id, Path(opts.out), **base, n_tensors=len(specs),
                             checkpoint_bytes=sum(s.nbytes for s in specs), drop_caches=can_drop_caches(say))
    del state
    log.write(env)
    remove_stale_saves(root.parent, say)
    say(f"{len(savers)} savers x {opts.repeats} checkpoint(s), each: {opts.steps_before} step(s), the checkpoint, "
        f"{opts.steps_after} step(s); results -> {opts.results}")
    hung_savers: list[str] = []
    try:
        for s in savers:
            warm_up(s.name, s.prepare, root / f"warm-up-{s.name}", say)  # DCP's writer process
            try:
                hung = None
                for r in range(1, opts.repeats + 1):
                    loc = root / f"{s.name}-{r}"
                    if hung:  # a writer still stuck: no later checkpoint of this saver is measured
                        log.add(training_row(run_id=run_id, approach=s.name, mode=s.mode, format=s.fmt.name,
                                             model=source.name, weights=source.weights, repeat=r, verified=False,
                                             error=f"skipped: checkpoint {hung} of this saver hung",
                                             finished_at=_now()))
                        continue
                    row = segment(s, trainer, loc, r, opts, source, run_id)
                    log.add(row)
                    if (row["error"] or "").startswith(HUNG):
                        hung = r
                        hung_savers.append(s.name)
                        say(f"{s.name}: {row['error']}; its later checkpoints are skipped")
                        continue  # its writer may still write there: left for the end of the run
                    if not (opts.keep and r == opts.repeats):
                        loc.remove()
            finally:
                s.close()  # its staging copy freed before the next saver,
                release_memory()  # and handed back, so the next one starts from the same memory state
    except KeyboardInterrupt:
        log.end(False, interrupted="KeyboardInterrupt")
        raise
    if not opts.keep:
        root.remove()
    # a hung writer may still be running, beside every saver measured after it
    log.end(True, **({"writers_left_running": hung_savers} if hung_savers else {}))
    return env | {"results_path": str(opts.results)}, log.rows


def segment(saver: Saver, trainer: Trainer, loc, repeat: int, opts: TrainingOptions, source: ModelSource,
            run_id: str) -> dict:
    """One checkpoint of ``saver`` inside the loop, then its check; a row."""
    cpu0 = cpu_seconds()
    with PeakRSS() as idle, MachineMemory() as idle_machine:
        before = [trainer.step() for _ in range(opts.steps_before)]
    cpu_before = cpu_seconds() - cpu0
    sd = trainer.state_dict(opts.optimizer)
    dtype = saver.fmt.stored_dtype
    exp = expected_digests(sd, {dtype})[dtype]  # step k's digests, before the call and outside every timing
    digests = {k: e.digest for k, e in exp.items()}
    row = dict(run_id=run_id, approach=saver.name, mode=saver.mode, blocked_by=saver.blocked_by,
               sync_of=saver.sync_of, format=saver.fmt.name,
               knobs=saver.knobs(), model=source.name, weights=source.weights, n_params=source.n_params,
               tensor_set=tensor_set_digest(specs_of(sd)), state="model+optimizer" if opts.optimizer else "model",
               checkpoint_bytes=sum(v.nbytes for v in sd.values()), repeat=repeat, step=trainer.step_no,
               steps_before_s=before, peak_rss_idle_bytes=idle.peak, machine_used_idle_bytes=idle_machine.peak,
               cpu_before_s=cpu_before)
    # the save starts from the same file-system state as every other (the previous checkpoint was just removed),
    # outside every timing: written back, caches dropped (root only)
    row["caches_dropped"] = fsutil.settle()
    row["rss_before_bytes"] = sum(rss_parts())
    inflight, after, after_cpu = [], [], []
    stage = "save"
    try:
        with PeakRSS() as peak, MachineMemory() as machine:
            cpu0 = cpu_seconds()
            t0 = time.perf_counter()
            pending = saver.start(sd, loc, digests)
            row["blocking_s"] = time.perf_counter() - t0
            del sd
            for _ in range(opts.steps_after):
                busy = not pending.done()
                c0 = cpu_seconds()
                dt = trainer.step()
                if busy:
                    inflight.append(dt)
                else:  # the save is durable: the loop's own time and CPU
                    after.append(dt)
                    after_cpu.append(cpu_seconds() - c0)
            t1 = time.perf_counter()
            limit = opts.wait_timeout_s or wait_limit(row["checkpoint_bytes"])
            hung = False
            try:
                row["durable_s"] = pending.wait(max(0.0, limit - (t1 - t0)))
            except TimeoutError:
                hung = True
            finally:
                row["stall_s"] = time.perf_counter() - t1
                row["segment_s"] = time.perf_counter() - t0
                row["cpu_segment_s"] = cpu_seconds() - cpu0
        if hung:
            row.update(steps_inflight_s=inflight, steps_after_s=after, verified=False,
                       error=f"{HUNG}not durable {limit:.0f} s after the call (its writer is still running)")
            return training_row(**row, finished_at=_now())
        row.update(steps_inflight_s=inflight, steps_after_s=after, steps_after_cpu_s=after_cpu,
                   peak_rss_bytes=peak.peak,
                   machine_used_bytes=machine.peak, writer_cpu_s=pending.writer_cpu_s, kept_bytes=saver.kept_bytes(),
                   staging_s=pending.staging_s)
        fp = loc.footprint()
        stage = "load"
        cold, _frac = loc.evict()
        t0 = time.perf_counter()
        loaded = saver.load(loc)
        row["load_s"] = time.perf_counter() - t0
        verdict = check(loaded, exp)
        del loaded
        gc.collect()
        row.update(load_cold=cold, bytes_on_disk=fp.bytes_on_disk, n_files=fp.n_files, verified=verdict.verified,
                   error=None if verdict.verified else f"not the weights of step {row['step']}: {verdict.summary()}")
    except (KeyboardInterrupt, SystemExit):
        raise
    except FAILURES as exc:
        row.update(steps_inflight_s=inflight, steps_after_s=after, verified=False,
                   error=f"{stage} failed: {_describe_error(exc, loc)}")
    return training_row(**row, finished_at=_now())
