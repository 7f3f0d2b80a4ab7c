"""A checkpoint location under a prefix of an S3-compatible bucket.

A target is ``s3://BUCKET/PREFIX`` plus an endpoint URL; credentials come
from the usual AWS environment variables (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``; region ``AWS_REGION``,
default ``us-east-1``). Without them requests go unsigned, which a local
SeaweedFS without identities accepts.

An object store has no rename, so a checkpoint at ``PREFIX/NAME/`` is
committed by its marker object, written last with one PUT (atomic on S3):
until it exists, the objects under the prefix are an incomplete save, never
loaded or measured, and removed by the next run.

Requests are counted per block (``count_requests``): TensorStore's own
kvstore metrics for the TensorStore formats, every request of the suite's
boto3 client (the single-file formats, manifest, marker, listings), and
every request of s3fs (DCP's fsspec writer and reader), per process.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import os
from dataclasses import dataclass, replace
from pathlib import Path

from .. import fsutil
from .. import netdelay
from ..errors import UserError
from .base import MARKER, Location, Writer

# Bounds on how long a dead endpoint can hold a run: a refused connection
# fails at once, an unreachable one after the connect timeout, retried once.
CONNECT_TIMEOUT_S = 3
READ_TIMEOUT_S = 120
MAX_ATTEMPTS = 2
PART_BYTES = 64 << 20  # multipart upload part size of the single-file formats


def region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def has_credentials() -> bool:
    return bool(os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"))


@dataclass(frozen=True)
class Target:
    """Where checkpoints go on an object store: ``s3://bucket/prefix`` at ``endpoint``."""

    bucket: str
    prefix: str  # no leading or trailing slash; may be empty
    endpoint: str
    delay_ms: float = 0.0  # round-trip delay added by a proxy (0: direct)
    server_dir: str | None = None  # the local server's data directory, where known (for cold loads)

    @classmethod
    def parse(cls, url: str, endpoint: str | None, **kw) -> "Target":
        if not url.startswith("s3://"):
            raise UserError(f"--storage must be s3://BUCKET/PREFIX, got {url!r}")
        bucket, _, prefix = url[len("s3://"):].partition("/")
        if not bucket:
            raise UserError(f"--storage {url!r} names no bucket (s3://BUCKET/PREFIX)")
        if not endpoint:
            raise UserError("--storage s3://... needs --s3-endpoint URL (e.g. the one `make s3-up` prints)")
        if not endpoint.startswith(("http://", "https://")):
            raise UserError(f"--s3-endpoint must be an http:// or https:// URL, got {endpoint!r}")
        return cls(bucket, prefix.strip("/"), endpoint.rstrip("/"), **kw)

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    def path(self, *parts: str) -> "S3Prefix":
        return S3Prefix(self, "/".join(p for p in (self.prefix, *parts) if p))

    def client(self):
        return client(self.endpoint)

    def kvstore(self, key: str) -> dict:
        """TensorStore's ``s3`` kvstore spec for ``key/`` in this bucket."""
        return {"driver": "s3", "bucket": self.bucket, "path": f"{key}/" if key else "", "endpoint": self.endpoint,
                "aws_region": region(),
                "aws_credentials": {"type": "environment" if has_credentials() else "anonymous"}}

    def with_endpoint(self, endpoint: str) -> "Target":
        return replace(self, endpoint=endpoint)

    def fsspec_options(self) -> dict:
        """s3fs's storage options for this endpoint and these credentials,
        made once (the same options give the same s3fs instance, fsspec's
        cache): its requests are counted like boto3's."""
        key = (self.endpoint, os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY"),
               os.environ.get("AWS_SESSION_TOKEN"), region())
        if key not in _FSSPEC:
            from aiobotocore.session import AioSession

            session = AioSession()  # every client s3fs makes from it, in any thread, reports its requests
            session.register("before-send.s3", _count_s3fs)
            _FSSPEC[key] = dict(endpoint_url=self.endpoint, anon=not has_credentials(), session=session,
                                client_kwargs={"region_name": region()},
                                config_kwargs={"connect_timeout": CONNECT_TIMEOUT_S, "read_timeout": READ_TIMEOUT_S,
                                               "retries": {"total_max_attempts": MAX_ATTEMPTS, "mode": "standard"},
                                               "s3": {"addressing_style": "path"}})
        return _FSSPEC[key]


_FSSPEC: dict = {}
_S3FS_COUNTS: dict[str, int] = {}  # requests of every s3fs client of this process, by kind


def _op(request) -> str:
    if request.method == "GET" and "list-type=2" in request.url:
        return "list"
    return {"PUT": "write", "POST": "write", "GET": "read", "HEAD": "read", "DELETE": "delete"}.get(
        request.method, request.method.lower())


def _count_s3fs(request=None, **_kw) -> None:
    if request is not None:
        op = _op(request)
        _S3FS_COUNTS[op] = _S3FS_COUNTS.get(op, 0) + 1


_CLIENTS: dict = {}


def client(endpoint: str):
    """A boto3 S3 client for ``endpoint``, made once per endpoint and
    credentials (making one must not land in a timed save) and shared:
    boto3 clients are thread-safe."""
    key = (endpoint, os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY"),
           os.environ.get("AWS_SESSION_TOKEN"), region())
    if key not in _CLIENTS:
        _CLIENTS[key] = _new_client(endpoint)
    return _CLIENTS[key]


def _new_client(endpoint: str):
    import boto3
    import botocore
    from botocore.config import Config

    cfg = Config(connect_timeout=CONNECT_TIMEOUT_S, read_timeout=READ_TIMEOUT_S,
                 retries={"total_max_attempts": MAX_ATTEMPTS, "mode": "standard"},
                 s3={"addressing_style": "path"}, max_pool_connections=16,
                 **({} if has_credentials() else {"signature_version": botocore.UNSIGNED}))
    return boto3.session.Session().client("s3", endpoint_url=endpoint, region_name=region(), config=cfg)


class S3Prefix(Location):
    """A checkpoint (or a run's checkpoints) under ``key/`` in a bucket."""

    reference_kind = "s3 object"

    def __init__(self, target: Target, key: str):
        self.target, self.key = target, key

    def __truediv__(self, part: str) -> "S3Prefix":
        return S3Prefix(self.target, f"{self.key}/{part}" if self.key else part)

    def __str__(self) -> str:
        return f"s3://{self.target.bucket}/{self.key}"

    def __repr__(self) -> str:
        return f"S3Prefix({self})"

    def __eq__(self, other) -> bool:
        return isinstance(other, S3Prefix) and (self.target.bucket, self.key) == (other.target.bucket, other.key)

    def __hash__(self) -> int:
        return hash((self.target.bucket, self.key))

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]

    @property
    def parent(self) -> "S3Prefix":
        return S3Prefix(self.target, self.key.rsplit("/", 1)[0] if "/" in self.key else "")

    def row_fields(self) -> dict:
        return {"storage": self.target.url, "s3_delay_ms": self.target.delay_ms, "medium": "object store"}

    def env_fields(self) -> dict:
        return self.row_fields() | {"s3_server_dir": self.target.server_dir}

    @contextlib.contextmanager
    def delayed(self, say=lambda s: None):
        """This prefix reached through a proxy adding the target's round-trip
        delay (none: itself)."""
        with netdelay.delayed(self.target.endpoint, self.target.delay_ms) as endpoint:
            if self.target.delay_ms:
                say(f"S3 requests go through a proxy adding {self.target.delay_ms:g} ms of round trip: {endpoint}")
            yield S3Prefix(self.target.with_endpoint(endpoint), self.key)

    # -- objects -------------------------------------------------------------
    def _key(self, rel: str) -> str:
        return f"{self.key}/{rel}" if self.key else rel

    def list(self) -> list[dict]:
        """Every object under ``key/``: dicts with Key and Size."""
        out = []
        pages = self.target.client().get_paginator("list_objects_v2").paginate(
            Bucket=self.target.bucket, Prefix=f"{self.key}/" if self.key else "")
        for page in pages:
            out.extend(page.get("Contents", []))
        return out

    def exists(self) -> bool:
        return bool(self.list())

    def has(self, rel: str) -> bool:
        import botocore.exceptions

        try:
            self.target.client().head_object(Bucket=self.target.bucket, Key=self._key(rel))
            return True
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def read_bytes(self, rel: str) -> bytes:
        return self.target.client().get_object(Bucket=self.target.bucket, Key=self._key(rel))["Body"].read()

    def open_read(self, rel: str):
        return self.target.client().get_object(Bucket=self.target.bucket, Key=self._key(rel))["Body"]

    def write_bytes(self, rel: str, data: bytes) -> None:
        self.target.client().put_object(Bucket=self.target.bucket, Key=self._key(rel), Body=data)

    def open_write(self, rel: str) -> Writer:
        return MultipartWriter(self.target, self._key(rel))

    def kvstore(self, sub: str = "") -> dict:
        return self.target.kvstore(self._key(sub) if sub else self.key)

    def fsspec(self) -> tuple[str, dict]:
        return f"s3://{self.target.bucket}/{self.key}", self.target.fsspec_options()

    def ts_context(self, concurrency: int, file_io: dict | None = None) -> dict:
        # retries bounded so that a dead endpoint fails within seconds
        return {"s3_request_concurrency": {"limit": concurrency},
                "s3_request_retries": {"max_retries": 2, "initial_delay": "200ms", "max_delay": "2s"}}

    def footprint(self, sub: str = ""):
        objs = (self / sub).list() if sub else self.list()
        n = sum(o["Size"] for o in objs)
        return fsutil.Footprint(bytes_on_disk=n, bytes_apparent=n, n_files=len(objs))

    def evict(self):
        """Cold on the server's side where its data directory is known (a
        server this suite started); otherwise unknown (None)."""
        return evict_server(self.target.server_dir) if self.target.server_dir else (None, None)

    def remove(self) -> None:
        """Delete every object under ``key/``."""
        c = self.target.client()
        keys = [o["Key"] for o in self.list()]
        for i in range(0, len(keys), 1000):
            c.delete_objects(Bucket=self.target.bucket,
                             Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]], "Quiet": True})

    @contextlib.contextmanager
    def count_requests(self):
        counts: dict[str, int] = {}
        ts0, fs0 = _ts_counts(), dict(_S3FS_COUNTS)
        c = self.target.client()
        hook_id = f"llama-ckpt-count-{next(_HOOK_IDS)}"

        def on_send(request=None, **_kw):
            if request is not None:
                op = _op(request)
                counts[op] = counts.get(op, 0) + 1

        c.meta.events.register("before-send.s3", on_send, unique_id=hook_id)
        try:
            yield counts
        finally:
            c.meta.events.unregister("before-send.s3", unique_id=hook_id)
            for now, before in ((_ts_counts(), ts0), (dict(_S3FS_COUNTS), fs0)):
                for k, v in now.items():
                    if v - before.get(k, 0):
                        counts[k] = counts.get(k, 0) + v - before.get(k, 0)

    # -- the commit protocol ------------------------------------------------------
    def stage(self) -> "S3Prefix":
        if self.exists():
            raise FileExistsError(f"checkpoint {self} already exists")
        return self

    def publish(self, staged: "S3Prefix", files: dict[str, str]) -> None:
        """No rename on an object store: the objects are in place; the files
        go in order, the marker (last) in one PUT, which is the commit."""
        for rel, text in files.items():
            staged.write_bytes(rel, text.encode())

    def stale_saves(self) -> list["S3Prefix"]:
        """Checkpoints two levels under here (``RUN_ID/APPROACH``) that hold
        objects but no marker: interrupted saves."""
        base = self.key + "/" if self.key else ""
        seen: dict[str, bool] = {}
        for o in self.list():
            rest = o["Key"][len(base):].split("/")
            if len(rest) < 3:
                continue
            key = base + "/".join(rest[:2])
            seen[key] = seen.get(key, False) or (len(rest) == 3 and rest[2] == MARKER)
        return [S3Prefix(self.target, k) for k, committed in sorted(seen.items()) if not committed]

    def preflight(self, say) -> None:
        check_target(self.target, say)


_HOOK_IDS = itertools.count()


class MultipartWriter(Writer):
    """A write-only file object that streams into one object by multipart
    upload (``PART_BYTES`` parts), so ``torch.save`` never holds a second
    copy of the checkpoint; ``finish()`` completes the upload, ``abort()``
    drops it (no object appears)."""

    def __init__(self, target: Target, key: str):
        self.target, self.key, self.c = target, key, target.client()
        self.buf, self.parts, self.pos, self.done = bytearray(), [], 0, False
        self.upload_id = self.c.create_multipart_upload(Bucket=target.bucket, Key=key)["UploadId"]

    def write(self, data) -> int:
        mv = memoryview(data).cast("B")
        n = len(mv)
        while len(mv):
            if not self.buf and len(mv) >= PART_BYTES:  # a large write goes up part by part, uncopied
                self._part(mv[:PART_BYTES])
                mv = mv[PART_BYTES:]
                continue
            take = PART_BYTES - len(self.buf)
            self.buf += mv[:take]
            mv = mv[take:]
            if len(self.buf) >= PART_BYTES:
                self._part(self.buf)
                self.buf = bytearray()
        self.pos += n
        return n

    def tell(self) -> int:
        return self.pos

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        pass

    def _part(self, data) -> None:
        n = len(self.parts) + 1
        r = self.c.upload_part(Bucket=self.target.bucket, Key=self.key, UploadId=self.upload_id,
                               PartNumber=n, Body=io.BytesIO(data))
        self.parts.append({"ETag": r["ETag"], "PartNumber": n})

    def finish(self) -> None:
        if self.done:
            return
        if self.buf or not self.parts:
            self._part(self.buf)
            self.buf = bytearray()
        self.c.complete_multipart_upload(Bucket=self.target.bucket, Key=self.key,
                                         UploadId=self.upload_id, MultipartUpload={"Parts": self.parts})
        self.done = True

    def abort(self) -> None:
        if not self.done:
            self.c.abort_multipart_upload(Bucket=self.target.bucket, Key=self.key, UploadId=self.upload_id)
            self.done = True


# -- request counts ----------------------------------------------------------
_TS_PREFIX = "/tensorstore/kvstore/s3/"
_TS_KINDS = ("read", "write", "list", "delete_range", "batch_read")


def _ts_counts() -> dict[str, int]:
    import tensorstore as ts

    out = {}
    for m in ts.experimental_collect_matching_metrics(_TS_PREFIX):
        kind = m["name"][len(_TS_PREFIX):]
        if kind in _TS_KINDS + ("bytes_read", "bytes_written"):
            out[kind] = sum(v.get("value", 0) for v in m["values"])
    return out


def request_total(counts: dict | None) -> int | None:
    """Requests in a row's counts (reads, writes, lists, deletes; not the
    byte counters nor TensorStore's batch tallies); None for a row not on S3."""
    if counts is None:
        return None
    return sum(v for k, v in counts.items() if k in ("read", "write", "list", "delete", "delete_range"))


# -- preflight -----------------------------------------------------------------
def check_target(target: Target, say=lambda s: None) -> None:
    """The endpoint answers and the bucket exists (created if missing), or
    one clear error naming what is wrong, within seconds."""
    import botocore.exceptions

    c = target.client()
    try:
        c.head_bucket(Bucket=target.bucket)
        return
    except (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectTimeoutError,
            botocore.exceptions.ReadTimeoutError) as exc:
        raise UserError(f"S3 endpoint {target.endpoint} is not answering ({type(exc).__name__}); "
                        "is the server up (make s3-up)?") from None
    except botocore.exceptions.ClientError as exc:
        code = exc.response.get("Error", {}).get("Code")
        if code not in ("404", "NoSuchBucket", "NotFound"):
            raise UserError(f"S3 endpoint {target.endpoint}: bucket {target.bucket!r} is not usable ({code})") from None
    except botocore.exceptions.BotoCoreError as exc:
        raise UserError(f"S3 endpoint {target.endpoint}: {exc}") from None
    try:
        c.create_bucket(Bucket=target.bucket)
    except botocore.exceptions.ClientError as exc:
        raise UserError(f"S3 bucket {target.bucket!r} does not exist at {target.endpoint} and could not be "
                        f"created (HTTP {exc.response.get('Error', {}).get('Code')}; is it an S3 endpoint, "
                        "and may these credentials create buckets?)") from None
    say(f"created bucket {target.bucket!r} at {target.endpoint}")


def evict_server(data_dir: str) -> tuple[bool, float | None]:
    """Drop a local SeaweedFS server's object data (its volume files,
    ``*.dat`` and ``*.idx``) from the page cache and confirm with mincore:
    (confirmed, resident fraction after). Its log and metadata store, which
    it writes all the time, are left alone."""
    files = sorted(Path(data_dir).glob("*.dat")) + sorted(Path(data_dir).glob("*.idx"))
    resident = total = 0
    fsutil.evict(*files)
    for f in files:
        try:
            r, t = fsutil.resident_fraction_file(f)
        except OSError:
            return False, None
        resident += r
        total += t
    frac = resident / total if total else 0.0
    return frac <= fsutil.RESIDENCY_CONFIRM_MAX, frac
