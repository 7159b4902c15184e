"""The AlexNet family: pure architecture, plus one typed builder that touches weights and the class count.

Three variants share one module layout (`features`, `avgpool`, `flatten`, `classifier`), so that the
summary, the checkpoint and the training loop treat them alike:

- ``alexnet``: the original write-up's single-tower network (227x227 input, 96-256-384-384-256).
- ``alexnet-paper``: Krizhevsky et al. 2012, with local response normalisation and the two-GPU grouping.
- ``alexnet-torchvision``: the "one weird trick" layout (64-192-384-256-256, 224x224 input), key-for-key
  compatible with ``torchvision.models.alexnet`` so that its ImageNet weights load unchanged.

The adaptive pool before the classifier makes every variant accept inputs other than its native size: at
the native size it is a no-op (6x6 in, 6x6 out); above it, it averages down to 6x6; below the minimum
size the last max-pool would have nothing to pool, so the builder refuses such sizes up front.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
import torch.hub
from torch import nn

from alexnet_cli.errors import CheckpointError, ConfigError, first_line
from alexnet_cli.models.registry import ArchInfo, arch_info

# The paper's LRN constants (section 3.3): k=2, n=5, alpha=1e-4, beta=0.75.
LRN_SIZE, LRN_ALPHA, LRN_BETA, LRN_K = 5, 1e-4, 0.75, 2.0


class AlexNet(nn.Module):
    """features -> adaptive 6x6 pool -> flatten (256*6*6 = 9216) -> classifier. Every variant is this class,
    with the layers its ArchInfo describes."""

    def __init__(self, features: nn.Sequential, classifier: nn.Sequential) -> None:
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.flatten = nn.Flatten(1)
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.avgpool(self.features(x))))


def _features(info: ArchInfo) -> nn.Sequential:
    """conv1 11/4, pool, conv2 5 p2, pool, conv3-5 3 p1, pool; ReLU after every conv; optional LRN."""
    c1, c2, c3, c4, c5 = info.widths
    g2, g4, g5 = info.groups

    def norm() -> list[nn.Module]:
        # torch divides alpha by the window size (alpha/n * sum a^2); the paper does not (alpha * sum a^2).
        # Passing n*alpha makes torch compute exactly the paper's formula.
        if not info.lrn:
            return []
        return [nn.LocalResponseNorm(LRN_SIZE, alpha=LRN_SIZE * LRN_ALPHA, beta=LRN_BETA, k=LRN_K)]

    return nn.Sequential(
        nn.Conv2d(3, c1, kernel_size=11, stride=4, padding=info.conv1_padding),
        nn.ReLU(inplace=True),
        *norm(),
        nn.MaxPool2d(kernel_size=3, stride=2),  # overlapping: window 3 > stride 2
        nn.Conv2d(c1, c2, kernel_size=5, padding=2, groups=g2),
        nn.ReLU(inplace=True),
        *norm(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(c2, c3, kernel_size=3, padding=1),  # the paper's conv3 sees both towers
        nn.ReLU(inplace=True),
        nn.Conv2d(c3, c4, kernel_size=3, padding=1, groups=g4),
        nn.ReLU(inplace=True),
        nn.Conv2d(c4, c5, kernel_size=3, padding=1, groups=g5),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
    )


def _classifier(info: ArchInfo, num_classes: int, dropout: float) -> nn.Sequential:
    """FC 9216-4096-4096-N (conv5's 256 channels x 6 x 6 in). The write-up puts dropout after each ReLU;
    torchvision puts it before each Linear."""
    def block(n_in: int, n_out: int) -> list[nn.Module]:
        if info.dropout_first:
            return [nn.Dropout(dropout), nn.Linear(n_in, n_out), nn.ReLU(inplace=True)]
        return [nn.Linear(n_in, n_out), nn.ReLU(inplace=True), nn.Dropout(dropout)]

    flat = info.widths[-1] * 6 * 6  # the adaptive pool's 6x6 output, flattened
    return nn.Sequential(*block(flat, info.hidden), *block(info.hidden, info.hidden),
                         nn.Linear(info.hidden, num_classes))


def _architecture(arch: str, num_classes: int, dropout: float) -> AlexNet:
    info = arch_info(arch)
    return AlexNet(_features(info), _classifier(info, num_classes, dropout))


def pretrained_cache_path() -> str:
    """Where torchvision's weights API caches AlexNet_Weights.IMAGENET1K_V1 (under TORCH_HOME)."""
    from torchvision.models import AlexNet_Weights

    filename = os.path.basename(AlexNet_Weights.IMAGENET1K_V1.url)
    return os.path.join(torch.hub.get_dir(), "checkpoints", filename)


def pretrained_state_dict(progress: bool = True) -> Mapping[str, torch.Tensor]:
    """ImageNet weights through torchvision's API: downloaded and hash-checked once, then read from the cache."""
    from torchvision.models import AlexNet_Weights

    try:
        return AlexNet_Weights.IMAGENET1K_V1.get_state_dict(progress=progress, check_hash=True)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError; a bad hash is a RuntimeError
        raise CheckpointError(
            f"could not get the ImageNet weights ({exc.__class__.__name__}: {exc}); "
            f"put alexnet-owt-7be5be79.pth at {pretrained_cache_path()} or go online once"
        ) from None


def init_weights(model: nn.Module) -> None:
    """From-scratch initialisation: He (fan_out, ReLU) for the convolutions, N(0, 0.01) for the linear layers,
    zero biases -- torchvision's VGG scheme, for the same reason: a deep ReLU net without batch norm.

    PyTorch's default init shrinks the activations at every layer, and a from-scratch AlexNet sat at chance
    loss for the first hundred or more steps on the demo data; with this one it leaves chance within the first
    epoch (docs/architecture.md gives the runs).
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, 0.01)
        if isinstance(module, (nn.Conv2d, nn.Linear)) and module.bias is not None:
            nn.init.zeros_(module.bias)


def build_model(
    arch: str = "alexnet",
    *,
    num_classes: int = 1000,
    dropout: float = 0.5,
    pretrained: bool = False,
    state_dict: Mapping[str, torch.Tensor] | None = None,
    progress: bool = True,
) -> nn.Module:
    """Build one of ARCHITECTURES with ``num_classes`` outputs.

    ``pretrained`` loads torchvision's ImageNet weights (only ``alexnet-torchvision`` has them); with a class
    count other than 1000, the last Linear is replaced by a freshly initialised head. ``state_dict`` loads
    weights the caller already has, such as a checkpoint's, and must match exactly.
    """
    arch_info(arch)
    if num_classes < 1:
        raise ConfigError(f"the number of classes must be at least 1, got {num_classes}")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
    if pretrained and state_dict is not None:
        raise ConfigError("give either pretrained weights or a state_dict, not both")
    if pretrained and arch != "alexnet-torchvision":
        raise ConfigError(f"ImageNet weights exist only for alexnet-torchvision, not {arch}")

    if state_dict is not None:
        return _with_weights(arch, num_classes, dropout, state_dict)
    model = _architecture(arch, 1000 if pretrained else num_classes, dropout)
    if not pretrained:
        init_weights(model)
    if pretrained:
        model.load_state_dict(pretrained_state_dict(progress))
        head = model.classifier[-1]
        if num_classes != 1000 and isinstance(head, nn.Linear):
            model.classifier[-1] = nn.Linear(head.in_features, num_classes)
    return model


def _with_weights(arch: str, num_classes: int, dropout: float, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """The model made on the meta device and given `state_dict`'s tensors as its parameters: no random
    initialisation to overwrite, and no copy (a memory-mapped checkpoint's weights are read as they are used)."""
    with torch.device("meta"):
        model = _architecture(arch, num_classes, dropout)
    try:
        model.load_state_dict(state_dict, assign=True)
    except RuntimeError as exc:
        first = first_line(exc)
        raise CheckpointError(f"the weights do not fit {arch} with {num_classes} classes: {first}") from None
    return model.float()  # a half-precision state_dict computes as the model always has: in fp32

