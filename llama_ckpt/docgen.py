"""The doc tables that mirror code, generated from it.

README.md and ``docs/*.md`` hold regions

    <!-- generated: NAME -->
    ...
    <!-- end generated -->

whose body is :data:`REGIONS` ``[NAME]()``: the approaches (from the
registry), the model presets, the training loop's savers, the phases (from the phase
catalogue), the guide's claims, their rule and its settings, the Makefile's
targets and options (the lines ``make help`` reads), the fields of a
result row (from :mod:`llama_ckpt.results`, with the descriptions below) and
the machine profile's fields and settings (from its record,
:mod:`llama_ckpt.results.profile`, and the comments of its constants). ``python -m llama_ckpt.docgen`` rewrites every
region; ``--check`` rewrites nothing and exits 1 naming each stale file
(``tests/test_docs.py`` runs it).
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path
from typing import Callable

from . import FLOORS
from .bench import machine, probes
from .bench.savers import SAVERS  # the training loop's savers
from .model import DEFAULT_PRESET, PRESETS, PresetModel
from .registry import APPROACHES, GUIDE, SHARDED, names
from .results import MEASUREMENT_FIELDS, SUSTAINED_FIELDS, TRAINING_FIELDS, fmt_bytes
from .results.profile import field_docs
from .study.claims import CLAIMS, CLOUD_CLAIM, CONFIDENCE, MIN_REPEATS, N_BOOT, RATIO_TOLERANCE, RULE
from .study.phases import CLAIMS_BUDGET_S, CLAIMS_CAP, CLAIMS_STEP, PHASES  # the phase catalogue
from .units import binary_label

REPO = Path(__file__).resolve().parent.parent
MAKEFILE = REPO / "Makefile"
BEGIN = "<!-- generated: {} -->"
END = "<!-- end generated -->"
REGION = re.compile(r"(<!-- generated: ([\w-]+) -->\n)(.*?)(<!-- end generated -->)", re.S)
# the lines `make help` reads: `NAME ?= default## meaning` and `target: prerequisites ## meaning`
OPTION = re.compile(r"^([A-Z0-9_]+) \?= ?([^#\n]*)## (.*)$", re.M)
TARGET = re.compile(r"^([a-zA-Z0-9_%-]+):.*## (.*)$", re.M)

# -- what each field of a record means (results.MEASUREMENT_FIELDS, TRAINING_FIELDS, SUSTAINED_FIELDS) ------------
# A field without a description, or a description of a field that is gone, fails the generation and the tests.
FIELD_DOCS = {
    "record": "the kind of record: `measurement` (or `training`, `sustained`); a results file also holds one "
              "`environment` record, an `end` record and a `disk_state` record per round (the short reference "
              "before it: `round`, `model`, `bytes`, `write_s`, `read_s`, `write_Bps`, `read_Bps` (None where its "
              "read was not confirmed cold), `read_cold`, how it started as a save does, `took_s`, or `error`)",
    "run_id": "the run's id (`RUN_ID`)",
    "approach": "the approach's registry name, or a sweep point's `base[knob=value,...]`",
    "model": "the preset (`small`, `small:float32`, ...) or the model folder",
    "weights": "`float16-origin` (a preset's values rounded to float16, held in float32), `float32` (full "
               "mantissas) or `as loaded` (`MODEL_PATH`)",
    "phase": "the phase that measured the row (a configuration is measured once per run; other phases share it)",
    "path": "where the checkpoint was written: a directory or an `s3://` prefix",
    "knobs": "the approach's knobs, every one",
    "n_tensors": "tensors in the checkpoint",
    "n_params": "parameters in the checkpoint",
    "tensor_set": "a digest of the tensors' names, shapes and dtypes: `compare` refuses rows whose sets differ",
    "stored_dtype": "the dtype on disk",
    "source_dtype": "the dtype of the tensors in memory",
    "repeat": "which repeat (from 1)",
    "caches_dropped": "whether the kernel's page and buffer cache was dropped before the save (root only)",
    "free_space_trimmed": "whether the file system's free space was discarded (`fstrim`) before the save, so that "
                          "every save writes into space in the same state (root only; None on S3 and in a "
                          "launched job)",
    "disk_throttle_Bps": "the throttle on the checkpoints' disk while the row was measured, bytes per second (the "
                         "run's `--disk-cap`, or one the run found set: `bench.diskcap`); null: none",
    "busy_save": "how busy the machine was beside the timed save, from `/proc/stat`: the CPU seconds of other "
                 "processes and the kernel's threads, not this run's own (`others_cpu_s`), steal seconds, wall "
                 "seconds, cores, and `busy`: true where others took more than half a core on average or steal "
                 "more than 5% of the cores' time (`recorders.MachineBusy`); null on a torchrun job",
    "busy_load": "the same, beside the timed load",
    "busy": "how busy the machine was beside a training row's segment, or a sustained record's saves (as "
            "`busy_save` is beside a save)",
    "save_s": "seconds from the call until the bytes are durable; sharded: from the barrier that starts every rank "
              "to the commit",
    "load_s": "seconds of the (cold) load until every tensor is in memory; sharded: the slowest rank's",
    "load_cold": "whether the checkpoint's eviction from the page cache was confirmed (`mincore`) before the load",
    "resident_after_evict": "the share of the checkpoint's pages still resident after the eviction",
    "load_warm_s": "seconds of a second load from the page cache (`--warm`)",
    "bytes_on_disk": "allocated bytes (blocks; on S3 the objects' bytes)",
    "bytes_apparent": "the files' sizes",
    "n_files": "files (on S3: objects)",
    "payload_bytes": "bytes of tensor data as stored before compression (zarr v2's padded edge chunks count)",
    "by_kind": "per tensor kind: tensors, payload bytes, apparent bytes and the cast's error",
    "peak_rss_save_bytes": "peak resident memory during the save (the kernel's high-water mark)",
    "peak_rss_load_bytes": "peak resident memory during the load",
    "rss_before_save_bytes": "resident memory when the timed save began: the baseline its peak stands on",
    "rss_before_load_bytes": "resident memory when the timed load began",
    "peak_rss_anon_save_bytes": "the save's peak anonymous memory (`RssAnon`: must fit in memory)",
    "peak_rss_file_save_bytes": "the save's peak file-backed memory (`RssFile` + `RssShmem`: pages the kernel can "
                                "drop)",
    "peak_rss_anon_load_bytes": "the load's peak anonymous memory",
    "peak_rss_file_load_bytes": "the load's peak file-backed memory",
    "save_phases": "seconds per step of the save: cast, serialise + write, fsync; for TensorStore open, stage, "
                   "commit or wait for writes; the suite's manifest and marker",
    "cpu_io_save": "the timed save's work, every thread of the process: CPU seconds (user, system), minor and major "
                   "page faults, read/write system calls with their bytes, bytes written to and read from storage, "
                   "fsync/fdatasync calls made through Python's `os` module, the CPU seconds of the busiest thread "
                   "alive at its end (`busiest_thread_s`; the maximum over ranks where several are added), the threads "
                   "that used CPU (`busy_threads`), the CPU seconds of those that ended inside it "
                   "(`ended_threads_s`) and the net change in its anonymous memory in transparent huge pages "
                   "(`huge_page_bytes`: a load's result where the format asks for huge pages)",
    "cpu_io_load": "the same, of the timed load",
    "fsyncs_save": "the save's fsync/fdatasync calls: those made through Python's `os` module (counted) plus those "
                   "the format's native code makes by the library's stated policy (`Format.native_fsyncs`; "
                   "None where it does not say, as for OCDBT)",
    "disk_state": "the disk's state beside the row's round: the short reference written (durable) and read (cold) "
                  "before the round from the same start as its saves (`round`, `write_Bps`, `read_Bps`, `bytes`; "
                  "its record `disk_state` in the results file); the row's bounds take its rates. None on S3, in "
                  "memory, for sharded rows",
    "storage": "`local`, or the `s3://` target",
    "s3_delay_ms": "the round trip added in front of the S3 endpoint (`--s3-delay-ms`)",
    "medium": "what holds the checkpoint: `disk`; `memory` (a file system in memory, such as tmpfs: its loads are "
              "from memory, never cold, and `load_cold` is None); `object store` (S3)",
    "requests_save": "S3 requests of the save, by kind",
    "requests_load": "S3 requests of the load, by kind (empty where the loader's own client makes them)",
    "world_size": "ranks that saved (sharded)",
    "load_world_size": "ranks that loaded (sharded)",
    "ranks_save": "per rank: rank, node, local rank, host, its own write time, bytes, peak memory, its work "
                  "(as in `cpu_io_save`; the row's `cpu_io_save` is every rank's added up)",
    "ranks_load": "per rank: rank, node, local rank, host, its own read time, bytes, peak memory, its work",
    "launcher": "who started the ranks: `spawn` (this suite, one host) or `torchrun`",
    "nodes": "nodes of the saving job",
    "ranks_per_node": "ranks per node of the saving job",
    "load_nodes": "nodes of the loading job",
    "load_ranks_per_node": "ranks per node of the loading job",
    "verified": "whether every tensor (or shard) came back bit for bit; a row without it is never shown as a result",
    "max_abs_err": "the largest absolute error of the stored dtype's cast against the float32 source",
    "max_rel_err": "the largest relative error of the cast",
    "n_overflow": "values the cast turned into inf (beyond float16's ±65504)",
    "n_flushed": "non-zero values the cast turned into zero",
    "error": "why the row failed (the stage and the exception), or null",
    "finished_at": "when the row was written (UTC, ISO 8601)",
    # training rows only
    "mode": "where the writing happens: `sync`, `thread`, `process` or `fork`",
    "blocked_by": "what the loop waits for, in words",
    "sync_of": "the synchronous saver of the same format, against which its blocking time is judged",
    "format": "the approach whose files the saver writes (and reads back)",
    "state": "`model`, or `model+optimizer` (AdamW's state too)",
    "checkpoint_bytes": "bytes of the state checkpointed",
    "step": "the training step the checkpoint holds",
    "loop": "`accelerator` (a step's device work a wait that holds no core, its host work an in-place update of "
            "every tensor) or `cpu` (forward, backward and AdamW on this machine's cores)",
    "device_step_s": "the accelerator loop's device seconds per step (a wait); null in the CPU loop",
    "blocking_s": "seconds the saver held the loop: its call, plus any wait for its staging before the loop's next "
                  "in-place update",
    "call_s": "of the blocking time, the call until it returned",
    "update_wait_s": "of the blocking time, the wait before the loop's next in-place update for a staging that went "
                     "on after the call (DCP's async staging); null where there is none",
    "host_inflight_s": "the accelerator loop: each in-flight step's host part (after the device wait), seconds",
    "host_after_s": "the accelerator loop: each step's host part after the save was durable, seconds",
    "host_cpu_inflight_s": "the training thread's CPU seconds in each in-flight step's host part",
    "host_cpu_after_s": "the training thread's CPU seconds in each host part after the save was durable",
    "durable_s": "seconds from the call until the checkpoint is committed (durable)",
    "stall_s": "seconds the loop waited at the end of the segment for a save still in flight",
    "segment_s": "the segment's wall time, from the call",
    "staging_s": "the staging copy's seconds, where the saver makes one itself: part of the blocking time, but "
                 "for DCP's async staging, whose copy runs after the call (the loop waits only for what is left of "
                 "it at its next update)",
    "steps_before_s": "each step's seconds before the call (no save in flight)",
    "steps_inflight_s": "each step's seconds for the steps begun while the save was in flight",
    "steps_after_s": "each step's seconds after the save was durable",
    "steps_after_cpu_s": "the process's CPU seconds of each step after the save was durable",
    "rss_before_bytes": "the process's resident memory just before the call",
    "peak_rss_idle_bytes": "the process's peak over the steps before the call",
    "peak_rss_bytes": "the process's peak from the call until durable",
    "machine_used_idle_bytes": "the machine's memory in use (every process) over the steps before the call",
    "machine_used_bytes": "the machine's memory in use from the call until durable (a forked writer, pages copied "
                          "on write, a writer process's copy)",
    "kept_bytes": "what the saver keeps until the next checkpoint (a staging copy)",
    "cpu_before_s": "CPU seconds (this process and the writers it waited for) over the steps before the call",
    "cpu_segment_s": "CPU seconds over the segment",
    "write_streams": "how many threads the save writes its bytes with, at most (the format says: one file is one "
                     "stream; DCP its writer threads; TensorStore its file I/O concurrency); null for sharded rows, "
                     "or where the format does not say",
    "writer_cpu_s": "the writer's own CPU seconds, where it is a thread or process of its own",
    # sustained records only
    "n_saves": "checkpoints saved in a row (fewer than asked where the disk cannot hold them together)",
    "saves_s": "each save's seconds, in order, with nothing between them (no cache drop, no trim, no pause)",
    "loads_s": "each checkpoint's load seconds, in the order saved, after the last save, each after its pages were "
               "evicted from the caches (MLPerf Storage's reads after a cache drop)",
    "loads_cold": "whether every load's eviction was confirmed; null where none could be told (from memory)",
}
# where a sustained record's field means something else than a measurement row's
SUSTAINED_DOCS = {
    "record": "`sustained`",
    "free_space_trimmed": "whether the free space was discarded before the first save (not between the saves)",
    "caches_dropped": "whether the caches were dropped before the first save (not between the saves)",
    "bytes_on_disk": "bytes on disk of all the checkpoints together",
    "verified": "whether every checkpoint of the row came back bit for bit (each is loaded, timed, after the last "
                "save)",
    "error": "why the record failed (the stage, or which checkpoint did not verify), or null",
}
# where a training row's field means something else than a measurement row's
TRAINING_DOCS = {
    "record": "`training`",
    "approach": "the saver's name",
    "knobs": "the saver's format and that format's knobs",
    "repeat": "the saver's checkpoint number (from 1)",
    "load_s": "seconds of the checkpoint's cold load after its segment",
    "verified": "whether the load matched step k's digests bit for bit (later weights, or a mix, fail)",
}


def field_doc_problems() -> list[str]:
    """Fields without a description, descriptions of fields that are gone."""
    fields = set(MEASUREMENT_FIELDS) | set(TRAINING_FIELDS) | set(SUSTAINED_FIELDS)
    out = [f"{f}: no description in FIELD_DOCS" for f in fields if f not in FIELD_DOCS]
    out += [f"{f}: FIELD_DOCS describes a field no row has" for f in FIELD_DOCS if f not in fields]
    out += [f"{f}: TRAINING_DOCS describes a field a training row does not have" for f in TRAINING_DOCS
            if f not in TRAINING_FIELDS]
    out += [f"{f}: SUSTAINED_DOCS describes a field a sustained record does not have" for f in SUSTAINED_DOCS
            if f not in SUSTAINED_FIELDS]
    return sorted(out)


# -- the tables -----------------------------------------------------------------------------------------------
def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _table(head: tuple[str, ...], rows) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def makefile_options(text: str | None = None) -> list[tuple[str, str, str]]:
    """(name, default, meaning) of every ``NAME ?= default## meaning`` line of the Makefile."""
    text = MAKEFILE.read_text() if text is None else text
    return [(m[1], m[2].strip(), m[3].strip()) for m in OPTION.finditer(text)]


def makefile_targets(text: str | None = None) -> list[tuple[str, str]]:
    """(target, meaning) of every ``target: ... ## meaning`` line of the Makefile."""
    text = MAKEFILE.read_text() if text is None else text
    return [(m[1], m[2].strip()) for m in TARGET.finditer(text)]


def options_table() -> str:
    return _table(("option", "default", "meaning"),
                  ((f"`{n}`", f"`{d}`" if d else "none", m) for n, d, m in makefile_options()))


def targets_table() -> str:
    return _table(("target", "what it does"), ((f"`make {t}`", m) for t, m in makefile_targets()))


def presets_table() -> str:
    def row(name: str):
        m = PresetModel(name)
        return (f"`{name}`" + (" (default)" if name == DEFAULT_PRESET else ""), m.config.num_hidden_layers,
                m.config.hidden_size, len(m.specs), f"{m.n_params:,}", fmt_bytes(sum(t.nbytes for t in m.specs)))
    return _table(("preset", "layers", "width", "tensors", "parameters", "float32"), (row(n) for n in PRESETS))


def phases_table() -> str:
    return _table(("phase", "question", "knob against the baseline"),
                  ((f"`{p.slug}`", p.question, p.knob) for p in PHASES.values()))


def phase_metrics_table() -> str:
    return _table(("phase", "title", "metrics"), ((f"`{p.slug}`", p.title, p.metrics) for p in PHASES.values()))


def _s3(a) -> str:
    return "yes" if a.s3_unsupported is None else f"no: {a.s3_unsupported}"


def guide_table() -> str:
    return _table(("name", "what it stores"), ((f"`{n}`", APPROACHES[n].description) for n in names(tag=GUIDE)))


def approaches_table() -> str:
    """Every approach, in registry order, tagged `guide` or `sharded` where it is."""
    def tag(a) -> str:
        return ", ".join(t for t in (GUIDE, SHARDED) if t in a.tags)
    return _table(("name", "tag", "what it stores", "on S3"),
                  ((f"`{a.name}`", tag(a), a.description, _s3(a)) for a in APPROACHES.values()))


def savers_table() -> str:
    return _table(("saver", "mode", "the loop waits for", "loops", "what it does"),
                  ((f"`{s.name}`", s.mode, s.blocked_by, "both" if s.on_accelerator else "CPU-bound only",
                    s.description) for s in SAVERS.values()))


def claims_table() -> str:
    return _table(("claim", "the guide says"), ((c.number, c.text) for c in [*CLAIMS, CLOUD_CLAIM]))


def claims_rule() -> str:
    return " ".join(RULE.split())


def claims_settings() -> str:
    return _table(("setting", "value", "meaning"), (
        ("`CONFIDENCE`", f"{CONFIDENCE:.0%}", "of the bootstrap interval of a ratio of medians"),
        ("`N_BOOT`", f"{N_BOOT:,}", "bootstrap resamples of each side's repeats per comparison"),
        ("`RATIO_TOLERANCE`", f"{RATIO_TOLERANCE:g}", "\"about\" a claimed ratio: within this factor of it"),
        ("`MIN_REPEATS`", MIN_REPEATS, "fewer samples of either side: inconclusive; 08's first round brings every "
                                       "undecided approach to it"),
        ("`CLAIMS_STEP`", CLAIMS_STEP, "repeats 08 adds a round to each approach that leaves a claim undecided"),
        ("`CLAIMS_CAP`", CLAIMS_CAP, "the most repeats 08 gives an approach"),
        ("`CLAIMS_BUDGET_S`", f"{CLAIMS_BUDGET_S:g} s", "08 starts no measurement beyond the first round after "
                                                      "this long"),
    ))


def _fields(fields: tuple[str, ...], own: dict[str, str]) -> str:
    problems = field_doc_problems()
    if problems:
        raise LookupError("describe the result fields in llama_ckpt/docgen.py: " + "; ".join(problems))
    return _table(("field", "meaning"), ((f"`{f}`", own.get(f, FIELD_DOCS[f])) for f in fields))


def _summary(path: Path) -> str:
    """The first sentence of a module's docstring."""
    doc = " ".join((ast.get_docstring(ast.parse(path.read_text())) or "").split())
    return re.split(r"(?<=\.)\s", doc, maxsplit=1)[0]


def _unit_paths(unit: str) -> list[Path]:
    pkg = REPO / "llama_ckpt"
    if (pkg / unit).is_dir():
        return [p for p in sorted((pkg / unit).glob("*.py")) if p.name != "__init__.py"]
    return [pkg / f"{unit}.py"]


def floors_block() -> str:
    """The package's floors, top first, one line each (llama_ckpt.FLOORS)."""
    lines = [f"{len(FLOORS) - i:2d}  " + "  ".join(u + ("/" if (REPO / "llama_ckpt" / u).is_dir() else ".py")
                                                  for u in units)
             for i, units in enumerate(reversed(FLOORS))]
    return "```\n" + "\n".join(lines) + "\n```"


def modules_table() -> str:
    """Every module of the package, floor by floor from the top, with its docstring's first sentence."""
    rows = []
    for i, units in reversed(list(enumerate(FLOORS, 1))):
        for u in units:
            for p in _unit_paths(u):
                rows.append((str(i), f"`{p.relative_to(REPO / 'llama_ckpt').as_posix()}`", _summary(p)))
    return _table(("floor", "module", "what it is"), rows)


# the settings of the machine profile and its storage reference, as docs/protocol.md lists them
PROFILE_SETTINGS = ((machine, ("PROFILE_SAMPLES", "PROFILE_MAX_BYTES", "DURABLE_FRESH", "DURABLE_FREED", "MEMORY_BYTES",
                               "SMALL_FILES", "SMALL_FILE_BYTES", "CODEC_BYTES", "CODECS",
                               "PAGECACHE_SHARE", "DIRECT_BLOCK")),
                    (probes, ("REFERENCE_SAMPLES", "REFERENCE_BLOCK", "REFERENCE_THREADS", "ROUND_REFERENCE_BYTES")))


def constant_doc(module, name: str) -> str:
    """The comment of ``name = ...`` in ``module``'s source: the one on its line, else the lines just above it."""
    lines = Path(module.__file__).read_text().splitlines()
    at = next((i for i, line in enumerate(lines) if line.startswith(f"{name} = ")), None)
    if at is None:
        raise LookupError(f"{module.__name__}.{name}: no such constant")
    if "  # " in lines[at]:
        doc = lines[at].split("  # ", 1)[1].strip()
    else:
        above = []
        while at > 0 and lines[at - 1].startswith("#"):
            at -= 1
            above.insert(0, lines[at].lstrip("#").strip())
        doc = " ".join(above).rstrip(".")
    if not doc:
        raise LookupError(f"{module.__name__}.{name}: say what it is in a comment on its line or above it")
    return doc[0].lower() + doc[1:]


def _setting(name: str, value) -> str:
    if isinstance(value, tuple):
        return ", ".join(f"`{v}`" for v in value)
    return binary_label(value) if name.endswith(("_BYTES", "_BLOCK")) else str(value)


def profile_settings() -> str:
    """The machine profile's constants (``bench/machine.py``, ``bench/probes.py``): value and comment."""
    return _table(("setting", "value", "meaning"),
                  ((f"`{n}`", _setting(n, getattr(m, n)), constant_doc(m, n)) for m, names in PROFILE_SETTINGS
                   for n in names))


def profile_fields() -> str:
    """The machine profile record's fields (:class:`llama_ckpt.results.profile.MachineProfile`)."""
    return _table(("field", "type", "unit", "what it is"),
                  ((f"`{n}`", f"`{kind}`", unit, what) for n, kind, unit, what in field_docs()))


REGIONS: dict[str, Callable[[], str]] = {
    "floors": floors_block,
    "modules": modules_table,
    "options": options_table,
    "targets": targets_table,
    "presets": presets_table,
    "phases": phases_table,
    "phase-metrics": phase_metrics_table,
    "guide-approaches": guide_table,
    "approaches": approaches_table,
    "savers": savers_table,
    "claims": claims_table,
    "claims-rule": claims_rule,
    "claims-settings": claims_settings,
    "measurement-fields": lambda: _fields(MEASUREMENT_FIELDS, {}),
    "training-fields": lambda: _fields(TRAINING_FIELDS, TRAINING_DOCS),
    "sustained-fields": lambda: _fields(SUSTAINED_FIELDS, SUSTAINED_DOCS),
    "profile-fields": profile_fields,
    "profile-settings": profile_settings,
}


# -- the files ------------------------------------------------------------------------------------------------
def doc_files(root: Path | None = None) -> list[Path]:
    """README.md and every page under docs/."""
    root = root or REPO
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def regions(text: str) -> list[str]:
    """The names of the generated regions in ``text``, in order."""
    return [m[2] for m in REGION.finditer(text)]


def render(text: str, where: str = "") -> str:
    """``text`` with every generated region's body generated anew."""
    if text.count("<!-- generated: ") != len(regions(text)):
        raise ValueError(f"{where}: a '<!-- generated: NAME -->' without its '{END}'")

    def body(m: re.Match) -> str:
        if m[2] not in REGIONS:
            raise ValueError(f"{where}: unknown generated region {m[2]!r}; known: {', '.join(REGIONS)}")
        return f"{m[1]}{REGIONS[m[2]]()}\n{m[4]}"

    return REGION.sub(body, text)


def stale(root: Path | None = None) -> dict[Path, str]:
    """The doc files whose generated regions are out of step with the code: path -> the text they should have."""
    out = {}
    for p in doc_files(root):
        if p.exists():
            text = p.read_text()
            new = render(text, str(p))
            if new != text:
                out[p] = new
    return out


def main(argv: list[str] | None = None, root: Path | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m llama_ckpt.docgen", description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="rewrite nothing; exit 1 naming each stale file")
    args = ap.parse_args(argv)
    root = root or REPO
    try:
        out = stale(root)
    except (LookupError, ValueError) as exc:
        print(f"docgen: {exc}", file=sys.stderr)
        return 1
    for p, new in out.items():
        rel = p.relative_to(root)
        if args.check:
            print(f"stale: {rel} (python -m llama_ckpt.docgen rewrites it)", file=sys.stderr)
        else:
            p.write_text(new)
            print(f"rewrote {rel}")
    return 1 if args.check and out else 0


if __name__ == "__main__":
    sys.exit(main())
