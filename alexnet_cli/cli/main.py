"""The `alexnet` commands that train and use a model: one thin Typer command per verb.

Each command translates its options into a config, calls one core function and renders the result. Errors
from the core become one red line and an exit code here (docs/exit-codes.md). torch is imported only inside
the commands that need it, so `alexnet --help` and `alexnet --version` stay quick.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from alexnet_cli import __version__, console
from alexnet_cli import demo as demo_defaults
from alexnet_cli.cli.common import (ARCH_HELP, ARCH_SIZE_DEFAULT, CACHE_HELP, DEVICE_HELP, FRAME_DEFAULT,
                                    FRAME_HELP, IMAGE_SIZE_DEFAULT, LR_DEFAULT, NEWEST_BEST_DEFAULT, OPTIMIZER_HELP,
                                    PRECISION_HELP, SIBLING_VAL_DEFAULT, STRICT_HELP, TENSORBOARD_HELP,
                                    WEIGHT_DECAY_DEFAULT, WORKERS_DEFAULT, _boundary, _learning_rate,
                                    _with_recipe, app)
from alexnet_cli.config import DEFAULT_EPOCHS, EvaluateConfig, PredictConfig, SummaryConfig, TrainConfig
from alexnet_cli.errors import ConfigError
from alexnet_cli.recipes import RECIPES, describe as describe_recipe

RECIPE_HELP = ("Named settings: " + ", ".join(RECIPES) + " (docs/training.md). Options given on the command "
               "line override it.")
AUGMENT_HELP = ("flip (random crop + flip), trivial (TrivialAugment), randaugment, autoaugment, augmix (each "
                "with crop + flip), or none (the centre crop alone).")
PCA_HELP = "The paper's PCA colour augmentation, with the training set's own RGB eigenvectors: its sigma (0: off)."
EMA_HELP = "Validate and save an exponential moving average of the weights with this decay, such as 0.999."
TTA_HELP = ("Test-time augmentation: none, flip (the image and its mirror) or ten-crop (the paper's corners, "
            "centre and mirrors); the probabilities are averaged.")
CLASS_WEIGHTS_HELP = "none, auto (inverse class frequency) or a power of it, such as 0.5, for the loss."

def _version(value: bool) -> None:
    if value:
        typer.echo(f"alexnet-cli {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Train, evaluate and use AlexNet on your own image folders."""


@app.command()
def summary(
    arch: Annotated[str, typer.Option(help=ARCH_HELP)] = SummaryConfig.arch,
    num_classes: Annotated[int, typer.Option(help="Number of output classes.")] = SummaryConfig.num_classes,
    image_size: Annotated[
        Optional[int], typer.Option(help="Input size in pixels.", show_default=ARCH_SIZE_DEFAULT)] = None,
    weights: Annotated[Optional[Path], typer.Option(help="Take arch, size and classes from this checkpoint.")] = None,
    pretrained: Annotated[
        bool, typer.Option("--pretrained", help="Load torchvision's ImageNet weights (alexnet-torchvision).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
) -> None:
    """Show the network layer by layer: output shapes, parameters, multiply-adds and the size arithmetic."""
    from alexnet_cli.summary import describe

    with _boundary():
        cfg = SummaryConfig(arch=arch, num_classes=num_classes, image_size=image_size, weights=weights,
                            pretrained=pretrained)
        data, class_names = describe(cfg)
        if as_json:
            console.print_json({**data, "class_names": class_names})
        else:
            console.summary(data, class_names)


# Long only in its options: the body is the config, one call and the report.
@app.command()
def train(
    ctx: typer.Context,
    data: Annotated[Optional[Path], typer.Argument(help="ImageFolder tree: DATA/<class>/<image>.")] = None,
    val: Annotated[Optional[Path], typer.Option(help="Validation folder.", show_default=SIBLING_VAL_DEFAULT)] = None,
    val_split: Annotated[Optional[float], typer.Option(
        help="Hold out this fraction of DATA per class.", show_default="0.1 when there is no validation folder")
    ] = None,
    arch: Annotated[Optional[str], typer.Option(
        help=ARCH_HELP, show_default="alexnet, or alexnet-torchvision with --pretrained")] = None,
    image_size: Annotated[Optional[int], typer.Option(help="Input size.", show_default=IMAGE_SIZE_DEFAULT)] = None,
    frame: Annotated[Optional[str], typer.Option(help=FRAME_HELP, show_default=FRAME_DEFAULT)] = None,
    pretrained: Annotated[
        bool, typer.Option("--pretrained", help="Start from ImageNet weights (alexnet-torchvision, new head).")
    ] = False,
    freeze_features: Annotated[
        bool, typer.Option("--freeze-features", help="With --pretrained: train the classifier only.")
    ] = False,
    batch_size: Annotated[int, typer.Option(help="Images per iteration.")] = TrainConfig.batch_size,
    epochs: Annotated[Optional[int], typer.Option(
        help="Epochs to train to.", show_default=f"{DEFAULT_EPOCHS}, or the resumed run's own")] = None,
    lr: Annotated[Optional[str], typer.Option(
        help="Learning rate, or 'find' to run the LR range test first and train at its suggestion.",
        show_default=LR_DEFAULT)] = None,
    optimizer: Annotated[str, typer.Option(help=OPTIMIZER_HELP)] = TrainConfig.optimizer,
    weight_decay: Annotated[Optional[float], typer.Option(
        help="L2 weight decay.", show_default=WEIGHT_DECAY_DEFAULT)] = None,
    scheduler: Annotated[
        str, typer.Option(help="Learning-rate schedule: none, step or cosine.")
    ] = TrainConfig.scheduler,
    label_smoothing: Annotated[
        float, typer.Option(help="Cross-entropy label smoothing.")
    ] = TrainConfig.label_smoothing,
    dropout: Annotated[float, typer.Option(help="Dropout before/after the FC layers.")] = TrainConfig.dropout,
    patience: Annotated[Optional[int], typer.Option(help="Stop after N epochs without a better val accuracy.")] = None,
    workers: Annotated[
        Optional[int], typer.Option(help="Data-loading processes.", show_default=WORKERS_DEFAULT)
    ] = None,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = TrainConfig.device,
    no_cuda: Annotated[bool, typer.Option("--no-cuda", help="Never use CUDA (as in the original script).")] = False,
    precision: Annotated[str, typer.Option(help=PRECISION_HELP)] = TrainConfig.precision,
    seed: Annotated[int, typer.Option(help="Random seed: same seed, same data, same run.")] = TrainConfig.seed,
    log_interval: Annotated[int, typer.Option(help="Log the loss every N iterations.")] = TrainConfig.log_interval,
    output: Annotated[Optional[Path], typer.Option(help="Run folder.", show_default="a new runs/train-N")] = None,
    resume: Annotated[
        Optional[Path], typer.Option(help="Continue from a last.pt; a larger --epochs extends it.")
    ] = None,
    strict: Annotated[bool, typer.Option("--strict", help=STRICT_HELP)] = False,
    tensorboard: Annotated[
        bool, typer.Option("--tensorboard", help=TENSORBOARD_HELP)
    ] = False,
    cache: Annotated[str, typer.Option(help=CACHE_HELP)] = TrainConfig.cache,
    recipe: Annotated[Optional[str], typer.Option(help=RECIPE_HELP, show_default="none")] = None,
    augment: Annotated[str, typer.Option(help=AUGMENT_HELP)] = TrainConfig.augment,
    random_erasing: Annotated[
        float, typer.Option(help="Erase a random box of each image with this probability.")
    ] = TrainConfig.random_erasing,
    pca_lighting: Annotated[float, typer.Option(help=PCA_HELP)] = TrainConfig.pca_lighting,
    mixup: Annotated[float, typer.Option(help="Mixup alpha (0: off).")] = TrainConfig.mixup,
    cutmix: Annotated[float, typer.Option(help="CutMix alpha (0: off); with --mixup, one of the two per batch.")
                      ] = TrainConfig.cutmix,
    ema: Annotated[float, typer.Option(help=EMA_HELP)] = TrainConfig.ema,
    warmup_epochs: Annotated[
        int, typer.Option(help="Linear warm-up of the rate over N epochs, before the --scheduler.")
    ] = TrainConfig.warmup_epochs,
    class_weights: Annotated[str, typer.Option(help=CLASS_WEIGHTS_HELP)] = TrainConfig.class_weights,
    balanced_sampler: Annotated[bool, typer.Option(
        "--balanced-sampler", help="Draw each class equally often (with replacement), seeded per epoch.")] = False,
) -> None:
    """Train on an ImageFolder tree, validating every epoch; writes a run folder with best.pt and last.pt."""
    from alexnet_cli.training import train as run_training

    observer = console.RichObserver()
    with _boundary():
        if data is None and resume is None:
            raise ConfigError("give the training folder: alexnet train DATA (or --resume runs/NAME/last.pt)")
        options = dict(locals())
        options.update(arch=arch or ("alexnet-torchvision" if pretrained else "alexnet"), lr_find=lr == "find",
                       lr=_learning_rate(lr))
        cfg, from_recipe = _with_recipe(ctx, TrainConfig, options, recipe)
        if recipe is not None:
            console.info(describe_recipe(recipe, from_recipe))
        try:
            result = run_training(cfg, observer)
        finally:
            observer.close()
        from alexnet_cli.distributed import from_env

        if not from_env().is_main:
            return  # under torchrun, rank 0 reports
        best = result.run_dir / "best.pt"
        console.accuracy_trend(result.history)
        console.info(f"done: {result.epochs_done} epochs, best accuracy {result.best_acc:.2%} at epoch "
                     f"{result.best_epoch}; weights in {best}")
        console.info(f"next: alexnet evaluate DATA --weights {best}   |   alexnet predict IMAGE --weights {best}")


@app.command("lr-find")
def lr_find(
    ctx: typer.Context,
    data: Annotated[Path, typer.Argument(help="ImageFolder tree: DATA/<class>/<image>.")],
    steps: Annotated[int, typer.Option(help="Steps of the test (one batch each).")] = 100,
    start: Annotated[float, typer.Option(help="The first learning rate.")] = 1e-7,
    end: Annotated[float, typer.Option(help="The last learning rate.")] = 1.0,
    plot: Annotated[Optional[Path], typer.Option(
        help="Where to draw the curve (needs the plots extra; without it, the table alone).",
        show_default="lr-find.png")] = None,
    recipe: Annotated[Optional[str], typer.Option(help=RECIPE_HELP, show_default="none")] = None,
    arch: Annotated[str, typer.Option(help=ARCH_HELP)] = TrainConfig.arch,
    optimizer: Annotated[str, typer.Option(help=OPTIMIZER_HELP)] = TrainConfig.optimizer,
    batch_size: Annotated[int, typer.Option(help="Images per iteration.")] = TrainConfig.batch_size,
    image_size: Annotated[Optional[int], typer.Option(help="Input size.", show_default=IMAGE_SIZE_DEFAULT)] = None,
    frame: Annotated[Optional[str], typer.Option(help=FRAME_HELP, show_default=FRAME_DEFAULT)] = None,
    augment: Annotated[str, typer.Option(help=AUGMENT_HELP)] = TrainConfig.augment,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = TrainConfig.device,
    seed: Annotated[int, typer.Option(help="Random seed.")] = TrainConfig.seed,
) -> None:
    """The learning-rate range test: train briefly at a growing rate, show the loss and suggest a rate."""
    from alexnet_cli.training import lr_find as run_lr_find

    with _boundary():
        cfg, from_recipe = _with_recipe(ctx, TrainConfig, {**locals(), "lr": None, "lr_find": False}, recipe)
        if recipe is not None:
            console.info(describe_recipe(recipe, from_recipe))
        result = run_lr_find(cfg, console.RichObserver(), steps=steps, start=start, end=end)
        console.lr_curve(result.lrs, result.losses, result.suggestion)
        from alexnet_cli.plots import PlotsUnavailable, write_lr_curve

        try:
            drawn = write_lr_curve(plot or Path("lr-find.png"), result.lrs, result.losses, result.suggestion)
            console.info(f"wrote {drawn}")
        except PlotsUnavailable as exc:
            if plot is not None:
                raise
            console.info(f"no picture of the curve: {exc}")
        console.info(f"suggested --lr {result.suggestion:.2e} ({result.rule})")
        console.info(f"next: alexnet train {data} --lr {result.suggestion:.2e}   (or --lr find)")


@app.command()
def evaluate(
    data: Annotated[Path, typer.Argument(help="ImageFolder tree with the same class folders as the model.")],
    weights: Annotated[Optional[Path], typer.Option(help="Checkpoint.", show_default=NEWEST_BEST_DEFAULT)] = None,
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = EvaluateConfig.batch_size,
    top_k: Annotated[
        int, typer.Option(help="Also report top-k accuracy when there are more than k classes.")
    ] = EvaluateConfig.top_k,
    workers: Annotated[
        Optional[int], typer.Option(help="Data-loading processes.", show_default=WORKERS_DEFAULT)
    ] = None,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = EvaluateConfig.device,
    no_cuda: Annotated[bool, typer.Option("--no-cuda", help="Never use CUDA.")] = False,
    precision: Annotated[str, typer.Option(help=PRECISION_HELP)] = EvaluateConfig.precision,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
    strict: Annotated[bool, typer.Option("--strict", help=STRICT_HELP)] = False,
    save_errors: Annotated[
        Optional[Path], typer.Option(help="Link each misclassified image into DIR/<true>__as__<predicted>/.")
    ] = None,
    tta: Annotated[str, typer.Option(help=TTA_HELP)] = EvaluateConfig.tta,
) -> None:
    """Report loss, accuracy, per-class precision/recall/F1 and the confusion matrix on a labelled folder."""
    from alexnet_cli.evaluation import evaluate as run_evaluation

    with _boundary():
        cfg = EvaluateConfig(data=data, weights=weights, batch_size=batch_size, workers=workers, device=device,
                             no_cuda=no_cuda, precision=precision, top_k=top_k, strict=strict,
                             save_errors=save_errors, tta=tta)
        report = run_evaluation(cfg, console.RichObserver()).to_dict()
        if as_json:
            console.print_json(report)
        else:
            console.evaluation(report, str(data))


@app.command()
def predict(
    inputs: Annotated[list[str], typer.Argument(help="Images, folders (searched recursively) or globs.")],
    weights: Annotated[Optional[Path], typer.Option(help="Checkpoint.", show_default=NEWEST_BEST_DEFAULT)] = None,
    pretrained: Annotated[
        bool, typer.Option("--pretrained", help="Use torchvision's ImageNet weights (1000 classes); no training.")
    ] = False,
    top_k: Annotated[int, typer.Option(help="How many classes to list per image.")] = PredictConfig.top_k,
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = PredictConfig.batch_size,
    workers: Annotated[
        Optional[int], typer.Option(help="Data-loading processes.", show_default=WORKERS_DEFAULT)
    ] = None,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = PredictConfig.device,
    no_cuda: Annotated[bool, typer.Option("--no-cuda", help="Never use CUDA.")] = False,
    precision: Annotated[str, typer.Option(help=PRECISION_HELP)] = PredictConfig.precision,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list on stdout.")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print CSV on stdout.")] = False,
    output: Annotated[Optional[Path], typer.Option(help="Write the JSON or CSV here instead of stdout.")] = None,
    strict: Annotated[bool, typer.Option("--strict", help=STRICT_HELP)] = False,
    explain: Annotated[
        Optional[Path],
        typer.Option(help="Write a Grad-CAM picture per image into this folder (where the model looked)."),
    ] = None,
    tta: Annotated[str, typer.Option(help=TTA_HELP)] = PredictConfig.tta,
) -> None:
    """Classify images with a trained checkpoint or ImageNet weights; prints a table, JSON or CSV."""
    from alexnet_cli.prediction import predict as run_prediction

    with _boundary():
        if as_json and as_csv:
            raise ConfigError("give --json or --csv, not both")
        if output is not None and not (as_json or as_csv):
            as_csv = output.suffix.lower() == ".csv"
            as_json = not as_csv
        cfg = PredictConfig(inputs=tuple(inputs), weights=weights, pretrained=pretrained, top_k=top_k,
                            batch_size=batch_size, workers=workers, device=device, no_cuda=no_cuda,
                            precision=precision, strict=strict, explain=explain, tta=tta)
        results = run_prediction(cfg, console.RichObserver())
        if as_json or as_csv:
            text = (json.dumps(results, indent=2, ensure_ascii=False) + "\n" if as_json
                    else console.predictions_csv(results))
            if output is None:
                console.write_stdout(text)
            else:
                from alexnet_cli.checkpoint import atomic_write_text

                atomic_write_text(output, text)
                console.info(f"wrote {len(results)} predictions to {output}")
        else:
            console.predictions(results, "pretrained" if pretrained else "checkpoint")


@app.command()
def plot(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by alexnet train (runs/train-N).")],
) -> None:
    """Draw curves.png (loss, accuracy, learning rate per epoch) and confusion_matrix.png into a run folder."""
    from alexnet_cli.plots import plot_run

    with _boundary():
        for path in plot_run(run_dir):
            console.info(f"wrote {path}")


# The demo is itself a short script of the other commands, each step printed as it happens, so its steps
# stay here beside the drawing rather than in a core function.
@app.command()
def demo(
    folder: Annotated[
        Path, typer.Argument(help="Where the demo data set lives (made if missing).")
    ] = Path("alexnet-demo"),
    epochs: Annotated[
        int, typer.Option(help="Training epochs: more for accuracy, fewer for time.")
    ] = demo_defaults.EPOCHS,
    image_size: Annotated[
        int, typer.Option(help="Input size: larger is slower (alexnet needs at least 67).")
    ] = demo_defaults.IMAGE_SIZE,
    per_class: Annotated[
        int, typer.Option(help="Training images per class when the data set is made.")
    ] = demo_defaults.TRAIN_PER_CLASS,
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = TrainConfig.batch_size,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = TrainConfig.device,
    workers: Annotated[
        Optional[int], typer.Option(help="Data-loading processes.", show_default=WORKERS_DEFAULT)
    ] = None,
) -> None:
    """The whole tool in one command: make a small texture data set, train alexnet on it, evaluate, predict."""
    from alexnet_cli import demo as demomod
    from alexnet_cli.evaluation import evaluate as run_evaluation
    from alexnet_cli.prediction import predict as run_prediction
    from alexnet_cli.training import train as run_training

    with _boundary():
        val_per_class = max(1, per_class // 4)
        # Check every option before making anything.
        TrainConfig(data=folder / "train", val=folder / "val", image_size=image_size, epochs=epochs,
                    batch_size=batch_size, device=device, workers=workers)
        data = demomod.ensure_demo_data(folder, per_class=per_class, val_per_class=val_per_class,
                                        image_size=image_size)
        verb = "made" if data.created else "reusing"
        console.info(f"[1/3] data: {verb} {folder} ({len(demomod.CLASSES)} textures: "
                     f"{', '.join(demomod.CLASSES)}; {data.train_per_class} training and {data.val_per_class} "
                     "validation images each)")
        observer = console.RichObserver()
        try:
            result = run_training(TrainConfig(
                data=data.train, val=data.val, image_size=image_size, epochs=epochs, batch_size=batch_size,
                device=device, workers=workers, log_interval=1,
            ), observer)
        finally:
            observer.close()
        best = result.run_dir / "best.pt"
        console.info(f"[2/3] evaluate {best} on {data.val}")
        report = run_evaluation(EvaluateConfig(data=data.val, weights=best, device=device, workers=workers),
                                console.RichObserver()).to_dict()
        console.evaluation(report, str(data.val))
        samples = demomod.sample_images(data)
        console.info("[3/3] predict a few validation images")
        results = run_prediction(PredictConfig(inputs=tuple(samples), weights=best, top_k=2, device=device,
                                               workers=0), console.RichObserver())
        console.predictions(results, str(best))
        console.info(f"validation accuracy: {report['accuracy']:.1%} after {result.epochs_done} epochs "
                     f"(best at epoch {result.best_epoch}); weights in {best}")
        size = "" if image_size == 227 else f" --image-size {image_size}"
        console.demo_commands([
            ("train", f"alexnet train {data.train} --val {data.val} --epochs {epochs}{size}"),
            ("evaluate", f"alexnet evaluate {data.val} --weights {best}"),
            ("predict", f"alexnet predict {samples[0]} --weights {best}"),
            ("your data", "alexnet train path/to/train   (one sub-folder of images per class)"),
            ("real photos", "alexnet data pets pets && alexnet train pets/train --pretrained"),
        ])


@app.command()
def check(
    data: Annotated[Path, typer.Argument(help="ImageFolder tree to check (DATA/<class>/<image>).")],
    val: Annotated[Optional[Path], typer.Option(help="Validation folder.", show_default=SIBLING_VAL_DEFAULT)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Exit with code 3 when any problem is found.")] = False,
) -> None:
    """Check a data set without training: counts, unreadable files, odd images, train/val duplicates."""
    from alexnet_cli.checks import CheckConfig
    from alexnet_cli.checks import check as run_check

    with _boundary():
        report = run_check(CheckConfig(data=data, val=val))
        if as_json:
            console.print_json(report)
        else:
            console.check_report(report)
        if strict and report["problems"]:
            raise typer.Exit(3)


@app.command()
def export(
    weights: Annotated[Path, typer.Argument(help="The checkpoint to export (a best.pt or last.pt).")],
    fmt: Annotated[str, typer.Option("--format", help="onnx or torchscript.")] = "onnx",
    output: Annotated[Optional[Path], typer.Option(help="Model file.", show_default="beside the checkpoint")] = None,
) -> None:
    """Write the model with softmax included, plus its class names and preprocessing as JSON; checks the result."""
    from alexnet_cli.checkpoint import load_checkpoint
    from alexnet_cli.export import export as run_export

    with _boundary():
        result = run_export(load_checkpoint(weights), fmt, output)
        console.info(f"wrote {result.model_path} and {result.metadata_path}")
        console.info(f"checked against PyTorch on a {'x'.join(map(str, result.sample_shape))} batch: "
                     f"largest difference in probabilities {result.max_difference:.2e}")


def main() -> None:
    app()
