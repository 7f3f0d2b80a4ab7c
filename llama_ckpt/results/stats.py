"""Statistics of result rows: medians with min and max per approach, spreads,
relative changes; rows measured on different tensor sets refused."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from ..errors import UserError
from .schema import is_valid


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
