"""CoreWeave's tensorizer: its own single-file format, written and read by it."""

from __future__ import annotations

from dataclasses import dataclass

from .. import fsutil
from .base import OneFile


class Tensorizer(OneFile):
    """``TensorSerializer.write_state_dict`` into one ``model.tensors``
    (a header and every tensor's bytes, with per-tensor hashes), closed and
    fsynced; loaded with ``TensorDeserializer(device="cpu",
    num_readers=N)``, which reads the file with N readers in parallel and
    materialises every tensor (``lazy_load`` off).

    Caveats: local files here (tensorizer can stream from S3 with its own
    client, not wired to the suite's S3 target); the format is read by
    tensorizer only.
    """

    MECHANISM = "Tensorizer"
    FILE = "model.tensors"
    s3_unsupported = "tensorizer streams s3:// with its own client, not wired to the suite's S3 target yet"

    @dataclass(frozen=True)
    class Knobs:
        dtype: str = "float32"
        num_readers: int = 4

    def write(self, state_dict, loc, steps, progress):
        from tensorizer import TensorSerializer

        with steps("cast"):
            out = self.cast_consuming(state_dict)
        path = loc.local_file(self.FILE)
        with steps("serialise + write"):
            serializer = TensorSerializer(str(path))
            serializer.write_state_dict(out)
            serializer.close()
        with steps("fsync"):
            fsutil.fsync_path(path)
        progress(len(out))

    def read(self, loc, manifest, progress):
        from tensorizer import TensorDeserializer

        de = TensorDeserializer(str(loc.local_file(self.FILE)), device="cpu", num_readers=self.k.num_readers,
                                lazy_load=False)
        try:
            out = dict(de.items())
        finally:
            de.close()
        progress(len(out))
        return out
