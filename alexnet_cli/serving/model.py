"""The served model: an upload's bytes to the model's input, a batch of inputs to their answers, and the
records the endpoints send. No web framework here: the app calls these on its threads.

The model is loaded once as `predict` loads it (a checkpoint, memory-mapped, or torchvision's ImageNet weights)
with predict's runtime choices (device, precision, channels_last), and warmed up before the server listens.
"""

from __future__ import annotations

import base64
import copy
import io
import time
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torch import nn

from alexnet_cli import __version__
from alexnet_cli.config.settings import ServeConfig
from alexnet_cli.data.cache import available_memory
from alexnet_cli.data.images import open_upload
from alexnet_cli.data.preprocess import PixelBatch, Pixels
from alexnet_cli.inference import gradcam as explain
from alexnet_cli.inference.predict import Predictor, load_predictor, ranked
from alexnet_cli.models.alexnet import AlexNet
from alexnet_cli.observer import Observer
from alexnet_cli.runtime.context import DECODE_THREADS, Runtime, prepare_for_inference, resolve_runtime, to_device

# The Grad-CAM overlay is drawn on the image scaled to at most this many pixels a side: enough for a page,
# and a PNG of a phone photo at full size would be megabytes of base64.
OVERLAY_SIDE = 448
# --max-pixels when it is not given: a quarter of the available memory shared by the decoding threads, at the
# peak a decode reaches per pixel (24 bytes for an RGBA PNG, 12 for RGB, measured with ru_maxrss through
# open_upload and the transforms), and never over MAX_PIXELS (a 48-megapixel phone JPEG decodes at a fraction
# of that after its draft; other formats decode whole).
PEAK_BYTES_PER_PIXEL = 24
MAX_PIXELS = 40_000_000


def default_max_pixels(decoding_threads: int) -> int:
    memory = available_memory()
    if memory is None:
        return MAX_PIXELS
    return max(1_000_000, min(MAX_PIXELS, memory // 4 // (decoding_threads * PEAK_BYTES_PER_PIXEL)))


def batched_forward(model: nn.Module, runtime: Runtime) -> nn.Module:
    """The model the batcher runs: on the CPU in fp32, the same AlexNet with its classifier's Linear layers
    holding their weights in oneDNN's own layout (it shares the features); elsewhere, the model itself.

    At batch 1 a Linear layer is a matrix-vector product, and PyTorch's default path is fast. At the batches
    the server makes, the default sgemm rearranges the whole weight on every call, and a weight kept in
    oneDNN's layout does not (docs/serve.md has the timings). torch.utils.mkldnn converts a copy of the
    classifier once; the model keeps its own for Grad-CAM, whose backward pass the converted layers do not
    have. Where the conversion is not available, the model itself serves."""
    if (runtime.device.type != "cpu" or runtime.precision.reduced or not torch.backends.mkldnn.is_available()
            or not isinstance(model, AlexNet)):
        return model
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit's deprecation notes: the converted layers are what we need
            from torch.utils.mkldnn import to_mkldnn

            classifier = to_mkldnn(copy.deepcopy(model.classifier))  # it converts in place: a copy
    except Exception:  # a torch without it: the plain layers still serve
        return model

    return AlexNet(model.features, classifier).eval()


@dataclass(frozen=True)
class Sample:
    """One decoded upload: the model's input, and the picture to draw Grad-CAM on when it was asked for."""

    pixels: Pixels
    picture: Image.Image | None = None


@dataclass(frozen=True)
class Output:
    probabilities: torch.Tensor  # (classes,), float32, on the CPU
    cam: torch.Tensor | None = None  # Grad-CAM at the last convolution's resolution, when asked for


class ServedModel:
    def __init__(self, predictor: Predictor, runtime: Runtime, max_pixels: int | None = None) -> None:
        self.predictor, self.runtime, self.max_pixels = predictor, runtime, max_pixels
        self.class_names = predictor.labels  # what each output is shown as (its display name, else its folder)
        self.class_folders = predictor.class_names
        self.preprocess = predictor.preprocess
        self.model = prepare_for_inference(predictor.model, runtime.device, runtime.precision)
        self.forward = batched_forward(self.model, runtime)
        self.transform = self.preprocess.eval_transforms()  # resize, centre crop: uint8 Pixels

    @classmethod
    def load(cls, cfg: ServeConfig, observer: Observer) -> ServedModel:
        runtime = resolve_runtime(cfg.device, cfg.no_cuda, cfg.precision, 0)
        predictor = load_predictor(cfg.weights, cfg.pretrained, observer)
        runtime = predictor.runtime(runtime)
        runtime.report(observer)
        return cls(predictor, runtime, cfg.max_pixels or default_max_pixels(DECODE_THREADS))

    @property
    def source(self) -> str:
        return self.predictor.source

    # -- on the decoding threads ----------------------------------------------------------------------------

    def decode(self, data: bytes, explain: bool = False, large_above: int | None = None) -> Sample:
        """An upload's bytes as the model's input, or UnreadableImage saying why not (empty, not an image,
        damaged, a decompression bomb); LargeUpload, from the header, for one of over `large_above` pixels."""
        # One decode: as predict decodes it, or, for Grad-CAM, at a JPEG draft large enough for the picture too.
        image = open_upload(data, draft_size=max(OVERLAY_SIDE, self.preprocess.resize_size) if explain
                            else self.preprocess.resize_size, max_pixels=self.max_pixels, large_above=large_above)
        picture = None
        if explain:
            picture = image.copy()
            picture.thumbnail((OVERLAY_SIDE, OVERLAY_SIDE))
        return Sample(self.transform(image), picture)

    def explanation(self, sample: Sample, output: Output, caption: str) -> str:
        """The Grad-CAM overlay as a PNG data URL, ready for an <img src>."""
        picture, cam = sample.picture, output.cam
        if picture is None or cam is None:
            raise ValueError("Grad-CAM was not asked for this image")
        heat = explain.full_size_cam(cam, picture.width, picture.height, self.preprocess)
        buffer = io.BytesIO()
        explain.overlay(picture, heat, caption).save(buffer, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")

    # -- on the forward thread ------------------------------------------------------------------------------

    def run(self, samples: list[Sample]) -> list[Output]:
        """One forward pass for the samples, with gradients for those that asked for Grad-CAM. The batcher
        gives it batches of one kind (Batcher's `kind`): a Grad-CAM that fails, or its backward pass, never
        holds up or fails a plain request."""
        outputs: dict[int, Output] = {}
        plain = [i for i, sample in enumerate(samples) if sample.picture is None]
        explained = [i for i, sample in enumerate(samples) if sample.picture is not None]
        if plain:
            batch = self._batch([samples[i] for i in plain])
            with torch.inference_mode():
                probabilities = self.forward(batch).float().softmax(1).cpu()
            for row, i in enumerate(plain):
                outputs[i] = Output(probabilities[row])
        if explained:
            cams, logits = explain.grad_cam(self.model, self._batch([samples[i] for i in explained]))
            probabilities = logits.float().softmax(1).cpu()
            for row, i in enumerate(explained):
                outputs[i] = Output(probabilities[row], cams[row].cpu())
        return [outputs[i] for i in range(len(samples))]

    def _batch(self, samples: list[Sample]) -> torch.Tensor:
        return to_device(PixelBatch.stack([s.pixels for s in samples]), self.runtime.device,
                         self.runtime.precision.dtype)

    def warm_up(self, max_batch: int) -> float:
        """A forward pass at batch 1 and at max_batch, and a Grad-CAM at batch 1 where the model has one, so that
        the first callers do not pay for the kernels' first call (oneDNN's and cuDNN's choices are made per
        shape and per pass; the overlay imports its modules and font on its first call: the first Grad-CAM
        stalled every request in the server for 0.3 to 0.45 s). Returns the seconds it took."""
        started = time.perf_counter()
        image = Image.new("RGB", (self.preprocess.resize_size,) * 2, (128, 128, 128))
        sample = Sample(self.transform(image))
        for size in sorted({1, max_batch}):
            self.run([sample] * size)
        if self.predictor.onnx is None:
            explained = Sample(sample.pixels, image)
            self.explanation(explained, self.run([explained])[0], "warm-up")  # and the overlay's first imports
        return time.perf_counter() - started

    # -- records --------------------------------------------------------------------------------------------

    def record(self, output: Output, top_k: int) -> dict[str, Any]:
        """predict --json's record for one image (less its path): label, confidence, top-k."""
        top = output.probabilities.topk(min(top_k, len(self.class_names)))
        return ranked(top.values.tolist(), top.indices.tolist(), self.class_names, self.class_folders)

    def metadata(self) -> dict[str, Any]:
        """What a client needs to know: the classes in output order, and the preprocessing."""
        return {"classes": list(self.class_names), "class_folders": list(self.class_folders),
                **self.preprocess.to_dict(),
                "device": str(self.runtime.device),
                "precision": self.predictor.precision or self.runtime.precision.name,
                "tool_version": __version__}
