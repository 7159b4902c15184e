"""`alexnet demo`: the whole tool in one command, on a data set it draws itself."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from alexnet_cli.cli import console, tables
from alexnet_cli.cli.app import boundary
from alexnet_cli.cli.options import DeviceOption, WorkersOption
from alexnet_cli.cli.progress import RichObserver
from alexnet_cli.config.settings import DemoConfig, EvaluateConfig, PredictConfig, TrainConfig


# The demo is itself a short script of the other commands, each step printed as it happens, so its steps
# stay here beside the drawing rather than in a core function.
def demo(
    folder: Annotated[
        Path, typer.Argument(help="Where the demo data set lives (made if missing).")
    ] = DemoConfig.folder,
    epochs: Annotated[
        int, typer.Option(help="Training epochs: more for accuracy, fewer for time.")
    ] = DemoConfig.epochs,
    image_size: Annotated[
        int, typer.Option(help="Input size: larger is slower (alexnet needs at least 67).")
    ] = DemoConfig.image_size,
    per_class: Annotated[
        int, typer.Option(help="Training images per class when the data set is made.")
    ] = DemoConfig.per_class,
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = TrainConfig.batch_size,
    device: DeviceOption = TrainConfig.device,
    workers: WorkersOption = None,
) -> None:
    """The whole tool in one command: make a small texture data set, train alexnet on it, evaluate, predict."""
    from alexnet_cli.data.sources import demo as demomod
    from alexnet_cli.inference.evaluate import evaluate as run_evaluation
    from alexnet_cli.inference.predict import predict as run_prediction
    from alexnet_cli.training import train as run_training

    with boundary():
        val_per_class = max(1, per_class // 4)
        # Check every option before making anything.
        TrainConfig(data=folder / "train", val=folder / "val", image_size=image_size, epochs=epochs,
                    batch_size=batch_size, device=device, workers=workers)
        from alexnet_cli.artifacts.run_folder import RUNS_ROOT
        from alexnet_cli.runtime.files import check_writable

        if not (folder / "train").is_dir():
            check_writable(folder, "the demo data")
        check_writable(RUNS_ROOT, "the run folder")
        data = demomod.ensure_demo_data(folder, per_class=per_class, val_per_class=val_per_class,
                                        image_size=image_size)
        verb = "made" if data.created else "reusing"
        console.info(f"[1/3] data: {verb} {folder} ({len(demomod.CLASSES)} textures: "
                     f"{', '.join(demomod.CLASSES)}; {data.train_per_class} training and {data.val_per_class} "
                     "validation images each)")
        observer = RichObserver()
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
                                RichObserver()).to_dict()
        tables.evaluation(report, str(data.val))
        samples = demomod.sample_images(data)
        console.info("[3/3] predict a few validation images")
        results = run_prediction(PredictConfig(inputs=tuple(samples), weights=best, top_k=2, device=device,
                                               workers=0), RichObserver())
        tables.predictions(results, str(best))
        console.info(f"validation accuracy: {report['accuracy']:.1%} after {result.epochs_done} epochs "
                     f"(best at epoch {result.best_epoch}); weights in {best}")
        size = "" if image_size == 227 else f" --image-size {image_size}"
        tables.demo_commands([
            ("train", f"alexnet train {data.train} --val {data.val} --epochs {epochs}{size}"),
            ("evaluate", f"alexnet evaluate {data.val} --weights {best}"),
            ("predict", f"alexnet predict {samples[0]} --weights {best}"),
            ("your data", "alexnet train path/to/train   (one sub-folder of images per class)"),
            ("real photos", "alexnet data pets pets && alexnet train pets/train --pretrained"),
        ])
