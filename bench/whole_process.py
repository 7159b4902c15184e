"""Whole processes, as a user waits for them: `alexnet train` and `alexnet predict` against the original
script and a plain prediction script, each a fresh process that pays its imports, scans, reads and writes.

    python bench/whole_process.py [--images 640] [--small 192] [--predict 256] [--rounds 1] [--cache DIR]

Training, on 500x375 JPEGs at batch 32 with `--val-split 0` so that both train on every image: the
original train.py (bench/original_train.py) and `alexnet train`, each for 1 and for 3 epochs. Figures: the
whole 3-epoch run, and an epoch as (3-epoch run - 1-epoch run) / 2, which leaves out what a run pays once.
Prediction, 256 JPEGs at batch 32 from a weights-only checkpoint (230 MB): a plain script (import torch and
torchvision, torch.load, the original's transforms plus normalisation, a DataLoader, eager fp32) against
`alexnet predict DIR`. Each pair runs back to back, alternating which goes first; medians over --rounds.
Targets (issue 17): 640 images per epoch >= x1.95 and whole run >= x1.85; 192 images per epoch >= x1.8;
predict as processes >= x1.6.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import make_jpeg_folder

REPO = Path(__file__).resolve().parents[1]

PLAIN_PREDICT = r"""
import sys
from pathlib import Path

import torch
from PIL import Image
from torchvision import transforms

sys.path.insert(0, sys.argv[3])
from alexnet_cli.models.alexnet import build_model

folder, weights = Path(sys.argv[1]), sys.argv[2]
saved = torch.load(weights, map_location="cpu", weights_only=True)
model = build_model("alexnet", num_classes=len(saved["class_names"]))
model.load_state_dict(saved["model"])
model.eval()
tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(227), transforms.ToTensor(),
                         transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
paths = sorted(folder.rglob("*.jpg"))


class Images(torch.utils.data.Dataset):
    def __len__(self):
        return len(paths)

    def __getitem__(self, i):
        return tf(Image.open(paths[i]).convert("RGB")), i


with torch.no_grad():
    for batch, index in torch.utils.data.DataLoader(Images(), batch_size=32):
        probabilities = model(batch).softmax(1)
        for i, (p, c) in zip(index.tolist(), zip(*probabilities.max(1))):
            print(paths[i], saved["class_names"][int(c)], float(p))
"""


PEAKS: dict[str, list[float]] = {}  # contender -> peak RSS in MiB of each of its runs


def timed(command: list[str], cwd: Path, name: str = "") -> float:
    """Seconds the process took; its peak resident set size goes to PEAKS[name] where os.wait4 exists."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    if hasattr(os, "wait4"):
        _, status, usage = os.wait4(process.pid, 0)
        seconds, process.returncode = time.perf_counter() - start, os.waitstatus_to_exitcode(status)
        PEAKS.setdefault(name, []).append(usage.ru_maxrss / (1024 if sys.platform != "darwin" else 2**20))
    else:
        process.wait()
        seconds = time.perf_counter() - start
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{process.stderr.read()[-2000:]}")
    return seconds


def training_times(folder: Path, work: Path, rounds: int) -> dict[tuple[str, int], list[float]]:
    """Seconds per (contender, epochs): the original script and alexnet train, 1 and 3 epochs."""
    commands = {
        "original": lambda n, out: [sys.executable, str(REPO / "bench" / "original_train.py"), str(folder),
                                    "--epochs", str(n), "--log-interval", "1000", "--save", str(out / "o.pkl")],
        "alexnet": lambda n, out: [sys.executable, "-m", "alexnet_cli", "train", str(folder), "--epochs", str(n),
                                   "--val-split", "0", "--log-interval", "1000", "--output", str(out / f"a{n}")],
    }
    times: dict[tuple[str, int], list[float]] = {}
    for i in range(rounds):
        for epochs in (1, 3):
            order = list(commands) if i % 2 == 0 else list(reversed(commands))
            for name in order:
                out = Path(tempfile.mkdtemp(dir=work))
                times.setdefault((name, epochs), []).append(timed(commands[name](epochs, out), work, name))
    return times


def report_training(label: str, times: dict[tuple[str, int], list[float]], targets: tuple[float, float]) -> None:
    med = {key: statistics.median(values) for key, values in times.items()}
    per_epoch = {name: (med[name, 3] - med[name, 1]) / 2 for name in ("original", "alexnet")}
    for name in ("original", "alexnet"):
        print(f"{label}, {name}: 1 epoch {med[name, 1]:.1f} s, 3 epochs {med[name, 3]:.1f} s, "
              f"an epoch {per_epoch[name]:.2f} s")
    print(f"{label}: per epoch x{per_epoch['original'] / per_epoch['alexnet']:.2f} (target >= {targets[0]}), "
          f"whole 3-epoch run x{med['original', 3] / med['alexnet', 3]:.2f} (target >= {targets[1]})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=640)
    parser.add_argument("--small", type=int, default=192)
    parser.add_argument("--predict", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "alexnet-bench")
    args = parser.parse_args()

    import torch

    sys.path.insert(0, str(REPO))
    from alexnet_cli.artifacts.checkpoint import Checkpoint
    from alexnet_cli.data.preprocess import Preprocess
    from alexnet_cli.models.alexnet import build_model

    print(f"whole processes on {os.cpu_count()} cores, torch {torch.__version__}, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}")
    big = make_jpeg_folder(args.cache / f"jpeg-500x375-{args.images}", args.images, (500, 375))
    small = make_jpeg_folder(args.cache / f"jpeg-500x375-{args.small}", args.small, (500, 375))
    photos = make_jpeg_folder(args.cache / f"jpeg-500x375-{args.predict}", args.predict, (500, 375))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        report_training(f"{args.images} JPEGs", training_times(big, work, args.rounds), (1.95, 1.85))
        report_training(f"{args.small} JPEGs", training_times(small, work, args.rounds), (1.8, 0.0))
        if PEAKS:
            original, ours = max(PEAKS["original"]), max(PEAKS["alexnet"])
            print(f"peak RSS of training (largest run): original {original:.0f} MiB, alexnet {ours:.0f} MiB: "
                  f"x{ours / original:.2f} (target <= 1.15)")

        weights = work / "weights.pt"
        Checkpoint(arch="alexnet", class_names=("class0", "class1"), preprocess=Preprocess.for_arch(227, 227),
                   dropout=0.5, state_dict=build_model("alexnet", num_classes=2).state_dict()).save(weights)
        plain = [sys.executable, "-c", PLAIN_PREDICT, str(photos), str(weights), str(REPO)]
        ours = [sys.executable, "-m", "alexnet_cli", "predict", str(photos), "--weights", str(weights),
                "--batch-size", "32"]
        runs: dict[str, list[float]] = {"plain": [], "alexnet": []}
        for i in range(max(3, args.rounds)):
            for name, command in ((("plain", plain), ("alexnet", ours)) if i % 2 == 0 else
                                  (("alexnet", ours), ("plain", plain))):
                runs[name].append(timed(command, work))
        med = {name: statistics.median(values) for name, values in runs.items()}
        print(f"predict {args.predict} JPEGs as processes: plain script {med['plain']:.2f} s, alexnet predict "
              f"{med['alexnet']:.2f} s: x{med['plain'] / med['alexnet']:.2f} (target >= 1.6)")


if __name__ == "__main__":
    main()
