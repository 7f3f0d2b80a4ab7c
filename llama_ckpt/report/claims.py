"""The user's guide's claims, judged against one run's measurements.

A claim compares approaches on medians of the repeats. Its verdict is
computed, never typed in:

- ``holds``: the claimed direction is clear (the repeats' ranges do not
  overlap) and, where the guide gives a size ("about 90% faster", i.e. 0.1x
  the time), the measured ratio is at least that strong within a factor of
  1.5 (0.15x or less; a much stronger effect still holds, and says so);
- ``does not hold``: the direction is clearly the other way, or the effect is
  weaker than claimed by more than that factor, or a bound ("small") is
  exceeded;
- ``inconclusive``: the ranges overlap, or an approach was not measured.

The guide's own figures are kept as a citation (:data:`GUIDE_FIGURES`) and
shown beside ours as relative changes: absolute times depend on the machine.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..formats.tensorstore import TensorStoreZarr
from ..registry import APPROACHES, names
from ..results import Stat, change, fmt_bytes, is_valid, summarize

HOLDS, FAILS, UNSURE = "holds", "does not hold", "inconclusive"
RATIO_TOLERANCE = 1.5  # "about" a claimed ratio: within this factor of it

# The user's guide's expected results on its machine (seconds, GB): a citation.
GUIDE_FIGURES = {
    "save_s": {"pytorch": 9, "ts+chunks": 14, "ts+concurrency": 46, "t5x": 64, "tensorstore": 150,
               "ts+float16": 150, "ts+compression": 161, "ts+ocdbt": 140},
    "load_s": {"pytorch": 4, "ts+chunks": 8.5, "tensorstore": 11, "ts+concurrency": 11.3, "ts+float16": 11,
               "ts+ocdbt": 10.5, "t5x": 13.8, "ts+compression": 15.1},
    "size_gb": {"ts+float16": 3.0, "pytorch": 3.0, "ts+compression": 3.1, "tensorstore": 6.0,
                "ts+concurrency": 6.0, "t5x": 6.1, "ts+chunks": 6.1, "ts+ocdbt": 5.8},
}
_METRIC = {"save": "save_s", "load": "load_s", "size": "bytes_on_disk"}
_GUIDE_METRIC = {"save": "save_s", "load": "load_s", "size": "size_gb"}


@dataclass
class Check:
    """One comparison: ``a`` is lower than ``b`` on ``metric`` (by about
    ``pct`` percent if given), or ``a`` is higher when ``lower`` is False."""

    a: str
    b: str
    metric: str  # save | load | size
    lower: bool = True
    pct: float | None = None  # claimed size of the change, percent (positive)
    max_pct: float | None = None  # the change must be at most this (for "small")

    def judge(self, summ: dict) -> tuple[str, str]:
        sa, sb = summ.get(self.a), summ.get(self.b)
        if not sa or not sb:
            missing = self.a if not sa else self.b
            return UNSURE, f"{missing} not measured"
        x: Stat = sa[_METRIC[self.metric]]
        y: Stat = sb[_METRIC[self.metric]]
        pct = change(x.median, y.median)
        text = f"{self.metric} {self.a} {_fmt(x, self.metric)} vs {self.b} {_fmt(y, self.metric)} ({pct:+.0f}%)"
        if self.lower:
            clear_yes, clear_no = x.hi < y.lo, x.lo > y.hi
        else:
            clear_yes, clear_no = x.lo > y.hi, x.hi < y.lo
        if clear_no:
            return FAILS, text
        if not clear_yes:
            return UNSURE, text + ", ranges overlap"
        if self.pct is not None:
            claimed = 1 - self.pct / 100 if self.lower else 1 + self.pct / 100  # claimed ratio a/b
            ratio = x.median / y.median
            weaker = ratio > claimed * RATIO_TOLERANCE if self.lower else ratio < claimed / RATIO_TOLERANCE
            stronger = ratio < claimed / RATIO_TOLERANCE if self.lower else ratio > claimed * RATIO_TOLERANCE
            if weaker:
                return FAILS, text + f": {ratio:.2g}x, not about {claimed:.2g}x"
            if stronger:
                text += f": {ratio:.2g}x, a stronger effect than the claimed {claimed:.2g}x"
        if self.max_pct is not None and abs(pct) > self.max_pct:
            return FAILS, text + f", more than {self.max_pct:.0f}%"
        return HOLDS, text


@dataclass
class Same:
    """``a`` and ``b`` are within ``tol`` percent of each other on ``metric``."""

    a: str
    b: str
    metric: str
    tol: float = 15.0

    def judge(self, summ: dict) -> tuple[str, str]:
        sa, sb = summ.get(self.a), summ.get(self.b)
        if not sa or not sb:
            return UNSURE, f"{self.a if not sa else self.b} not measured"
        x, y = sa[_METRIC[self.metric]], sb[_METRIC[self.metric]]
        pct = change(x.median, y.median)
        text = f"{self.metric} {self.a} {_fmt(x, self.metric)} vs {self.b} {_fmt(y, self.metric)} ({pct:+.0f}%)"
        if abs(pct) <= self.tol:
            return HOLDS, text + f", within {self.tol:.0f}%"
        overlap = not (x.hi < y.lo or x.lo > y.hi)
        return (UNSURE, text + ", ranges overlap") if overlap else (FAILS, text + f", beyond {self.tol:.0f}%")


@dataclass
class Best:
    """``a`` has the lowest ``metric`` among ``among`` (all measured ones if None)."""

    a: str
    metric: str
    among: tuple[str, ...] | None = None

    def judge(self, summ: dict) -> tuple[str, str]:
        pool = {n: s for n, s in summ.items() if self.among is None or n in self.among}
        missing = [n for n in (self.among or ()) if n not in pool]
        if self.a not in pool or len(pool) < 2 or missing:
            return UNSURE, f"{self.metric}: not measured in these rows: {', '.join(missing or [self.a])}"
        key = _METRIC[self.metric]
        ranked = sorted(pool, key=lambda n: pool[n][key].median)
        mine = pool[self.a][key]
        if ranked[0] != self.a:
            w = ranked[0]
            return FAILS, f"{self.metric}: {w} {_fmt(pool[w][key], self.metric)} beats {self.a} {_fmt(mine, self.metric)}"
        second = ranked[1]
        text = (f"{self.metric}: {self.a} {_fmt(mine, self.metric)}, next {second} "
                f"{_fmt(pool[second][key], self.metric)} ({change(mine.median, pool[second][key].median):+.0f}%)")
        if mine.hi >= pool[second][key].lo:
            return UNSURE, text + ", ranges overlap"
        return HOLDS, text


def _fmt(st: Stat, metric: str) -> str:
    return fmt_bytes(st.median) if metric == "size" else f"{st.median:.3g} s"


@dataclass
class Claim:
    number: int
    text: str
    checks: list
    dtypes_differ: tuple[str, ...] = ()  # approaches here that store another dtype than the baseline

    def judge(self, summ: dict) -> dict:
        results = [c.judge(summ) for c in self.checks]
        verdicts = [v for v, _ in results]
        verdict = FAILS if FAILS in verdicts else UNSURE if UNSURE in verdicts else HOLDS
        by_dtype: dict[str, list[str]] = {}
        for c in self.checks:
            for n in _names(c, summ):
                if n in summ and n not in by_dtype.get(summ[n]["stored_dtype"], []):
                    by_dtype.setdefault(summ[n]["stored_dtype"], []).append(n)
        return {"claim": self.number, "text": self.text, "verdict": verdict,
                "measured": "; ".join(t for _, t in results),
                "dtypes": "; ".join(f"{d}: {', '.join(ns)}" for d, ns in by_dtype.items()) if len(by_dtype) > 1 else "",
                "guide": guide_changes(self.checks)}


def _names(c, summ: dict) -> list[str]:
    if isinstance(c, Best):
        return [n for n in summ if c.among is None or n in c.among]
    return [c.a, c.b]


def guide_changes(checks) -> str:
    """The guide's own figures for the same comparisons, as changes."""
    out = []
    for c in checks:
        if isinstance(c, (Check, Same)):
            g = GUIDE_FIGURES[_GUIDE_METRIC[c.metric]]
            if c.a in g and c.b in g:
                out.append(f"{c.metric} {c.a} {g[c.a]} vs {c.b} {g[c.b]} ({change(g[c.a], g[c.b]):+.0f}%)")
        elif isinstance(c, Best):
            g = GUIDE_FIGURES[_GUIDE_METRIC[c.metric]]
            pool = {n: v for n, v in g.items() if c.among is None or n in c.among}
            out.append(f"{c.metric}: fastest {min(pool, key=pool.get)} {min(pool.values())}")
    return "; ".join(out)


GUIDE_EIGHT = tuple(names(tag="guide"))  # the user's guide's eight, in its order (the registry's "guide" tag)
TS_APPROACHES = tuple(n for n in GUIDE_EIGHT if isinstance(APPROACHES[n], TensorStoreZarr))  # its seven TensorStore ones

CLAIMS = [
    Claim(1, "Chunking is the primary optimisation: ts+chunks saves about 90% faster than tensorstore.",
          [Check("ts+chunks", "tensorstore", "save", pct=90)]),
    Claim(2, "Concurrency helps: ts+concurrency saves about 30% faster than tensorstore.",
          [Check("ts+concurrency", "tensorstore", "save", pct=30)]),
    Claim(3, "Compression is counterproductive: ts+compression is slower to save and to load than tensorstore, "
             "for a small size benefit (under 25% smaller).",
          [Check("ts+compression", "tensorstore", "save", lower=False),
           Check("ts+compression", "tensorstore", "load", lower=False),
           Check("ts+compression", "tensorstore", "size", max_pct=25)]),
    Claim(4, "float16 is free: ts+float16 is about 50% smaller than tensorstore at the same speed (within 15%).",
          [Check("ts+float16", "tensorstore", "size", pct=50),
           Same("ts+float16", "tensorstore", "save"), Same("ts+float16", "tensorstore", "load")]),
    Claim(5, "OCDBT is slightly better than the baseline in save, load and size.",
          [Check("ts+ocdbt", "tensorstore", "save"), Check("ts+ocdbt", "tensorstore", "load"),
           Check("ts+ocdbt", "tensorstore", "size")]),
    Claim(6, "pytorch is the fastest to save and to load (of the guide's eight).",
          [Best("pytorch", "save", GUIDE_EIGHT), Best("pytorch", "load", GUIDE_EIGHT)]),
    Claim(7, "t5x (all optimisations combined) is slower than ts+chunks alone, to save and to load.",
          [Check("t5x", "ts+chunks", "save", lower=False), Check("t5x", "ts+chunks", "load", lower=False)]),
    Claim(8, "ts+chunks is the best TensorStore approach for save and load (of the guide's seven).",
          [Best("ts+chunks", "save", TS_APPROACHES), Best("ts+chunks", "load", TS_APPROACHES)]),
]


def judge_claims(rows: list[dict], numbers: tuple[int, ...] | None = None) -> list[dict]:
    """Each claim's verdict on these rows (all valid rows of one run)."""
    summ = summarize(rows)
    return [c.judge(summ) for c in CLAIMS if numbers is None or c.number in numbers]


# Judged on the cloud rows (4e's S3 section), at every added delay separately.
CLOUD_CLAIM = Claim(
    9, "OCDBT is better for cloud storage: on an S3 object store, OCDBT saves and loads faster than the plain "
       "zarr driver, at 64-element and at 1 MiB chunks.",
    [Check("ts+ocdbt", "tensorstore", "save"), Check("ts+ocdbt", "tensorstore", "load"),
     Check("ts+chunks[use_ocdbt=True]", "ts+chunks", "save"), Check("ts+chunks[use_ocdbt=True]", "ts+chunks", "load")])


def judge_cloud(rows: list[dict]) -> dict:
    """Claim 9 on rows measured on S3: judged at each added round-trip delay;
    the verdict is the weakest of them."""
    by_delay: dict[float, list[dict]] = {}
    for r in rows:
        if r.get("requests_save") is not None and is_valid(r):
            by_delay.setdefault(float(r.get("s3_delay_ms") or 0), []).append(r)
    if not by_delay:
        return {"claim": 9, "text": CLOUD_CLAIM.text, "verdict": UNSURE, "measured": "not measured on S3",
                "dtypes": "", "guide": ""}
    parts = {d: CLOUD_CLAIM.judge(summarize(rs)) for d, rs in sorted(by_delay.items())}
    verdicts = [p["verdict"] for p in parts.values()]
    verdict = FAILS if FAILS in verdicts else UNSURE if UNSURE in verdicts else HOLDS
    return {"claim": 9, "text": CLOUD_CLAIM.text, "verdict": verdict,
            "measured": " | ".join(f"+{d:g} ms RTT ({p['verdict']}): {p['measured']}" for d, p in parts.items()),
            "dtypes": "", "guide": "no figures: the guide recommends OCDBT for the cloud without measuring it"}
