"""Results files: JSON Lines appended and flushed as each row finishes, read
back with their warnings, grouped by run; which runs did not finish."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from ..errors import UserError


class ResultsWriter:
    """Appends rows to a JSON Lines file, flushed and fsynced one by one."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, row: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())


@dataclass
class Loaded:
    measurements: list[dict]
    environments: list[dict]
    warnings: list[str]
    ends: list[dict] = field(default_factory=list)
    training: list[dict] = field(default_factory=list)  # 07-training's rows (record "training")
    sustained: list[dict] = field(default_factory=list)  # checkpoints saved back to back (record "sustained")
    disk_states: list[dict] = field(default_factory=list)  # the disk reference beside each round (record "disk_state")


def read_results(paths: Iterable[Path]) -> Loaded:
    """Read results files; a line that is not a JSON object is skipped with a
    warning naming the file and line, the rest is used."""
    out = Loaded([], [], [])
    for p in paths:
        p = Path(p)
        if not p.is_file():
            raise UserError(f"results file {p}: no such file")
        with open(p) as f:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    if not isinstance(row, dict):
                        raise ValueError("not an object")
                except ValueError as exc:
                    out.warnings.append(f"{p}:{i}: skipped corrupt line ({exc})")
                    continue
                if row.get("record") == "environment":
                    out.environments.append(row)
                elif row.get("record") == "measurement":
                    out.measurements.append(row)
                elif row.get("record") == "end":
                    out.ends.append(row)
                elif row.get("record") == "training":
                    out.training.append(row)
                elif row.get("record") == "sustained":
                    out.sustained.append(row)
                elif row.get("record") == "disk_state":
                    out.disk_states.append(row)
                else:
                    out.warnings.append(f"{p}:{i}: skipped line with unknown record {row.get('record')!r}")
    return out


def group_by_run(rows: list[dict]) -> dict[str, list[dict]]:
    runs: dict[str, list[dict]] = {}
    for r in rows:
        runs.setdefault(r.get("run_id") or "?", []).append(r)
    return runs


def incomplete_runs(loaded: "Loaded") -> list[str]:
    """Run ids with measurements but no complete end record."""
    done = {e.get("run_id") for e in loaded.ends if e.get("complete", True)}
    return sorted({r.get("run_id") for r in loaded.measurements} - done)
