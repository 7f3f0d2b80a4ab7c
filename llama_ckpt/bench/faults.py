"""Fault injection: what does each format notice on its own, and what only
the suite's digests catch?

For each approach, a fresh checkpoint of a small model is damaged in one way
and then read twice: by the approach's own load (does the format raise?) and
by `verify` (do the digests catch it?). The outcomes fill the summary's
reliability table, and the tests assert that `verify` catches every fault.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..checkpoint import COMMIT, MANIFEST
from ..digests import tensor_digest
from ..errors import FAILURES
from ..formats.base import Format
from ..fsutil import iter_files
from ..model import get_model
from ..registry import APPROACHES, names
from ..verify import verify

FORMAT_RAISES = "format raises"
ONLY_DIGESTS = "only the digests"
NOT_CAUGHT = "NOT CAUGHT"
NO_EFFECT = "no effect"
NOT_APPLICABLE = "n/a"


def data_files(approach: Format, path: Path) -> list[Path]:
    """The checkpoint's data files, largest first (not the suite's manifest
    or marker, not the files the format names as its metadata)."""
    skip = {MANIFEST, COMMIT} | approach.metadata_files()
    files = [f for f in iter_files(path) if f.name not in skip]
    return sorted(files, key=lambda f: (-f.stat().st_size, str(f)))


def flip_byte(approach: Format, path: Path) -> str | None:
    f = data_files(approach, path)[0]
    with open(f, "r+b") as fh:
        size = os.fstat(fh.fileno()).st_size
        pos = size // 2
        fh.seek(pos)
        b = fh.read(1)
        fh.seek(pos)
        fh.write(bytes([b[0] ^ 0xFF]))
    return f"flipped byte {pos} of {f.relative_to(path)}"


def truncate(approach: Format, path: Path) -> str | None:
    f = data_files(approach, path)[0]
    size = f.stat().st_size
    os.truncate(f, size // 2)
    return f"truncated {f.relative_to(path)} from {size} to {size // 2} bytes"


def delete_data_file(approach: Format, path: Path) -> str | None:
    f = data_files(approach, path)[0]
    f.unlink()
    return f"deleted {f.relative_to(path)}"


def delete_database_manifest(approach: Format, path: Path) -> str | None:
    name = approach.database_manifest()
    if name is None or not (Path(path) / name).exists():
        return None
    (Path(path) / name).unlink()
    return f"deleted {name}"


# fault -> what it does to ``approach``'s checkpoint at ``path``: a description, or None where it does not apply
FAULTS: dict[str, Callable[[Format, Path], str | None]] = {
    "flipped byte": flip_byte,
    "truncated file": truncate,
    "deleted data file": delete_data_file,
    "deleted OCDBT manifest": delete_database_manifest,  # the only database manifest a format here names
}


@dataclass
class Outcome:
    approach: str
    fault: str
    what: str  # what was done to the checkpoint
    result: str  # FORMAT_RAISES | ONLY_DIGESTS | NOT_CAUGHT | NO_EFFECT | NOT_APPLICABLE
    format_said: str  # the format's own error, if it raised
    verify_said: str  # the first line `verify` printed about it


def probe(approach: Format, fault: str, root: Path, source: dict[str, torch.Tensor]) -> Outcome:
    path = root / f"{approach.name}-{fault.replace(' ', '-')}"
    approach.save({k: v.clone() for k, v in source.items()}, path)
    what = FAULTS[fault](approach, path)
    if what is None:
        return Outcome(approach.name, fault, "-", NOT_APPLICABLE, "", "")
    try:
        loaded = approach.load(path)
        expected = {k: tensor_digest(v.to(approach.stored(v.dtype))) for k, v in source.items()}
        same = set(loaded) == set(expected) and all(tensor_digest(loaded[k]) == expected[k] for k in expected)
        format_said, raised = "", False
    except FAILURES as exc:
        format_said, raised, same = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200], True, False
    report = verify(path)
    verify_said = report.bad[0] if report.bad else "OK"
    if raised:
        result = FORMAT_RAISES
    elif same:
        result = NO_EFFECT
    else:
        result = ONLY_DIGESTS if not report.ok else NOT_CAUGHT
    return Outcome(approach.name, fault, what, result, format_said, verify_said)


def reliability(approaches: list[Format] | None = None, faults: list[str] | None = None,
                root: Path | None = None) -> list[Outcome]:
    """Every fault on every approach, on the tiny model."""
    approaches = approaches or [APPROACHES[n] for n in names()]
    source = get_model("tiny").materialize()
    with tempfile.TemporaryDirectory(prefix="llama_ckpt-faults-", dir=root) as tmp:
        return [probe(a, f, Path(tmp), source) for a in approaches for f in (faults or list(FAULTS))]


def reliability_table(outcomes: list[Outcome]):
    """Approaches x faults: who catches each fault."""
    import pandas as pd

    frame = pd.DataFrame([o.__dict__ for o in outcomes])
    return frame.pivot(index="approach", columns="fault", values="result").loc[
        list(dict.fromkeys(o.approach for o in outcomes)), list(dict.fromkeys(o.fault for o in outcomes))]
