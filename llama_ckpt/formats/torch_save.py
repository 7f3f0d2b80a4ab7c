"""``torch.save``: the whole state dict in one zip file, or one file per rank."""

from __future__ import annotations

import io
from dataclasses import dataclass

import torch

from ..checkpoint import shard_rows
from .base import OneFile, RankContext


class TorchSave(OneFile):
    """``torch.save`` of the whole state dict into one ``model.pth`` (the zip
    format: one record per tensor), cast to ``dtype`` first; loaded with
    ``torch.load(weights_only=True)``, which reads every record into memory.
    On an object store the file is streamed by multipart upload (no second
    copy in memory) and read back whole.

    Per rank: each rank ``torch.save``s its own rows into ``rank<r>.pth``; a
    load on another number of ranks maps (``mmap``, where the storage is a
    file system) every file overlapping its slice and copies out its rows.

    With ``mmap``, the load memory-maps the file (``torch.load(mmap=True)``)
    and copies every tensor out of the map into memory: the loader many
    serving stacks use, timed until the copies are done.

    Caveats: the cast to float16 is lossy (overflow above 65504, precision of
    11 bits); the cast is part of the timed save since the source is float32.
    The whole file must be read to get any one tensor.
    """

    MECHANISM = "TorchSave"
    FILE = "model.pth"
    can_shard = True

    @property
    def s3_unsupported(self) -> str | None:
        return "torch.load(mmap=True) maps a local file" if self.k.mmap else None

    @dataclass(frozen=True)
    class Knobs:
        dtype: str = "float32"  # stored dtype of floating tensors
        mmap: bool = False  # load: memory-map the file, then copy each tensor out (local files)

    def write(self, state_dict, loc, steps, progress):
        with steps("cast"):
            out = self.cast_consuming(state_dict)
        progress(len(out))
        with loc.open_write(self.FILE) as f:
            with steps("serialise + write"):
                torch.save(out, f)
                f.flush()
            with steps("fsync (or complete the upload)"):
                f.finish()

    def read(self, loc, manifest, progress):
        sd = _torch_load(loc, self.FILE, mmap=self.k.mmap)
        if self.k.mmap and loc.local_file() is not None:  # really in memory: copied out of the map
            sd = {k: v.clone() for k, v in sd.items()}
        progress(len(sd))
        return sd

    # -- per rank ---------------------------------------------------------------
    def write_rank(self, shards, loc, specs, ctx: RankContext):
        with loc.open_write(f"rank{ctx.rank}.pth") as f:
            torch.save(shards, f)
            f.flush()
            ctx.fault()  # written, not yet durable
            f.finish()

    def read_rank(self, loc, manifest, specs, ctx: RankContext):
        saved_world = manifest["world_size"]
        files, out = {}, {}
        for s in specs:
            a, b = ctx.rows(s.shape[0])
            parts = []
            for r in range(saved_world):
                sa, sb = shard_rows(s.shape[0], r, saved_world)
                lo, hi = max(a, sa), min(b, sb)
                if lo >= hi:
                    continue
                if r not in files:
                    files[r] = _torch_load(loc, f"rank{r}.pth", mmap=True)
                parts.append(files[r][s.name][lo - sa:hi - sa])
            shape = (b - a,) + tuple(s.shape[1:])
            out[s.name] = torch.cat(parts).clone() if parts else torch.empty(shape)
        return out

    def iter_shards(self, loc, manifest):
        for r in range(manifest["world_size"]):
            try:
                part = _torch_load(loc, f"rank{r}.pth", mmap=False)
            except Exception as exc:  # noqa: BLE001 - every tensor of this shard is unreadable
                part = exc
            for t in manifest["tensors"]:
                if isinstance(part, BaseException):
                    yield t["name"], r, part
                else:
                    yield t["name"], r, part.get(t["name"], KeyError(f"{t['name']} not in rank{r}.pth"))

    def shard_file(self, loc, manifest, name, rank):
        return loc.where(f"rank{rank}.pth")


def _torch_load(loc, rel: str, mmap: bool) -> dict:
    """``torch.load`` of one file, memory-mapped where the storage has a local
    file and ``mmap`` is asked for; otherwise read whole. ``weights_only``
    is passed explicitly: TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD cannot turn it off."""
    path = loc.local_file(rel)
    src = str(path) if path is not None else io.BytesIO(loc.read_bytes(rel))
    return torch.load(src, map_location="cpu", weights_only=True, mmap=mmap and path is not None)
