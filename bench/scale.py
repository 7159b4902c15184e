"""ImageNet's scale: the time to the first training step, and the peak memory of the process and its loader
processes, for `alexnet train` (a first run, which builds the folder index, and a second, which reads it)
against torchvision's ImageFolder + DataLoader with the same model, batch and workers.

    python bench/scale.py [--files 10000 100000] [--classes 1000] [--workers 2] [--damaged 5] [--root DIR]
                          [--million] [--page-cache warm|cold]
    python bench/scale.py --samples 1281167

With --samples, it measures instead what a loader process costs per sample list: N synthetic ImageNet paths
held as a list of (path, label) tuples (torchvision's ImageFolder.samples) or as alexnet-cli's flat tensors
(data/samples.py), each sent to 2 loader processes started by fork and by spawn that read every sample once:
the pickle a spawned process receives, and each process's private memory (USS: what fork's copy-on-read and
spawn's unpickling cost it) and RSS after the pass.

Each tree is N JPEGs of 500x375 (about 44 kB each, like an ImageNet photo) in C class folders under
--root (default: the temp folder), built once and kept; with --damaged, that many files are broken in ways
that stop a decode (truncated, empty, not an image, a decompression-bomb header, cut mid-stream), and the
script checks that `alexnet train` names every one before its first step. With --million, a tree of
1,000,000 smaller JPEGs (160x120: the listing and the checks cost per file, not per byte) is measured too.

--page-cache warm (the default) reads every file of a tree once before its runs, so the files are in the
page cache (a second run on a machine with the memory for it); cold drops the page cache before each run
(`echo 3 > /proc/sys/vm/drop_caches`, as root): a fresh machine, or a data set larger than its memory.

Both sides are whole processes, started the same way and timed from their start to their first optimizer
step (a line they print), then stopped; memory is sampled every 100 ms over the process and all its
children: the peak of the summed RSS (what `ps` shows, counting pages that forked processes share once per
process) and of the summed PSS (each shared page split between its sharers: what the machine spends).

The baseline is what a user writes by hand: torchvision's ImageFolder (Resize(256), RandomCrop(227), flip,
ToTensor, Normalize), a DataLoader with shuffling, torchvision's alexnet with 1,000 outputs, Adam, fp32.
`alexnet train` runs with --precision fp32 --device cpu --workers W --batch-size 64 --epochs 1 (both at
batch 64), its index in a fresh cache folder for the first run, and the same folder for the second; the
first and second runs with --cache off (the start-up alone), and a third with the default --cache auto,
which where the images fit in memory also decodes them all before the first step (and no epoch then does).
Targets (issue 30), at 100,000 files: second run <= 1.5x torchvision's time, first run <= 4x, the peak
memory with 2 workers <= 1.3x.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIRST_STEP = re.compile(r"Iter \[1/\d+\] Loss|^first step$", re.M)

TORCHVISION = r"""
import sys
import torch, torchvision
from torchvision import transforms

root, workers, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(1)
dataset = torchvision.datasets.ImageFolder(root, transforms.Compose([
    transforms.Resize(256), transforms.RandomCrop(227), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
    transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))]))
loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers)
model = torchvision.models.alexnet(num_classes=len(dataset.classes))
optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
criterion = torch.nn.CrossEntropyLoss()
for images, labels in loader:
    optimizer.zero_grad()
    criterion(model(images), labels).backward()
    optimizer.step()
    print("first step", file=sys.stderr, flush=True)
    break
"""


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


# ------------------------------------------------------------------------------------------------ the trees


def _jpegs(size: tuple[int, int], count: int = 48) -> list[bytes]:
    """A few distinct photo-like JPEGs (noise over gradients): the files repeat them."""
    from PIL import Image, ImageFilter

    rng = random.Random(0)
    encoded = []
    for _ in range(count):
        base = Image.linear_gradient("L").resize(size).convert("RGB")
        noise = Image.effect_noise(size, rng.uniform(20, 80)).convert("RGB")
        image = Image.blend(base, noise, 0.5).filter(ImageFilter.GaussianBlur(1))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        encoded.append(buffer.getvalue())
    return encoded


def _damaged(good: bytes) -> dict[str, bytes]:
    """Five ways a file stops a decode, each caught by the index's cheap check."""
    import zlib

    from PIL import Image

    png = io.BytesIO()
    Image.new("L", (1, 1)).save(png, format="PNG")
    bomb = bytearray(png.getvalue())
    bomb[16:24] = (30_000).to_bytes(4, "big") * 2  # declares 900 megapixels
    bomb[29:33] = zlib.crc32(bytes(bomb[12:29])).to_bytes(4, "big")
    return {"truncated": good[: len(good) // 2], "empty": b"", "not-an-image": b"<html>503 Service Unavailable</html>",
            "bomb": bytes(bomb), "cut-mid-stream": good[: len(good) - 4000]}


def build_tree(root: Path, files: int, classes: int, size: tuple[int, int], damaged: int) -> list[Path]:
    """root/<class>/<class>_<i>.JPEG, written once (a marker file says it is whole); the damaged files' paths."""
    marker = root / ".complete"
    # the first file of every (classes / damaged)-th class
    step = max(1, classes // max(1, damaged))
    broken = [root / f"c{c:04d}" / f"c{c:04d}_{c:07d}.JPEG" for c in range(0, classes, step)][:damaged]
    if marker.is_file():
        return broken
    shutil.rmtree(root, ignore_errors=True)
    encoded = _jpegs(size)
    started = time.perf_counter()
    for c in range(classes):
        folder = root / f"c{c:04d}"
        folder.mkdir(parents=True)
        for i in range(c, files, classes):  # files spread evenly over the classes
            (folder / f"c{c:04d}_{i:07d}.JPEG").write_bytes(encoded[i % len(encoded)])
    for path, content in zip(broken, _damaged(encoded[0]).values()):
        path.write_bytes(content)
    marker.touch()
    print(f"  built {root}: {files:,} files in {classes:,} classes in {time.perf_counter() - started:.0f} s",
          flush=True)
    return broken


# ---------------------------------------------------------------------------------------- memory sampling


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as handle:
            return [int(p) for p in handle.read().split()]
    except OSError:
        return []


def _tree(pid: int) -> list[int]:
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        pending.extend(_children(current))
    return found


def _memory(pid: int) -> tuple[int, int, int]:
    """(RSS, PSS, processes) summed over the process and its descendants, in bytes."""
    rss = pss = count = 0
    for member in _tree(pid):
        try:
            with open(f"/proc/{member}/smaps_rollup") as handle:
                for line in handle:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1]) * 1024
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1]) * 1024
            count += 1
        except OSError:
            continue
    return rss, pss, count


def to_first_step(command: list[str], env: dict[str, str]) -> dict:
    """Start `command`, wait for its first step (a line it prints), stop it; its time and peak memory."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                               start_new_session=True)
    peak = {"rss": 0, "pss": 0, "processes": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            rss, pss, count = _memory(process.pid)
            peak["rss"], peak["pss"] = max(peak["rss"], rss), max(peak["pss"], pss)
            peak["processes"] = max(peak["processes"], count)
            time.sleep(0.1)  # smaps_rollup walks the page tables: more often would take a core

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    lines, seconds = [], None
    for line in process.stderr:
        lines.append(line)
        if FIRST_STEP.search(line):
            seconds = time.perf_counter() - started
            break
    done.set()
    sampler.join()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # the whole group: the loader processes too
    process.wait()
    output = "".join(lines)
    if seconds is None:
        raise SystemExit(f"no first step from {' '.join(command)}:\n{output[-3000:]}")
    return {"seconds": seconds, **peak, "output": output}


# ------------------------------------------------------------------------------------------------ the runs


def warm(tree: Path) -> None:
    """Every file of the tree read once, so that it is in the page cache."""
    from concurrent.futures import ThreadPoolExecutor

    paths = [entry.path for folder in os.scandir(tree) if folder.is_dir() for entry in os.scandir(folder.path)]
    with ThreadPoolExecutor(32) as pool:
        for _ in pool.map(lambda path: len(Path(path).read_bytes()), paths):
            pass


def drop_page_cache() -> None:
    subprocess.run(["sync"], check=True)
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as exc:
        raise SystemExit(f"--page-cache cold needs root on Linux: {exc}") from None


def measure(tree: Path, workers: int, broken: list[Path], cache_dir: Path, cold: bool) -> dict[str, dict]:
    if not cold:
        warm(tree)
    before = drop_page_cache if cold else (lambda: None)
    env = {**os.environ, "ALEXNET_CACHE_DIR": str(cache_dir), "PYTHONPATH": str(REPO)}
    env.pop("ALEXNET_DEBUG", None)
    shutil.rmtree(cache_dir, ignore_errors=True)
    train = [sys.executable, "-m", "alexnet_cli", "train", str(tree), "--epochs", "1", "--workers", str(workers),
             "--batch-size", "64", "--precision", "fp32", "--device", "cpu", "--log-interval", "1",
             "--output", str(cache_dir / "run")]
    baseline = [sys.executable, "-c", TORCHVISION, str(tree), str(workers), "64"]
    before()
    results = {"torchvision": to_first_step(baseline, env)}
    # --cache off: the start-up itself; the default (auto) also decodes every image first where they fit in
    # memory (at 10,000 of these files, 2.6 GB), which the epochs then do not.
    before()
    results["alexnet, first run"] = to_first_step([*train, "--cache", "off"], env)
    shutil.rmtree(cache_dir / "run", ignore_errors=True)
    before()
    results["alexnet, second run"] = to_first_step([*train, "--cache", "off"], env)
    shutil.rmtree(cache_dir / "run", ignore_errors=True)
    before()
    results["alexnet, second, auto"] = to_first_step(train, env)
    for name in ("alexnet, first run", "alexnet, second run"):
        named = [path for path in broken if f"skipped {path}:" in results[name]["output"]]
        results[name]["named"] = f"{len(named)} of {len(broken)}"
    return results


def report(files: int, results: dict[str, dict]) -> None:
    base = results["torchvision"]
    print(f"\n{files:,} files: time to the first step and peak memory (main process + loader processes)")
    print(f"  {'':<22} {'seconds':>8} {'x tv':>6} {'ms/1k files':>11} {'RSS GiB':>8} {'x tv':>6} {'PSS GiB':>8} "
          f"{'x tv':>6} {'procs':>5}  damaged files named")
    for name, r in results.items():
        print(f"  {name:<22} {r['seconds']:8.1f} {r['seconds'] / base['seconds']:6.2f} "
              f"{1000 * r['seconds'] / files * 1000:11.1f} {r['rss'] / 2**30:8.2f} {r['rss'] / base['rss']:6.2f} "
              f"{r['pss'] / 2**30:8.2f} {r['pss'] / base['pss']:6.2f} {r['processes']:5d}  {r.get('named', '-')}")
    index = re.findall(r"^index: .*$", results["alexnet, first run"]["output"], re.M)
    if index:
        print(f"  first run's index: {index[0]}")


# ------------------------------------------------------------------------------------------ sample memory


class TupleSamples:
    """torchvision's way: a list of (path, label) tuples."""

    def __init__(self, samples):
        self.samples = samples

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        path, label = self.samples[index]
        return len(path) + label


class FlatSamples:
    """alexnet-cli's way: the paths as one byte buffer and offsets, the labels as a tensor (data/samples.py)."""

    def __init__(self, paths, labels):
        self.paths, self.labels = paths, labels

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        return len(self.paths[index]) + int(self.labels[index])


def _private_and_rss(pid: int) -> tuple[int, int]:
    private = rss = 0
    with open(f"/proc/{pid}/smaps_rollup") as handle:
        for line in handle:
            key, value = line.split(":", 1)
            if key in ("Private_Clean", "Private_Dirty"):
                private += int(value.split()[0]) * 1024
            elif key == "Rss":
                rss = int(value.split()[0]) * 1024
    return private, rss


def sample_memory(n: int) -> None:
    import gc
    from multiprocessing.reduction import ForkingPickler

    import torch
    from torch.utils.data import DataLoader

    from alexnet_cli.data.samples import Paths, Strings

    print(f"\n{n:,} samples (synthetic ImageNet paths), 2 loader processes, each sample read once:")
    names = [f"n{c:08d}/n{c:08d}_{i}.JPEG" for i in range(-(-n // 1000)) for c in range(1000)][:n]
    labels = [i % 1000 for i in range(n)]
    root = "/datasets/imagenet/train"
    print(f"  {'':<34} {'pickle kB':>10} {'USS MB / worker':>15} {'RSS MB / worker':>15}")
    for name in ("list of (path, label) tuples", "flat tensors (alexnet-cli)"):
        if name.startswith("list"):
            dataset = TupleSamples([(f"{root}/{p}", label) for p, label in zip(names, labels)])
        else:
            dataset = FlatSamples(Paths(root, Strings.build(names)), torch.tensor(labels))
        gc.collect()
        pickled = len(ForkingPickler.dumps(dataset))
        for method in ("fork", "spawn"):
            loader = DataLoader(dataset, batch_size=4096, num_workers=2, persistent_workers=True,
                                multiprocessing_context=method)
            iterator = iter(loader)
            for _ in iterator:
                pass
            measured = [_private_and_rss(worker.pid) for worker in iterator._workers]
            iterator._shutdown_workers()
            print(f"  {name + ', ' + method:<34} {pickled / 1e3:10,.1f} "
                  f"{sum(m[0] for m in measured) / len(measured) / 2**20:15.0f} "
                  f"{sum(m[1] for m in measured) / len(measured) / 2**20:15.0f}", flush=True)
        del dataset
        gc.collect()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, nargs="*", default=[10_000, 100_000])
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--damaged", type=int, default=5)
    parser.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "alexnet-scale")
    parser.add_argument("--million", action="store_true", help="also 1,000,000 files of 160x120")
    parser.add_argument("--samples", type=int, help="measure loader processes' memory per sample list instead")
    parser.add_argument("--page-cache", choices=("warm", "cold"), default="warm")
    args = parser.parse_args()
    if args.samples:
        print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; Python {platform.python_version()}")
        sample_memory(args.samples)
        return
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; Python {platform.python_version()}; trees under {args.root}; "
          f"page cache {args.page_cache}")
    trees = [(files, (500, 375)) for files in args.files] + ([(1_000_000, (160, 120))] if args.million else [])
    measured = {}
    for files, size in trees:
        tree = args.root / f"{files}-{size[0]}x{size[1]}"
        broken = build_tree(tree, files, args.classes, size, args.damaged)
        measured[files] = measure(tree, args.workers, broken, args.root / f"cache-{files}", args.page_cache == "cold")
        report(files, measured[files])
    if len(measured) > 1:
        print("\nper-file growth between the two largest trees (ms per 1,000 more files):")
        (small, a), (large, b) = sorted(measured.items())[-2:]
        for name in [n for n in b if "auto" not in n]:
            grow = (b[name]["seconds"] - a[name]["seconds"]) / (large - small) * 1e6
            memory = (b[name]["pss"] - a[name]["pss"]) / (large - small)
            print(f"  {name:<22} {grow:7.1f} ms, {memory / 1024:6.2f} kB PSS per file; at 1.28M files: "
                  f"{b[name]['seconds'] + grow * (1_281_167 - large) / 1e6:6.0f} s, "
                  f"{(b[name]['pss'] + memory * (1_281_167 - large)) / 2**30:5.2f} GiB")


if __name__ == "__main__":
    main()
