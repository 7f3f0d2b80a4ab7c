"""A TCP proxy on loopback that adds a fixed round-trip delay.

A cloud bucket is tens of milliseconds away; a server on loopback is
microseconds away. The proxy holds every piece of data it relays for half
the round-trip time in each direction before passing it on, keeping the
order within a connection and never pausing the reading side, so latency
grows by the RTT per request/response exchange while throughput is left
to the two ends (as on a long fat link, not a slow one). It runs in its own
process (``python -m llama_ckpt.netdelay``), so its work does not take the
measuring process's interpreter lock.

:func:`delayed` starts it for the duration of a ``with`` block and yields
the endpoint to use instead of the server's.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections import deque
from urllib.parse import urlsplit, urlunsplit

from .errors import UserError

READ_BYTES = 1 << 20


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, one_way_s: float) -> None:
    """Relay reader -> writer, each piece sent ``one_way_s`` after it arrived."""
    loop = asyncio.get_running_loop()
    queue: deque = deque()
    arrived = asyncio.Event()
    done = False

    async def send():
        while True:
            while not queue:
                if done:
                    return
                arrived.clear()
                await arrived.wait()
            due, data = queue.popleft()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if data is None:
                return
            writer.write(data)
            await writer.drain()

    sender = asyncio.create_task(send())
    try:
        while True:
            data = await reader.read(READ_BYTES)
            queue.append((loop.time() + one_way_s, data or None))
            arrived.set()
            if not data:
                break
        done = True
        await sender
    except (ConnectionError, OSError):
        sender.cancel()
    finally:
        with contextlib.suppress(Exception):
            if writer.can_write_eof():
                writer.write_eof()


async def _serve(listen_port: int, host: str, port: int, rtt_ms: float) -> None:
    one_way = rtt_ms / 2000.0

    async def handle(cr, cw):
        try:
            sr, sw = await asyncio.open_connection(host, port)
        except OSError:
            cw.close()
            return
        await asyncio.gather(_pump(cr, sw, one_way), _pump(sr, cw, one_way), return_exceptions=True)
        for w in (cw, sw):
            with contextlib.suppress(Exception):
                w.close()

    server = await asyncio.start_server(handle, "127.0.0.1", listen_port, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)  # the port, for the parent
    async with server:
        await server.serve_forever()


@contextlib.contextmanager
def delayed(endpoint: str, rtt_ms: float):
    """``endpoint`` as seen through a proxy adding ``rtt_ms`` of round trip;
    the endpoint itself when ``rtt_ms`` is 0."""
    if rtt_ms < 0:
        raise UserError(f"--s3-delay-ms must be >= 0, got {rtt_ms}")
    if rtt_ms == 0:
        yield endpoint
        return
    u = urlsplit(endpoint)
    if u.scheme != "http":
        raise UserError("the delay proxy relays plain http:// endpoints only (a TLS endpoint is far away already)")
    port = u.port or 80
    proc = subprocess.Popen([sys.executable, "-m", "llama_ckpt.netdelay", u.hostname, str(port), str(rtt_ms)],
                            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline().strip()
        if not line.isdigit():
            raise UserError(f"the delay proxy did not start (exit {proc.poll()})")
        yield urlunsplit((u.scheme, f"127.0.0.1:{line}", u.path, u.query, u.fragment))
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()


def measure_rtt(endpoint: str, n: int = 5) -> float:
    """Median seconds of a TCP connect + one HTTP request/response to ``endpoint``."""
    import http.client

    u = urlsplit(endpoint)
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        c = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=10)
        c.request("HEAD", "/")
        c.getresponse().read()
        c.close()
        samples.append(time.perf_counter() - t0)
    samples.sort()
    return samples[len(samples) // 2]


if __name__ == "__main__":
    host, port, rtt = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    try:
        asyncio.run(_serve(0, host, port, rtt))
    except KeyboardInterrupt:
        pass
