"""The user's guide's claims, judged against one run's measurements.

Every comparison of approach ``a`` against ``b`` on a metric is the ratio of
their medians, a/b, with a percentile bootstrap confidence interval of it
(:data:`CONFIDENCE`; :data:`N_BOOT` resamples of each side's repeats, drawn
independently with replacement from a fixed seed: the same rows always give
the same verdict). A verdict is computed from that interval, never typed in
(:data:`RULE` says it in words):

- a direction ("faster", "smaller"): ``holds`` when the whole interval is on
  the claimed side of 1, ``does not hold`` when it is wholly on the other
  side, ``inconclusive`` when it straddles 1;
- a size ("about 90% faster", i.e. 0.1x the time): the weakest effect still
  "about" the claim is the claimed ratio times :data:`RATIO_TOLERANCE`
  (0.15x); the interval must lie wholly beyond it (and on the claimed side of
  1) to hold, wholly on the weak side for ``does not hold``; an interval
  wholly stronger than the claim divided by the tolerance still holds, and
  says so;
- a bound ("under 25%") or "the same within 15%": the interval must lie within
  the band around 1 to hold, wholly outside it for ``does not hold``;
- "fastest": ``holds`` when the winner's interval against every other
  contender lies below 1, ``does not hold`` when against one it lies above 1,
  ``inconclusive`` otherwise (naming those it cannot separate from);
- an approach not measured: ``inconclusive``.

A claim takes the weakest of its checks' verdicts and reports its
``repeats``, the fewest samples of any approach it compares: an undecided
claim may be decided by more repeats. The guide's own figures
are kept as a citation (:data:`GUIDE_FIGURES`) and shown beside ours as
relative changes: absolute times depend on the machine.

This module decides; it renders nothing (``llama_ckpt.report.verdicts``
does) and reads no run (``llama_ckpt.study.runs`` does): the claims' phase
and the report both read it from below.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np

from ..formats.tensorstore import TensorStoreZarr
from ..registry import APPROACHES, names
from ..results import change, fmt_bytes, is_valid
from ..results.text import BASELINE

HOLDS, FAILS, UNSURE = "holds", "does not hold", "inconclusive"
RATIO_TOLERANCE = 1.5  # "about" a claimed ratio: within this factor of it
CONFIDENCE = 0.95  # of the bootstrap interval of a ratio of medians
N_BOOT = 4000  # bootstrap resamples per comparison
SEED = 0  # the resampling's seed: the same rows give the same interval
MIN_REPEATS = 5  # a verdict needs at least this many samples of each side (fewer: inconclusive)
_CI = f"{CONFIDENCE:.0%}"

RULE = (f"Each comparison is the ratio of two approaches' medians with its {_CI} percentile bootstrap interval "
        f"({N_BOOT} resamples of each side's repeats, fixed seed): it holds when the whole interval lies on the "
        f"claimed side of its threshold (1 for a direction, the claimed ratio within a factor of {RATIO_TOLERANCE:g} "
        "for a claimed size, the band for \"within\" or \"under\"; for \"fastest\", against every other "
        "contender), does not hold when it lies wholly on the other side, and is inconclusive when it straddles the "
        f"threshold, or rests on fewer than {MIN_REPEATS} repeats of either side. A claim takes the weakest verdict of "
        "its comparisons, and is inconclusive where an approach was not measured.")

# The user's guide's expected results on its machine (seconds, GB): a citation.
GUIDE_FIGURES = {
    "save_s": {"pytorch": 9, "ts+chunks": 14, "ts+concurrency": 46, "t5x": 64, BASELINE: 150,
               "ts+float16": 150, "ts+compression": 161, "ts+ocdbt": 140},
    "load_s": {"pytorch": 4, "ts+chunks": 8.5, BASELINE: 11, "ts+concurrency": 11.3, "ts+float16": 11,
               "ts+ocdbt": 10.5, "t5x": 13.8, "ts+compression": 15.1},
    "size_gb": {"ts+float16": 3.0, "pytorch": 3.0, "ts+compression": 3.1, BASELINE: 6.0,
                "ts+concurrency": 6.0, "t5x": 6.1, "ts+chunks": 6.1, "ts+ocdbt": 5.8},
}
_METRIC = {"save": "save_s", "load": "load_s", "size": "bytes_on_disk"}
_GUIDE_METRIC = {"save": "save_s", "load": "load_s", "size": "size_gb"}
_ORDER = {HOLDS: 0, UNSURE: 1, FAILS: 2}  # a claim takes the weakest (highest) of its checks' verdicts


def sample_sets(rows: list[dict]) -> dict[str, dict]:
    """Per approach (first-seen order), over its valid rows: the stored dtype and each metric's samples."""
    by: dict[str, list[dict]] = {}
    for r in rows:
        if is_valid(r):
            by.setdefault(r["approach"], []).append(r)
    return {n: {"stored_dtype": rs[0]["stored_dtype"],
                **{k: np.array([r[k] for r in rs if r.get(k) is not None], dtype=float) for k in _METRIC.values()}}
            for n, rs in by.items()}


@lru_cache(maxsize=1024)
def _boot_medians(values: tuple[float, ...], stream: int) -> np.ndarray:
    """The medians of :data:`N_BOOT` resamples of ``values`` (with replacement), drawn from seeded ``stream``."""
    x, n = np.sort(values), len(values)
    # Sorted indices into sorted values give sorted resamples: the median is the middle one (or two).
    idx = np.sort(np.random.default_rng((SEED, stream)).integers(0, n, (N_BOOT, n)), axis=1)
    m = (x[idx[:, (n - 1) // 2]] + x[idx[:, n // 2]]) / 2
    m.flags.writeable = False  # shared by every later call with the same samples
    return m


def ratio_interval(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float]:
    """median(a)/median(b) and the ends of its :data:`CONFIDENCE` percentile bootstrap interval."""
    # a and b resample from streams of their own: independent, and each side's medians are reused (cached)
    # across the comparisons it takes part in, whatever the order of judging.
    ma = _boot_medians(tuple(float(v) for v in a), 0)
    mb = _boot_medians(tuple(float(v) for v in b), 1)
    lo, hi = np.quantile(ma / mb, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2])
    return float(np.median(a) / np.median(b)), float(lo), float(hi)


@dataclass
class _Ratio:
    """One comparison's medians, ratio a/b with its interval, and sample counts."""

    a: str
    b: str
    metric: str
    ma: float
    mb: float
    r: float
    lo: float
    hi: float
    na: int
    nb: int

    def interval(self) -> str:
        return f"{self.r:.3g}x [{self.lo:.3g}-{self.hi:.3g}] ({_CI} CI), n={self.na}/{self.nb}"

    def text(self) -> str:
        return (f"{self.metric} {self.a} {_fmt(self.ma, self.metric)} vs {self.b} {_fmt(self.mb, self.metric)} "
                f"({change(self.ma, self.mb):+.0f}%): {self.interval()}")


def _compare(samples: dict, a: str, b: str, metric: str) -> _Ratio | str:
    """The comparison, or why there is none."""
    key = _METRIC[metric]
    x, y = samples.get(a, {}).get(key), samples.get(b, {}).get(key)
    for name, s in ((a, x), (b, y)):
        if s is None or not len(s):
            return f"{name} not measured"
    if np.any(y <= 0):
        return f"{metric} of {b} is not positive: no ratio"
    r, lo, hi = ratio_interval(x, y)
    return _Ratio(a, b, metric, float(np.median(x)), float(np.median(y)), r, lo, hi, len(x), len(y))


def _band(lo: float, hi: float, frac: float) -> tuple[str, str]:
    """Whether the interval [lo, hi] lies within 1 +- frac, wholly outside it, or straddles an edge (named)."""
    edges = (1 - frac, 1 + frac)
    if edges[0] <= lo and hi <= edges[1]:
        return HOLDS, ""
    if hi < edges[0] or lo > edges[1]:
        return FAILS, ""
    return UNSURE, " and ".join(f"{e:.3g}x" for e in edges if lo <= e <= hi)


def _weakest(parts: list[tuple[str, str]]) -> tuple[str, str]:
    """The weakest verdict, with the notes of the parts that gave it (an inconclusive part's note: the
    threshold its interval straddles)."""
    verdict = max((v for v, _ in parts), key=_ORDER.get)
    notes = [n for v, n in parts if v == verdict and n]
    if verdict == UNSURE:
        return verdict, f", the {_CI} interval straddles {' and '.join(notes)}" if notes else ""
    return verdict, "".join(notes)


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

    def judge(self, samples: dict) -> tuple[str, str]:
        p = _compare(samples, self.a, self.b, self.metric)
        if isinstance(p, str):
            return UNSURE, p
        # Judged in the frame where the claim is "lower": a higher claim on a/b is a lower one on b/a.
        flip = (lambda v: v) if self.lower else (lambda v: 1 / v)
        lo, hi = sorted((flip(p.lo), flip(p.hi)))
        # every sample alike on both sides (a size): the claimed difference is not there at all
        parts = [(HOLDS, "") if hi < 1 else (FAILS, ", wholly the other way") if lo > 1
                 else (FAILS, ", no difference at all") if lo == hi == 1 else (UNSURE, "1")]
        if self.pct is not None:
            claimed = 1 - self.pct / 100 if self.lower else 1 + self.pct / 100  # claimed ratio a/b
            c = flip(claimed)
            t = c * RATIO_TOLERANCE  # the weakest effect still "about" the claim
            if lo > t:
                parts.append((FAILS, f", not about {claimed:.3g}x (weaker than {flip(t):.3g}x)"))
            elif hi <= t:
                parts.append((HOLDS, f", a stronger effect than the claimed {claimed:.3g}x"
                              if hi < c / RATIO_TOLERANCE else ""))
            else:
                parts.append((UNSURE, f"{flip(t):.3g}x"))
        if self.max_pct is not None:
            v, note = _band(p.lo, p.hi, self.max_pct / 100)
            parts.append((v, f", more than {self.max_pct:.0f}%" if v == FAILS else note))
        verdict, notes = _weakest(parts)
        return _enough(verdict, p.text() + notes, p.na, p.nb)


@dataclass
class Same:
    """``a`` and ``b`` are within ``tol`` percent of each other on ``metric``."""

    a: str
    b: str
    metric: str
    tol: float = 15.0

    def judge(self, samples: dict) -> tuple[str, str]:
        p = _compare(samples, self.a, self.b, self.metric)
        if isinstance(p, str):
            return UNSURE, p
        v, note = _weakest([_band(p.lo, p.hi, self.tol / 100)])
        return _enough(v, p.text() + (note or f", {'within' if v == HOLDS else 'beyond'} {self.tol:.0f}%"), p.na, p.nb)


@dataclass
class Best:
    """``a`` has the lowest ``metric`` among ``among`` (all measured ones if None)."""

    a: str
    metric: str
    among: tuple[str, ...] | None = None

    def judge(self, samples: dict) -> tuple[str, str]:
        pool = [n for n in samples if self.among is None or n in self.among]
        missing = [n for n in (self.among or ()) if n not in pool]
        if self.a not in pool or len(pool) < 2 or missing:
            return UNSURE, f"{self.metric}: not measured in these rows: {', '.join(missing or [self.a])}"
        ps = [_compare(samples, self.a, b, self.metric) for b in pool if b != self.a]
        if bad := [p for p in ps if isinstance(p, str)]:
            return UNSURE, f"{self.metric}: {'; '.join(bad)}"
        ps.sort(key=lambda p: p.mb)
        m = self.metric
        if beaten := [p for p in ps if p.lo > 1]:  # a clearly higher than these
            w = beaten[0]
            return _enough(FAILS, f"{m}: {w.b} {_fmt(w.mb, m)} beats {self.a} {_fmt(w.ma, m)} "
                           f"({self.a} {change(w.ma, w.mb):+.0f}%: {w.interval()})", w.na, w.nb)
        s = ps[0]  # the contender with the lowest median
        text = (f"{m}: {self.a} {_fmt(s.ma, m)}, {'next' if s.mb >= s.ma else 'lower'} {s.b} {_fmt(s.mb, m)} "
                f"({change(s.ma, s.mb):+.0f}%): {s.interval()}")
        if unclear := [p.b for p in ps if p.hi >= 1]:
            return UNSURE, text + f", the {_CI} interval straddles 1 against {', '.join(unclear)}"
        return _enough(HOLDS, text, *(min(n) for n in zip(*((p.na, p.nb) for p in ps))))


def _enough(verdict: str, text: str, na: int, nb: int) -> tuple[str, str]:
    """A verdict stands only on at least :data:`MIN_REPEATS` samples a side:
    with fewer, a bootstrap interval is too narrow to trust (one sample a side
    gives a point), and the comparison stays inconclusive."""
    if verdict != UNSURE and min(na, nb) < MIN_REPEATS:
        return UNSURE, text + f", but {verdict} on fewer than {MIN_REPEATS} repeats a side"
    return verdict, text


def _fmt(v: float, metric: str) -> str:
    return fmt_bytes(v) if metric == "size" else f"{v:.3g} s"


def decided(result: dict) -> bool:
    """Whether a claim's result (from :meth:`Claim.judge`) is decided, i.e. not inconclusive."""
    return result["verdict"] != UNSURE


@dataclass
class Claim:
    number: int
    text: str
    checks: list
    dtypes_differ: tuple[str, ...] = ()  # approaches here that store another dtype than the baseline

    def approaches(self) -> tuple[str, ...]:
        """The approaches its checks compare, in order, each once (a ``Best``'s pool where it names one)."""
        out: list[str] = []
        for c in self.checks:
            if isinstance(c, Best):
                out += c.among if c.among and c.a in c.among else (c.a, *(c.among or ()))
            else:
                out += (c.a, c.b)
        return tuple(dict.fromkeys(out))

    def repeats(self, samples: dict) -> int:
        """The fewest valid samples of any approach it compares (0 where one is not measured)."""
        def names(c):
            return (*(c.among or tuple(samples)), c.a) if isinstance(c, Best) else (c.a, c.b)
        return min(len(samples.get(n, {}).get(_METRIC[c.metric], ())) for c in self.checks for n in names(c))

    def judge(self, samples: dict) -> dict:
        """Its verdict on :func:`sample_sets` of some rows."""
        results = [c.judge(samples) for c in self.checks]
        verdict, _ = _weakest([(v, "") for v, _ in results])
        by_dtype: dict[str, list[str]] = {}
        for c in self.checks:
            for n in _names(c, samples):
                if n in samples and n not in by_dtype.get(samples[n]["stored_dtype"], []):
                    by_dtype.setdefault(samples[n]["stored_dtype"], []).append(n)
        return {"claim": self.number, "text": self.text, "verdict": verdict,
                "measured": "; ".join(t for _, t in results),
                "dtypes": "; ".join(f"{d}: {', '.join(ns)}" for d, ns in by_dtype.items())
                if len(by_dtype) > 1 else "",
                "guide": guide_changes(self.checks), "repeats": self.repeats(samples)}


def _names(c, samples: dict) -> list[str]:
    if isinstance(c, Best):
        return [n for n in samples if c.among is None or n in c.among]
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
# its seven TensorStore ones
TS_APPROACHES = tuple(n for n in GUIDE_EIGHT if isinstance(APPROACHES[n], TensorStoreZarr))

CLAIMS = [
    Claim(1, "Chunking is the primary optimisation: ts+chunks saves about 90% faster than tensorstore.",
          [Check("ts+chunks", BASELINE, "save", pct=90)]),
    Claim(2, "Concurrency helps: ts+concurrency saves about 30% faster than tensorstore.",
          [Check("ts+concurrency", BASELINE, "save", pct=30)]),
    Claim(3, "Compression is counterproductive: ts+compression is slower to save and to load than tensorstore, "
             "for a small size benefit (under 25% smaller).",
          [Check("ts+compression", BASELINE, "save", lower=False),
           Check("ts+compression", BASELINE, "load", lower=False),
           Check("ts+compression", BASELINE, "size", max_pct=25)]),
    Claim(4, "float16 is free: ts+float16 is about 50% smaller than tensorstore at the same speed (within 15%).",
          [Check("ts+float16", BASELINE, "size", pct=50),
           Same("ts+float16", BASELINE, "save"), Same("ts+float16", BASELINE, "load")]),
    Claim(5, "OCDBT is slightly better than the baseline in save, load and size.",
          [Check("ts+ocdbt", BASELINE, "save"), Check("ts+ocdbt", BASELINE, "load"),
           Check("ts+ocdbt", BASELINE, "size")]),
    Claim(6, "pytorch is the fastest to save and to load (of the guide's eight).",
          [Best("pytorch", "save", GUIDE_EIGHT), Best("pytorch", "load", GUIDE_EIGHT)]),
    Claim(7, "t5x (all optimisations combined) is slower than ts+chunks alone, to save and to load.",
          [Check("t5x", "ts+chunks", "save", lower=False), Check("t5x", "ts+chunks", "load", lower=False)]),
    Claim(8, "ts+chunks is the best TensorStore approach for save and load (of the guide's seven).",
          [Best("ts+chunks", "save", TS_APPROACHES), Best("ts+chunks", "load", TS_APPROACHES)]),
]


def undecided_approaches(claim: Claim, samples: dict) -> tuple[str, ...]:
    """The approaches whose comparisons leave ``claim`` undecided on these
    samples: those it compares that were not measured at all; both sides of
    an inconclusive ``Check`` or ``Same``; for an inconclusive ``Best``, the
    winner and the contenders its interval cannot separate from. More
    repeats of these, and only these, can decide it."""
    out: list[str] = [n for n in claim.approaches() if n not in samples]
    for c in claim.checks:
        verdict, _ = c.judge(samples)
        if verdict != UNSURE:
            continue
        if isinstance(c, Best):
            pool = [n for n in samples if c.among is None or n in c.among]
            ps = [p for b in pool if b != c.a and not isinstance(p := _compare(samples, c.a, b, c.metric), str)]
            out += [c.a] + [p.b for p in ps if p.lo <= 1 <= p.hi]
        else:
            out += [c.a, c.b]
    return tuple(dict.fromkeys(out))


def intervals(claim: Claim, samples: dict, weights: str = "") -> list[dict]:
    """Each comparison of ``claim`` as numbers, for a chart: the ratio a/b
    of medians, its interval, and the thresholds its verdict is judged
    against (1; the claimed size's weakest ratio; a band's edges)."""
    out = []
    for c in claim.checks:
        pairs = ([(c.a, b) for b in samples if b != c.a and (c.among is None or b in c.among)]
                 if isinstance(c, Best) else [(c.a, c.b)])
        check_verdict, _ = c.judge(samples)
        for a, b in pairs:
            verdict = check_verdict
            p = _compare(samples, a, b, c.metric)
            if isinstance(p, str):
                continue
            lines = [1.0]
            if isinstance(c, Check) and c.pct is not None:
                claimed = 1 - c.pct / 100 if c.lower else 1 + c.pct / 100
                lines.append(claimed * RATIO_TOLERANCE if c.lower else claimed / RATIO_TOLERANCE)
            band = c.tol if isinstance(c, Same) else getattr(c, "max_pct", None)
            if band is not None:
                lines += [1 - band / 100, 1 + band / 100]
            if isinstance(c, Best):  # each contender on its own: a below it, above it, or not told apart
                verdict = HOLDS if p.hi < 1 else FAILS if p.lo > 1 else UNSURE
            out.append({"claim": claim.number, "weights": weights, "comparison": f"{c.metric}: {a} / {b}",
                        "ratio": p.r, "lo": p.lo, "hi": p.hi, "n": f"{p.na}/{p.nb}", "thresholds": lines,
                        "verdict": verdict})
    return out


def judge_claims(rows: list[dict], numbers: tuple[int, ...] | None = None) -> list[dict]:
    """Each claim's verdict on these rows (all valid rows of one run)."""
    samples = sample_sets(rows)
    return [c.judge(samples) for c in CLAIMS if numbers is None or c.number in numbers]


OTHER_WEIGHTS_CLAIMS = (3, 4)  # compression and float16 meet the weights' low mantissa bits: judged on both kinds


def _weights(rows: list[dict]) -> str:
    return next((r.get("weights") for r in rows if r.get("weights")), "")


def judge_both(rows: list[dict], other: list[dict] | None = None) -> list[dict]:
    """Every claim on ``rows`` (the run's weights), and claims 3 and 4 on
    ``other`` (the preset's other weights) where there are such rows; each
    result names the weights it was judged on."""
    out = [dict(c, weights=_weights(rows)) for c in judge_claims(rows)]
    if other:
        out += [dict(c, weights=_weights(other)) for c in judge_claims(other, OTHER_WEIGHTS_CLAIMS)]
    return out


def all_intervals(rows: list[dict], other: list[dict] | None = None) -> list[dict]:
    """:func:`intervals` of every claim on ``rows``, and of claims 3 and 4 on ``other``."""
    samples, w = sample_sets(rows), _weights(rows)
    out = [i for c in CLAIMS for i in intervals(c, samples, w)]
    if other:
        so, wo = sample_sets(other), _weights(other)
        out += [i for c in CLAIMS if c.number in OTHER_WEIGHTS_CLAIMS for i in intervals(c, so, wo)]
    return out


# Judged on the cloud rows (4e's S3 section), at every added delay separately.
CLOUD_CLAIM = Claim(
    9, "OCDBT is better for cloud storage: on an S3 object store, OCDBT saves and loads faster than the plain "
       "zarr driver, at 64-element and at 1 MiB chunks.",
    [Check("ts+ocdbt", BASELINE, "save"), Check("ts+ocdbt", BASELINE, "load"),
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
                "dtypes": "", "guide": "", "repeats": 0}
    parts = {d: CLOUD_CLAIM.judge(sample_sets(rs)) for d, rs in sorted(by_delay.items())}
    verdict, _ = _weakest([(p["verdict"], "") for p in parts.values()])
    return {"claim": 9, "text": CLOUD_CLAIM.text, "verdict": verdict,
            "measured": " | ".join(f"+{d:g} ms RTT ({p['verdict']}): {p['measured']}" for d, p in parts.items()),
            "dtypes": "", "guide": "no figures: the guide recommends OCDBT for the cloud without measuring it",
            "repeats": min(p["repeats"] for p in parts.values())}


def undecided(rows: list[dict], numbers: tuple[int, ...] | None = None) -> dict[str, tuple[int, ...]]:
    """The approaches whose repeats leave a claim undecided on ``rows``, each with those claims."""
    samples = sample_sets(rows)
    out: dict[str, tuple[int, ...]] = {}
    for c in CLAIMS:
        if numbers is None or c.number in numbers:
            for n in undecided_approaches(c, samples):
                out[n] = out.get(n, ()) + (c.number,)
    return out
