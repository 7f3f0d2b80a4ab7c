"""``torch.distributed.checkpoint`` (DCP): in one process, or from every rank
with DTensors."""

from __future__ import annotations

import os
import uuid
import warnings
from dataclasses import dataclass

import torch

from ..errors import FAILURES
from ..store import TMP_TAG
from .base import Format, RankContext, round_up


def _stride(shape) -> tuple[int, ...]:
    out, n = [], 1
    for d in reversed(shape):
        out.append(n)
        n *= d
    return tuple(reversed(out))


def writer(loc, thread_count: int):
    """DCP's writer for ``loc``: ``FileSystemWriter`` with file sync on a
    file system; on an object store DCP's fsspec writer over s3fs, without
    file sync (an object is durable once its upload completes, and DCP's
    fallback for a stream without a file descriptor is ``os.sync()`` of the
    whole machine)."""
    import torch.distributed.checkpoint as dcp

    path = loc.local_file()
    if path is not None:
        return dcp.FileSystemWriter(str(path), sync_files=True, thread_count=thread_count)
    from torch.distributed.checkpoint._fsspec_filesystem import FsspecWriter  # not re-exported by dcp

    url, options = loc.fsspec()
    return FsspecWriter(url, sync_files=False, thread_count=thread_count, **options)


def reader(loc):
    import torch.distributed.checkpoint as dcp

    path = loc.local_file()
    if path is not None:
        return dcp.FileSystemReader(str(path))
    from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader

    url, options = loc.fsspec()
    return FsspecReader(url, **options)


class DistributedCheckpoint(Format):
    """``torch.distributed.checkpoint`` in one process, without a process
    group: ``FileSystemWriter`` with one writer thread per core and file sync
    on (a ``.distcp`` file per thread plus a ``.metadata`` file; on S3 DCP's
    fsspec writer over s3fs, one object per file); loading
    reads in place into tensors preallocated from the manifest (the
    allocation is inside the timed load).

    Per rank: each rank's rows as a DTensor (``Shard(0)`` on a CPU device
    mesh), saved and loaded by DCP from every rank; DCP reshards on load.

    Caveats: DCP's files are meant to be read by DCP.
    """

    MECHANISM = "DistributedCheckpoint"
    can_shard = True

    @dataclass(frozen=True)
    class Knobs:
        dtype: str = "float32"  # stored dtype of floating tensors
        thread_count: int = 0  # writer threads; 0 = the cores this process may use

    def threads(self) -> int:
        return self.k.thread_count or len(os.sched_getaffinity(0))

    def write_streams(self) -> int:
        return self.threads()  # FileSystemWriter's threads

    def knobs(self) -> dict:
        return super().knobs() | {"threads_used": self.threads()}

    def write(self, state_dict, loc, steps, progress):
        import torch.distributed.checkpoint as dcp

        with steps("cast"):
            out = self.cast_consuming(state_dict)
        with warnings.catch_warnings(), steps("dcp.save (plan, write, fsync)"):
            # "assuming the intent is to save in a single process": it is
            warnings.simplefilter("ignore", UserWarning)
            dcp.save(out, storage_writer=writer(loc, self.threads()), no_dist=True)
        progress(len(out))

    def read(self, loc, manifest, progress):
        out = {t["name"]: torch.empty(t["shape"], dtype=getattr(torch, t["dtype"])) for t in manifest["tensors"]}
        self._load_into(loc, out)
        progress(len(out))
        return out

    @staticmethod
    def _load_into(loc, out: dict) -> None:
        import torch.distributed.checkpoint as dcp

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            dcp.load(out, storage_reader=reader(loc), no_dist=True)

    def iter_tensors(self, loc, manifest):
        for t in manifest["tensors"]:
            one = {t["name"]: torch.empty(t["shape"], dtype=getattr(torch, t["dtype"]))}
            try:
                self._load_into(loc, one)
                yield t["name"], one[t["name"]]
            except FAILURES as exc:
                yield t["name"], exc

    def metadata_files(self) -> frozenset[str]:
        return frozenset({".metadata"})  # FileSystemWriter's index of every tensor's place in the .distcp files

    def tensor_file(self, loc, manifest, name):
        try:
            meta = reader(loc).read_metadata()
            files = sorted({info.relative_path for idx, info in meta.storage_data.items() if idx.fqn == name})
            if files:
                return ", ".join(loc.where(f) for f in files)
        except FAILURES:  # the metadata itself is damaged
            return loc.where(".metadata")
        return str(loc)

    def estimate_bytes(self, specs, block):
        data = sum(s.numel * self.stored(s.dtype).itemsize + 1024 for s in specs)
        return round_up(data + (4 << 20), block) + self.threads() * block

    # -- per rank ---------------------------------------------------------------
    def prepare_rank(self, ctx: RankContext, loc, saving):
        import torch.distributed.checkpoint as dcp
        from torch.distributed.tensor import DTensor, Shard, init_device_mesh

        mesh = init_device_mesh("cpu", (ctx.world,))
        # A throwaway save and load of one small DTensor beside the checkpoint
        # (storage every rank sees, on any node): DTensor, DCP and s3fs set
        # much up lazily on first use, which is process
        # start-up, not checkpointing; a training job pays it once. Named as
        # a temporary, so an interrupted one is removed by the next run.
        tag = [uuid.uuid4().hex[:8]] if ctx.rank == 0 else [None]  # two jobs on one checkpoint do not collide
        ctx.dist.broadcast_object_list(tag, src=0)
        warm = loc.parent / f"{loc.name}{TMP_TAG}dcp-warmup-{tag[0]}"
        one = {"w": DTensor.from_local(torch.zeros(1, 4), mesh, [Shard(0)], run_check=False,
                                       shape=torch.Size((ctx.world, 4)), stride=(4, 1))}
        dcp.save(one, storage_writer=writer(warm, 1))
        dcp.load(one, storage_reader=reader(warm))
        ctx.dist.barrier()
        if ctx.rank == 0:
            warm.remove()
        ctx.state["mesh"] = mesh

    def _dtensors(self, specs, ctx: RankContext, local_of) -> dict:
        from torch.distributed.tensor import DTensor, Shard

        return {s.name: DTensor.from_local(local_of(s), ctx.state["mesh"], [Shard(0)], run_check=False,
                                           shape=torch.Size(s.shape), stride=_stride(s.shape)) for s in specs}

    def write_rank(self, shards, loc, specs, ctx: RankContext):
        import torch.distributed.checkpoint as dcp

        sd = self._dtensors(specs, ctx, lambda s: shards[s.name])
        ctx.fault()
        dcp.save(sd, storage_writer=writer(loc, self.k.thread_count or 1))

    def read_rank(self, loc, manifest, specs, ctx: RankContext):
        import torch.distributed.checkpoint as dcp

        def empty(s):
            a, b = ctx.rows(s.shape[0])
            return torch.empty((b - a,) + tuple(s.shape[1:]), dtype=self.stored(s.dtype))

        sd = self._dtensors(specs, ctx, empty)
        dcp.load(sd, storage_reader=reader(loc))
        return {k: v.to_local() for k, v in sd.items()}
