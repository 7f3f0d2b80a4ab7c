"""07-training's tables, chart and findings, from its rows (one per
checkpoint taken inside the loop; see :mod:`llama_ckpt.bench.training`).

Per saver, over its checkpoints: the medians of the blocking time and the
time to durable; the step time with no save in flight (the steps that began
after it was durable) against the steps that began while it was in flight
(the slowdown); the checkpoint's cost to the loop (blocking,
plus the in-flight steps' time beyond as many no-save steps (at the median), plus any wait for
it at the end of the segment) and that cost's share of the segment's wall
time; the extra peak memory (the peak from the call until durable over the
peak of the steps before it, which hold the loop's own gradients), of this
process and of the whole machine (which also sees a forked writer and the
pages the kernel copies on write).
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
from matplotlib.ticker import NullFormatter
import pandas as pd
import seaborn as sns

from ..bench.training import DLIO_STEP_S
from ..results import Stat, fmt_bytes, fmt_stat
from ..results.profile import MachineProfile, as_profile
from ..study.aims import AIM_CHECKPOINTS, BLOCKING_AIM, SLOWDOWN_AIM, SLOWDOWN_AIMS
from . import charts

IDLE_SAMPLES = 3  # steps after a save was durable below which the steps before the call join the baseline
# The checkpoint interval at which the effective training time ratio is stated: TorchTitan's default
# (pytorch/torchtitan, torchtitan/config: Checkpoint.interval = 500 steps).
INTERVAL_STEPS = 500
COST_SHARES = (0.01, 0.05)  # the shares of a run's time for which the shortest checkpoint interval is given
LOOP_TITLES = {"accelerator": "the accelerator-bound loop", "cpu": "the CPU-bound loop"}


def loop_of(r: dict) -> str:
    return r.get("loop") or "cpu"  # rows from before the accelerator loop are the CPU loop's


def loops(rows: list[dict]) -> list[str]:
    """The loops the rows cover, in the order they were measured."""
    return list(dict.fromkeys(loop_of(r) for r in rows if r.get("record") == "training"))


def in_loop(rows: list[dict], loop: str | None) -> list[dict]:
    """The rows of ``loop``; ``None``: all of them, which must then be one loop's (a saver's figures never mix
    loops)."""
    if loop is None:
        if len(loops(rows)) > 1:
            raise ValueError(f"rows of {len(loops(rows))} loops ({', '.join(loops(rows))}): name the loop")
        return rows
    return [r for r in rows if r.get("record") == "training" and loop_of(r) == loop]


def _med(xs):
    st = Stat.of(xs)
    return st.median if st else None


def _rng(xs) -> str:
    return fmt_stat(Stat.of(xs))


def valid(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r.get("record") == "training" and r.get("verified") and not r.get("error")]


def per_saver(rows: list[dict], loop: str | None = None) -> dict[str, dict]:
    """Each saver's figures over its verified checkpoints, in the rows' order
    (of one loop; ``None``: the rows are one loop's)."""
    rows = in_loop(rows, loop)
    out: dict[str, dict] = {}
    for name in dict.fromkeys(r["approach"] for r in rows):
        mine = [r for r in rows if r["approach"] == name]
        ok = valid(mine)
        out[name] = _saver_figures(mine, ok) if ok else _no_verified(mine)
    return out


def _first_error(mine: list[dict]) -> str | None:
    return next((r["error"] for r in mine if r.get("error")), None)


def _no_verified(mine: list[dict]) -> dict:
    """A saver with no verified checkpoint: how many it took, and the first error."""
    return {"n": 0, "n_rows": len(mine), "mode": mine[0].get("mode"), "sync_of": mine[0].get("sync_of"),
            "error": _first_error(mine) or "no verified checkpoint"}


def _idle_steps(ok: list[dict]) -> list[float]:
    """The steps with no save in flight: those after it was durable; the step before the call (it follows the
    previous checkpoint's cold load and check) only where too few steps came after."""
    idle = [s for r in ok for s in r["steps_after_s"] or []]
    if len(idle) < IDLE_SAMPLES:
        idle += [s for r in ok for s in r["steps_before_s"] or []]
    return idle


def _per_checkpoint(ok: list[dict], idle_step: float | None) -> dict[str, list]:
    """Per verified checkpoint: its cost to the loop (blocking, stall, and the in-flight steps' time beyond as
    many steps with no save in flight, never below none: ``lost``), that cost's share of the segment's wall time,
    and the extra memory (process, machine) and CPU seconds it took."""
    out: dict[str, list] = {k: [] for k in ("cost", "lost", "share", "extra_rss", "extra_machine", "extra_cpu")}
    # the loop's CPU seconds per step with no save in flight, from the same steps as its time
    per_step = _med([c for r in ok for c in r.get("steps_after_cpu_s") or []])
    for r in ok:
        steps = r["steps_inflight_s"] or []
        over = max(0.0, sum(steps) - idle_step * len(steps))
        cost = r["blocking_s"] + (r["stall_s"] or 0.0) + over
        wall = sum(r["steps_before_s"] or []) + r["segment_s"]
        out["cost"].append(cost)
        out["lost"].append(over)
        out["share"].append(cost / wall if wall else None)
        if r.get("peak_rss_bytes") and r.get("peak_rss_idle_bytes"):
            out["extra_rss"].append(max(0, r["peak_rss_bytes"] - r["peak_rss_idle_bytes"]))
        if r.get("machine_used_bytes") and r.get("machine_used_idle_bytes"):
            out["extra_machine"].append(max(0, r["machine_used_bytes"] - r["machine_used_idle_bytes"]))
        if r.get("cpu_segment_s") is not None and per_step is not None:
            n_steps = len((r["steps_inflight_s"] or []) + (r["steps_after_s"] or []))
            out["extra_cpu"].append(r["cpu_segment_s"] - per_step * n_steps)
    return out


def _recorded(ok: list[dict], key: str) -> list:
    """``key`` of the checkpoints that recorded it."""
    return [r[key] for r in ok if r.get(key) is not None]


def _pooled_median(ok: list[dict], key: str) -> float | None:
    """The median of every checkpoint's samples of ``key`` (a list per row) together."""
    return _med([x for r in ok for x in r.get(key) or []])


def _saver_figures(mine: list[dict], ok: list[dict]) -> dict:
    """A saver's figures over its verified checkpoints ``ok`` (``mine``: all its rows)."""
    idle_step = _med(_idle_steps(ok))
    inflight = [s for r in ok for s in r["steps_inflight_s"] or []]
    first = ok[0]
    return {
        "n": len(ok), "n_rows": len(mine), "mode": first["mode"], "sync_of": first["sync_of"],
        "format": first["format"], "state_bytes": first["checkpoint_bytes"],
        "blocked_by": first.get("blocked_by") or first["mode"],
        "blocking": [r["blocking_s"] for r in ok], "durable": [r["durable_s"] for r in ok],
        "stall": [r["stall_s"] for r in ok], "load": [r["load_s"] for r in ok],
        "idle_step": idle_step, "inflight_step": _med(inflight), "n_inflight": len(inflight),
        "slowdown": (_med(inflight) / idle_step - 1) if inflight and idle_step else None,
        "rss_before": _med([r.get("rss_before_bytes") for r in ok]),
        "staging": _recorded(ok, "staging_s"), "kept": _recorded(ok, "kept_bytes"),
        **_per_checkpoint(ok, idle_step),
        "writer_cpu": _recorded(ok, "writer_cpu_s"),
        # the background's seconds after the loop was given back (a sync save's durable time is
        # taken inside its call, so a hair under its blocking time: none)
        "background": [max(0.0, r["durable_s"] - r["blocking_s"]) for r in ok],
        "update_wait": _recorded(ok, "update_wait_s"),
        "device_s": first.get("device_step_s"),
        "call": _recorded(ok, "call_s"),
        "host_idle": _pooled_median(ok, "host_after_s"),
        "host_inflight": _pooled_median(ok, "host_inflight_s"),
        "host_cpu_idle": _pooled_median(ok, "host_cpu_after_s"),
        "host_cpu_inflight": _pooled_median(ok, "host_cpu_inflight_s"),
        "error": _first_error(mine),
    }


def _mem(xs: list, state_bytes: int) -> str:
    m = _med(xs)
    return f"{fmt_bytes(m)} ({m / state_bytes:.2f}x)" if m is not None else ""


def _versus_sync(s: dict, summ: dict) -> float | None:
    base = summ.get(s["sync_of"])
    if not base or not base["n"] or not s["n"]:
        return None
    return _med(s["blocking"]) / _med(base["durable"])


def training_table(rows: list[dict], loop: str | None = None) -> pd.DataFrame:
    """One line per saver: medians [min-max] over its checkpoints."""
    summ = per_saver(rows, loop)
    recs = []
    for name, s in summ.items():
        if not s["n"]:
            recs.append({"saver": name, "mode": s["mode"], "checkpoints verified": f"0 of {s['n_rows']}",
                         "error": s["error"]})
            continue
        vs = _versus_sync(s, summ)
        recs.append({
            "saver": name, "mode": s["mode"], "blocking_s": _rng(s["blocking"]), "durable_s": _rng(s["durable"]),
            "blocking / own sync save": "" if s["mode"] == "sync" else (f"{vs:.1%}" if vs is not None else ""),
            "step_s no save": f"{s['idle_step']:.3g}",
            "step_s save in flight": f"{s['inflight_step']:.3g} ({s['n_inflight']})" if s["n_inflight"] else "",
            "slowdown": f"{s['slowdown']:+.0%}" if s["slowdown"] is not None else "",
            "cost_s per checkpoint": _rng(s["cost"]), "share of wall": f"{_med(s['share']):.1%}",
            "checkpoints verified": f"{s['n']} of {s['n_rows']}",
        })
    return pd.DataFrame(recs).set_index("saver") if recs else pd.DataFrame()


def memory_table(rows: list[dict], loop: str | None = None) -> pd.DataFrame:
    """Per saver: the extra peak memory of a checkpoint (this process's and
    the machine's, over the peak of the step before the call), the staging
    copy it keeps between checkpoints, and the cold load of the checkpoint."""
    recs = []
    for name, s in per_saver(rows, loop).items():
        if not s["n"]:
            continue
        recs.append({"saver": name, "extra peak, process": _mem(s["extra_rss"], s["state_bytes"]),
                     "extra peak, machine": _mem(s["extra_machine"], s["state_bytes"]),
                     "kept between checkpoints": _mem(s["kept"], s["state_bytes"]),
                     "load_s (cold)": _rng(s["load"])})
    return pd.DataFrame(recs).set_index("saver") if recs else pd.DataFrame()


def where_time_goes(rows: list[dict], loop: str | None = None) -> pd.DataFrame:
    """Medians per saver: what blocks the loop, how long the background
    works after it, what the in-flight steps lose, the CPU seconds the
    checkpoint added to the segment (this process and the writer processes
    it waited for, beyond what the loop's steps use without a save), and the
    writer's own CPU seconds where it is a thread or process of its own."""
    recs = []
    for name, s in per_saver(rows, loop).items():
        if not s["n"]:
            continue
        recs.append({"saver": name, "blocked by": s["blocked_by"],
                     "blocking_s": _med(s["blocking"]),
                     "the staging copy s": f"{_med(s['staging']):.3g}" if s["staging"] else "",
                     "of it, the wait before the update s": f"{_med(s['update_wait']):.3g}" if s["update_wait"]
                     else "",
                     "background_s": _med(s["background"]),
                     "in-flight steps' extra s": _med(s["lost"]), "stall_s": _med(s["stall"]),
                     "extra CPU s": _med(s["extra_cpu"]),
                     "writer CPU s": f"{_med(s['writer_cpu']):.3g}" if s["writer_cpu"] else "not its own"})
    return pd.DataFrame(recs).set_index("saver") if recs else pd.DataFrame()


def ranking(rows: list[dict], loop: str | None = None) -> pd.DataFrame:
    """For training: least blocking time, then time to durable; the loop's
    slowdown and the extra memory beside them. Savers with a checkpoint that
    did not verify are left out (listed in the findings)."""
    summ = {n: s for n, s in per_saver(rows, loop).items() if s["n"] and s["n"] == s["n_rows"]}
    order = sorted(summ, key=lambda n: (_med(summ[n]["blocking"]), _med(summ[n]["durable"])))
    recs = [{"rank": i, "saver": n, "mode": summ[n]["mode"], "blocking": f"{_med(summ[n]['blocking']):.3g} s",
             "durable": f"{_med(summ[n]['durable']):.3g} s",
             "slowdown": f"{summ[n]['slowdown']:+.0%}" if summ[n]["slowdown"] is not None else "none in flight",
             "extra memory (machine)": fmt_bytes(_med(summ[n]["extra_machine"])) if summ[n]["extra_machine"] else "",
             "kept between checkpoints": fmt_bytes(_med(summ[n]["kept"])) if summ[n]["kept"] else "",
             "checkpoints": summ[n]["n"]} for i, n in enumerate(order, 1)]
    return pd.DataFrame(recs).set_index("rank") if recs else pd.DataFrame()


def findings(rows: list[dict], env: dict | None = None, loop: str | None = None,
             profile: dict | None = None) -> str:
    """07's findings in ``loop`` (``None``: the rows are one loop's): whether every checkpoint held its step's
    weights, the fastest synchronous save, and the asynchronous savers against the aims
    (:mod:`llama_ckpt.study.aims`), their cost to the loop and what slows its steps."""
    summ = per_saver(rows, loop)
    if not summ:
        return _nothing_taken(loop, (env or {}).get("skipped") or {})
    kind = loop or (loops(rows) or ["cpu"])[0]
    bad = {n: s for n, s in summ.items() if s["n"] < s["n_rows"]}
    async_ok = {n: s for n, s in summ.items() if s["mode"] != "sync" and s["n"] and n not in bad}
    syncs = {n: s for n, s in summ.items() if s["mode"] == "sync" and s["n"]}
    fastest = min(syncs, key=lambda n: _med(syncs[n]["durable"])) if syncs else None
    out = [_verified_line(summ, bad)]
    if fastest is not None:
        out.append(f"- Fastest synchronous save: {fastest}, {_med(syncs[fastest]['durable']):.3g} s (the loop "
                   "waits all of it).")
    if async_ok:
        out += _async_lines(summ, async_ok, bad, fastest, kind, (env or {}).get("n_cpus"), profile)
    return "\n".join(out)


def _nothing_taken(loop: str | None, skipped: dict) -> str:
    return ("No checkpoint was taken in this run" + (f" in {LOOP_TITLES.get(loop, loop)}" if loop else "")
            + (f": {'; '.join(skipped.values())}." if skipped else "."))


def _verified_line(summ: dict, bad: dict) -> str:
    """Every checkpoint held the weights of its step, or which did not."""
    if bad:
        return "**Not every checkpoint holds the weights of its step**: " + "; ".join(
            f"{n}: {s['n_rows'] - s['n']} of {s['n_rows']} ({s['error']})" for n, s in bad.items()) + "."
    n_all = sum(s["n_rows"] for s in summ.values())
    return (f"All {n_all} checkpoints verified bit for bit against the digests of the step they were taken "
            "at, although the loop went on updating the weights in place while the asynchronous ones wrote.")


def _async_lines(summ: dict, async_ok: dict, bad: dict, fastest: str | None, kind: str, cores: int | None,
                 profile: dict | None) -> list[str]:
    """The asynchronous savers' findings: the least blocking one against the aims and where its time goes, every
    saver's blocking against its synchronous save, why the steps slow down, the cost to the loop and the
    intervals it allows, and the slowdowns side by side."""
    best = min(async_ok, key=lambda n: _med(async_ok[n]["blocking"]))
    s = async_ok[best]
    out = [_least_blocking_line(best, s, summ, SLOWDOWN_AIMS.get(kind, SLOWDOWN_AIM)),
           f"- Where {best}'s time goes: the loop waits for {s['blocked_by']} ({_med(s['blocking']):.3g} s); the "
           f"background then works {_med(s['background']):.3g} s, during which the steps lost "
           f"{_med(s['lost']):.3g} s in all."]
    out += _blocking_share_lines(async_ok, summ, profile)
    if kind == "accelerator" and s["host_idle"] is not None:
        out.append(_host_line(best, s))
    if kind == "cpu" and s["extra_cpu"] and cores:
        out.append(_cpu_line(best, s, cores))
    out.append(_least_cost_line(async_ok, summ.get(fastest)))
    out.append(_interval_line(summ, bad))
    out += _slowdown_lines(async_ok, kind, cores)
    return out


def _least_blocking_line(best: str, s: dict, summ: dict, slow_aim: float) -> str:
    """The least blocking saver: its blocking against its synchronous save and the steps' slowdown against
    their aims, provisional on fewer than :data:`AIM_CHECKPOINTS` checkpoints."""
    vs = _versus_sync(s, summ)
    line = (f"- Least blocking: {best} ({s['mode']}), {_med(s['blocking']):.3g} s, durable after "
            f"{_med(s['durable']):.3g} s")
    if vs is not None:
        sync_s = _med(summ[s["sync_of"]]["durable"])
        line += (f"; that is {vs:.1%} of its synchronous save ({s['sync_of']}, {sync_s:.3g} s): "
                 + ("within" if vs <= BLOCKING_AIM else "**not** within") + f" the {BLOCKING_AIM:.0%} aim")
    if s["slowdown"] is not None:
        line += (f". Steps that began while it was in flight took {s['inflight_step']:.3g} s against "
                 f"{s['idle_step']:.3g} s with no save ({s['slowdown']:+.0%}, {s['n_inflight']} steps): "
                 + ("within" if s["slowdown"] <= slow_aim else "**not** within")
                 + f" the {slow_aim:.0%} aim")
    else:
        line += ". No step began while it was in flight"
    if s["n"] < AIM_CHECKPOINTS:
        line += (f" (medians of {s['n']} checkpoint(s); the aims ask for at least {AIM_CHECKPOINTS}: "
                 "provisional)")
    return line + "."


def _blocking_share_lines(async_ok: dict, summ: dict, profile: dict | None) -> list[str]:
    """Every asynchronous saver's blocking as a share of its synchronous save, which meet the aim, and why a
    staging copy misses it."""
    shares = {n: _versus_sync(a, summ) for n, a in async_ok.items()}
    shares = {n: v for n, v in sorted(shares.items(), key=lambda kv: kv[1] if kv[1] is not None else 9)
              if v is not None}
    if not shares:
        return []
    met = [n for n, v in shares.items() if v <= BLOCKING_AIM]
    out = ["- Blocking as a share of the saver's own synchronous save: " + ", ".join(
        f"{n} {v:.1%}" for n, v in shares.items()) + f"; within the {BLOCKING_AIM:.0%} aim: "
        + (", ".join(met) if met else "none") + "."]
    copying = [n for n in shares if shares[n] > BLOCKING_AIM and async_ok[n]["staging"]]
    if copying and (why := _copy_floor(copying, async_ok, summ, profile)):
        out.append(why)
    return out


def _cpu_line(best: str, s: dict, cores: int) -> str:
    """The CPU-bound loop: the CPU seconds ``best``'s checkpoint added beside the steps' loss."""
    return (f"- Why the steps slow down: the loop keeps all {cores} cores busy, and {best}'s checkpoint "
            f"added {_med(s['extra_cpu']):.3g} CPU seconds to its segment, "
            f"{_med(s['extra_cpu']) / cores:.3g} s "
            f"of all {cores} cores' time"
            + (f" (the writer itself {_med(s['writer_cpu']):.3g} CPU seconds)" if s["writer_cpu"] else "")
            + f"; the steps in flight lost {_med(s['lost']):.3g} s.")


def _least_cost_line(async_ok: dict, fastest_sync: dict | None) -> str:
    """The asynchronous saver that costs the loop least, beside the fastest synchronous save's cost."""
    cheapest = min(async_ok, key=lambda n: _med(async_ok[n]["cost"]))
    c = async_ok[cheapest]
    return (f"- Least cost to the loop (blocking + in-flight steps' extra time + waiting): {cheapest}, "
            f"{_med(c['cost']):.3g} s per checkpoint, {_med(c['share']):.1%} of the segment's wall time"
            + (f"; the fastest synchronous save costs {_med(fastest_sync['cost']):.3g} s "
               f"({_med(fastest_sync['share']):.1%})" if fastest_sync else "") + ".")


def _interval_line(summ: dict, bad: dict) -> str:
    """Each saver's shortest checkpoint interval at which it costs at most ``COST_SHARES[0]`` of a run."""
    every = {n: interval_for(_med(a["cost"]), a["idle_step"], _med(a["background"]), COST_SHARES[0])[1]
             for n, a in summ.items() if a["n"] and n not in bad and a["idle_step"]}
    return (f"- The shortest checkpoint interval, in training time, at which each saver costs at most "
            f"{COST_SHARES[0]:.0%} of a run: " + ", ".join(
                f"{n} {fmt_duration(t)}" for n, t in sorted(every.items(), key=lambda kv: kv[1])) + ".")


def _slowdown_lines(async_ok: dict, kind: str, cores: int | None) -> list[str]:
    """The steps' slowdown under each asynchronous saver, the same writer in a thread against a process, and
    (in the CPU-bound loop) what a fork() costs the steps."""
    out = []
    slowed = sorted((n for n in async_ok if async_ok[n]["slowdown"] is not None),
                    key=lambda n: -async_ok[n]["slowdown"])
    if slowed:
        out.append("- Slowdown of the steps while a save is in flight: " + ", ".join(
            f"{n} {async_ok[n]['slowdown']:+.0%}" for n in slowed) + "." + (
            f" In this loop the steps use this machine's {cores or 'few'} cores: a writer's serialisation and "
            "copies take CPU from the steps, whatever runs it." if kind == "cpu" else
            " In this loop a step's device part holds no core and no lock; what slows a step is its host part "
            "waiting, for the interpreter lock or a core (see the table of the host part)."))
    pairs = [(t, p) for t, p in (("copy+safetensors-thread", "copy+safetensors-process"),
                                 ("dcp-async", "dcp-async-process"))
             if t in async_ok and p in async_ok and async_ok[t]["slowdown"] is not None
             and async_ok[p]["slowdown"] is not None]
    if pairs:
        out.append("- The same writer in a thread of the loop's process or in a process of its own (the thread "
                   "shares the loop's interpreter lock and allocator, the process its cores only): " + "; ".join(
                       f"{t} {async_ok[t]['slowdown']:+.0%} against {p} {async_ok[p]['slowdown']:+.0%} slower "
                       f"steps, blocking {_med(async_ok[t]['blocking']):.3g} s against "
                       f"{_med(async_ok[p]['blocking']):.3g} s" for t, p in pairs) + ".")
    fk = async_ok.get("fork+safetensors")
    if fk and fk["slowdown"] is not None and kind == "cpu":
        out.append(f"- fork() blocks for {_med(fk['blocking']):.3g} s, copying the page tables of a "
                   f"{fmt_bytes(fk['rss_before'])} process; the child then shares every page with the loop, so "
                   f"the kernel copies each page the optimizer updates while the child is still writing, inside "
                   f"the steps: they ran {fk['slowdown']:+.0%} slower while it wrote (a staging copy written by "
                   "a forked process, copy+safetensors-process, forks too, after its copy).")
    return out


def _memory_copy_Bps(profile: MachineProfile | dict | None) -> float | None:
    """The machine profile's memory copy rate on all cores (a staging copy's yardstick: torch copies with every
    core), bytes per second; None without a profile."""
    prof = as_profile(profile)
    return prof.memory_copy_Bps() if prof else None


def _copy_floor(copying: list[str], async_ok: dict, summ: dict, profile: dict | None) -> str:
    """Why a saver that copies the state before giving the loop back misses the blocking aim: its copy alone,
    at the rate it ran, is that share of its synchronous save."""
    mem = _memory_copy_Bps(profile)
    parts = []
    for n in copying:
        a = async_ok[n]
        base = summ.get(a["sync_of"])
        if not base or not base["n"]:
            continue
        copy_s, sync_s = _med(a["staging"]), _med(base["durable"])
        if a["update_wait"]:  # its copy runs after the call: what holds the loop is the call and the gate
            parts.append(f"{n} copies after its call ({a['state_bytes'] / copy_s / 1e9:.3g} GB/s), but its call "
                         f"took {_med(a['call']):.3g} s and the wait for the copy before the update "
                         f"{_med(a['update_wait']):.3g} s: {_med(a['blocking']) / sync_s:.0%} of {a['sync_of']}'s "
                         "save" + (f" (the copy takes longer than a step's device time, {a['device_s']:.3g} s, "
                                   "so the loop reaches its next update before it is done)"
                                   if a["device_s"] and copy_s > a["device_s"] else ""))
            continue
        parts.append(f"{n} copied the state at {a['state_bytes'] / copy_s / 1e9:.3g} GB/s and {a['sync_of']} wrote "
                     f"it durably at {base['state_bytes'] / sync_s / 1e9:.3g} GB/s: the copy alone is "
                     f"{copy_s / sync_s:.0%} of that save")
    if not parts:
        return ""
    return (f"- Why a staging copy misses the aim here: it needs a copy {1 / BLOCKING_AIM:.0f} times faster than the "
            "durable save" + (f" (this machine's memory copy on all cores: {mem / 1e9:.3g} GB/s, the run's machine "
                              "profile)" if mem else "") + "; " + "; ".join(parts) + ".")


def _host_line(name: str, s: dict) -> str:
    """The accelerator loop: what a step's host part took with no save and with ``name``'s save in flight, and
    how much of that was the training thread's own CPU (the rest it waited: for the interpreter lock, or a core)."""
    if s["host_inflight"] is None:
        return f"- No step's host part ran while {name}'s save was in flight."
    wait_idle = s["host_idle"] - (s["host_cpu_idle"] or 0.0)
    wait_in = s["host_inflight"] - (s["host_cpu_inflight"] or 0.0)
    return (f"- A step's host part (its in-place update, after the device wait) took {s['host_idle'] * 1e3:.3g} ms "
            f"with no save in flight and {s['host_inflight'] * 1e3:.3g} ms while {name} wrote; of it the training "
            f"thread waited (not on its own CPU: for the interpreter lock, or a core) {max(0.0, wait_idle) * 1e3:.3g} "
            f"ms and {max(0.0, wait_in) * 1e3:.3g} ms.")


def loop_setup(rows: list[dict], env: dict | None) -> str:
    """What each loop of the run was: the state checkpointed, the accelerator loop's device wait (and where its
    length comes from) and its measured host part, the CPU loop's step."""
    env = env or {}
    out = [f"Checkpointed state: {env.get('state', '?')}"
           + (f", {fmt_bytes(env['checkpoint_bytes'])} per checkpoint" if env.get("checkpoint_bytes") else "")
           + f"; {env.get('repeats', '?')} checkpoint(s) per saver in each loop."]
    for loop in loops(rows):
        mine = valid(in_loop(rows, loop))
        steps = [x for r in mine for x in r.get("steps_after_s") or []]
        if loop == "accelerator":
            host = _med([h for r in mine for h in r.get("host_after_s") or []])
            dev = env.get("device_step_s") or (mine[0].get("device_step_s") if mine else None)
            line = (f"- **The accelerator-bound loop**: a step is a wait of {dev:.3g} s (the device's forward and "
                    "backward; the training thread holds no core and no interpreter lock meanwhile), then the host's "
                    f"part: AdamW's update of {env.get('host_slice') or '?'} elements of every tensor of the state, "
                    f"in place. The wait's length is DLIO's LLaMA 7B step ({DLIO_STEP_S:g} s, `computation_time` "
                    "in its `llama_7b` workload; DLIO is the engine of MLPerf Storage) scaled by this model's "
                    "parameters; DLIO's step has no host part, so this loop's host part is only what its "
                    "checkpoints need to mean anything.") if dev is not None else "- **The accelerator-bound loop**."
            if host is not None and steps:
                line += (f" Measured with no save in flight: a step {_med(steps):.3g} s, its host part "
                         f"{host * 1e3:.3g} ms ({host / _med(steps):.0%} of the step).")
        else:
            line = ("- **The CPU-bound loop**: forward, backward and AdamW of the model on this machine's "
                    f"{env.get('n_cpus') or ''} cores, batches of {env.get('batch', '?')} x {env.get('seq_len', '?')} "
                    "tokens" + (f"; a step with no save in flight {_med(steps):.3g} s." if steps else "."))
        out.append(line)
    return "\n".join(out)


def interval_for(cost_s: float, idle_step_s: float, background_s: float, share: float) -> tuple[int, float]:
    """The shortest checkpoint interval, in steps and in seconds of training, at which checkpoints that cost
    ``cost_s`` each take at most ``share`` of a run's time (cost / (interval + cost) <= share), and no shorter than
    the save's background (a saver waits for its previous checkpoint before the next)."""
    t = max(cost_s * (1 - share) / share, background_s)
    steps = max(1, math.ceil(t / idle_step_s))
    return steps, steps * idle_step_s


def cost_table(rows: list[dict], loop: str | None = None, interval: int = INTERVAL_STEPS) -> pd.DataFrame:
    """Per saver: its cost per checkpoint (median), the effective training
    time ratio (training time over wall time) with a checkpoint every
    ``interval`` steps, and the shortest interval at which its checkpoints
    cost at most 1% and 5% of the run's time."""
    recs = []
    for name, s in per_saver(rows, loop).items():
        if not s["n"] or not s["idle_step"]:
            continue
        cost, bg = _med(s["cost"]), _med(s["background"])
        train = interval * s["idle_step"]
        at = cost + max(0.0, bg - train)  # a save still writing at the next checkpoint holds that one back
        rec = {"saver": name, "mode": s["mode"], "cost_s per checkpoint": f"{cost:.3g}",
               f"ETTR every {interval} steps": f"{train / (train + at):.2%}"}
        for share in COST_SHARES:
            steps, secs = interval_for(cost, s["idle_step"], bg, share)
            rec[f"interval for {share:.0%}: steps"] = steps
            rec[f"interval for {share:.0%}: training time"] = fmt_duration(secs)
        recs.append(rec)
    return pd.DataFrame(recs).set_index("saver") if recs else pd.DataFrame()


def fmt_duration(s: float) -> str:
    return f"{s:.3g} s" if s < 120 else f"{s / 60:.3g} min" if s < 7200 else f"{s / 3600:.3g} h"


def why_table(rows: list[dict], loop: str | None = None, profile: dict | None = None) -> pd.DataFrame:
    """Per asynchronous saver, what its blocking and the steps' slowdown come
    from: the staging copy's rate against this machine's memory copy on all
    cores (the run's machine profile, where there is one), the writer's CPU
    seconds, and the host part of a step with no save and in flight, with
    the training thread's waiting (wall less its own CPU: the interpreter
    lock, or a core)."""
    mem = _memory_copy_Bps(profile)
    recs = []
    for name, s in per_saver(rows, loop).items():
        if not s["n"] or s["mode"] == "sync":
            continue
        copy_s = _med(s["staging"]) if s["staging"] else None
        rate = s["state_bytes"] / copy_s if copy_s else None
        rec = {"saver": name, "blocked by": s["blocked_by"],
               "staging copy GB/s": f"{rate / 1e9:.3g}" if rate else "",
               "of the memory copy": f"{rate / mem:.0%}" if rate and mem else "",
               "writer CPU s": f"{_med(s['writer_cpu']):.3g}" if s["writer_cpu"] else "not its own",
               "slowdown": f"{s['slowdown']:+.0%}" if s["slowdown"] is not None else ""}
        if s["host_idle"] is not None and s["host_inflight"] is not None:
            rec |= {"host ms, no save": f"{s['host_idle'] * 1e3:.3g}",
                    "host ms, in flight": f"{s['host_inflight'] * 1e3:.3g}",
                    "of it waiting, in flight ms": f"{max(0.0, s['host_inflight'] - s['host_cpu_inflight']) * 1e3:.3g}"}
        recs.append(rec)
    return pd.DataFrame(recs).set_index("saver") if recs else pd.DataFrame()


def interval_chart(rows: list[dict], title: str = ""):
    """At a glance: per loop and saver, the shortest checkpoint interval (in
    training time) at which its checkpoints cost at most 1% and 5% of the
    run; shorter is better."""
    recs = []
    for loop in loops(rows):
        for name, s in per_saver(rows, loop).items():
            if not s["n"] or not s["idle_step"]:
                continue
            for share in COST_SHARES:
                _, secs = interval_for(_med(s["cost"]), s["idle_step"], _med(s["background"]), share)
                recs.append({"loop": LOOP_TITLES.get(loop, loop), "saver": name,
                             "cost at most": f"checkpoints cost at most {share:.0%} of the run", "seconds": secs})
    if not recs:
        return charts.empty("no verified checkpoint in this run")
    df = pd.DataFrame.from_records(recs)
    panels = list(dict.fromkeys(df["loop"]))
    n_savers = max(df[df["loop"] == p]["saver"].nunique() for p in panels)
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 0.4 * n_savers + 1.8), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        sub = df[df["loop"] == panel]
        order = list(sub.drop_duplicates("saver", keep="first").sort_values("seconds")["saver"])
        sns.barplot(sub, y="saver", x="seconds", hue="cost at most", order=order, ax=ax)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("a checkpoint every ... seconds of training (log scale)")
        ax.set_ylabel("")
        ax.set_title(panel)
        handles, labels = ax.get_legend_handles_labels()
        ax.get_legend().remove()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), frameon=False)  # one legend, below
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


def chart(rows: list[dict], title: str = "", loop: str | None = None):
    """Blocking time and time to durable per saver (medians, min-max bars),
    and the slowdown of the steps a save was in flight for."""
    rows = in_loop(rows, loop)
    recs = [{"saver": r["approach"], "what": what, "seconds": r[key]} for r in valid(rows)
            for key, what in (("blocking_s", "blocking"), ("durable_s", "until durable"))]
    if not recs:  # nothing measured (the model did not fit): a figure that says so
        return charts.empty("no verified checkpoint in this run")
    df = pd.DataFrame.from_records(recs)
    summ = per_saver(rows)
    order = list(dict.fromkeys(df["saver"]))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 0.45 * len(order) + 1.5), sharey=True,
                                 gridspec_kw={"width_ratios": [2, 1]})
    sns.barplot(df, y="saver", x="seconds", hue="what", order=order, estimator="median", errorbar=("pi", 100),
                ax=a1)
    a1.set_xlabel("seconds (median, min-max)")
    a1.set_ylabel("")
    vals = [v for v in df["seconds"] if v and v > 0]
    if vals and max(vals) / min(vals) > 20:
        a1.set_xscale("log")
        a1.set_xlabel(a1.get_xlabel() + ", log scale")
    a1.legend(title="", loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=2, frameon=False)
    slow = pd.DataFrame([{"saver": n, "slowdown %": 100 * (summ[n]["slowdown"] or 0.0)} for n in order
                         if summ[n]["n"]])
    sns.barplot(slow, y="saver", x="slowdown %", order=order, color="tab:gray", ax=a2)
    a2.set_xlabel("steps with a save in flight: slower by (%)")
    a2.axvline(0, color="black", linewidth=0.8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
