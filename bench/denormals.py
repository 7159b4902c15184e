"""Adam's step on subnormal moments: the tool's optimizer step with and without flushing subnormals to zero.

    python bench/denormals.py [--dead 0.3] [--rounds 5] [--steps 3] [--num-classes 10]

Why: a weight whose gradient has gone to zero (a dead ReLU's row, say) keeps Adam's first moment, which falls
by beta1 = 0.9 a step and is subnormal (below 1.2e-38) a few hundred steps later; x86 CPUs compute on
subnormals many times slower. `alexnet train` on a CPU flushes them (runtime.configure_backends).

What it does: the default alexnet's parameters and the fused Adam that `alexnet train` builds; one step with
random gradients, then a fraction --dead of every tensor gets a zero gradient and a first moment of 1e-39 (a
value the decay passes through). Steps are timed with torch.set_flush_denormal(False) and (True),
alternating round by round in this process; prints seconds per step (min/median/max) and the ratio of
the medians.
"""

from __future__ import annotations

import argparse
import statistics
import time

from common import row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dead", type=float, default=0.3, help="fraction of each tensor with zero gradients")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per round and variant")
    parser.add_argument("--num-classes", type=int, default=10)
    args = parser.parse_args()

    import torch

    from alexnet_cli.models.alexnet import build_model
    from alexnet_cli.training import make_optimizer

    torch.manual_seed(0)
    model = build_model("alexnet", num_classes=args.num_classes)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer("adam", model, lr=1e-4, weight_decay=0.0, device=torch.device("cpu"))
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    optimizer.step()
    for p in params:  # their first moments are set to a subnormal before each round, in timed()
        p.grad.view(-1)[: int(p.numel() * args.dead)] = 0.0
    print(f"{sum(p.numel() for p in params) / 1e6:.1f}M parameters, {args.dead:.0%} of each with a zero gradient "
          f"and a subnormal first moment; torch {torch.__version__}, {torch.get_num_threads()} threads")

    def timed(flush: bool) -> float:
        torch.set_flush_denormal(flush)
        for p in params:  # the same subnormal start for both variants
            flat = optimizer.state[p]["exp_avg"].view(-1)
            flat[: int(flat.numel() * args.dead)] = 1e-39
        start = time.perf_counter()
        for _ in range(args.steps):
            optimizer.step()
        return (time.perf_counter() - start) / args.steps

    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.rounds):
        for flush in (False, True):
            times[flush].append(timed(flush))
    torch.set_flush_denormal(False)
    print(row("Adam step, subnormals kept", times[False], " s", 3))
    print(row("Adam step, flushed (the tool)", times[True], " s", 3))
    print(f"flushing is {statistics.median(times[False]) / statistics.median(times[True]):.2f}x faster per step")


if __name__ == "__main__":
    main()
