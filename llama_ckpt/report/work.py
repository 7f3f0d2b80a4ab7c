"""The cost cards of a run as tables, where each approach's time goes as a stacked bar, and a check of the work
model in another state (:mod:`llama_ckpt.results.work`; its form: docs/decisions.md#work-model-2)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from ..errors import UserError
from ..registry import SAVES_AS
from ..results import is_valid, projection, summarize, work
from ..results.profile import MachineProfile
from ..study.claims import sample_sets
from .charts import empty
from .tables import vs_next

CARDS_FILE = "cost-cards.json"  # in the run's directory
UNEXPLAINED = "not explained"  # the measured time beyond the model's parts


def keep_cards(run_dir: Path, rows: list[dict], profile: MachineProfile | None, run_id: str | None) -> list:
    """The cards of ``rows`` on the run's machine, written to the run's directory (:data:`CARDS_FILE`, beside
    what an earlier phase kept there: one file per run, the latest phase's cards of an approach win)."""
    if profile is None:
        return []
    got = work.cards(rows, profile)
    path = Path(run_dir) / CARDS_FILE
    if path.is_file():
        try:
            before, _ = work.read_cards([path])
        except UserError:  # cards of an older form of the model (a run resumed by newer code): replaced
            before = []
        mine = {(c.approach, c.step) for c in got}
        got = [c for c in before if (c.approach, c.step) not in mine] + got
    work.write_cards(path, got, profile, run_id)
    return [c for c in got if c.approach in {r["approach"] for r in rows}]


def card_table(cards: list) -> pd.DataFrame:
    """One line per approach and step: its work per GB of payload, the cores its CPU work used (``parallel``: its
    CPU seconds over its busiest thread's), the share of the smaller of its CPU work and its disk time that ran
    under the other (``overlap``), the memory it held above its start at its peak (``held``: a save's staging and
    serialisation buffers; a load's result, 1.0, and its buffers), the memory in transparent huge pages it left
    (a load whose format asks for them: its fresh memory faulted once per huge page), CPU seconds over wall time
    as measured, and the
    streams the format declares; "-"
    where a figure does not apply (a load's files and fsyncs) or was not counted (an fsync policy not stated)."""
    recs = [{"approach": c.approach, "step": c.step, "CPU s/GB": c.cpu_per_B * 1e9,
             "own CPU s/GB": c.own_cpu_per_B * 1e9, "call GB/GB": c.call_per_B, "fresh memory GB/GB": c.fault_per_B,
             "storage GB/GB": c.storage_per_B, "held GB/GB": c.held_per_B, "huge pages GB/GB": c.huge_per_B,
             "files/GB": None if c.files_per_B is None else c.files_per_B * 1e9,
             "fsyncs/GB": None if c.fsyncs_per_B is None else c.fsyncs_per_B * 1e9,
             "CPU/wall": c.cpu_over_wall, "parallel": c.parallel, "overlap": c.overlap, "streams": c.streams,
             "rows": c.n} for c in cards]
    if not recs:
        return pd.DataFrame()
    t = pd.DataFrame.from_records(recs).set_index(["approach", "step"]).round(3)
    return t.astype(object).where(t.notna(), "-")


def parts_table(cards: list, profile: MachineProfile | None, step: str) -> pd.DataFrame:
    """Per approach, ``step``'s measured median split into the model's parts (seconds, at the payload the card
    was measured on) and what they do not explain (the measured time beyond their sum, where there is any)."""
    recs = []
    for c in cards:
        p = work.predict(c, profile, c.payload_bytes) if profile and c.step == step else None
        if p is None:
            continue
        measured = c.time_per_B * c.payload_bytes
        recs.append({"approach": c.approach, **{k: p.parts.get(k, 0.0) for k in work.PARTS},
                     UNEXPLAINED: max(0.0, measured - p.seconds), "measured s": measured, "model s": p.seconds})
    return pd.DataFrame.from_records(recs).set_index("approach") if recs else pd.DataFrame()


def where_time_goes(cards: list, profile: MachineProfile | None, title: str = ""):
    """Per approach a horizontal bar of its measured save and load time, stacked by the model's parts."""
    tables = {step: parts_table(cards, profile, step) for step in work.STEPS}
    if all(t.empty for t in tables.values()):
        return empty("no cost card in this run (no machine profile, or no row counted its work)")
    n = max(len(t) for t in tables.values())
    fig, axes = plt.subplots(1, 2, figsize=(14, 1.4 + 0.32 * n))
    for ax, (step, t) in zip(axes, tables.items()):
        if t.empty:
            ax.axis("off")
            continue
        t = t.sort_values("measured s")
        t[[*work.PARTS, UNEXPLAINED]].plot.barh(stacked=True, ax=ax, legend=False, width=0.75,
                                                 colormap="tab10")
        ax.set_xlabel(f"{step} time (s): the model's parts")
        ax.set_ylabel("")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=7, frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def check_table(cards: list, rows: list[dict], profile: MachineProfile | None) -> pd.DataFrame:
    """The cards' predictions for another state's rows (measured on ``profile``'s machine) beside their
    measured medians: measured, predicted, error (measured over predicted, less 1), the binding part; and the
    same prediction with the disk's rate of the references beside the state's rounds (``predicted_rounds_s``,
    ``error_rounds``; left out where the state has none)."""
    got = work.check(cards, rows, profile) if profile else []
    df = pd.DataFrame.from_records(got)
    if df.empty:
        return df
    df["error"] = pd.to_numeric(df["error"])  # None (no prediction: a rate missing) as NaN, never "within"
    df["within"] = df["error"].abs() <= work.TOLERANCE
    df["error_rounds"] = pd.to_numeric(df["error_rounds"])
    if df["predicted_rounds_s"].isna().all():
        df = df.drop(columns=["predicted_rounds_s", "error_rounds"])
    else:
        df["within_rounds"] = df["error_rounds"].abs() <= work.TOLERANCE
    first = ["approach", "step", "n", "measured_s", "predicted_s", "error", "within", "binding"]
    return df[first + [c for c in df.columns if c not in first]].set_index(["approach", "step"])


def check_line(table: pd.DataFrame, state: str) -> str:
    """How many of a state's predictions hold (within the tolerance), save and load apart."""
    if table.empty:
        return f"- **{state}**: not measured."
    parts = []
    for step in work.STEPS:
        t = table[table.index.get_level_values("step") == step]
        if len(t):
            misses = ", ".join(f"`{a}` {e:+.0%}" for (a, _s), e in t.loc[~t["within"], "error"].items())
            parts.append(f"{step} {int(t['within'].sum())} of {len(t)} within {work.TOLERANCE:.0%}"
                         + (f" (off: {misses})" if misses else "")
                         + (f"; with the rounds' disk {int(t['within_rounds'].sum())} of "
                            f"{int(t['error_rounds'].notna().sum())}" if "within_rounds" in t else ""))
    return f"- **{state}**: " + "; ".join(parts) + "."


def states_findings(cards: list, states: dict) -> tuple[str, dict[str, pd.DataFrame]]:
    """Per measured state (``PhaseResult.states``): its check table and one line of how many hold; the lines of
    the states not measured say why."""
    lines, tables = [], {}
    for name, st in states.items():
        if st.why_not or st.profile is None:
            lines.append(f"- **{name}**: not measured here: {st.why_not or 'no machine profile in its results'}.")
            continue
        tables[name] = check_table(cards, st.rows, st.profile)
        lines.append(check_line(tables[name], name))
    return "\n".join(lines), tables


def ranking(rows: list[dict], top: int = 5) -> pd.DataFrame:
    """The fastest save and load among ``rows`` (one state) by median, each against the next-ranked by the
    suite's rule (the claims' bootstrap interval of the ratio of medians: told apart where it lies below 1, on
    at least ``MIN_REPEATS`` repeats each). Saves count each distinct save once (``registry.SAVES_AS``)."""
    valid = [r for r in rows if is_valid(r) and not r.get("world_size")]
    summ, samples = summarize(valid), sample_sets(valid)
    recs = []
    for step in work.STEPS:
        key = f"{step}_s"
        ranked = sorted((n for n in summ if step == "load" or n not in SAVES_AS), key=lambda n: summ[n][key].median)
        for rank, n in enumerate(ranked[:top], 1):
            recs.append({"step": step, "rank": rank, "approach": n, "dtype": summ[n]["stored_dtype"],
                         "median_s": summ[n][key].median,
                         "repeats": summ[n]["n"],
                         "vs_next": vs_next(samples, n, ranked[rank] if rank < len(ranked) else None, key)})
    return pd.DataFrame.from_records(recs).set_index(["step", "rank"]) if recs else pd.DataFrame()


def projection_table(cards: list, profile: MachineProfile | None, workloads: tuple[str, ...]) -> pd.DataFrame:
    """Each card's step projected to each of ``workloads`` (MLPerf Storage's, docs/decisions.md#projection) with
    ``profile`` as one node: the slowest rank's seconds, the checkpoint's GiB/s over them (MLPerf's unit) and the
    binding part, one column group per workload; "-" where the profile lacks a rate the model needs."""
    if profile is None or not cards:
        return pd.DataFrame()
    recs: dict[tuple[str, str], dict] = {}
    for name in workloads:
        w = projection.WORKLOADS[name]
        for p in projection.project(cards, profile, w):
            rec = recs.setdefault((p.approach, p.step), {})
            rec[(name, "slowest rank s")] = p.seconds
            rec[(name, "checkpoint GiB/s")] = p.GiBps
            rec[(name, "binding")] = p.rank.binding if p.rank else None
    t = pd.DataFrame.from_dict(recs, orient="index")
    t.index.names = ["approach", "step"]
    t.columns = pd.MultiIndex.from_tuples(t.columns)
    t = t.round(3)
    return t.astype(object).where(t.notna(), "-")


def sharded_check(rows: list[dict], profile: MachineProfile | None) -> pd.DataFrame:
    """06's sharded saves and loads on several ranks of this machine projected from the same approach's one-rank
    rows (their cards) with the projection's sharing of one node (docs/decisions.md#projection), beside the
    measured median: per approach, ranks and step, ``measured_s``, ``predicted_s``, ``error`` (measured over
    predicted, less 1), ``within`` (25%) and the binding part. Spawned ranks only (torchrun's are one row)."""
    spawned = [r for r in rows if is_valid(r) and r.get("launcher") == "spawn" and r.get("world_size")]
    if profile is None or not spawned:
        return pd.DataFrame()
    recs = []
    for name in sorted({r["approach"] for r in spawned}):
        mine = [r for r in spawned if r["approach"] == name]
        one = [{**r, "world_size": None} for r in mine if r["world_size"] == 1 and r.get("load_world_size", 1) == 1]
        cards = work.cards(one, profile)
        for ranks in sorted({r["world_size"] for r in mine if r["world_size"] > 1}):
            at = [r for r in mine if r["world_size"] == ranks and r.get("load_world_size", ranks) == ranks]
            w = projection.weights_on(f"{name}:{ranks}", ranks)
            for p in projection.project(cards, profile, w, lambda c: c.payload_bytes):
                got = [r[f"{p.step}_s"] for r in at if r.get(f"{p.step}_s")]
                if not got or p.rank is None:
                    continue
                measured = float(pd.Series(got).median())
                err = work.error(measured, p.seconds)
                recs.append({"approach": name, "ranks": ranks, "step": p.step, "n": len(got),
                             "measured_s": measured, "predicted_s": p.seconds, "error": err,
                             "within": abs(err) <= work.TOLERANCE, "binding": p.rank.binding})
    return pd.DataFrame.from_records(recs).set_index(["approach", "ranks", "step"]).round(3) if recs else pd.DataFrame()
