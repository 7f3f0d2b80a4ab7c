"""safetensors: a JSON header, then every tensor's raw bytes, in one file."""

from __future__ import annotations

from .. import fsutil
from ..errors import FAILURES
from .base import OneFile


class SafeTensors(OneFile):
    """``safetensors.torch.save_file`` of the state dict into one
    ``model.safetensors``, fsynced after; loaded with ``safe_open``, copying
    each tensor out of the memory map so that it is really in memory
    (``load_file`` alone returns tensors backed by the file's pages, read
    lazily). On an object store the library serialises to bytes (a second
    copy in memory), uploaded in one stream, and reads from bytes.

    Caveats: tensors that share storage (tied weights) are refused by
    ``save_file``; no compression; the format carries no checksum.
    """

    MECHANISM = "SafeTensors"
    FILE = "model.safetensors"

    def write(self, state_dict, loc, steps, progress):
        from safetensors.torch import save, save_file

        with steps("cast"):
            out = self.cast_consuming(state_dict)
        path = loc.local_file(self.FILE)
        if path is not None:  # the library writes the file itself, no copy in memory
            with steps("serialise + write"):
                save_file(out, str(path))
            with steps("fsync"):
                fsutil.fsync_path(path)
        else:
            with steps("serialise"):
                data = save(out)
            with steps("upload"), loc.open_write(self.FILE) as f:
                f.write(data)
        progress(len(out))

    def read(self, loc, manifest, progress):
        from safetensors import safe_open
        from safetensors.torch import load

        path = loc.local_file(self.FILE)
        if path is None:
            out = load(loc.read_bytes(self.FILE))
            progress(len(out))
            return out
        out = {}
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                out[name] = f.get_tensor(name).clone()
                progress(1)
        return out

    def iter_tensors(self, loc, manifest):
        from safetensors import safe_open

        path = loc.local_file(self.FILE)
        if path is None:
            yield from super().iter_tensors(loc, manifest)
            return
        try:
            f = safe_open(str(path), framework="pt")
        except FAILURES as exc:
            yield from ((t["name"], exc) for t in manifest["tensors"])
            return
        with f:
            for t in manifest["tensors"]:
                try:
                    yield t["name"], f.get_tensor(t["name"]).clone()
                except FAILURES as exc:
                    yield t["name"], exc
