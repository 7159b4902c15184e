"""`alexnet train`, `alexnet lr-find` and `alexnet plot`: the commands that make a run and draw it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from alexnet_cli.cli import console, tables
from alexnet_cli.cli.app import boundary, given, learning_rate, with_recipe
from alexnet_cli.cli.options import (
    ARCH_HELP,
    AUGMENT_HELP,
    CACHE_HELP,
    CLASS_WEIGHTS_HELP,
    EMA_HELP,
    FRAME_DEFAULT,
    FRAME_HELP,
    IMAGE_SIZE_DEFAULT,
    LR_DEFAULT,
    OPTIMIZER_HELP,
    PCA_HELP,
    RECIPE_HELP,
    SIBLING_VAL_DEFAULT,
    TENSORBOARD_HELP,
    TRAIN_BATCH_HELP,
    WEIGHT_DECAY_DEFAULT,
    DeviceOption,
    NoCudaOption,
    PrecisionOption,
    StrictOption,
    WorkersOption,
)
from alexnet_cli.cli.progress import RichObserver
from alexnet_cli.config.recipes import describe as describe_recipe
from alexnet_cli.config.settings import DEFAULT_EPOCHS, RESUME_TAKES, TrainConfig
from alexnet_cli.errors import ConfigError, MissingExtra


# Long only in its options: the body is the config, one call and the report.
def train(
    ctx: typer.Context,
    data: Annotated[Path | None, typer.Argument(help="ImageFolder tree: DATA/<class>/<image>.")] = None,
    val: Annotated[Path | None, typer.Option(help="Validation folder.", show_default=SIBLING_VAL_DEFAULT)] = None,
    val_split: Annotated[float | None, typer.Option(
        help="Hold out this fraction of DATA per class.", show_default="0.1 when there is no validation folder")
    ] = None,
    arch: Annotated[str | None, typer.Option(
        help=ARCH_HELP, show_default="alexnet, or alexnet-torchvision with --pretrained")] = None,
    image_size: Annotated[int | None, typer.Option(help="Input size.", show_default=IMAGE_SIZE_DEFAULT)] = None,
    frame: Annotated[str | None, typer.Option(help=FRAME_HELP, show_default=FRAME_DEFAULT)] = None,
    pretrained: Annotated[
        bool, typer.Option("--pretrained", help="Start from ImageNet weights (alexnet-torchvision, new head).")
    ] = False,
    freeze_features: Annotated[
        bool, typer.Option("--freeze-features", help="With --pretrained: train the classifier only.")
    ] = False,
    batch_size: Annotated[int, typer.Option(help=TRAIN_BATCH_HELP)] = TrainConfig.batch_size,
    epochs: Annotated[int | None, typer.Option(
        help="Epochs to train to.", show_default=f"{DEFAULT_EPOCHS}, or the resumed run's own")] = None,
    lr: Annotated[str | None, typer.Option(
        help="Learning rate, or 'find' to run the LR range test first and train at its suggestion.",
        show_default=LR_DEFAULT)] = None,
    optimizer: Annotated[str, typer.Option(help=OPTIMIZER_HELP)] = TrainConfig.optimizer,
    weight_decay: Annotated[float | None, typer.Option(
        help="L2 weight decay.", show_default=WEIGHT_DECAY_DEFAULT)] = None,
    scheduler: Annotated[
        str, typer.Option(help="Learning-rate schedule: none, step or cosine.")
    ] = TrainConfig.scheduler,
    label_smoothing: Annotated[
        float, typer.Option(help="Cross-entropy label smoothing.")
    ] = TrainConfig.label_smoothing,
    dropout: Annotated[float, typer.Option(help="Dropout before/after the FC layers.")] = TrainConfig.dropout,
    patience: Annotated[int | None, typer.Option(help="Stop after N epochs without a better val accuracy.")] = None,
    workers: WorkersOption = None,
    device: DeviceOption = TrainConfig.device,
    no_cuda: NoCudaOption = False,
    precision: PrecisionOption = TrainConfig.precision,
    seed: Annotated[int, typer.Option(help="Random seed: same seed, same data, same run.")] = TrainConfig.seed,
    log_interval: Annotated[int, typer.Option(help="Log the loss every N iterations.")] = TrainConfig.log_interval,
    output: Annotated[Path | None, typer.Option(help="Run folder.", show_default="a new runs/train-N")] = None,
    resume: Annotated[
        Path | None, typer.Option(help="Continue from a last.pt; a larger --epochs extends it.")
    ] = None,
    strict: StrictOption = False,
    tensorboard: Annotated[
        bool, typer.Option("--tensorboard", help=TENSORBOARD_HELP)
    ] = False,
    cache: Annotated[str, typer.Option(help=CACHE_HELP)] = TrainConfig.cache,
    recipe: Annotated[str | None, typer.Option(help=RECIPE_HELP, show_default="none")] = None,
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
    class_names_file: Annotated[Path | None, typer.Option(
        "--class-names", help="A JSON object from each class folder to the name to show (the first of a list).",
        show_default="class_names.json in DATA or its parent, if there is one")] = None,
) -> None:
    """Train on an ImageFolder tree, validating every epoch; writes a run folder with best.pt and last.pt."""
    from alexnet_cli.training import train as run_training

    observer = RichObserver()
    with boundary():
        if data is None and resume is None:
            raise ConfigError("give the training folder: alexnet train DATA (or --resume runs/NAME/last.pt)")
        options = dict(locals())
        options.update(arch=arch or ("alexnet-torchvision" if pretrained else "alexnet"), lr_find=lr == "find",
                       lr=learning_rate(lr))
        cfg, from_recipe = with_recipe(ctx, TrainConfig, options, recipe)
        if resume is not None:
            say_ignored_on_resume(ctx)
        elif recipe is not None:
            console.info(describe_recipe(recipe, from_recipe))
        try:
            result = run_training(cfg, observer)
        finally:
            observer.close()
        from alexnet_cli.runtime.distributed import from_env

        if not from_env().is_main:
            return  # under torchrun, rank 0 reports
        best = result.run_dir / "best.pt"
        tables.accuracy_trend(result.history)
        console.info(f"done: {result.epochs_done} epochs, best accuracy {result.best_acc:.2%} at epoch "
                     f"{result.best_epoch}; weights in {best}")
        console.info(f"next: {evaluate_hint(result.run_dir)}   |   alexnet predict IMAGE --weights {best}")


def lr_find(
    ctx: typer.Context,
    data: Annotated[Path, typer.Argument(help="ImageFolder tree: DATA/<class>/<image>.")],
    steps: Annotated[int, typer.Option(help="Steps of the test (one batch each).")] = 100,
    start: Annotated[float, typer.Option(help="The first learning rate.")] = 1e-7,
    end: Annotated[float, typer.Option(help="The last learning rate.")] = 1.0,
    plot: Annotated[Path | None, typer.Option(
        help="Where to draw the curve (needs the plots extra; without it, the table alone).",
        show_default="lr-find.png")] = None,
    recipe: Annotated[str | None, typer.Option(help=RECIPE_HELP, show_default="none")] = None,
    arch: Annotated[str | None, typer.Option(
        help=ARCH_HELP, show_default="alexnet, or alexnet-torchvision with --pretrained")] = None,
    pretrained: Annotated[
        bool, typer.Option("--pretrained", help="Start from ImageNet weights (alexnet-torchvision, new head).")
    ] = False,
    optimizer: Annotated[str, typer.Option(help=OPTIMIZER_HELP)] = TrainConfig.optimizer,
    batch_size: Annotated[int, typer.Option(help=TRAIN_BATCH_HELP)] = TrainConfig.batch_size,
    image_size: Annotated[int | None, typer.Option(help="Input size.", show_default=IMAGE_SIZE_DEFAULT)] = None,
    frame: Annotated[str | None, typer.Option(help=FRAME_HELP, show_default=FRAME_DEFAULT)] = None,
    augment: Annotated[str, typer.Option(help=AUGMENT_HELP)] = TrainConfig.augment,
    workers: WorkersOption = None,
    device: DeviceOption = TrainConfig.device,
    no_cuda: NoCudaOption = False,
    precision: PrecisionOption = TrainConfig.precision,
    cache: Annotated[str, typer.Option(help=CACHE_HELP)] = TrainConfig.cache,
    seed: Annotated[int, typer.Option(help="Random seed.")] = TrainConfig.seed,
) -> None:
    """The learning-rate range test: train briefly at a growing rate, show the loss and suggest a rate."""
    from alexnet_cli.training import lr_find as run_lr_find

    with boundary():
        options = {**locals(), "lr": None, "lr_find": False,
                   "arch": arch or ("alexnet-torchvision" if pretrained else "alexnet")}
        cfg, from_recipe = with_recipe(ctx, TrainConfig, options, recipe)
        if plot is not None:
            from alexnet_cli.runtime.files import check_writable

            check_writable(plot, "--plot", is_file=True)
        if recipe is not None:
            console.info(describe_recipe(recipe, from_recipe))
        result = run_lr_find(cfg, RichObserver(), steps=steps, start=start, end=end)
        tables.lr_curve(result.lrs, result.losses, result.suggestion)
        from alexnet_cli.reporting.plots import write_lr_curve

        try:
            drawn = write_lr_curve(plot or Path("lr-find.png"), result.lrs, result.losses, result.suggestion)
            console.info(f"wrote {drawn}")
        except MissingExtra as exc:
            if plot is not None:
                raise
            console.info(f"no picture of the curve: {exc}")
        console.info(f"suggested --lr {result.suggestion:.2e} ({result.rule})")
        console.info(f"next: alexnet train {data} --lr {result.suggestion:.2e}   (or --lr find)")


def plot(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by alexnet train (runs/train-N).")],
) -> None:
    """Draw curves.png (loss, accuracy, learning rate per epoch) and confusion_matrix.png into a run folder."""
    from alexnet_cli.reporting.plots import plot_run
    from alexnet_cli.runtime.files import check_writable

    with boundary():
        if run_dir.is_dir():
            check_writable(run_dir, "the pictures")
        for path in plot_run(run_dir):
            console.info(f"wrote {path}")


def evaluate_hint(run_dir: Path) -> str:
    """How to evaluate the run on what it validated on: never on DATA, which holds the training images too."""
    from alexnet_cli.artifacts.run_folder import held_out
    from alexnet_cli.errors import CheckpointError

    try:
        held_out(run_dir)
    except CheckpointError:  # trained without validation
        return f"alexnet evaluate TEST_DATA --weights {run_dir / 'best.pt'}"
    return f"alexnet evaluate --run {run_dir}"


def say_ignored_on_resume(ctx: typer.Context) -> None:
    """One line naming the options given with --resume that it does not take: the run keeps its own."""
    ignored = [f"--{name.replace('_', '-')}" for name in ctx.params if name not in RESUME_TAKES and given(ctx, name)]
    if ignored:
        console.warn(f"--resume goes on with the run's own settings (its config.json): ignoring {', '.join(ignored)}"
                     f"; it takes only {', '.join('--' + n.replace('_', '-') for n in RESUME_TAKES[2:])} and DATA")
