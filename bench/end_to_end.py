"""End to end: `alexnet train` against the original's plain ImageFolder/DataLoader loop, loading included.

    python bench/end_to_end.py [--images 320] [--large 48] [--rounds 3] [--cache DIR]

Generates (once, under --cache) a folder of 500x375 JPEGs and a folder of 4000x3000 JPEGs, two classes.
Each round trains one epoch with each contender on the 500x375 folder:
  - plain: torchvision ImageFolder with the original's transforms (Resize 227, CenterCrop, ToTensor), a
    DataLoader(batch_size=32, shuffle=True) and the original's eager fp32 step;
  - alexnet train: the engine as the CLI runs it (--epochs 1 --val-split 0), its images/s from metrics.csv.
Then `alexnet train` on the 4000x3000 folder, against its own step on random input measured in the same run.
Targets (issue 6): alexnet/plain >= 2 on 500x375; 4000x3000 keeps >= 85% of the random-input speed.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
import time
from pathlib import Path

from common import OriginalLoop, make_jpeg_folder, row


def plain_epoch(folder: Path, batch_size: int) -> float:
    import torch
    from torchvision import datasets, transforms

    from alexnet_cli.models import build_model

    dataset = datasets.ImageFolder(folder, transform=transforms.Compose(
        [transforms.Resize(227), transforms.CenterCrop(227), transforms.ToTensor()]))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True)
    loop = OriginalLoop(build_model("alexnet", num_classes=len(dataset.classes)).train())
    start = time.perf_counter()
    for images, labels in loader:
        loop.step(images, labels)
    return len(dataset) / (time.perf_counter() - start)


def tool_epoch(folder: Path, batch_size: int, out: Path) -> float:
    from alexnet_cli.config import TrainConfig
    from alexnet_cli.engine import SilentObserver, train

    cfg = TrainConfig(data=folder, epochs=1, val_split=0, batch_size=batch_size, output=out, log_interval=1000)
    train(cfg, SilentObserver())
    with open(out / "metrics.csv") as handle:
        return float(list(csv.DictReader(handle))[-1]["images_per_second"])


def tool_random_input(batch_size: int, steps: int = 6) -> float:
    import torch

    from alexnet_cli.device import resolve_precision
    from alexnet_cli.engine import make_optimizer, to_device, train_step
    from alexnet_cli.models import build_model

    device = torch.device("cpu")
    precision = resolve_precision("auto", device)
    model = build_model("alexnet", num_classes=2).to(memory_format=torch.channels_last).train()
    optimizer = make_optimizer("adam", model, lr=1e-4, weight_decay=0.0, device=device)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    criterion = torch.nn.CrossEntropyLoss()
    images = to_device(torch.randn(batch_size, 3, 227, 227), device)
    labels = torch.randint(0, 2, (batch_size,))
    for _ in range(2):
        train_step(model, images, labels, optimizer, scaler, criterion, precision)
    start = time.perf_counter()
    for _ in range(steps):
        train_step(model, images, labels, optimizer, scaler, criterion, precision)
    return batch_size * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=320, help="500x375 JPEGs")
    parser.add_argument("--large", type=int, default=48, help="4000x3000 JPEGs")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "alexnet-bench")
    args = parser.parse_args()

    small = make_jpeg_folder(args.cache / f"jpeg-500x375-{args.images}", args.images, (500, 375))
    large = make_jpeg_folder(args.cache / f"jpeg-4000x3000-{args.large}", args.large, (4000, 3000))
    plain, tool = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            plain.append(plain_epoch(small, args.batch_size))
            tool.append(tool_epoch(small, args.batch_size, Path(tmp) / f"small{i}"))
        large_rates = [tool_epoch(large, args.batch_size, Path(tmp) / f"large{i}") for i in range(args.rounds)]
    random_rates = [tool_random_input(args.batch_size) for _ in range(args.rounds)]

    print(f"{args.images} JPEGs of 500x375 and {args.large} of 4000x3000, batch {args.batch_size}, "
          f"{args.rounds} rounds (one epoch each)")
    print(row("plain ImageFolder loop, 500x375", plain, " img/s"))
    print(row("alexnet train, 500x375", tool, " img/s"))
    print(row("alexnet train, 4000x3000", large_rates, " img/s"))
    print(row("alexnet train step, random input", random_rates, " img/s"))
    print(f"alexnet/plain on 500x375: x{statistics.median(tool) / statistics.median(plain):.2f} (target >= 2)")
    kept = statistics.median(large_rates) / statistics.median(random_rates)
    print(f"4000x3000 against random input: {kept:.0%} (target >= 85%)")


if __name__ == "__main__":
    main()
