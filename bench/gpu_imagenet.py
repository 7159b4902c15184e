"""Training images/s on a GPU from ImageNet-like files: is decoding, not the model, what bounds a GPU?

    python bench/gpu_imagenet.py [--files 64000] [--classes 1000] [--seconds 40] [--batch-size 256]
                                 [--workers N] [--root DIR] [--device cuda]

On a generated tree of 500x375 JPEGs in 1,000 classes, each for about --seconds of steady training (after a
warm-up), with the default alexnet at 227 pixels, bf16 autocast where the device has it:
  1. random input already on the device: the model's own ceiling;
  2. `alexnet train` itself (the product's loaders: Pillow decoding in W worker processes, uint8 crops to the
     device): its images/s from metrics.csv;
  3. the same loop as 4 with Pillow decoding on the CPU workers (the baseline for 4);
  4. the files' bytes read by the workers and decoded on the GPU by torchvision.io.decode_jpeg(device="cuda")
     (nvJPEG), then resized, cropped, flipped and normalised there: where torchvision has it.
GPU decoding is not in the product (issue 17 left it out for want of a GPU); this measures whether it should be.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scale import build_tree

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class FileBytes:
    """(raw bytes as a uint8 tensor, label): what a worker hands over when the GPU decodes."""

    def __init__(self, samples):
        self.samples = samples

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        import torchvision

        path, label = self.samples[index]
        return torchvision.io.read_file(path), label


class PillowCrops:
    """A uint8 crop decoded by Pillow on a CPU worker: resize to 256, random 227 crop (flip on the device)."""

    def __init__(self, samples):
        self.samples = samples

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        import torch
        from PIL import Image

        path, label = self.samples[index]
        with Image.open(path) as image:
            image.draft("RGB", (256, 256))
            image = image.convert("RGB")
            width, height = image.size
            scale = 256 / min(width, height)
            image = image.resize((max(256, round(width * scale)), max(256, round(height * scale))), Image.BILINEAR)
            pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
            pixels = pixels.view(image.height, image.width, 3).permute(2, 0, 1)
        top, left = random.randint(0, pixels.shape[1] - 227), random.randint(0, pixels.shape[2] - 227)
        return pixels[:, top:top + 227, left:left + 227].contiguous(), label


def collate_list(batch):
    import torch

    return [item[0] for item in batch], torch.tensor([item[1] for item in batch])


def gpu_decode(raw, device):
    """nvJPEG on a list of files, then per image: resize the short side to 256, a random 227 crop."""
    import torch
    import torchvision
    from torch.nn.functional import interpolate

    decoded = torchvision.io.decode_jpeg(raw, device=device, mode=torchvision.io.ImageReadMode.RGB)
    crops = []
    for image in decoded:
        height, width = image.shape[1:]
        scale = 256 / min(height, width)
        size = (max(256, round(height * scale)), max(256, round(width * scale)))
        image = interpolate(image[None].float(), size=size, mode="bilinear", antialias=True, align_corners=False)
        top, left = random.randint(0, size[0] - 227), random.randint(0, size[1] - 227)
        crops.append(image[0, :, top:top + 227, left:left + 227])
    return torch.stack(crops)


class Trainer:
    def __init__(self, device, classes: int):
        import torch

        from alexnet_cli.models.alexnet import build_model

        self.device = device
        self.model = build_model("alexnet", num_classes=classes).to(device).to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-4)
        self.criterion = torch.nn.CrossEntropyLoss()
        self.mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(STD, device=device).view(1, 3, 1, 1) * 255
        self.dtype = torch.bfloat16 if device.type == "cpu" or torch.cuda.is_bf16_supported() else torch.float16

    def step(self, images, labels) -> None:
        """images: uint8 or float 0-255 NCHW on the device; flipped at random, normalised, one step."""
        import torch

        flip = torch.rand(images.shape[0], device=self.device) < 0.5
        images = torch.where(flip[:, None, None, None], images.flip(3), images).float()
        images = ((images - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.dtype):
            loss = self.criterion(self.model(images), labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


def timed(batches, step, seconds: float, warmup: int = 5) -> float:
    """Images/s over about `seconds` of steps, after `warmup` steps."""
    import torch

    done, started = 0, None
    for i, (images, labels) in enumerate(batches):
        step(images, labels)
        if i == warmup - 1:
            torch.cuda.synchronize() if torch.cuda.is_available() else None
            started, done = time.perf_counter(), 0
        elif started is not None:
            done += labels.shape[0]
            if time.perf_counter() - started > seconds:
                break
    torch.cuda.synchronize() if torch.cuda.is_available() else None
    return done / (time.perf_counter() - started) if started and done else float("nan")


def product(tree: Path, args) -> float:
    """`alexnet train` for one epoch over the tree; the epoch's images/s from metrics.csv."""
    run = Path(tempfile.mkdtemp()) / "run"
    command = [sys.executable, "-m", "alexnet_cli", "train", str(tree), "--val-split", "0", "--epochs", "1",
               "--batch-size", str(args.batch_size), "--workers", str(args.workers), "--device", args.device,
               "--output", str(run), "--log-interval", "50", "--cache", "off"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    try:
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=max(150, args.seconds * 6))
    except subprocess.TimeoutExpired:
        print("  alexnet train did not finish its epoch in time", flush=True)
        return float("nan")
    if result.returncode != 0:
        print(f"  alexnet train failed: {result.stderr.strip().splitlines()[-1:]}", flush=True)
        return float("nan")
    with open(run / "metrics.csv") as handle:
        return float(next(csv.DictReader(handle))["images_per_second"])


def main() -> None:
    import torch
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=64_000)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=40)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    parser.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "alexnet-gpu-imagenet")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    device = torch.device(args.device)
    started = time.perf_counter()
    build_tree(args.root, args.files, args.classes, (500, 375), damaged=0)  # scale.py's trees, none damaged
    print(f"tree: {args.files:,} JPEGs of 500x375 in {args.classes:,} classes ({time.perf_counter() - started:.0f} s);"
          f" batch {args.batch_size}, {args.workers} loader processes, {os.cpu_count()} CPUs", flush=True)
    samples = ImageFolder(str(args.root)).samples
    trainer = Trainer(device, args.classes)
    rates = {}

    def random_batches():
        images = torch.randint(0, 256, (args.batch_size, 3, 227, 227), dtype=torch.uint8, device=device)
        labels = torch.randint(0, args.classes, (args.batch_size,), device=device)
        while True:
            yield images, labels

    rates["1. random input on the device"] = timed(random_batches(), trainer.step, args.seconds)
    print(f"  {'1. random input on the device':<52} {rates['1. random input on the device']:9,.0f} img/s", flush=True)
    rates["2. alexnet train (Pillow in workers, uint8 crops)"] = product(args.root, args)
    print(f"  {'2. alexnet train (Pillow in workers, uint8 crops)':<52} "
          f"{rates['2. alexnet train (Pillow in workers, uint8 crops)']:9,.0f} img/s", flush=True)
    order = list(range(len(samples)))
    random.Random(1).shuffle(order)
    shuffled = [samples[i] for i in order]
    pillow = DataLoader(PillowCrops(shuffled), batch_size=args.batch_size, num_workers=args.workers,
                        collate_fn=collate_list, pin_memory=device.type == "cuda", persistent_workers=True)

    def pillow_batches():
        while True:
            for crops, labels in pillow:
                yield torch.stack(crops).to(device, non_blocking=True), labels.to(device, non_blocking=True)

    name = "3. same loop, Pillow decoding on the CPU workers"
    rates[name] = timed(pillow_batches(), trainer.step, args.seconds)
    print(f"  {name:<52} {rates[name]:9,.0f} img/s", flush=True)
    name = "4. same loop, nvJPEG decoding on the GPU"
    try:
        torch.ops.image.decode_jpegs_cuda  # noqa: B018 - present only in torchvision builds with nvJPEG
        if device.type != "cuda":
            raise RuntimeError("not a CUDA device")
        raw = DataLoader(FileBytes(shuffled), batch_size=args.batch_size, num_workers=args.workers,
                         collate_fn=collate_list, persistent_workers=True)

        def gpu_batches():
            while True:
                for files, labels in raw:
                    yield gpu_decode(files, device), labels.to(device, non_blocking=True)

        rates[name] = timed(gpu_batches(), trainer.step, args.seconds)
        print(f"  {name:<52} {rates[name]:9,.0f} img/s", flush=True)
    except (RuntimeError, AttributeError) as exc:
        print(f"  {name:<52} not available here ({str(exc).splitlines()[0][:80]})", flush=True)
    ceiling = rates["1. random input on the device"]
    print("\nshare of the model's ceiling: " + ", ".join(f"{k.split('.')[0]}: {v / ceiling:.0%}"
                                                       for k, v in rates.items() if not k.startswith("1.")))
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
