"""The shortest time a save's or load's counted work can take on the machine
its run profiled, and which limit sets it.

Each limit turns one part of a row's counted work (``cpu_io_save`` /
``cpu_io_load``: bytes that went to or came from storage, bytes copied
through write calls, page faults, CPU seconds; the files it created; the
bytes it compressed) into seconds at the rate the machine profile measured
(:mod:`llama_ckpt.bench.machine`), every core working where the work can be
spread over them. The work can hardly take less than the largest of these:
that is the row's **bound** (an estimate, not a proof: the file rate was
measured with an fsync per file, so a format that creates many files and
syncs once can beat it; and a rate measured in one state of the disk may
not hold in another), its limit the **binding** one, and the measured time
over the bound its **share** (1: as fast as this machine allows; 3: a third
of the time goes to the binding limit, the rest to waiting, to work no
limit counts, or to limits taken one after another instead of together).

A time prediction is not made here: a row's own counted work says how long
that row took, not how long another would. The work model
(:mod:`llama_ckpt.results.work`, docs/decisions.md#work-model-2) predicts from
an approach's cost card, taken in one state, for another state or machine.
"""

from __future__ import annotations

import statistics

from .profile import MachineProfile, as_profile, median

PAGE = 4096  # a minor fault's bytes for a profile that did not record its machine's page size (before it did)
PREDICTION_TOLERANCE = 0.25  # a prediction (results.work) holds when the measured median is within this share of it

# limit -> what it counts, for the tables' legend
LIMITS = {
    "disk write": "bytes that went to storage, at the durable write rate of the short reference taken before the "
                  "row's round from the same start as its saves (`disk_state`); for a row without one, the best "
                  "median durable write rate the profile saw (to new space, to freed space, or the disk "
                  "reference's: `MachineProfile.write_Bps`, the share-of-disk columns' rate). The round's is one "
                  "stream: a save that writes with several may beat it (`x_bound` below 1)",
    "disk read": "bytes that came from storage, at the faster of the fastest cold read the profile's disk "
                 "reference saw (any sample, in one stream, by its threads or through a mapping: "
                 "`MachineProfile.read_Bps`, the "
                 "share-of-disk columns' rate) and the one-stream cold read of the row's round reference "
                 "(`disk_state`)",
    "page-cache copy": "bytes through write calls, at one thread's page-cache write rate times the threads the save "
                       "writes with (`write_streams`, at most the cores; the cores where not known)",
    "fresh memory": "minor page faults x the machine's page size (`MachineProfile.page_bytes`), at the fresh-memory "
                    "fill rate times the cores",
    "files": "files created, at the small-file create + write + fsync rate",
    "CPU": "user + system CPU seconds over the cores",
    "compression": "bytes compressed, at the codec's one-core rate times the cores",
}


Profile = MachineProfile | dict | None  # the record, or its JSON dict (callers that still hold the dict)


def best_read(profile: Profile) -> float | None:
    """The fastest cold read of the profile's disk reference, bytes per second
    (:meth:`MachineProfile.read_Bps <llama_ckpt.results.profile.MachineProfile.read_Bps>`)."""
    prof = as_profile(profile)
    return prof.read_Bps() if prof else None


# the counted work a bound needs: rows written before the suite counted it get none
NEEDS = {"save": ("storage_write_bytes", "minor_faults"), "load": ("storage_read_bytes", "minor_faults")}


ROUND = "the round's reference"  # disk_rate's name for a rate taken beside the row's round


def disk_rate(row: dict, step: str, profile: Profile) -> tuple[float | None, str | None]:
    """The disk's rate a row's ``step`` is bound by, bytes per second, and where it comes from (None, None where
    unknown). A save: the durable write of the row's round reference (``disk_state``, :data:`ROUND`: the state
    its saves start from), else the profile's (:meth:`MachineProfile.write_Bps`, its source named). A load: the
    faster of the profile's cold read (one stream, threads or a mapping) and the round's (one stream): a one-stream read
    alone would put a loader that reads with threads below its bound."""
    state, prof = row.get("disk_state") or {}, as_profile(profile)
    if step == "save":
        if state.get("write_Bps"):
            return state["write_Bps"], ROUND
        rate, source = (prof.write_Bps(), prof.write_source()) if prof else (None, None)
    else:
        got = {ROUND: state.get("read_Bps"), "disk reference (fastest cold read)": prof.read_Bps() if prof else None}
        got = {k: v for k, v in got.items() if v}
        source = max(got, key=got.get) if got else None
        rate = got.get(source)
    return (rate, source) if rate else (None, None)


def limits(row: dict, step: str, profile: Profile) -> dict[str, float]:
    """Seconds each limit needs for ``row``'s counted ``step`` (save, load) work
    on the machine of ``profile``; limits whose work or rate is unknown are left out."""
    work = row.get(f"cpu_io_{step}") or {}
    prof = as_profile(profile)
    if prof is None or any(work.get(k) is None for k in NEEDS[step]):
        return {}
    cores = prof.cores
    out: dict[str, float] = {}
    disk, _source = disk_rate(row, step, prof)
    if step == "save":
        if disk:
            out["disk write"] = work["storage_write_bytes"] / disk
        copy = median(prof.buffered_write_Bps)
        if copy:
            out["page-cache copy"] = work["write_bytes"] / (copy * min(cores, row.get("write_streams") or cores))
        files = median(prof.small_files_per_s)
        if files and row.get("n_files"):
            out["files"] = row["n_files"] / files
        codec = prof.codec_Bps((row.get("knobs") or {}).get("compression"))
        if codec and row.get("payload_bytes"):
            out["compression"] = row["payload_bytes"] / (codec * cores)
    elif disk:
        out["disk read"] = work["storage_read_bytes"] / disk
    fresh = median(prof.fresh_memory_Bps)
    if fresh:
        out["fresh memory"] = work["minor_faults"] * (prof.page_bytes or PAGE) / (fresh * cores)
    out["CPU"] = (work["user_s"] + work["sys_s"]) / cores
    return out


def _bound(lim: dict[str, float]) -> tuple[float | None, str | None]:
    if not lim:
        return None, None
    name = max(lim, key=lim.get)
    return lim[name], name


def bound(row: dict, step: str, profile: Profile) -> tuple[float | None, str | None]:
    """(the shortest time ``row``'s ``step`` work can take, the limit that sets it); (None, None) where unknown."""
    return _bound(limits(row, step, profile))


def approach_bounds(rows: list[dict], step: str, profile: Profile) -> dict | None:
    """One approach's rows: the median measured time, the median bound, the
    limit that binds most often (ties: the larger median), the median share
    (time / bound) and every limit's median seconds."""
    profile = as_profile(profile)
    each = [(r[f"{step}_s"], limits(r, step, profile)) for r in rows if r.get(f"{step}_s") and r.get("verified")]
    got = [(t, *_bound(lim), lim) for t, lim in each]
    got = [g for g in got if g[1]]
    if not got:
        return None
    names = [g[2] for g in got]
    every = {k: statistics.median(g[3][k] for g in got if k in g[3]) for k in LIMITS if any(k in g[3] for g in got)}
    binding = max(set(names), key=lambda n: (names.count(n), every.get(n, 0)))
    time_s = statistics.median(g[0] for g in got)
    return {"time_s": time_s, "bound_s": statistics.median(g[1] for g in got),
            "binding": binding, "share": statistics.median(g[0] / g[1] for g in got), "limits_s": every,
            "n": len(got)}
