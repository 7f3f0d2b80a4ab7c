"""What makes a checkpoint a checkpoint: its manifest, its commit, and the
one way to save and load it, whatever the format and the storage.

A checkpoint is a location holding the format's files, ``manifest.json``
(approach, format, knobs, and every tensor's name, shape, dtype and SHA-256
in the stored dtype; for a sharded checkpoint, the world size and each
shard's rows and SHA-256) and the commit marker, written last by the
storage's ``publish``. A location without the marker is never loaded.
"""

from __future__ import annotations

import json
import time

from .digests import tensor_digest
from .errors import UserError
from .recorders import Steps
from .store import MARKER, Location

MANIFEST = "manifest.json"
COMMIT = MARKER
SHARDING = "rows: ceil(rows / world_size) per rank, torch.chunk's split"


def shard_rows(rows: int, rank: int, world: int) -> tuple[int, int]:
    """Rank ``rank``'s rows [start, stop) of a dimension of ``rows`` split in
    ``world`` contiguous blocks of ceil(rows / world) (torch.chunk's split,
    the one DTensor's ``Shard(0)`` uses); the last ranks may own fewer, or none."""
    s = max(1, -(-rows // world))
    start = min(rows, rank * s)
    return start, min(rows, start + s)


def manifest(fmt, tensors: list[dict], **extra) -> dict:
    return {"approach": fmt.name, "mechanism": fmt.MECHANISM, "knobs": fmt.knobs(), **extra,
            "tensors": tensors}


def tensor_entries(fmt, state_dict, digests: dict[str, str] | None) -> list[dict]:
    """Manifest entries for a state dict about to be saved by ``fmt``: the
    digests given (name -> hex, in the stored dtype) or computed here."""
    out = []
    for k, v in state_dict.items():
        stored = fmt.stored(v.dtype)
        out.append({"name": k, "shape": list(v.shape), "dtype": str(stored).removeprefix("torch."),
                    "sha256": digests[k] if digests is not None else tensor_digest(v.to(stored))})
    return out


def commit(loc: Location, staged: Location, man: dict) -> None:
    """Make a fully written checkpoint real: manifest, then marker, then
    whatever the storage does to publish (see :meth:`Location.publish`)."""
    loc.publish(staged, {MANIFEST: json.dumps(man), COMMIT: json.dumps({"committed_at": time.time()})})


def save(fmt, state_dict, loc: Location, progress=None, digests=None, steps: Steps | None = None) -> None:
    """Write a checkpoint atomically: stage, the format's files, commit. On
    any failure what was staged is removed. ``state_dict`` may be consumed."""
    steps = steps if steps is not None else Steps()
    progress = progress or (lambda n: None)
    tensors = tensor_entries(fmt, state_dict, digests)
    staged = loc.stage()
    try:
        fmt.write(state_dict, staged, steps, progress)
        with steps("suite: manifest, marker, publish"):
            commit(loc, staged, manifest(fmt, tensors))
    except BaseException as exc:
        discard(loc, staged, exc)
        raise


def discard(loc: Location, staged: Location, failure: BaseException | None = None) -> str | None:
    """Remove what a failed save staged. Where that fails too, the save's own error stays the one raised
    (``failure`` gains a note where Python has them) and what is left is a stale save, removed by the next run;
    returns why it was left (None: removed)."""
    try:
        loc.discard(staged)
    except OSError as exc:
        why = f"what it staged could not be removed ({exc}); the next run removes it as a stale save"
        if failure is not None and hasattr(failure, "add_note"):  # Python 3.11+
            failure.add_note(why)
        return why
    return None


def begin(fmt, state_dict, loc: Location, digests: dict[str, str], **extra) -> tuple[Location, dict]:
    """The first half of a save written by someone else (a background thread
    or process): the staging location and the manifest to commit once the
    format's files in it are durable (:func:`finish`)."""
    return loc.stage(), manifest(fmt, tensor_entries(fmt, state_dict, digests), **extra)


def finish(loc: Location, staged: Location, man: dict, ok: bool) -> None:
    """The second half: commit what was staged when the write succeeded;
    remove it otherwise."""
    if not ok:
        discard(loc, staged)
        return
    try:
        commit(loc, staged, man)
    except BaseException as exc:
        discard(loc, staged, exc)
        raise


def read_manifest(loc: Location) -> dict:
    """The manifest of a committed checkpoint; a clear error for anything
    else (a leftover temporary, no commit marker, no or corrupt manifest)."""
    if loc.is_staging():
        raise UserError(f"{loc}: incomplete checkpoint (the temporary of an interrupted save)")
    if not loc.exists():
        raise UserError(f"{loc}: no such checkpoint")
    if not loc.has(COMMIT):
        if loc.has(MANIFEST):
            raise UserError(f"{loc}: incomplete checkpoint (no commit marker {COMMIT}): never loaded or measured")
        raise UserError(f"{loc}: not a committed llama_ckpt checkpoint (no {MANIFEST}, no commit marker {COMMIT}): "
                        "not a checkpoint, or an interrupted save")
    try:
        man = json.loads(loc.read_text(MANIFEST))
        _ = [(t["name"], t["shape"], t["dtype"]) for t in man["tensors"]]
    except (ValueError, KeyError, TypeError, OSError) as exc:
        raise UserError(f"{loc.where(MANIFEST)}: corrupt manifest ({exc})") from None
    return man


def load(fmt, loc: Location, progress=None) -> dict:
    """Every tensor of a committed checkpoint of ``fmt``, in memory."""
    man = read_manifest(loc)
    if man.get("approach") != fmt.name:
        raise UserError(f"{loc}: checkpoint of approach {man.get('approach')!r}, not {fmt.name!r}")
    return fmt.read(loc, man, progress or (lambda n: None))
