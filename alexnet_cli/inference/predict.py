"""Prediction: top-k labels with probabilities for images, folders and globs (`alexnet predict`), from a
trained checkpoint or torchvision's ImageNet weights, with Grad-CAM pictures on request."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from alexnet_cli.artifacts.checkpoint import load_checkpoint
from alexnet_cli.artifacts.run_folder import resolve_weights
from alexnet_cli.config.settings import PredictConfig
from alexnet_cli.data import folders as datamod
from alexnet_cli.data import loading
from alexnet_cli.data.images import open_image
from alexnet_cli.data.names import printable
from alexnet_cli.data.preprocess import Preprocess
from alexnet_cli.errors import ConfigError, DataError
from alexnet_cli.inference import gradcam as explain
from alexnet_cli.inference.onnx_model import OnnxModel, is_onnx, read_onnx
from alexnet_cli.inference.tta import eval_transforms as tta_transforms
from alexnet_cli.inference.tta import forward as tta_forward
from alexnet_cli.models.alexnet import build_model
from alexnet_cli.observer import Observer
from alexnet_cli.runtime.context import DECODE_THREADS, Runtime, prepare_for_inference, resolve_runtime, to_device
from alexnet_cli.runtime.files import atomic_write


@dataclass(frozen=True)
class Predictor:
    model: nn.Module
    class_names: tuple[str, ...]  # the class folders, as the outputs index them
    preprocess: Preprocess
    source: str
    display_names: tuple[str, ...] = ()  # what each class is shown as, where it differs (class_names.json)

    @property
    def labels(self) -> tuple[str, ...]:
        return self.display_names or self.class_names

    @property
    def onnx(self) -> OnnxModel | None:
        """The exported model this runs, where it is one (`alexnet export`, fp32 or --int8)."""
        return self.model if isinstance(self.model, OnnxModel) else None

    @property
    def precision(self) -> str | None:
        """An exported model's own precision (int8 or fp32); None for a checkpoint, which --precision sets."""
        return self.onnx.precision if self.onnx is not None else None

    def runtime(self, runtime: Runtime) -> Runtime:
        """Where it computes: as --device and --precision say, or, for an exported model, in ONNX Runtime on
        the CPU in its own precision (said in the device and precision lines)."""
        return runtime.on_onnx_runtime(self.precision) if self.precision is not None else runtime

    def refuse_grad_cam(self, what: str) -> None:
        if self.onnx is not None:
            raise ConfigError(f"{what} draws Grad-CAM from the model's gradients, which an exported "
                              f"{self.precision} model does not have: use the checkpoint it was exported from, "
                              f"{printable(str(self.onnx.source or 'its best.pt'))}")


def ranked(values: list[float], classes: list[int], labels: tuple[str, ...],
           folders: tuple[str, ...] | None = None) -> dict[str, Any]:
    """One image's record, best first: label, confidence and the top-k labels with their probabilities (what
    `predict --json` prints per image, less its path, and what `alexnet serve` answers). Each label is the
    class's display name; with `folders`, "class" keeps its folder's name beside it."""
    top_k = [{"label": labels[c], **({"class": folders[c]} if folders else {}), "probability": p}
             for p, c in zip(values, classes)]
    head = {"label": top_k[0]["label"], **({"class": folders[classes[0]]} if folders else {})}
    return {**head, "confidence": top_k[0]["probability"], "top_k": top_k}


def load_predictor(weights: Path | None, pretrained: bool, observer: Observer) -> Predictor:
    """A trained checkpoint (the newest run's best.pt by default), or torchvision's ImageNet weights."""
    if pretrained:
        return imagenet_predictor()
    path = resolve_weights(weights, observer, alternative=" or --pretrained for ImageNet")
    if is_onnx(path):
        exported = read_onnx(path)
        return Predictor(OnnxModel(exported.path, exported.precision, source=exported.metadata.get("source")),
                         exported.class_names, exported.preprocess, str(path), exported.display_names)
    checkpoint = load_checkpoint(path)
    return Predictor(checkpoint.build(), checkpoint.class_names, checkpoint.preprocess, str(checkpoint.path),
                     checkpoint.display_names)


def imagenet_predictor(folders: tuple[str, ...] = ()) -> Predictor:
    """torchvision's ImageNet weights, with their own preprocessing. Its classes are shown by torchvision's
    names; `folders`, the WordNet IDs in output order, are the class folders of an ImageNet folder."""
    from torchvision.models import AlexNet_Weights

    spec = AlexNet_Weights.IMAGENET1K_V1
    transforms = spec.transforms()  # the weights' own preprocessing, not ours
    preprocess = Preprocess(
        image_size=transforms.crop_size[0], resize_size=transforms.resize_size[0], mean=tuple(transforms.mean),
        std=tuple(transforms.std), interpolation=transforms.interpolation.value,
    )
    model = build_model("alexnet-torchvision", pretrained=True).eval()
    categories = tuple(spec.meta["categories"])
    return Predictor(model, folders or categories, preprocess, "ImageNet weights (IMAGENET1K_V1)",
                     categories if folders else ())


def _write_explanation(explain, path: str, cam, preprocess, folder: Path, result: dict[str, Any],
                       taken: set[str]) -> Path:
    """One PNG: the original image, at its own size, with the Grad-CAM of the predicted class over it."""
    image = open_image(path)
    heat = explain.full_size_cam(cam, image.width, image.height, preprocess)
    caption = f"{result['label']} {result['confidence']:.1%}"
    target = explain.output_name(folder, path, result["label"], result["confidence"], taken)
    picture = explain.overlay(image, heat, caption)
    atomic_write(target, lambda file: picture.save(file, format="PNG"))
    return target


def predict(cfg: PredictConfig, observer: Observer) -> list[dict[str, Any]]:
    """One result per readable image: path, label, confidence and the top-k labels with probabilities."""
    paths, problems = datamod.expand_inputs(cfg.inputs)
    for problem in problems:
        observer.warn(problem)
    if not paths:
        raise DataError("nothing to predict: none of the inputs is an image, a folder of images or a matching glob")
    # Grad-CAM's gradients are taken in fp32.
    runtime = resolve_runtime(cfg.device, cfg.no_cuda, "fp32" if cfg.explain is not None else cfg.precision,
                              cfg.workers)
    predictor = load_predictor(cfg.weights, cfg.pretrained, observer)
    if cfg.explain is not None:
        predictor.refuse_grad_cam("--explain")
    runtime = predictor.runtime(runtime)
    device, precision = runtime.device, runtime.precision
    runtime.report(observer)
    model = prepare_for_inference(predictor.model, device, precision)
    dataset = loading.ImageDataset(paths, None, tta_transforms(predictor.preprocess, cfg.tta),
                                   draft_size=predictor.preprocess.resize_size)
    loader = loading.make_loader(dataset, loading.LoaderSettings.for_runtime(runtime, cfg.batch_size, observer.warn,
                                                                             DECODE_THREADS))
    k = min(cfg.top_k, len(predictor.class_names))
    explain_dir = cfg.explain
    if explain_dir is not None:
        explain_dir.mkdir(parents=True, exist_ok=True)
        taken: set[str] = set()
    results: list[dict[str, Any]] = []
    skipped = 0
    # Grad-CAM needs gradients; plain prediction runs without autograd at all.
    with torch.inference_mode(explain_dir is None), loader:
        for images, _, indices, failed in loader:
            skipped += loading.report_unreadable(failed, cfg.strict, observer)
            if images is None:
                continue
            if explain_dir is not None:
                cams, logits = explain.grad_cam(model, to_device(images, device, precision.dtype))
            else:
                logits = tta_forward(model, images, device, precision.dtype, cfg.tta)
            probabilities = logits.float().softmax(dim=1)
            top = probabilities.topk(k, dim=1)
            for row, (index, values, classes) in enumerate(zip(indices, top.values.tolist(), top.indices.tolist())):
                result = {"path": printable(paths[index]),
                          **ranked(values, classes, predictor.labels, predictor.class_names)}
                if explain_dir is not None:
                    result["explanation"] = printable(str(_write_explanation(
                        explain, paths[index], cams[row], predictor.preprocess, explain_dir, result, taken)))
                results.append(result)
    if not results:
        raise DataError(f"none of the {len(paths)} files could be read as an image")
    if skipped:
        observer.warn(f"{skipped} of {len(paths)} files skipped")
    return results
