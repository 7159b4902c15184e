"""`alexnet data ...`: real data sets laid out as ImageFolder trees (Oxford-IIIT Pet, Fashion-MNIST, CIFAR-10,
ImageNet); and `alexnet check`, which looks a data set over before it trains."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from alexnet_cli.cli import console, tables
from alexnet_cli.cli.app import boundary
from alexnet_cli.cli.options import SIBLING_VAL_DEFAULT

data_app = typer.Typer(help="Get real data sets, laid out as ImageFolder trees.", no_args_is_help=True)


@data_app.command("pets")
def data_pets(
    folder: Annotated[Path, typer.Argument(help="Where to put oxford-iiit-pet/ and the train/ and test/ trees.")],
    download: Annotated[bool, typer.Option(help="Download the data set if it is not in FOLDER yet.")] = True,
) -> None:
    """Oxford-IIIT Pet as FOLDER/train/{cat,dog} and FOLDER/test/{cat,dog}: the original's task on real photos."""
    from alexnet_cli.data.sources.pets import prepare_pets
    from alexnet_cli.runtime.files import check_writable

    with boundary():
        check_writable(folder, "the data set")
        report = prepare_pets(folder, download=download)
        for split, counts in report.counts.items():
            total = sum(counts.values())
            console.info(f"{folder / split}: {total:,} images ({', '.join(f'{n:,} {c}' for c, n in counts.items())})")
        console.info("placed by " + ", ".join(f"{method} {n:,}" for method, n in report.methods.items()))
        console.info(f"next: alexnet train {folder / 'train'} --pretrained   (validates on {folder / 'test'})")


FROM_HELP = ("A folder (or file) with the raw files the data set's own download fetches, for a machine "
             "without internet: nothing is downloaded then.")


def _benchmark_set(name: str, folder: Path, per_class: int | None, val_per_class: int, source: Path | None):
    from alexnet_cli.data.sources.benchmarks import prepare_dataset
    from alexnet_cli.runtime.files import check_writable

    with boundary():
        check_writable(folder, "the data set")
        report = prepare_dataset(name, folder, per_class=per_class, val_per_class=val_per_class, source=source)
        for split, counts in report.counts.items():
            total = sum(counts.values())
            console.info(f"{folder / split}: {total:,} images in {len(counts)} classes "
                         f"({min(counts.values()):,} to {max(counts.values()):,} per class)")
        console.info(f"wrote {report.written:,} PNG files (the rest were there already)")
        console.info(f"next: alexnet train {folder / 'train'}   (validates on {folder / 'val'}), then "
                     f"alexnet evaluate {folder / 'test'}")


PER_CLASS_HELP = "Keep only the first N training images of each class."
VAL_PER_CLASS_HELP = "Validation images per class, from the end of the training split (into FOLDER/val)."


@data_app.command("fashion-mnist")
def data_fashion_mnist(
    folder: Annotated[Path, typer.Argument(help="Where to put the raw files and the train/, val/, test/ trees.")],
    per_class: Annotated[int | None, typer.Option(help=PER_CLASS_HELP, show_default="all")] = None,
    val_per_class: Annotated[int, typer.Option(help=VAL_PER_CLASS_HELP)] = 200,
    source: Annotated[Path | None, typer.Option("--from", help=FROM_HELP)] = None,
) -> None:
    """Zalando's Fashion-MNIST (10 kinds of clothing, 28x28 grey) as PNGs in FOLDER/{train,val,test}/<class>."""
    _benchmark_set("fashion-mnist", folder, per_class, val_per_class, source)


@data_app.command("cifar10")
def data_cifar10(
    folder: Annotated[Path, typer.Argument(help="Where to put the raw files and the train/, val/, test/ trees.")],
    per_class: Annotated[int | None, typer.Option(help=PER_CLASS_HELP, show_default="all")] = None,
    val_per_class: Annotated[int, typer.Option(help=VAL_PER_CLASS_HELP)] = 200,
    source: Annotated[Path | None, typer.Option("--from", help=FROM_HELP)] = None,
) -> None:
    """CIFAR-10 (10 classes of 32x32 colour photos) as PNGs in FOLDER/{train,val,test}/<class>."""
    _benchmark_set("cifar10", folder, per_class, val_per_class, source)


@data_app.command("imagenet")
def data_imagenet(
    folder: Annotated[Path, typer.Argument(help="Where to put train/<wnid>, val/<wnid> and class_names.json.")],
    source: Annotated[Path, typer.Option("--from", help="The folder with ILSVRC2012_img_train.tar, "
                                         "ILSVRC2012_img_val.tar and ILSVRC2012_devkit_t12.tar.gz.")],
) -> None:
    """ILSVRC-2012 (1,000 classes, 1.28M training images) from its archives, as FOLDER/{train,val}/<wnid>."""
    from alexnet_cli.data.sources.imagenet import prepare_imagenet
    from alexnet_cli.runtime.files import check_writable

    with boundary():
        check_writable(folder, "the data set")
        report = prepare_imagenet(folder, source, report_line=console.info)
        for split, (classes, images) in report.counts.items():
            done = "unpacked now" if split in report.unpacked else "there already"
            console.info(f"{folder / split}: {images:,} images in {classes:,} classes ({done})")
        console.info(f"class names: {folder / 'class_names.json'}")
        console.info(f"next: torchrun --nproc_per_node=GPUS $(which alexnet) train {folder / 'train'} --val "
                     f"{folder / 'val'} --recipe paper --epochs 90   (docs/scale.md)")


def check(
    data: Annotated[Path, typer.Argument(help="ImageFolder tree to check (DATA/<class>/<image>).")],
    val: Annotated[Path | None, typer.Option(help="Validation folder.", show_default=SIBLING_VAL_DEFAULT)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Exit with code 3 when any problem is found.")] = False,
) -> None:
    """Check a data set without training: counts, unreadable files, odd images, train/val duplicates."""
    from alexnet_cli.data.checks import CheckConfig
    from alexnet_cli.data.checks import check as run_check

    with boundary():
        report = run_check(CheckConfig(data=data, val=val))
        if as_json:
            console.print_json(report)
        else:
            tables.check_report(report)
        if strict and report["problems"]:
            raise typer.Exit(3)
