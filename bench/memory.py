"""Peak memory (RSS) of training at batch 32: the original's eager fp32 loop against `alexnet train`'s step.

    python bench/memory.py [--batch-size 32] [--steps 4]

Each contender runs in a fresh process (so one's peak cannot hide the other's) for a few steps on random
input, then reports its own peak resident set size (getrusage ru_maxrss). Target (issue 6): the tool's
peak is no more than the original loop's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, resource, sys
sys.path.insert(0, {bench!r})
import torch
from common import OriginalLoop
from alexnet_cli.runtime.precision import resolve_precision
from alexnet_cli.runtime.context import to_device
from alexnet_cli.training import make_optimizer, train_step
from alexnet_cli.models.alexnet import build_model
which, batch, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
device = torch.device("cpu")
images, labels = torch.randn(batch, 3, 227, 227), torch.randint(0, 2, (batch,))
if which == "original":
    loop = OriginalLoop(build_model("alexnet", num_classes=2).train())
    step = lambda: loop.step(images, labels)
    precision = "fp32"
else:
    p = resolve_precision(which, device)
    precision = p.name
    model = build_model("alexnet", num_classes=2).to(memory_format=torch.channels_last).train()
    opt = make_optimizer("adam", model, lr=1e-4, weight_decay=0.0, device=device)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    crit = torch.nn.CrossEntropyLoss()
    batch_cl = to_device(images, device)
    step = lambda: train_step(model, batch_cl, labels, opt, scaler, crit, p)
for _ in range(steps):
    step()
print(json.dumps({{"which": which, "precision": precision,
                  "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    code = CHILD.format(bench=str(Path(__file__).resolve().parent))
    results: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for which in ("original", "auto", "fp32", "bf16"):
            out = subprocess.run([sys.executable, "-c", code, which, str(args.batch_size), str(args.steps)],
                                 check=True, capture_output=True, text=True).stdout
            record = json.loads(out.strip().splitlines()[-1])
            key = ("original eager fp32" if which == "original"
                   else f"alexnet --precision {which} ({record['precision']})")
            results.setdefault(key, []).append(record["peak_mib"])
    base = max(results["original eager fp32"])
    print(f"peak RSS of training, batch {args.batch_size}, {args.steps} steps, max over {args.rounds} rounds")
    for name, values in results.items():
        print(f"{name:<40} {max(values):8.0f} MiB   x{max(values) / base:.2f} of the original")


if __name__ == "__main__":
    main()
