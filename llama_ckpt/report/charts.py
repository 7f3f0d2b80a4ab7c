"""Figures built from the tidy results table (one row per measurement).

Every bar is the median of the repeats with an error bar from min to max;
the run's disk reference is drawn as a line where it applies: the time the
disk took to write / read the float32 model's bytes sequentially, and the
float32 model's size. In a notebook the figures show inline; elsewhere
matplotlib falls back to a file-only backend when there is no display.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

from ..results import summarize

_PANELS = (("save_s", "save time (s)"), ("load_s", "cold load time (s)"), ("bytes_on_disk", "size on disk (GB)"))


def _bars(ax, names, stats, scale=1.0, colors=None):
    med = [stats[n].median / scale for n in names]
    lo = [max(0.0, (stats[n].median - stats[n].lo) / scale) for n in names]
    hi = [max(0.0, (stats[n].hi - stats[n].median) / scale) for n in names]
    ax.bar(range(len(names)), med, yerr=[lo, hi], capsize=3, color=colors)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=35, ha="right", fontsize=8)


def comparison(rows: list[dict], env: dict | None = None, title: str = "", order: list[str] | None = None,
               labels: dict[str, str] | None = None):
    """Save time, load time and size in three panels."""
    summ = summarize(rows)
    names = [n for n in (order or list(summ)) if n in summ]
    fig, axes = plt.subplots(1, 3, figsize=(max(10, 1.1 * len(names) * 1.6), 4.2))
    colors = ["tab:orange" if summ[n]["stored_dtype"] != "float32" else "tab:blue" for n in names]
    ref = {
        "save_s": (env or {}).get("reference_write_s"),
        "load_s": (env or {}).get("reference_read_s"),
        "bytes_on_disk": (env or {}).get("reference_bytes"),
    }
    for ax, (key, label) in zip(axes, _PANELS):
        scale = 1e9 if key == "bytes_on_disk" else 1.0
        _bars(ax, names, {n: summ[n][key] for n in names}, scale, colors)
        if labels:
            ax.set_xticklabels([labels.get(n, n) for n in names], rotation=35, ha="right", fontsize=8)
        if ref[key]:
            what = "float32 model size" if key == "bytes_on_disk" else "disk reference (same bytes, sequential)"
            ax.axhline(ref[key] / scale, color="gray", ls="--", lw=1, label=what)
            ax.legend(fontsize=7, loc="upper right")
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle((title + "  " if title else "") + "(median of repeats, bars min-max; orange: 16-bit dtype)",
                 fontsize=10)
    fig.tight_layout()
    return fig


def sweep(rows: list[dict], order: list[str], labels: dict[str, str], xlabel: str, title: str = ""):
    """A knob's sweep: save and load time, and size and file count, along the
    knob's values (in the phase's order)."""
    summ = summarize(rows)
    names = [n for n in order if n in summ]
    xs = range(len(names))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label, style in (("save_s", "save", "o-"), ("load_s", "cold load", "s-")):
        med = [summ[n][key].median for n in names]
        a1.errorbar(xs, med, yerr=[[summ[n][key].median - summ[n][key].lo for n in names],
                                   [summ[n][key].hi - summ[n][key].median for n in names]],
                    fmt=style, capsize=3, label=label)
    a1.set_ylabel("seconds")
    a1.legend()
    a2.bar(xs, [summ[n]["bytes_on_disk"].median / 1e9 for n in names], color="tab:gray", alpha=0.7)
    a2.set_ylabel("size on disk (GB)")
    a3 = a2.twinx()
    a3.plot(xs, [summ[n]["n_files"].median for n in names], "k^-", label="files")
    a3.set_yscale("log")
    a3.set_ylabel("files (log)")
    for ax in (a1, a2):
        ax.set_xticks(list(xs))
        ax.set_xticklabels([labels.get(n, n) for n in names], rotation=30, ha="right", fontsize=8)
        ax.set_xlabel(xlabel)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def by_kind(frame, value: str, ylabel: str, title: str = "", log: bool = False):
    """A grouped bar chart of a per-tensor-kind metric (a DataFrame with
    columns approach, kind and ``value``)."""
    pivot = frame.pivot_table(index="kind", columns="approach", values=value, aggfunc="median", sort=False)
    ax = pivot.plot.bar(figsize=(10, 4), logy=log, rot=0)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    ax.figure.tight_layout()
    return ax.figure


def save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def cloud(table, title: str = ""):
    """Save and load time on S3 by approach, one group of bars per added delay
    (medians; ``report.cloud_table``), and the requests each save made."""
    import numpy as np

    delays = sorted({d for d, _ in table.index})
    names = list(dict.fromkeys(n for _, n in table.index))
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
    width = 0.8 / max(1, len(delays))
    for ax, col, label in zip(axes, ("save_s", "load_s", "requests_save"),
                              ("save time (s)", "cold load time (s)", "requests per save")):
        for i, d in enumerate(delays):
            vals = [table.loc[(d, n), col] if (d, n) in table.index else np.nan for n in names]
            ax.bar(np.arange(len(names)) + i * width, vals, width, label=f"+{d:g} ms RTT")
        ax.set_xticks(np.arange(len(names)) + width * (len(delays) - 1) / 2)
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(label)
        ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle((title + "  " if title else "") + "(median of repeats, log scale)", fontsize=10)
    fig.tight_layout()
    return fig


def scaling(table, title: str = ""):
    """Aggregate save and load throughput against the number of ranks (same
    ranks saving and loading), one line per sharded approach."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, col, label in zip(axes, ("save_MB/s", "load_MB/s"), ("aggregate save MB/s", "aggregate cold load MB/s")):
        for name in dict.fromkeys(a for a, _, _ in table.index):
            sub = table.loc[name].reset_index()
            sub = sub[sub["ranks_save"] == sub["ranks_load"]].sort_values("ranks_save")
            ax.plot(sub["ranks_save"], sub[col], marker="o", label=name)
        ax.set_xlabel("ranks")
        ax.set_ylabel(label)
        ax.set_xticks(sorted({w for _, w, _ in table.index}))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle((title + "  " if title else "") + "(median of repeats)", fontsize=10)
    fig.tight_layout()
    return fig
