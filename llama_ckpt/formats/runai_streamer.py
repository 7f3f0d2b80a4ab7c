"""The Run:ai Model Streamer reading a safetensors checkpoint."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

from .safetensors import SafeTensors


@contextlib.contextmanager
def _env(values: dict[str, str]):
    """The streamer's settings are environment variables, read when it streams."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class RunaiStreamer(SafeTensors):
    """Saved as safetensors (``save_file``, fsynced: the same bytes as the
    ``safetensors`` approach); loaded with the Run:ai Model Streamer
    (``runai-model-streamer``, CPU): ``SafetensorsStreamer.stream_file``
    reads the file with ``concurrency`` threads of its C++ library in chunks
    into CPU memory and hands each tensor over as its bytes arrive (owned by
    the caller, no further copy).

    Knobs: ``concurrency`` (``RUNAI_STREAMER_CONCURRENCY``), ``memory_limit``
    (``RUNAI_STREAMER_MEMORY_LIMIT``: bytes of CPU buffer, -1 unlimited, 0
    one chunk at a time) and ``chunk_bytesize``
    (``RUNAI_STREAMER_CHUNK_BYTESIZE``, 0 = the library's default).

    On S3 (``runai-model-streamer-s3``) it streams ``s3://bucket/key`` with
    its own C++ client, given the target's endpoint, region and credentials
    (``S3Credentials``), path-style addressing, and EC2 instance metadata
    off (without credentials its default chain would wait on the metadata
    service before going unsigned).

    Caveats: its S3 requests are its own client's, which the suite cannot
    count (the rows' ``requests_load`` is empty); a missing object is only
    "File access error" from the library (the suite's manifest is read
    first, so a missing checkpoint is named before that).
    """

    MECHANISM = "RunaiStreamer"
    own_s3_client = True

    @dataclass(frozen=True)
    class Knobs:
        dtype: str = "float32"
        concurrency: int = 16
        memory_limit: int = -1
        chunk_bytesize: int = 0

    def settings(self) -> dict[str, str]:
        out = {"RUNAI_STREAMER_CONCURRENCY": str(self.k.concurrency),
               "RUNAI_STREAMER_MEMORY_LIMIT": str(self.k.memory_limit)}
        if self.k.chunk_bytesize:
            out["RUNAI_STREAMER_CHUNK_BYTESIZE"] = str(self.k.chunk_bytesize)
        return out

    def read(self, loc, manifest, progress):
        from runai_model_streamer import SafetensorsStreamer

        out = {}
        path, creds, env = str(loc.local_file(self.FILE)), None, self.settings()
        if loc.local_file() is None:  # an object store: its own S3 client
            from runai_model_streamer.s3_utils.s3_utils import S3Credentials

            url, opts = loc.fsspec()
            path = f"{url}/{self.FILE}"
            creds = S3Credentials(access_key_id=os.environ.get("AWS_ACCESS_KEY_ID"),
                                  secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY"),
                                  session_token=os.environ.get("AWS_SESSION_TOKEN"),
                                  region_name=opts["client_kwargs"]["region_name"], endpoint=opts["endpoint_url"])
            env |= {"RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING": "0", "AWS_EC2_METADATA_DISABLED": "true"}
        with _env(env), SafetensorsStreamer() as streamer:
            streamer.stream_file(path, s3_credentials=creds)
            for name, tensor in streamer.get_tensors():
                out[name] = tensor
                progress(1)
        return out

    def warm_up(self, loc):
        """On S3 the streamer's first stream in a process also loads and sets
        up its S3 library, which the next streams do not pay
        (docs/decisions.md#warm-ups). One tiny stream first, outside the
        timings."""
        if loc.local_file() is None:
            import torch

            self.save({"warm_up": torch.zeros(4)}, loc)
            self.load(loc)

    def iter_tensors(self, loc, manifest):  # verify reads the file the way safetensors does
        yield from SafeTensors.iter_tensors(self, loc, manifest)
