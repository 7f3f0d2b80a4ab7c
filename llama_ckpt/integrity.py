"""``python -m llama_ckpt verify PATH``: is a checkpoint complete and exactly
what was saved?

Every checkpoint this suite writes carries a manifest with the SHA-256 of each
tensor's stored bytes and a commit marker written last. `verify` reads each
tensor back with the checkpoint's own approach (rebuilt from the manifest's
mechanism and knobs, so sweep variants verify too) and checks it against its
digest, naming each bad tensor and the file that holds it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .approaches import APPROACHES, TSKnobs, Approach, DistributedCheckpoint, SafeTensors, TensorStoreZarr, \
    TorchSave, read_manifest
from .errors import UserError
from .verify import tensor_digest

_MECHANISMS = {"TorchSave": (TorchSave, TorchSave.Knobs), "SafeTensors": (SafeTensors, SafeTensors.Knobs),
               "DistributedCheckpoint": (DistributedCheckpoint, DistributedCheckpoint.Knobs),
               "TensorStoreZarr": (TensorStoreZarr, TSKnobs)}


def approach_of(manifest: dict) -> Approach:
    """The approach that wrote a checkpoint, from its manifest."""
    name = manifest.get("approach")
    if name in APPROACHES:
        return APPROACHES[name]
    cls, knobs_cls = _MECHANISMS.get(manifest.get("mechanism"), (None, None))
    if cls is None:
        raise UserError(f"checkpoint of unknown approach {name!r} (mechanism {manifest.get('mechanism')!r})")
    fields = {f for f in knobs_cls.__dataclass_fields__}
    return cls(name, "rebuilt from a manifest", knobs_cls(**{k: v for k, v in manifest["knobs"].items() if k in fields}))


@dataclass
class Report:
    path: Path
    approach: str
    n_tensors: int
    n_bytes: int = 0
    bad: list[str] = field(default_factory=list)  # one line per bad tensor: name, file, what

    @property
    def ok(self) -> bool:
        return not self.bad


def verify(path) -> Report:
    """Read every tensor of the checkpoint at ``path`` (a local path or an
    :class:`~llama_ckpt.s3.S3Path`) and check its digest.
    Raises UserError for what is not a committed checkpoint at all."""
    from .s3 import S3Path

    path = path if isinstance(path, S3Path) else Path(path)
    manifest = read_manifest(path)
    approach = approach_of(manifest)
    report = Report(path, approach.name, len(manifest["tensors"]))
    want = {t["name"]: t for t in manifest["tensors"]}
    if any("sha256" not in t for t in want.values()):
        raise UserError(f"{path}: the manifest has no digests (written before digests were recorded)")
    seen = set()
    for name, got in approach.iter_tensors(path, manifest):
        seen.add(name)
        where = approach.tensor_file(path, name)
        t = want[name]
        if isinstance(got, BaseException):
            msg = str(got).strip().splitlines()[0] if str(got).strip() else type(got).__name__
            report.bad.append(f"{name} ({where}): unreadable: {type(got).__name__}: {msg[:300]}")
        elif list(got.shape) != list(t["shape"]) or str(got.dtype).removeprefix("torch.") != t["dtype"]:
            report.bad.append(f"{name} ({where}): shape/dtype {list(got.shape)} {got.dtype}, "
                              f"manifest says {t['shape']} {t['dtype']}")
        elif tensor_digest(got) != t["sha256"]:
            report.bad.append(f"{name} ({where}): bytes differ from the digest recorded at save")
        else:
            report.n_bytes += got.numel() * got.element_size()
    for name in sorted(set(want) - seen):
        report.bad.append(f"{name} ({approach.tensor_file(path, name)}): missing")
    return report
