"""``python -m llama_ckpt verify PATH``: is a checkpoint complete and exactly
what was saved?

Every checkpoint this suite writes carries a manifest with the SHA-256 of each
tensor's stored bytes (of each rank's shard, for a sharded checkpoint) and a
commit marker written last. ``verify`` reads each tensor (or shard) back with
the checkpoint's own approach (rebuilt from the manifest's format and knobs,
so sweep variants verify too) and checks it against its digest, naming each
bad tensor, the shard and the file that holds it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .checkpoint import read_manifest
from .digests import tensor_digest
from .errors import UserError
from .registry import approach_of
from .store import Location, at


@dataclass
class Report:
    path: Location
    approach: str
    n_tensors: int
    n_bytes: int = 0
    n_shards: int = 0  # 0: not sharded
    bad: list[str] = field(default_factory=list)  # one line per bad tensor or shard: name, file, what

    @property
    def ok(self) -> bool:
        return not self.bad


def _what(got, shape, dtype: str, digest: str) -> str | None:
    """What is wrong with a tensor read back (None: nothing)."""
    if isinstance(got, BaseException):
        msg = str(got).strip().splitlines()[0] if str(got).strip() else type(got).__name__
        return f"unreadable: {type(got).__name__}: {msg[:300]}"
    if list(got.shape) != list(shape) or str(got.dtype).removeprefix("torch.") != dtype:
        return f"shape/dtype {list(got.shape)} {got.dtype}, manifest says {list(shape)} {dtype}"
    if tensor_digest(got) != digest:
        return "bytes differ from the digest recorded at save"
    return None


def verify(where) -> Report:
    """Read every tensor of the checkpoint at ``where`` (a Location or a
    local path) and check its digests. Raises UserError for what is not a
    committed checkpoint at all."""
    loc = at(where)
    man = read_manifest(loc)
    approach = approach_of(man)
    report = Report(loc, approach.name, len(man["tensors"]))
    want = {t["name"]: t for t in man["tensors"]}
    if "world_size" in man:
        return _verify_shards(loc, man, approach, report, want)
    if any("sha256" not in t for t in want.values()):
        raise UserError(f"{loc}: the manifest has no digests (written before digests were recorded)")
    seen = set()
    for name, got in approach.iter_tensors(loc, man):
        seen.add(name)
        t = want[name]
        problem = _what(got, t["shape"], t["dtype"], t["sha256"])
        if problem:
            report.bad.append(f"{name} ({approach.tensor_file(loc, man, name)}): {problem}")
        else:
            report.n_bytes += got.numel() * got.element_size()
    for name in sorted(set(want) - seen):
        report.bad.append(f"{name} ({approach.tensor_file(loc, man, name)}): missing")
    return report


def _verify_shards(loc, man, approach, report: Report, want: dict) -> Report:
    world = man["world_size"]
    report.n_shards = world
    if any("shards" not in t for t in want.values()):
        raise UserError(f"{loc}: the manifest has no per-shard digests (written before they were recorded)")
    seen = set()
    for name, rank, got in approach.iter_shards(loc, man):
        seen.add((name, rank))
        t = want[name]
        s = t["shards"][rank]
        a, b = s["rows"]
        shape = [b - a] + list(t["shape"][1:])
        problem = _what(got, shape, t["dtype"], s["sha256"])
        where = approach.shard_file(loc, man, name, rank)
        if problem:
            report.bad.append(f"{name} shard {rank} of {world} (rows {a}-{b}, {where}): {problem}")
        else:
            report.n_bytes += got.numel() * got.element_size()
    for name, rank in sorted({(n, r) for n in want for r in range(world)} - seen):
        report.bad.append(f"{name} shard {rank} of {world} ({approach.shard_file(loc, man, name, rank)}): missing")
    return report
