"""The states of this machine the work model is checked in (docs/decisions.md#work-model-2): each a run of
``python -m llama_ckpt run`` in a process of its own, so that what makes the state (its CPU affinity, a tmpfs
output, the disk's cap, another model) holds for the whole process and for its machine profile, which every
such run measures where its checkpoints go. Their results are kept apart from the run's phases
(``results-states/``), so that no phase takes a row of another state for one of its own."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .. import fsutil
from ..errors import UserError
from ..results import read_results
from ..results.profile import MachineProfile
from ..study import runs

ROW_LINE = re.compile(r"^\s+\S+ #\d+: ")  # a `run`'s progress line of one measured row
MEMORY_ROOT = Path("/dev/shm")  # where the no-disk state's checkpoints go (a tmpfs)
CAP_MBPS = 300  # the slower disk's cap, MB/s
BIG_MODEL = "open_llama_3b"  # the other size
BIG_REPEATS = 2  # its repeats (each save and load of it takes tens of seconds)


@dataclass(frozen=True)
class State:
    name: str
    what: str  # what differs from the state the cards were taken in
    args: tuple[str, ...]  # the `run` options that make it (beside the approaches, model, repeats and output)


STATES = {s.name: s for s in (
    State("one-core", "the run on one CPU (its affinity): the CPU and parallel terms change, the disk does not",
          ("--cpus", "1")),
    State("no-disk", f"the checkpoints on a tmpfs ({MEMORY_ROOT}): the disk term vanishes, the format's own work "
                     "binds; its loads are from memory, never cold", ()),
    State("slow-disk", f"the checkpoints' disk capped at {CAP_MBPS} MB/s (`--disk-cap`, root and cgroup v1 only)",
          ("--disk-cap", str(CAP_MBPS))),
    State("size", f"{BIG_MODEL} predicted from the cards of the run's model, then measured ({BIG_REPEATS} repeats)",
          ()),
)}


def parse_states(text: str) -> list[State]:
    """``one-core,no-disk`` (or ``all``, or ``none``) -> the states, in the catalogue's order."""
    names = [x.strip() for x in str(text).split(",") if x.strip()]
    if names == ["all"]:
        return list(STATES.values())
    if names == ["none"]:
        return []
    if bad := [n for n in names if n not in STATES]:
        raise UserError(f"states: no state {', '.join(bad)}; the states: {', '.join(STATES)}, all or none")
    return [s for s in STATES.values() if s.name in names]


def results_path(rdir: Path, state: State) -> Path:
    return runs.state_results_path(rdir, state.name)


def memory_out(run_id: str) -> Path:
    return MEMORY_ROOT / f"llama_ckpt-{run_id}-no-disk"


def command(state: State, approaches: list[str], model: str, repeats: int, rdir: Path, run_id: str,
            prepare: str) -> list[str]:
    """The `run` command line of ``state``."""
    size = state.name == "size"
    out = memory_out(run_id) if state.name == "no-disk" else Path(rdir) / "states" / state.name
    return [sys.executable, "-m", "llama_ckpt", "run", "--approach", ",".join(approaches),
            "--model", BIG_MODEL if size else model, "--repeats", str(BIG_REPEATS if size else repeats),
            "--out", str(out), "--results", str(results_path(rdir, state)), "--run-id", f"{run_id}-{state.name}",
            "--prepare", prepare, *state.args]


def why_not(state: State) -> str | None:
    """Why ``state`` cannot be measured on this machine (None: it can)."""
    if state.name == "no-disk" and not (MEMORY_ROOT.is_dir() and fsutil.in_memory(MEMORY_ROOT)):
        return f"{MEMORY_ROOT} is not a tmpfs here"
    if state.name == "slow-disk" and os.geteuid() != 0:
        return "capping the disk needs root"
    return None


def measure(state: State, approaches: list[str], model: str, repeats: int, rdir: Path, run_id: str, prepare: str,
            say=print) -> str | None:
    """``state`` measured by a `run` of its own, its progress lines said as they come; None, or why it was not
    (its last line of error)."""
    if why := why_not(state):
        return why
    path = results_path(rdir, state)
    path.parent.mkdir(parents=True, exist_ok=True)
    if aside := runs.set_aside(path):
        say(f"{state.name}: an interrupted try's rows were moved to {aside}")
    remove_leftovers(run_id)  # a killed try's checkpoints in memory
    cmd = command(state, approaches, model, repeats, rdir, run_id, prepare)
    say(f"{state.name}: {state.what}")
    last = []
    try:
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
            try:
                for line in proc.stdout:
                    last = (last + [line.rstrip()])[-3:]
                    if ROW_LINE.match(line) or line.startswith(("run ", "skipped", "before each", "machine profile")):
                        say(f"  [{state.name}] {line.rstrip()}")
            except BaseException:  # interrupted: the state's run stops with it, before its files are removed
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                raise
        code = proc.returncode
    finally:
        remove_leftovers(run_id)
    if code not in (0, 1) or not path.is_file():  # 1: it ran, and some row did not verify (its rows say which)
        return next((x for x in reversed(last) if x), f"exit {code}")
    return None


def measured(rdir: Path, state: State) -> tuple[list[dict], MachineProfile | None]:
    """A state's rows and the machine profile its run measured (none: not measured)."""
    path = results_path(rdir, state)
    if not path.is_file():
        return [], None
    loaded = read_results([path])
    prof = next((MachineProfile.of_env(e) for e in loaded.environments if e.get("machine")), None)
    return loaded.measurements, prof


def done(rdir: Path, state: State) -> bool:
    """Whether ``state``'s run of this run finished (its results file ends with its end record)."""
    return runs.ended(results_path(rdir, state))


def remove_leftovers(run_id: str) -> None:
    """The no-disk state's directory in memory (its checkpoints hold memory until removed), after its run or
    where a killed try left it."""
    if memory_out(run_id).exists():
        shutil.rmtree(memory_out(run_id), ignore_errors=True)
