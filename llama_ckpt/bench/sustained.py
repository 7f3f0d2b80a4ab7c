"""MLPerf Storage's checkpoint pattern on one approach: saved several times in
a row with nothing between the saves (no cache drop, no trim, no pause), the
sustained rate beside the isolated saves of the rounds, then every checkpoint
read back cold, each after its pages were evicted (``run --checkpoint-workload
N``, 05-formats)."""

from __future__ import annotations

import gc
import time

from .. import fsutil
from ..errors import FAILURES
from ..formats.base import Format
from ..model import ModelSource
from ..recorders import MachineBusy, release_memory
from ..results import sustained_row
from ..store import Location
from . import scaffold
from .scaffold import DISK_HEADROOM, RunLog, describe_error, now


def measure_sustained(approach: Format, source: ModelSource, expected: dict, root: Location, n: int, run_id: str,
                      opts) -> dict:
    """``n`` checkpoints of ``approach`` saved back to back, each to its own
    place, with nothing between them: the sustained rate beside the isolated
    saves of the rounds. The first starts from the same state as every
    isolated save (``opts.start_state``). One copy of the source is held
    through all of them, as a training run holds its state (an isolated save
    hands the save its only copy). Then each checkpoint, in the order saved,
    is evicted from the caches, loaded (timed, as MLPerf Storage reads its
    checkpoints back after a cache drop) and checked against the source; all
    are removed. One ``sustained`` record (``opts``: the run's
    :class:`.measure.Options`)."""
    exp = expected[approach.stored_dtype]
    digests = {k: e.digest for k, e in exp.items()}
    locs = [root / f"{approach.name}-in-a-row-{i + 1}" for i in range(n)]
    base = dict(run_id=run_id, approach=approach.name, model=source.name, weights=source.weights, phase=opts.phase,
                knobs=approach.knobs(), n_saves=n)
    stage, k, saves, loads, cold = "save", 0, [], [], []
    try:
        for loc in locs:
            loc.remove()
        base.update(opts.start_state(locs[0]))
        sd = source.materialize()
        release_memory()
        with MachineBusy() as busy:
            for k, loc in enumerate(locs):  # noqa: B007 - k: the checkpoint an error row names
                t0 = time.perf_counter()
                approach.save(dict(sd), loc, digests=digests)  # a save empties the dict it is given, not the tensors
                saves.append(time.perf_counter() - t0)
        base["busy"] = busy.result
        del sd
        release_memory()
        on_disk = sum(loc.footprint().bytes_on_disk for loc in locs)
        stage = "load"
        for k, loc in enumerate(locs):
            got = scaffold.timed_load(lambda at=loc: approach.load(at), loc, exp)
            loads.append(got.seconds)
            cold.append(got.cold)
            if not got.verdict.verified:
                return sustained_row(**base, saves_s=saves, loads_s=loads, loads_cold=_all_cold(cold),
                                     bytes_on_disk=on_disk, verified=False,
                                     error=f"checkpoint {k + 1} of {n}: verification failed: {got.verdict.summary()}",
                                     finished_at=now())
        return sustained_row(**base, saves_s=saves, loads_s=loads, loads_cold=_all_cold(cold), bytes_on_disk=on_disk,
                             verified=True, finished_at=now())
    except (KeyboardInterrupt, SystemExit):
        raise
    except FAILURES as exc:
        return sustained_row(**base, saves_s=saves or None, loads_s=loads or None,
                             loads_cold=_all_cold(cold) if loads else None, verified=False,
                             error=f"{stage} of checkpoint {k + 1} of {n} failed: {describe_error(exc, locs[k])}",
                             finished_at=now())
    finally:
        gc.collect()
        for loc in locs:
            try:
                loc.remove()
            except FAILURES:
                pass  # the store went away: the record says why


def _all_cold(cold: list[bool | None]) -> bool | None:
    """Whether every load's eviction was confirmed (None: none was asked or could be told, as from memory)."""
    if any(c is False for c in cold):
        return False
    return True if cold and all(c is True for c in cold) else None


def all_in_a_row(approaches: list[Format], source: ModelSource, expected: dict, root: Location, run_id: str, opts,
                 log: RunLog, say) -> None:
    """``approaches`` back to back, each as many times in a row as the disk holds together (at most
    ``opts.sustained_saves``)."""
    local = root.local_file()
    for a in approaches:
        why = scaffold.memory_skips([a], source, held=source.nbytes).get(a.name)  # the held copy beside its peak
        if why:
            say(f"{a.name} back to back: skipped, holding the source beside its saves: {why}")
            continue
        n = opts.sustained_saves
        if local is not None:
            one = a.estimate_bytes(source.specs, fsutil.block_size(local.parent))
            n = min(n, max(0, (fsutil.free_bytes(local.parent) - DISK_HEADROOM) // max(one, 1)))
        if n < 2:
            say(f"{a.name} back to back: skipped, the disk cannot hold two of its checkpoints at once")
            continue
        rec = measure_sustained(a, source, expected, root, n, run_id, opts)
        log.write(rec)
        took = ", ".join(f"{x:.2f}" for x in rec["saves_s"] or [])
        say(f"  {a.name} back to back: " + (f"{n} saves in a row, {took} s; "
                                             f"read back cold, {', '.join(f'{x:.2f}' for x in rec['loads_s'])} s; "
                                             "every one verified" if rec["verified"]
                                             else "ERROR " + rec["error"]))
