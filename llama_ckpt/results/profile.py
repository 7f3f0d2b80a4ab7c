"""The machine profile as a record: every figure :mod:`llama_ckpt.bench.machine` measures, its unit and meaning
stated once, here, and the disk's rates defined once for the bounds and the share-of-disk columns.

A run's profile is kept as JSON (``machine-profile.json`` in the run's directory, the ``machine`` field of each
environment record) with the keys :meth:`MachineProfile.to_dict` writes; :meth:`MachineProfile.from_dict` reads
it back, and reads an older run's profile with the keys it lacks as None. The storage reference
(:func:`llama_ckpt.bench.probes.reference`) stays the dict the probe returns: its ``reference_*`` keys are also
the environment record's, on S3 too, where there is no profile. The docs' table of the fields is generated from
their metadata (:func:`field_docs`).
"""

from __future__ import annotations

import json
import statistics
from dataclasses import Field, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable

# how a field is held: one value, a Rate, or a dict of Rates by name
VALUE, RATE, RATES = "value", "rate", "rates"


@dataclass(frozen=True)
class Rate:
    """A unit cost measured a few times: the median of its samples, their spread ((max - min) / median, in
    percent; None where the median is 0) and the samples in the order measured."""

    median: float
    spread_pct: float | None
    samples: tuple[float, ...]

    @classmethod
    def of(cls, samples: Iterable[float]) -> Rate:
        xs = tuple(samples)
        med = statistics.median(xs)
        return cls(med, (max(xs) - min(xs)) / med * 100 if med else None, xs)

    @classmethod
    def from_dict(cls, d: dict | None) -> Rate | None:
        return cls(d["median"], d.get("spread_pct"), tuple(d.get("samples") or ())) if d else None

    def to_dict(self) -> dict:
        return {"median": self.median, "spread_pct": self.spread_pct, "samples": list(self.samples)}


def median(rate: Rate | None) -> float | None:
    """A rate's median; None where it was not measured."""
    return rate.median if rate else None


# kind -> (from its JSON, to its JSON)
_CODECS: dict[str, tuple[Callable, Callable]] = {
    VALUE: (lambda v: tuple(v) if isinstance(v, list) else v, lambda v: list(v) if isinstance(v, tuple) else v),
    RATE: (Rate.from_dict, Rate.to_dict),
    RATES: (lambda v: {k: Rate.from_dict(x) for k, x in v.items()}, lambda v: {k: x.to_dict() for k, x in v.items()}),
}


def _json(f: Field, v: Any, way: int) -> Any:
    """Field ``f``'s value ``v`` read from its JSON (``way`` 0) or written to it (1)."""
    return None if v is None else _CODECS[f.metadata["kind"]][way](v)


def _f(unit: str, what: str, kind: str = VALUE) -> Any:
    return field(default=None, metadata={"unit": unit, "what": what, "kind": kind})


@dataclass(frozen=True, kw_only=True)
class MachineProfile:
    """What this machine's disk, page cache, memory, file system and cores did, measured once per run
    (:func:`llama_ckpt.bench.machine.profile`). A field an older run did not measure is None."""

    cores: int | None = _f("cores", "cores this process may run on (its CPU affinity)")
    memory_bytes: int | None = _f("bytes", "the machine's memory")
    page_bytes: int | None = _f("bytes", "the size of a memory page (`mmap.PAGESIZE`): a minor fault's bytes")
    fs_type: str | None = _f("-", "the file system of the output directory (ext4, xfs, ...)")
    fs_device: str | None = _f("-", "the device it is on")
    mount_options: str | None = _f("-", "its mount options (`/proc/mounts`)")
    thp: str | None = _f("-", "the kernel's transparent huge page setting: always, madvise or never (None: "
                                 "unknown)")
    bytes: int | None = _f("bytes", "the size of each durable write and of the storage reference: the model's "
                                    "bytes, at most `PROFILE_MAX_BYTES`")
    samples: int | None = _f("count", "how many times each unit cost was measured (`PROFILE_SAMPLES`)")
    memory_sample_bytes: int | None = _f("bytes", "the buffers of the memory copies and fills")
    small_files: int | None = _f("files", "small files written per sample of `small_files_per_s`")
    codec_sample_bytes: int | None = _f("bytes", "float16-origin weights compressed per codec sample")
    durable_fresh_Bps: Rate | None = _f("B/s", "durable write, each file to new space (back to back, each kept)",
                                        RATE)
    durable_freed_Bps: Rate | None = _f("B/s", "durable write, each after the last file was removed", RATE)
    durable_sequence_Bps: tuple[float, ...] | None = _f("B/s", "every durable write's rate in the order written: "
                                                               "the fresh ones, then the freed ones")
    reference: dict | None = _f("-", "the storage reference: one file written durably and read cold, in one "
                                        "stream and by `REFERENCE_THREADS` threads (and read through a mapping), "
                                        "`REFERENCE_SAMPLES` times "
                                        "(its `reference_*` keys, every sample kept)")
    pagecache_bytes: int | None = _f("bytes", "the size of each page-cache write: the model's bytes, at most "
                                              "`PAGECACHE_SHARE` of the memory available")
    buffered_write_Bps: Rate | None = _f("B/s", "one thread's write into the page cache (no fsync)", RATE)
    direct_write_Bps: Rate | None = _f("B/s", "direct I/O (`O_DIRECT`) write of `bytes` in `DIRECT_BLOCK` calls, "
                                              "fsynced, one stream", RATE)
    direct_read_Bps: Rate | None = _f("B/s", "direct I/O (`O_DIRECT`) read of the same file, one stream", RATE)
    memory_copy_1_Bps: Rate | None = _f("B/s", "memory copy, one thread", RATE)
    memory_copy_all_Bps: Rate | None = _f("B/s", "memory copy, every core", RATE)
    fresh_memory_Bps: Rate | None = _f("B/s", "filling fresh memory, 4 KiB pages, one thread", RATE)
    fresh_memory_huge_Bps: Rate | None = _f("B/s", "filling fresh memory, transparent huge pages, one thread",
                                            RATE)
    small_files_per_s: Rate | None = _f("files/s", "small files (`SMALL_FILE_BYTES` each) created, written and "
                                                   "fsynced one after another", RATE)
    file_creates_per_s: Rate | None = _f("files/s", "small files created and written one after another, no "
                                                    "fsync", RATE)
    fsyncs_per_s: Rate | None = _f("fsyncs/s", "those files then fsynced one after another", RATE)
    codecs_Bps: dict[str, Rate] | None = _f("B/s", "per compression setting of the suite (`CODECS`): "
                                                   "TensorStore's zarr codec compressing on one core", RATES)
    host_memory: dict | None = _f("-", "free page reporting to the VM's host as the profile began: its `order`, "
                                  "`reported_kib`, `held` (no free block reported: the run kept the memory); "
                                  "None: the kernel reports no free memory to a host (docs/decisions.md#host-memory)")
    not_measured: dict | None = _f("-", "field -> why it was not measured (a file system refusing direct I/O)")
    profile_s: float | None = _f("s", "how long the profile took")

    # -- JSON ---------------------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict) -> MachineProfile:
        """The record of a profile's JSON dict; keys it lacks (an older run's) are None, keys it does not know
        are dropped."""
        return cls(**{f.name: _json(f, d.get(f.name), 0) for f in fields(cls)})

    def to_dict(self) -> dict:
        """The profile as JSON-ready dict, with the keys every run since the profile began writes."""
        return {f.name: _json(f, getattr(self, f.name), 1) for f in fields(self)}

    @classmethod
    def of_env(cls, env: dict | None) -> MachineProfile | None:
        """The profile a run's environment record holds (its ``machine``); None where it has none (on S3,
        ``--no-reference``, or results written before the suite profiled its machine)."""
        got = (env or {}).get("machine")
        return cls.from_dict(got) if got else None

    @classmethod
    def read(cls, path: Path) -> MachineProfile | None:
        """The profile a run's ``machine-profile.json`` holds; None where there is no such file."""
        path = Path(path)
        return cls.from_dict(json.loads(path.read_text())) if path.is_file() else None

    # -- the rates the bounds and the reports read ------------------------------------------------------------------
    def write_rates(self) -> dict[str, float]:
        """The median durable write rates the profile saw, bytes per second, by what measured them."""
        got = {"durable write to new space": median(self.durable_fresh_Bps),
               "durable write to freed space": median(self.durable_freed_Bps),
               "disk reference": reference_write_Bps(self.reference or {})}
        return {k: v for k, v in got.items() if v}

    def write_source(self) -> str | None:
        """Which of :meth:`write_rates` is the disk's write rate (the fastest); None where none was measured."""
        rates = self.write_rates()
        return max(rates, key=rates.get) if rates else None

    def write_Bps(self) -> float | None:
        """The disk's write rate, bytes per second: the best median durable write the profile saw (to new space,
        to freed space, or the disk reference's; :meth:`write_source` says which)."""
        src = self.write_source()
        return self.write_rates()[src] if src else None

    def read_Bps(self) -> float | None:
        """The disk's read rate, bytes per second: the fastest confirmed-cold read of the disk reference
        (:func:`reference_read_Bps`)."""
        return reference_read_Bps(self.reference or {})

    def memory_copy_Bps(self) -> float | None:
        """The memory copy rate on every core, bytes per second (a staging copy's yardstick: torch copies with
        every core)."""
        return median(self.memory_copy_all_Bps)

    def codec_Bps(self, name: str | None) -> float | None:
        """The one-core rate of compression setting ``name``; None: no compression, or one not profiled."""
        return median((self.codecs_Bps or {}).get(name)) if name else None

    def rates(self) -> list[tuple[str, str, str, Rate]]:
        """(field, unit, what, its Rate) of every single rate the profile measured, in the record's order."""
        return [(name, unit, what, getattr(self, name)) for name, unit, what in rate_fields()
                if getattr(self, name) is not None]

    def reference_rates(self) -> dict[str, tuple[str, Rate]]:
        """The disk reference's durable write and cold read as rates: op -> (its fastest way, a Rate of that way's
        samples in bytes per second, its median the reference's own)."""
        ref, out = self.reference or {}, {}
        for op in ("write", "read"):
            if not ref.get(f"reference_{op}_Bps"):
                continue
            way = ref.get(f"reference_{op}_way") or "one stream"
            key = f"{op}_{ {'one stream': 'stream', 'mapped': 'mapped'}.get(way, 'parallel')}_s"
            xs = [ref["reference_bytes"] / s[key] for s in ref.get("reference_samples") or [] if s.get(key)]
            spread = (max(xs) - min(xs)) / ref[f"reference_{op}_Bps"] * 100 if xs else None
            out[op] = (way, Rate(ref[f"reference_{op}_Bps"], spread, tuple(xs)))
        return out


def reference_write_Bps(ref: dict) -> float | None:
    """A storage reference's durable write rate, bytes per second: the median of its faster way."""
    return ref.get("reference_write_Bps")


def reference_read_Bps(ref: dict) -> float | None:
    """A storage reference's read rate, bytes per second: its fastest sample of any way whose eviction was
    confirmed (its fastest way's median where the samples are not kept)."""
    times = [s[k] for s in ref.get("reference_samples") or [] if s.get("read_cold", True)
             for k in ("read_stream_s", "read_parallel_s", "read_mapped_s") if s.get(k)]
    if times and ref.get("reference_bytes"):
        return ref["reference_bytes"] / min(times)
    return ref.get("reference_read_Bps")


def disk_rates(env: dict | None) -> tuple[float | None, float | None]:
    """The disk's (write, read) rates of a run's environment record, bytes per second: its machine profile's
    (:meth:`MachineProfile.write_Bps`, :meth:`MachineProfile.read_Bps`), else, with no profile (on S3, or results
    written before the suite profiled its machine), its storage reference's by the same rules."""
    prof = MachineProfile.of_env(env)
    if prof is not None:
        return prof.write_Bps(), prof.read_Bps()
    return reference_write_Bps(env or {}), reference_read_Bps(env or {})


def as_profile(profile: MachineProfile | dict | None) -> MachineProfile | None:
    """A profile as the record, from the record itself or its JSON dict (callers that still hold the dict);
    None for none or an empty one."""
    if not profile:
        return None
    return profile if isinstance(profile, MachineProfile) else MachineProfile.from_dict(profile)


def field_docs() -> list[tuple[str, str, str, str]]:
    """(field, its type, unit, what it is) of every field of the record, in order: the docs' table (a field may
    also be None: not measured, or a run before it was)."""
    return [(f.name, str(f.type).removesuffix(" | None"), f.metadata["unit"], f.metadata["what"])
            for f in fields(MachineProfile)]


def rate_fields() -> list[tuple[str, str, str]]:
    """(field, unit, what) of every single Rate of the record, in order."""
    return [(f.name, f.metadata["unit"], f.metadata["what"]) for f in fields(MachineProfile)
            if f.metadata["kind"] == RATE]
