"""`alexnet summary`, `evaluate`, `predict` and `export`: the commands that use a model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from alexnet_cli.cli import console, tables
from alexnet_cli.cli.app import boundary
from alexnet_cli.cli.options import (
    ARCH_HELP,
    ARCH_SIZE_DEFAULT,
    INFER_BATCH_HELP,
    TTA_HELP,
    CheckpointOption,
    DeviceOption,
    NoCudaOption,
    OldCheckpointArgument,
    PrecisionOption,
    StrictOption,
    WorkersOption,
    checkpoint,
)
from alexnet_cli.cli.progress import RichObserver
from alexnet_cli.config.settings import EvaluateConfig, PredictConfig, SummaryConfig
from alexnet_cli.errors import ConfigError


def summary(
    arch: Annotated[str, typer.Option(help=ARCH_HELP)] = SummaryConfig.arch,
    num_classes: Annotated[int, typer.Option(help="Number of output classes.")] = SummaryConfig.num_classes,
    image_size: Annotated[
        int | None, typer.Option(help="Input size in pixels.", show_default=ARCH_SIZE_DEFAULT)] = None,
    weights: Annotated[Path | None, typer.Option(help="Take arch, size and classes from this checkpoint.")] = None,
    pretrained: Annotated[
        bool, typer.Option("--pretrained", help="Load torchvision's ImageNet weights (alexnet-torchvision).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
) -> None:
    """Show the network layer by layer: output shapes, parameters, multiply-adds and the size arithmetic."""
    from alexnet_cli.inference.describe import describe

    with boundary():
        cfg = SummaryConfig(arch=arch, num_classes=num_classes, image_size=image_size, weights=weights,
                            pretrained=pretrained)
        data, class_names = describe(cfg)
        if as_json:
            console.print_json({**data, "class_names": class_names})
        else:
            tables.summary(data, class_names)


def evaluate(
    data: Annotated[Path | None, typer.Argument(
        help="ImageFolder tree with the same class folders as the model.", show_default="with --run, the "
        "images the run validated on")] = None,
    weights: CheckpointOption = None,
    run: Annotated[Path | None, typer.Option(
        help="A run folder (runs/train-N): its best.pt, and without DATA the images it held out for validation.")
    ] = None,
    pretrained: Annotated[bool, typer.Option(
        "--pretrained", help="torchvision's ImageNet weights, on DATA's WordNet-ID folders (n01440764, ...).")
    ] = False,
    batch_size: Annotated[int, typer.Option(help=INFER_BATCH_HELP)] = EvaluateConfig.batch_size,
    top_k: Annotated[
        int, typer.Option(help="Also report top-k accuracy when there are more than k classes.")
    ] = EvaluateConfig.top_k,
    workers: WorkersOption = None,
    device: DeviceOption = EvaluateConfig.device,
    no_cuda: NoCudaOption = False,
    precision: PrecisionOption = EvaluateConfig.precision,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
    strict: StrictOption = False,
    save_errors: Annotated[
        Path | None, typer.Option(help="Link each misclassified image into DIR/<true>__as__<predicted>/.")
    ] = None,
    tta: Annotated[str, typer.Option(help=TTA_HELP)] = EvaluateConfig.tta,
) -> None:
    """Report loss, accuracy, per-class precision/recall/F1 and the confusion matrix on a labelled folder."""
    from alexnet_cli.inference.evaluate import evaluate as run_evaluation

    with boundary():
        if save_errors is not None:
            from alexnet_cli.runtime.files import check_writable

            check_writable(save_errors, "--save-errors")
        cfg = EvaluateConfig(data=data, weights=weights, batch_size=batch_size, workers=workers, device=device,
                             no_cuda=no_cuda, precision=precision, top_k=top_k, strict=strict,
                             save_errors=save_errors, tta=tta, run=run, pretrained=pretrained)
        report = run_evaluation(cfg, RichObserver()).to_dict()
        if as_json:
            console.print_json(report)
        else:
            tables.evaluation(report, str(data) if data is not None else f"{run} (held out)")


def predict(
    inputs: Annotated[list[str], typer.Argument(help="Images, folders (searched recursively) or globs.")],
    weights: CheckpointOption = None,
    pretrained: Annotated[
        bool, typer.Option("--pretrained", help="Use torchvision's ImageNet weights (1000 classes); no training.")
    ] = False,
    top_k: Annotated[int, typer.Option(help="How many classes to list per image.")] = PredictConfig.top_k,
    batch_size: Annotated[int, typer.Option(help=INFER_BATCH_HELP)] = PredictConfig.batch_size,
    workers: WorkersOption = None,
    device: DeviceOption = PredictConfig.device,
    no_cuda: NoCudaOption = False,
    precision: PrecisionOption = PredictConfig.precision,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list on stdout.")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print CSV on stdout.")] = False,
    output: Annotated[Path | None, typer.Option(help="Write the JSON or CSV here instead of stdout.")] = None,
    strict: StrictOption = False,
    explain: Annotated[
        Path | None,
        typer.Option(help="Write a Grad-CAM picture per image into this folder (where the model looked)."),
    ] = None,
    tta: Annotated[str, typer.Option(help=TTA_HELP)] = PredictConfig.tta,
) -> None:
    """Classify images with a trained checkpoint or ImageNet weights; prints a table, JSON or CSV."""
    from alexnet_cli.inference.predict import predict as run_prediction

    with boundary():
        if as_json and as_csv:
            raise ConfigError("give --json or --csv, not both")
        if output is not None and not (as_json or as_csv):
            as_csv = output.suffix.lower() == ".csv"
            as_json = not as_csv
        from alexnet_cli.runtime.files import check_writable

        if output is not None:
            check_writable(output, "--output", is_file=True)
        if explain is not None:
            check_writable(explain, "--explain")
        cfg = PredictConfig(inputs=tuple(inputs), weights=weights, pretrained=pretrained, top_k=top_k,
                            batch_size=batch_size, workers=workers, device=device, no_cuda=no_cuda,
                            precision=precision, strict=strict, explain=explain, tta=tta)
        results = run_prediction(cfg, RichObserver())
        if as_json or as_csv:
            text = (json.dumps(results, indent=2, ensure_ascii=False) + "\n" if as_json
                    else tables.predictions_csv(results))
            if output is None:
                console.write_stdout(text)
            else:
                from alexnet_cli.runtime.files import atomic_write_text

                atomic_write_text(output, text)
                console.info(f"wrote {len(results)} predictions to {output}")
        else:
            tables.predictions(results, "pretrained" if pretrained else "checkpoint")


def export(
    old_weights: OldCheckpointArgument = None,
    weights: CheckpointOption = None,
    fmt: Annotated[str, typer.Option("--format", help="onnx or torchscript.")] = "onnx",
    output: Annotated[Path | None, typer.Option(help="Model file.", show_default="beside the checkpoint")] = None,
    int8: Annotated[bool, typer.Option("--int8", help="An int8 ONNX model for the CPU, calibrated and gated on "
                                       "accuracy and speed (docs/export.md).")] = False,
    calib: Annotated[Path | None, typer.Option(help="With --int8: images to calibrate on.",
                                               show_default="the run's training images")] = None,
    calib_images: Annotated[int, typer.Option(help="With --int8: how many images to calibrate on.")] = 256,
    val: Annotated[Path | None, typer.Option(help="With --int8: a labelled folder to measure top-1 on.",
                                             show_default="the run's held-out images")] = None,
    max_drop: Annotated[float, typer.Option(help="With --int8: the most top-1 points it may lose.")] = 1.0,
    min_speedup: Annotated[float, typer.Option(help="With --int8: the least speed-up over fp32 at batch 32.")] = 1.5,
) -> None:
    """Write the model with softmax included, plus its class names and preprocessing as JSON; checks the result.
    With --int8, an int8 ONNX model, written only when it keeps its accuracy and gains speed here."""
    from alexnet_cli.artifacts.checkpoint import load_checkpoint
    from alexnet_cli.artifacts.run_folder import resolve_weights
    from alexnet_cli.inference.export import default_output
    from alexnet_cli.inference.export import export as run_export
    from alexnet_cli.runtime.files import check_writable

    with boundary():
        with_int8 = {"--calib": calib, "--val": val} if not int8 else {}
        if given := [name for name, value in with_int8.items() if value is not None]:
            raise ConfigError(f"{' and '.join(given)} go with --int8")
        if int8 and fmt != "onnx":
            raise ConfigError(f"--int8 writes an ONNX model (ONNX Runtime runs it): drop --format {fmt}")
        if calib_images < 1 or max_drop < 0 or min_speedup < 0:
            raise ConfigError("--calib-images is at least 1, and --max-drop and --min-speedup are not negative")
        observer = RichObserver()
        path = resolve_weights(checkpoint(old_weights, weights), observer)
        if int8:
            from alexnet_cli.inference.int8 import Int8Settings, quantize
            from alexnet_cli.inference.int8 import default_output as int8_output

            check_writable(output or int8_output(path), "the int8 model", is_file=True)
            done = quantize(load_checkpoint(path), Int8Settings(output, calib, val, calib_images, max_drop,
                                                                min_speedup), observer)
            console.info(f"wrote {done.model_path} and {done.metadata_path}")
            return
        check_writable(output or default_output(path, fmt), "the exported model", is_file=True)
        result = run_export(load_checkpoint(path), fmt, output)
        console.info(f"wrote {result.model_path} and {result.metadata_path}")
        console.info(f"checked against PyTorch on a {'x'.join(map(str, result.sample_shape))} batch: "
                     f"largest difference in probabilities {result.max_difference:.2e}")


def benchmark(
    old_weights: Annotated[Path | None, typer.Argument(
        help="The checkpoint (same as --weights).", show_default=False, metavar="[WEIGHTS]")] = None,
    weights: CheckpointOption = None,
    data: Annotated[Path | None, typer.Option(help="A labelled folder for the top-1 column.",
                                              show_default="the run's held-out images")] = None,
    int8: Annotated[Path | None, typer.Option(help="The int8 model (alexnet export --int8).",
                                              show_default="WEIGHTS' .int8.onnx, or one calibrated here")] = None,
    device: DeviceOption = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
) -> None:
    """Every way to run the model on this machine, in one table: size, top-1, latency, images/s, memory."""
    from alexnet_cli.artifacts.run_folder import resolve_weights
    from alexnet_cli.cli.progress import steps
    from alexnet_cli.inference.benchmark import ROWS, BenchmarkSettings
    from alexnet_cli.inference.benchmark import benchmark as run_benchmark

    with boundary():
        if old_weights is not None and weights is not None and old_weights != weights:
            raise ConfigError(f"two checkpoints: {old_weights} and --weights {weights}; give one")
        observer = RichObserver()
        path = resolve_weights(old_weights or weights, observer)
        settings = BenchmarkSettings(path, data, int8, device)
        with steps("measuring", len(ROWS)) as step:
            result = run_benchmark(settings, observer, step)
        if as_json:
            console.print_json(result.to_dict())
        else:
            tables.benchmark(result)
