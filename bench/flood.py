"""8 good clients, alone and then while N connections loop on one kind of request, against one alexnet serve.

    python bench/flood.py 67 explain 4      # ?explain=1 (Grad-CAM) in a loop on 4 connections
    python bench/flood.py 67 metrics 4      # GET /metrics
    python bench/flood.py 227 health 4      # GET /v2/health/live
    python bench/flood.py 67 idle 300       # connections that send half a head, a byte a second (slowloris)
    python bench/flood.py 67 trickle 300    # uploads whose body comes a byte a second
    python bench/flood.py 67 noread 300     # requests for the page, sent and sent, and no answer read
    python bench/flood.py 67 bodies 64      # uploads of --max-upload-mb (20 MB) of junk, as fast as they go
    python bench/flood.py 67 idle 300 --max-connections 64     # arguments after the third go to alexnet serve

Reported: the good clients' requests/s and p99, alone and under the flood (and their ratio), the server's CPU
seconds over the 8 s under the flood, and what the flooding connections were answered. docs/serve.md,
"Costly requests", has its figures.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hostile import cpu_seconds, good_clients
from serve import make_checkpoint, make_images, post

KINDS = {
    "explain": ("POST", "/predict?explain=1"),
    "metrics": ("GET", "/metrics"),
    "health": ("GET", "/v2/health/live"),
    "bodies": ("POST", "/predict"),
}


SLOW = {
    "noread": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 2000,
    "idle": b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Wait: ",
    "trickle": b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 100000\r\n\r\n",
}


async def slow(url: str, kind: str, connections: int, seconds: float) -> dict:
    """`connections` sockets, each sending the start of a request and then a byte a second, and opened again a
    second after the server closes one (slowloris's round): what they were answered (the first line), or how
    they ended."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    outcomes: dict[str, int] = {}
    end = time.monotonic() + seconds

    async def one() -> None:
        while time.monotonic() < end:
            writer = None
            try:
                reader, writer = await asyncio.open_connection(host, int(port), limit=4096)
                if kind == "noread":
                    writer.transport.pause_reading()  # type: ignore[attr-defined]
                writer.write(SLOW[kind])
                await writer.drain()
                while kind == "noread" and time.monotonic() < end and not writer.is_closing():
                    try:
                        writer.write(SLOW[kind][:27])
                        await asyncio.wait_for(writer.drain(), 1.0)
                    except asyncio.TimeoutError:
                        pass
                    await asyncio.sleep(1.0)
                while kind != "noread" and time.monotonic() < end:
                    try:
                        line = await asyncio.wait_for(reader.readline(), 1.0)
                    except asyncio.TimeoutError:
                        writer.write(b"a")
                        await writer.drain()
                        continue
                    outcome = line.decode(errors="replace").strip()[:40] or "closed"
                    outcomes[outcome] = outcomes.get(outcome, 0) + 1
                    await asyncio.sleep(1.0)
                    break
            except OSError as exc:
                outcomes[type(exc).__name__] = outcomes.get(type(exc).__name__, 0) + 1
                await asyncio.sleep(0.1)
            finally:
                if writer is not None:
                    writer.close()

    await asyncio.gather(*(one() for _ in range(connections)))
    return outcomes


async def flood(url: str, kind: str, connections: int, seconds: float, jpeg: bytes) -> dict:
    import aiohttp

    if kind in SLOW:
        return await slow(url, kind, connections, seconds)
    method, path = KINDS[kind]
    statuses: dict[int, int] = {}
    end = time.monotonic() + seconds
    async with aiohttp.ClientSession() as http:
        async def one() -> None:
            while time.monotonic() < end:
                data = bytes(20 * 1024 * 1024) if kind == "bodies" else jpeg
                body = {"data": data, "headers": {"content-type": "image/jpeg"}} if method == "POST" else {}
                try:
                    async with http.request(method, url + path, **body) as response:
                        await response.read()
                        status = str(response.status)
                except aiohttp.ClientError as exc:  # closed on it (a 503 whose body was not read)
                    status = type(exc).__name__
                statuses[status] = statuses.get(status, 0) + 1

        await asyncio.gather(*(one() for _ in range(connections)))
    return statuses


def peak_rss_mb(pid: int) -> float:
    """A process's peak resident memory so far (Linux /proc: VmHWM)."""
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024


def main() -> None:
    if sys.argv[1] == "--attack":  # the flood alone, in a process of its own: what it was answered, as JSON
        url, kind, connections, seconds = sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
        print(json.dumps(asyncio.run(flood(url, kind, connections, seconds, make_images(1)[0]))))
        return
    size, kind, connections = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    images = make_images()
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = Path(folder) / "alexnet.pt"
        make_checkpoint(checkpoint, size)
        served = subprocess.Popen([sys.executable, "-m", "alexnet_cli", "serve", "--weights", str(checkpoint),
                                   "--port", "0", "--quiet", *sys.argv[4:]], stderr=subprocess.PIPE, text=True)
        try:
            assert served.stderr is not None
            while "listening on" not in (line := served.stderr.readline()):
                if not line and served.poll() is not None:
                    raise SystemExit("the server did not start")
            url = line.split("listening on ")[1].split()[0]
            asyncio.run(good_clients(url, images, 8, 2, post))  # warm
            clean = asyncio.run(good_clients(url, images, 8, 8, post))
            # The flood runs in a process of its own, so that the good clients' event loop, whose latencies are
            # measured, is not the one busy sending it.
            attacker = subprocess.Popen([sys.executable, __file__, "--attack", url, kind, str(connections), "11"],
                                        stdout=subprocess.PIPE, text=True)
            time.sleep(2)  # under way
            before = cpu_seconds(served.pid), cpu_seconds(attacker.pid)
            under = asyncio.run(good_clients(url, images, 8, 8, post))
            cpu = cpu_seconds(served.pid) - before[0]
            attacker_cpu = cpu_seconds(attacker.pid) - before[1]
            statuses = json.loads(attacker.communicate(timeout=60)[0])
            peak = peak_rss_mb(served.pid)
        finally:
            served.terminate()
            served.wait()
    print(f"{size} px, {kind} on {connections} connections: good clients alone {clean['per_second']:.0f} requests/s, "
          f"p99 {clean['p99_ms']:.0f} ms; under the flood {under['per_second']:.0f} requests/s, p99 "
          f"{under['p99_ms']:.0f} ms ({under['p99_ms'] / clean['p99_ms']:.2f}x), {under['statuses']}; the server's "
          f"CPU {cpu:.1f} s in 8 s, the flood's {attacker_cpu:.1f} s; its peak RSS {peak:.0f} MB; the flood was "
          f"answered {statuses}")


if __name__ == "__main__":
    main()
