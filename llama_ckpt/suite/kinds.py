"""Running a phase: one class per kind of phase, one entry point.

``run(phase_id, **params)`` looks the phase up in the catalogue
(:mod:`llama_ckpt.study.phases`) and runs it with the class of its ``kind``.
Every kind takes the same parameters (``model``, ``model_path``, ``repeats``,
``out_dir``, ``run_id``, ``keep``, ``progress``, ``say``) plus its own
(:attr:`Kind.own`, e.g. the claims phase's ``cap``), measures what the phase
needs (or reuses the run's complete results of it: an interrupted try's file
is set aside, never mixed in) and returns a :class:`PhaseResult`.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..bench import cluster, measure, scaffold, training
from ..bench.scaffold import row_line
from ..bench.savers import CPU_SAVERS, SAVERS
from ..errors import UserError
from ..formats.base import Format
from ..model import PUBLISHED_DTYPE, ModelSource, PresetModel, get_model, model_name
from ..registry import APPROACHES, names
from ..results import is_valid, read_results
from ..store import Target
from ..store import server as s3_server
from ..study import runs
from ..study.claims import CLOUD_CLAIM, MIN_REPEATS, OTHER_WEIGHTS_CLAIMS, undecided
from ..study.aims import AIM_APPROACHES
from ..study.phases import (CLAIMS, CLAIMS_BUDGET_S, CLAIMS_CAP, CLAIMS_STEP, CLOUD, CLOUD_BUCKET, CLOUD_DELAYS_MS,
                            CLOUD_MODEL, COMPARE, DIST_CONFIGS, PHASES, SHARDED, TORCHRUN_CONFIGS, TRAINING,
                            TRAINING_CHECKPOINTS, WORK, Phase, get_phase)
from . import states as machine_states


OTHER_NOT_ASKED = ("the other weights were not asked for (`OTHER_WEIGHTS` off: `make run-all OTHER_WEIGHTS=1` "
                   "measures them; the default run's cut, docs/decisions.md#run-all-time)")


@dataclass
class PhaseResult:
    phase: Phase
    run_id: str
    run_dir: Path
    results_path: Path  # the phase's results file (cloud: the directory of its file per delay)
    rows: list[dict]  # the phase's rows on the run's weights: its own and those shared from other phases
    env: dict
    reused: bool  # complete results of this run were found and not measured again
    other: list[dict] = field(default_factory=list)  # rows on the preset's other weights (``both_weights``, claims)
    rounds: list[dict] = field(default_factory=list)  # claims: one per round of added repeats, what and why
    stopped: str | None = None  # claims: why rounds stopped before every claim was decided or at the cap
    envs: list[dict] = field(default_factory=list)  # cloud: one environment record per delay
    endpoint: str = ""  # cloud: the S3 endpoint measured
    server_started: bool = False  # cloud: a private server was started for this and stopped after
    sustained: list[dict] = field(default_factory=list)  # checkpoints saved back to back (``Phase.sustained``)
    states: dict = field(default_factory=dict)  # work model: state name -> StateResult

    @property
    def figures(self) -> Path:
        return self.run_dir / "figures"


def other_weights(source: ModelSource) -> ModelSource | None:
    """The preset with its other weights (float32 for float16-origin, float16-origin for float32); None for
    real weights (MODEL_PATH)."""
    if not isinstance(source, PresetModel):
        return None
    return PresetModel(model_name(source.preset, PUBLISHED_DTYPE if source.origin == "float32" else "float32"),
                       seed=source.seed)


class Kind:
    """A phase of one kind, with the run's parameters: :meth:`run` measures it
    (or reuses this run's complete results) and returns a :class:`PhaseResult`."""

    own: dict = {}  # the kind's own parameters and their defaults
    default_model = "small"  # the preset measured when no model is given
    reads_model_path = True  # whether it can measure a local model folder (MODEL_PATH)
    keeps = True  # whether it keeps each approach's last checkpoint when asked (``keep``)

    def __init__(self, phase: Phase, model: str = "", model_path: str = "", repeats: int = 1,
                 out_dir: str | Path = "", run_id: str = "", keep: bool = False, progress: bool | None = None,
                 prepare: str | tuple = scaffold.DEFAULT_PREPARE, say=print, **own):
        if unknown := sorted(set(own) - set(self.own)):
            raise UserError(f"phase {phase.id} takes no parameter {', '.join(unknown)}; its own: "
                            f"{', '.join(self.own) or 'none'}")
        if model_path and not self.reads_model_path:
            raise UserError(f"phase {phase.id} builds the preset's weights (model={model or self.default_model!r}): "
                            "it cannot measure a model folder (MODEL_PATH)")
        model = model or self.default_model
        self.phase, self.model, self.model_path, self.repeats = phase, model, model_path, repeats
        self.out_dir, self.keep, self.progress, self.say = out_dir, keep, progress, say
        self.params = {**self.own, **own}
        self.prepare = scaffold.parse_prepare(prepare)  # what its runs may do to the machine (scaffold.PREPARE)
        self.run_id = run_id or scaffold.new_run_id()
        self.rdir = runs.run_dir(out_dir, self.run_id)
        self.rpath = runs.results_path(out_dir, self.run_id, phase.slug)
        self.out_root = Path(out_dir or runs.DEFAULT_OUT)

    # -- what every kind shares
    def options(self, **changes) -> measure.Options:
        """The measurement options of this phase (the one place they are built), with ``changes``."""
        return measure.Options(**{**dict(out=self.rdir, repeats=self.repeats, keep=self.keep, results=self.rpath,
                                         run_id=self.run_id, progress=self.progress, prepare=self.prepare,
                                         checkpoints=self.rdir / "checkpoints" / self.phase.slug,
                                         phase=self.phase.slug, profile=self.rdir / runs.PROFILE_FILE), **changes})

    def result(self, rows: list[dict], env: dict, reused: bool = False, **more) -> PhaseResult:
        return PhaseResult(self.phase, self.run_id, self.rdir, self.rpath, rows, env, reused, **more)

    def source(self) -> ModelSource:
        return get_model(self.model or None, self.model_path or None)

    def approaches(self) -> list[Format]:
        """What the phase writes (for the up-front disk check)."""
        return self.phase.approaches()

    def size(self) -> str:
        """What the phase measures, for progress lines."""
        return f"{len(self.approaches())} approaches x {self.repeats} repeat(s)"

    def run(self) -> PhaseResult:
        if runs.phase_complete(self.out_dir, self.run_id, self.phase.slug):
            self.say(f"phase {self.phase.slug}: complete results of run {self.run_id} found in {self.rpath}; "
                     "not measured again")
            return self.reuse(read_results([self.rpath]))
        if aside := runs.set_aside(self.rpath):
            self.say(f"phase {self.phase.slug}: an interrupted try's rows were moved to {aside}")
        return self.measure()

    def reuse(self, loaded) -> PhaseResult:
        env = loaded.environments[0] if loaded.environments else {}
        return self.result(loaded.measurements + loaded.training, env, True)

    def measure(self) -> PhaseResult:
        raise NotImplementedError


class Compare(Kind):
    """Approaches compared at the run's repeats (a configuration another phase
    of the run measured is shared, not measured again), the sweep's points,
    and, when asked (``other_weights``), ``both_weights`` again on the
    preset's other weights."""

    def __init__(self, phase: Phase, **kw):
        if phase.both_weights:  # only a phase with a pair to measure on both kinds takes the switch
            self.own = {**self.own, "other_weights": False}
        super().__init__(phase, **kw)

    def measure(self) -> PhaseResult:
        source, apps = self.source(), self.approaches()
        env, rows = self._shared(apps, source)
        asked = bool(self.phase.both_weights and self.params["other_weights"])
        other, other_rows = other_weights(source) if asked else None, []
        if other is not None:
            self.say(f"{', '.join(self.phase.both_weights)} again on the {other.weights} weights ({other.name}), "
                     f"for the claims {', '.join(map(str, self.phase.claims))} on both kinds of weights")
            _e, other_rows = self._shared([APPROACHES[n] for n in self.phase.both_weights], other, reference=False)
        elif self.phase.both_weights:  # not asked, or real weights (no other kind): the end record says which
            scaffold.RunLog(self.rpath, self.run_id, 0, lambda r: None).end(
                True, skipped=OTHER_NOT_ASKED if not asked else "real weights (MODEL_PATH): one kind only")
        return self.result(runs.in_order(rows, source.name, apps), env,
                           other=runs.in_order(other_rows, other.name, apps) if other is not None else [],
                           sustained=read_results([self.rpath]).sustained if self.phase.sustained else [])

    def reuse(self, loaded) -> PhaseResult:
        env = loaded.environments[0] if loaded.environments else {}
        apps = self.approaches()

        def rows_of(model: str) -> list[dict]:
            shared = runs.shared_rows(self.out_dir, self.run_id, self.phase.slug, apps, model)
            return runs.in_order(loaded.measurements + [r for rs in shared.values() for r in rs], model, apps)
        others = [e["model"] for e in loaded.environments if e["model"] != env["model"]]
        return self.result(rows_of(env["model"]), env, True, other=rows_of(others[0]) if others else [],
                           sustained=loaded.sustained)

    def _shared(self, apps: list[Format], source: ModelSource, reference: bool = True) -> tuple[dict, list[dict]]:
        """``apps`` on ``source`` to the run's repeats each, counting the rows
        other phases of the run measured of the same configuration: the phase
        measures only what is missing. Returns the environment and every row
        (measured here and shared)."""
        shared = runs.shared_rows(self.out_dir, self.run_id, self.phase.slug, apps, source.name)
        fewer = self.phase.fewer(self.repeats, apps)
        for n, k in fewer.items():
            self.say(f"{n}: a sweep point no claim judges, {k} repeat(s) (SWEEP_REPEATS)")
        for n, rs in shared.items():
            by = ", ".join(dict.fromkeys(r.get("phase") or "?" for r in rs))
            want = fewer.get(n, self.repeats)
            self.say(f"{n}: {len(rs)} repeat(s) measured in this run by {by}, shared"
                     + (f"; {want - len(rs)} more measured here" if len(rs) < want else ""))
        opts = self.options(disk_reference=reference, done={n: len(rs) for n, rs in shared.items()},
                            fewer=fewer or None, sustained=self.phase.sustained if reference else ())
        env, rows = measure.run(apps, source, opts, say=self.say, on_row=lambda r: self.say(row_line(r)))
        return env, rows + [r for rs in shared.values() for r in rs]


class Sharded(Kind):
    """The sharded approaches at each (ranks saving, ranks loading)
    configuration, spawned here, then at each (nodes, ranks per node) started
    by torchrun; all rows in the phase's one results file (one end record per
    configuration). The scaling configurations (as many ranks load as saved)
    get the run's repeats; a resharded load and the torchrun job, which no
    claim judges, ``SWEEP_REPEATS``."""

    own = {"configs": DIST_CONFIGS, "torchrun_configs": TORCHRUN_CONFIGS}
    reads_model_path, keeps = False, False

    def size(self) -> str:
        return (f"{len(self.approaches())} sharded approaches x {self.phase.n_runs} rank configurations x "
                f"{self.repeats} repeat(s)")

    def measure(self) -> PhaseResult:
        source, apps = get_model(self.model or None), self.approaches()
        rows, env, configs = [], {}, self.params["configs"]
        for world, load_world in configs:
            opts = self.options(disk_reference=(world, load_world) == configs[0], world_size=world,
                                load_world_size=load_world, keep=False, phase=None,
                                repeats=self.repeats if world == load_world else self._once())
            env_c, rs = measure.run(apps, source, opts, say=self.say, on_row=lambda r: self.say(
                row_line(r, f" {r['world_size']} -> {r['load_world_size']} ranks")))
            env = env or env_c
            rows += rs
        for nodes, per_node in self.params["torchrun_configs"]:
            rows += self._torchrun(nodes, per_node, source)
        return self.result(rows, env)

    def _once(self) -> int:
        return min(self.repeats, self.phase.sweep_repeats or self.repeats)

    def _torchrun(self, nodes: int, per_node: int, source: ModelSource) -> list[dict]:
        self.say(f"torchrun: {nodes} launches of {per_node} ranks on this machine as {nodes} nodes")
        before = read_results([self.rpath])
        procs = cluster.torchrun(nodes, per_node, [
            "run", "--approach", ",".join(a.name for a in self.approaches()), "--model", source.name,
            "--repeats", str(self._once()), "--out", str(self.rdir), "--results", str(self.rpath),
            "--run-id", self.run_id, "--no-reference", "--prepare", ",".join(self.prepare) or "none"])
        for line in (ln for p in procs for ln in p.stdout.splitlines() if ln.startswith("  ")):
            self.say(line)  # rank 0's row lines (the other ranks print nothing)
        after = read_results([self.rpath])
        # torchrun exits 1 for a failed rank and for a row that did not verify alike: the job
        # finished only if it wrote its complete end record
        if not any(e.get("complete") for e in after.ends[len(before.ends):]):
            errs = [ln for p in procs for ln in p.stderr.splitlines() if "error" in ln.lower()]
            raise UserError(f"the torchrun job of {nodes} x {per_node} ranks did not finish (exit "
                            f"{[p.returncode for p in procs]}): {errs[0] if errs else 'no error line'}")
        return after.measurements[len(before.measurements):]


class Training(Kind):
    """Savers of ``bench.savers.SAVERS`` checkpointing training loops
    ``repeats`` times (at most ``checkpoints``), one loop and one saver at a time: every saver that
    can checkpoint a device's state in the accelerator-bound loop,
    ``cpu_savers`` in the CPU-bound one."""

    own = {"optimizer": True, "steps_after": training.STEPS_AFTER, "loops": ",".join(training.LOOPS),
           "cpu_savers": ",".join(CPU_SAVERS), "device_s": None, "host_slice": training.HOST_SLICE,
           "checkpoints": TRAINING_CHECKPOINTS}
    reads_model_path = False

    def __init__(self, phase: Phase, **kw):
        super().__init__(phase, **kw)
        if int(self.params["checkpoints"]) < 1:
            raise UserError(f"checkpoints must be at least 1, got {self.params['checkpoints']}")
        self.repeats = min(self.repeats, int(self.params["checkpoints"]))  # checkpoints per saver in each loop

    def plan(self) -> dict[str, list]:
        """Loop -> its savers, from the parameters (a bad name is refused with the known ones)."""
        loops = [x.strip() for x in str(self.params["loops"]).split(",") if x.strip()]
        bad = [x for x in loops if x not in training.LOOPS]
        if bad or not loops:
            raise UserError(f"loops: {', '.join(bad) or 'none given'}; the loops: {', '.join(training.LOOPS)}")
        cpu = [x.strip() for x in str(self.params["cpu_savers"]).split(",") if x.strip()]
        cpu = list(SAVERS) if cpu == ["all"] else cpu
        if bad := [x for x in cpu if x not in SAVERS]:
            raise UserError(f"cpu_savers: no saver {', '.join(bad)}; the savers: {', '.join(SAVERS)}, or all")
        # the accelerator loop: every saver that can checkpoint a device's state (plan_loops leaves out the others)
        return training.plan_loops({loop: [SAVERS[n] for n in (cpu if loop == "cpu" else SAVERS)] for loop in loops},
                                   loops)

    def approaches(self) -> list[Format]:
        return list({s.fmt.name: s.fmt for s in SAVERS.values()}.values())

    def size(self) -> str:
        return " and ".join(f"{len(ss)} savers in the {loop} loop" for loop, ss in self.plan().items()) \
            + f", {self.repeats} checkpoint(s) each"

    def measure(self) -> PhaseResult:
        source = get_model(self.model or None)
        plan = self.plan()
        opts = training.TrainingOptions(out=self.rdir, checkpoints=self.rdir / "checkpoints" / self.phase.slug,
                                        results=self.rpath, run_id=self.run_id, repeats=self.repeats,
                                        optimizer=self.params["optimizer"], steps_after=self.params["steps_after"],
                                        loops=tuple(plan), device_s=self.params["device_s"],
                                        host_slice=self.params["host_slice"], keep=self.keep, prepare=self.prepare,
                                        disk_reference=True, profile=self.rdir / runs.PROFILE_FILE)
        env, rows = training.run_training(plan, source, opts, on_row=lambda r: self.say(row_line(r)), say=self.say)
        return self.result(rows, env)


class Claims(Kind):
    """Judge the guide's claims on this run's rows; while one is undecided,
    measure the approaches that leave it undecided, interleaved: first to
    ``MIN_REPEATS`` (the rule's minimum, never cut short), then ``step`` more
    a round (never beyond ``cap`` of any; none of these starts after
    ``budget_s`` seconds of them), and judge again. Claims 3 and 4 are
    judged, and given repeats, on the other kind of weights too where the
    run has rows on them or ``other_weights`` asks."""

    own = {"cap": CLAIMS_CAP, "step": CLAIMS_STEP, "budget_s": CLAIMS_BUDGET_S, "other_weights": False}
    keeps = False

    def approaches(self) -> list[Format]:
        return [APPROACHES[n] for n in names(tag="guide")]

    def size(self) -> str:
        return "more repeats of what leaves a claim undecided"

    def _kinds(self) -> list[tuple[ModelSource, tuple[int, ...] | None]]:
        """The run's weights, and the preset's other weights when asked (``other_weights``) or when another
        phase of the run measured rows on them (4c's or 4d's ``other_weights``)."""
        source = self.source()
        other = other_weights(source)
        if other is not None and not (self.params["other_weights"]
                                      or runs.guide_rows(self.out_dir, self.run_id, other.name)):
            other = None
        return [(source, None)] + ([(other, OTHER_WEIGHTS_CLAIMS)] if other is not None else [])

    def _result(self, rounds: list[dict], reused: bool, stopped: str | None) -> PhaseResult:
        kinds = self._kinds()
        rows = [runs.guide_rows(self.out_dir, self.run_id, src.name) for src, _n in kinds]
        return self.result(rows[0], {"model": kinds[0][0].name}, reused, other=rows[1] if len(rows) > 1 else [],
                           rounds=rounds, stopped=stopped)

    def reuse(self, loaded) -> PhaseResult:
        final = next(e for e in loaded.ends if e.get("claims_final"))
        return self._result(final["rounds"], True, final.get("stopped"))

    def measure(self) -> PhaseResult:
        cap, step, budget_s = self.params["cap"], self.params["step"], self.params["budget_s"]
        if cap < 1 or step < 1:
            raise UserError(f"the claims' cap and step must be at least 1, got {cap} and {step}")
        kinds = self._kinds()
        rounds, t0, stopped = [], time.perf_counter(), None
        t_beyond = None  # when the first repeat beyond MIN_REPEATS started: the budget counts from there
        for k in range(1, 1 + -(-cap // step) + 1):
            todo = []  # (source, approach names, their counts)
            for src, numbers in kinds:
                rows = runs.guide_rows(self.out_dir, self.run_id, src.name)
                counts = {n: sum(r["approach"] == n and is_valid(r) for r in rows) for n in names(tag="guide")}
                # an approach a claim compares that no phase measured is measured here, from its first repeat
                need = {n: cl for n, cl in undecided(rows, numbers).items() if counts[n] < cap}
                if need:
                    todo.append((src, need, counts))
            if not todo:
                break
            if t_beyond is not None and time.perf_counter() - t_beyond > budget_s:
                stopped = (f"the time budget for repeats beyond {MIN_REPEATS} ({budget_s:.0f} s) was spent before "
                           f"round {k}")
                break
            for src, need, counts in todo:
                # first every approach a claim needs to the rule's minimum (never cut short: a verdict on fewer
                # repeats is inconclusive by the rule), then ``step`` more a round, within the budget
                short = any(counts[n] < MIN_REPEATS for n in need)
                target = min(cap, MIN_REPEATS if short else max(counts[n] for n in need) + step)
                if target > MIN_REPEATS and budget_s <= 0:
                    stopped = f"no repeats beyond {MIN_REPEATS}: the time budget for them (CLAIMS_BUDGET_S) is 0"
                    break
                if target > MIN_REPEATS and t_beyond is None:
                    t_beyond = time.perf_counter()
                self.say(f"round {k} on {src.name} ({src.weights} weights): "
                         + "; ".join(f"{n} (claims {', '.join(map(str, cl))}) {counts[n]} -> {max(target, counts[n])}"
                                     for n, cl in need.items()))
                opts = self.options(repeats=target, keep=False, disk_reference=False,
                                    done={n: counts[n] for n in need},
                                    deadline=None if target <= MIN_REPEATS else t_beyond + budget_s)
                env, _rows = measure.run([APPROACHES[n] for n in need], src, opts, say=self.say,
                                         on_row=lambda r: self.say(row_line(r)))
                late = env.get("deadline_skipped", 0)
                rounds.append({"round": k, "model": src.name, "weights": src.weights, "target": target,
                               "approaches": {n: list(cl) for n, cl in need.items()},
                               "added": sum(max(0, target - counts[n]) for n in need) - late})
                if late:
                    stopped = (f"the time budget for repeats beyond {MIN_REPEATS} ({budget_s:.0f} s) was spent in "
                               f"round {k} ({late} planned measurement(s) not started)")
                    break
            if stopped:
                break
        if stopped:
            self.say(f"stopped: {stopped}; the claims still undecided stay inconclusive at their repeats")
        scaffold.RunLog(self.rpath, self.run_id, 0, lambda r: None).end(
            True, claims_final=True, rounds=rounds, stopped=stopped, seconds=round(time.perf_counter() - t0, 1))
        return self._result(rounds, False, stopped)


class Cloud(Kind):
    """The section's approaches on S3 at each added round-trip delay,
    ``repeats`` times each; those claim 9 compares at least ``MIN_REPEATS``
    times (the verdict rule's minimum: fewer leave it inconclusive). Without
    ``endpoint``, a private SeaweedFS server is started under the run's
    directory and stopped (its data removed) at the end. Complete results of
    the same run id are reused per delay, as for the local phases."""

    own = {"endpoint": "", "delays": CLOUD_DELAYS_MS}
    default_model, keeps = CLOUD_MODEL, False

    def _path(self, d: float) -> Path:
        return runs.cloud_results_path(self.out_dir, self.run_id, self.phase.slug, d)

    def run(self) -> PhaseResult:  # reuse and set aside per delay: each delay has its own results file
        rows, envs, todo = [], [], []
        for d in self.params["delays"]:
            p = self._path(d)
            if runs.ended(p, need=1):
                loaded = read_results([p])
                rows += loaded.measurements
                envs += loaded.environments[-1:]
                self.say(f"cloud {d:g} ms: complete results of run {self.run_id} found in {p}; not measured again")
            else:
                todo.append(d)
        endpoint, server = self.params["endpoint"], None
        if todo and not endpoint:
            server = s3_server.start_server(self.rdir / "s3")
            endpoint = server.endpoint
            self.say(f"started a private SeaweedFS server at {endpoint} (data in {server.data_dir})")
        server_dir = server.data_dir if server else (
            s3_server.local_server_dir(endpoint, [self.out_root / "s3"]) if endpoint else None)
        most = max(self.repeats, MIN_REPEATS)
        fewer = {a.name: self.repeats for a in self.approaches() if a.name not in CLOUD_CLAIM.approaches()}
        try:
            source = self.source() if todo else None
            for d in todo:
                runs.set_aside(self._path(d))
                target = Target(CLOUD_BUCKET, f"{self.run_id}/{self.phase.slug}-{d:g}ms", endpoint, delay_ms=d,
                                server_dir=server_dir)
                opts = self.options(repeats=most, results=self._path(d), storage=target.path(), checkpoints=None,
                                    keep=False, phase=None, fewer=fewer if self.repeats < most else None)
                env, rs = measure.run(self.approaches(), source, opts, say=self.say,
                                      on_row=lambda r: self.say(row_line(r, f" at {r.get('s3_delay_ms') or 0:g} ms")))
                rows += rs
                envs.append(env)
        finally:
            if server is not None:
                server.stop()
                shutil.rmtree(server.data_dir, ignore_errors=True)
        return PhaseResult(self.phase, self.run_id, self.rdir, self.rdir / "results-cloud", rows,
                           envs[0] if envs else {}, not todo, envs=envs, endpoint=endpoint,
                           server_started=server is not None)


@dataclass
class StateResult:
    state: machine_states.State
    rows: list[dict]  # its rows (none where it was not measured)
    profile: object  # its machine profile (MachineProfile; None where not measured)
    why_not: str | None = None  # why it was not measured


class WorkModel(Compare):
    """The approaches in the default state (shared from the run's other phases where they measured them: the
    cost cards' rows), then each of ``states`` by a run of its own (:mod:`llama_ckpt.suite.states`)."""

    own = {"states": "one-core,no-disk", "approaches": "main"}
    reads_model_path = False

    def approaches(self) -> list[Format]:
        which = str(self.params["approaches"])
        if which not in ("main", "05"):
            raise UserError(f"approaches: {which!r}; main (the aims' approaches) or 05 (every approach of 05)")
        return [APPROACHES[n] for n in AIM_APPROACHES] if which == "main" else PHASES["05"].approaches()

    def size(self) -> str:
        got = machine_states.parse_states(self.params["states"])
        return (f"{len(self.approaches())} approaches x {self.repeats} repeat(s), then the states: "
                f"{', '.join(s.name for s in got) or 'none'}")

    def measure(self) -> PhaseResult:
        source, apps = self.source(), self.approaches()
        env, rows = self._shared(apps, source)
        return self.result(runs.in_order(rows, source.name, apps), env, states=self._states())

    def reuse(self, loaded) -> PhaseResult:
        got = super().reuse(loaded)
        got.states = self._states()
        return got

    def _states(self) -> dict[str, StateResult]:
        """Every asked state: measured now where this run has not finished it."""
        out = {}
        prepare = ",".join(self.prepare) or "none"
        for st in machine_states.parse_states(self.params["states"]):
            why = None
            if not machine_states.done(self.rdir, st):
                names = list(AIM_APPROACHES) if st.name == "size" else [a.name for a in self.approaches()]
                why = machine_states.measure(st, names, self.model, self.repeats, self.rdir, self.run_id, prepare,
                                             say=self.say)
            rows, prof = machine_states.measured(self.rdir, st)
            out[st.name] = StateResult(st, rows, prof, why)
            if why:
                self.say(f"{st.name}: not measured: {why}")
        return out


KINDS: dict[str, type[Kind]] = {COMPARE: Compare, SHARDED: Sharded, TRAINING: Training, CLAIMS: Claims, CLOUD: Cloud,
                                WORK: WorkModel}


def kind_of(phase_id: str, **params) -> Kind:
    """The phase ``phase_id`` (an id or slug) ready to run with ``params``."""
    phase = get_phase(phase_id)
    return KINDS[phase.kind](phase, **params)


def run(phase_id: str, **params) -> PhaseResult:
    """Run one phase of the catalogue (or reuse its complete results of the same run id): the call every
    notebook makes."""
    return kind_of(phase_id, **params).run()
