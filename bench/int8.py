"""int8 against fp32 and bf16, as `alexnet predict` and `alexnet serve` run them, in one run (issue 39).

    python bench/int8.py                                  # speed: random weights, 67 and 227 px
    python bench/int8.py --run RUN --test DIR             # and accuracy: a trained run, its test split
    python bench/int8.py --paths                          # and the int8 paths that were not chosen

Speed: the model alone, on a fixed random batch, at batch 1 (median latency) and 32 (images/s), each way
measured in alternation with the others, round by round, so that a noisy machine slows all alike. The ways:
  - PyTorch fp32 and bf16 as predict runs them (channels_last, the weights cast), and fp32 as serve runs it
    (the classifier's weights in oneDNN's layout);
  - ONNX Runtime fp32 (alexnet export --format onnx);
  - ONNX Runtime int8, made as `alexnet export --int8` makes it (QDQ, per-channel, reduce-range where the CPU
    has no VNNI), calibrated on random input (speed does not depend on the ranges);
  - with --paths: the same int8 file run by OpenVINO, and PT2E (torchao's X86InductorQuantizer, compiled by
    inductor), the candidates docs/export.md compares; each where its package is installed.
Accuracy (--run): `alexnet export --int8` on the run (its gate measures top-1 on the run's held-out images),
then fp32 and int8 top-1 on --test, read once, with evaluate's loop.

Every figure names the CPU; ratios are against PyTorch fp32 in the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from alexnet_cli.artifacts.checkpoint import Checkpoint
from alexnet_cli.data.preprocess import Preprocess
from alexnet_cli.inference.benchmark import machine_line
from alexnet_cli.inference.export import export
from alexnet_cli.inference.int8 import int8_support, quantize_qdq
from alexnet_cli.inference.onnx_model import OnnxModel
from alexnet_cli.models.alexnet import build_model
from alexnet_cli.runtime.context import prepare_for_inference
from alexnet_cli.runtime.precision import Precision


def random_checkpoint(size: int, classes: int = 10) -> Checkpoint:
    torch.manual_seed(0)
    model = build_model("alexnet", num_classes=classes)
    return Checkpoint(arch="alexnet", class_names=tuple(f"class-{i}" for i in range(classes)),
                      preprocess=Preprocess.for_arch(size, 227), dropout=0.5, state_dict=model.state_dict())


def openvino_runner(path: Path):
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": torch.get_num_threads()})
    request = compiled.create_infer_request()
    return lambda x: request.infer({0: x.contiguous().numpy()})


def pt2e_runner(model: torch.nn.Module, size: int, batch: int, calibration: torch.Tensor):
    import torch._inductor.config as inductor_config
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    inductor_config.freezing = True
    x = torch.randn(batch, 3, size, size)
    exported = torch.export.export(model.eval(), (x,)).module()
    quantizer = xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(exported, quantizer)
    prepared(calibration)
    converted = convert_pt2e(prepared)
    compiled = torch.compile(converted)
    with torch.no_grad():
        compiled(x)
    return lambda t: compiled(t.contiguous())


def timed(run, x: torch.Tensor) -> float:
    started = time.perf_counter()
    with torch.inference_mode():
        run(x)
    return time.perf_counter() - started


def speed(size: int, rounds: int, paths: bool, folder: Path) -> dict:
    checkpoint = random_checkpoint(size)
    support = int8_support()
    fp32_onnx = export(checkpoint, "onnx", folder / f"fp32-{size}.onnx").model_path
    int8_onnx = folder / f"int8-{size}.onnx"
    generator = torch.Generator().manual_seed(1)
    calibration = [torch.randn(16, 3, size, size, generator=generator) for _ in range(4)]
    quantize_qdq(fp32_onnx, int8_onnx, lambda: iter(calibration), len(calibration), support)
    cpu = torch.device("cpu")
    fp32 = prepare_for_inference(checkpoint.build(), cpu, Precision("fp32", ""))
    bf16 = prepare_for_inference(checkpoint.build(), cpu, Precision("bf16", ""))
    from alexnet_cli.runtime.context import Runtime
    from alexnet_cli.serving.model import batched_forward

    served = batched_forward(fp32, Runtime(cpu, "cpu", Precision("fp32", ""), 0))  # the classifier in oneDNN's layout
    ways = {
        "PyTorch fp32": lambda x: fp32(x),
        "PyTorch fp32 as serve runs it": lambda x: served(x),
        "PyTorch bf16": lambda x: bf16(x.to(torch.bfloat16)),
        "ONNX Runtime fp32": OnnxModel(fp32_onnx, "fp32"),
        "ONNX Runtime int8": OnnxModel(int8_onnx, "int8"),
    }
    skipped = {}
    if paths:
        try:
            ways["OpenVINO, the same int8 file"] = openvino_runner(int8_onnx)
        except ImportError:
            skipped["OpenVINO"] = "pip install openvino"
    result = {}
    for batch in (1, 32):
        x = torch.randn(batch, 3, size, size, generator=generator).contiguous(memory_format=torch.channels_last)
        batch_ways = dict(ways)
        if paths:
            try:
                started = time.perf_counter()
                batch_ways["PT2E int8 (torchao, inductor)"] = pt2e_runner(checkpoint.build(), size, batch,
                                                                         torch.cat(calibration)[:batch])
                skipped[f"PT2E compile at batch {batch}"] = f"{time.perf_counter() - started:.0f} s"
            except ImportError:
                skipped["PT2E"] = "pip install torchao"
        for run in batch_ways.values():  # warm up: kernels chosen, graphs optimised
            for _ in range(2):
                timed(run, x)
        times: dict[str, list[float]] = {name: [] for name in batch_ways}
        for _ in range(rounds):
            for name, run in batch_ways.items():
                times[name].append(timed(run, x))
        medians = {name: statistics.median(t) for name, t in times.items()}
        base = medians["PyTorch fp32"]
        result[batch] = {name: {"ms": 1000 * m, "images_per_second": batch / m, "x_fp32": base / m}
                         for name, m in medians.items()}
    return {"image_size": size, "int8": support.describe(), "by_batch": result, "notes": skipped}


def accuracy(run: Path, test: Path | None, folder: Path) -> dict:
    from typer.testing import CliRunner

    from alexnet_cli.artifacts.checkpoint import load_checkpoint
    from alexnet_cli.cli import app
    from alexnet_cli.data import folders as datamod
    from alexnet_cli.inference.evaluate import top1

    output = folder / "best.int8.onnx"
    done = CliRunner().invoke(app, ["export", "--weights", str(run / "best.pt"), "--int8", "--output", str(output),
                                    "--min-speedup", "0"])
    print(done.output, file=sys.stderr)
    gate = json.loads(output.with_suffix(".json").read_text())["int8"] if output.is_file() else None
    result = {"export": done.output.strip().splitlines()[-1], "gate": gate}
    if test is not None and output.is_file():
        checkpoint = load_checkpoint(run / "best.pt")
        images = datamod.load_image_folder(test, classes=checkpoint.class_names, check="none")
        cpu = torch.device("cpu")
        fp32 = prepare_for_inference(checkpoint.build(), cpu, Precision("fp32", ""))
        n = len(checkpoint.class_names)
        result["test"] = {"images": len(images.labels), "folder": str(test),
                          "fp32_top1": top1(fp32, images, checkpoint.preprocess, n),
                          "int8_top1": top1(OnnxModel(output, "int8"), images, checkpoint.preprocess, n)}
        result["test"]["drop_points"] = 100 * (result["test"]["fp32_top1"] - result["test"]["int8_top1"])
    return result


def report(result: dict) -> None:
    print(result["machine"])
    for entry in result["speed"]:
        print(f"\n== {entry['image_size']} px; int8 here: {entry['int8']}")
        for batch, ways in entry["by_batch"].items():
            for name, figures in ways.items():
                print(f"batch {batch:>2}  {name:32s} {figures['ms']:8.1f} ms  {figures['images_per_second']:7.1f} "
                      f"images/s  {figures['x_fp32']:5.2f}x fp32")
        for name, note in entry["notes"].items():
            print(f"  {name}: {note}")
    if "accuracy" in result:
        accuracy = result["accuracy"]
        gate = accuracy["gate"]
        if gate:
            print(f"\nthe gate: top-1 fp32 {gate['top1']['fp32']:.4f}, int8 {gate['top1']['int8']:.4f} on "
                  f"{gate['validation']['images']} images ({gate['validation']['source']}); calibrated on "
                  f"{gate['calibration']['images']}")
        if "test" in accuracy:
            test = accuracy["test"]
            print(f"test split ({test['images']} images): fp32 {test['fp32_top1']:.4f}, int8 {test['int8_top1']:.4f}, "
                  f"{test['drop_points']:+.2f} points lost")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-size", type=int, nargs="+", default=[67, 227])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--paths", action="store_true", help="OpenVINO and PT2E too, where installed")
    parser.add_argument("--run", type=Path, help="a trained run: export --int8 on it, and its accuracy")
    parser.add_argument("--test", type=Path, help="with --run: a labelled test folder, read once")
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        result = {"machine": machine_line(torch.device("cpu")),
                  "speed": [speed(size, args.rounds, args.paths, folder) for size in args.image_size]}
        if args.run is not None:
            result["accuracy"] = accuracy(args.run, args.test, folder)
    report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
