"""Random erasing on the uint8 path against the float path: the training samples of one epoch, as the model gets them.

    python bench/erasing.py [--images 1024] [--image-size 131] [--erasing 0.25] [--batch-size 128] [--rounds 3]

Why: `--random-erasing` once finished every training sample as floats on the CPU (v2.RandomErasing per
image), and the `modern` recipe's epochs cost more for it. Now the loader only draws each image's box and the
device erases a whole batch after normalising (preprocess.PixelBatch), bit for bit as the float path does.

What it does: decoded images (random uint8 at the resize, as the decoded-image cache holds them), the
training crop of `Augmentation("flip", random_erasing=P)` on each path, the tool's ImageDataset and loader in
this process (workers 0, so the figures count the work, not the processes), and `runtime.to_device` for each
batch on the CPU. The two paths alternate round by round; prints images/s (min/median/max) and the ratio of
the medians.
"""

from __future__ import annotations

import argparse
import statistics
import time

from common import row


class InMemory:
    """The decoded-image cache's one method the dataset calls: the uint8 CHW tensor at the resize."""

    def __init__(self, images) -> None:
        self.images = images

    def get(self, path: str):
        return self.images[int(path)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--image-size", type=int, default=131)
    parser.add_argument("--erasing", type=float, default=0.25)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import torch

    from alexnet_cli.data.augment import Augmentation
    from alexnet_cli.data.loading import ImageDataset, LoaderSettings, make_loader
    from alexnet_cli.data.preprocess import Preprocess
    from alexnet_cli.runtime.context import to_device

    preprocess = Preprocess.for_arch(args.image_size, 227)
    side = preprocess.resize_size
    generator = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, side, side), dtype=torch.uint8, generator=generator)
              for _ in range(args.images)]
    augmentation = Augmentation("flip", random_erasing=args.erasing)
    paths = [str(i) for i in range(args.images)]
    cpu = torch.device("cpu")
    print(f"{args.images} images at {side}x{side}, crop {args.image_size}, random erasing p {args.erasing:g}, "
          f"batch {args.batch_size}; torch {torch.__version__}, {torch.get_num_threads()} threads")

    def images_per_second(on_device: bool) -> float:
        crop = augmentation.train_crop(preprocess, on_device=on_device)
        dataset = ImageDataset(paths, [0] * len(paths), crop, augment_seed=1, cache=InMemory(images), from_cache=crop)
        loader = make_loader(dataset, LoaderSettings(batch_size=args.batch_size))
        start = time.perf_counter()
        for batch in loader:
            to_device(batch[0], cpu, torch.bfloat16)
        return args.images / (time.perf_counter() - start)

    speeds: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.rounds):
        for on_device in (False, True):
            speeds[on_device].append(images_per_second(on_device))
    print(row("float path (erasing per image)", speeds[False], " img/s", 0))
    print(row("uint8 path (erasing batched)", speeds[True], " img/s", 0))
    print(f"the uint8 path is {statistics.median(speeds[True]) / statistics.median(speeds[False]):.2f}x as fast")


if __name__ == "__main__":
    main()
