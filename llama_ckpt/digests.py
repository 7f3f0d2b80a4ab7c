"""Round-trip checks by per-tensor digests.

Before a save, :func:`expected_digests` records for every tensor the SHA-256
of its bytes in each dtype some approach stores (the float32 bytes, the
float16 cast, ...) together with the error that cast makes against the
source. The source can then be freed, and a load is checked tensor by tensor
against the digest of its stored dtype: bit-exact or not. A float16 load that
is bit-exact to the float16 cast of the source has exactly the cast's error,
so the recorded error is the load's error.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from .model import tensor_kind

# hashlib releases the GIL on large buffers: two threads use both cores.
_HASH_THREADS = 2


def tensor_digest(t: torch.Tensor) -> str:
    """SHA-256 of the tensor's bytes (C order), whatever its dtype."""
    t = t.detach()
    if not t.is_contiguous():
        t = t.contiguous()
    return hashlib.sha256(t.reshape(-1).view(torch.uint8).numpy()).hexdigest()


@dataclass(frozen=True)
class Expected:
    digest: str
    shape: tuple[int, ...]
    max_abs_err: float  # of this dtype's cast against the source
    max_rel_err: float  # max |cast - src| / |src| over nonzero src
    n_overflow: int = 0  # finite source values that became inf
    n_flushed: int = 0  # nonzero source values that became zero


_STATS_BLOCK = 1 << 23  # elements per slice when measuring a cast's error (bounds memory)


def _cast_stats(src: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, float, float, int, int]:
    """The cast and its error against the source: max absolute and relative
    error over finite values, values that overflowed to inf, nonzero values
    flushed to zero. Differences are taken in float32 slices: a rounded value
    lies within a factor 2 of its source, so the subtraction is exact."""
    cast = src.to(dtype)
    if cast.dtype == src.dtype or not src.dtype.is_floating_point:
        return cast, 0.0, 0.0, 0, 0
    s_all, c_all = src.reshape(-1), cast.reshape(-1)
    max_abs = max_rel = 0.0
    n_overflow = n_flushed = 0
    for i in range(0, s_all.numel(), _STATS_BLOCK):
        s = s_all[i:i + _STATS_BLOCK].float()
        c = c_all[i:i + _STATS_BLOCK].float()
        finite = torch.isfinite(c) & torch.isfinite(s)
        diff = (c - s).abs()
        if finite.any():
            max_abs = max(max_abs, float(diff[finite].max()))
        nz = finite & (s != 0)
        if nz.any():
            max_rel = max(max_rel, float((diff[nz] / s[nz].abs()).max()))
        n_overflow += int((torch.isinf(c) & torch.isfinite(s)).sum())
        n_flushed += int(((c == 0) & (s != 0)).sum())
    return cast, max_abs, max_rel, n_overflow, n_flushed


def expected_digests(state_dict: dict[str, torch.Tensor],
                     dtypes: set[torch.dtype]) -> dict[torch.dtype, dict[str, Expected]]:
    """For each dtype, each tensor's digest after casting the source to it."""
    def one(item):
        name, t = item
        row = {}
        for dt in dtypes:
            target = dt if t.dtype.is_floating_point else t.dtype
            cast, a, r, o, f = _cast_stats(t, target)
            row[dt] = Expected(tensor_digest(cast), tuple(t.shape), a, r, o, f)
        return name, row

    out: dict[torch.dtype, dict[str, Expected]] = {dt: {} for dt in dtypes}
    with ThreadPoolExecutor(_HASH_THREADS) as pool:
        for name, row in pool.map(one, state_dict.items()):
            for dt, e in row.items():
                out[dt][name] = e
    return out


@dataclass
class Verdict:
    verified: bool
    max_abs_err: float = 0.0
    max_rel_err: float = 0.0
    n_overflow: int = 0
    n_flushed: int = 0
    problems: list[str] = field(default_factory=list)
    # per tensor kind (embedding, attention, mlp, norm, lm_head): the cast's
    # max_abs_err, max_rel_err, n_overflow, n_flushed over verified tensors
    by_kind: dict[str, dict] = field(default_factory=dict)

    def summary(self) -> str:
        if self.verified:
            return "ok"
        more = f" (+{len(self.problems) - 3} more)" if len(self.problems) > 3 else ""
        return "; ".join(self.problems[:3]) + more


def check(loaded: dict[str, torch.Tensor], expected: dict[str, Expected]) -> Verdict:
    """Compare a loaded state dict with the digests of what was saved: same
    names, same shapes, bit-exact bytes."""
    v = Verdict(verified=True)
    missing = sorted(set(expected) - set(loaded))
    extra = sorted(set(loaded) - set(expected))
    if missing:
        v.problems.append(f"missing tensors: {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))
    if extra:
        v.problems.append(f"unexpected tensors: {', '.join(extra[:5])}" + (" ..." if len(extra) > 5 else ""))

    def one(name):
        t, e = loaded[name], expected[name]
        if tuple(t.shape) != e.shape:
            return name, f"{name}: shape {tuple(t.shape)} != saved {e.shape}"
        if tensor_digest(t) != e.digest:
            return name, f"{name}: bytes differ from what was saved"
        return name, None

    with ThreadPoolExecutor(_HASH_THREADS) as pool:
        for name, problem in pool.map(one, sorted(set(loaded) & set(expected))):
            if problem:
                v.problems.append(problem)
            else:
                e = expected[name]
                v.max_abs_err = max(v.max_abs_err, e.max_abs_err)
                v.max_rel_err = max(v.max_rel_err, e.max_rel_err)
                v.n_overflow += e.n_overflow
                v.n_flushed += e.n_flushed
                k = v.by_kind.setdefault(tensor_kind(name), dict(max_abs_err=0.0, max_rel_err=0.0,
                                                                 n_overflow=0, n_flushed=0))
                k["max_abs_err"] = max(k["max_abs_err"], e.max_abs_err)
                k["max_rel_err"] = max(k["max_rel_err"], e.max_rel_err)
                k["n_overflow"] += e.n_overflow
                k["n_flushed"] += e.n_flushed
    v.verified = not v.problems
    return v
