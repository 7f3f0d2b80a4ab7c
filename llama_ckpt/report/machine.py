"""The machine profile of a run (:mod:`llama_ckpt.bench.machine`) as a table:
one line per unit cost, its median, spread and samples, so a reader sees
what this machine could do before reading what the approaches did."""

from __future__ import annotations

import statistics

import pandas as pd

from ..results import bounds, fmt_bytes
from ..results.profile import MachineProfile, Rate, as_profile, disk_rates, rate_fields

# a rate's unit -> (the tables' unit, divisor)
DISPLAY = {"B/s": ("MB/s", 1e6), "files/s": ("files/s", 1), "fsyncs/s": ("fsyncs/s", 1)}
# (field of the profile, what it is, the tables' unit, divisor): every single rate of the record
RATES = tuple((name, what, *DISPLAY[unit]) for name, unit, what in rate_fields())


def machine_table(profile: MachineProfile | dict | None) -> pd.DataFrame:
    """One line per unit cost of ``profile``: median, spread ((max - min) /
    median, %), the samples in the order measured; then the disk reference's
    best write and read. Empty where the run has no profile (on S3, or
    ``--no-reference``)."""
    prof = as_profile(profile)
    if prof is None:
        return pd.DataFrame()

    def rate(what: str, unit: str, st: Rate) -> dict:
        shown, div = DISPLAY[unit]
        return {"measure": what.replace("`", ""), "unit": shown, "median": st.median / div, "spread_%": st.spread_pct,
                "samples": ", ".join(f"{x / div:,.0f}" for x in st.samples)}

    recs = [rate(what, unit, st) for _name, unit, what, st in prof.rates()]
    recs += [rate(f"compression {name}, one core (TensorStore's codec)", "B/s", st)
             for name, st in (prof.codecs_Bps or {}).items()]
    recs += [rate(f"disk reference, {'durable write' if op == 'write' else 'cold read'} ({way})", "B/s", st)
             for op, (way, st) in prof.reference_rates().items()]
    return pd.DataFrame(recs).set_index("measure")


def machine_line(profile: MachineProfile | dict | None) -> str:
    """The machine in one line: cores, memory, file system and its mount options, huge pages, the profile's size,
    and the disk's rates the bounds and the share-of-disk columns read."""
    p = as_profile(profile)
    if p is None:
        return ("no machine profile in this run (checkpoints on S3, `--no-reference`, or results written before "
                "the suite profiled its machine)")
    seq = ", ".join(f"{x / 1e6:,.0f}" for x in p.durable_sequence_Bps or ())
    return (f"{p.cores} cores, {(p.memory_bytes or 0) / 2**30:.0f} GiB memory; {p.fs_type} on "
            f"{p.fs_device} ({p.mount_options}); transparent huge pages: {p.thp}. "
            f"Durable writes of {fmt_bytes(p.bytes)} back to back, in order (MB/s): {seq}. "
            f"Measured in {p.profile_s or 0:.0f} s, each unit cost {p.samples} times. " + _host_memory(p.host_memory)
            + _rates_line(p.write_Bps(), p.read_Bps(), p.write_source(), "disk"))


def _host_memory(mem: dict | None) -> str:
    """Whether the machine's free memory was reported to its host while the profile measured (a sentence, or
    nothing where the kernel reports none)."""
    if not mem:
        return ""
    if mem.get("held"):
        return "Free memory kept from the VM's host while it measured (`hold-memory`). "
    return ("Free memory was reported to the VM's host as it came (not held: memory the host took back costs "
            "several times more to use again; docs/decisions.md#host-memory). ")


def disk_line(env: dict | None) -> str:
    """The disk's rates of a run (its environment record's,
    :func:`llama_ckpt.results.profile.disk_rates`) in one line: what the
    shares of the disk and the bounds set the approaches against."""
    write, read = disk_rates(env)
    prof = MachineProfile.of_env(env)
    kind = "disk" if prof else (env or {}).get("reference_kind", "storage")
    return _rates_line(write, read, prof.write_source() if prof else f"the {kind} reference's median", kind)


def _rates_line(write: float | None, read: float | None, source: str | None, kind: str) -> str:
    if not write or not read:
        return "No disk rates in this run (no machine profile and no storage reference)."
    return (f"The disk's rates (the shares of the disk; the bounds of a row without its round's reference, "
            f"`disk_state`): write {write / 1e6:,.0f} MB/s ({source}), "
            f"read {read / 1e6:,.0f} MB/s (the fastest confirmed-cold read of the {kind} reference).")


def bounds_table(rows: list[dict], profile: MachineProfile | dict | None,
                 approaches: list[str] | None = None) -> pd.DataFrame:
    """Per approach (``approaches``' order, default every one with valid rows),
    for save and for load: the median time, the shortest time its counted
    work can take on this machine (``bound_s``, :mod:`llama_ckpt.results.bounds`),
    the limit that sets it, the time as a multiple of it (``x_bound``: 1 =
    as fast as this machine allows)."""
    profile = as_profile(profile)
    if profile is None:
        return pd.DataFrame()
    by: dict[str, list[dict]] = {}
    for r in rows:
        if approaches is None or r["approach"] in approaches:
            by.setdefault(r["approach"], []).append(r)
    recs = []
    for name in approaches or list(by):
        rec = {"approach": name}
        for step in ("save", "load"):
            b = bounds.approach_bounds(by.get(name, []), step, profile)
            rec.update({f"{step}_s": b and b["time_s"], f"{step}_bound_s": b and b["bound_s"],
                        f"{step}_binding": b and b["binding"], f"{step}_x_bound": b and b["share"]})
        if rec["save_s"] is not None or rec["load_s"] is not None:
            recs.append(rec)
    return pd.DataFrame(recs).set_index("approach") if recs else pd.DataFrame()


BOUNDS_COLUMNS = {
    "s": "the median measured seconds (each column below is given for `save_` and for `load_`)",
    "bound_s": "the shortest time the counted work (bytes to and from storage, bytes through write calls, page "
               "faults, files, CPU seconds, bytes compressed) can take here: the longest of the limits' times below "
               "(median of the repeats)",
    "binding": "the limit that sets the bound",
    "x_bound": "the measured time over the bound, median of the repeats (1 = as fast as this machine allows)",
}


def limits_legend() -> str:
    """The bounds table's columns and what each limit counts, as Markdown lists."""
    return ("\n".join(f"- `{'save_' + k if k == 's' else k}`: {v}" for k, v in BOUNDS_COLUMNS.items())
            + "\n\nThe limits:\n\n"
            + "\n".join(f"- **{k}**: {v}" for k, v in bounds.LIMITS.items()))


def bounds_findings(rows: list[dict], profile: MachineProfile | dict | None,
                    approaches: list[str] | None = None) -> str:
    """What the bounds say, as Markdown: per job (save, load), which limit
    binds the fastest approaches and how close they come to it, and which
    approaches spend most of their time beyond their bound."""
    t = bounds_table(rows, profile, approaches)
    if t.empty:
        return "No bounds: this run has no machine profile, or its rows no counted work."
    out = []
    for step, job in (("save", "save"), ("load", "cold load")):
        col = t[[f"{step}_s", f"{step}_bound_s", f"{step}_binding", f"{step}_x_bound"]].dropna()
        if col.empty:
            continue
        best = col[f"{step}_s"].astype(float).idxmin()
        b = col.loc[best]
        counts = col[f"{step}_binding"].value_counts()
        out.append(f"- **{job}**: the fastest here, `{best}` ({b[f'{step}_s']:.3g} s), is bound by "
                   f"**{b[f'{step}_binding']}** ({b[f'{step}_bound_s']:.3g} s; it takes {b[f'{step}_x_bound']:.2f}x "
                   f"that). Binding limits over the {len(col)} approaches: "
                   + ", ".join(f"{k} {v}" for k, v in counts.items()) + ". " + _disk_rates_taken(rows, step, profile,
                                                                                                approaches))
        far = col[col[f"{step}_x_bound"].astype(float) >= 3].sort_values(f"{step}_x_bound", ascending=False)
        if not far.empty:
            out.append("  At 3x their bound or more (time that no counted limit explains: waiting, or limits taken "
                       "one after another): " + ", ".join(f"`{n}` {x:.1f}x" for n, x in
                                                           far[f"{step}_x_bound"].astype(float).items()) + ".")
    return "\n".join(out)


def _rates_MBps(states: list[dict], key: str) -> list[float]:
    """``key`` (a rate in B/s) of every state that has it, in MB/s (a failed reference has none)."""
    return [s[key] / 1e6 for s in states if s.get(key)]


def _spread(states: list[dict], key: str) -> tuple[float | None, str]:
    """The median of ``key`` over ``states`` in MB/s and "median [lowest-highest]" (None, "-" where none has it)."""
    xs = _rates_MBps(states, key)
    if not xs:
        return None, "-"
    med = statistics.median(xs)
    return med, f"{med:,.0f} [{min(xs):,.0f}-{max(xs):,.0f}]"


def disk_states_table(states: list[dict], profile: MachineProfile | dict | None = None) -> pd.DataFrame:
    """How far the disk moved while the run measured: per phase (in the order the run measured them), the short
    references taken before its rounds (``disk_state`` records), their durable write and cold read in MB/s
    (median [lowest-highest]), and each median against the run's profile, measured at its start
    (``x_profile``)."""
    prof = as_profile(profile)
    by: dict[str, list[dict]] = {}
    for s in sorted(states, key=lambda s: s.get("at") or ""):
        by.setdefault(s.get("phase") or "(run)", []).append(s)
    recs = []
    for phase, ss in by.items():
        (w, w_text), (r, r_text) = _spread(ss, "write_Bps"), _spread(ss, "read_Bps")
        pw, pr = (prof.write_Bps(), prof.read_Bps()) if prof else (None, None)
        recs.append({"phase": phase, "rounds": len(ss), "write_MBps": w_text,
                     "write_x_profile": round(w * 1e6 / pw, 2) if w and pw else None, "read_MBps": r_text,
                     "read_x_profile": round(r * 1e6 / pr, 2) if r and pr else None})
    return pd.DataFrame(recs).set_index("phase") if recs else pd.DataFrame()


def disk_states_findings(states: list[dict], profile: MachineProfile | dict | None = None) -> str:
    """In words: how far the rounds' references moved over the run, and against the profile taken at its start."""
    if not states:
        return ("No disk references beside the rounds in this run (checkpoints on S3 or in memory, sharded rows, "
                "or results written before the suite took them).")
    prof = as_profile(profile)
    out = []
    for op, key, at_start in (("durable write", "write_Bps", prof.write_Bps() if prof else None),
                              ("cold read", "read_Bps", prof.read_Bps() if prof else None)):
        xs = _rates_MBps(states, key)
        if not xs:
            out.append(f"{op}: none measured")
            continue
        med = statistics.median(xs)
        out.append(f"{op} {min(xs):,.0f}-{max(xs):,.0f} MB/s (median {med:,.0f}, "
                   f"highest {max(xs) / min(xs):.2f}x the lowest"
                   + (f"; the profile at the run's start: {at_start / 1e6:,.0f} MB/s" if at_start else "") + ")")
    took = sum(s.get("took_s") or 0 for s in states)
    sizes = sorted({s["bytes"] for s in states})
    failed = sum(1 for s in states if s.get("error"))
    return (f"The disk beside each round ({len(states)} short references of "
            f"{' or '.join(fmt_bytes(b) for b in sizes)}, each from the state the round's saves start from): "
            + "; ".join(out) + ". Each save's disk bound takes its round's write rate, a load's the faster of its "
            "round's read and the profile's (`disk_state`); the profile's rates are those of a larger write at "
            f"the run's start. The references took {took:.0f} s of the run"
            + (f"; {failed} failed (their rows' bounds take the profile's rates)" if failed else "") + ".")


def _disk_rates_taken(rows: list[dict], step: str, profile, approaches: list[str] | None) -> str:
    """Which disk rate the bounds of ``step`` took, over the rows: the rounds' references or the profile's."""
    got = [bounds.disk_rate(r, step, profile) for r in rows if r.get(f"{step}_s") and r.get("verified")
           and (approaches is None or r["approach"] in approaches)]
    by: dict[str, list[float]] = {}
    for rate, src in got:
        if rate:
            by.setdefault(src, []).append(rate)
    if not by:
        return ""
    return ("The disk rate they took: " + "; ".join(
        f"{src} for {len(xs)} of {len(got)} rows (median {statistics.median(xs) / 1e6:,.0f} MB/s)"
        for src, xs in sorted(by.items(), key=lambda kv: -len(kv[1]))) + ".")


def sustained_table(records: list[dict], rows: list[dict]) -> pd.DataFrame:
    """Per approach in MLPerf Storage's checkpoint pattern (``sustained``
    records): its saves in a row (first, median, last, slowest) and its cold
    loads after them (median), each median against the same approach's
    isolated saves and cold loads of the rounds (``rows``, each from the
    stated disk state): ``x_isolated`` above 1, the figure in a row is slower
    than the isolated one says. ``save_GiBps`` and ``load_GiBps`` are MLPerf's
    unit: a checkpoint's size (its bytes on disk, in GiB, as MLPerf's "GB"
    are) over its mean time. Isolated loads whose eviction was not confirmed
    are left out."""
    recs = []
    for r in records:
        if not r.get("verified"):
            recs.append({"approach": r["approach"], "error": r.get("error")})
            continue
        xs, ls = r["saves_s"], r.get("loads_s") or []
        mine = [x for x in rows if x["approach"] == r["approach"] and x.get("verified")]
        iso = [x["save_s"] for x in mine if x.get("save_s")]
        iso_load = [x["load_s"] for x in mine if x.get("load_s") and x.get("load_cold") is not False]
        iso_med = statistics.median(iso) if iso else None
        iso_load_med = statistics.median(iso_load) if iso_load else None
        med, one_GiB = statistics.median(xs), r["bytes_on_disk"] / len(xs) / 2**30
        load_med = statistics.median(ls) if ls else None
        recs.append({"approach": r["approach"], "isolated_s": iso_med, "n_isolated": len(iso), "in_a_row": len(xs),
                     "first_s": xs[0], "median_s": med, "last_s": xs[-1], "slowest_s": max(xs),
                     "x_isolated": med / iso_med if iso_med else None,
                     "save_GiBps": one_GiB / statistics.mean(xs),
                     "load_median_s": load_med, "load_isolated_s": iso_load_med,
                     "x_isolated_load": load_med / iso_load_med if load_med and iso_load_med else None,
                     "load_GiBps": one_GiB / statistics.mean(ls) if ls else None,
                     "loads_cold": r.get("loads_cold"), "error": None})
    if not recs:
        return pd.DataFrame()
    t = pd.DataFrame(recs).set_index("approach")
    return t.drop(columns="error") if t["error"].isna().all() else t


def sustained_findings(records: list[dict], rows: list[dict], tolerance: float = 0.15) -> str:
    """In words: for each approach in MLPerf Storage's checkpoint pattern,
    how its saves in a row and its cold loads after them compare with its
    isolated ones, whether the rounds' figures hold for a training run that
    writes checkpoints one after another (within ``tolerance``), and both
    in MLPerf's unit."""
    t = sustained_table(records, rows)
    if t.empty:
        return "No checkpoints saved back to back in this run."
    out = [f"The isolated figure is taken to hold where the median in a row is within ±{tolerance:.0%} of it. "
           "The disk's state each figure is about: an isolated save (`isolated_s`) and the first in a row start "
           "after the previous checkpoint was removed and the caches dropped (writes to freed space, the state of "
           "the rounds' references); each later save in a row writes to new space beside the ones before it, kept, "
           "with nothing between them. After the last save each checkpoint is read back, in the order saved, after "
           "its pages were evicted, as MLPerf Storage reads its checkpoints after a cache drop. `save_GiBps` and "
           "`load_GiBps` are MLPerf's unit: one checkpoint's size in GiB (MLPerf's \"GB\") over its mean time, to "
           "set beside published results (theirs are one checkpoint of many ranks, over the slowest rank's time).",
           ""]
    for name, r in t.iterrows():
        if "error" in t and isinstance(r.get("error"), str):
            out.append(f"- `{name}`: ERROR {r['error']}")
            continue
        line = f"- `{name}`: {r['in_a_row']:.0f} saves in a row, median {r['median_s']:.3g} s"
        if r["x_isolated"] is None or pd.isna(r["x_isolated"]):
            line += " (no isolated save to compare with)"
        else:
            x = float(r["x_isolated"])
            line += (f" (first {r['first_s']:.3g}, last {r['last_s']:.3g}, slowest {r['slowest_s']:.3g}) against "
                     f"{r['isolated_s']:.3g} s alone (median of {r['n_isolated']:.0f}): {x:.2f}x: "
                     f"{_held(x, tolerance, 'save')}")
        if r.get("load_median_s") is not None and not pd.isna(r["load_median_s"]):
            cold = ("read back cold" if r.get("loads_cold") is not False else
                    "read back (**not cold**: an eviction was not confirmed)")
            line += f"; {cold}, median {r['load_median_s']:.3g} s"
            xl = r.get("x_isolated_load")
            if xl is not None and not pd.isna(xl):
                line += f" against {r['load_isolated_s']:.3g} s alone: {xl:.2f}x: {_held(float(xl), tolerance, 'load')}"
            line += f". MLPerf's unit: save {r['save_GiBps']:.3g} GiB/s, load {r['load_GiBps']:.3g} GiB/s."
        else:
            line += f". MLPerf's unit: save {r['save_GiBps']:.3g} GiB/s."
        out.append(line)
    return "\n".join(out)


def _held(x: float, tolerance: float, step: str) -> str:
    return ("the isolated figure holds" if abs(x - 1) <= tolerance else
            f"slower in a row than alone: the isolated {step} flatters it" if x > 1 else "faster in a row than alone")
