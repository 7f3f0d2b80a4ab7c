"""The phase catalogue: what each phase of the notebook suite asks and
measures, as data (no runner here: :mod:`llama_ckpt.suite.kinds` runs a
phase by its ``kind``).

Each phase tests one question of the user's guide by changing one knob of the
``tensorstore`` baseline, measures the guide's approach for that knob against
the baseline, and sweeps the knob further. All phases of a suite run share a
run id, so the summary's ratios come from one run.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..bench.savers import SAVERS
from ..errors import UserError
from ..formats.base import Format
from ..registry import APPROACHES, FORMAT_BASELINES, GUIDE, formats_phase, names, sweep
from ..results.text import BASELINE
from ..units import KiB, MiB
from .aims import AIM_APPROACHES, FORMAT_AIMS
from .claims import MIN_REPEATS

# what runs a phase: one class each in llama_ckpt.suite.kinds
COMPARE, SHARDED, TRAINING, CLAIMS, CLOUD, WORK = "compare", "sharded", "training", "claims", "cloud", "work"
Sweep = tuple[tuple[str, str | None, tuple], ...]  # (base approach, knob, values); knob None: the base itself


def sweep_approaches(points: Sweep) -> list[Format]:
    """The approaches of a sweep: each base with one knob set to each value (``registry.sweep``: a registered
    approach with exactly those knobs keeps its name), or the base itself."""
    out: list[Format] = []
    for base, knob, values in points:
        out += [APPROACHES[base]] if knob is None else sweep(base, **{knob: list(values)})
    return out


@dataclass(frozen=True)
class Phase:
    id: str  # "4a"
    slug: str  # notebook and results file name, "4a-concurrency"
    title: str
    question: str
    knob: str  # what changes against the baseline
    metrics: str
    kind: str  # COMPARE, SHARDED, TRAINING, CLAIMS or CLOUD: the class of llama_ckpt.suite.kinds that runs it
    guide: tuple[str, ...] = ()  # the approaches it compares at the run's repeats (the guide's pair first)
    sweep: Sweep = ()  # the knob's further points (no claim judges them)
    axis: str | None = None  # the knob the sweep varies (x axis of its chart)
    claims: tuple[int, ...] = ()  # the guide's claims this phase can judge
    pairs: tuple[tuple[str, str], ...] = ()  # (a, b) comparisons in the findings; default: each against the baseline
    n_runs: int = 1  # end records (of ``done_key``) its results file holds when the phase is done
    done_key: str = "complete"  # the end records' field that says a part of the phase finished
    about: str = ""  # the header's closing paragraph (default: the protocol)
    listing: str = ""  # the header's approaches line where it is not the approaches' names
    both_weights: tuple[str, ...] = ()  # measured again on the preset's other weights (full float32 / float16-origin)
    sweep_repeats: int = 0  # the sweep's own points (no claim judges them) get at most this many repeats; 0: all
    sustained: tuple[str, ...] = ()  # also saved back to back (measure.Options.sustained_saves in a row)

    def approaches(self) -> list[Format]:
        """The formats the phase compares: ``guide``, then the sweep's points, each once (what a training or
        claims phase writes, its kind in :mod:`llama_ckpt.suite.kinds` knows)."""
        out = {a.name: a for a in [APPROACHES[n] for n in self.guide] + sweep_approaches(self.sweep)}
        return list(out.values())

    def fewer(self, repeats: int, apps: list[Format] | None = None) -> dict[str, int]:
        """The sweep points (of ``apps``, default all the phase's) measured fewer than ``repeats`` times
        (``sweep_repeats``)."""
        if not self.sweep_repeats or self.sweep_repeats >= repeats:
            return {}
        names_ = None if apps is None else {a.name for a in apps}
        judged = set(self.guide) | set(names(tag=GUIDE))  # a guide approach keeps the run's repeats wherever it is
        return {a.name: self.sweep_repeats for a in sweep_approaches(self.sweep)
                if a.name not in judged and (names_ is None or a.name in names_)}

    def header(self) -> str:
        """The notebook's header cell, generated from this definition (a test
        keeps the notebooks in step: ``python -m llama_ckpt.suite.runner headers``)."""
        apps = self.listing or ", ".join(f"`{a.name}`" for a in self.approaches())
        return (f"# {self.id} · {self.title}\n\n**Question.** {self.question}\n\n**Knob.** {self.knob}\n\n"
                f"**Metrics.** {self.metrics}\n\n**Approaches.** {apps}\n\n{self.about or PROTOCOL}"
                + (SWEEP_NOTE.format(n=self.sweep_repeats) if self.sweep and self.sweep_repeats else ""))

    def comparisons(self, baseline: str = BASELINE) -> tuple[tuple[str, str], ...]:
        return self.pairs or tuple((g, baseline) for g in self.guide if g != baseline)


PROTOCOL = ("Protocol (`llama_ckpt.bench.measure`): a save is timed until its bytes are fsynced; a load is timed "
            "cold (files evicted from the page cache first, confirmed with `mincore`) until every tensor is in memory; "
            "every load is checked bit for bit against digests of what was saved, and a row that does not round-trip "
            "is never shown as a result. Each round of repeats runs in its own seeded random order. The machine is "
            "profiled once per run, before its first measurement (disk, page cache, memory, small files, codecs: "
            "`llama_ckpt.bench.machine`).")
WORK_PROTOCOL = (
    "The cost cards come from the default state: this run's rows of the approaches (measured by an earlier phase "
    "and shared, or here). Each other state is a `python -m llama_ckpt run` of its own with the same protocol "
    "(`llama_ckpt.suite.states`), which measures its own machine profile where its checkpoints go; each "
    "prediction takes the cards, that profile and the payload, nothing from the rows it predicts (the model's "
    "form: `docs/decisions.md#work-model-2`, frozen before it was checked).")
SWEEP_NOTE = (" The phase's pair (and each base it compares with) gets the run's repeats, interleaved; the sweep's "
              "further points, which no claim judges, {n} repeat(s) each.")
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

# 07's checkpoints per saver in each loop: at most this many, fewer where the run's repeats are
# (docs/decisions.md#run-all-time)
TRAINING_CHECKPOINTS = 2
CLAIMS_CAP = 12  # the most repeats 08 gives an approach for a claim
CLAIMS_STEP = 2  # repeats added per round to each approach that leaves a claim undecided
CLAIMS_BUDGET_S = 0  # repeats beyond MIN_REPEATS: none starts after this long (docs/decisions.md#claims-budget)
CLAIMS_PROTOCOL = (
    "Protocol (`llama_ckpt.suite.kinds.Claims`): every claim of the guide is judged on every row this "
    "run has of the approaches it compares (each configuration is measured once per run and shared by the phases "
    "that need it), by the rule below. While a claim is undecided, the approaches whose comparisons leave it "
    "undecided (both sides of an undecided comparison; for \"fastest\", the winner and the contenders it cannot "
    "be told apart from) get more repeats, interleaved with each other, a round at a time, until every claim is "
    f"decided or they reach {CLAIMS_CAP} repeats; then \"inconclusive\" means the interval still straddles the "
    f"threshold with that many repeats. The first round brings every such approach to {MIN_REPEATS} repeats, the "
    "rule's minimum, whatever it costs; the rounds beyond it stop when they have measured for `CLAIMS_BUDGET_S` "
    "seconds (a claim left undecided there reads inconclusive at the repeats it had, and the findings say so). "
    "The run's weights are float16-origin by default (the preset's values rounded to float16, as a float32 copy "
    "of the published model holds them); with `OTHER_WEIGHTS` (`make run-all OTHER_WEIGHTS=1`) the compression "
    "and float16 claims (3 and 4) are also measured and judged on full float32 mantissas. Each save and load is "
    "timed as in every phase "
    "(durable saves, cold loads, every load verified).")

TRAINING_PROTOCOL = (
    "Protocol (`llama_ckpt.bench.training`): two training loops, one after the other. In the **accelerator-bound** "
    "loop a step's device work (forward and backward) is a wait during which the training thread holds neither a "
    "core nor the interpreter lock, as a thread waiting on a device does (its length: DLIO's LLaMA 7B step scaled by "
    "the model's parameters), then the host's part: AdamW's update of a slice of every tensor of the state, in "
    "place; every saver but the fork() snapshot, which cannot copy a device's memory. The **CPU-bound** loop "
    "trains the preset's LLaMA on this machine's cores (transformers, AdamW, forward "
    "and backward on seeded random token batches). By default a checkpoint holds the weights and AdamW's state (its "
    "two moments and step count: what a run needs to resume). Each saver takes its checkpoints in a row as a run that "
    "uses it would (its staging copy kept between them, freed before the next saver). Each checkpoint is a segment of "
    "the loop: a step with no save in flight, the saver's call at step k (the digests of step k's tensors taken just "
    "before it, outside every timing), then steps while the save finishes in the background, until it is durable "
    "(a loop that never waits for its checkpoints), and a few steps more. **Blocking** is what the saver holds "
    "the loop for: its call, plus, where its staging goes on after the call "
    "(DCP's async staging), the wait for it before the loop's next in-place update. **Durable** is the time from "
    "the call until the checkpoint is committed (every byte fsynced, then manifest and marker, by this process: a "
    "process killed mid-save leaves no committed checkpoint). The loop updates the state in place meanwhile; each "
    "checkpoint is then loaded cold and must match step k's digests bit for bit, so one holding later weights, or a "
    "mix, fails. A checkpoint not durable within a time limit ends its saver's rows with an error and the phase goes "
    "on. `MODEL_PATH` is not used here: the model is built from the preset's config.")


# 4f's sweep: one knob of a base approach at a time, (base, knob, values)
IO_POINTS = (
    ("ts+best", "file_io_locking", ("none",)),
    ("ts+best", "file_io_sync", (False,)),
    ("ts+best", "file_io_mode", ("direct", "memmap")),
    ("ts+best", "target_data_file_size", (16 * MiB, 0)),  # 0: OCDBT's default
    ("ts+best", "data_copy_concurrency", (1, 4)),
    ("ts+best", "concurrency", (2, 32, 128)),
    ("ts+best", "commit_bytes", (128 * MiB,)),
    ("runai-streamer", "concurrency", (1, 4, 64)),
    ("runai-streamer", "memory_limit", (256 * MiB,)),
    ("runai-streamer", "chunk_bytesize", (1 * MiB, 64 * MiB)),
    ("fastsafetensors", "max_threads", (1, 4)),
    ("tensorizer", "num_readers", (1, 16)),
)
IO_BASES = tuple(dict.fromkeys(b for b, _k, _v in IO_POINTS))
IO_PAIRS = tuple((a.name, b) for b, k, vs in IO_POINTS for a in sweep_approaches(((b, k, vs),)) if a.name != b)

# 05: every registered single-process format that is not one of the guide's eight, and the guide's approaches to
# compare them with
FORMATS_PHASE = tuple(dict.fromkeys(formats_phase() + list(FORMAT_BASELINES)))

# A sweep's own points, which no claim judges, are measured once (the pair and the bases get the run's repeats,
# and their spread shows how far one repeat can be off); so are 06's resharded loads and its torchrun job.
# Why: docs/decisions.md#sweep-repeats
SWEEP_REPEATS = 1


# -- the cloud section of 4e: plain zarr against OCDBT on an S3 server ---------
CLOUD_DELAYS_MS = (0.0, 20.0)  # added round trip: loopback, and a bucket in a nearby cloud region
CLOUD_BUCKET = "llama-ckpt"
CLOUD_MODEL = "tiny"
CLOUD_PAIRS = (("ts+ocdbt", BASELINE), ("ts+chunks[use_ocdbt=True]", "ts+chunks"),
               ("ts+best", "ts+best[use_ocdbt=False]"))  # (OCDBT, the same on plain zarr objects)
# cold loads from S3 by a library's own client against TensorStore's OCDBT and boto3: (a, b)
CLOUD_LOADER_PAIRS = (("runai-streamer", "safetensors"), ("runai-streamer", "ts+best"), ("ts+best", "safetensors"))

# 06's configurations: (ranks saving, ranks loading)
DIST_CONFIGS = ((1, 1), (2, 2), (4, 4), (2, 3), (4, 2))
# ... and the jobs started by torchrun on this machine: (nodes, ranks per node)
TORCHRUN_CONFIGS = ((2, 2),)
SUMMARY_SLUG = "99-summary"

PHASES: dict[str, Phase] = {p.id: p for p in [
    Phase("00", "00-baselines", "Baselines",
          "How do torch.save, the TensorStore baseline and T5X's configuration compare?",
          "none: the three reference points, plus the same-dtype partners pytorch-fp32 (of tensorstore) and "
          "ts+float16 (of pytorch)", "save and cold-load time, size on disk, file count, peak memory", COMPARE,
          ("pytorch", BASELINE, "t5x", "pytorch-fp32", "ts+float16"),
          pairs=(("pytorch", BASELINE), ("t5x", BASELINE), ("pytorch-fp32", BASELINE),
                 ("pytorch", "ts+float16"))),
    Phase("4a", "4a-concurrency", "Concurrency",
          "Does parallelism help? TensorStore with 128 concurrent file operations against one at a time.",
          "file_io_concurrency (1 -> 128; all writes in flight together above 1)",
          "save and load time against the baseline; the sweep 1, 4, 16, 64, 128",
          COMPARE, (BASELINE, "ts+concurrency"),
          ((BASELINE, "concurrency", (1, 4, 16, 64, 128)),), "concurrency", (2,),
          sweep_repeats=SWEEP_REPEATS),
    Phase("4b", "4b-chunks", "Chunk size",
          "Do large chunks help? 1 MiB chunks against 64 elements per dimension.",
          "chunk shape (64 per dimension -> whole rows up to 1 MiB)",
          "save, load, size and file count; the sweep 64/dim, 64 KiB, 1 MiB, 16 MiB, 64 MiB, whole tensor",
          COMPARE, (BASELINE, "ts+chunks"),
          ((BASELINE, None, ()), ("ts+chunks", "chunk_size", (64 * KiB, 1 * MiB, 16 * MiB, 64 * MiB)),
           ("ts+chunks", "chunk_rule", ("whole",))), "chunk_size", (1,), sweep_repeats=SWEEP_REPEATS),
    Phase("4c", "4c-compression", "Compression",
          "Is compression worth it? gzip against no compressor, and other codecs at 1 MiB chunks.",
          "compressor (none -> gzip)",
          "save and load time, compression ratio overall and by tensor kind",
          COMPARE, (BASELINE, "ts+compression"),
          (("ts+chunks", "compression", (None, "gzip", "gzip:9", "zstd", "blosc-lz4")),), "compression", (3,),
          n_runs=2, both_weights=(BASELINE, "ts+compression"), sweep_repeats=SWEEP_REPEATS),
    Phase("4d", "4d-float16", "Smaller dtype",
          "Does a smaller dtype help? float16 against float32, plus bfloat16.",
          "stored dtype (float32 -> float16; bfloat16 as a sweep point)",
          "save and load time, size, and the precision cost by tensor kind: max abs/rel error, overflow to inf, "
          "flush to zero",
          COMPARE, (BASELINE, "ts+float16"),
          ((BASELINE, "dtype", ("float32", "float16", "bfloat16")),), "dtype", (4,),
          n_runs=2, both_weights=(BASELINE, "ts+float16"), sweep_repeats=SWEEP_REPEATS),
    Phase("4e", "4e-ocdbt", "OCDBT",
          "Is OCDBT better than the plain file driver?",
          "kvstore (file -> OCDBT over file)",
          "save and load time, size, files created, bytes beyond the chunk data (metadata); on S3: objects, requests "
          "and time at two round-trip delays",
          COMPARE, (BASELINE, "ts+ocdbt"),
          (("ts+chunks", "use_ocdbt", (False, True)),), "use_ocdbt", (5,), sweep_repeats=SWEEP_REPEATS),
    Phase("4f", "4f-io", "I/O knobs",
          "Which I/O settings bring TensorStore and the fast loaders closest to the disk? ts+best is the TensorStore "
          "configuration this sweep measures fastest.",
          "one I/O knob at a time: TensorStore's file locking, fsync as it writes or one fsync pass after, read mode "
          "(pread, O_DIRECT, mmap), OCDBT data file size, copy threads, I/O concurrency, commits in batches; the "
          "Run:ai streamer's concurrency, CPU buffer limit and chunk size; fastsafetensors' threads; tensorizer's "
          "readers",
          "save and cold-load time against each knob's base approach, share of the disk reference, peak memory",
          COMPARE, IO_BASES, IO_POINTS, pairs=IO_PAIRS, sweep_repeats=SWEEP_REPEATS),
    Phase("05", "05-formats", "Formats in use today",
          "What do teams use today, and can a TensorStore configuration beat torch.save?",
          "format: torch.save, safetensors, torch.distributed.checkpoint, zarr3 shards, and ts+best (OCDBT with "
          "64 MiB data files, 16 MiB chunks, one transaction committed every 1 GiB, concurrency 8, no source copy); "
          "and the loaders teams deploy (the Run:ai Model Streamer and fastsafetensors on a safetensors file, "
          "tensorizer, torch.load with mmap)",
          "save and cold-load time as ratios in this run, throughput as a share of the disk reference, size, files; "
          "each approach's bound from the machine profile, its cost card and where its time goes; four approaches "
          "in MLPerf Storage's checkpoint pattern (saved back to back, read back cold) against their isolated "
          "saves and loads",
          COMPARE, FORMATS_PHASE,
          listing="every single-process format in the registry that is neither one of the guide's eight nor a "
          "variant of another (`python -m llama_ckpt list`), against "
          + " and ".join(f"`{n}`" for n in FORMAT_BASELINES),
          pairs=FORMAT_AIMS + (  # the aims first, then the formats and loaders against their partners
              ("ts+best", "ts+chunks"), ("safetensors", "pytorch-fp32"), ("dcp", "pytorch-fp32"),
              ("ts+zarr3", "ts+chunks"), ("runai-streamer", "safetensors"), ("fastsafetensors", "safetensors"),
              ("tensorizer", "pytorch-fp32"), ("pytorch-fp32-mmap", "pytorch-fp32")),
          sustained=("pytorch-fp32", "safetensors", "dcp", "ts+best")),
    Phase("06", "06-distributed", "Sharded across processes",
          "How do sharded checkpoints scale when many processes write one checkpoint together, and can they be "
          "read back on another number of processes?",
          "ranks saving (1, 2, 4) and loading (the same, and resharded 2 -> 3, 4 -> 2, one repeat), over "
          "torch.distributed (gloo); and 2 nodes x 2 ranks started by torchrun (one repeat)",
          "checkpoint time (the slowest rank plus the commit), per-rank write and read times, aggregate and per-node "
          "throughput, files", SHARDED, tuple(names(sharded=True)), n_runs=len(DIST_CONFIGS) + len(TORCHRUN_CONFIGS),
          sweep_repeats=SWEEP_REPEATS,
          about=SHARDED_PROTOCOL, listing=", ".join(f"`{n}`" for n in names(sharded=True))
          + " (see `python -m llama_ckpt list`)"),
    Phase("07", "07-training", "Checkpoints inside a training loop",
          "How long does a checkpoint stop a training loop, how long until it is durable, and what does the save "
          "cost the steps around it?",
          "how the save runs: synchronously; DCP's async_save from a thread (staged before the call returns, or by "
          "its stager's thread) or its writer process; TensorStore's own asynchrony (writes copied, committed in the "
          "background); a staging copy, then torch.save or safetensors in a thread or a forked process; a fork() "
          "snapshot written by the child; in an accelerator-bound loop and a CPU-bound one",
          "blocking time, time until durable, step time with and without a save in flight (slowdown), the "
          "checkpoint's cost to the loop, the effective training time ratio at a stated interval and the shortest "
          "interval at which checkpoints cost at most 1% and 5% of a run, extra peak memory, cold load time",
          TRAINING, about=TRAINING_PROTOCOL, listing=", ".join(f"`{n}`" for n in SAVERS)),
    Phase("08", "08-claims", "The guide's claims, decided",
          "Which of the guide's claims hold in this run, by a stated statistical rule, with enough repeats to "
          "decide?",
          "repeats: the approaches a claim still cannot decide get more interleaved repeats, a round at a time, "
          "up to a cap",
          "each claim's verdict, the ratio of medians with its bootstrap interval, the repeats each verdict rests on",
          CLAIMS, done_key="claims_final", about=CLAIMS_PROTOCOL,
          listing=", ".join(f"`{n}`" for n in names(tag="guide")) + " (those a claim needs)"),
    Phase("09", "09-work-model", "Where the time goes when the disk is not the limit",
          "Does a model built from each approach's counted work (its cost card) predict its save and load in states "
          "of the machine the cards were not taken in, and what is fastest when the disk is not the limit?",
          "the machine's state: one core, no disk (the checkpoints on a tmpfs), a slower disk, another size; the "
          "cards from the default state only",
          "per state and approach: the measured median, the prediction from the default state's cards and the "
          "state's own machine profile, the error and the binding part; the ranking with no disk",
          WORK, AIM_APPROACHES, about=WORK_PROTOCOL,
          listing=", ".join(f"`{n}`" for n in AIM_APPROACHES) + " by default (`APPROACHES`: `main`, or `05`: "
          "every approach of 05)"),
]}

# 4e's second section (its notebook's S3 part): the phase's OCDBT question on an object store
CLOUD_SECTION = Phase(
    "4e-cloud", "4e-ocdbt", "OCDBT on S3", "Is OCDBT better than plain zarr objects for cloud storage?",
    "kvstore on S3 (zarr objects -> OCDBT) at added round-trip delays", "objects, requests, save and cold-load time",
    CLOUD, (BASELINE, "ts+ocdbt"),
    (("ts+chunks", "use_ocdbt", (False, True)), ("ts+best", "use_ocdbt", (False, True)), ("safetensors", None, ()),
     ("runai-streamer", None, ())), claims=(9,),
    n_runs=len(CLOUD_DELAYS_MS))


def get_phase(phase_id: str) -> Phase:
    for p in (*PHASES.values(), CLOUD_SECTION):
        if phase_id in (p.id, p.slug):
            return p
    raise UserError(f"unknown phase {phase_id!r}; valid phases: {', '.join(PHASES)}")
