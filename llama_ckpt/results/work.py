"""Each approach's work as a **cost card**, and the model that predicts a save's or load's time from a card, a
machine profile and a size (docs/decisions.md#work-model-2: the form, frozen before it was checked).

A card is one approach's step (``save``, ``load``) as work per byte of checkpoint payload, the median over its
verified single-process rows in the state the cards were taken in; :func:`predict` takes nothing from the row it
predicts: only the card, the target machine's profile and the payload size.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from ..errors import UserError
from ..fsutil import MEMORY_FS
from .bounds import PAGE, PREDICTION_TOLERANCE
from .files import read_results
from .profile import MachineProfile, as_profile, median
from .schema import is_valid
from .text import render

STEPS = ("save", "load")
TOLERANCE = PREDICTION_TOLERANCE  # a prediction holds where the measured median is within this share of it
# the model's parts, in the order the charts stack them -> what each is
PARTS = {
    "disk": "bytes that reached (save) or came from (load) storage, at the disk's rate",
    "page-cache copy": "bytes through write (save) or read (load) calls, at one thread's page-cache write rate, "
                       "over the cores the step uses",
    "memory faults": "fresh memory faulted in, at one thread's fill rate, over the cores the step uses",
    "own CPU": "the format's own CPU work (the card's CPU seconds less the two above), over the cores it uses",
    "files": "files created, at the file-create rate",
    "fsyncs": "fsync calls, at the fsync rate",
}
MIN_THREAD_S = 0.05  # a busiest thread below this much CPU (5 of the kernel's 10 ms ticks) tells no parallelism


@dataclass(frozen=True)
class Card:
    """One approach's step as work per byte of payload (see the module's text; ``per_B`` figures are per byte)."""

    approach: str
    step: str
    n: int  # rows it is the median of
    payload_bytes: int  # the median payload it was measured on
    stored_dtype: str | None
    time_per_B: float  # the measured seconds per byte (shown, never used by a prediction)
    cpu_per_B: float  # user + system CPU seconds
    call_per_B: float  # bytes through write (save) or read (load) calls
    fault_per_B: float  # bytes of fresh memory faulted in (minor faults x the page size)
    storage_per_B: float  # bytes that reached (save) or came from (load) storage
    files_per_B: float | None  # save: files created
    fsyncs_per_B: float | None  # save: fsync calls (None: the format's native ones unknown)
    own_cpu_per_B: float  # CPU seconds less the page-cache copy and the faults, at the card machine's rates
    parallel: float  # the cores its CPU work used: its CPU seconds over its busiest thread's (measured)
    overlap: float  # the share of the smaller of its CPU work and its disk time run under the other (card state)
    cpu_over_wall: float  # CPU seconds over wall time, as measured (shown)
    streams: int | None  # save: the threads the format declares it writes with
    held_per_B: float | None = None  # memory held above the step's start at its peak (shown: staging, buffers)
    huge_per_B: float | None = None  # anonymous memory in transparent huge pages the step left (shown: a load
    # whose format asks for them faults once per huge page, and its fault_per_B counts small pages)

    @classmethod
    def from_dict(cls, d: dict) -> Card:
        return cls(**{f.name: d.get(f.name) for f in fields(cls)})


# the fields a card must have for a prediction
NEEDED = ("approach", "step", "payload_bytes", "call_per_B", "fault_per_B", "storage_per_B", "own_cpu_per_B",
          "parallel", "overlap")


def _page(profile: MachineProfile) -> int:
    return profile.page_bytes or PAGE


def disk_Bps(profile: MachineProfile, step: str) -> float | None:
    """The model's disk rate for ``step``: a save's, the median durable write after a removal (the state a
    repeat saves in; the best durable write where that was not measured); a load's, the disk reference's read
    (the median of its fastest way: one stream, its threads or a mapping). On a file system held in memory (tmpfs) there
    is no disk: infinite (its writes and reads are the page-cache copies the CPU term counts)."""
    if profile.fs_type in MEMORY_FS:
        return math.inf
    if step == "save":
        return median(profile.durable_freed_Bps) or profile.write_Bps()
    return (profile.reference or {}).get("reference_read_Bps") or profile.read_Bps()


def _cpu_parts(per_B: dict, profile: MachineProfile) -> tuple[float, float] | None:
    """Seconds per byte of (page-cache copy, memory faults) on ``profile``'s machine, one thread."""
    copy, fill = median(profile.buffered_write_Bps), median(profile.fresh_memory_Bps)
    if not copy or not fill:
        return None
    return per_B["call"] / copy, per_B["fault"] / fill


def _io_seconds(per_B: dict, profile: MachineProfile, step: str, disk: float | None = None) -> dict[str, float] | None:
    """Seconds per byte of disk, files and fsyncs on ``profile``'s machine (the disk at ``disk`` B/s where
    given: the rounds' references; never on a file system held in memory)."""
    disk = disk_Bps(profile, step) if disk is None or profile.fs_type in MEMORY_FS else disk
    if not disk:
        return None
    out = {"disk": per_B["storage"] / disk}
    if step == "save":
        creates, syncs = median(profile.file_creates_per_s), median(profile.fsyncs_per_s)
        if (per_B.get("files") and not creates) or (per_B.get("fsyncs") and not syncs):
            return None  # a profile from before the suite measured a file's create and an fsync apart
        out["files"] = per_B["files"] / creates if per_B.get("files") else 0.0
        out["fsyncs"] = per_B["fsyncs"] / syncs if per_B.get("fsyncs") else 0.0
    return out


def _row_per_B(row: dict, step: str, page: int) -> dict | None:
    work, size, t = row.get(f"cpu_io_{step}") or {}, row.get("payload_bytes"), row.get(f"{step}_s")
    if not size or not t or work.get("user_s") is None:
        return None
    kind = "write" if step == "save" else "read"
    fsyncs, cpu = row.get("fsyncs_save"), work["user_s"] + work["sys_s"]
    # the threads that ended inside the step count as one (a lower bound on the parallelism)
    busiest = max(work.get("busiest_thread_s") or 0.0, work.get("ended_threads_s") or 0.0)
    return {"time": t / size, "cpu": cpu / size,
            "parallel": cpu / busiest if busiest and busiest >= MIN_THREAD_S else None,
            "call": work[f"{kind}_bytes"] / size, "fault": work["minor_faults"] * page / size,
            "storage": work[f"storage_{kind}_bytes"] / size,
            "files": row["n_files"] / size if step == "save" else None,
            "fsyncs": fsyncs / size if step == "save" and fsyncs is not None else None,
            "cpu_over_wall": (work["user_s"] + work["sys_s"]) / t,
            "huge": huge / size if (huge := work.get("huge_page_bytes")) is not None else None,
            "held": (peak - before) / size if (peak := row.get(f"peak_rss_{step}_bytes")) is not None
            and (before := row.get(f"rss_before_{step}_bytes")) is not None else None}


def median_of(xs: list) -> float | None:
    """The median of ``xs`` without its Nones; None where nothing is left."""
    xs = [x for x in xs or [] if x is not None]
    return statistics.median(xs) if xs else None


def card_of(rows: list[dict], step: str, profile: MachineProfile | dict) -> Card | None:
    """One approach's card for ``step`` from its verified single-process rows measured on ``profile``'s machine;
    None where no row counted its work or the profile lacks a rate the card needs."""
    prof = as_profile(profile)
    if prof is None:
        return None
    rows = [r for r in rows if is_valid(r) and not r.get("world_size")]
    got = [g for g in (_row_per_B(r, step, _page(prof)) for r in rows) if g]
    if not got:
        return None
    per_B = {k: median_of([g[k] for g in got]) for k in got[0]}
    if step == "save" and any(g["fsyncs"] is None for g in got):
        per_B["fsyncs"] = None
    parts, io = _cpu_parts(per_B, prof), _io_seconds(per_B, prof, step)
    if parts is None or io is None:
        return None
    own = max(0.0, per_B["cpu"] - sum(parts))
    parallel = min(prof.cores or 1, max(1.0, per_B["parallel"] or 1.0))  # unknown (no thread of 5 ticks): one
    cpu = (sum(parts) + own) / parallel
    smaller = min(cpu, io["disk"])
    overlap = min(1.0, max(0.0, (cpu + sum(io.values()) - per_B["time"]) / smaller)) if smaller > 0 else 0.0
    r0 = rows[0]
    return Card(approach=r0["approach"], step=step, n=len(got),
                payload_bytes=int(statistics.median(r["payload_bytes"] for r in rows if r.get("payload_bytes"))),
                stored_dtype=r0.get("stored_dtype"), time_per_B=per_B["time"], cpu_per_B=per_B["cpu"],
                call_per_B=per_B["call"], fault_per_B=per_B["fault"], storage_per_B=per_B["storage"],
                files_per_B=per_B["files"], fsyncs_per_B=per_B["fsyncs"], own_cpu_per_B=own, parallel=parallel,
                overlap=overlap, cpu_over_wall=per_B["cpu_over_wall"],
                streams=r0.get("write_streams") if step == "save" else None, held_per_B=per_B["held"],
                huge_per_B=per_B["huge"])


def cards(rows: list[dict], profile: MachineProfile | dict) -> list[Card]:
    """Every approach's save and load cards from ``rows`` (one run, one state) on ``profile``'s machine."""
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["approach"], []).append(r)
    return [c for name in by for step in STEPS if (c := card_of(by[name], step, profile)) is not None]


@dataclass(frozen=True)
class Prediction:
    """A predicted time and its parts (:data:`PARTS`, seconds, after the overlap is taken off the smaller of the
    CPU work and the disk; ``hidden``: the seconds it took off), the largest part the binding one."""

    approach: str
    step: str
    payload_bytes: int
    seconds: float
    parts: dict
    binding: str
    hidden: float = 0.0


def predict(card: Card, profile: MachineProfile | dict, payload_bytes: int,
            disk: float | None = None) -> Prediction | None:
    """``card``'s step on ``profile``'s machine at ``payload_bytes`` (docs/decisions.md#work-model-2); None where
    the profile lacks a rate the model needs. ``disk``: the disk's rate in B/s to take instead of the
    profile's (the form unchanged: the references beside the predicted state's rounds, :func:`rounds_disk`)."""
    prof = as_profile(profile)
    if prof is None:
        return None
    per_B = {"call": card.call_per_B, "fault": card.fault_per_B, "storage": card.storage_per_B,
             "files": card.files_per_B, "fsyncs": card.fsyncs_per_B}
    parts, io = _cpu_parts(per_B, prof), _io_seconds(per_B, prof, card.step, disk)
    if parts is None or io is None or not prof.cores:
        return None
    p = min(prof.cores, card.parallel)
    cpu = {"page-cache copy": parts[0] / p, "memory faults": parts[1] / p, "own CPU": card.own_cpu_per_B / p}
    cpu_s, disk_s = sum(cpu.values()) * payload_bytes, io["disk"] * payload_bytes
    hidden = card.overlap * min(cpu_s, disk_s)  # taken off the smaller of the two
    if disk_s <= cpu_s:
        disk_s -= hidden
        got = {k: v * payload_bytes for k, v in cpu.items()}
    else:
        got = {k: v * payload_bytes * (1 - hidden / cpu_s) for k, v in cpu.items()}
    got = {"disk": disk_s, **got}
    if card.step == "save":
        got.update(files=io["files"] * payload_bytes, fsyncs=io["fsyncs"] * payload_bytes)
    return Prediction(card.approach, card.step, payload_bytes, sum(got.values()), got, max(got, key=got.get),
                      hidden)


# -- files --------------------------------------------------------------------------------------------------------
def cards_json(got: list[Card], profile: MachineProfile | dict, run_id: str | None) -> str:
    """The cards with the profile of the machine they were measured on, as the JSON of a cards file."""
    return json.dumps({"run_id": run_id, "profile": as_profile(profile).to_dict(),
                       "cards": [asdict(c) for c in got]}, indent=1)


def write_cards(path: Path, got: list[Card], profile: MachineProfile | dict, run_id: str | None) -> None:
    """The cards with the profile of the machine they were measured on, as JSON at ``path``."""
    Path(path).write_text(cards_json(got, profile, run_id))


def read_cards(paths: list[Path]) -> tuple[list[Card], MachineProfile | None]:
    """Cards from a cards file (:func:`write_cards`), or made from results files (their rows and the machine
    profile of their environment record): (cards, the machine they were measured on)."""
    paths = [Path(p) for p in paths]
    for p in paths:
        if not p.is_file():
            raise UserError(f"cards {p}: no such file")
    if len(paths) == 1 and paths[0].suffix == ".json":
        try:
            d = json.loads(paths[0].read_text())
            got = [Card.from_dict(c) for c in d["cards"]]
            if missing := sorted({k for c in got for k in NEEDED if getattr(c, k) is None}):
                bad = sum(any(getattr(c, k) is None for k in NEEDED) for c in got)
                raise ValueError(f"{bad} of {len(got)} cards without {', '.join(missing)}; cards of an older form "
                                 "of the model are made again from their run's results .jsonl")
            return got, MachineProfile.from_dict(d["profile"])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UserError(f"cards {paths[0]}: not a cost-card file ({exc})") from None
    loaded = read_results(paths)
    prof = next((MachineProfile.of_env(e) for e in loaded.environments if e.get("machine")), None)
    if prof is None:
        raise UserError(f"cards {', '.join(map(str, paths))}: no machine profile in the results' environment "
                        "record (a run with --no-reference, or on S3): no cards")
    return cards(loaded.measurements, prof), prof


def error(measured: float | None, predicted: float | None) -> float | None:
    """Measured over predicted, less 1 (+0.3: 30% slower than predicted); None where either is unknown."""
    if not measured or not predicted or math.isnan(predicted):
        return None
    return measured / predicted - 1


def rounds_disk(rows: list[dict], step: str, profile: MachineProfile | dict | None = None) -> float | None:
    """The median disk rate of the references taken beside ``rows``' rounds (``disk_state``; a save's durable
    write, a load's cold read), each round once: separate measurements, nothing from the rows' own work; None
    where the rows have none. A load takes the faster of it and ``profile``'s read (the references read in one
    stream; the profile's is the fastest of one stream, threads and a mapping), as the bounds do."""
    by_round = {(r.get("phase"), r["disk_state"]["round"]): r["disk_state"] for r in rows if r.get("disk_state")}
    rates = [x for s in by_round.values() if (x := s.get("write_Bps" if step == "save" else "read_Bps"))]
    if not rates:
        return None
    got = statistics.median(rates)
    prof = as_profile(profile)
    return max(got, disk_Bps(prof, step) or 0) if step == "load" and prof else got


def check(got: list[Card], rows: list[dict], profile: MachineProfile | dict) -> list[dict]:
    """Each card's step predicted for ``rows`` (another state, measured on ``profile``'s machine) at the
    payload those rows measured, beside their measured median: one dict per approach and step with
    ``measured_s``, ``predicted_s``, ``error`` (:func:`error`), ``binding`` and ``n`` (rows); and the same
    prediction with the disk's rate of the references beside the state's rounds (:func:`rounds_disk`):
    ``predicted_rounds_s``, ``error_rounds`` (None where the state has none)."""
    single = [r for r in rows if not r.get("world_size")]
    disks = {step: rounds_disk(single, step, profile) for step in STEPS}  # the state's, the same for every card
    out = []
    for c in got:
        rs = [r for r in single if r["approach"] == c.approach and is_valid(r)
              and r.get(f"{c.step}_s") and r.get("payload_bytes")]
        if not rs:
            continue
        measured = statistics.median(r[f"{c.step}_s"] for r in rs)
        payload = int(statistics.median(r["payload_bytes"] for r in rs))
        pred = predict(c, profile, payload)
        near = predict(c, profile, payload, disks[c.step]) if disks[c.step] else None
        out.append({"approach": c.approach, "step": c.step, "n": len(rs), "measured_s": measured,
                    "predicted_s": pred.seconds if pred else None,
                    "error": error(measured, pred.seconds if pred else None),
                    "binding": pred.binding if pred else None,
                    "predicted_rounds_s": near.seconds if near else None,
                    "error_rounds": error(measured, near.seconds if near else None)})
    return out


def payload_of(source, card: Card) -> int:
    """The payload bytes of model ``source`` (a :class:`~llama_ckpt.model.ModelSource`) stored as ``card``'s
    approach stores it, as far as the card says: every floating tensor in the card's stored dtype, the rest as
    they are (a registered approach's own count, ``Format.payload_bytes``, also pads edge chunks: the CLI uses it)."""
    import torch

    dtype = getattr(torch, card.stored_dtype or "", None)
    size = dtype.itemsize if isinstance(dtype, torch.dtype) else None
    return sum(s.numel * (size if size and s.dtype.is_floating_point else s.dtype.itemsize) for s in source.specs)


def prediction_text(got: list[Card], preds: list[Prediction | None]) -> str:
    """The predictions as a text table: approach, step, payload, predicted seconds, the binding part and every
    part's seconds (``-``: the profile lacks a rate the model needs)."""
    body = []
    for c, p in zip(got, preds):
        parts = [f"{p.parts[k]:.3g}" if p and k in p.parts else "-" for k in PARTS]
        body.append([c.approach, c.step, f"{(p.payload_bytes if p else c.payload_bytes) / 1e9:.2f}",
                     f"{p.seconds:.3g}" if p else "-", p.binding if p else "-", *parts])
    return render(["approach", "step", "GB", "predicted s", "binding", *[f"{k} s" for k in PARTS]], body)
