"""A checkpoint location in a local directory (or any mounted file system
every rank can see: NFS, Lustre)."""

from __future__ import annotations

import errno
import os
import time
import uuid
from pathlib import Path

from .. import fsutil
from .base import TMP_TAG, Footprint, Location, Writer

DISCARD_S = 5.0  # how long a failed save's staging is removed again while a writer's threads still write into it


class _FileWriter(Writer):
    def __init__(self, path: Path):
        self.path = path
        self.f = open(path, "wb")

    def write(self, data) -> int:
        return self.f.write(data)

    def tell(self) -> int:
        return self.f.tell()

    def flush(self) -> None:
        self.f.flush()

    def writable(self) -> bool:
        return True

    def finish(self) -> None:
        if self.f.closed:
            return
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()

    def abort(self) -> None:
        self.f.close()


class LocalDir(Location):
    reference_kind = "disk"

    def __init__(self, path):
        self.path = Path(path)

    def __truediv__(self, part: str) -> "LocalDir":
        return LocalDir(self.path / part)

    def __str__(self) -> str:
        return str(self.path)

    def __eq__(self, other) -> bool:
        return isinstance(other, LocalDir) and self.path == other.path

    def __hash__(self) -> int:
        return hash(self.path)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def parent(self) -> "LocalDir":
        return LocalDir(self.path.parent)

    def row_fields(self) -> dict:
        return {"storage": "local", "s3_delay_ms": None, "medium": "memory" if fsutil.in_memory(self.path) else "disk"}

    def exists(self) -> bool:
        return self.path.exists()

    def has(self, rel: str) -> bool:
        return (self.path / rel).is_file()

    def read_bytes(self, rel: str) -> bytes:
        return (self.path / rel).read_bytes()

    def open_read(self, rel: str):
        return open(self.path / rel, "rb", buffering=0)

    def open_write(self, rel: str) -> Writer:
        (self.path / rel).parent.mkdir(parents=True, exist_ok=True)
        return _FileWriter(self.path / rel)

    def local_file(self, rel: str = "") -> Path:
        return self.path / rel if rel else self.path

    def where(self, rel: str = "") -> str:
        return str(self.path / rel) if rel else str(self.path)

    def kvstore(self, sub: str = "") -> dict:
        root = self.path.resolve()  # OCDBT needs an absolute path
        return {"driver": "file", "path": f"{root}/{sub}/" if sub else f"{root}/"}

    def ts_context(self, concurrency: int, file_io: dict | None = None) -> dict:
        return {"file_io_concurrency": {"limit": concurrency}, "file_io_sync": True, **(file_io or {})}

    def sync(self) -> None:
        fsutil.fsync_tree(self.path)

    def footprint(self, sub: str = "") -> Footprint:
        return fsutil.footprint(self.path / sub if sub else self.path)

    def evict(self):
        return fsutil.evict_and_confirm(self.path)

    def remove(self) -> None:
        fsutil.remove(self.path)

    def discard(self, staged: "Location") -> None:
        """Remove what a failed save left. A writer's threads may still be
        finishing a file in it (TensorStore's I/O after one of its writes
        failed): the removal is tried again while the tree is not empty, up
        to ``DISCARD_S``, and once more after it looked gone. A writer still
        writing after that leaves a staging directory, which the next run
        removes as a stale save."""
        deadline = time.monotonic() + DISCARD_S
        while True:
            try:
                staged.remove()
            except OSError as exc:  # ENOENT: a file renamed away (a writer's temporary) while the tree is walked
                if exc.errno not in (errno.ENOTEMPTY, errno.ENOENT) or time.monotonic() > deadline:
                    raise
            time.sleep(0.05)  # a file a late write put back is removed by the next turn
            if not staged.path.exists():
                return
            if time.monotonic() > deadline:
                staged.remove()
                return

    def stage(self) -> "LocalDir":
        if self.path.exists():
            raise FileExistsError(f"checkpoint path {self.path} already exists")
        tmp = self.path.with_name(f"{self.path.name}{TMP_TAG}{uuid.uuid4().hex[:8]}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        return LocalDir(tmp)

    def publish(self, staged: "LocalDir", files: dict[str, str]) -> None:
        """Every file durable, every directory entry fsynced, the marker
        (the last of ``files``) last, then the rename into place."""
        items = list(files.items())
        for rel, text in items[:-1]:
            _write_durably(staged.path / rel, text)
        for root, _dirs, _files in os.walk(staged.path):  # directory entries (files fsynced themselves)
            fsutil.fsync_path(Path(root))
        rel, text = items[-1]
        _write_durably(staged.path / rel, text)
        fsutil.fsync_path(staged.path)
        os.rename(staged.path, self.path)
        fsutil.fsync_path(self.path.parent)

    def stale_saves(self) -> list["LocalDir"]:
        root = self.path
        return [LocalDir(p) for p in sorted(root.rglob(f"*{TMP_TAG}*")) if p.is_dir()] if root.is_dir() else []

    def preflight(self, say) -> None:
        fsutil.check_writable(self.path)


def _write_durably(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())

