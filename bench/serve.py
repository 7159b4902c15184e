"""alexnet serve against the plain handler a user writes by hand, under the same load, in one run.

    python bench/serve.py                    # the default alexnet at 227 and at 67 pixels, 1/8/32/64 clients
    python bench/serve.py --image-size 227 --seconds 10 --overload-seconds 30
    python bench/serve.py --hostile --image-size 227 --baseline CHECKOUT    # bench/hostile.py
    python bench/serve.py --image-size 227 --clients 32 --int8 --overload-seconds 0   # and the int8 model

The plain handler is FastAPI's documented shape: a `def` endpoint taking an UploadFile, the model loaded once,
torchvision's transforms, one forward pass at batch 1 per request (FastAPI runs it on its thread pool, so
requests run side by side). Both servers load the same checkpoint (the default alexnet, random weights: speed
does not depend on them), in fp32 unless --precision says otherwise, and run one at a time on this machine.

Load: N closed-loop clients (aiohttp, in this process), each posting its own JPEG (500x375, like an ImageNet photo)
as `-F image=@...` again and again, for --seconds after a warm-up. Reported: requests/s, p50 and p99 latency,
and the mean batch (from alexnet serve's /metrics; 1 for the plain handler). Then the overload: requests sent
at 4x alexnet serve's measured rate at 32 clients, open loop, for --overload-seconds: every request must be
answered (200 or 503 with Retry-After), and the server's RSS is sampled against its level at the start.
With --int8, alexnet serve on the int8 model made from the same checkpoint (`make_int8`) as well, at the
same loads, after the others.
"""

# No `from __future__ import annotations`: FastAPI reads the plain handler's UploadFile annotation at runtime.
import argparse
import asyncio
import contextlib
import io
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from common import cpu_name

CLIENTS = (1, 8, 32, 64)
IMAGES = 64


def make_checkpoint(path: Path, image_size: int, classes: int = 10) -> None:
    import torch

    from alexnet_cli.artifacts.checkpoint import Checkpoint
    from alexnet_cli.data.preprocess import Preprocess
    from alexnet_cli.models.alexnet import build_model

    torch.manual_seed(0)
    model = build_model("alexnet", num_classes=classes)
    Checkpoint(arch="alexnet", class_names=tuple(f"class-{i}" for i in range(classes)),
               preprocess=Preprocess.for_arch(image_size, 227), dropout=0.5, state_dict=model.state_dict()).save(path)


def make_int8(checkpoint: Path) -> Path:
    """The checkpoint as `alexnet export --int8` makes it (QDQ, per-channel, reduce-range where the CPU has no
    VNNI), calibrated on random input: its speed, not its accuracy, is what is measured here."""
    import torch

    from alexnet_cli.artifacts.checkpoint import load_checkpoint
    from alexnet_cli.inference.export import export, metadata
    from alexnet_cli.inference.int8 import int8_support, quantize_qdq

    loaded = load_checkpoint(checkpoint)
    fp32 = export(loaded, "onnx", checkpoint.with_suffix(".fp32.onnx")).model_path
    output = checkpoint.with_suffix(".int8.onnx")
    size, generator = loaded.preprocess.image_size, torch.Generator().manual_seed(1)
    calibration = [torch.randn(16, 3, size, size, generator=generator) for _ in range(4)]
    quantize_qdq(fp32, output, lambda: iter(calibration), len(calibration), int8_support())
    output.with_suffix(".json").write_text(json.dumps(metadata(loaded, "onnx-int8")))
    return output


def make_images(count: int = IMAGES) -> list[bytes]:
    """Distinct 500x375 JPEGs of smooth gradients and shapes (about 20-30 kB each, as photos of that size)."""
    import random

    from PIL import Image, ImageDraw

    images = []
    for seed in range(count):
        rng = random.Random(seed)
        image = Image.linear_gradient("L").resize((500, 375)).convert("RGB")
        draw = ImageDraw.Draw(image)
        for _ in range(6):
            x, y = rng.randrange(500), rng.randrange(375)
            draw.ellipse((x, y, x + rng.randrange(30, 200), y + rng.randrange(30, 200)),
                         fill=tuple(rng.randrange(256) for _ in range(3)))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        images.append(buffer.getvalue())
    return images


# -- the plain handler: what a user writes by hand -------------------------------------------------------------

def plain_app(checkpoint: Path):
    import torch
    from fastapi import FastAPI, UploadFile
    from PIL import Image
    from torchvision.transforms import v2

    from alexnet_cli.artifacts.checkpoint import load_checkpoint

    loaded = load_checkpoint(checkpoint)
    model, names, p = loaded.build().eval(), loaded.class_names, loaded.preprocess
    transform = v2.Compose([v2.ToImage(), v2.Resize(p.resize_size, antialias=True), v2.CenterCrop(p.image_size),
                            v2.ToDtype(torch.float32, scale=True), v2.Normalize(p.mean, p.std)])
    app = FastAPI()

    @app.post("/predict")
    def predict(image: UploadFile):
        picture = Image.open(image.file).convert("RGB")
        with torch.inference_mode():
            probabilities = model(transform(picture).unsqueeze(0)).softmax(1)[0]
        top = probabilities.topk(5)
        ranked = [{"label": names[c], "probability": float(v)} for v, c in zip(top.values, top.indices)]
        return {"label": ranked[0]["label"], "confidence": ranked[0]["probability"], "top_k": ranked}

    return app


def run_plain_server(checkpoint: Path) -> None:
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP_NODELAY, as uvicorn's own
    sock.bind(("127.0.0.1", 0))
    sock.listen(2048)
    app = plain_app(checkpoint)
    print(f"listening on http://127.0.0.1:{sock.getsockname()[1]}", file=sys.stderr, flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False)).run(sockets=[sock])


try:  # LitServe, for the comparison the issue asked for; no dependency of this project
    import litserve as ls
except ImportError:
    ls = None

if ls is not None:
    class LitAlexNet(ls.LitAPI):
        """The same model behind LitServe. At module level: LitServe pickles it into its worker process."""

        def __init__(self, checkpoint: str, **knobs) -> None:
            super().__init__(**knobs)
            self.checkpoint = checkpoint

        def setup(self, device):
            import torch
            from torchvision.transforms import v2

            from alexnet_cli.artifacts.checkpoint import load_checkpoint

            loaded = load_checkpoint(self.checkpoint)
            self.model, self.names, p = loaded.build().eval(), loaded.class_names, loaded.preprocess
            self.transform = v2.Compose([v2.ToImage(), v2.Resize(p.resize_size, antialias=True),
                                         v2.CenterCrop(p.image_size), v2.ToDtype(torch.float32, scale=True),
                                         v2.Normalize(p.mean, p.std)])

        def decode_request(self, request):
            from PIL import Image

            return self.transform(Image.open(request["image"].file).convert("RGB"))

        def batch(self, inputs):
            import torch

            return torch.stack(inputs)

        def predict(self, x):
            import torch

            with torch.inference_mode():
                return self.model(x).softmax(1)

        def unbatch(self, output):
            return list(output)

        def encode_response(self, probabilities):
            top = probabilities.topk(5)
            ranked = [{"label": self.names[c], "probability": float(v)} for v, c in zip(top.values, top.indices)]
            return {"label": ranked[0]["label"], "confidence": ranked[0]["probability"], "top_k": ranked}


def run_litserve_server(checkpoint: Path, port: int) -> None:
    """LitServe batching with the same two knobs as alexnet serve's defaults: 32 images, 5 ms."""
    server = ls.LitServer(LitAlexNet(str(checkpoint), max_batch_size=32, batch_timeout=0.005), accelerator="cpu",
                          workers_per_device=1, timeout=120)
    server.run(host="127.0.0.1", port=port, generate_client_file=False, log_level="warning")


def start_litserve(checkpoint: Path) -> tuple[subprocess.Popen, str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    # A session of its own: LitServe's worker processes are stopped with it (stop() signals the group)
    process = subprocess.Popen([sys.executable, __file__, "--litserve-server", str(checkpoint), "--port", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return process, url
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise SystemExit("LitServe did not start")


def start(command: list[str]) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while True:
        line = process.stderr.readline()
        if not line and process.poll() is not None:
            raise SystemExit(f"the server did not start: {' '.join(command)}")
        if "listening on http://" in line:
            return process, line.split("listening on ")[1].split()[0]


def stop(process: subprocess.Popen) -> None:
    """SIGTERM, to the process's whole group where it leads one (LitServe's workers), then SIGKILL after 60 s."""
    group = os.getpgid(process.pid) == process.pid
    try:
        os.killpg(process.pid, signal.SIGTERM) if group else process.terminate()
        process.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL) if group else process.kill()
        process.wait()
    if group:  # workers that outlived their parent
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def batches(url: str) -> tuple[float, float]:
    """(forward passes, images) so far, from alexnet serve's /metrics; (0, 0) for the plain handler."""
    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
            text = response.read().decode()
    except OSError:
        return 0.0, 0.0
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
              if line.startswith(("alexnet_batch_size_count", "alexnet_batch_size_sum"))}
    return values.get("alexnet_batch_size_count", 0.0), values.get("alexnet_batch_size_sum", 0.0)


# -- load ------------------------------------------------------------------------------------------------------

def session(connections: int):
    import aiohttp

    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections),
                                 timeout=aiohttp.ClientTimeout(total=120))


async def post(http, url: str, image: bytes) -> tuple[int, dict]:
    """One `curl -F image=@photo.jpg URL/predict`: (status, headers)."""
    import aiohttp

    form = aiohttp.FormData()
    form.add_field("image", image, filename="photo.jpg", content_type="image/jpeg")
    async with http.post(f"{url}/predict", data=form) as response:
        await response.read()
        return response.status, dict(response.headers)


async def closed_loop(url: str, images: list[bytes], clients: int, warm_up: float, seconds: float) -> dict:
    import aiohttp

    latencies, statuses, errors = [], {}, {}
    begin = time.monotonic()
    measure_from, end = begin + warm_up, begin + warm_up + seconds
    async with session(clients) as http:
        async def client(index: int):
            image = images[index % len(images)]
            while time.monotonic() < end:
                started = time.monotonic()
                try:
                    status, _ = await post(http, url, image)
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    continue
                if started >= measure_from:
                    latencies.append(time.monotonic() - started)
                    statuses[status] = statuses.get(status, 0) + 1

        await asyncio.gather(*(client(i) for i in range(clients)))
    count = len(latencies)
    ordered = sorted(latencies)
    return {"clients": clients, "requests": count, "per_second": count / seconds,
            "p50_ms": 1000 * statistics.median(ordered) if ordered else None,
            "p99_ms": 1000 * ordered[min(count - 1, int(0.99 * count))] if ordered else None,
            "statuses": statuses, "errors": errors}


async def open_loop(url: str, images: list[bytes], rate: float, seconds: float, pid: int) -> dict:
    """Requests sent at `rate` per second whatever the answers, for `seconds`; RSS sampled meanwhile."""
    import aiohttp

    statuses, unanswered, retry_after_missing = {}, {}, 0
    rss = [rss_mb(pid)]
    sampling = True

    async def sample():
        while sampling:
            rss.append(rss_mb(pid))
            await asyncio.sleep(0.25)

    async with session(4096) as http:
        async def one(index: int):
            nonlocal retry_after_missing
            try:
                status, headers = await post(http, url, images[index % len(images)])
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                unanswered[type(exc).__name__] = unanswered.get(type(exc).__name__, 0) + 1
                return
            statuses[status] = statuses.get(status, 0) + 1
            if status == 503 and "Retry-After" not in headers:
                retry_after_missing += 1

        sampler = asyncio.ensure_future(sample())
        begin, tasks, sent = time.monotonic(), [], 0
        while time.monotonic() - begin < seconds:
            due = int((time.monotonic() - begin) * rate) + 1
            while sent < due:
                tasks.append(asyncio.ensure_future(one(sent)))
                sent += 1
            await asyncio.sleep(0.002)
        offered_seconds = time.monotonic() - begin
        await asyncio.gather(*tasks)
        sampling = False
        await sampler
    rss.append(rss_mb(pid))
    return {"rate": rate, "sent": sent, "offered_per_second": sent / offered_seconds, "statuses": statuses,
            "unanswered": unanswered, "retry_after_missing": retry_after_missing, "rss_start_mb": rss[0],
            "rss_peak_mb": max(rss), "rss_end_mb": rss[-1]}


def forward_ceiling(checkpoint: Path, max_batch: int, seconds: float = 3.0) -> dict:
    """The model alone, in this process: images/s at batch 1 and at max_batch, eager, and at max_batch as
    alexnet serve runs it (serving.model.batched_forward). Their ratios bound what batching can gain on this
    machine, whatever the server around it does."""
    import torch

    from alexnet_cli.config.settings import ServeConfig
    from alexnet_cli.observer import SilentObserver
    from alexnet_cli.serving.model import ServedModel

    served = ServedModel.load(ServeConfig(weights=checkpoint, device="cpu", precision="fp32"), SilentObserver())
    size = served.preprocess.image_size
    rates = {}
    with torch.inference_mode():
        for name, forward, batch in (("batch_1", served.model, 1), ("eager_max", served.model, max_batch),
                                     ("served_max", served.forward, max_batch)):
            x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
            forward(x)
            started, images = time.perf_counter(), 0
            while time.perf_counter() - started < seconds:
                forward(x)
                images += batch
            rates[name] = images / (time.perf_counter() - started)
    return {**rates, "max_batch": max_batch, "ratio": rates["served_max"] / rates["batch_1"]}


def _batch(mean: float | None) -> str:
    return "n/a" if mean is None else f"{mean:.1f}"


def measure(url: str, images: list[bytes], levels, warm_up: float, seconds: float, batch: float | None = None
            ) -> list[dict]:
    rows = []
    for clients in levels:
        count_before, sum_before = batches(url)
        row = asyncio.run(closed_loop(url, images, clients, warm_up, seconds))
        count_after, sum_after = batches(url)
        # alexnet serve's from its /metrics; 1 for the plain handler by construction; unknown for LitServe
        row["mean_batch"] = ((sum_after - sum_before) / (count_after - count_before) if count_after > count_before
                             else batch)
        rows.append(row)
        print(f"  {clients:>3} clients: {row['per_second']:6.1f} req/s, p50 {row['p50_ms']:7.1f} ms, p99 "
              f"{row['p99_ms']:7.1f} ms, mean batch {_batch(row['mean_batch'])}, statuses {row['statuses']}, "
              f"client errors {row['errors']}", flush=True)
    return rows


def one_size(image_size: int, args, images: list[bytes], folder: Path) -> dict:
    checkpoint = folder / f"alexnet-{image_size}.pt"
    make_checkpoint(checkpoint, image_size)
    print(f"\n== alexnet at {image_size} px, {args.precision}", flush=True)
    ceiling = forward_ceiling(checkpoint, 32)
    print(f"the model alone: {ceiling['batch_1']:.1f} images/s at batch 1, {ceiling['eager_max']:.1f} at batch 32, "
          f"{ceiling['served_max']:.1f} at batch 32 as alexnet serve runs it ({ceiling['ratio']:.2f}x batch 1: what "
          f"batching can gain here)", flush=True)
    print("plain FastAPI handler, batch 1 per request:", flush=True)
    plain, url = start([sys.executable, __file__, "--plain-server", str(checkpoint)])
    try:
        plain_rows = measure(url, images, args.clients, args.warm_up, args.seconds, batch=1.0)
    finally:
        stop(plain)
    litserve_rows = None
    if args.litserve:
        print("LitServe, max_batch_size 32, batch_timeout 5 ms:", flush=True)
        process, url = start_litserve(checkpoint)
        try:
            litserve_rows = measure(url, images, args.clients, args.warm_up, args.seconds)
        finally:
            stop(process)
    print("alexnet serve:", flush=True)
    served, url = start([sys.executable, "-m", "alexnet_cli", "serve", "--weights", str(checkpoint), "--port", "0",
                         "--device", "cpu", "--precision", args.precision, "--quiet"])
    overload = None
    try:
        served_rows = measure(url, images, args.clients, args.warm_up, args.seconds)
        if args.overload_seconds > 0:
            at_32 = next((r for r in served_rows if r["clients"] == 32), served_rows[-1])
            rate = 4 * at_32["per_second"]
            print(f"overload: {rate:.0f} requests/s (4x) for {args.overload_seconds:g} s", flush=True)
            overload = asyncio.run(open_loop(url, images, rate, args.overload_seconds, served.pid))
            print(f"  sent {overload['sent']} ({overload['offered_per_second']:.0f}/s), statuses "
                  f"{overload['statuses']}, unanswered {overload['unanswered']}, RSS "
                  f"{overload['rss_start_mb']:.0f} MB at the start, peak "
                  f"{overload['rss_peak_mb']:.0f} MB ({overload['rss_peak_mb'] / overload['rss_start_mb']:.3f}x), "
                  f"end {overload['rss_end_mb']:.0f} MB", flush=True)
    finally:
        stop(served)
        exit_code = served.wait()
    int8_rows = None
    if args.int8:
        print("alexnet serve, the int8 model (alexnet export --int8):", flush=True)
        served, url = start([sys.executable, "-m", "alexnet_cli", "serve", "--weights", str(make_int8(checkpoint)),
                             "--port", "0", "--quiet"])
        try:
            int8_rows = measure(url, images, args.clients, args.warm_up, args.seconds)
        finally:
            stop(served)
    return {"image_size": image_size, "forward": ceiling, "plain": plain_rows, "litserve": litserve_rows,
            "serve": served_rows, "serve_int8": int8_rows, "overload": overload,
            "serve_exit_code_after_sigterm": exit_code}


def report(result: dict) -> None:
    """One markdown table per model size: each server's requests/s and latency at each load."""
    servers = [("plain", result["plain"]), *([("LitServe", result["litserve"])] if result["litserve"] else []),
               ("alexnet serve", result["serve"]),
               *([("alexnet serve int8", result["serve_int8"])] if result.get("serve_int8") else [])]
    print(f"\n| alexnet at {result['image_size']} px | " + " | ".join(f"{name} req/s" for name, _ in servers)
          + " | serve / plain | " + ("int8 / plain | " if result.get("serve_int8") else "")
          + " | ".join(f"{name} p50 / p99 ms" for name, _ in servers) + " | mean batch |")
    print("|---" * (2 * len(servers) + 3 + bool(result.get("serve_int8"))) + "|")
    for i, plain in enumerate(result["plain"]):
        served = result["serve"][i]
        print(f"| {plain['clients']} clients | " + " | ".join(f"{rows[i]['per_second']:.1f}" for _, rows in servers)
              + f" | **{served['per_second'] / plain['per_second']:.2f}x**"
              + (f" | **{result['serve_int8'][i]['per_second'] / plain['per_second']:.2f}x**"
                 if result.get("serve_int8") else "") + " | "
              + " | ".join(f"{rows[i]['p50_ms']:.0f} / {rows[i]['p99_ms']:.0f}" for _, rows in servers)
              + f" | {_batch(served['mean_batch'])} |")


def hostile_run(image_size: int, args, images: list[bytes], folder: Path) -> dict:
    """--hostile: 8 good clients alone, then the same clients under the hostile mix (bench/hostile.py), in
    --rounds alternating rounds on one server (the machine's own noise moves a single round's p99 by a third);
    both with the liveness probe and the RSS sampler running beside the good clients, so that what differs is
    the attack. With --baseline, first the throughput at 32 clients of this tree's server against the baseline
    tree's, rounds alternating too."""
    from hostile import good_clients, hostile_mix

    checkpoint = folder / f"alexnet-{image_size}.pt"
    make_checkpoint(checkpoint, image_size)
    command = [sys.executable, "-m", "alexnet_cli", "serve", "--port", "0", "--device", "cpu", "--precision",
               args.precision]
    result: dict = {"image_size": image_size, "serve_args": args.serve_args, "rounds": []}
    if args.baseline:
        result["clean_32"] = clean_against_baseline(command, checkpoint, args, images)
    command += args.serve_args.split()  # this tree's server only: the baseline's may not know them
    served, url = start([*command, "--weights", str(checkpoint)])
    drain(served)
    try:
        asyncio.run(good_clients(url, images, 8, args.warm_up, post))  # warm
        for _ in range(args.rounds):
            result["rounds"].append({
                "clean": asyncio.run(hostile_mix(url, images, served.pid, args.seconds, 64, post, rss_mb,
                                                 attack=False))["good"],
                "hostile": asyncio.run(hostile_mix(url, images, served.pid, args.seconds, 64, post, rss_mb,
                                                   args.attacker_nice))})
    finally:
        stop(served)
    clean_p99 = statistics.median(r["clean"]["p99_ms"] for r in result["rounds"])
    mix_p99 = statistics.median(r["hostile"]["good"]["p99_ms"] for r in result["rounds"])
    result["p99_ratio"] = mix_p99 / clean_p99
    return result


def drain(process: subprocess.Popen) -> None:
    import threading

    threading.Thread(target=lambda: [None for _ in process.stderr], daemon=True).start()


def clean_against_baseline(command: list[str], checkpoint: Path, args, images: list[bytes]) -> dict:
    """Requests/s at 32 clients, this tree's server and the baseline's (PYTHONPATH=--baseline), in alternating
    rounds, each a fresh server."""
    rates: dict[str, list[float]] = {"this tree": [], "baseline": []}
    for _ in range(args.rounds):
        for name in rates:
            env = {**os.environ, "PYTHONPATH": str(args.baseline)} if name == "baseline" else None
            process = subprocess.Popen([*command, "--weights", str(checkpoint)], stdout=subprocess.DEVNULL,
                                       stderr=subprocess.PIPE,
                                       text=True, env=env)
            while "listening on http://" not in (line := process.stderr.readline()):
                if not line and process.poll() is not None:
                    raise SystemExit(f"the {name} server did not start")
            url = line.split("listening on ")[1].split()[0]
            drain(process)  # the access log, read and dropped: a full pipe would stall the server
            try:
                rates[name].append(asyncio.run(closed_loop(url, images, 32, args.warm_up, args.seconds))["per_second"])
            finally:
                stop(process)
    medians = {name: statistics.median(values) for name, values in rates.items()}
    return {"rounds": rates, "median": medians, "ratio": medians["this tree"] / medians["baseline"]}


def hostile_report(result: dict) -> None:
    print(f"\n== hostile mix, alexnet at {result['image_size']} px" +
          (f" (serve {result['serve_args']})" if result["serve_args"] else ""))
    if "clean_32" in result:
        clean = result["clean_32"]
        print(f"clean traffic, 32 clients: this tree {clean['median']['this tree']:.1f} requests/s, the baseline "
              f"{clean['median']['baseline']:.1f} ({clean['ratio']:.3f}x; rounds {clean['rounds']})")
    rounds = result["rounds"]
    for index, one in enumerate(rounds, 1):
        clean, good = one["clean"], one["hostile"]["good"]
        print(f"round {index}: 8 good clients alone {clean['per_second']:.1f} requests/s, p50 {clean['p50_ms']:.0f} "
              f"ms, p99 {clean['p99_ms']:.0f} ms, {clean['statuses']}; under the mix {good['per_second']:.1f} "
              f"requests/s, p50 {good['p50_ms']:.0f} ms, p99 {good['p99_ms']:.0f} ms "
              f"({good['p99_ms'] / clean['p99_ms']:.2f}x), {good['statuses']}")
    clean_p99 = statistics.median(r["clean"]["p99_ms"] for r in rounds)
    print(f"good requests' p99, the median of {len(rounds)} rounds: {clean_p99:.0f} ms clean, "
          f"{clean_p99 * result['p99_ratio']:.0f} ms under the mix ({result['p99_ratio']:.2f}x)")
    hostiles = [r["hostile"] for r in rounds]
    live = ", ".join(f"{h['live_p99_ms']:.1f}" for h in hostiles)
    print(f"liveness: {sum(h['live_probes'] for h in hostiles)} probes, p99 of each round {live} ms")
    peak = max(h["rss_peak_mb"] for h in hostiles)
    print(f"RSS: {hostiles[0]['rss_start_mb']:.0f} MB at the start, peak {peak:.0f} MB")
    print("metric series, after the first second and at the end of each round: "
          + ", ".join(f"{h['series_before']} -> {h['series_after']}" for h in hostiles))
    print(f"slow upload connections opened: {sum(h['slow_connections_opened'] for h in hostiles)}")
    print("CPU over each round's measured seconds: the server "
          + ", ".join(f"{h['cpu_seconds']['server']:.1f}" for h in hostiles) + " s; the attacker (nice "
          f"{hostiles[0]['attacker_nice']}) " + ", ".join(f"{h['cpu_seconds']['attacker']:.1f}" for h in hostiles)
          + f" s; of {hostiles[0]['cpu_seconds']['over']:g} s")
    for name in hostiles[0]["hostile"]:
        totals: dict[str, int] = {}
        for h in hostiles:
            for status, count in h["hostile"][name].items():
                totals[status] = totals.get(status, 0) + count
        print(f"  {name}: {totals}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image-size", type=int, nargs="+", default=[227, 67])
    parser.add_argument("--clients", type=int, nargs="+", default=list(CLIENTS))
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per level")
    parser.add_argument("--warm-up", type=float, default=2.0, help="seconds of load before measuring")
    parser.add_argument("--overload-seconds", type=float, default=30.0)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--litserve", action="store_true", help="LitServe too (pip install litserve)")
    parser.add_argument("--int8", action="store_true", help="alexnet serve on the int8 model too")
    parser.add_argument("--plain-server", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--litserve-server", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--hostile", action="store_true", help="the hostile mix (bench/hostile.py) instead")
    parser.add_argument("--baseline", type=Path, help="with --hostile: a source tree (a checkout) whose server "
                        "the clean throughput at 32 clients is compared with")
    parser.add_argument("--rounds", type=int, default=3, help="with --hostile: alternating rounds, "
                        "clean and under the mix, and this tree and --baseline's")
    parser.add_argument("--serve-args", default="", help="with --hostile: more options for this tree's alexnet "
                        "serve under the mix, such as \"--refusal-rate 20\"")
    parser.add_argument("--attacker-nice", type=int, default=0, help="with --hostile: the attacker's niceness")
    args = parser.parse_args()
    if args.plain_server:
        return run_plain_server(args.plain_server)
    if args.litserve_server:
        return run_litserve_server(args.litserve_server, args.port)
    import torch

    print(f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, Python {platform.python_version()}")
    images = make_images()
    print(f"{len(images)} JPEGs of 500x375, {statistics.mean(map(len, images)) / 1024:.0f} kB on average")
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for image_size in args.image_size:
            if args.hostile:
                result = hostile_run(image_size, args, images, Path(folder))
                hostile_report(result)
                results.append(result)
                continue
            results.append(one_size(image_size, args, images, Path(folder)))
    if args.hostile:
        if args.json:
            args.json.write_text(json.dumps({"cpu": cpu_name(), "results": results}, indent=2))
        return
    for result in results:
        report(result)
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_name(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
