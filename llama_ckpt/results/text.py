"""Result rows as text: the comparison table, the disk reference's line,
and the number formats the tables share."""

from __future__ import annotations

import math

from ..units import fmt_bytes  # noqa: F401  (the tables' size format; the package reads it from results)
from .schema import is_valid
from .stats import Stat, change, check_comparable, summarize

# The approach every change is measured against by default: TensorStore as the user's guide configures it first
# (the registry's ``tensorstore``). The one spelling of its name: the registry, the phases, the claims, the
# tables and the CLI read it from here, the lowest floor that all of them can import.
BASELINE = "tensorstore"


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
              for k in ("write_stream_s", "write_parallel_s", "read_stream_s", "read_parallel_s", "read_mapped_s")
              if (v := [s[k] for s in samples if s.get(k) is not None])]
    return line + (f"; its {len(samples)} samples: " + ", ".join(spread) if spread else "")


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


def render(header: list[str], body: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    line = lambda cells: "  ".join(str(c).rjust(w) if i else str(c).ljust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(b) for b in body])


def machine_notes(rows: list[dict]) -> list[str]:
    """What the machine was doing while the rows were measured, where it was not idle and free: the rows
    measured while other work took a share of the cores (``busy_save``/``busy_load``: recorders.MachineBusy),
    and a throttle on the checkpoints' disk (``disk_throttle_Bps``)."""
    measured = [r for r in rows if r.get("record") == "measurement"]
    steps = {id(r): [s for s in ("save", "load") if (r.get(f"busy_{s}") or {}).get("busy")] for r in measured}
    busy = [f"{r['approach']} #{r.get('repeat')} ({', '.join(steps[id(r)])})" for r in measured if steps[id(r)]]
    out = []
    if busy:
        out.append(f"measured while other work took more than a quarter of the cores: {len(busy)} of {len(measured)} "
                   f"rows, read them with care: {', '.join(busy)}")
    throttled = sorted({r["disk_throttle_Bps"] for r in measured if r.get("disk_throttle_Bps")})
    if throttled:
        out.append(f"the checkpoints' disk was throttled at {', '.join(f'{t / 1e6:,.0f}' for t in throttled)} MB/s "
                   "(read and write) while these rows were measured")
    return out


def comparison_table(rows: list[dict], baseline: str = BASELINE, reference: str = "pytorch",
                     order: list[str] | None = None) -> str:
    """The comparison table of one run's rows, as text, its approaches in
    ``order`` (default: as they first appear in the rows)."""
    check_comparable(rows)
    summ = summarize(rows)
    if order:
        summ = {n: summ[n] for n in sorted(summ, key=lambda n: order.index(n) if n in order else len(order))}
    if not summ:
        return "(no valid measurements)"
    base, ref = summ.get(baseline), summ.get(reference)
    cold = all(s["load_cold"] for s in summ.values())
    memory = all(r.get("medium") == "memory" for r in rows)
    load = "load s (cold)" if cold else "load s (from memory)" if memory else "load s"
    header = ["approach", "dtype", "save s", load,
              "size", "files", "save MB/s", "load MB/s",
              f"save vs {baseline}", f"load vs {baseline}", f"size vs {baseline}",
              f"save vs {reference}", f"load vs {reference}", f"size vs {reference}"]
    body = []
    for name, s in summ.items():
        med = lambda st: st.median if st else None
        warm = "" if s["load_cold"] or memory else " (cache?)" if s["load_cold"] is None else " (warm!)"
        cells = [name, s["stored_dtype"] + warm,
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
    if memory:
        notes.append("from memory: the checkpoints were on a file system held in memory (tmpfs): no load is cold.")
    elif any(s["load_cold"] is None for s in summ.values()):
        notes.append("(cache?): loads from an S3 server whose files this run could not evict (one it did not "
                     "start): its page cache may have served them.")
    on_s3 = [r for r in rows if r.get("requests_save") is not None]
    if on_s3:
        notes.append(f"on S3 ({on_s3[0].get('storage')}, {on_s3[0].get('s3_delay_ms') or 0:g} ms added round trip): "
                     "size = bytes stored, files = objects, from listing the bucket.")
    notes.append("save/load s: median [min-max] of the repeats; MB/s: checkpoint bytes / time; "
                 "changes: median against median, negative = faster/smaller.")
    notes += machine_notes(rows)
    invalid = [r for r in rows if r.get("record") == "measurement" and not is_valid(r)]
    for r in invalid:
        notes.append(f"not counted: {r['approach']} repeat {r.get('repeat')}: "
                     + (r.get("error") or "did not round-trip (verification failed)"))
    return render(header, body) + "\n" + "\n".join(notes)
