"""Where a run's answers are: its directory, each phase's results file, whether
a phase is complete, and the rows phases share.

A run is ``OUT/runs/<RUN_ID>/``: the executed notebooks, ``results/<slug>.jsonl``
(one file per phase), ``results-cloud/`` (4e's S3 rows, kept apart so local
comparisons never mix them in), ``figures/`` and, while measuring,
``checkpoints/``. The phase runner (:mod:`llama_ckpt.suite`) and the report
(:mod:`llama_ckpt.report`) both read runs through this module.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime
from pathlib import Path

from ..formats.base import Format
from ..registry import names
from ..results import Loaded, is_valid, read_results
from .phases import PHASES, Phase

REPO = Path(__file__).resolve().parent.parent.parent
DEFAULT_OUT = REPO / "saved_models"
PROFILE_FILE = "machine-profile.json"  # in a run's directory: its machine profile, measured by its first phase


def run_dir(out_dir: str | Path, run_id: str) -> Path:
    return Path(out_dir or DEFAULT_OUT) / "runs" / run_id


def latest_run(out_dir: str | Path) -> str | None:
    runs = Path(out_dir or DEFAULT_OUT) / "runs"
    ids = sorted(p.name for p in runs.iterdir() if p.is_dir()) if runs.is_dir() else []
    return ids[-1] if ids else None


def results_path(out_dir: str | Path, run_id: str, slug: str) -> Path:
    return run_dir(out_dir, run_id) / "results" / f"{slug}.jsonl"


STATES_DIR = "results-states"  # in a run's directory: one results file per state of 09 (suite.states), apart


def state_results_path(rdir: str | Path, state: str) -> Path:
    """The results file of 09's ``state`` (a name of ``suite.states.STATES``) in the run directory ``rdir``."""
    return Path(rdir) / STATES_DIR / f"{state}.jsonl"


def cloud_results_path(out_dir: str | Path, run_id: str, slug: str, delay_ms: float) -> Path:
    # beside, not inside, results/: the summary's local comparisons never mix in S3 rows
    return run_dir(out_dir, run_id) / "results-cloud" / f"{slug}-{delay_ms:g}ms.jsonl"


def ended(path: Path, phase: Phase | None = None, need: int | None = None) -> bool:
    """Whether a results file holds the end records that say its phase (or
    part of it) finished: ``need`` of them (default the phase's ``n_runs``),
    counted on the phase's ``done_key``."""
    if not path.is_file():
        return False
    key = phase.done_key if phase else "complete"
    ends = read_results([path]).ends
    return sum(bool(e.get(key)) for e in ends) >= (need if need is not None else phase.n_runs if phase else 1)


def phase_complete(out_dir: str | Path, run_id: str, slug: str) -> bool:
    """A phase's results are complete when its file ends with its end records
    (one per configuration; the claims' phase: its own, after its last round)."""
    return ended(results_path(out_dir, run_id, slug), next((p for p in PHASES.values() if p.slug == slug), None))


def notebook_ran_clean(path: Path) -> bool:
    """True when an executed notebook exists, papermill recorded no exception in it and no cell has an error
    output."""
    try:
        nb = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return False
    return not nb.get("metadata", {}).get("papermill", {}).get("exception") and not any(
        o.get("output_type") == "error" for c in nb.get("cells", []) for o in c.get("outputs", []))


def set_aside(path: Path) -> Path | None:
    """Move an interrupted try's results file aside (``*.incomplete-<time>``),
    so that it is never mixed in; returns where it went (None: there was none)."""
    if not path.exists():
        return None
    aside = path.with_name(path.name + f".incomplete-{datetime.now():%Y%m%d-%H%M%S}")
    shutil.move(path, aside)
    return aside


def run_results(out_dir: str | Path, run_id: str) -> tuple[Loaded, list[Path]]:
    """Every phase's rows and environment records of one run."""
    files = sorted((run_dir(out_dir, run_id) / "results").glob("*.jsonl"))
    return read_results(files), files


def cloud_rows(out_dir: str | Path, run_id: str) -> list[dict]:
    """Every cloud row of a run (all phases, all delays)."""
    files = sorted((run_dir(out_dir, run_id) / "results-cloud").glob("*.jsonl"))
    return read_results(files).measurements if files else []


def _key(a: Format | dict) -> tuple:
    knobs = a.knobs() if isinstance(a, Format) else a.get("knobs")
    return (a.name if isinstance(a, Format) else a["approach"], json.dumps(knobs, sort_keys=True, default=str))


def shared_rows(out_dir, run_id: str, slug: str, approaches: list[Format], model: str) -> dict[str, list[dict]]:
    """The valid rows other phases of this run measured of ``approaches`` (the
    same name and knobs) on the same model and weights, on this machine's
    disk, by one process: a configuration is measured once per run, and every
    phase that needs it shares its rows (each row names the phase that measured it)."""
    files = [f for f in sorted((run_dir(out_dir, run_id) / "results").glob("*.jsonl")) if f.stem != slug]
    want = {_key(a) for a in approaches}
    out: dict[str, list[dict]] = {}
    for r in read_results(files).measurements if files else []:
        if is_valid(r) and r["model"] == model and not r.get("world_size") and _key(r) in want:
            out.setdefault(r["approach"], []).append(r)
    return out


def in_order(rows: list[dict], model: str, approaches: list[Format]) -> list[dict]:
    """``rows`` of ``model``, in the phase's order of approaches, then by repeat."""
    rank = {a.name: i for i, a in enumerate(approaches)}
    return sorted((r for r in rows if r["model"] == model), key=lambda r: (rank.get(r["approach"], len(rank)),
                                                                             r.get("repeat") or 0))


def guide_rows(out_dir, run_id: str, model: str) -> list[dict]:
    """Every row of this run of the guide's approaches on ``model``, on this machine's disk, by one process."""
    guide = set(names(tag="guide"))
    loaded, _files = run_results(out_dir, run_id)
    return [r for r in loaded.measurements
            if r["model"] == model and r["approach"] in guide and not r.get("world_size")]
