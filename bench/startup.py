"""Start-up: `alexnet --help` against `python -c "import torch"`, as a ratio measured in one run.

    python bench/startup.py [--rounds 7]

Each round runs both commands once, alternating, in fresh processes; min/median/max are over the rounds.
The target (issue 2): `alexnet --help` takes at most 0.15 times as long as importing torch.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    alexnet = shutil.which("alexnet")
    cli = [alexnet, "--help"] if alexnet else [sys.executable, "-m", "alexnet_cli", "--help"]
    baseline = [sys.executable, "-c", "import torch"]
    timed(baseline), timed(cli)  # warm the page cache for both before measuring

    help_times, torch_times = [], []
    for _ in range(args.rounds):
        torch_times.append(timed(baseline))
        help_times.append(timed(cli))
    ratios = [h / t for h, t in zip(help_times, torch_times)]

    def row(name: str, values: list[float], unit: str = "s") -> str:
        return (f"{name:<24} min {min(values):.3f}{unit}  median {statistics.median(values):.3f}{unit}  "
                f"max {max(values):.3f}{unit}")

    print(f"start-up over {args.rounds} rounds ({' '.join(cli)})")
    print(row("python -c 'import torch'", torch_times))
    print(row("alexnet --help", help_times))
    print(row("ratio help/torch", ratios, ""))
    verdict = "PASS" if statistics.median(ratios) <= 0.15 else "FAIL"
    print(f"median ratio {statistics.median(ratios):.3f} (target <= 0.15): {verdict}")


if __name__ == "__main__":
    main()
