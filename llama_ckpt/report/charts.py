"""Figures drawn with seaborn from the tidy results table (one row per
measurement, :func:`frame`).

Every bar or point is the median of the repeats with an error bar from min to
max (seaborn's ``errorbar=("pi", 100)``); the run's disk reference is drawn as
a line where it applies. A time panel whose medians span more than
:data:`LOG_SPAN` is drawn on a log scale, so that a 0.3 s bar stays readable
beside a 40 s one. Sweeps put the knob's values in their order on a suitable
axis: concurrency on a log2 axis, chunk size as the bytes of one chunk on a
log axis; categorical knobs keep the sweep's order, and where the guide's pair
and the sweep use different chunkings the two are separate series.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from ..registry import APPROACHES, GUIDE
from ..results import is_valid
from ..units import binary_label
from .tables import knob_label, knob_value

LOG_SPAN = 20  # max/min of a panel's medians beyond which its axis is logarithmic
MEDIAN_MINMAX = dict(estimator="median", errorbar=("pi", 100))
_DTYPE_COLORS = {"float32": "tab:blue", "float16": "tab:orange", "bfloat16": "tab:red"}
_PANELS = (("save_s", "save time (s)"), ("load_s", "cold load time (s)"), ("size_GB", "size on disk (GB)"))

sns.set_theme(style="whitegrid", context="notebook", font_scale=0.8)


def frame(rows: list[dict]) -> pd.DataFrame:
    """The valid rows as a tidy table: one line per measurement."""
    recs = [{"approach": r["approach"], "dtype": r["stored_dtype"], "repeat": r.get("repeat"),
             "save_s": r["save_s"], "load_s": r["load_s"], "size_GB": r["bytes_on_disk"] / 1e9,
             "files": r["n_files"], "knobs": r.get("knobs") or {}} for r in rows if is_valid(r)]
    return pd.DataFrame.from_records(recs)


def empty(message: str):
    """A small figure that says why there is nothing to draw."""
    fig, ax = plt.subplots(figsize=(8, 1.2))
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center")
    return fig


def _log_if_spread(ax, values, axis: str = "y") -> None:
    v = [x for x in values if x and x > 0]
    if v and max(v) / min(v) > LOG_SPAN:
        if axis == "y":
            ax.set_yscale("log")
            ax.set_ylabel(ax.get_ylabel() + ", log scale")
        else:
            ax.set_xscale("log")
            ax.set_xlabel(ax.get_xlabel() + ", log scale")


# above this many approaches the bars lie horizontal, one labelled row each
HORIZONTAL_OVER = 12


def comparison(rows: list[dict], env: dict | None = None, title: str = "", order: list[str] | None = None,
               labels: dict[str, str] | None = None):
    """Save time, cold load time and size on disk in three panels, one bar
    per approach (colour: the stored dtype); horizontal bars where there are
    many approaches."""
    df = frame(rows)
    if df.empty:
        return empty("no valid measurement to chart in this run")
    names = [n for n in (order or list(dict.fromkeys(df["approach"]))) if n in set(df["approach"])]
    flat = len(names) > HORIZONTAL_OVER
    if flat:
        fig, axes = plt.subplots(1, 3, figsize=(15, 1.6 + 0.3 * len(names)), sharey=True)
    else:
        fig, axes = plt.subplots(1, 3, figsize=(max(11, 0.55 * len(names) * 3), 4.4))
    palette = {n: _DTYPE_COLORS.get(df.loc[df["approach"] == n, "dtype"].iloc[0], "tab:gray") for n in names}
    ref = {"save_s": (env or {}).get("reference_write_s"), "load_s": (env or {}).get("reference_read_s"),
           "size_GB": ((env or {}).get("reference_bytes") or 0) / 1e9 or None}
    ticks = [(labels or {}).get(n, n) for n in names]
    for ax, (key, label) in zip(axes, _PANELS):
        xy = dict(x=key, y="approach") if flat else dict(x="approach", y=key)
        sns.barplot(data=df, **xy, hue="approach", order=names, hue_order=names, palette=palette,
                    legend=False, ax=ax, capsize=0.2, err_kws={"linewidth": 1}, **MEDIAN_MINMAX)
        meds = df.groupby("approach")[key].median()
        if flat:
            ax.set_xlabel(label)
            ax.set_ylabel("")
            ax.set_yticks(range(len(names)))
            ax.set_yticklabels(ticks)
        else:
            ax.set_ylabel(label)
            ax.set_xlabel("")
            ax.set_xticks(range(len(names)))
            ax.set_xticklabels(ticks, rotation=35, ha="right")
        _log_if_spread(ax, list(meds) + ([ref[key]] if ref[key] else []), "x" if flat else "y")
        if ref[key]:
            what = "float32 model size" if key == "size_GB" else "disk reference (same bytes, the disk's best)"
            (ax.axvline if flat else ax.axhline)(ref[key], color="gray", ls="--", lw=1, label=what)
            ax.legend(fontsize=7, loc="lower right" if flat else "upper left")
    dtypes = ", ".join(f"{c.removeprefix('tab:')}: {d}" for d, c in _DTYPE_COLORS.items() if d in set(df["dtype"]))
    fig.suptitle((title + "  " if title else "") + f"(median of repeats, bars min-max; {dtypes})", fontsize=10)
    fig.tight_layout()
    return fig


def _sweep_frame(rows: list[dict], axis: str, labels: dict[str, str]) -> tuple[pd.DataFrame, str]:
    """The tidy table with an ``x`` column for the knob (numeric where the
    knob is) and a ``series`` column telling different chunkings apart."""
    df = frame(rows)
    if axis in ("chunk_size", "concurrency"):
        df["x"] = [knob_value(k, axis) for k in df["knobs"]]
        finite = df.loc[df["x"] != float("inf"), "x"]
        df.loc[df["x"] == float("inf"), "x"] = 4 * (finite.max() if len(finite) else 1.0)  # whole tensors: right end
        kind = "bytes" if axis == "chunk_size" else "log2"
    else:
        df["x"] = [knob_label(k, axis) for k in df["knobs"]]
        kind = "category"
    chunking = [knob_label(k, "chunk_size") for k in df["knobs"]]
    df["series"] = chunking if axis != "chunk_size" and len(set(chunking)) > 1 else "all"
    if set(df["series"]) != {"all"}:  # the guide's pair (all registered with the guide's tag) or a sweep
        guide = {c for c in set(df["series"]) if all(
            a in APPROACHES and GUIDE in APPROACHES[a].tags for a in df.loc[df["series"] == c, "approach"])}
        df["series"] = [f"{c} chunks" + (" (the guide's pair)" if c in guide else " (sweep)") for c in df["series"]]
    return df, kind


def sweep(rows: list[dict], order: list[str], labels: dict[str, str], xlabel: str, title: str = ""):
    """A knob's sweep: save time, cold load time, size on disk and files,
    along the knob's values in their order."""
    df, kind = _sweep_frame(rows, xlabel, labels)
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.8))
    multi = df["series"].nunique() > 1
    cats = list(dict.fromkeys(df.set_index("approach").loc[[a for a in order if a in set(df["approach"])], "x"]
                              )) if kind == "category" else None
    for ax, (key, label) in zip(axes, _PANELS + (("files", "files (log scale)"),)):
        kw = dict(data=df, y=key, ax=ax, hue="series" if multi else None, **MEDIAN_MINMAX)
        if kind == "category":
            sns.pointplot(x="x", order=cats, dodge=0.25 if multi else False, capsize=0.15,
                          err_kws={"linewidth": 1}, **kw)
        else:
            sns.lineplot(x="x", marker="o", err_style="bars", err_kws={"capsize": 3}, **kw)
            ax.set_xscale("log", base=2 if kind == "log2" else 10)
            xs = sorted(df["x"].dropna().unique())
            ax.set_xticks(xs)
            ax.set_xticklabels([_tick(x, kind, df) for x in xs], rotation=30, ha="right")
            ax.minorticks_off()
        if key == "files":
            ax.set_yscale("log")
        else:
            _log_if_spread(ax, df.groupby("x")[key].median())
        ax.set_ylabel(label if key == "files" or ax.get_yscale() == "linear" else label + ", log scale")
        ax.set_xlabel({"bytes": "bytes of one chunk (log scale)", "log2": "concurrency (log2 scale)"}.get(
            kind, xlabel))
        if multi and ax is not axes[0] and ax.get_legend():
            ax.get_legend().remove()
    if multi:
        axes[0].legend(fontsize=7, title=None)
    fig.suptitle((title + "  " if title else "") + "(median of repeats, bars min-max)", fontsize=10)
    fig.tight_layout()
    return fig


def _tick(x: float, kind: str, df: pd.DataFrame) -> str:
    if kind == "log2":
        return f"{x:g}"
    sub = df[df["x"] == x]
    rule = sub["knobs"].iloc[0].get("chunk_rule") if len(sub) else None
    size = binary_label(x)
    if rule == "per_dim":
        n = sub["knobs"].iloc[0]["chunk_size"]
        return f"{n}x{n} ({size})"
    if rule == "whole":
        return "whole tensor"
    return size


def by_kind(frame_, value: str, ylabel: str, title: str = "", log: bool = False):
    """A grouped bar chart of a per-tensor-kind metric (a DataFrame with
    columns approach, kind and ``value``)."""
    fig, ax = plt.subplots(figsize=(10, 4))
    sns.barplot(data=frame_, x="kind", y=value, hue="approach", estimator="median", errorbar=None, ax=ax)
    if log:
        ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ax.set_xlabel("tensor kind")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def cloud(table, title: str = ""):
    """Save and load time on S3 by approach, one bar per added delay
    (medians; ``tables.cloud_table``), and the requests each save made."""
    df = table.reset_index()
    df["RTT added"] = [f"+{d:g} ms" for d in df["RTT_added_ms"]]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.4))
    for ax, col, label in zip(axes, ("save_s", "load_s", "requests_save"),
                              ("save time (s), log scale", "cold load time (s), log scale",
                               "requests per save, log scale")):
        sns.barplot(data=df, x="approach", y=col, hue="RTT added", ax=ax, errorbar=None)
        ax.set_yscale("log")
        ax.set_ylabel(label)
        ax.set_xlabel("")
        ax.tick_params(axis="x", rotation=30)
        for t in ax.get_xticklabels():
            t.set_ha("right")
        ax.legend(fontsize=7)
    fig.suptitle((title + "  " if title else "") + "(median of repeats)", fontsize=10)
    fig.tight_layout()
    return fig


def scaling(table, title: str = ""):
    """Checkpoint time and aggregate save and load throughput against the
    number of ranks (same ranks saving and loading), one line per sharded
    approach; a job on several nodes is its own marker (``nodes``)."""
    df = table.reset_index()
    df = df[df["ranks_save"] == df["ranks_load"]].copy()
    df["nodes"] = df["nodes"].map(lambda n: f"{n} node" + ("s" if n > 1 else ""))
    style = "nodes" if df["nodes"].nunique() > 1 else None
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    panels = (("save_s", "checkpoint time s (slowest rank + commit)"), ("save_MB/s", "aggregate save MB/s"),
              ("load_MB/s", "aggregate cold load MB/s"))
    for ax, (col, label) in zip(axes, panels):
        sns.lineplot(data=df, x="ranks_save", y=col, hue="approach", style=style, markers=True, dashes=False,
                     marker=None if style else "o", ax=ax, errorbar=None, markersize=8)
        ax.set_xlabel("ranks")
        ax.set_ylabel(label)
        ax.set_xticks(sorted(df["ranks_save"].unique()))
        ax.set_ylim(bottom=0)
        if ax is axes[-1]:  # one legend, beside the panels
            ax.legend(fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
        else:
            ax.get_legend().remove()
    fig.suptitle((title + "  " if title else "") + "(median of repeats)", fontsize=10)
    fig.tight_layout()
    return fig


_VERDICT_COLORS = {"holds": "tab:green", "does not hold": "tab:red", "inconclusive": "tab:gray"}


def intervals(recs: list[dict], title: str = ""):
    """Each claim's comparisons: the ratio of medians (a point) with its
    bootstrap interval (a bar), coloured by its verdict, against the
    thresholds it is judged by (ticks: 1, a claimed size's weakest ratio, a
    band's edges); log scale, one line per comparison."""
    if not recs:
        return empty("no comparison could be made: an approach of every claim is missing")
    df = pd.DataFrame(recs)
    df["label"] = [f"{r.claim}{' (' + r.weights + ')' if r.weights else ''} {r.comparison}" for r in df.itertuples()]
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(df) + 1.2))
    y = range(len(df))
    for i, r in zip(y, df.itertuples()):
        color = _VERDICT_COLORS.get(r.verdict, "black")
        ax.plot([r.lo, r.hi], [i, i], color=color, lw=3, solid_capstyle="butt")
        ax.plot([r.ratio], [i], "o", color=color, ms=4)
        for t in r.thresholds:
            ax.plot([t, t], [i - 0.4, i + 0.4], color="black", lw=1)
    ax.axvline(1.0, color="black", lw=0.5, ls=":")
    ax.set_xscale("log")
    ax.set_yticks(list(y), df["label"])
    ax.invert_yaxis()
    ax.set_xlabel("ratio of medians a / b (log scale), with its bootstrap interval; ticks: the thresholds")
    handles = [plt.Line2D([], [], color=c, lw=3, label=v) for v, c in _VERDICT_COLORS.items()]
    ax.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False)
    ax.set_title(title, pad=24)
    fig.tight_layout()
    return fig
