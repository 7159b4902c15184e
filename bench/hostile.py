"""The hostile mix of `python bench/serve.py --hostile` (docs/serve.md, "Load, faults and bad input").

While 8 good clients post photos in a closed loop, these hit the same server at once:
  - slow uploads: more connections than --max-queue, each sending its head and a byte of body a second;
  - protocol requests naming one output a thousand times;
  - PNGs of 8000x8000 pixels (under Pillow's limit of 89 million, a few hundred kB each), two at a time;
  - PNGs of 6300x6300 pixels (under serve's default --max-pixels of at most 40 million, 131 kB each, 0.7 s of
    a core to decode), four at a time;
  - deeply nested JSON bodies;
  - requests with invented HTTP methods;
  - held out until they were found, then added: PNGs of 100,000 empty chunks (1.2 MB, 0.46 s of Python each
    for Pillow to read), and progressive JPEGs of 20,000 repeated scans (264 kB, 2.2 s of CPU to decode).
The attack runs in a process of its own, so that the good clients' event loop, whose latencies are measured, is
not the one busy sending it. A probe asks /v2/health/live every 20 ms. Reported: the good requests' statuses
and p50/p99 against a clean run of the same clients just before, the probe's p99, the server's RSS, and the
number of metric series once every kind of hostile request has been answered and at the end.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import statistics
import time


def _quantiles(values: list[float]) -> tuple[float | None, float | None]:
    ordered = sorted(values)
    if not ordered:
        return None, None
    return 1000 * statistics.median(ordered), 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def big_png(side: int = 8000) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (40, 90, 160)).save(buffer, format="PNG")
    return buffer.getvalue()


def empty_chunks_png(count: int = 100_000) -> bytes:
    import struct
    import zlib

    png = big_png(64)
    empty = struct.pack(">I", 0) + b"abCd" + struct.pack(">I", zlib.crc32(b"abCd"))
    return png[:33] + empty * count + png[33:]


def many_scans_jpeg(side: int = 1999, repeats: int = 20_000) -> bytes:
    """A progressive JPEG of one colour whose smallest scan is sent `repeats` more times before its end."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (90, 140, 200)).save(buffer, format="JPEG", progressive=True)
    data = buffer.getvalue()
    scans, start = [], data.index(b"\xff\xda")
    while start >= 0:
        end = data.find(b"\xff\xda", start + 2)
        scans.append(data[start:end if end >= 0 else len(data) - 2])
        start = end
    return data[:-2] + min(scans[1:], key=len) * repeats + b"\xff\xd9"


def series(text: str) -> int:
    return sum(1 for line in text.splitlines() if line.startswith("alexnet_requests_total{"))


async def good_clients(url: str, images: list[bytes], clients: int, seconds: float, post) -> dict:
    latencies, statuses = [], {}
    end = time.monotonic() + seconds
    import aiohttp

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        async def client(index: int) -> None:
            while time.monotonic() < end:
                started = time.monotonic()
                try:
                    status, _ = await post(http, url, images[index % len(images)])
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    status = type(exc).__name__
                statuses[status] = statuses.get(status, 0) + 1
                latencies.append(time.monotonic() - started)

        await asyncio.gather(*(client(i) for i in range(clients)))
    p50, p99 = _quantiles(latencies)
    return {"requests": len(latencies), "per_second": len(latencies) / seconds, "p50_ms": p50, "p99_ms": p99,
            "statuses": statuses}


async def _slow_upload(host: str, port: int, stop: asyncio.Event, opened: list[int]) -> None:
    while not stop.is_set():
        writer = None
        try:
            reader, writer = await asyncio.open_connection(host, port)
            opened[0] += 1
            writer.write(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                         b"Content-Length: 1000000\r\n\r\n\x89PNG")
            await writer.drain()
            while not stop.is_set() and not reader.at_eof():
                await asyncio.sleep(1.0)
                writer.write(b"\0")
                await writer.drain()
        except OSError:
            await asyncio.sleep(0.1)
        finally:
            if writer is not None:
                writer.close()


async def _repeat(stop: asyncio.Event, statuses: dict, send) -> None:
    import aiohttp

    while not stop.is_set():
        try:
            status = await send()
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            status = type(exc).__name__
        statuses[status] = statuses.get(status, 0) + 1
        await asyncio.sleep(0.01)


async def attack(url: str, seconds: float, max_queue: int) -> dict:
    """The hostile requests alone, for `seconds`: what `--attack` runs, in a process of its own, so that the
    good clients' event loop (whose latencies are measured) is not the one busy sending them."""
    import aiohttp

    host, port = url.removeprefix("http://").rsplit(":", 1)
    stop = asyncio.Event()
    opened = [0]
    png, under = big_png(8000), big_png(6300)
    dup = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["aGk="]}],
                      "outputs": [{"name": "probabilities"}] * 1000}).encode()
    nested = b"[" * 100_000 + b"]" * 100_000
    chunks, scans = empty_chunks_png(), many_scans_jpeg()
    hostile: dict[str, dict] = {"duplicate outputs": {}, "8000x8000 PNG": {}, "6300x6300 PNG": {},
                                "nested JSON": {}, "invented methods": {}, "PNG of empty chunks": {},
                                "JPEG of 20,000 scans": {}}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        async def status_of(method: str, path: str, **kwargs) -> int:
            async with http.request(method, f"{url}{path}", **kwargs) as response:
                await response.read()
                return response.status

        counter = iter(range(10**9))
        tasks = [asyncio.ensure_future(_slow_upload(host, int(port), stop, opened)) for _ in range(max_queue + 8)]
        tasks += [
            asyncio.ensure_future(_repeat(stop, hostile["duplicate outputs"], lambda: status_of(
                "POST", "/v2/models/alexnet/infer", data=dup, headers={"content-type": "application/json"}))),
            *[asyncio.ensure_future(_repeat(stop, hostile["8000x8000 PNG"], lambda: status_of(
                "POST", "/predict", data=png, headers={"content-type": "image/png"}))) for _ in range(2)],
            *[asyncio.ensure_future(_repeat(stop, hostile["6300x6300 PNG"], lambda: status_of(
                "POST", "/predict", data=under, headers={"content-type": "image/png"}))) for _ in range(4)],
            asyncio.ensure_future(_repeat(stop, hostile["nested JSON"], lambda: status_of(
                "POST", "/v2/models/alexnet/infer", data=nested, headers={"content-type": "application/json"}))),
            asyncio.ensure_future(_repeat(stop, hostile["invented methods"], lambda: status_of(
                f"BREW{next(counter)}", "/predict"))),
            asyncio.ensure_future(_repeat(stop, hostile["PNG of empty chunks"], lambda: status_of(
                "POST", "/predict", data=chunks, headers={"content-type": "image/png"}))),
            asyncio.ensure_future(_repeat(stop, hostile["JPEG of 20,000 scans"], lambda: status_of(
                "POST", "/predict", data=scans, headers={"content-type": "image/jpeg"}))),
        ]
        await asyncio.sleep(1.0)
        print("ready", flush=True)  # every kind has been sent: the measured part begins
        await asyncio.sleep(seconds)
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {"hostile": {name: {str(k): v for k, v in statuses.items()} for name, statuses in hostile.items()},
            "slow_connections_opened": opened[0]}


async def hostile_mix(url: str, images: list[bytes], pid: int, seconds: float, max_queue: int, post, rss_mb,
                      nice: int = 0, attack: bool = True) -> dict:
    """The good clients, a liveness probe and an RSS sampler here; the attack in a process of its own (at
    `nice`, to tell what the attacker's own use of the shared cores costs the good clients). Reports the CPU
    seconds the server and the attacker used. With attack=False, the same without the attack: the clean
    rounds carry the same probe and sampler, so that what the two compare is the attack alone."""
    import subprocess
    import sys

    import aiohttp

    stop = asyncio.Event()
    live: list[float] = []
    rss = [rss_mb(pid)]
    attacker = subprocess.Popen([sys.executable, __file__, "--attack", url, "--seconds", str(seconds + 1),
                                 "--max-queue", str(max_queue)], stdout=subprocess.PIPE, text=True,
                                preexec_fn=(lambda: os.nice(nice)) if nice else None) if attack else None
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        async def probe() -> None:
            while not stop.is_set():
                started = time.monotonic()
                async with http.get(f"{url}/v2/health/live") as response:
                    await response.read()
                live.append(time.monotonic() - started)
                await asyncio.sleep(0.02)

        async def sample() -> None:
            while not stop.is_set():
                rss.append(rss_mb(pid))
                await asyncio.sleep(0.25)

        tasks = [asyncio.ensure_future(probe()), asyncio.ensure_future(sample())]
        if attacker is not None:
            assert attacker.stdout is not None
            # The slow uploads in place, and each kind of refusal sent: the attacker says so.
            await asyncio.get_running_loop().run_in_executor(None, attacker.stdout.readline)
        await asyncio.sleep(0.5)
        await http.get(f"{url}/metrics")  # (its own series)
        before = series(await (await http.get(f"{url}/metrics")).text())
        attacker_cpu = (lambda: cpu_seconds(attacker.pid)) if attacker is not None else (lambda: 0.0)
        cpu = (cpu_seconds(pid), attacker_cpu())
        good = await good_clients(url, images, 8, seconds, post)
        cpu = (cpu_seconds(pid) - cpu[0], attacker_cpu() - cpu[1])
        after = series(await (await http.get(f"{url}/metrics")).text())  # before the slow uploads hang up (499s)
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    attacked = (json.loads(attacker.communicate(timeout=120)[0]) if attacker is not None else
                {"hostile": {}, "slow_connections_opened": 0})
    _, live_p99 = _quantiles(live)
    return {"good": good, **attacked, "live_probes": len(live), "live_p99_ms": live_p99, "rss_start_mb": rss[0],
            "rss_peak_mb": max(rss), "series_before": before, "series_after": after, "attacker_nice": nice,
            "cpu_seconds": {"server": cpu[0], "attacker": cpu[1], "over": seconds}}


def cpu_seconds(pid: int) -> float:
    """A process's user and system CPU time so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="the attack alone (bench/serve.py --hostile starts it)")
    parser.add_argument("--attack", required=True, help="the server's URL")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--max-queue", type=int, default=64)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(attack(args.attack, args.seconds, args.max_queue))))


if __name__ == "__main__":
    main()
