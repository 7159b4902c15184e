"""Grad-CAM: where in the image the network looked for the class it predicted.

For the predicted class c, Grad-CAM weighs each channel k of the last convolution's activation A^k by the
mean of dy_c/dA^k over the map, sums and keeps the positive part: relu(sum_k mean(dy_c/dA^k) * A^k)
(Selvaraju et al., 2017). It is a short implementation rather than Captum's LayerGradCam: the
computation is these few lines, and Captum would add matplotlib, numpy and tqdm to the install for them.

What it shows: which regions of the model's input raised the predicted class's score, at the resolution of
the last convolution (6x6 cells at 227 pixels, 3x3 at 67), scaled up. What it does not show: fine detail
below that resolution, evidence *against* the class (cut by the relu), or why the features respond there.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import nn

from alexnet_cli.data.preprocess import Preprocess


def target_layer(model):
    """The activation of the last convolution: the ReLU that follows the last Conv2d of model.features."""
    layers = list(model.features)
    last = max(i for i, layer in enumerate(layers) if isinstance(layer, nn.Conv2d))
    follower = layers[last + 1] if last + 1 < len(layers) else None
    return follower if isinstance(follower, nn.ReLU) else layers[last]


def grad_cam(model, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(cams, logits): one map in [0, 1] per image at the last convolution's resolution, for its top class.

    No hooks: the features run in two parts, up to the target layer and after it, so that other threads may
    run the same model meanwhile (serve computes Grad-CAM beside its batches, on the same weights)."""
    layers = list(model.features)
    split = next(i for i, layer in enumerate(layers) if layer is target_layer(model)) + 1
    with torch.enable_grad():
        activation = model.features[:split](images)
        logits = model.classifier(torch.flatten(model.avgpool(model.features[split:](activation)), 1))
        score = logits.gather(1, logits.argmax(1, keepdim=True)).sum()
        (grads,) = torch.autograd.grad(score, activation)
    weights = grads.float().mean(dim=(2, 3), keepdim=True)
    cams = torch.relu((weights * activation.detach().float()).sum(dim=1))
    cams = cams / cams.amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)
    return cams, logits.detach()


def crop_box(width: int, height: int, preprocess: Preprocess) -> tuple[float, float, float, float]:
    """Where the model's input (resize the short side, then centre crop) lies in the original image."""
    short = min(width, height)
    scale = preprocess.resize_size / short
    resized_w = preprocess.resize_size if width == short else int(preprocess.resize_size * width / height)
    resized_h = preprocess.resize_size if height == short else int(preprocess.resize_size * height / width)
    left = int(round((resized_w - preprocess.image_size) / 2.0))
    top = int(round((resized_h - preprocess.image_size) / 2.0))
    size = preprocess.image_size
    return left / scale, top / scale, (left + size) / scale, (top + size) / scale


def full_size_cam(cam: torch.Tensor, width: int, height: int, preprocess: Preprocess) -> torch.Tensor:
    """The map at the original image's size: scaled up into the crop box, zero outside it."""
    x0, y0, x1, y1 = crop_box(width, height, preprocess)
    left, top = max(0, round(x0)), max(0, round(y0))
    right, bottom = min(width, max(left + 1, round(x1))), min(height, max(top + 1, round(y1)))
    scaled = F.interpolate(cam[None, None].float().cpu(), size=(bottom - top, right - left), mode="bilinear",
                           align_corners=False)[0, 0]
    full = torch.zeros(height, width)
    full[top:bottom, left:right] = scaled
    return full.clamp(0, 1)


def _jet(values: torch.Tensor) -> torch.Tensor:
    """A jet-like colour map, (H, W) in [0, 1] -> (3, H, W) in [0, 1]: blue (low) to red (high)."""
    four = 4 * values
    return torch.stack([(1.5 - (four - 3).abs()), (1.5 - (four - 2).abs()), (1.5 - (four - 1).abs())]).clamp(0, 1)


def overlay(image: Image.Image, cam: torch.Tensor, caption: str | None = None) -> Image.Image:
    """The image with the heat map laid over it where the map is high; the same size as the image."""
    from torchvision.transforms.v2 import functional as TF

    base = TF.to_dtype(TF.to_image(image), torch.float32, scale=True)
    alpha = 0.6 * cam.clamp(0, 1)
    blended = base * (1 - alpha) + _jet(cam) * alpha
    result = Image.fromarray((blended.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy(), "RGB")
    if caption and image.width >= 120:
        draw = ImageDraw.Draw(result)
        box = draw.textbbox((4, 4), caption)
        draw.rectangle((box[0] - 3, box[1] - 3, box[2] + 3, box[3] + 3), fill=(0, 0, 0))
        draw.text((4, 4), caption, fill=(255, 255, 255))
    return result


def output_name(folder: Path, source: str, label: str, confidence: float, taken: set[str]) -> Path:
    """<stem>__<label>_<confidence>pct.png, unique within the folder, safe on any filesystem. Names are
    compared casefolded, as macOS and Windows compare them: IMG_1.jpg and img_1.JPG get two files there too."""
    safe = re.sub(r"[^\w.-]+", "-", label).strip("-") or "class"
    base = f"{Path(source).stem}__{safe}_{confidence * 100:.0f}pct"
    name, n = f"{base}.png", 2
    while name.casefold() in taken:
        name, n = f"{base}-{n}.png", n + 1
    taken.add(name.casefold())
    return folder / name
