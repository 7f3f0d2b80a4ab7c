"""Tables and findings computed from result rows, for the notebooks.

Findings are sentences built from the measured numbers; nothing here states a
conclusion that the data did not produce.
"""

from __future__ import annotations

import statistics

import pandas as pd

from ..results import Stat, change, fmt_bytes, is_valid, read_results, spread, summarize
from ..results.profile import disk_rates
from ..results.text import BASELINE
from ..store.s3 import request_total
from ..registry import APPROACHES
from ..units import binary_label
from ..study.claims import MIN_REPEATS, judge_claims, judge_cloud, ratio_interval
from ..study.phases import CLOUD_LOADER_PAIRS, CLOUD_PAIRS


def knob_label(knobs: dict | None, axis: str | None) -> str:
    """How a sweep point is named on a chart: the value of the swept knob."""
    if not knobs or not axis:
        return "-"
    if axis == "chunk_size":
        if "chunk_size" not in knobs:  # not a chunked format
            return "-"
        rule = knobs.get("chunk_rule")
        if rule == "per_dim":
            return f"{knobs['chunk_size']}/dim"
        if rule == "whole":
            return "whole tensor"
        return binary_label(knobs["chunk_size"])
    v = knobs.get(axis)
    return "none" if v is None else str(v)


def labels(rows: list[dict], axis: str | None) -> dict[str, str]:
    """Approach -> the swept knob's value; where two approaches share a value
    (the guide's pair at 64/dim beside a sweep at 1 MiB), the chunking too."""
    out, knobs = {}, {}
    for r in rows:
        out.setdefault(r["approach"], knob_label(r.get("knobs"), axis))
        knobs.setdefault(r["approach"], r.get("knobs"))
    if axis and axis != "chunk_size" and len(set(out.values())) < len(out):
        out = {a: f"{v} ({knob_label(knobs[a], 'chunk_size')})" for a, v in out.items()}
    return out


def knob_value(knobs: dict | None, axis: str | None) -> float | None:
    """A sweep point's place along a numeric axis: the concurrency, or the
    bytes of one chunk (elements per dimension squared times the item size for
    64/dim, a matrix's chunk; the byte budget for contiguous and T5X chunks;
    infinity for whole tensors). None where the axis is not numeric or the
    approach lacks the knob."""
    if not knobs or axis not in ("concurrency", "chunk_size") or axis not in knobs:
        return None
    if axis == "concurrency":
        return float(knobs["concurrency"])
    rule = knobs.get("chunk_rule")
    if rule == "whole":
        return float("inf")
    if rule == "per_dim":
        item = {"float32": 4, "float16": 2, "bfloat16": 2}.get(knobs.get("dtype", "float32"), 4)
        return float(knobs["chunk_size"] ** 2 * item)
    return float(knobs["chunk_size"])


def order(rows: list[dict], axis: str | None = None) -> list[str]:
    """The approaches in the order first measured; along a numeric sweep axis
    (concurrency, chunk size), by the knob's value, the approaches without it
    after them. Measurement order is not the axis's: a sweep point measured
    fewer times than the run (``Phase.sweep_repeats``) is first measured in
    the run's last round."""
    names = list(dict.fromkeys(r["approach"] for r in rows))
    knobs = {}
    for r in rows:
        knobs.setdefault(r["approach"], r.get("knobs"))
    values = {a: knob_value(knobs[a], axis) for a in names}
    if all(v is None for v in values.values()):
        return names
    return sorted(names, key=lambda a: (values[a] is None, values[a] or 0.0))


def other_weights_absent(result) -> str:
    """Why a phase with a pair on both kinds of weights (4c, 4d) has no rows on the other kind: its end
    record's ``skipped`` (not asked, or real weights)."""
    why = next((e["skipped"] for e in read_results([result.results_path]).ends if e.get("skipped")), None)
    return f"Not measured: {why or 'this run has no rows on the other weights'}."


def table(rows: list[dict], baseline: str = BASELINE, axis: str | None = None) -> pd.DataFrame:
    """One line per approach: medians [min, max] of the repeats, size, files,
    throughput, changes against ``baseline``, compression ratio and the bytes
    beyond the chunk data."""
    summ = summarize(rows)
    base = summ.get(baseline)
    lab = labels(rows, axis)
    payload = {}
    for r in rows:
        if is_valid(r):
            payload.setdefault(r["approach"], (r.get("payload_bytes"), r.get("bytes_apparent")))
    recs = []
    for name, s in summ.items():
        rec = {"approach": name}
        if axis:
            rec[axis] = lab.get(name)
        rec.update({
            "dtype": s["stored_dtype"],
            "save_s": s["save_s"].median, "save_min": s["save_s"].lo, "save_max": s["save_s"].hi,
            "load_s": s["load_s"].median, "load_min": s["load_s"].lo, "load_max": s["load_s"].hi,
            "size_GB": s["bytes_on_disk"].median / 1e9, "files": int(s["n_files"].median),
            "save_MB/s": s["save_Bps"].median / 1e6, "load_MB/s": s["load_Bps"].median / 1e6,
        })
        if base is not None:
            for key, col in (("save_s", "save_vs_base_%"), ("load_s", "load_vs_base_%"),
                             ("bytes_on_disk", "size_vs_base_%")):
                rec[col] = change(s[key].median, base[key].median)
        p, a = payload.get(name, (None, None))
        rec["compression_ratio"] = p / a if p and a else None
        rec["overhead_bytes"] = a - p if p is not None and a is not None else None
        rec["repeats"] = s["n"]
        recs.append(rec)
    if not recs:
        return pd.DataFrame()
    return pd.DataFrame.from_records(recs).set_index("approach").loc[[a for a in order(rows, axis) if a in summ]]


def kind_table(rows: list[dict]) -> pd.DataFrame:
    """Per approach and tensor kind: payload, stored bytes, compression ratio
    and the cast's error, from the first valid row of each approach."""
    recs = []
    seen = set()
    for r in rows:
        if not is_valid(r) or r["approach"] in seen or not r.get("by_kind"):
            continue
        seen.add(r["approach"])
        for kind, k in r["by_kind"].items():
            a, p = k.get("bytes_apparent"), k.get("payload_bytes")
            recs.append({"approach": r["approach"], "dtype": r["stored_dtype"], "kind": kind,
                         "n_tensors": k.get("n_tensors"), "payload_bytes": p, "bytes_apparent": a,
                         "compression_ratio": p / a if a and p else None,
                         "max_abs_err": k.get("max_abs_err"), "max_rel_err": k.get("max_rel_err"),
                         "n_overflow": k.get("n_overflow"), "n_flushed": k.get("n_flushed")})
    return pd.DataFrame.from_records(recs)


def _times(a: Stat, b: Stat) -> str:
    ratio = a.median / b.median if b.median else float("nan")
    overlap = not (a.hi < b.lo or a.lo > b.hi)
    return (f"{ratio:.2f}x ({a.median:.3g} s vs {b.median:.3g} s"
            + ("; the repeats' ranges overlap)" if overlap else ")"))


def versus(summ: dict, a: str, b: str) -> str:
    """One sentence: ``a`` against ``b`` on save, load, size and files."""
    if a not in summ or b not in summ:
        return f"- {a} against {b}: not both measured."
    sa, sb = summ[a], summ[b]
    dt = "" if sa["stored_dtype"] == sb["stored_dtype"] else \
        f" (different dtypes: {a} stores {sa['stored_dtype']}, {b} {sb['stored_dtype']})"
    return (f"- **{a}** against **{b}**{dt}: save {_times(sa['save_s'], sb['save_s'])}, "
            f"cold load {_times(sa['load_s'], sb['load_s'])}, "
            f"size {sa['bytes_on_disk'].median / sb['bytes_on_disk'].median:.2f}x "
            f"({fmt_bytes(sa['bytes_on_disk'].median)} vs {fmt_bytes(sb['bytes_on_disk'].median)}), "
            f"files {sa['n_files'].median:.0f} vs {sb['n_files'].median:.0f}"
            + (f"; repeats {sa['n']} vs {sb['n']}." if sa["n"] != sb["n"] else "."))


def sweep_sentence(rows: list[dict], axis: str, fewer: set[str] = frozenset()) -> str:
    """Best and worst point of a sweep on save, load and size; a point of ``fewer`` (measured fewer times by
    design, ``Phase.fewer``) with fewer repeats than every other point says how many: one repeat can be far
    off its median."""
    summ = summarize(rows)
    if len(summ) < 2:
        return ""
    lab = labels(rows, axis)
    least = min((s["n"] for n, s in summ.items() if n not in fewer), default=0)
    out = []
    for key, what in (("save_s", "save"), ("load_s", "cold load"), ("bytes_on_disk", "size")):
        best = min(summ, key=lambda n: summ[n][key].median)
        worst = max(summ, key=lambda n: summ[n][key].median)
        unit = (lambda v: fmt_bytes(v)) if key == "bytes_on_disk" else (lambda v: f"{v:.3g} s")
        at = lambda n, unit=unit, key=key: unit(summ[n][key].median) + (
            f", {summ[n]['n']} repeat" + ("s" if summ[n]["n"] > 1 else "") if n in fewer and summ[n]["n"] < least
            else "")
        if summ[best][key].median == summ[worst][key].median:
            out.append(f"{what}: the same at every {axis} ({unit(summ[best][key].median)})")
            continue
        out.append(f"{what}: best at {axis} = {lab[best]} ({at(best)}), worst at {lab[worst]} ({at(worst)})")
    return f"- Sweep of {axis}: " + "; ".join(out) + "."


def claim_lines(rows: list[dict], numbers: tuple[int, ...]) -> list[str]:
    """The claims on this phase's rows (08-claims judges them on every row of the run, with more repeats where
    they are undecided: its verdict is the run's)."""
    out = []
    weights = next((r.get("weights") for r in rows if r.get("weights")), None)
    for c in judge_claims(rows, numbers):
        flag = f" Note, stored dtypes differ: {c['dtypes']}." if c["dtypes"] else ""
        out.append(f"- Guide claim {c['claim']}{f' on the {weights} weights' if weights else ''}: *{c['text']}* "
                   f"**{c['verdict']}** on this phase's rows: {c['measured']}. (Guide's figures: {c['guide']}.){flag}")
    if out:
        out.append("- The run's verdict on each claim, on every row of the run with repeats added where undecided, "
                   "is in `08-claims`.")
    return out


def disk_share(rows: list[dict], env: dict | None) -> pd.DataFrame:
    """Each approach's throughput (checkpoint bytes per second) as a share of
    the disk's rates measured in the same run (``env``'s,
    :func:`llama_ckpt.results.profile.disk_rates`: the rates the bounds use)."""
    summ = summarize(rows)
    w, r = disk_rates(env)
    recs = [{"approach": n, "dtype": s["stored_dtype"], "save_MB/s": s["save_Bps"].median / 1e6,
             "save_share_of_disk": s["save_Bps"].median / w if w else None,
             "load_MB/s": s["load_Bps"].median / 1e6, "load_share_of_disk": s["load_Bps"].median / r if r else None}
            for n, s in summ.items()]
    return pd.DataFrame(recs).set_index("approach") if recs else pd.DataFrame()


def memory_table(rows: list[dict]) -> pd.DataFrame:
    """Per approach: the median peak resident memory of its saves and loads
    as a multiple of the model's float32 bytes, split into the anonymous part
    (memory that must fit) and the file-backed part (mapped pages the kernel
    can drop). Peaks are the process's, so they include the source copy
    during a save and the loaded copy during a load; ``above`` is the peak
    above the process's resident memory when the step began (GB, median), and
    its spread across the repeats ((max - min) / median, %): the same
    approach should need the same memory every repeat."""
    summ = summarize(rows)
    model = {r["approach"]: 4 * r["n_params"] for r in rows if is_valid(r) and r.get("n_params")}
    recs = []
    for n, s in summ.items():
        m = model.get(n)
        rec = {"approach": n, "dtype": s["stored_dtype"], "model_GB": m / 1e9 if m else None}
        for step in ("save", "load"):
            for part, col in (("", "peak"), ("anon_", "anon"), ("file_", "file")):
                st = s[f"peak_{part}{step}"]
                rec[f"{step}_{col}_x"] = st.median / m if st and m else None
            rec[f"{step}_peak_GB"] = s[f"peak_{step}"].median / 1e9 if s[f"peak_{step}"] else None
            up = s[f"above_{step}"]
            rec[f"{step}_above_GB"] = up.median / 1e9 if up else None
            rec[f"{step}_above_spread_%"] = spread(up)
        recs.append(rec)
    return pd.DataFrame(recs).set_index("approach") if recs else pd.DataFrame()


def cpu_io_table(rows: list[dict], approaches: list[str] | None = None) -> pd.DataFrame:
    """Why a save or load takes its time: per approach, median CPU seconds
    (user, system; every thread of the process) per GB of checkpoint, and the
    read/write system calls with their mean size (``/proc/self/io``: a
    memory-mapped read makes page faults, not read calls)."""
    by: dict[str, list[dict]] = {}
    for r in rows:
        if is_valid(r) and r.get("cpu_io_save") and (approaches is None or r["approach"] in approaches):
            by.setdefault(r["approach"], []).append(r)
    med = lambda xs: float(pd.Series(xs).median())
    recs = []
    for n in (approaches or list(by)):
        rs = by.get(n)
        if not rs:
            continue
        gb = med([r["bytes_apparent"] for r in rs]) / 1e9
        rec = {"approach": n}
        for step, calls, size in (("save", "write_calls", "write_bytes"), ("load", "read_calls", "read_bytes")):
            c = [r[f"cpu_io_{step}"] for r in rs]
            rec[f"{step}_user_s/GB"] = med([x["user_s"] for x in c]) / gb
            rec[f"{step}_sys_s/GB"] = med([x["sys_s"] for x in c]) / gb
            kind, n_calls = calls.split("_")[0], med([x[calls] for x in c])
            rec[f"{step}_{kind}s"] = int(n_calls)
            rec[f"{step}_mean_{kind}_MB"] = med([x[size] for x in c]) / n_calls / 1e6 if n_calls else None
        recs.append(rec)
    return pd.DataFrame(recs).set_index("approach") if recs else pd.DataFrame()


def syscalls_table(profiles: list[dict | None]) -> pd.DataFrame:
    """``probes.syscall_profile`` results: one line per approach (a profile
    that failed keeps its line, with the reason)."""
    recs = [{"approach": p["approach"], "model": p["model"], "error": p["error"]} if p.get("error") else
            {"approach": p["approach"], "model": p["model"], "user_s": p["user_s"], "sys_s": p["sys_s"],
             "writes": p["write_calls"], "mean_write_MB": (p["mean_write_bytes"] or 0) / 1e6,
             "written_GB": p["write_bytes"] / 1e9, "fsyncs": p["fsync_calls"]} for p in profiles if p]
    return pd.DataFrame(recs).set_index("approach") if recs else pd.DataFrame()


def io_table(rows: list[dict], pairs: tuple[tuple[str, str], ...], env: dict | None = None) -> pd.DataFrame:
    """4f's sweep: one line per point, grouped by its base approach, with the
    knob it changes, medians [min, max], its time as a multiple of the base's
    (below 1 = faster), and throughput as a share of the disk's rates
    (:func:`llama_ckpt.results.profile.disk_rates`)."""
    summ = summarize(rows)
    bases = list(dict.fromkeys(b for _a, b in pairs))
    w, r = disk_rates(env)
    recs = []
    for b in bases:
        for n in [b] + [a for a, bb in pairs if bb == b]:
            if n not in summ:
                continue
            s, sb = summ[n], summ.get(b)
            knob = n[len(b) + 1:-1] if n != b else "(base)"
            recs.append({"base": b, "knob": knob,
                         "save_s": s["save_s"].median, "save_min": s["save_s"].lo, "save_max": s["save_s"].hi,
                         "load_s": s["load_s"].median, "load_min": s["load_s"].lo, "load_max": s["load_s"].hi,
                         "save_vs_base_x": s["save_s"].median / sb["save_s"].median if sb else None,
                         "load_vs_base_x": s["load_s"].median / sb["load_s"].median if sb else None,
                         "save_share_of_disk": s["save_Bps"].median / w if w else None,
                         "load_share_of_disk": s["load_Bps"].median / r if r else None,
                         "load_peak_anon_GB": s["peak_anon_load"].median / 1e9 if s["peak_anon_load"] else None,
                         "repeats": s["n"]})
    return pd.DataFrame(recs).set_index(["base", "knob"]) if recs else pd.DataFrame()


def io_findings(rows: list[dict], pairs: tuple[tuple[str, str], ...], best: str = "ts+best") -> str:
    """Per base approach of the sweep: the fastest save, cold load and round
    trip (save + load) among its points, and whether ``best`` is the fastest
    round trip among its own points."""
    summ = summarize(rows)
    out = []
    for b in dict.fromkeys(bb for _a, bb in pairs):
        pts = [n for n in [b] + [a for a, bb in pairs if bb == b] if n in summ]
        if b not in summ:
            out.append(f"- **{b}**: no valid row of the base itself: its points are not compared.")
            continue
        if len(pts) < 2:
            continue
        rts = {n: Stat.of([r["save_s"] + r["load_s"] for r in rows if is_valid(r) and r["approach"] == n])
               for n in pts}
        rt = {n: st.median for n, st in rts.items()}
        fs = min(pts, key=lambda n: summ[n]["save_s"].median)
        fl = min(pts, key=lambda n: summ[n]["load_s"].median)
        frt = min(pts, key=rt.get)
        line = (f"- **{b}**: fastest save {fs} ({summ[fs]['save_s'].median:.3g} s), fastest cold load {fl} "
                f"({summ[fl]['load_s'].median:.3g} s), fastest round trip (save + cold load) {frt} "
                f"({rt[frt]:.3g} s against {rt[b]:.3g} s for {b}).")
        if b == best:
            a, c = rts[frt], rts[best]
            line += (f" {best} is the fastest round trip of this sweep." if frt == best else
                     f" In this run {frt} beat {best} by {1 - rt[frt] / rt[best]:.0%} on the round trip"
                     + ("; the repeats' ranges overlap, so this may not hold in the next run" if
                        not (a.hi < c.lo or a.lo > c.hi) else "")
                     + (f"; {frt} was measured once" if a.n == 1 and c.n > 1 else "") + ".")
        out.append(line)
    return "\n".join(out)


def findings(rows: list[dict], phase, baseline: str = BASELINE, other: list[dict] | None = None) -> str:
    """Markdown findings of one phase (a :class:`llama_ckpt.study.phases.Phase`),
    computed from its rows (and ``other``: its rows on the preset's other weights)."""
    pairs, axis, claims = phase.comparisons(baseline), phase.axis, phase.claims
    valid = [r for r in rows if is_valid(r)]
    bad = [r for r in rows if r.get("record") == "measurement" and not is_valid(r)]
    if not valid:
        return "No valid measurement: nothing to conclude."
    summ = summarize(valid)
    lines = [f"Measured on **{valid[0]['model']}** ({valid[0]['n_tensors']} tensors, "
             f"{valid[0].get('weights') or 'unrecorded'} weights), "
             f"{max(s['n'] for s in summ.values())} repeat(s), run `{valid[0]['run_id']}`; "
             "ratios are medians of this run."]
    shared: dict[str, list[str]] = {}
    for r in valid:
        if r.get("phase") and r["phase"] != phase.slug and r["phase"] not in shared.get(r["approach"], []):
            shared.setdefault(r["approach"], []).append(r["phase"])
    if shared:
        lines.append("- Measured once in this run and shared (a configuration is measured once per run): "
                     + "; ".join(f"{n} by {', '.join(ps)}" for n, ps in shared.items()) + ".")
    for a, b in pairs:
        lines.append(versus(summ, a, b))
    if axis:
        lines.append(sweep_sentence(valid, axis, set(phase.fewer(2))))
    lines += claim_lines(valid, claims)
    if other and any(is_valid(r) for r in other):
        o = [r for r in other if is_valid(r)]
        lines.append(f"- On the {o[0].get('weights')} weights ({o[0]['model']}):")
        lines += ["  " + ln for ln in [versus(summarize(o), a, b) for a, b in pairs if a in summarize(o)]
                  + claim_lines(o, claims)[:-1]]
    for r in bad:
        lines.append(f"- Not counted: {r['approach']} repeat {r['repeat']}: {r.get('error') or 'did not verify'}.")
    return "\n".join(lines)


def cloud_table(rows: list[dict]) -> pd.DataFrame:
    """The cloud rows: one line per added delay and approach, with medians of
    the repeats for time, objects stored and requests made (reads, writes,
    lists, deletes; TensorStore's kvstore metrics plus the suite's own
    manifest, marker and listing requests)."""
    recs = []
    by: dict[tuple, list[dict]] = {}
    for r in rows:
        if is_valid(r) and r.get("requests_save") is not None:
            by.setdefault((float(r.get("s3_delay_ms") or 0), r["approach"]), []).append(r)
    for (delay, name), rs in by.items():
        s = summarize(rs)[name]
        med = lambda xs: float(pd.Series(xs).median())
        knobs = rs[0].get("knobs") or {}
        fmt = APPROACHES.get(name)
        recs.append({
            "RTT_added_ms": delay, "approach": name,
            "chunks": knob_label(knobs, "chunk_size"),
            "kvstore": "OCDBT" if knobs.get("use_ocdbt") else "zarr objects" if "chunk_rule" in knobs else "one object",
            "read_by": "TensorStore" if "chunk_rule" in knobs else
            "its own client" if fmt is not None and fmt.own_s3_client else "boto3",
            "save_s": s["save_s"].median, "load_s": s["load_s"].median,
            "objects": int(s["n_files"].median), "stored_MB": s["bytes_on_disk"].median / 1e6,
            "requests_save": int(med([request_total(r["requests_save"]) for r in rs])),
            # None: a library's own S3 client, whose requests the suite cannot count
            "requests_load": (None if any(r.get("requests_load") is None for r in rs) else
                              int(med([request_total(r["requests_load"]) for r in rs]))),
            "server_cold": all(r.get("load_cold") for r in rs), "repeats": s["n"],
        })
    if not recs:
        return pd.DataFrame()
    return pd.DataFrame.from_records(recs).set_index(["RTT_added_ms", "approach"])


def cloud_findings(rows: list[dict]) -> str:
    """Claim 9's verdict, OCDBT against plain zarr objects pair by pair at
    each delay, and what the delay costs, from the cloud rows."""
    t = cloud_table(rows)
    if t.empty:
        return "No valid rows on S3: claim 9 (OCDBT is better for cloud storage) is not judged."
    c = judge_cloud(rows)
    lines = [f"- **Claim 9** ({c['text']}) **{c['verdict']}**: {c['measured']}."]
    delays = sorted({d for d, _ in t.index})
    for a, b in CLOUD_PAIRS:
        for d in delays:
            if (d, a) not in t.index or (d, b) not in t.index:
                continue
            x, y = t.loc[(d, a)], t.loc[(d, b)]
            lines.append(f"- +{d:g} ms, OCDBT `{a}` against `{b}` ({x['chunks']} chunks): save "
                         f"{x['save_s'] / y['save_s']:.2f}x ({x['requests_save']} vs {y['requests_save']} requests), "
                         f"load {x['load_s'] / y['load_s']:.2f}x ({x['requests_load']} vs {y['requests_load']} "
                         f"requests), {x['objects']} vs {y['objects']} objects.")
    for a, b in CLOUD_LOADER_PAIRS:
        for d in delays:
            if (d, a) in t.index and (d, b) in t.index:
                x, y = t.loc[(d, a)], t.loc[(d, b)]
                lines.append(f"- +{d:g} ms, cold load from S3: `{a}` ({x['read_by']}, {x['kvstore']}) in "
                             f"{x['load_s']:.3g} s against `{b}` ({y['read_by']}, {y['kvstore']}) in "
                             f"{y['load_s']:.3g} s: {x['load_s'] / y['load_s']:.2f}x.")
    if len(delays) > 1:
        lo, hi = delays[0], delays[-1]
        for name in dict.fromkeys(n for _, n in t.index):
            if (lo, name) in t.index and (hi, name) in t.index:
                a, b = t.loc[(lo, name)], t.loc[(hi, name)]
                per = (b["save_s"] - a["save_s"]) / b["requests_save"] * 1e3 if b["requests_save"] else float("nan")
                lines.append(f"- `{name}`: +{hi - lo:g} ms of round trip multiplies its save time by "
                             f"{b['save_s'] / a['save_s']:.1f}x and its load time by {b['load_s'] / a['load_s']:.1f}x "
                             f"({per:.1f} ms more per save request).")
    return "\n".join(lines)


def save_phases_table(rows: list[dict], approaches: list[str] | None = None) -> pd.DataFrame:
    """Where each approach's save time goes: the median seconds of each step
    of the save over the valid repeats (``save_phases`` of the rows), the
    rest of the timed save (``other``: digest bookkeeping, Python between
    steps) and the median save time."""
    recs = []
    by: dict[str, list[dict]] = {}
    for r in rows:
        if is_valid(r) and r.get("save_phases") is not None and (approaches is None or r["approach"] in approaches):
            by.setdefault(r["approach"], []).append(r)
    for name, rs in by.items():
        steps = list(dict.fromkeys(k for r in rs for k in r["save_phases"]))
        rec = {"approach": name, "save_s": float(pd.Series([r["save_s"] for r in rs]).median())}
        for st in steps:
            rec[st] = float(pd.Series([r["save_phases"].get(st, 0.0) for r in rs]).median())
        rec["other"] = float(pd.Series([r["save_s"] - sum(r["save_phases"].values()) for r in rs]).median())
        recs.append(rec)
    if not recs:
        return pd.DataFrame()
    return pd.DataFrame.from_records(recs).set_index("approach")


def scaling_table(rows: list[dict]) -> pd.DataFrame:
    """The sharded rows: one line per approach, nodes and (save ranks -> load
    ranks), medians of the repeats: checkpoint time (slowest rank plus
    commit), slowest and fastest rank's own write, aggregate throughput
    (checkpoint bytes / time) and per node, the load alike, and the speed-up
    against the same approach on 1 rank."""
    by: dict[tuple, list[dict]] = {}
    for r in rows:
        if is_valid(r) and r.get("world_size"):
            by.setdefault((r["approach"], r.get("nodes") or 1, r["world_size"], r["load_world_size"]), []).append(r)
    med = lambda xs: float(pd.Series(xs).median())  # noqa: E731
    order = list(dict.fromkeys(r["approach"] for r in rows))
    recs = []
    for (name, nodes, w, lw), rs in sorted(by.items(), key=lambda kv: (order.index(kv[0][0]), kv[0][1:])):
        save, load = med([r["save_s"] for r in rs]), med([r["load_s"] for r in rs])
        size = med([r["bytes_on_disk"] for r in rs])
        recs.append({
            "approach": name, "nodes": nodes, "ranks_save": w, "ranks_load": lw,
            "launcher": rs[0].get("launcher") or "spawn", "save_s": save, "load_s": load,
            "rank_write_max_s": med([max(k["write_s"] for k in r["ranks_save"]) for r in rs]),
            "rank_write_min_s": med([min(k["write_s"] for k in r["ranks_save"]) for r in rs]),
            "save_MB/s": size / save / 1e6, "load_MB/s": size / load / 1e6,
            "save_MB/s_per_node": size / save / 1e6 / nodes, "load_MB/s_per_node": size / load / 1e6 / nodes,
            "files": int(med([r["n_files"] for r in rs])), "repeats": len(rs)})
    if not recs:
        return pd.DataFrame()
    t = pd.DataFrame.from_records(recs)
    for col, base_col in (("save_speedup", "save_s"), ("load_speedup", "load_s")):
        one = {r["approach"]: r[base_col] for r in recs if r["ranks_save"] == 1 and r["ranks_load"] == 1}
        t[col] = [one[a] / v if a in one else None for a, v in zip(t["approach"], t[base_col])]
    return t.set_index(["approach", "nodes", "ranks_save", "ranks_load"])


def scaling_findings(rows: list[dict], cores: int | None = None) -> str:
    t = scaling_table(rows)
    if t.empty:
        return "No valid sharded rows."
    lines = []
    for name in dict.fromkeys(a for a, *_ in t.index):
        sub = t.loc[name]
        parts = []
        for (nodes, w, lw), r in sub.iterrows():
            if nodes == 1 and w == lw and w > 1 and r["save_speedup"] is not None:
                parts.append(f"{w} ranks: save {r['save_speedup']:.2f}x, load {r['load_speedup']:.2f}x the 1-rank "
                             f"speed ({r['save_MB/s']:.0f} / {r['load_MB/s']:.0f} MB/s aggregate)")
        for (nodes, w, lw), r in sub.iterrows():
            if nodes > 1:
                same = sub.loc[(1, w, lw)] if (1, w, lw) in sub.index else None
                vs = (f"; against {w} ranks on one node: save {same['save_s'] / r['save_s']:.2f}x, load "
                      f"{same['load_s'] / r['load_s']:.2f}x its speed" if same is not None else "")
                parts.append(f"{nodes} nodes x {w // nodes} ranks ({r['launcher']}): checkpoint {r['save_s']:.3g} s, "
                             f"load {r['load_s']:.3g} s ({r['save_MB/s']:.0f} / {r['load_MB/s']:.0f} MB/s aggregate, "
                             f"{r['save_MB/s_per_node']:.0f} / {r['load_MB/s_per_node']:.0f} per node{vs})")
        for (_nodes, w, lw), r in sub.iterrows():
            if w != lw:
                parts.append(f"saved by {w}, loaded by {lw}: load {r['load_s']:.3g} s, verified")
        if parts:
            lines.append(f"- `{name}`: " + "; ".join(parts) + ".")
    if (t.reset_index()["nodes"] > 1).any():
        lines.append("- The nodes of a job started on one machine (as this phase does) share its cores and disk: "
                     "the multi-node rows show the launched path and its overhead, not a second machine's bandwidth.")
    if cores:
        lines.append(f"- This machine has {cores} cores: ranks beyond {cores} share them, so speed-ups there measure "
                     "overlap of I/O waits, not added compute.")
    return "\n".join(lines)


def vs_next(samples: dict, a: str, b: str | None, key: str) -> str:
    """``a``'s median over the next-ranked ``b``'s with the claims' bootstrap interval, and whether the rule
    tells them apart (the whole interval below 1) on at least ``MIN_REPEATS`` repeats of each."""
    if b is None:
        return ""
    x, y = samples[a][key], samples[b][key]
    if not len(x) or not len(y) or (y <= 0).any():
        return ""
    if "bytes" in key:  # a size: the medians' difference (a few bytes of metadata may vary by repeat)
        d = float(statistics.median(y) - statistics.median(x))
        return f"smaller by {fmt_bytes(d)}" if d > 0 else "the same"
    r, lo, hi = ratio_interval(x, y)
    told = ("not told apart" if hi >= 1 else "told apart" if min(len(x), len(y)) >= MIN_REPEATS else
            f"apart, but on fewer than {MIN_REPEATS} repeats")
    return f"{r:.2f}x [{lo:.2f}-{hi:.2f}]: {told}"
