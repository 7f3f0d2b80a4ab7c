"""The phases of the notebook suite: what each one measures, and the one call
each notebook makes (:func:`run_phase`).

Each phase tests one question of the user's guide by changing one knob of the
``tensorstore`` baseline, measures the guide's approach for that knob against
the baseline, and sweeps the knob further. All phases of a suite run share a
run id, so the summary's ratios come from one run.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable

from .. import fsutil
from ..bench import cluster, measure, training
from ..errors import UserError
from ..formats.base import Format
from ..model import PUBLISHED_DTYPE, ModelSource, PresetModel, get_model, model_name
from ..registry import APPROACHES, TRAINING, names, sweep, variant
from ..report.claims import CLAIMS, CLOUD_CLAIM, MIN_REPEATS, sample_sets, undecided_approaches
from ..results import is_valid, read_results
from ..store import Target
from ..store import server as s3_server

MiB, KiB = 1 << 20, 1 << 10
REPO = Path(__file__).resolve().parent.parent.parent
DEFAULT_OUT = REPO / "saved_models"


@dataclass(frozen=True)
class Phase:
    id: str  # "4a"
    slug: str  # notebook and results file name, "4a-concurrency"
    title: str
    question: str
    knob: str  # what changes against the baseline
    metrics: str
    guide: tuple[str, ...]  # the guide's approaches this phase measures
    extra: Callable[[], list[Format]] = field(default=lambda: [])  # the sweep
    axis: str | None = None  # the knob the sweep varies (x axis of its chart)
    claims: tuple[int, ...] = ()  # the guide's claims this phase can judge
    pairs: tuple[tuple[str, str], ...] = ()  # (a, b) comparisons in the findings; default: each against the baseline
    n_runs: int = 1  # complete end records its results file holds when the phase is done (06: one per config)
    about: str = ""  # the header's closing paragraph (default: the protocol)
    sharded: bool = False  # measures the sharded approaches (run_distributed), not ``approaches()``
    training: bool = False  # checkpoints inside a training loop (run_training_phase): registry.TRAINING's savers
    both_weights: tuple[str, ...] = ()  # measured again on the preset's other weights (full float32 / float16-origin)
    adaptive: bool = False  # the claims' phase (run_claims_phase): more repeats of what leaves a claim undecided
    sweep_repeats: int = 0  # the sweep's own points (no claim judges them) get at most this many repeats; 0: all

    def fewer(self, repeats: int, apps: list[Format] | None = None) -> dict[str, int]:
        """The sweep points (of ``apps``, default all the phase's) measured fewer than ``repeats`` times
        (``sweep_repeats``)."""
        if not self.sweep_repeats or self.sweep_repeats >= repeats:
            return {}
        names = None if apps is None else {a.name for a in apps}
        return {a.name: self.sweep_repeats for a in self.extra()
                if a.name not in self.guide and (names is None or a.name in names)}

    def header(self) -> str:
        """The notebook's header cell, generated from this definition (a test
        keeps the notebooks in step: ``python -m llama_ckpt.suite.phases headers``)."""
        if self.training:
            apps = ", ".join(f"`{n}`" for n in TRAINING)
        elif self.adaptive:
            apps = ", ".join(f"`{n}`" for n in names(tag="guide")) + " (those a claim needs)"
        elif not self.sharded:
            apps = ", ".join(f"`{a.name}`" for a in self.approaches())
        else:
            apps = ", ".join(f"`{n}`" for n in names(sharded=True)) + " (see `python -m llama_ckpt list`)"
        return (f"# {self.id} · {self.title}\n\n**Question.** {self.question}\n\n**Knob.** {self.knob}\n\n"
                f"**Metrics.** {self.metrics}\n\n**Approaches.** {apps}\n\n{self.about or PROTOCOL}")

    def approaches(self) -> list[Format]:
        """The formats the phase writes (for the training phase, its savers' formats)."""
        if self.training:
            return list({s.fmt.name: s.fmt for s in TRAINING.values()}.values())
        if self.adaptive:
            return [APPROACHES[n] for n in names(tag="guide")]
        out = {a.name: a for a in [APPROACHES[n] for n in self.guide] + self.extra()}
        return list(out.values())

    def size(self) -> str:
        """What the phase measures, for progress lines."""
        if self.training:
            return f"{len(TRAINING)} savers inside a training loop"
        if self.adaptive:
            return f"more repeats of what leaves a claim undecided, up to {CLAIMS_CAP}"
        if not self.sharded:
            return f"{len(self.approaches())} approaches"
        return f"{len(names(sharded=True))} sharded approaches x {self.n_runs} rank configurations"

    def comparisons(self, baseline: str = "tensorstore") -> tuple[tuple[str, str], ...]:
        return self.pairs or tuple((g, baseline) for g in self.guide if g != baseline)


PROTOCOL = ("Protocol (`llama_ckpt.bench.measure`): a save is timed until its bytes are fsynced; a load is timed "
            "cold (files evicted from the page cache first, confirmed with `mincore`) until every tensor is in memory; "
            "every load is checked bit for bit against digests of what was saved, and a row that does not round-trip "
            "is never shown as a result. The disk itself is measured in the same run as a reference.")
SHARDED_PROTOCOL = (
    "Each rank is a process joined by torch.distributed on the gloo backend; it owns a contiguous block of rows of "
    "every tensor (ceil(rows / ranks) rows, `torch.chunk`'s split; 1-D tensors are split the same way). All ranks "
    "start a save together after a barrier; the checkpoint time ends when rank 0 has committed (manifest, with "
    "every shard's digest, and marker written after every rank's rows are durable), so it is the slowest rank plus "
    "the commit. Loads are cold (the checkpoint's files evicted first) and each rank's slice is checked against the "
    "digests of the same rows of the unsharded source, also when the checkpoint is loaded by another number of "
    "ranks than saved it. The sharded mode builds the preset's seeded weights in every rank (`MODEL`; `MODEL_PATH` "
    "is not used here). The last configuration is started the way a cluster starts it: two `torchrun` launches on "
    "this machine act as two nodes of two ranks each (c10d rendezvous on loopback), every rank a "
    "`python -m llama_ckpt run` of its own; on one machine both \"nodes\" share its cores and disk, so it shows the "
    "launcher's path and overhead, not a second node's bandwidth.")

CLAIMS_CAP = 12  # the most repeats 08 gives an approach for a claim
CLAIMS_STEP = 2  # repeats added per round to each approach that leaves a claim undecided
CLAIMS_BUDGET_S = 600  # repeats beyond MIN_REPEATS: none starts after this long (the run-all's time bound)
CLAIMS_PROTOCOL = (
    "Protocol (`llama_ckpt.suite.phases.run_claims_phase`): every claim of the guide is judged on every row this "
    "run has of the approaches it compares (each configuration is measured once per run and shared by the phases "
    "that need it), by the rule below. While a claim is undecided, the approaches whose comparisons leave it "
    "undecided (both sides of an undecided comparison; for \"fastest\", the winner and the contenders it cannot "
    "be told apart from) get more repeats, interleaved with each other, a round at a time, until every claim is "
    f"decided or they reach {CLAIMS_CAP} repeats; then \"inconclusive\" means the interval still straddles the "
    f"threshold with that many repeats. The first round brings every such approach to {MIN_REPEATS} repeats, the "
    "rule's minimum, whatever it costs; the rounds beyond it stop when they have measured for `CLAIMS_BUDGET_S` "
    "seconds (a claim left undecided there reads inconclusive at the repeats it had, and the findings say so). "
    "The compression and float16 claims (3 and 4) are judged on both kinds of weights: float16-origin (the "
    "default: the preset's values rounded to float16, as a float32 copy of the published model holds them) and "
    "full float32 mantissas. Each save and load is timed as in every phase "
    "(durable saves, cold loads, every load verified).")

TRAINING_PROTOCOL = (
    "Protocol (`llama_ckpt.bench.training`): the preset's LLaMA is trained on the CPU (transformers, AdamW, forward "
    "and backward on seeded random token batches) and checkpointed by one saver at a time, each taking its "
    "checkpoints in a row as a run that uses it would (its staging copy kept between them, freed before the next "
    "saver). Each checkpoint is a segment of the loop: a step with no save in flight, the saver's call at step k (the "
    "digests of step k's tensors taken just before it, outside every timing), then steps while the save finishes in "
    "the background, and a wait for it if it is still in flight. **Blocking** is the call's time (until the loop may "
    "step again), **durable** the time from the call until the checkpoint is committed (every byte fsynced, then "
    "manifest and marker, by this process: a process killed mid-save leaves no committed checkpoint). The loop "
    "updates the weights in place meanwhile; each checkpoint is then loaded cold and must match step k's digests "
    "bit for bit, so one holding later weights, or a mix, fails. `MODEL_PATH` is not used here: the model is built "
    "from the preset's config.")

# 4f's sweep: one knob of a base approach at a time, (base, knob, values)
IO_POINTS = (
    ("ts+best", "file_io_locking", ["none"]),
    ("ts+best", "file_io_sync", [False]),
    ("ts+best", "file_io_mode", ["direct", "memmap"]),
    ("ts+best", "target_data_file_size", [16 * MiB, 0]),  # 0: OCDBT's default
    ("ts+best", "data_copy_concurrency", [1, 4]),
    ("ts+best", "concurrency", [2, 32, 128]),
    ("ts+best", "commit_bytes", [128 * MiB]),
    ("runai-streamer", "concurrency", [1, 4, 64]),
    ("runai-streamer", "memory_limit", [256 * MiB]),
    ("runai-streamer", "chunk_bytesize", [1 * MiB, 64 * MiB]),
    ("fastsafetensors", "max_threads", [1, 4]),
    ("tensorizer", "num_readers", [1, 16]),
)
IO_BASES = tuple(dict.fromkeys(b for b, _k, _v in IO_POINTS))


def io_sweep() -> list[tuple[str, Format]]:
    """(base, variant) of every point of 4f's sweep, the bases first."""
    out = [(b, APPROACHES[b]) for b in IO_BASES]
    out += [(b, variant(b, **{knob: v})) for b, knob, vals in IO_POINTS for v in vals]
    return out


# 4a's and 4d's sweep points are 64-element-chunk saves (~41,000 files, each fsynced: 35-85 s each on the small
# preset here) that no claim judges: one repeat each keeps a default run-all within its time; the guide's pair of
# the phase (and every cheaper sweep) gets the run's repeats, and its spread shows how far one repeat can be off.
SLOW_SWEEP_REPEATS = 1

PHASES: dict[str, Phase] = {p.id: p for p in [
    Phase("00", "00-baselines", "Baselines",
          "How do torch.save, the TensorStore baseline and T5X's configuration compare?",
          "none: the three reference points, plus the same-dtype partners pytorch-fp32 (of tensorstore) and "
          "ts+float16 (of pytorch)", "save and cold-load time, size on disk, file count, peak memory",
          ("pytorch", "tensorstore", "t5x", "pytorch-fp32", "ts+float16"),
          pairs=(("pytorch", "tensorstore"), ("t5x", "tensorstore"), ("pytorch-fp32", "tensorstore"),
                 ("pytorch", "ts+float16"))),
    Phase("4a", "4a-concurrency", "Concurrency",
          "Does parallelism help? TensorStore with 128 concurrent file operations against one at a time.",
          "file_io_concurrency (1 -> 128; all writes in flight together above 1)",
          "save and load time against the baseline; the sweep 1, 4, 16, 64, 128 (one repeat of 4, 16 and 64)",
          ("tensorstore", "ts+concurrency"),
          lambda: sweep("tensorstore", concurrency=[1, 4, 16, 64, 128]), "concurrency", (2,),
          sweep_repeats=SLOW_SWEEP_REPEATS),
    Phase("4b", "4b-chunks", "Chunk size",
          "Do large chunks help? 1 MiB chunks against 64 elements per dimension.",
          "chunk shape (64 per dimension -> whole rows up to 1 MiB)",
          "save, load, size and file count; the sweep 64/dim, 64 KiB, 1 MiB, 16 MiB, 64 MiB, whole tensor",
          ("tensorstore", "ts+chunks"),
          lambda: [APPROACHES["tensorstore"]] + sweep("ts+chunks", chunk_size=[64 * KiB, 1 * MiB, 16 * MiB, 64 * MiB])
          + sweep("ts+chunks", chunk_rule="whole"), "chunk_size", (1,)),
    Phase("4c", "4c-compression", "Compression",
          "Is compression worth it? gzip against no compressor, and other codecs at 1 MiB chunks.",
          "compressor (none -> gzip)",
          "save and load time, compression ratio overall and by tensor kind",
          ("tensorstore", "ts+compression"),
          lambda: sweep("ts+chunks", compression=[None, "gzip", "gzip:9", "zstd", "blosc-lz4"]), "compression", (3,),
          n_runs=2, both_weights=("tensorstore", "ts+compression")),
    Phase("4d", "4d-float16", "Smaller dtype",
          "Does a smaller dtype help? float16 against float32, plus bfloat16.",
          "stored dtype (float32 -> float16; bfloat16 as a sweep point, one repeat)",
          "save and load time, size, and the precision cost by tensor kind: max abs/rel error, overflow to inf, "
          "flush to zero",
          ("tensorstore", "ts+float16"),
          lambda: sweep("tensorstore", dtype=["float32", "float16", "bfloat16"]), "dtype", (4,),
          n_runs=2, both_weights=("tensorstore", "ts+float16"), sweep_repeats=SLOW_SWEEP_REPEATS),
    Phase("4e", "4e-ocdbt", "OCDBT",
          "Is OCDBT better than the plain file driver?",
          "kvstore (file -> OCDBT over file)",
          "save and load time, size, files created, bytes beyond the chunk data (metadata); on S3: objects, requests "
          "and time at two round-trip delays",
          ("tensorstore", "ts+ocdbt"),
          lambda: sweep("ts+chunks", use_ocdbt=[False, True]), "use_ocdbt", (5,)),
    Phase("4f", "4f-io", "I/O knobs",
          "Which I/O settings bring TensorStore and the fast loaders closest to the disk? ts+best is the TensorStore "
          "configuration this sweep measures fastest.",
          "one I/O knob at a time: TensorStore's file locking, fsync as it writes or one fsync pass after, read mode "
          "(pread, O_DIRECT, mmap), OCDBT data file size, copy threads, I/O concurrency, commits in batches; the Run:ai "
          "streamer's concurrency, CPU buffer limit and chunk size; fastsafetensors' threads; tensorizer's readers",
          "save and cold-load time against each knob's base approach, share of the disk reference, peak memory",
          (), lambda: [a for _b, a in io_sweep()],
          pairs=tuple((a.name, b) for b, a in io_sweep() if a.name != b)),
    Phase("05", "05-formats", "Formats in use today",
          "What do teams use today, and can a TensorStore configuration beat torch.save?",
          "format: torch.save, safetensors, torch.distributed.checkpoint, zarr3 shards, and ts+best (OCDBT with "
          "64 MiB data files, 16 MiB chunks, one transaction committed every 1 GiB, concurrency 8, no source copy); and the loaders teams deploy (the "
          "Run:ai Model Streamer and fastsafetensors on a safetensors file, tensorizer, torch.load with mmap)",
          "save and cold-load time as ratios in this run, throughput as a share of the disk reference, size, files",
          ("pytorch-fp32", "safetensors", "dcp", "ts+zarr3", "ts+best", "ts+best16", "ts+chunks", "pytorch",
           "runai-streamer", "fastsafetensors", "tensorizer", "pytorch-fp32-mmap"),
          pairs=(("ts+best", "pytorch-fp32"), ("ts+best", "safetensors"), ("ts+best16", "pytorch"),
                 ("ts+best", "ts+chunks"), ("safetensors", "pytorch-fp32"), ("dcp", "pytorch-fp32"),
                 ("ts+zarr3", "ts+chunks"), ("runai-streamer", "safetensors"), ("fastsafetensors", "safetensors"),
                 ("tensorizer", "pytorch-fp32"), ("pytorch-fp32-mmap", "pytorch-fp32"))),
    Phase("06", "06-distributed", "Sharded across processes",
          "How do sharded checkpoints scale when many processes write one checkpoint together, and can they be "
          "read back on another number of processes?",
          "ranks saving (1, 2, 4) and loading (the same, and resharded 2 -> 3, 4 -> 2), over torch.distributed (gloo); "
          "and 2 nodes x 2 ranks started by torchrun",
          "checkpoint time (the slowest rank plus the commit), per-rank write and read times, aggregate and per-node "
          "throughput, files", (), n_runs=6, about=SHARDED_PROTOCOL, sharded=True),
    Phase("07", "07-training", "Checkpoints inside a training loop",
          "How long does a checkpoint stop a training loop, how long until it is durable, and what does the save "
          "cost the steps around it?",
          "how the save runs: synchronously; DCP's async_save from a thread or its writer process; TensorStore's own "
          "asynchrony (writes copied, committed in the background); a staging copy, then torch.save or safetensors "
          "in a thread or a forked process; a fork() snapshot written by the child",
          "blocking time, time until durable, step time with and without a save in flight (slowdown), the "
          "checkpoint's cost to the loop and its share of the wall time, extra peak memory, cold load time",
          (), about=TRAINING_PROTOCOL, training=True),
    Phase("08", "08-claims", "The guide's claims, decided",
          "Which of the guide's claims hold in this run, by a stated statistical rule, with enough repeats to "
          "decide?",
          "repeats: the approaches a claim still cannot decide get more interleaved repeats, a round at a time, "
          "up to a cap",
          "each claim's verdict, the ratio of medians with its bootstrap interval, the repeats each verdict rests on",
          (), about=CLAIMS_PROTOCOL, adaptive=True),
]}
# 06's configurations: (ranks saving, ranks loading)
DIST_CONFIGS = ((1, 1), (2, 2), (4, 4), (2, 3), (4, 2))
# ... and the jobs started by torchrun on this machine: (nodes, ranks per node)
TORCHRUN_CONFIGS = ((2, 2),)
SUMMARY_SLUG = "99-summary"


def get_phase(phase_id: str) -> Phase:
    for p in PHASES.values():
        if phase_id in (p.id, p.slug):
            return p
    raise UserError(f"unknown phase {phase_id!r}; valid phases: {', '.join(PHASES)}")


def run_dir(out_dir: str | Path, run_id: str) -> Path:
    return Path(out_dir or DEFAULT_OUT) / "runs" / run_id


def latest_run(out_dir: str | Path) -> str | None:
    runs = Path(out_dir or DEFAULT_OUT) / "runs"
    ids = sorted(p.name for p in runs.iterdir() if p.is_dir()) if runs.is_dir() else []
    return ids[-1] if ids else None


def results_path(out_dir: str | Path, run_id: str, slug: str) -> Path:
    return run_dir(out_dir, run_id) / "results" / f"{slug}.jsonl"


def phase_complete(out_dir: str | Path, run_id: str, slug: str) -> bool:
    """A phase's results are complete when its file ends with an ``end`` record
    (one per configuration; the claims' phase: its own, after its last round)."""
    p = results_path(out_dir, run_id, slug)
    ph = next((ph for ph in PHASES.values() if ph.slug == slug), None)
    if not p.is_file():
        return False
    ends = read_results([p]).ends
    if ph is not None and ph.adaptive:
        return any(e.get("claims_final") for e in ends)
    return sum(bool(e.get("complete", True)) for e in ends) >= (ph.n_runs if ph else 1)


@dataclass
class PhaseResult:
    phase: Phase
    run_id: str
    results_path: Path
    rows: list[dict]  # the phase's rows on the run's weights: its own and those shared from other phases
    env: dict
    reused: bool  # complete results of this run were found and not measured again
    other: list[dict] = field(default_factory=list)  # ``both_weights`` rows on the preset's other weights


def _key(a: Format | dict) -> tuple:
    knobs = a.knobs() if isinstance(a, Format) else a.get("knobs")
    return (a.name if isinstance(a, Format) else a["approach"], json.dumps(knobs, sort_keys=True, default=str))


def shared_rows(out_dir, run_id: str, slug: str, approaches: list[Format], model: str) -> dict[str, list[dict]]:
    """The valid rows other phases of this run measured of ``approaches`` (the
    same name and knobs) on the same model and weights, on this machine's
    disk, by one process: a configuration is measured once per run, and every
    phase that needs it shares its rows (each row names the phase that measured it)."""
    files = [f for f in sorted((run_dir(out_dir, run_id) / "results").glob("*.jsonl")) if f.stem != slug]
    want = {_key(a) for a in approaches}
    out: dict[str, list[dict]] = {}
    for r in read_results(files).measurements if files else []:
        if is_valid(r) and r["model"] == model and not r.get("world_size") and _key(r) in want:
            out.setdefault(r["approach"], []).append(r)
    return out


def other_weights(source) -> ModelSource | None:
    """The preset with its other weights (float32 for float16-origin, float16-origin for float32); None for
    real weights (MODEL_PATH)."""
    if not isinstance(source, PresetModel):
        return None
    return PresetModel(model_name(source.preset, PUBLISHED_DTYPE if source.origin == "float32" else "float32"),
                       seed=source.seed)


def _split(rows: list[dict], model: str, approaches: list[Format]) -> list[dict]:
    """``rows`` of ``model``, in the phase's order of approaches, then by repeat."""
    rank = {a.name: i for i, a in enumerate(approaches)}
    return sorted((r for r in rows if r["model"] == model), key=lambda r: (rank.get(r["approach"], len(rank)),
                                                                             r.get("repeat") or 0))


def _reuse_or_set_aside(phase: Phase, out_dir, run_id: str, rpath: Path, say) -> PhaseResult | None:
    """The phase's complete results of this run, if there are any; otherwise
    None, with an interrupted try's results file moved aside
    (``*.incomplete-<time>``) so that it is never mixed in."""
    if phase_complete(out_dir, run_id, phase.slug):
        loaded = read_results([rpath])
        say(f"phase {phase.slug}: complete results of run {run_id} found in {rpath}; not measured again")
        env = loaded.environments[0] if loaded.environments else {}
        if phase.training or phase.sharded or phase.adaptive:
            return PhaseResult(phase, run_id, rpath, loaded.measurements + loaded.training, env, True)
        apps = phase.approaches()

        def rows_of(model: str) -> list[dict]:
            shared = shared_rows(out_dir, run_id, phase.slug, apps, model)
            return _split(loaded.measurements + [r for rs in shared.values() for r in rs], model, apps)
        others = [e["model"] for e in loaded.environments if e["model"] != env["model"]]
        return PhaseResult(phase, run_id, rpath, rows_of(env["model"]), env, True,
                           rows_of(others[0]) if others else [])
    if rpath.exists():
        aside = rpath.with_name(rpath.name + f".incomplete-{datetime.now():%Y%m%d-%H%M%S}")
        shutil.move(rpath, aside)
        say(f"phase {phase.slug}: an interrupted try's rows were moved to {aside}")
    return None


def _begin(phase_id: str, out_dir, run_id: str, say):
    """A phase's definition, run id, run directory and results file, and its
    complete results of this run if there are any (see :func:`_reuse_or_set_aside`)."""
    phase = get_phase(phase_id)
    run_id = run_id or measure.new_run_id()
    rpath = results_path(out_dir, run_id, phase.slug)
    return phase, run_id, run_dir(out_dir, run_id), rpath, _reuse_or_set_aside(phase, out_dir, run_id, rpath, say)


def run_phase(phase_id: str, model: str = "small", model_path: str = "", repeats: int = 1,
              out_dir: str | Path = "", run_id: str = "", keep: bool = False, progress: bool | None = None,
              say=print) -> PhaseResult:
    """Measure one phase (or reuse its complete results from the same run id)
    and return its rows. An incomplete results file from an interrupted try
    is kept aside (``*.incomplete-<time>``), never mixed in."""
    phase, run_id, rdir, rpath, done = _begin(phase_id, out_dir, run_id, say)
    if done is not None:
        return done
    source = get_model(model or None, model_path or None)
    apps = phase.approaches()
    env, rows = _measure_shared(phase, apps, source, repeats, out_dir, run_id, rdir, rpath, keep, progress, say)
    other, other_rows = other_weights(source) if phase.both_weights else None, []
    if other is not None:
        say(f"{', '.join(phase.both_weights)} again on the {other.weights} weights ({other.name}), "
            f"for the claims {', '.join(map(str, phase.claims))} on both kinds of weights")
        _e, other_rows = _measure_shared(phase, [APPROACHES[n] for n in phase.both_weights], other, repeats, out_dir,
                                         run_id, rdir, rpath, keep, progress, say, reference=False)
    elif phase.both_weights:  # real weights: there is no other kind; the end record says so
        measure.RunLog(rpath, run_id, 0, lambda r: None).end(True, skipped="real weights (MODEL_PATH): one kind only")
    return PhaseResult(phase, run_id, rpath, _split(rows, source.name, apps), env, False,
                       _split(other_rows, other.name, apps) if other is not None else [])


def _row_line(r: dict, where: str = "") -> str:
    """A measured row's progress line: ``  approach #k<where>: save ..., load ...`` or its error."""
    return (f"  {r['approach']} #{r['repeat']}{where}: "
            + ("ERROR " + r["error"] if r["error"] else f"save {r['save_s']:.2f} s, load {r['load_s']:.2f} s"))


def _measure_shared(phase: Phase, apps: list[Format], source, repeats: int, out_dir, run_id: str, rdir: Path,
                    rpath: Path, keep: bool, progress, say, reference: bool = True) -> tuple[dict, list[dict]]:
    """``apps`` on ``source`` to ``repeats`` valid repeats each, counting the
    rows other phases of the run measured of the same configuration: the
    phase measures only what is missing. Returns the environment and every
    row (measured here and shared)."""
    shared = shared_rows(out_dir, run_id, phase.slug, apps, source.name)
    fewer = phase.fewer(repeats, apps)
    for n, k in fewer.items():
        say(f"{n}: a sweep point no claim judges, {k} repeat(s) (SLOW_SWEEP_REPEATS)")
    for n, rs in shared.items():
        by = ", ".join(dict.fromkeys(r.get("phase") or "?" for r in rs))
        want = fewer.get(n, repeats)
        say(f"{n}: {len(rs)} repeat(s) measured in this run by {by}, shared"
            + (f"; {want - len(rs)} more measured here" if len(rs) < want else ""))
    opts = measure.Options(out=rdir, repeats=repeats, keep=keep, results=rpath, run_id=run_id, progress=progress,
                           checkpoints=rdir / "checkpoints" / phase.slug, lock=Path(out_dir or DEFAULT_OUT),
                           disk_reference=reference, phase=phase.slug, done={n: len(rs) for n, rs in shared.items()},
                           fewer=fewer or None)
    env, rows = measure.run(apps, source, opts, say=say, on_row=lambda r: say(_row_line(r)))
    return env, rows + [r for rs in shared.values() for r in rs]


@dataclass
class ClaimsResult:
    phase: Phase
    run_id: str
    results_path: Path
    rows: list[dict]  # every row this run has of the guide's approaches, on the run's weights
    other: list[dict]  # ... on the preset's other weights (claims 3 and 4 are judged on both)
    rounds: list[dict]  # one per round of added repeats: what it measured and why
    reused: bool
    model: str = ""
    other_model: str = ""
    stopped: str | None = None  # why rounds stopped before every claim was decided or at the cap


def guide_rows(out_dir, run_id: str, model: str) -> list[dict]:
    """Every row of this run of the guide's approaches on ``model``, on this machine's disk, by one process."""
    guide = set(names(tag="guide"))
    loaded, _files = run_results(out_dir, run_id)
    return [r for r in loaded.measurements
            if r["model"] == model and r["approach"] in guide and not r.get("world_size")]


def undecided(rows: list[dict], numbers: tuple[int, ...] | None = None) -> dict[str, tuple[int, ...]]:
    """The approaches whose repeats leave a claim undecided on ``rows``, each with those claims."""
    samples = sample_sets(rows)
    out: dict[str, tuple[int, ...]] = {}
    for c in CLAIMS:
        if numbers is None or c.number in numbers:
            for n in undecided_approaches(c, samples):
                out[n] = out.get(n, ()) + (c.number,)
    return out


def run_claims_phase(phase_id: str = "08", model: str = "small", model_path: str = "",
                     out_dir: str | Path = "", run_id: str = "", cap: int = CLAIMS_CAP, step: int = CLAIMS_STEP,
                     budget_s: float = CLAIMS_BUDGET_S, progress: bool | None = None, say=print) -> ClaimsResult:
    """Judge the guide's claims on this run's rows; while one is undecided,
    measure the approaches that leave it undecided, interleaved: first to
    ``MIN_REPEATS`` (the rule's minimum, never cut short), then ``step`` more
    a round (never beyond ``cap`` of any; none of these starts after
    ``budget_s`` seconds of them), and judge again. Claims 3 and 4 are
    judged, and given repeats, on both kinds of weights."""
    phase, run_id, rdir, rpath, done = _begin(phase_id, out_dir, run_id, say)
    source = get_model(model or None, model_path or None)
    other = other_weights(source)
    kinds = [(source, None)] + ([(other, (3, 4))] if other is not None else [])
    if done is not None:
        final = next(e for e in read_results([rpath]).ends if e.get("claims_final"))
        return ClaimsResult(phase, run_id, rpath, guide_rows(out_dir, run_id, source.name),
                            guide_rows(out_dir, run_id, other.name) if other else [], final["rounds"], True,
                            source.name, other.name if other else "", final.get("stopped"))
    if cap < 1 or step < 1:
        raise UserError(f"the claims' cap and step must be at least 1, got {cap} and {step}")
    rounds, t0, stopped = [], time.perf_counter(), None
    t_beyond = None  # when the first repeat beyond MIN_REPEATS started: the budget counts from there
    for k in range(1, 1 + -(-cap // step) + 1):
        todo = []  # (source, approach names, their counts)
        for src, numbers in kinds:
            rows = guide_rows(out_dir, run_id, src.name)
            counts = {n: sum(r["approach"] == n and is_valid(r) for r in rows) for n in names(tag="guide")}
            # an approach a claim compares that no phase measured is measured here, from its first repeat
            need = {n: cl for n, cl in undecided(rows, numbers).items() if counts[n] < cap}
            if need:
                todo.append((src, need, counts))
        if not todo:
            break
        if t_beyond is not None and time.perf_counter() - t_beyond > budget_s:
            stopped = f"the time budget for repeats beyond {MIN_REPEATS} ({budget_s:.0f} s) was spent before round {k}"
            break
        for src, need, counts in todo:
            # first every approach a claim needs to the rule's minimum (never cut short: a verdict on fewer
            # repeats is inconclusive by the rule), then ``step`` more a round, within the budget
            short = any(counts[n] < MIN_REPEATS for n in need)
            target = min(cap, MIN_REPEATS if short else max(counts[n] for n in need) + step)
            if target > MIN_REPEATS and t_beyond is None:
                t_beyond = time.perf_counter()
            say(f"round {k} on {src.name} ({src.weights} weights): "
                + "; ".join(f"{n} (claims {', '.join(map(str, cl))}) {counts[n]} -> {max(target, counts[n])}"
                            for n, cl in need.items()))
            opts = measure.Options(out=rdir, repeats=target, results=rpath, run_id=run_id, progress=progress,
                                   checkpoints=rdir / "checkpoints" / phase.slug, lock=Path(out_dir or DEFAULT_OUT),
                                   disk_reference=False, phase=phase.slug, done={n: counts[n] for n in need},
                                   deadline=None if target <= MIN_REPEATS else t_beyond + budget_s)
            env, _rows = measure.run([APPROACHES[n] for n in need], src, opts, say=say,
                                     on_row=lambda r: say(_row_line(r)))
            late = env.get("deadline_skipped", 0)
            rounds.append({"round": k, "model": src.name, "weights": src.weights, "target": target,
                           "approaches": {n: list(cl) for n, cl in need.items()},
                           "added": sum(max(0, target - counts[n]) for n in need) - late})
            if late:
                stopped = f"the time budget for repeats beyond {MIN_REPEATS} ({budget_s:.0f} s) was spent in " \
                          f"round {k} ({late} planned measurement(s) not started)"
                break
        if stopped:
            break
    if stopped:
        say(f"stopped: {stopped}; the claims still undecided stay inconclusive at their repeats")
    measure.RunLog(rpath, run_id, 0, lambda r: None).end(True, claims_final=True, rounds=rounds, stopped=stopped,
                                                          seconds=round(time.perf_counter() - t0, 1))
    return ClaimsResult(phase, run_id, rpath, guide_rows(out_dir, run_id, source.name),
                        guide_rows(out_dir, run_id, other.name) if other else [], rounds, False, source.name,
                        other.name if other else "", stopped)


def run_training_phase(phase_id: str = "07", model: str = "small", repeats: int = 1, out_dir: str | Path = "",
                       run_id: str = "", keep: bool = False, optimizer: bool = False,
                       steps_after: int = training.STEPS_AFTER, say=print) -> PhaseResult:
    """Every saver of ``registry.TRAINING`` checkpointing a training loop
    ``repeats`` times (or this run's complete results, reused)."""
    phase, run_id, rdir, rpath, done = _begin(phase_id, out_dir, run_id, say)
    if done is not None:
        return done
    source = get_model(model or None)
    opts = training.TrainingOptions(out=rdir, checkpoints=rdir / "checkpoints" / phase.slug, results=rpath,
                                    run_id=run_id, repeats=repeats, optimizer=optimizer, steps_after=steps_after,
                                    keep=keep)

    def line(r):
        if r["error"]:
            return f"  {r['approach']} #{r['repeat']}: ERROR {r['error']}"
        return (f"  {r['approach']} #{r['repeat']} at step {r['step']}: blocked {r['blocking_s']:.3f} s, durable "
                f"{r['durable_s']:.2f} s, {len(r['steps_inflight_s'])} step(s) with it in flight")
    with fsutil.output_lock(Path(out_dir or DEFAULT_OUT)):
        env, rows = training.run_training(list(TRAINING.values()), source, opts, on_row=lambda r: say(line(r)), say=say)
    return PhaseResult(phase, run_id, rpath, rows, env, False)


def run_results(out_dir: str | Path, run_id: str):
    """Every phase's rows and environment records of one run."""
    files = sorted((run_dir(out_dir, run_id) / "results").glob("*.jsonl"))
    return read_results(files), files


# -- the cloud section of 4e: plain zarr against OCDBT on an S3 server ---------
CLOUD_DELAYS_MS = (0.0, 20.0)  # added round trip: loopback, and a bucket in a nearby cloud region
CLOUD_BUCKET = "llama-ckpt"
CLOUD_MODEL = "tiny"


CLOUD_PAIRS = (("ts+ocdbt", "tensorstore"), ("ts+chunks[use_ocdbt=True]", "ts+chunks"),
               ("ts+best", "ts+best[use_ocdbt=False]"))  # (OCDBT, the same on plain zarr objects)


# cold loads from S3 by a library's own client against TensorStore's OCDBT and boto3: (a, b)
CLOUD_LOADER_PAIRS = (("runai-streamer", "safetensors"), ("runai-streamer", "ts+best"), ("ts+best", "safetensors"))


def cloud_approaches() -> list[Format]:
    """OCDBT against plain zarr objects at 64-element chunks (the baseline and
    ts+ocdbt), at 1 MiB chunks (ts+chunks with and without OCDBT), and with
    every write in one transaction (ts+best with and without OCDBT); then one
    safetensors object read by boto3 (safetensors) and by the Run:ai
    streamer's own S3 client (runai-streamer)."""
    return ([APPROACHES["tensorstore"], APPROACHES["ts+ocdbt"]] + sweep("ts+chunks", use_ocdbt=[False, True])
            + [variant("ts+best", use_ocdbt=False), APPROACHES["ts+best"], APPROACHES["safetensors"],
               APPROACHES["runai-streamer"]])


def cloud_results_path(out_dir: str | Path, run_id: str, slug: str, delay_ms: float) -> Path:
    # beside, not inside, results/: the summary's local comparisons never mix in S3 rows
    return run_dir(out_dir, run_id) / "results-cloud" / f"{slug}-{delay_ms:g}ms.jsonl"


@dataclass
class CloudResult:
    run_id: str
    rows: list[dict]  # every delay's rows; each carries s3_delay_ms
    envs: list[dict]
    endpoint: str
    server_started: bool  # a private server was started for this and stopped after


def run_cloud(phase_id: str = "4e", model: str = CLOUD_MODEL, model_path: str = "", repeats: int = 1,
              out_dir: str | Path = "", run_id: str = "", endpoint: str = "",
              delays: tuple[float, ...] = CLOUD_DELAYS_MS, progress: bool | None = None, say=print) -> CloudResult:
    """The phase's cloud approaches on S3 at each added round-trip delay,
    ``repeats`` times each; those claim 9 compares at least ``MIN_REPEATS``
    times (the verdict rule's minimum: fewer leave it inconclusive). Without
    ``endpoint``, a private SeaweedFS server is started under the run's
    directory and stopped (its data removed) at the end. Complete results of
    the same run id are reused, as for the local phases."""
    phase = get_phase(phase_id)
    run_id = run_id or measure.new_run_id()
    rdir = run_dir(out_dir, run_id)
    lock = Path(out_dir or DEFAULT_OUT)
    rows, envs, todo = [], [], []
    for d in delays:
        p = cloud_results_path(out_dir, run_id, phase.slug, d)
        if p.is_file() and any(e.get("complete", True) for e in read_results([p]).ends):
            loaded = read_results([p])
            rows += loaded.measurements
            envs += loaded.environments[-1:]
            say(f"cloud {d:g} ms: complete results of run {run_id} found in {p}; not measured again")
        else:
            todo.append(d)
    most = max(repeats, MIN_REPEATS)
    fewer = {a.name: repeats for a in cloud_approaches() if a.name not in CLOUD_CLAIM.approaches()}
    server = None
    if todo and not endpoint:
        server = s3_server.start_server(rdir / "s3")
        endpoint = server.endpoint
        say(f"started a private SeaweedFS server at {endpoint} (data in {server.data_dir})")
    server_dir = server.data_dir if server else (s3_server.local_server_dir(endpoint, [lock / "s3"]) if endpoint else None)
    try:
        source = get_model(model or None, model_path or None) if todo else None
        for d in todo:
            p = cloud_results_path(out_dir, run_id, phase.slug, d)
            if p.exists():
                p.rename(p.with_name(p.name + f".incomplete-{datetime.now():%Y%m%d-%H%M%S}"))
            target = Target(CLOUD_BUCKET, f"{run_id}/{phase.slug}-{d:g}ms", endpoint, delay_ms=d,
                            server_dir=server_dir)
            opts = measure.Options(out=rdir, repeats=most, results=p, run_id=run_id, progress=progress,
                                   lock=lock, storage=target.path(), fewer=fewer if repeats < most else None)
            env, rs = measure.run(cloud_approaches(), source, opts, say=say,
                                  on_row=lambda r: say(_row_line(r, f" at {r.get('s3_delay_ms') or 0:g} ms")))
            rows += rs
            envs.append(env)
    finally:
        if server is not None:
            server.stop()
            shutil.rmtree(server.data_dir, ignore_errors=True)
    return CloudResult(run_id, rows, envs, endpoint, server is not None)


def cloud_rows(out_dir: str | Path, run_id: str) -> list[dict]:
    """Every cloud row of a run (all phases, all delays)."""
    files = sorted((run_dir(out_dir, run_id) / "results-cloud").glob("*.jsonl"))
    return read_results(files).measurements if files else []


def run_distributed(phase_id: str = "06", model: str = "small", repeats: int = 1, out_dir: str | Path = "",
                    run_id: str = "", configs: tuple[tuple[int, int], ...] = DIST_CONFIGS,
                    torchrun_configs: tuple[tuple[int, int], ...] = TORCHRUN_CONFIGS,
                    progress: bool | None = None, say=print) -> PhaseResult:
    """The sharded approaches at each (save ranks, load ranks) configuration,
    spawned here, then at each (nodes, ranks per node) started by torchrun;
    all rows in the phase's one results file (one end record per config)."""
    phase, run_id, rdir, rpath, done = _begin(phase_id, out_dir, run_id, say)
    if done is not None:
        return done
    source = get_model(model or None)
    rows, env = [], {}
    for world, load_world in configs:
        opts = measure.Options(out=rdir, repeats=repeats, results=rpath, run_id=run_id, progress=progress,
                               checkpoints=rdir / "checkpoints" / phase.slug, lock=Path(out_dir or DEFAULT_OUT),
                               disk_reference=(world, load_world) == configs[0], world_size=world,
                               load_world_size=load_world)
        env_c, rs = measure.run([APPROACHES[n] for n in names(sharded=True)], source, opts, say=say,
                                on_row=lambda r: say(_row_line(r, f" {r['world_size']} -> {r['load_world_size']} ranks")))
        env = env or env_c
        rows += rs
    for nodes, per_node in torchrun_configs:
        say(f"torchrun: {nodes} launches of {per_node} ranks on this machine as {nodes} nodes")
        before = read_results([rpath])
        procs = cluster.torchrun(nodes, per_node, [
            "run", "--approach", ",".join(names(sharded=True)), "--model", source.name, "--repeats", str(repeats),
            "--out", str(rdir), "--results", str(rpath), "--run-id", run_id, "--no-reference"])
        for line in (ln for p in procs for ln in p.stdout.splitlines() if ln.startswith("  ")):
            say(line)  # rank 0's row lines (the other ranks print nothing)
        after = read_results([rpath])
        # torchrun exits 1 for a failed rank and for a row that did not verify alike: the job
        # finished only if it wrote its complete end record
        if not any(e.get("complete") for e in after.ends[len(before.ends):]):
            errs = [ln for p in procs for ln in p.stderr.splitlines() if "error" in ln.lower()]
            raise UserError(f"the torchrun job of {nodes} x {per_node} ranks did not finish (exit "
                            f"{[p.returncode for p in procs]}): {errs[0] if errs else 'no error line'}")
        rows += after.measurements[len(before.measurements):]
    return PhaseResult(phase, run_id, rpath, rows, env, False)


def sync_headers(notebooks: Path = REPO / "notebooks") -> list[str]:
    """Rewrite each phase notebook's header cell from its definition; returns
    the notebooks that changed."""
    import nbformat

    changed = []
    for p in PHASES.values():
        path = notebooks / f"{p.slug}.ipynb"
        nb = nbformat.read(path, as_version=4)
        if nb.cells[0].source != p.header():
            nb.cells[0].source = p.header()
            nbformat.write(nb, path)
            changed.append(p.slug)
    return changed


if __name__ == "__main__":
    import sys

    if sys.argv[1:] != ["headers"]:
        sys.exit("usage: python -m llama_ckpt.suite.phases headers")
    print("rewrote:", ", ".join(sync_headers()) or "nothing (in step)")
