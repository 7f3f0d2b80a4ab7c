"""Checkpoints taken inside a training loop (07-training): how long the loop
is blocked, how long until the checkpoint is durable, and what the save
costs the steps around it.

Two loops (``LOOPS``). The CPU-bound loop (:class:`Trainer`) is a real one
on this machine's cores: the preset's LLaMA built with transformers from its
config (the preset's seeded weights loaded into it), AdamW, forward and
backward on seeded random token batches. The accelerator-bound loop
(:class:`DeviceTrainer`) is the loop asynchronous saving is used in: a
step's device work is a wait that holds no core and no interpreter lock,
its host work AdamW's in-place update of a slice of every tensor.

Each checkpoint is one *segment*: ``steps_before`` steps with no save in
flight, the saver's call at step k (digests of the state at step k taken
just before it, outside every timing), then steps while the save finishes in
the background, until it is durable (a loop that never waits for its
checkpoints), then ``steps_after`` more; a save not durable within
:func:`wait_limit` is hung, and ``stall_s`` is what the loop waited for it
at the end (none where it was durable in time).
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

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import psutil
import torch

from .. import fsutil
from ..digests import expected_digests
from ..errors import FAILURES, UserError
from ..model import ModelSource, PresetModel, TensorSpec, tensor_set_digest
from ..recorders import MachineBusy, MachineMemory, PeakRSS, cpu_seconds, release_memory, rss_parts
from ..results import training_row
from ..store import LocalDir
from . import scaffold
from .savers import DcpAsync, Saver, StagedThread
from .scaffold import NOTHING, Prepared, RunLog, describe_error, now

BATCH, SEQ_LEN = 1, 64  # token batch of one step: sequences x tokens
LEARNING_RATE = 1e-4
STEPS_BEFORE = 1  # steps with no save in flight before each checkpoint
STEPS_AFTER = 2  # steps after the save is durable (the loop's own steps, with no save in flight)
# Memory a training run holds: the loop's own 4 copies of the model (weights,
# gradients, AdamW's two moments), and in copies of the checkpointed state a
# loaded copy for the check and one transient copy a save makes (safetensors'
# serialisation, TensorStore's write copies).
TRAIN_MODEL_COPIES, STATE_COPIES = 4, 2
# How long the loop waits for a checkpoint in flight before it calls the saver hung: at least WAIT_MIN_S, and
# as long as writing the state at WAIT_FLOOR_BPS would take (a writer slower than that is taken as stuck).
WAIT_MIN_S, WAIT_FLOOR_BPS = 120.0, 10e6
HUNG = "hung: "  # the error of a checkpoint that was not durable in time: the saver's later checkpoints are skipped
ADAM_BETAS, ADAM_EPS, ADAM_WEIGHT_DECAY = (0.9, 0.999), 1e-8, 1e-2  # torch.optim.AdamW's defaults
# The accelerator-bound loop (DeviceTrainer). Its device time per step defaults to DLIO's LLaMA 7B workload
# (argonne-lcf/dlio_benchmark, dlio_benchmark/configs/workload/llama_7b.yaml: computation_time 2.44 s per step,
# which DLIO, the engine of MLPerf Storage, spends in a sleep) scaled by parameters: the same tokens per step, a
# step's work in proportion to the parameters. DLIO's step has no host work at all; this loop's host work is the
# least a step must do for its checkpoints to mean anything: AdamW's update of HOST_SLICE elements (one 4 KiB page
# of float32) of every tensor of the state, in place. Its time is measured, not chosen.
DLIO_STEP_S, DLIO_PARAMS = 2.44, 6.74e9
HOST_SLICE = 1024
LOOPS = ("accelerator", "cpu")  # the loops 07 measures, in this order


def optimizer_key(param: str, part: str) -> str:
    """A checkpoint's name for AdamW's ``part`` (``exp_avg``, ``exp_avg_sq``, ``step``) of ``param``."""
    return f"optimizer/{param}/{part}"


def wait_limit(state_bytes: int) -> float:
    """Seconds the loop waits for a checkpoint of ``state_bytes`` to be durable."""
    return max(WAIT_MIN_S, state_bytes / WAIT_FLOOR_BPS)


class _Gated:
    """What both loops share: a gate the loop passes before its in-place
    update (a saver whose staging goes on after its call, DCP's async
    staging, sets it: :attr:`savers.Pending.gate`), timed apart from the step."""

    def __init__(self):
        self.step_no = 0
        self.gate = None
        self.gate_deadline: float | None = None  # perf_counter time after which the gate is not waited for
        self.gate_hung = False  # the gate's deadline passed: the staging did not finish in time
        self.gate_waited_s: float | None = None  # the wait at the last gate passed, until read

    def pass_gate(self) -> float:
        """Wait at the gate (until its deadline), once; the seconds waited. A
        staging not done by the deadline sets ``gate_hung`` and the loop goes on."""
        if self.gate is None:
            return 0.0
        t0 = time.perf_counter()
        try:
            self.gate(None if self.gate_deadline is None else max(0.0, self.gate_deadline - t0))
        except TimeoutError:
            self.gate_hung = True
        finally:
            self.gate = None
            self.gate_waited_s = time.perf_counter() - t0
        return self.gate_waited_s


class Trainer(_Gated):
    """The CPU-bound loop: one ``step()`` is a forward and backward pass on a
    batch of random tokens and an AdamW update, in place, all on this
    machine's cores."""

    loop = "cpu"

    def __init__(self, source: PresetModel, batch: int = BATCH, seq_len: int = SEQ_LEN, seed: int = 0):
        from transformers import AutoModelForCausalLM

        super().__init__()
        torch.manual_seed(seed)
        self.model = AutoModelForCausalLM.from_config(source.config)
        self.model.load_state_dict(source.materialize())
        self.model.train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=LEARNING_RATE)
        self.batch, self.seq_len, self.vocab = batch, seq_len, source.config.vocab_size
        self.tokens = torch.Generator().manual_seed(seed)
        self._names = {p: n for n, p in self.model.named_parameters()}

    def step(self) -> float:
        """One training step; its seconds, less any wait at the gate."""
        x = torch.randint(0, self.vocab, (self.batch, self.seq_len), generator=self.tokens)
        t0 = time.perf_counter()
        loss = self.model(input_ids=x, labels=x).loss
        loss.backward()
        waited = self.pass_gate()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step_no += 1
        return time.perf_counter() - t0 - waited

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
                        sd[optimizer_key(self._names[p], k)] = v.detach().reshape(-1) if v.dim() == 0 else v.detach()
        return sd


def device_step_s(n_params: int) -> float:
    """The accelerator-bound loop's default device time per step: DLIO's
    LLaMA 7B step scaled by the model's parameters."""
    return DLIO_STEP_S * n_params / DLIO_PARAMS


class DeviceTrainer(_Gated):
    """The accelerator-bound loop: the state lives where this process can
    checkpoint it (the preset's weights, AdamW's two moments and step count),
    and one ``step()`` is the device's forward and backward, stood in for by
    a wait of ``device_s`` during which the training thread holds neither a
    core nor the interpreter lock (as a thread waiting on a device stream),
    then the host's part: AdamW's update of the first ``host_slice`` elements
    of every parameter and both its moments, in place, one tensor after
    another (small ops, as a non-fused optimizer launches them), and its step
    count. Every tensor of the state changes every step, so a checkpoint that
    is not its step's state does not verify; a staging copy is still a copy
    of the whole state, as a device-to-host copy is."""

    loop = "accelerator"

    def __init__(self, source: PresetModel, device_s: float | None = None, host_slice: int = HOST_SLICE,
                 seed: int = 0):
        super().__init__()
        self.device_s = device_step_s(source.n_params) if device_s is None else device_s
        self.host_slice = host_slice
        self.weights = source.materialize()
        g = torch.Generator().manual_seed(seed)
        # AdamW's moments as a run some way in holds them (nonzero, every page written), from the same seed
        self.moments = {}
        for k, w in self.weights.items():
            m = torch.randn(w.shape, generator=g, dtype=torch.float32).mul_(1e-3)
            self.moments[k] = (m, m.square())
        self.steps = {k: torch.zeros(1) for k in self.weights}
        self.grads = torch.Generator().manual_seed(seed + 1)
        self.last_host_s = self.last_host_cpu_s = 0.0

    @torch.no_grad()
    def step(self) -> float:
        """One step; its seconds, less any wait at the gate. ``last_host_s``:
        the host part's wall seconds, from the moment the device wait was to
        end (so a late wake-up, such as waiting for the interpreter lock after
        the sleep, counts in it); ``last_host_cpu_s``: the training thread's
        CPU seconds in the step (the wait itself takes none)."""
        t0, c0 = time.perf_counter(), time.thread_time()
        time.sleep(self.device_s)  # forward and backward on the device
        waited = self.pass_gate()
        grad = torch.randn(self.host_slice, generator=self.grads)  # this step's gradients, as they arrive
        for k, w in self.weights.items():
            n = min(self.host_slice, w.numel())
            m, v = self.moments[k]
            g, m1, v1, w1 = grad[:n], m.view(-1)[:n], v.view(-1)[:n], w.view(-1)[:n]
            self.steps[k].add_(1)
            m1.lerp_(g, 1 - ADAM_BETAS[0])
            v1.mul_(ADAM_BETAS[1]).addcmul_(g, g, value=1 - ADAM_BETAS[1])
            w1.mul_(1 - LEARNING_RATE * ADAM_WEIGHT_DECAY).addcdiv_(m1, v1.sqrt().add_(ADAM_EPS),
                                                                    value=-LEARNING_RATE)
        end = time.perf_counter()
        self.last_host_s, self.last_host_cpu_s = end - t0 - self.device_s - waited, time.thread_time() - c0
        self.step_no += 1
        return end - t0 - waited

    def state_dict(self, optimizer: bool = False) -> dict[str, torch.Tensor]:
        """The weights, and with ``optimizer`` AdamW's state under the same
        names as :meth:`Trainer.state_dict`'s."""
        sd = dict(self.weights)
        if optimizer:
            for k in self.weights:
                m, v = self.moments[k]
                sd |= {optimizer_key(k, "exp_avg"): m, optimizer_key(k, "exp_avg_sq"): v,
                       optimizer_key(k, "step"): self.steps[k]}
        return sd


def specs_of(state_dict: dict[str, torch.Tensor]) -> list[TensorSpec]:
    return [TensorSpec(k, tuple(v.shape), v.dtype) for k, v in state_dict.items()]


@dataclass(kw_only=True)
class TrainingOptions(scaffold.RunOptions):
    checkpoints: Path  # where the checkpoints go (one at a time, each removed once checked)
    steps_before: int = STEPS_BEFORE
    steps_after: int = STEPS_AFTER
    optimizer: bool = True  # checkpoint AdamW's state too (what a resumable checkpoint holds); False: weights only
    loops: tuple[str, ...] = LOOPS  # which loops, in order: "accelerator" (DeviceTrainer), "cpu" (Trainer)
    device_s: float | None = None  # the accelerator loop's device wait per step (None: device_step_s of the model)
    host_slice: int = HOST_SLICE  # elements of every tensor the accelerator loop's step updates on the host
    batch: int = BATCH
    seq_len: int = SEQ_LEN
    wait_timeout_s: float | None = None  # a checkpoint not durable this long after the call is hung (wait_limit)
    disk_reference: bool = False  # the run's machine profile: read from ``profile`` (or measured) when True


def memory_needed(savers: list[Saver], model_bytes: int, state_bytes: int, rss_now: int, loop: str = "cpu") -> int:
    """The loop's own copies (the CPU loop: weights, gradients, two moments;
    the accelerator loop: weights and two moments, its gradients being on
    the device), the state copies of a checkpoint and its check, plus a
    staging copy where a saver keeps one (one saver at a time: the others
    are closed)."""
    staging = int(any(isinstance(s, (StagedThread, DcpAsync)) for s in savers))
    own = TRAIN_MODEL_COPIES * model_bytes if loop == "cpu" else 3 * model_bytes
    return own + (STATE_COPIES + staging) * state_bytes + rss_now


def state_specs(source: ModelSource, optimizer: bool) -> list[TensorSpec]:
    """The tensors a checkpoint of either loop holds: the weights, and with
    ``optimizer`` both moments of each and its step count (their names as
    the loops' ``state_dict`` gives them; the CPU loop's model may hold a
    few more buffers, which this estimate leaves out)."""
    specs = list(source.specs)
    if optimizer:
        specs += [TensorSpec(optimizer_key(s.name, k), s.shape, s.dtype) for s in source.specs
                  for k in ("exp_avg", "exp_avg_sq")]
        specs += [TensorSpec(optimizer_key(s.name, "step"), (1,), torch.float32) for s in source.specs]
    return specs


def too_big(savers: list[Saver], source: ModelSource, optimizer: bool, loops=("cpu",)) -> str | None:
    """Why training this model here would not fit in memory, or None."""
    state = sum(s.nbytes for s in state_specs(source, optimizer))
    rss = psutil.Process().memory_info().rss
    need = max(memory_needed(savers, source.nbytes, state, rss, loop) for loop in loops)
    have = psutil.virtual_memory().available + rss
    if need <= have:
        return None
    return (f"training {source.name} with AdamW and checkpointing it with these {len(savers)} savers needs about "
            f"{need / 1e9:.1f} GB (weights, gradients, two AdamW moments, staging copies, a loaded copy for the "
            f"check: {need / source.nbytes:.1f}x the {source.nbytes / 1e9:.1f} GB model); {have / 1e9:.1f} GB is "
            "available here")


def plan_loops(savers, loops) -> dict[str, list[Saver]]:
    """Which savers each loop measures: one list for every loop, or a list per loop. A saver that cannot
    checkpoint a state in an accelerator's memory (``on_accelerator`` False: a fork() snapshot) is left out of
    the accelerator-bound loop."""
    plan = savers if isinstance(savers, dict) else {loop: list(savers) for loop in loops}
    if bad := sorted(set(plan) - set(LOOPS)):
        raise UserError(f"no training loop {', '.join(bad)}; the loops: {', '.join(LOOPS)}")
    plan = {loop: [s for s in plan[loop] if loop != "accelerator" or s.on_accelerator] for loop in plan}
    return {loop: plan[loop] for loop in LOOPS if loop in plan and plan[loop]}


def run_training(savers: list[Saver] | dict[str, list[Saver]], source: ModelSource, opts: TrainingOptions,
                 on_row: Callable[[dict], None] = lambda r: None, say: Callable[[str], None] = lambda s: None):
    """Every saver's ``opts.repeats`` checkpoints inside each loop of
    ``opts.loops`` (``savers``: the same for every loop, or a list per
    loop), one loop and one saver at a time; rows to the results file as
    they finish. Returns (environment record, rows); a model too large to
    train here is not measured: the environment's ``skipped`` says why and
    there are no rows."""
    if opts.repeats < 1:
        raise UserError(f"repeats must be at least 1, got {opts.repeats}")
    if not isinstance(source, PresetModel):
        raise UserError("07-training builds its model from a preset (MODEL); MODEL_PATH is not used there")
    plan = plan_loops(savers, opts.loops)
    every = list({s.name: s for ss in plan.values() for s in ss}.values())
    opts = replace(opts, run_id=opts.run_id or scaffold.new_run_id())
    ckpts = Path(opts.checkpoints)
    fsutil.check_writable(ckpts.parent)
    device_s = device_step_s(source.n_params) if opts.device_s is None else opts.device_s
    with scaffold.hold_machine(opts, ckpts, say, trims=False) as prepared:  # its saves follow each other: no trim
        log = RunLog(opts.results_path(opts.run_id), opts.run_id,
                     sum(len(ss) for ss in plan.values()) * opts.repeats, on_row)
        base = _described(plan, every, source, opts, device_s)
        why = too_big(every, source, opts.optimizer, tuple(plan))
        if why:
            say(f"skipped: {why}")
            env = scaffold.environment(opts.run_id, Path(opts.out), prepared, **base, skipped={"07-training": why})
            log.write(env)
            log.end(True, skipped=why)
            return env, []
        specs = state_specs(source, opts.optimizer)
        _check_disk(every, len(plan), specs, source, opts)
        profile = scaffold.run_profile(opts, ckpts, source.nbytes, say)
        env = scaffold.environment(opts.run_id, Path(opts.out), prepared, profile, **base, n_tensors=len(specs),
                                   checkpoint_bytes=sum(x.nbytes for x in specs))
        log.write(env)
        scaffold.remove_stale_saves(LocalDir(ckpts).parent, say)
        hung = _loops(plan, source, opts, prepared, device_s, log, say)
        if not opts.keep:
            LocalDir(ckpts).remove()
        # a hung writer may still be running, beside every saver measured after it
        log.end(True, **({"writers_left_running": hung} if hung else {}))
    return env | {"results_path": str(log.path)}, log.rows


def _described(plan: dict[str, list[Saver]], every: list[Saver], source: ModelSource, opts: TrainingOptions,
               device_s: float) -> dict:
    """What the run measures, for its environment record."""
    return dict(model=source.name, weights=source.weights, n_params=source.n_params, repeats=opts.repeats,
                approaches=[s.name for s in every], loops={loop: [s.name for s in ss] for loop, ss in plan.items()},
                state="model+optimizer" if opts.optimizer else "model", batch=opts.batch, seq_len=opts.seq_len,
                steps_before=opts.steps_before, steps_after=opts.steps_after,
                device_step_s=device_s if "accelerator" in plan else None,
                host_slice=opts.host_slice if "accelerator" in plan else None)


def _check_disk(every: list[Saver], n_loops: int, specs: list[TensorSpec], source: ModelSource,
                opts: TrainingOptions) -> None:
    """Room for the largest checkpoint (with ``keep``: every saver's last in every loop), and for the machine
    profile's files where the run may measure it, each at its own time."""
    where = Path(opts.checkpoints).parent
    block = fsutil.block_size(where)
    need = max(s.fmt.estimate_bytes(specs, block) for s in every) * (len(every) * n_loops if opts.keep else 1)
    profile = scaffold.disk_needed([], source, where, opts.disk_reference).get("disk reference", 0)
    scaffold.check_free(max(need, profile), where, "the checkpoints" if need >= profile else "the machine profile")


def _loops(plan: dict[str, list[Saver]], source: PresetModel, opts: TrainingOptions, prepared: Prepared,
           device_s: float, log: RunLog, say) -> list[str]:
    """Each loop of ``plan`` with its savers, one after another; the savers whose writer hung."""
    root, hung = LocalDir(opts.checkpoints), []
    try:
        for loop, loop_savers in plan.items():
            trainer = _trainer(loop, source, opts, device_s, say)
            say(f"{loop} loop: {len(loop_savers)} savers x {opts.repeats} checkpoint(s), each: "
                f"{opts.steps_before} step(s), the checkpoint, steps until it is durable, then {opts.steps_after} "
                f"more; results -> {log.path}")
            for s in loop_savers:
                if _saver_rows(s, trainer, root / loop, opts, source, prepared, log, say):
                    hung.append(f"{s.name} ({loop})")
            del trainer
            release_memory()
    except KeyboardInterrupt:
        log.end(False, interrupted="KeyboardInterrupt")
        raise
    return hung


def _trainer(loop: str, source: PresetModel, opts: TrainingOptions, device_s: float, say):
    if loop == "cpu":
        say(f"building {source.name} for training on the CPU ({source.n_params:,} parameters) with AdamW; "
            f"batches of {opts.batch} x {opts.seq_len} tokens")
        trainer = Trainer(source, opts.batch, opts.seq_len)
    else:
        say(f"the accelerator-bound loop on {source.name}: {device_s:.3g} s of device time per step (a wait), then "
            f"AdamW's update of {opts.host_slice} elements of every tensor on the host")
        trainer = DeviceTrainer(source, device_s, opts.host_slice)
    trainer.step()  # AdamW's state exists from the first step on
    return trainer


def _saver_rows(s: Saver, trainer, root, opts: TrainingOptions, source, prepared: Prepared, log: RunLog,
                say) -> bool:
    """One saver's checkpoints in one loop; whether its writer hung."""
    scaffold.warm_up(s.name, s.prepare, root / f"warm-up-{s.name}", say)  # DCP's writer process
    try:
        hung = None
        for r in range(1, opts.repeats + 1):
            loc = root / f"{s.name}-{r}"
            if hung:  # a writer still stuck: no later checkpoint of this saver is measured
                log.add(training_row(run_id=opts.run_id, approach=s.name, loop=trainer.loop, mode=s.mode,
                                     format=s.fmt.name, model=source.name, weights=source.weights, repeat=r,
                                     verified=False, error=f"skipped: checkpoint {hung} of this saver hung",
                                     finished_at=now()))
                continue
            row = segment(s, trainer, loc, r, opts, source, prepared)
            log.add(row)
            if (row["error"] or "").startswith(HUNG):
                hung = r
                say(f"{s.name} ({trainer.loop} loop): {row['error']}; its later checkpoints are skipped")
                continue  # its writer may still write there: left for the end of the run
            if not (opts.keep and r == opts.repeats):
                loc.remove()
    finally:
        s.close()  # its staging copy freed before the next saver,
        release_memory()  # and handed back, so the next one starts from the same memory state
    return hung is not None


class _Timeline:
    """A segment's steps after the call, each timed and filed by whether the
    save was still in flight when it began (the accelerator loop: its host
    part too)."""

    def __init__(self, trainer):
        self.trainer, self.accel = trainer, trainer.loop == "accelerator"
        self.inflight, self.after, self.after_cpu = [], [], []
        self.host = {"inflight": [], "after": [], "inflight_cpu": [], "after_cpu": []}

    def step(self, busy: bool) -> None:
        c0 = cpu_seconds()
        dt = self.trainer.step()
        (self.inflight if busy else self.after).append(dt)
        if not busy:  # the save is durable: the loop's own time and CPU
            self.after_cpu.append(cpu_seconds() - c0)
        if self.accel:
            self.host["inflight" if busy else "after"].append(self.trainer.last_host_s)
            self.host["inflight_cpu" if busy else "after_cpu"].append(self.trainer.last_host_cpu_s)

    def fields(self) -> dict:
        out = dict(steps_inflight_s=self.inflight, steps_after_s=self.after, steps_after_cpu_s=self.after_cpu)
        if self.accel:
            out.update(host_inflight_s=self.host["inflight"], host_after_s=self.host["after"],
                       host_cpu_inflight_s=self.host["inflight_cpu"], host_cpu_after_s=self.host["after_cpu"])
        return out


def _before(saver: Saver, trainer, repeat: int, opts: TrainingOptions, source: ModelSource) -> tuple[dict, dict]:
    """The steps before the call, and the state the checkpoint must hold:
    the row so far and step k's digests (taken before the call, outside
    every timing)."""
    cpu0 = cpu_seconds()
    with PeakRSS() as idle, MachineMemory() as idle_machine:
        before = [trainer.step() for _ in range(opts.steps_before)]
    cpu_before = cpu_seconds() - cpu0
    sd = trainer.state_dict(opts.optimizer)
    dtype = saver.fmt.stored_dtype
    exp = expected_digests(sd, {dtype})[dtype]
    row = dict(run_id=opts.run_id, approach=saver.name, loop=trainer.loop, mode=saver.mode,
               blocked_by=saver.blocked_by, sync_of=saver.sync_of, format=saver.fmt.name, knobs=saver.knobs(),
               model=source.name, weights=source.weights, n_params=source.n_params,
               tensor_set=tensor_set_digest(specs_of(sd)), state="model+optimizer" if opts.optimizer else "model",
               checkpoint_bytes=sum(v.nbytes for v in sd.values()), repeat=repeat, step=trainer.step_no,
               steps_before_s=before, peak_rss_idle_bytes=idle.peak, machine_used_idle_bytes=idle_machine.peak,
               cpu_before_s=cpu_before, device_step_s=trainer.device_s if trainer.loop == "accelerator" else None)
    return row, exp


def _in_flight(saver: Saver, trainer, sd: dict, loc, digests: dict, limit: float, opts: TrainingOptions,
               row: dict):
    """The call, then the loop's steps until the save is durable (and
    ``steps_after`` more); fills ``row``'s times. Returns the pending save,
    or None where it hung (not durable within ``limit``)."""
    line = _Timeline(trainer)
    cpu0 = cpu_seconds()
    t0 = time.perf_counter()
    pending = saver.start(sd, loc, digests)
    row["call_s"] = time.perf_counter() - t0
    del sd  # the saver holds what it needs
    trainer.gate, trainer.gate_deadline, trainer.gate_hung = pending.gate, t0 + limit, False
    hung, t1 = False, None
    try:
        while not pending.done() and not trainer.gate_hung and time.perf_counter() - t0 < limit:
            line.step(busy=True)
        if pending.done() and not trainer.gate_hung:
            for _ in range(opts.steps_after):
                line.step(busy=False)
        trainer.pass_gate()  # where no step passed it (a save that finished before the first)
        t1 = time.perf_counter()
        if trainer.gate_hung:
            raise TimeoutError("the staging did not finish")
        row["durable_s"] = pending.wait(max(0.0, limit - (t1 - t0)))
    except TimeoutError:
        hung = True
        t1 = time.perf_counter()
    finally:  # what the segment's time says, whatever ended it
        row["stall_s"] = time.perf_counter() - t1 if t1 is not None else 0.0
        row["segment_s"] = time.perf_counter() - t0
        row["cpu_segment_s"] = cpu_seconds() - cpu0
        trainer.gate, trainer.gate_deadline = None, None
        if trainer.gate_waited_s is not None:  # the staging the loop waited for before its update
            row["update_wait_s"], trainer.gate_waited_s = trainer.gate_waited_s, None
        # what the loop was held for: the call, and the wait for the saver's staging before its next update
        row["blocking_s"] = row["call_s"] + (row.get("update_wait_s") or 0.0)
        row.update(line.fields())
    return None if hung else pending


def segment(saver: Saver, trainer, loc, repeat: int, opts: TrainingOptions, source: ModelSource,
            prepared: Prepared | None = None) -> dict:
    """One checkpoint of ``saver`` inside the loop, then its check; a row.
    After the call the loop steps until the save is durable, as a loop that
    never waits for its checkpoints would, then ``steps_after`` steps more;
    a save not durable within the limit (a staging not done by then, or a
    writer still writing) is hung."""
    row, exp = _before(saver, trainer, repeat, opts, source)
    # the save starts from the same file-system state as every other (the previous checkpoint was just removed),
    # outside every timing: written back, caches dropped (as the run's prepare allows), never trimmed
    row.update((prepared or NOTHING).start_state(loc, trim=False))
    row["rss_before_bytes"] = sum(rss_parts())
    limit = opts.wait_timeout_s or wait_limit(row["checkpoint_bytes"])
    stage = "save"
    try:
        with PeakRSS() as peak, MachineMemory() as machine, MachineBusy() as busy:
            pending = _in_flight(saver, trainer, trainer.state_dict(opts.optimizer), loc,
                                 {k: e.digest for k, e in exp.items()}, limit, opts, row)
        row["busy"] = busy.result
        if pending is None:
            row.update(verified=False,
                       error=f"{HUNG}not durable {limit:.0f} s after the call (its "
                       + ("staging was still copying" if trainer.gate_hung else "writer is still running") + ")")
            return training_row(**row, finished_at=now())
        row.update(peak_rss_bytes=peak.peak, machine_used_bytes=machine.peak, writer_cpu_s=pending.writer_cpu_s,
                   kept_bytes=saver.kept_bytes(), staging_s=pending.staging_s)
        fp = loc.footprint()
        stage = "load"
        loaded = scaffold.timed_load(lambda: saver.load(loc), loc, exp)
        row.update(load_s=loaded.seconds, load_cold=loaded.cold, bytes_on_disk=fp.bytes_on_disk, n_files=fp.n_files,
                   verified=loaded.verdict.verified, error=None if loaded.verdict.verified
                   else f"not the weights of step {row['step']}: {loaded.verdict.summary()}")
    except (KeyboardInterrupt, SystemExit):
        raise
    except FAILURES as exc:
        row.update(verified=False, error=f"{stage} failed: {describe_error(exc, loc)}")
    return training_row(**row, finished_at=now())
