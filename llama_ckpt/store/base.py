"""Where a checkpoint lives: the one interface every format and the
measurement protocol use, so that none of them asks which kind it has.

A :class:`Location` is a directory on a local file system
(:class:`~llama_ckpt.store.local.LocalDir`) or a prefix in an S3 bucket
(:class:`~llama_ckpt.store.s3.S3Prefix`). It names files inside it (``rel``
paths), reads and writes them, gives TensorStore its kvstore and context,
measures its footprint, evicts its bytes from the caches before a cold load,
and carries the atomic-commit protocol, as Orbax's temporary paths do:

- ``stage()`` is where a save writes: a temporary sibling ``NAME.tmp-ID``
  on a file system, the prefix itself on an object store (which has no
  rename);
- ``publish(staged, files)`` writes the small closing files in order (the
  manifest, then the commit marker :data:`MARKER`), each durable before the
  next, then makes the checkpoint visible: a rename on a file system; on an
  object store the marker, one PUT, is the commit.

A location without :data:`MARKER` is an interrupted save: never loaded or
measured, and removed by the next run (``stale_saves``).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import IO

from ..fsutil import Footprint

MARKER = "COMMITTED"  # written last: a checkpoint without it does not exist
TMP_TAG = ".tmp-"  # <name>.tmp-<id>: where a save writes before it is published (file systems)


class Writer:
    """A file being written: ``with loc.open_write(rel) as f: ...; f.finish()``.
    ``finish()`` makes the bytes durable (fsync; completing an upload);
    leaving the block without it (an exception) discards what was written."""

    def write(self, data) -> int:
        raise NotImplementedError

    def finish(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        if exc_type is not None:
            self.abort()
        else:
            self.finish()
        return False


class Location:
    """The contract of a checkpoint's storage location (see the module doc)."""

    reference_kind: str  # what the reference measures: "disk" or "s3 object"

    # -- naming --------------------------------------------------------------
    def __truediv__(self, part: str) -> "Location":
        raise NotImplementedError

    @property
    def name(self) -> str:
        raise NotImplementedError

    @property
    def parent(self) -> "Location":
        raise NotImplementedError

    def row_fields(self) -> dict:
        """What a result row records about the storage: ``storage``, ``s3_delay_ms`` and ``medium`` (``disk``;
        ``memory``: a file system held in memory, such as tmpfs, where no load is cold; ``object store``)."""
        raise NotImplementedError

    def is_staging(self) -> bool:
        return TMP_TAG in self.name

    # -- files inside ----------------------------------------------------------
    def exists(self) -> bool:
        raise NotImplementedError

    def has(self, rel: str) -> bool:
        """A file ``rel`` exists inside."""
        raise NotImplementedError

    def read_bytes(self, rel: str) -> bytes:
        raise NotImplementedError

    def read_text(self, rel: str) -> str:
        return self.read_bytes(rel).decode()

    def open_read(self, rel: str) -> IO[bytes]:
        """A stream of the file's bytes (``read(n)`` until empty)."""
        raise NotImplementedError

    def open_write(self, rel: str) -> Writer:
        raise NotImplementedError

    def local_file(self, rel: str = "") -> Path | None:
        """The local path of ``rel``, for libraries that only take a path or
        memory-map a file; None where there is none (an object store)."""
        return None

    def fsspec(self) -> tuple[str, dict] | None:
        """(URL, storage options) for libraries that reach storage through
        fsspec (DCP's fsspec writer and reader) where ``local_file()`` is
        None; None on a local file system."""
        return None

    def where(self, rel: str = "") -> str:
        """How to name ``rel`` inside this location in a message."""
        return f"{self}/{rel}" if rel else str(self)

    # -- TensorStore -------------------------------------------------------------
    def kvstore(self, sub: str = "") -> dict:
        """TensorStore's kvstore spec for the directory ``sub`` inside."""
        raise NotImplementedError

    def ts_context(self, concurrency: int, file_io: dict | None = None) -> dict:
        """TensorStore context resources bounding I/O to ``concurrency``;
        ``file_io`` holds file-system resources (``file_io_locking``,
        ``file_io_sync``, ``file_io_mode``) that only a file system uses."""
        raise NotImplementedError

    def sync(self) -> None:
        """Make every file written under this location durable (fsync each
        file and directory); nothing to do where a write is durable once it
        completes (an object store)."""

    # -- sizes, caches, removal ------------------------------------------------------
    def footprint(self, sub: str = "") -> Footprint:
        raise NotImplementedError

    def evict(self) -> tuple[bool | None, float | None]:
        """Drop the location's bytes from the caches a load could be served
        from: (confirmed cold, or None where it cannot be known; the share
        still resident after)."""
        raise NotImplementedError

    def remove(self) -> None:
        raise NotImplementedError

    def delayed(self, say=lambda s: None) -> "contextlib.AbstractContextManager[Location]":
        """``with loc.delayed() as loc2:`` the same location reached through
        the round-trip delay its configuration asks for (if any)."""
        return contextlib.nullcontext(self)

    def env_fields(self) -> dict:
        """What the run's environment record says about the storage."""
        return {}

    def count_requests(self) -> "contextlib.AbstractContextManager[dict | None]":
        """``with loc.count_requests() as counts:`` counts the requests made
        to the store inside the block, by kind (None for a local disk)."""
        return contextlib.nullcontext(None)

    # -- the commit protocol --------------------------------------------------------
    def stage(self) -> "Location":
        raise NotImplementedError

    def publish(self, staged: "Location", files: dict[str, str]) -> None:
        raise NotImplementedError

    def discard(self, staged: "Location") -> None:
        """Remove what a failed save left (its staging location)."""
        staged.remove()

    def stale_saves(self) -> list["Location"]:
        """Interrupted saves under this location (staging left behind, or
        prefixes without the marker)."""
        raise NotImplementedError

    def preflight(self, say) -> None:
        """The location can be written, or one clear error naming why not."""
        raise NotImplementedError

