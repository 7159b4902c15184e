"""The small figures the docs quote for choices in the code, measured in one run on this machine:

1. the classifier's 9216x4096 Linear layer, ms per call: the default sgemm at batch 16, oneDNN's layout at
   batch 16 (what `alexnet serve` keeps its classifier in), and the default at batch 1;
2. one training sample's decode, resize and crop, as a loader process makes it from a 500x375 JPEG, ms on one
   thread;
3. the folder index's header checks of 500x375 JPEGs in the page cache, files/s: one thread against 64;
4. a training step of the default alexnet at batch 32 on random input, images/s at 131 and at 227 pixels (the
   input `alexnet train` picks for small images, against the architecture's own);
5. saving a checkpoint the size of a best.pt (the weights and Adam's two moments, about 700 MB) with the zip's
   CRC-32s and without them (as artifacts/checkpoint.py saves), seconds;
6. importing torch, and torch with torchvision (which imports torch._dynamo), in fresh processes, seconds.

    python bench/figures.py [--rounds 5] [--files 2000]

Each figure is the median of --rounds, the variants of a figure alternating round by round. docs/performance.md
("The figures behind the code's choices") quotes them with the CPU they were measured on.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import cpu_name, make_jpeg_folder


def timed(call, repeat: int) -> float:
    """Seconds per call, over `repeat` calls after one to warm up."""
    call()
    start = time.perf_counter()
    for _ in range(repeat):
        call()
    return (time.perf_counter() - start) / repeat


def alternate(variants: dict, rounds: int, repeat: int) -> dict[str, float]:
    """The median seconds per call of each variant, measured in alternation."""
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, call in variants.items():
            seconds[name].append(timed(call, repeat))
    return {name: statistics.median(values) for name, values in seconds.items()}


def linear_layer(rounds: int) -> None:
    import copy

    import torch
    from torch.utils.mkldnn import to_mkldnn

    layer = torch.nn.Linear(9216, 4096).eval()
    onednn = to_mkldnn(copy.deepcopy(layer))
    x16, x1 = torch.randn(16, 9216), torch.randn(1, 9216)
    with torch.inference_mode():
        result = alternate({"default, batch 16": lambda: layer(x16), "oneDNN layout, batch 16": lambda: onednn(x16),
                            "default, batch 1": lambda: layer(x1)}, rounds, 10)
    print("1. the 9216x4096 Linear layer, ms per call: " +
          ", ".join(f"{name} {value * 1e3:.1f}" for name, value in result.items()))


def decode(rounds: int, folder: Path) -> None:
    import torch

    from alexnet_cli.data.augment import Augmentation
    from alexnet_cli.data.loading import ImageDataset
    from alexnet_cli.data.preprocess import Chain, Preprocess

    torch.set_num_threads(1)
    paths = sorted(str(p) for p in folder.rglob("*.jpg"))[:64]
    preprocess = Preprocess.for_arch(227, 227)
    crop = Augmentation().train_crop(preprocess)
    dataset = ImageDataset(paths, [0] * len(paths), Chain(preprocess.decode_transforms(), crop), 0,
                           preprocess.resize_size)

    def all_samples() -> None:
        for i in range(len(dataset)):
            dataset[i]

    per_sample = statistics.median(timed(all_samples, 1) for _ in range(rounds)) / len(paths)
    print(f"2. one training sample from a 500x375 JPEG (decode, resize to {preprocess.resize_size}, crop 227), "
          f"one thread: {per_sample * 1e3:.2f} ms")


def index_checks(rounds: int, folder: Path) -> None:
    from alexnet_cli.data.headers import check_file

    paths = sorted(str(p) for p in folder.rglob("*.jpg"))
    for path in paths:  # into the page cache
        Path(path).read_bytes()

    def one_thread() -> None:
        for path in paths:
            check_file(path)

    def many_threads() -> None:
        with ThreadPoolExecutor(64) as pool:
            list(pool.map(check_file, paths, chunksize=64))

    result = alternate({"1 thread": one_thread, "64 threads": many_threads}, rounds, 1)
    print(f"3. the index's header checks of {len(paths):,} JPEGs in the page cache, files/s: " +
          ", ".join(f"{name} {len(paths) / value:,.0f}" for name, value in result.items()))


def training_step(rounds: int) -> None:
    import torch

    from alexnet_cli.models.alexnet import build_model
    from alexnet_cli.runtime.context import configure_backends
    from alexnet_cli.runtime.precision import resolve_precision
    from alexnet_cli.training import make_optimizer, train_step

    torch.set_num_threads(torch.get_num_threads())
    device = torch.device("cpu")
    configure_backends(device)
    precision = resolve_precision("fp32", device)

    def step_at(size: int):
        torch.manual_seed(0)
        model = build_model("alexnet", num_classes=10).to(memory_format=torch.channels_last).train()
        optimizer = make_optimizer("adam", model, lr=1e-4, weight_decay=0.0, device=device)
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        images = torch.randn(32, 3, size, size).contiguous(memory_format=torch.channels_last)
        labels = torch.randint(0, 10, (32,))
        criterion = torch.nn.CrossEntropyLoss()
        return lambda: train_step(model, images, labels, optimizer, scaler, criterion, precision)

    result = alternate({"131 px": step_at(131), "227 px": step_at(227)}, rounds, 2)
    print("4. a training step of alexnet at batch 32 (fp32), images/s: " +
          ", ".join(f"{name} {32 / value:.0f}" for name, value in result.items()))


def checkpoint_save(rounds: int, folder: Path) -> None:
    import torch

    from alexnet_cli.models.alexnet import build_model

    state = build_model("alexnet", num_classes=1000).state_dict()
    payload = {"model": state, "exp_avg": {k: v.clone() for k, v in state.items()},
               "exp_avg_sq": {k: v.clone() for k, v in state.items()}}
    size = sum(v.numel() * v.element_size() for part in payload.values() for v in part.values())

    def save(crc: bool):
        def call() -> None:
            torch.serialization.set_crc32_options(crc)
            try:
                torch.save(payload, folder / "checkpoint.pt")
            finally:
                torch.serialization.set_crc32_options(True)
        return call

    result = alternate({"with CRC-32s": save(True), "without": save(False)}, rounds, 1)
    (folder / "checkpoint.pt").unlink()
    print(f"5. torch.save of {size / 1e6:,.0f} MB, seconds: " +
          ", ".join(f"{name} {value:.2f}" for name, value in result.items()))


def imports(rounds: int) -> None:
    import subprocess
    import sys

    def run(code: str):
        return lambda: subprocess.run([sys.executable, "-c", code], check=True)

    result = alternate({"import torch": run("import torch"),
                        "import torch, torchvision": run("import torch, torchvision")}, rounds, 1)
    print("6. in a fresh process, seconds: " + ", ".join(f"{name} {value:.2f}" for name, value in result.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "alexnet-bench-figures")
    args = parser.parse_args()
    import torch

    print(f"{cpu_name()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    folder = make_jpeg_folder(args.cache / f"jpegs-{args.files}", args.files, (500, 375))
    linear_layer(args.rounds)
    index_checks(args.rounds, folder)
    training_step(args.rounds)
    checkpoint_save(args.rounds, args.cache)
    imports(args.rounds)
    decode(args.rounds, folder)  # last: it sets torch to one thread


if __name__ == "__main__":
    main()
