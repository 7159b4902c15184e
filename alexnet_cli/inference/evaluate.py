"""Evaluation: loss, accuracy, top-k, per-class precision/recall/F1 and the confusion matrix over a labelled
folder (`alexnet evaluate`), the same loop for validation during training, and --save-errors."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from alexnet_cli.artifacts.run_folder import HeldOut, held_out
from alexnet_cli.config.settings import EvaluateConfig
from alexnet_cli.data import folders as datamod
from alexnet_cli.data import loading
from alexnet_cli.errors import DataError
from alexnet_cli.inference.predict import Predictor, imagenet_predictor, load_predictor
from alexnet_cli.inference.tta import eval_transforms as tta_transforms
from alexnet_cli.inference.tta import forward as tta_forward
from alexnet_cli.observer import Observer
from alexnet_cli.runtime import distributed as distmod
from alexnet_cli.runtime.context import DECODE_THREADS, Runtime, model_dtype, prepare_for_inference, resolve_runtime
from alexnet_cli.runtime.device import sum_dtype
from alexnet_cli.runtime.files import link_or_copy
from alexnet_cli.runtime.precision import Precision

# How many classes and confused pairs the summary shows: at 1,000 classes, the whole table is --json's.
SHOWN = 10


@dataclass
class EvalResult:
    class_names: tuple[str, ...]  # as shown: each class's display name, else its folder's
    images: int
    loss: float
    confusion: list[list[int]]  # confusion[true][predicted]
    k: int
    topk_correct: int | None  # None where there are not more than k classes
    class_folders: tuple[str, ...] = ()  # the class folders, where they differ from the names shown

    @property
    def accuracy(self) -> float:
        return sum(self.confusion[i][i] for i in range(len(self.confusion))) / max(1, self.images)

    def per_class(self) -> list[dict[str, Any]]:
        rows = []
        n = len(self.class_names)
        for i, name in enumerate(self.class_names):
            tp = self.confusion[i][i]
            support = sum(self.confusion[i])
            predicted = sum(self.confusion[j][i] for j in range(n))
            precision = tp / predicted if predicted else 0.0
            recall = tp / support if support else 0.0
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
            rows.append({"class": name, "precision": precision, "recall": recall, "f1": f1, "support": support})
        return rows

    def most_confused(self, n: int = SHOWN) -> list[dict[str, Any]]:
        """The `n` largest off-diagonal cells: (true class, predicted class), how many, and what share of the
        true class's images that is."""
        counts = torch.tensor(self.confusion, dtype=torch.long)
        support = counts.sum(1)
        counts.fill_diagonal_(0)
        values, cells = counts.flatten().sort(descending=True, stable=True)  # ties in class order
        size = len(self.class_names)
        return [{"true": self.class_names[i // size], "predicted": self.class_names[i % size], "count": int(c),
                 "share": int(c) / max(1, int(support[i // size]))}
                for c, i in zip(values[:n].tolist(), cells[:n].tolist()) if c > 0]

    def worst_classes(self, per_class: list[dict[str, Any]], n: int = SHOWN) -> list[dict[str, Any]]:
        """The `n` classes with the lowest recall (of those with images), each with what it is most often
        mistaken for."""
        present = sorted((row for row in per_class if row["support"]), key=lambda row: (row["recall"], -row["support"]))
        index = {name: i for i, name in enumerate(self.class_names)}
        worst = []
        for row in present[:n]:
            errors = list(self.confusion[index[row["class"]]])
            errors[index[row["class"]]] = 0
            j = max(range(len(errors)), key=errors.__getitem__)
            worst.append({**row, "mistaken_for": self.class_names[j] if errors[j] else None})
        return worst

    def to_dict(self) -> dict[str, Any]:
        per_class = self.per_class()
        present = [row for row in per_class if row["support"]]
        topk = (self.topk_correct / max(1, self.images)) if self.topk_correct is not None else None
        result = {
            "images": self.images,
            "loss": self.loss,
            "accuracy": self.accuracy,
            f"top{self.k}_accuracy": topk,
            # The paper's figures: top-1 and top-5 error (AlexNet on ILSVRC-2012 validation: 40.7% and 18.2%).
            "top1_error": 1 - self.accuracy,
            f"top{self.k}_error": 1 - topk if topk is not None else None,
            "macro_f1": sum(row["f1"] for row in present) / max(1, len(present)),
            "class_names": list(self.class_names),
            "class_folders": list(self.class_folders or self.class_names),
            "worst_classes": self.worst_classes(per_class),
            "most_confused": self.most_confused(),
            "per_class": per_class,
            "confusion_matrix": self.confusion,
        }
        return result


def _no_failures(failed: object) -> int:
    return 0


@dataclass(frozen=True)
class EvalSettings:
    """How an evaluation pass counts: top-`k`, the loss (training's own criterion when it validates), where
    unreadable files are reported, the test-time augmentation, and the torchrun ranks that share the images."""

    k: int = 5
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    on_failed: Callable[[Any], int] = _no_failures
    tta: str = "none"
    dist: distmod.Dist = distmod.SINGLE


def evaluate_model(model: nn.Module, loader: Iterable[Any], runtime: Runtime, num_classes: int,
                   settings: EvalSettings = EvalSettings(),
                   predictions: list[tuple[int, int, int]] | None = None) -> EvalResult:
    """Loss, confusion and top-k over a loader; with `predictions`, (dataset index, true, predicted) per image.
    A model already cast to bf16/fp16 runs as it is; an fp32 model (validation during training) runs under
    autocast when the precision is reduced."""
    device, precision, k, dist = runtime.device, runtime.precision, settings.k, settings.dist
    criterion = settings.criterion or torch.nn.CrossEntropyLoss()
    dtype = model_dtype(model)
    autocast = precision.autocast(device) if dtype == torch.float32 else contextlib.nullcontext()
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.long, device=device)
    loss_sum = torch.zeros((), dtype=sum_dtype(device), device=device)
    topk_correct = torch.zeros((), dtype=torch.long, device=device)
    use_topk = num_classes > k
    images = 0
    model.eval()
    with torch.inference_mode():
        for batch, labels, indices, failed in loader:
            settings.on_failed(failed)
            if batch is None:
                continue
            labels = labels.to(device, non_blocking=True)
            with autocast:
                logits = tta_forward(model, batch, device, dtype, settings.tta)
            logits = logits.float()
            # Sum, not mean, so that a short last batch weighs what it holds.
            loss_sum += criterion(logits, labels).to(loss_sum.dtype) * labels.numel()
            predicted = logits.argmax(1)
            if predictions is not None:  # (dataset index, true, predicted) per image
                predictions.extend(zip(indices, labels.tolist(), predicted.tolist()))
            confusion += torch.bincount(labels * num_classes + predicted, minlength=num_classes * num_classes)
            if use_topk:
                topk_correct += (logits.topk(k, dim=1).indices == labels[:, None]).any(1).sum()
            images += labels.numel()
    if dist.enabled:  # each rank saw its own share of the images, each image once: sum the counts
        dtype = sum_dtype(device)
        counts = torch.cat([confusion.to(dtype), loss_sum.view(1), topk_correct.to(dtype).view(1),
                            torch.tensor([float(images)], dtype=dtype, device=device)])
        distmod.all_reduce_sum(counts, dist)
        n = num_classes * num_classes
        confusion, loss_sum, topk_correct = counts[:n].long(), counts[n], counts[n + 1].long()
        images = int(counts[n + 2].item())
    return EvalResult(
        class_names=(),
        images=images,
        loss=loss_sum.item() / max(1, images),
        confusion=confusion.view(num_classes, num_classes).tolist(),
        k=k,
        topk_correct=int(topk_correct.item()) if use_topk else None,
    )


def top1(model: nn.Module, images: datamod.ImageSet, preprocess, num_classes: int, runtime: Runtime | None = None,
         batch_size: int = 32) -> float:
    """The accuracy `alexnet evaluate` reports for `model` on `images` (export --int8's gate, benchmark's
    column): the same transforms and loop; on the CPU in fp32 unless `runtime` says otherwise."""
    runtime = runtime or Runtime(torch.device("cpu"), "cpu", Precision("fp32", "fp32"), 0)
    dataset = loading.ImageDataset(images.paths, images.labels, preprocess.eval_transforms(),
                                   draft_size=preprocess.resize_size)
    settings = loading.LoaderSettings.for_runtime(runtime, batch_size, threads=DECODE_THREADS)
    with loading.make_loader(dataset, settings) as loader:
        return evaluate_model(model, loader, runtime, num_classes).accuracy


def evaluate(cfg: EvaluateConfig, observer: Observer) -> EvalResult:
    runtime = resolve_runtime(cfg.device, cfg.no_cuda, cfg.precision, cfg.workers)
    held = held_out(cfg.run) if cfg.data is None and cfg.run is not None else None  # before the checkpoint
    source = _predictor(cfg, observer)
    runtime = source.runtime(runtime)
    runtime.report(observer)
    images = _images(cfg, held, source.class_names, observer)
    for skipped in images.skipped:
        observer.warn(f"skipped {skipped}")
    model = prepare_for_inference(source.model, runtime.device, runtime.precision)
    dataset = loading.ImageDataset(images.paths, images.labels, tta_transforms(source.preprocess, cfg.tta),
                                   draft_size=source.preprocess.resize_size)
    loader = loading.make_loader(dataset, loading.LoaderSettings.for_runtime(runtime, cfg.batch_size, observer.warn,
                                                                             DECODE_THREADS))
    predictions: list[tuple[int, int, int]] | None = [] if cfg.save_errors is not None else None
    with loader:
        settings = EvalSettings(k=cfg.top_k, tta=cfg.tta,
                                on_failed=lambda failed: loading.report_unreadable(failed, cfg.strict, observer))
        result = evaluate_model(model, loader, runtime, len(source.class_names), settings, predictions)
    result.class_names, result.class_folders = source.labels, source.class_names
    if predictions is not None and cfg.save_errors is not None:
        saved = save_errors(cfg.save_errors, images.paths, predictions, source.labels)
        observer.info(f"misclassified: {saved} images linked into {cfg.save_errors}/<true>__as__<predicted>/")
    if images.skipped:
        observer.warn(f"{len(images.skipped)} files skipped")
    return result


def _predictor(cfg: EvaluateConfig, observer: Observer) -> Predictor:
    """The model to evaluate: --pretrained's ImageNet weights, with DATA's WordNet-ID folders in their output
    order, or a checkpoint (--run's best.pt, --weights, or the newest run's)."""
    if cfg.pretrained:
        from alexnet_cli.data.sources.imagenet import wnid_order

        assert cfg.data is not None
        return imagenet_predictor(wnid_order(cfg.data))
    weights = Path(cfg.run) / "best.pt" if cfg.run is not None else cfg.weights
    return load_predictor(weights, False, observer)


def _images(cfg: EvaluateConfig, held: HeldOut | None, classes: Sequence[str], observer: Observer
            ) -> datamod.ImageSet:
    """DATA, or the images the run validated on (`held`). One pass over the data: no separate scan; the loader
    names and skips bad files as it meets them."""
    folder = held.data if held is not None else cfg.data
    assert folder is not None  # EvaluateConfig holds DATA or --run
    images = datamod.load_image_folder(folder, classes=classes, strict=cfg.strict, check="none")
    if held is None or held.names is None:
        return images
    observer.info(f"evaluating on {held.source}")
    positions, _ = held.split(images.relative())
    if len(positions) < len(held.names):
        observer.warn(f"{len(held.names) - len(positions):,} of the held-out images are no longer in {folder}")
    if not positions:
        raise DataError(f"none of the images {cfg.run} held out are in {folder} any more")
    return images.subset(positions, images.skipped)


def save_errors(folder: Path, paths: Sequence[str], predictions: Sequence[tuple[int, int, int]],
                class_names: Sequence[str]) -> int:
    """Link (or copy) each misclassified image into folder/<true>__as__<predicted>/; the number placed."""
    placed = 0
    for index, true, predicted in predictions:
        if true == predicted:
            continue
        target_dir = Path(folder) / f"{_folder_safe(class_names[true])}__as__{_folder_safe(class_names[predicted])}"
        target_dir.mkdir(parents=True, exist_ok=True)
        source = Path(paths[index])
        target = target_dir / source.name
        n = 2
        while target.exists() or target.is_symlink():  # two files of one name from different sub-folders
            target = target_dir / f"{source.stem}-{n}{source.suffix}"
            n += 1
        link_or_copy(source, target)
        placed += 1
    return placed


def _folder_safe(name: str) -> str:
    """A class's shown name as part of a folder name: no path separator (a display name may hold one)."""
    return name.replace("/", "-").replace("\\", "-").replace("\0", "") or "class"
