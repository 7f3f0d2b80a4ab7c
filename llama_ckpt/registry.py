"""The one table of approaches: name -> format, knobs, tags.

Every other part of the suite (the CLI, the phases, the claims, ``verify``,
the fault probe, the tests) reads the approaches from here. An approach's
tags say where it belongs: ``guide`` (the user's guide's eight, in its
order), ``sharded`` (saved and loaded by N processes, ``--world-size``),
``variant`` (a knob value of another approach, registered for its name;
every other single-process approach outside the guide is a format
05-formats compares, :func:`formats_phase`). Whether it can target S3 is
its format's (``s3_unsupported``).

A new format is one module in :mod:`llama_ckpt.formats` (a Format subclass
with its own ``MECHANISM``) and one line here.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Iterable

from .errors import UserError
from .formats.base import Format
from .formats.dcp import DistributedCheckpoint
from .formats.fast_safetensors import FastSafeTensors
from .formats.runai_streamer import RunaiStreamer
from .formats.safetensors import SafeTensors
from .formats.tensorizer import Tensorizer
from .formats.tensorstore import TensorStoreZarr, TSKnobs
from .formats.torch_save import TorchSave
from .results.text import BASELINE
from .units import GiB, MiB, binary_label

GUIDE, SHARDED = "guide", "sharded"
VARIANT = "variant"  # a knob value of another approach, registered for its name: not a format of its own
# The guide's approaches 05-formats compares the formats with: ts+chunks (the guide's best TensorStore) and
# pytorch (the guide's torch.save)
FORMAT_BASELINES = ("ts+chunks", "pytorch")
_BASE = TSKnobs()


def _ts(name: str, description: str, tags=(), **changes) -> TensorStoreZarr:
    return TensorStoreZarr(name, description, dataclasses.replace(_BASE, **changes), tags)


# ts+best: one transaction (a few large OCDBT data files instead of a commit per write), 16 MiB chunks,
# commits every 1 GiB staged (bounded memory on large models), data files of at most 64 MiB, concurrency 8
# (bounds the chunk buffers a load holds); why: docs/decisions.md#ts-best
TS_BEST = dict(chunk_rule="contiguous", chunk_size=16 * MiB, concurrency=8, use_ocdbt=True, transaction=True,
               reference_source=True, commit_bytes=1 * GiB, target_data_file_size=64 * MiB)
# sharded TensorStore: row chunks of at most 16 MiB dividing each rank's rows, one transaction per rank
TS_SHARDED = dict(chunk_rule="contiguous", chunk_size=16 * MiB, concurrency=128, transaction=True,
                  reference_source=True)

APPROACHES: dict[str, Format] = {a.name: a for a in [
    # -- the user's guide's eight, in its order
    TorchSave("pytorch", "torch.save of the state dict in float16, one .pth file", TorchSave.Knobs("float16"),
              (GUIDE,)),
    _ts(BASELINE, "baseline: zarr, 64-element chunks, concurrency 1, no compression, float32", (GUIDE,)),
    _ts("t5x", "zarr, chunks up to 64 MiB (T5X divisor rule), concurrency 128, gzip, float32", (GUIDE,),
        chunk_rule="t5x", chunk_size=64 * MiB, compression="gzip", concurrency=128),
    _ts("ts+concurrency", "baseline with 128 concurrent operations, all writes in flight", (GUIDE,), concurrency=128),
    _ts("ts+chunks", "baseline with chunks of at most 1 MiB (whole rows, split evenly)", (GUIDE,),
        chunk_rule="contiguous", chunk_size=1 * MiB),
    _ts("ts+compression", "baseline with the gzip compressor", (GUIDE,), compression="gzip"),
    _ts("ts+float16", "baseline storing float16", (GUIDE,), dtype="float16"),
    _ts("ts+ocdbt", "baseline on the OCDBT key-value store", (GUIDE,), use_ocdbt=True),
    # -- beyond the guide: what teams use today, and dtype-fair partners
    TorchSave("pytorch-fp32", "torch.save of the float32 state dict: the dtype-fair partner of tensorstore",
              TorchSave.Knobs("float32")),
    SafeTensors("safetensors", "safetensors save_file / safe_open, float32, one file", SafeTensors.Knobs("float32")),
    DistributedCheckpoint("dcp", "torch.distributed.checkpoint in one process, a writer thread per core, "
                          "loaded in place", DistributedCheckpoint.Knobs("float32")),
    _ts("ts+zarr3", "zarr3, one shard per tensor with ~1 MiB inner chunks, float32", use_zarr3=True,
        chunk_rule="contiguous", chunk_size=1 * MiB),
    _ts("ts+bfloat16", "baseline storing bfloat16", (VARIANT,), dtype="bfloat16"),
    _ts("ts+best", "the fastest TensorStore configuration measured here (see TS_BEST), float32", **TS_BEST),
    _ts("ts+best16", "ts+best storing float16", **TS_BEST, dtype="float16"),
    # -- the loaders teams deploy to read weights fast (each from its own package, CPU mode)
    RunaiStreamer("runai-streamer", "safetensors file, loaded by the Run:ai Model Streamer (C++ threads, chunked "
                  "reads into CPU memory)", RunaiStreamer.Knobs()),
    FastSafeTensors("fastsafetensors", "safetensors file, loaded by fastsafetensors (CPU, nogds: threads read the "
                    "file into one buffer, tensors copied out)", FastSafeTensors.Knobs()),
    Tensorizer("tensorizer", "CoreWeave tensorizer's own format, written by TensorSerializer, read by "
               "TensorDeserializer with parallel readers", Tensorizer.Knobs()),
    TorchSave("pytorch-fp32-mmap", "pytorch-fp32's file loaded by torch.load(mmap=True), every tensor copied out "
              "of the map", TorchSave.Knobs("float32", mmap=True)),
    # -- sharded: N ranks save one checkpoint, M ranks load it (--world-size N --load-world-size M)
    DistributedCheckpoint("dcp-sharded", "torch.distributed.checkpoint from every rank, each rank's rows as a "
                          "DTensor (Shard(0)); resharded by DCP on load", DistributedCheckpoint.Knobs(thread_count=1),
                          (SHARDED,)),
    _ts("ts-sharded", "zarr arrays, every rank writes its rows; chunks aligned to the shards (<= 16 MiB), one "
        "transaction per rank", (SHARDED,), **TS_SHARDED),
    _ts("ts-sharded+ocdbt", "the same in one OCDBT database, ranks committing through TensorStore's OCDBT "
        "coordinator (started by rank 0)", (SHARDED,), **TS_SHARDED, use_ocdbt=True),
    TorchSave("pytorch-per-rank", "torch.save of each rank's rows into rank<r>.pth; other world sizes map the "
              "overlapping files and copy out their rows", TorchSave.Knobs("float32"), (SHARDED,)),
]}

# a loader of another approach's file -> that approach: its save is the same call writing the same file, so a
# ranking of saves (or of sizes) counts it once, under that name, and ranks the loader among loads only
SAVES_AS = {"runai-streamer": "safetensors", "fastsafetensors": "safetensors", "pytorch-fp32-mmap": "pytorch-fp32"}


def _formats(approaches) -> dict[str, type[Format]]:
    """MECHANISM -> format class, for :func:`approach_of`; two classes may not share one."""
    out: dict[str, type[Format]] = {}
    for cls in dict.fromkeys(type(a) for a in approaches):
        if out.setdefault(cls.MECHANISM, cls) is not cls:
            raise TypeError(f"{cls.__name__} and {out[cls.MECHANISM].__name__} share MECHANISM {cls.MECHANISM!r}")
    return out


# the format classes by the stable name their manifests carry (``mechanism``)
FORMATS: dict[str, type[Format]] = _formats(APPROACHES.values())


def names(*, sharded: bool = False, tag: str | None = None) -> list[str]:
    """Registered approach names, in registry order: the single-process ones
    (or the sharded ones), optionally only those with ``tag``."""
    return [n for n, a in APPROACHES.items() if a.sharded == sharded and (tag is None or tag in a.tags)]


def formats_phase() -> list[str]:
    """The approaches 05-formats compares, in registry order: every
    single-process one that is neither one of the guide's eight nor a
    ``variant`` (so a new format's registry line brings it in untagged).
    The phase adds :data:`FORMAT_BASELINES` to compare them with."""
    return [n for n in names() if not APPROACHES[n].tags & {GUIDE, VARIANT}]


def variant(base: str, **changes) -> Format:
    """``base`` with some knobs changed, named ``base[knob=value,...]`` after
    the knobs that differ from ``base``; a registered approach whose knobs are
    exactly these keeps its own name."""
    if base not in APPROACHES:
        raise UserError(f"unknown approach {base!r}; valid approaches: {', '.join(APPROACHES)}")
    a = APPROACHES[base]
    try:
        knobs = dataclasses.replace(a.k, **changes)
    except (TypeError, ValueError) as exc:
        raise UserError(f"bad knob for {base}: {exc}") from None
    for known in APPROACHES.values():
        if type(known) is type(a) and known.k == knobs and known.sharded == a.sharded:
            return known
    label = ",".join(f"{k}={_label(v)}" for k, v in changes.items() if getattr(a.k, k) != v)
    return a.with_knobs(f"{base}[{label}]", f"{base} with {label.replace(',', ', ')}", knobs)


def _label(v) -> str:
    """A knob's value as it reads in an approach's name: a whole number of KiB in binary units with no space
    (``chunk_size=16MiB``, ``64KiB``: part of the name, so spelt as every result row and test knows it)."""
    if isinstance(v, int) and not isinstance(v, bool) and v >= 1024 and v % 1024 == 0:
        return binary_label(v, sep="")
    return str(v)


def sweep(base: str, **axes) -> list[Format]:
    """Every combination of the knob values: a list-valued knob is a sweep
    axis, a scalar is fixed. ``sweep("tensorstore", concurrency=[1, 4])``."""
    keys = list(axes)
    values = [v if isinstance(v, (list, tuple)) else [v] for v in axes.values()]
    if any(len(v) == 0 for v in values):
        raise UserError("a sweep axis needs at least one value")
    return [variant(base, **dict(zip(keys, combo))) for combo in itertools.product(*values)]


def resolve(given: str | Iterable[str], sharded: bool = False) -> list[Format]:
    """``"all"``, ``"a,b"`` or a list of names -> approaches, in the given
    order; ``all`` and the valid names are the single-process approaches, or
    with ``sharded`` the sharded ones."""
    valid = names(sharded=sharded)
    if isinstance(given, str):
        given = valid if given.strip() == "all" else [n.strip() for n in given.split(",") if n.strip()]
    given = list(given)
    where = " with --world-size" if sharded else ""
    if not given:
        raise UserError(f"no approach given; valid approaches{where}: all, {', '.join(valid)}")
    unknown = [n for n in given if n not in valid]
    other = [n for n in unknown if n in APPROACHES]
    if unknown and other == unknown:
        if sharded:
            raise UserError(f"unknown approach {', '.join(map(repr, unknown))} with --world-size (not sharded); "
                            f"valid: all, {', '.join(valid)}")
        raise UserError(f"{', '.join(unknown)}: sharded approach(es), run with --world-size N")
    if unknown:
        raise UserError(f"unknown approach {', '.join(map(repr, unknown))}; valid approaches{where}: all, "
                        f"{', '.join(valid)}")
    return [APPROACHES[n] for n in dict.fromkeys(given)]


def approach_of(manifest: dict) -> Format:
    """The approach that wrote a checkpoint, from its manifest (a sweep
    variant is rebuilt from its format and knobs)."""
    name = manifest.get("approach")
    if name in APPROACHES:
        return APPROACHES[name]
    cls = FORMATS.get(manifest.get("mechanism"))
    if cls is None:
        raise UserError(f"checkpoint of unknown approach {name!r} (mechanism {manifest.get('mechanism')!r})")
    fields = {f.name for f in dataclasses.fields(cls.Knobs)}
    tags = (SHARDED,) if "world_size" in manifest else ()
    knobs = cls.Knobs(**{k: v for k, v in manifest["knobs"].items() if k in fields})
    return cls(name, "rebuilt from a manifest", knobs, tags)
