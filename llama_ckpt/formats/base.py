"""The contract every format meets, single-process and per rank.

A format is one storage mechanism (``torch.save``, safetensors, DCP,
TensorStore) with its knobs as a frozen dataclass; an approach is a format
with a name, a description, knob values and tags (see
:mod:`llama_ckpt.registry`). Formats write and read; the atomic commit, the
manifest and the digests are :mod:`llama_ckpt.checkpoint`'s, the storage is
a :class:`~llama_ckpt.store.Location`'s.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .. import checkpoint
from ..errors import FAILURES
from ..model import TensorSpec
from ..recorders import Steps
from ..store import Location, at

Progress = Callable[[int], None]  # called with the number of tensors just finished
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def no_progress(_n: int) -> None:
    pass


def round_up(n: int, block: int) -> int:
    return -(-n // block) * block


@dataclass
class RankContext:
    """What a format's per-rank code gets from the rank it runs in."""

    rank: int
    world: int
    dist: Any  # torch.distributed, initialised
    fault: Callable[[], None] = lambda: None  # tests: may kill this rank mid-save
    state: dict = field(default_factory=dict)  # the format's own (a device mesh, a coordinator address)

    def rows(self, n: int) -> tuple[int, int]:
        return checkpoint.shard_rows(n, self.rank, self.world)


class Format:
    """``write(state_dict, loc, steps, progress)`` writes the format's files
    into ``loc`` (a staging location) and returns once they are durable; it
    may consume ``state_dict`` (empty it as tensors are converted) to keep the
    peak memory near one copy of the model. ``read(loc, manifest, progress)``
    returns every tensor materialised in memory, in the stored dtype.

    Per rank (formats that can shard, used by approaches tagged ``sharded``):
    ``prepare_rank`` (imports, meshes, coordinators: before the timer),
    ``write_rank`` (this rank's rows of every tensor, durable on return) and
    ``read_rank`` (this rank's rows, for any number of ranks).

    Every concrete subclass sets, in its own body (checked when the class is
    defined; a base meant only to be subclassed says ``abstract=True``):

    - ``MECHANISM``: the format's stable name, written into each manifest and
      read back by :func:`llama_ckpt.registry.approach_of`; renaming the class
      must not change it, or older checkpoints no longer read;
    - ``Knobs``: a frozen dataclass of the format's knobs (it may inherit
      one), with a ``dtype`` field: the stored dtype of floating tensors, a
      key of ``DTYPES``.
    """

    MECHANISM: str  # stable name in manifests (see above)
    Knobs: type
    s3_unsupported: str | None = None  # why this format cannot use an object store (None: it can)
    can_shard: bool = False
    own_s3_client: bool = False  # loads from S3 with a client of its own, whose requests the suite cannot count
    # The anonymous memory a save or a load of the whole model may hold at its
    # peak, as a multiple of the model's bytes (the source or loaded copy
    # included): the estimate the run checks against the memory available
    # before it measures the approach.
    PEAK_FACTOR = 1.2

    def __init_subclass__(cls, abstract: bool = False, **kwargs):
        super().__init_subclass__(**kwargs)
        if abstract:
            return
        if not isinstance(cls.__dict__.get("MECHANISM"), str):  # inherited is not enough: it names the parent
            raise TypeError(f"{cls.__name__}: a Format subclass sets MECHANISM = \"...\" in its own body (the stable "
                            "name its manifests carry), or is declared abstract (class X(Format, abstract=True))")
        knobs = getattr(cls, "Knobs", None)
        if not dataclasses.is_dataclass(knobs) or "dtype" not in {f.name for f in dataclasses.fields(knobs)}:
            raise TypeError(f"{cls.__name__}: its Knobs must be a dataclass with a dtype field (the stored dtype of "
                            f"floating tensors, one of {', '.join(DTYPES)})")

    def __init__(self, name: str, description: str, knobs, tags: tuple[str, ...] = ()):
        self.name, self.description, self.k, self.tags = name, description, knobs, frozenset(tags)
        self.stored_dtype = DTYPES[knobs.dtype]
        if self.sharded and not self.can_shard:
            raise TypeError(f"{type(self).__name__} has no per-rank save")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    @property
    def sharded(self) -> bool:
        return "sharded" in self.tags

    def knobs(self) -> dict:
        return dataclasses.asdict(self.k)

    def warm_up(self, loc: Location) -> None:
        """One-time set-up a library does on its first use in a process
        (loading a client library, say), done once before any timing at a
        scratch location ``loc`` that is removed after."""

    def peak_estimate(self, model_bytes: int) -> int:
        """Estimated peak anonymous memory of a save or load of a model of ``model_bytes``."""
        return int(self.PEAK_FACTOR * model_bytes)

    def with_knobs(self, name: str, description: str, knobs) -> "Format":
        return type(self)(name, description, knobs, tuple(self.tags - {"guide"}))

    def stored(self, dtype: torch.dtype) -> torch.dtype:
        """The dtype a tensor of ``dtype`` is stored in (integers are kept)."""
        return self.stored_dtype if dtype.is_floating_point else dtype

    def payload_bytes(self, spec: TensorSpec) -> int:
        """Bytes of the tensor's data as stored, before any compression."""
        return spec.numel * self.stored(spec.dtype).itemsize

    def estimate_bytes(self, specs: list[TensorSpec], block: int) -> int:
        """An upper bound of the checkpoint's bytes on disk (allocated blocks)."""
        raise NotImplementedError

    def write_streams(self) -> int | None:
        """How many threads a single-process save writes its bytes with, at
        most (the bounds' page-cache copy: results.bounds); None: not known."""
        return None

    def native_fsyncs(self, n_files: int) -> int | None:
        """The fsync calls a local save of ``n_files`` files (the suite's own
        among them) makes in native code, which the suite's count of Python's
        calls (``CpuIO``'s ``fsync_calls``) cannot see, by the library's
        stated policy; None where the policy does not say how many."""
        return 0

    def cast_consuming(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The state dict in the stored dtype, emptying ``state_dict`` as it
        goes so each source tensor is released once cast (a no-op cast keeps
        the same tensor)."""
        out = {}
        for name in list(state_dict):
            t = state_dict.pop(name)
            out[name] = t.to(self.stored(t.dtype)).contiguous()
        return out

    # -- single process -----------------------------------------------------------
    def write(self, state_dict, loc: Location, steps: Steps, progress: Progress) -> None:
        raise NotImplementedError

    def read(self, loc: Location, manifest: dict, progress: Progress) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def save(self, state_dict, where, progress: Progress | None = None, digests: dict[str, str] | None = None,
             steps: Steps | None = None) -> None:
        """A committed checkpoint of ``state_dict`` at ``where`` (a Location or a local path)."""
        checkpoint.save(self, state_dict, at(where), progress, digests, steps)

    def load(self, where, progress: Progress | None = None) -> dict[str, torch.Tensor]:
        return checkpoint.load(self, at(where), progress)

    def metadata_files(self) -> frozenset[str]:
        """Names of the files this format writes besides tensor data (array
        metadata, indexes), wherever they are in the checkpoint: the fault
        probe damages the other files. None by default."""
        return frozenset()

    def database_manifest(self) -> str | None:
        """The file at the checkpoint's root that indexes a database holding
        every tensor (OCDBT's manifest), for the fault probe's deletion of
        it; None where the format keeps no such database."""
        return None

    def tensor_sub(self, name: str) -> str | None:
        """The directory inside the checkpoint holding only this tensor's
        files, where the format has one (for per-tensor sizes)."""
        return None

    def tensor_file(self, loc: Location, manifest: dict, name: str) -> str:
        """Where a tensor's bytes are, for messages."""
        return str(loc)

    def iter_tensors(self, loc: Location, manifest: dict):
        """(name, tensor or the exception reading it raised), one tensor at a
        time where the format allows it; for ``verify``."""
        try:
            sd = self.read(loc, manifest, no_progress)
        except FAILURES as exc:  # the whole file failed: every tensor is bad
            for t in manifest["tensors"]:
                yield t["name"], exc
            return
        for t in manifest["tensors"]:
            yield t["name"], sd.get(t["name"], KeyError(f"{t['name']} not in the checkpoint"))

    def iter_shards(self, loc: Location, manifest: dict):
        """(name, rank, tensor of that rank's rows or an exception) of a
        sharded checkpoint, read in one process; for ``verify``."""
        world = manifest["world_size"]
        for name, got in self.iter_tensors(loc, manifest):
            for r in range(world):
                if isinstance(got, BaseException):
                    yield name, r, got
                else:
                    a, b = checkpoint.shard_rows(got.shape[0], r, world)
                    yield name, r, got[a:b]

    def shard_file(self, loc: Location, manifest: dict, name: str, rank: int) -> str:
        return self.tensor_file(loc, manifest, name)

    # -- per rank --------------------------------------------------------------------
    def prepare_rank(self, ctx: RankContext, loc: Location | None, saving: bool) -> None:
        """Imports and collective setup, before the timer starts."""

    def write_rank(self, shards: dict[str, torch.Tensor], loc: Location, specs: list[TensorSpec],
                   ctx: RankContext) -> None:
        raise NotImplementedError

    def read_rank(self, loc: Location, manifest: dict, specs: list[TensorSpec],
                  ctx: RankContext) -> dict[str, torch.Tensor]:
        raise NotImplementedError


class OneFile(Format, abstract=True):
    """A format that writes the whole state dict into one file, ``FILE``."""

    FILE: str

    @dataclass(frozen=True)
    class Knobs:
        dtype: str = "float32"  # stored dtype of floating tensors

    def tensor_file(self, loc, manifest, name):
        return loc.where(self.FILE)

    def write_streams(self) -> int:
        return 1  # one file, written in order

    def estimate_bytes(self, specs, block):
        # the data plus, per tensor, its header or zip record (256 B is an upper bound), plus 1 MiB
        data = sum(s.numel * self.stored(s.dtype).itemsize + 256 for s in specs)
        return round_up(data + (1 << 20), block)
