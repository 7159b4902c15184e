"""Inference: `alexnet predict` against an eager fp32 loop, on a folder and on random input.

    python bench/inference.py [--images 256] [--rounds 3] [--cache DIR]

Model only (random input, batch 32 and batch 1): eager fp32 NCHW under no_grad, against the tool's
inference model (prepare_for_inference: channels_last, weights cast to bf16 when --precision picks it,
inference_mode). Folder: prediction.predict as `alexnet predict DIR` runs it, against a plain loop (ImageFolder-free
PIL loading with the original's transforms, DataLoader batch 32, eager fp32). Target (issue 6): >= 2x at batch 32.
Targets (issue 17): predict on the folder >= 2x the plain loop; batch-1 latency <= 10 ms.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from common import make_jpeg_folder, row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "alexnet-bench")
    args = parser.parse_args()

    import torch
    from PIL import Image
    from torchvision import transforms

    from alexnet_cli.artifacts.checkpoint import Checkpoint
    from alexnet_cli.config.settings import PredictConfig
    from alexnet_cli.data.preprocess import Preprocess
    from alexnet_cli.inference.predict import predict
    from alexnet_cli.models.alexnet import build_model
    from alexnet_cli.observer import SilentObserver
    from alexnet_cli.runtime.context import prepare_for_inference, to_device
    from alexnet_cli.runtime.precision import resolve_precision

    device = torch.device("cpu")
    precision = resolve_precision("auto", device)
    print(f"precision auto -> {precision.reason}")
    torch.manual_seed(0)
    eager = build_model("alexnet", num_classes=2).eval()
    tool = prepare_for_inference(build_model("alexnet", num_classes=2), device, precision)

    for batch_size in (32, 1):
        x = torch.randn(batch_size, 3, 227, 227)
        xt = to_device(x, device, precision.dtype)

        def run_eager(x=x):
            with torch.no_grad():
                eager(x)

        def run_tool(xt=xt):
            with torch.inference_mode():
                tool(xt)

        rates = {"eager fp32": [], f"alexnet ({precision.name}, channels_last)": []}
        steps = args.steps if batch_size > 1 else args.steps * 8
        for fn in (run_eager, run_tool):
            fn(), fn()
        for _ in range(args.rounds):
            for name, fn in zip(rates, (run_eager, run_tool)):
                start = time.perf_counter()
                for _ in range(steps):
                    fn()
                rates[name].append(batch_size * steps / (time.perf_counter() - start))
        base = statistics.median(rates["eager fp32"])
        for name, values in rates.items():
            ratio = statistics.median(values) / base
            print(row(f"model, batch {batch_size}: {name}", values, " img/s") + f"  x{ratio:.2f}")
        if batch_size == 1:
            eager_ms, tool_ms = (1000 / statistics.median(values) for values in rates.values())
            print(f"batch-1 latency: alexnet {tool_ms:.1f} ms, eager fp32 {eager_ms:.1f} ms (target <= 10 ms)")

    folder = make_jpeg_folder(args.cache / f"jpeg-500x375-{args.images}", args.images, (500, 375))
    paths = sorted(str(p) for p in folder.rglob("*.jpg"))
    original = transforms.Compose([transforms.Resize(227), transforms.CenterCrop(227), transforms.ToTensor()])

    class Plain(torch.utils.data.Dataset):
        def __len__(self):
            return len(paths)

        def __getitem__(self, i):
            return original(Image.open(paths[i]).convert("RGB"))

    def plain_loop() -> float:
        start = time.perf_counter()
        with torch.no_grad():
            for batch in torch.utils.data.DataLoader(Plain(), batch_size=32):
                eager(batch).softmax(1)
        return len(paths) / (time.perf_counter() - start)

    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "model.pt"
        Checkpoint(arch="alexnet", class_names=("class0", "class1"), preprocess=Preprocess.for_arch(227, 227),
                   dropout=0.5, state_dict=eager.state_dict()).save(weights)

        def tool_loop() -> float:
            start = time.perf_counter()
            predict(PredictConfig(inputs=(str(folder),), weights=weights), SilentObserver())
            return len(paths) / (time.perf_counter() - start)

        plain, ours = [], []
        for _ in range(args.rounds):
            plain.append(plain_loop())
            ours.append(tool_loop())
    print(row(f"folder of {len(paths)} 500x375 JPEGs: plain loop", plain, " img/s"))
    ratio = statistics.median(ours) / statistics.median(plain)
    print(row("folder: alexnet predict", ours, " img/s") + f"  x{ratio:.2f} (target >= 2.0)")


if __name__ == "__main__":
    main()
