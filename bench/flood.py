"""8 good clients, alone and then while N connections loop on one kind of request, against one alexnet serve.

    python bench/flood.py 67 explain 4      # ?explain=1 (Grad-CAM) in a loop on 4 connections
    python bench/flood.py 67 metrics 4      # GET /metrics
    python bench/flood.py 227 health 4      # GET /v2/health/live

Reported: the good clients' requests/s and p99, alone and under the flood (and their ratio), the server's CPU
seconds over the 8 s under the flood, and what the flooding connections were answered. docs/serve.md,
"Costly requests", has its figures.
"""

from __future__ import annotations

import asyncio
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
}


async def flood(url: str, kind: str, connections: int, seconds: float, jpeg: bytes) -> dict:
    import aiohttp

    method, path = KINDS[kind]
    statuses: dict[int, int] = {}
    end = time.monotonic() + seconds
    async with aiohttp.ClientSession() as http:
        async def one() -> None:
            while time.monotonic() < end:
                body = {"data": jpeg, "headers": {"content-type": "image/jpeg"}} if method == "POST" else {}
                async with http.request(method, url + path, **body) as response:
                    await response.read()
                    statuses[response.status] = statuses.get(response.status, 0) + 1

        await asyncio.gather(*(one() for _ in range(connections)))
    return statuses


def main() -> None:
    size, kind, connections = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    images = make_images()
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = Path(folder) / "alexnet.pt"
        make_checkpoint(checkpoint, size)
        served = subprocess.Popen([sys.executable, "-m", "alexnet_cli", "serve", "--weights", str(checkpoint),
                                   "--port", "0", "--quiet"], stderr=subprocess.PIPE, text=True)
        try:
            assert served.stderr is not None
            while "listening on" not in (line := served.stderr.readline()):
                if not line and served.poll() is not None:
                    raise SystemExit("the server did not start")
            url = line.split("listening on ")[1].split()[0]
            asyncio.run(good_clients(url, images, 8, 2, post))  # warm
            clean = asyncio.run(good_clients(url, images, 8, 8, post))

            async def both() -> tuple[dict, dict, float]:
                attack = asyncio.ensure_future(flood(url, kind, connections, 10, images[0]))
                await asyncio.sleep(1)
                before = cpu_seconds(served.pid)
                under = await good_clients(url, images, 8, 8, post)
                return under, await attack, cpu_seconds(served.pid) - before

            under, statuses, cpu = asyncio.run(both())
        finally:
            served.terminate()
            served.wait()
    print(f"{size} px, {kind} on {connections} connections: good clients alone {clean['per_second']:.0f} requests/s, "
          f"p99 {clean['p99_ms']:.0f} ms; under the flood {under['per_second']:.0f} requests/s, p99 "
          f"{under['p99_ms']:.0f} ms ({under['p99_ms'] / clean['p99_ms']:.2f}x), {under['statuses']}; the server's "
          f"CPU {cpu:.1f} s in 8 s; the flood was answered {statuses}")


if __name__ == "__main__":
    main()
