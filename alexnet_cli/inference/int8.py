"""int8 on the CPU (`alexnet export --int8`): ONNX Runtime's static quantization, calibrated on the run's own
training images, written only when it keeps its accuracy and gains speed on this machine.

The steps: export the checkpoint to ONNX (fp32, softmax included, as `alexnet export` does); run ONNX Runtime's
`quantize_static` on it (QDQ format, int8 weights per output channel, uint8 activations, min-max ranges from
the calibration images; softmax stays fp32); then measure fp32 and int8 top-1 on held-out images, with
evaluate's own loop, and fp32 and int8 speed at batch 32. The gates: the drop in top-1 is at most
`--max-drop` points, and int8 is at least `--min-speedup` times fp32. A model that fails either is not
written, and the refusal says both figures.

Why ONNX Runtime: docs/export.md ("int8") has the measurements that chose it. Why reduce-range on some CPUs:
x86 CPUs without VNNI multiply uint8 by int8 with VPMADDUBSW, whose 16-bit sums of pairs can saturate; 7-bit
weights keep every sum in range (onnxruntime's own advice). VNNI and AMX accumulate in 32 bits and take the
full 8 bits.
"""

from __future__ import annotations

import contextlib
import io
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from alexnet_cli.artifacts.checkpoint import Checkpoint
from alexnet_cli.artifacts.run_folder import held_out
from alexnet_cli.data import folders as datamod
from alexnet_cli.data import loading
from alexnet_cli.errors import CheckpointError, ConfigError, DataError, GateRefused, MissingExtra
from alexnet_cli.inference.evaluate import top1
from alexnet_cli.inference.export import export as export_onnx
from alexnet_cli.inference.export import metadata as export_metadata
from alexnet_cli.inference.onnx_model import OnnxModel
from alexnet_cli.observer import Observer
from alexnet_cli.runtime.context import DECODE_THREADS, prepare_for_inference, to_device
from alexnet_cli.runtime.files import atomic_write, atomic_write_text
from alexnet_cli.runtime.precision import Precision
from alexnet_cli.runtime.system import cpu_name

MAX_DROP = 1.0  # top-1 points
MIN_SPEEDUP = 1.5  # int8 images/s over fp32's at batch 32
CALIBRATION_IMAGES = 256
SPEED_BATCH = 32
METHOD = ("ONNX Runtime static quantization: QDQ, int8 weights per output channel, uint8 activations, min-max "
          "ranges from the calibration images; softmax in fp32")


@dataclass(frozen=True)
class Int8Support:
    """What this CPU computes int8 with, and whether its products can saturate."""

    kind: str  # AMX, VNNI, AVX2 without VNNI, AVX-512 without VNNI, no AVX2, not x86
    reduce_range: bool  # 7-bit weights, so that VPMADDUBSW's 16-bit pair sums cannot saturate

    def describe(self) -> str:
        if self.reduce_range:
            return (f"{self.kind}: 8-bit products are summed in 16 bits, which can saturate, so weights use 7 bits "
                    "(reduce-range)")
        return f"{self.kind}: 8-bit products are summed in 32 bits, so weights use all 8 bits"


def cpu_flags() -> set[str]:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return set(line.split(":", 1)[1].split())
    return set()


def int8_support(flags: set[str] | None = None, machine: str | None = None) -> Int8Support:
    """From the CPU's flags (Linux), or torch's view of the CPU elsewhere."""
    machine = (machine or platform.machine()).lower()
    if machine not in {"x86_64", "amd64", "i386", "i686", "x86"}:
        return Int8Support(f"not x86 ({machine})", False)
    flags = cpu_flags() if flags is None else flags
    if not flags:  # no /proc/cpuinfo (macOS, Windows): what torch dispatches to, and the safe choice
        capability = torch.backends.cpu.get_cpu_capability()
        return Int8Support(f"{capability}, VNNI unknown", True)
    if "amx_int8" in flags:
        return Int8Support("AMX", False)
    if flags & {"avx512_vnni", "avx_vnni", "avx_vnni_int8"}:
        return Int8Support("VNNI", False)
    if "avx512bw" in flags:
        return Int8Support("AVX-512 without VNNI", True)
    if "avx2" in flags:
        return Int8Support("AVX2 without VNNI", True)
    return Int8Support("no AVX2", True)


@dataclass
class Int8Report:
    """What --int8 measured: written into the model's JSON, and said by the command."""

    calibration_images: int
    calibration_source: str
    validation_images: int
    validation_source: str
    fp32_top1: float
    int8_top1: float
    fp32_images_per_second: float
    int8_images_per_second: float
    support: Int8Support
    max_drop: float
    min_speedup: float
    cpu: str = field(default_factory=cpu_name)

    @property
    def drop(self) -> float:
        """In top-1 points."""
        return 100 * (self.fp32_top1 - self.int8_top1)

    @property
    def speedup(self) -> float:
        return self.int8_images_per_second / max(self.fp32_images_per_second, 1e-9)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": METHOD,
            "calibration": {"images": self.calibration_images, "source": self.calibration_source},
            "validation": {"images": self.validation_images, "source": self.validation_source},
            "top1": {"fp32": self.fp32_top1, "int8": self.int8_top1, "drop_points": self.drop},
            "images_per_second": {"batch": SPEED_BATCH, "fp32": self.fp32_images_per_second,
                                  "int8": self.int8_images_per_second, "speedup": self.speedup},
            "cpu": {"name": self.cpu, **asdict(self.support), "chosen": self.support.describe()},
            "gates": {"max_drop": self.max_drop, "min_speedup": self.min_speedup},
        }


def default_output(checkpoint_path: Path) -> Path:
    return checkpoint_path.with_suffix(".int8.onnx")


def run_images(checkpoint: Checkpoint) -> tuple[datamod.ImageSet, datamod.ImageSet | None, str, str]:
    """The run's training images (less what it held out) and its held-out images, from the run folder the
    checkpoint is in; ConfigError when it is not in one."""
    run = checkpoint.path.parent if checkpoint.path is not None else None
    if run is None or not (run / "config.json").is_file():
        raise ConfigError(f"{checkpoint.path} is not in a run folder (no config.json beside it), so there are no "
                          "training images to calibrate on: give --calib DIR and --val DIR")
    config = json.loads((run / "config.json").read_text(encoding="utf-8"))
    data = Path(config["data"])
    images = datamod.load_image_folder(data, classes=checkpoint.class_names, check="none")
    try:
        held = held_out(run)
    except CheckpointError:  # trained without validation
        return images, None, f"the run's training folder {data}", ""
    if held.names is None:
        validation = datamod.load_image_folder(held.data, classes=checkpoint.class_names, check="none")
        return images, validation, f"the run's training folder {data}", held.source
    kept, train = held.split(images.relative())
    return (images.subset(train), images.subset(kept) if kept else None,
            f"the run's training images in {data} (less the {len(held.names):,} it held out)", held.source)


def spread(images: datamod.ImageSet, count: int, seed: int = 0) -> datamod.ImageSet:
    """`count` images drawn evenly from every class (a seeded draw), or all of them when there are fewer."""
    if len(images.labels) <= count:
        return images
    order = torch.randperm(len(images.labels), generator=torch.Generator().manual_seed(seed))
    labels = images.labels[order]
    # Round-robin over the classes, each in its drawn order: as many from each as the count allows.
    rank = torch.zeros_like(order)
    for c in labels.unique():
        where = (labels == c).nonzero().flatten()
        rank[where] = torch.arange(len(where))
    chosen = order[torch.sort(rank * len(images.classes) + labels, stable=True).indices[:count]]
    return images.subset(chosen.sort().values)


def calibration_images(folder: Path, count: int, seed: int = 0) -> list[str]:
    """Up to `count` images under `folder` (class folders or not), a seeded draw; DataError when there are none."""
    paths, _ = datamod.expand_inputs([str(folder)])
    if not paths:
        raise DataError(f"--calib {folder}: no images there to calibrate on")
    order = torch.randperm(len(paths), generator=torch.Generator().manual_seed(seed))[:count]
    return [paths[i] for i in sorted(order.tolist())]


def _batches(paths, preprocess, batch_size: int) -> Iterator[torch.Tensor]:
    """The images as evaluate feeds them to a model: float NCHW batches, preprocessed."""
    dataset = loading.ImageDataset(paths, None, preprocess.eval_transforms(),
                                   draft_size=preprocess.resize_size)
    loader = loading.make_loader(dataset, loading.LoaderSettings(batch_size, threads=DECODE_THREADS))
    with loader:
        for batch, _, _, _ in loader:
            if batch is not None:
                yield to_device(batch, torch.device("cpu"), torch.float32).contiguous()


def quantize_qdq(fp32_path: Path, output: Path, calibration: Callable[[], Iterator[torch.Tensor]], batches: int,
              support: Int8Support) -> None:
    """ONNX Runtime's quantize_static on `fp32_path`, calibrated on the `batches` batches `calibration()` yields.
    The ranges are computed batch by batch and merged (CalibStridedMinMax), so that the calibration holds one
    batch's activations at a time, not every batch's until the end."""
    try:
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as exc:
        raise MissingExtra("--int8 needs ONNX Runtime's quantization tools", "export", exc.name) from None

    class Reader(CalibrationDataReader):
        """The batches in order, `set_range` at a time (what CalibStridedMinMax asks for)."""

        def __init__(self) -> None:
            self.stream, self.left = calibration(), batches

        def __len__(self) -> int:
            return batches

        def set_range(self, start_index: int, end_index: int) -> None:
            self.left = end_index - start_index

        def get_next(self):
            if self.left <= 0:
                return None
            self.left -= 1
            batch = next(self.stream, None)
            return None if batch is None else {"image": batch.numpy()}

    prepared = output.with_name("prepared.onnx")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        quant_pre_process(str(fp32_path), str(prepared))
        quantize_static(
            str(prepared), str(output), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            reduce_range=support.reduce_range, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            # Softmax stays fp32: 8-bit probabilities would tie the top classes.
            op_types_to_quantize=["Conv", "Gemm", "MatMul", "Relu", "MaxPool"],
            extra_options={"CalibStridedMinMax": 1},
        )


CALIBRATION_BATCH = 32


def _calibrate(fp32_path: Path, output: Path, paths: list[str], preprocess, support: Int8Support) -> None:
    quantize_qdq(fp32_path, output, lambda: _batches(paths, preprocess, CALIBRATION_BATCH),
              -(-len(paths) // CALIBRATION_BATCH), support)


def calibrated_here(checkpoint: Checkpoint, folder: Path, count: int = CALIBRATION_IMAGES) -> tuple[Path, str]:
    """An int8 model in `folder`, calibrated on the run's training images as export --int8 does, with no gate
    (benchmark's row, where no int8 model was written): its path and a line saying so."""
    train, _, source, _ = run_images(checkpoint)
    calibration = list(spread(train, count).paths)
    support = int8_support()
    fp32_onnx = export_onnx(checkpoint, "onnx", folder / "for-int8.onnx").model_path
    output = folder / "int8.onnx"
    _calibrate(fp32_onnx, output, calibration, checkpoint.preprocess, support)
    mode = "reduce-range" if support.reduce_range else "full range"
    return output, (f"calibrated here on {len(calibration)} of {source} ({mode}); not gated or saved: "
                    "alexnet export --int8 writes one")


def median_seconds(model, x: torch.Tensor, runs: int, warm_up: int = 3) -> float:
    """The median seconds of `runs` forward passes on `x`, after `warm_up` untimed (kernels chosen, and
    TorchScript's profiling executor optimises its graph over its first calls)."""
    times = []
    with torch.inference_mode():
        for _ in range(warm_up):
            model(x)
        for _ in range(runs):
            started = time.perf_counter()
            model(x)
            if x.device.type == "cuda":
                torch.cuda.synchronize(x.device)
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def paired_speed(fp32, int8, size: int, rounds: int = 5) -> tuple[float, float]:
    """fp32's and int8's images/s at SPEED_BATCH on a fixed random batch, measured in alternation so that a
    noisy machine slows both alike."""
    x = torch.randn(SPEED_BATCH, 3, size, size, generator=torch.Generator().manual_seed(0)).contiguous(
        memory_format=torch.channels_last)
    pairs = [(median_seconds(fp32, x, 1, warm_up=1), median_seconds(int8, x, 1, warm_up=1)) for _ in range(rounds)]
    return (SPEED_BATCH / statistics.median(p[0] for p in pairs), SPEED_BATCH / statistics.median(p[1] for p in pairs))


@dataclass(frozen=True)
class Int8Settings:
    output: Path | None = None
    calib: Path | None = None
    val: Path | None = None
    calib_images: int = CALIBRATION_IMAGES
    max_drop: float = MAX_DROP
    min_speedup: float = MIN_SPEEDUP


@dataclass(frozen=True)
class Int8Result:
    model_path: Path
    metadata_path: Path
    report: Int8Report


def quantize(checkpoint: Checkpoint, settings: Int8Settings, observer: Observer) -> Int8Result:
    """The int8 model, gated; GateRefused (and nothing written) when it loses accuracy or gains no speed."""
    assert checkpoint.path is not None
    output = Path(settings.output) if settings.output else default_output(checkpoint.path)
    support = int8_support()
    observer.info(f"int8 on {cpu_name()}: {support.describe()}")
    names = checkpoint.class_names
    if settings.calib is None or settings.val is None:
        train, validation, train_source, validation_source = run_images(checkpoint)
    if settings.calib is None:
        calibration = list(spread(train, settings.calib_images).paths)
    else:
        calibration = calibration_images(settings.calib, settings.calib_images)
        train_source = f"--calib {settings.calib}"
    if settings.val is not None:
        validation = datamod.load_image_folder(settings.val, classes=names, check="none")
        validation_source = f"--val {settings.val}"
    if validation is None:
        raise ConfigError("the run trained without validation, so there are no held-out images to measure the "
                          "int8 model on: give --val DIR")
    preprocess = checkpoint.preprocess
    observer.info(f"calibrating on {len(calibration):,} images from {train_source}")
    fp32 = prepare_for_inference(checkpoint.build(), torch.device("cpu"), Precision("fp32", "fp32"))
    with tempfile.TemporaryDirectory(prefix="alexnet-int8-") as temporary:
        folder = Path(temporary)
        fp32_onnx = export_onnx(checkpoint, "onnx", folder / "fp32.onnx").model_path
        quantized = folder / "int8.onnx"
        _calibrate(fp32_onnx, quantized, calibration, preprocess, support)
        int8 = OnnxModel(quantized, "int8")
        observer.info(f"measuring fp32 and int8 top-1 on the {len(validation.labels):,} images of "
                      f"{validation_source}")
        report = Int8Report(
            len(calibration), train_source, len(validation.labels), validation_source,
            top1(fp32, validation, preprocess, len(names)), top1(int8, validation, preprocess, len(names)),
            *paired_speed(fp32, int8, preprocess.image_size), support=support, max_drop=settings.max_drop,
            min_speedup=settings.min_speedup)
        change = f"{abs(report.drop):.2f} points {'lost' if report.drop >= 0 else 'gained'}"
        said = (f"top-1 fp32 {report.fp32_top1:.2%}, int8 {report.int8_top1:.2%}, {change}; "
                f"at batch {SPEED_BATCH} int8 ran {report.speedup:.2f}x fp32, {report.int8_images_per_second:.0f} "
                f"against {report.fp32_images_per_second:.0f} images/s")
        if report.drop > settings.max_drop:
            raise GateRefused(f"the int8 model was not written: it lost {report.drop:.2f} top-1 points, over "
                              f"--max-drop {settings.max_drop:g} ({said}); calibrate on images like the ones it "
                              f"will see (--calib DIR)")
        if report.speedup < settings.min_speedup:
            raise GateRefused(f"the int8 model was not written: it ran {report.speedup:.2f}x fp32 here, under "
                              f"--min-speedup {settings.min_speedup:g}, on {support.kind} ({said}); int8 pays "
                              "on CPUs with VNNI or AMX; give --min-speedup 1 to write it anyway")
        observer.info(said)
        meta = {**export_metadata(checkpoint, "onnx-int8"), "int8": report.to_dict()}
        atomic_write(output, lambda file: file.write(quantized.read_bytes()))
    metadata_path = output.with_suffix(".json")
    atomic_write_text(metadata_path, json.dumps(meta, indent=2) + "\n")
    return Int8Result(output, metadata_path, report)

