"""Where checkpoints live: one :class:`Location` interface, a local directory
and an S3 prefix implementing it (see :mod:`llama_ckpt.store.base`)."""

from __future__ import annotations

from pathlib import Path

from .base import MARKER, TMP_TAG, Location, Writer
from .local import LocalDir
from .s3 import S3Prefix, Target

__all__ = ["MARKER", "TMP_TAG", "Location", "Writer", "LocalDir", "S3Prefix", "Target", "at"]


def at(where) -> Location:
    """A location from a Location or a local path (``str`` or ``Path``)."""
    return where if isinstance(where, Location) else LocalDir(Path(where))
