"""Each command's settings as a frozen dataclass, validated once at the CLI edge and passed explicitly.

Defaults live here, typed and documented, and nowhere else: the CLI options read them from these classes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from alexnet_cli.config.vocabulary import (
    AUGMENT_POLICIES,
    CACHE_MODES,
    OPTIMIZERS,
    SCHEDULERS,
    check_choice,
    check_device_name,
    check_precision_name,
    check_tta,
)
from alexnet_cli.errors import ConfigError
from alexnet_cli.models.registry import FRAMES, arch_info, check_image_size

# The original script's Adam at lr 1e-3 leaves a from-scratch AlexNet (no batch norm) stuck at chance on
# our data: the first large updates drive the ReLUs dead. 1e-4 learns at batch 32; at the default batch of 64,
# 2e-4 (the same rate per image) measured best on Fashion-MNIST: docs/training.md has the runs.
DEFAULT_LR = {"adam": 2e-4, "adamw": 2e-4, "sgd": 0.01}
# SGD follows the paper: momentum 0.9, weight decay 5e-4. Adam keeps the original's none; AdamW decouples its
# decay from the gradient, at torch's default 0.01.
DEFAULT_WEIGHT_DECAY = {"adam": 0.0, "adamw": 0.01, "sgd": 5e-4}
SGD_MOMENTUM = 0.9
# Batch 64 for 20 epochs rather than the original's 32 for 10: on a CPU a step's fixed cost (the update of 58M
# parameters) dominates at small images, so a larger batch trains more images per second, and the model was
# still learning at epoch 10 (docs/training.md, "Defaults measured on real data").
DEFAULT_EPOCHS = 20


def _positive(name: str, value: int | float) -> None:
    if value <= 0:
        raise ConfigError(f"{name} must be positive, got {value}")


def _check_runtime(device: str, no_cuda: bool, workers: int | None, precision: str = "auto") -> None:
    """The options every data-loading command shares: where it runs, in what precision, with how many loaders."""
    check_precision_name(precision)
    if workers is not None and workers < 0:
        raise ConfigError(f"--workers must be 0 or more, got {workers}")
    check_device_name(device)
    if no_cuda and device.startswith("cuda"):
        raise ConfigError(f"--no-cuda contradicts --device {device}: drop one of them")


def class_weight_power(value: str) -> float:
    """--class-weights as the power of the inverse class frequency: 0 for none, 1 for auto, else the power."""
    if value in ("none", "auto"):
        return float(value == "auto")
    try:
        power = float(value)
    except ValueError:
        raise ConfigError(f"--class-weights is auto, none or a power such as 0.5; got {value!r}") from None
    if power < 0:
        raise ConfigError(f"--class-weights power must be 0 or more, got {power}")
    return power


@dataclass(frozen=True)
class SummaryConfig:
    arch: str = "alexnet"
    num_classes: int = 2
    image_size: int | None = None  # None: the architecture's native size
    weights: Path | None = None
    pretrained: bool = False

    def __post_init__(self) -> None:
        arch_info(self.arch)
        _positive("--num-classes", self.num_classes)
        if self.image_size is not None:
            check_image_size(self.arch, self.image_size)
        if self.weights is not None and self.pretrained:
            raise ConfigError("give --weights or --pretrained, not both")


# What `--resume` takes from the command line: the data, --epochs, the run folder, and where and how it runs
# now. Every other setting is the run's own (config.json), and a resume names those it ignores.
RESUME_TAKES = ("data", "resume", "epochs", "output", "device", "no_cuda", "precision", "workers", "log_interval",
                "cache")


@dataclass(frozen=True)
class TrainConfig:
    data: Path | None = None  # None only with --resume: the data the run was trained on
    val: Path | None = None
    val_split: float | None = None  # None: a sibling val/ folder if there is one, else 0.1
    arch: str = "alexnet"
    image_size: int | None = None
    frame: str | None = None  # registry.FRAMES; None: full for small images, else crop (models.auto_frame)
    batch_size: int = 64  # see DEFAULT_EPOCHS
    epochs: int | None = None  # None: DEFAULT_EPOCHS, or the resumed run's own count
    lr: float | None = None  # None: DEFAULT_LR for the optimizer
    optimizer: str = "adam"
    weight_decay: float | None = None  # None: DEFAULT_WEIGHT_DECAY for the optimizer
    scheduler: str = "cosine"  # chosen on Fashion-MNIST: docs/training.md, "Defaults measured on real data"
    label_smoothing: float = 0.0
    dropout: float = 0.5
    patience: int | None = None  # stop after this many epochs without a better validation accuracy
    workers: int | None = None  # None: loading.default_workers()
    device: str = "auto"
    no_cuda: bool = False
    precision: str = "auto"  # auto|fp32|bf16|fp16: see device.resolve_precision
    seed: int = 1
    log_interval: int = 1
    output: Path | None = None  # None: a fresh runs/train-N
    resume: Path | None = None
    pretrained: bool = False  # start from torchvision's ImageNet weights, with a new classifier head
    freeze_features: bool = False  # with pretrained: train the classifier only
    strict: bool = False  # any unreadable or skipped file is an error instead of a warning
    tensorboard: bool = False  # log to RUN_DIR/tensorboard (the tensorboard extra)
    cache: str = "auto"  # auto|ram|off: keep the decoded images in memory (cache.ImageCache)
    augment: str = "flip"  # vocabulary.AUGMENT_POLICIES
    random_erasing: float = 0.0
    pca_lighting: float = 0.0  # sigma of the paper's colour augmentation; 0: off
    mixup: float = 0.0  # alpha; 0: off
    cutmix: float = 0.0
    ema: float = 0.0  # decay of the weights' moving average; 0: off
    warmup_epochs: int = 0
    class_weights: str = "none"  # none, auto (power 1) or a power
    balanced_sampler: bool = False
    lr_find: bool = False  # --lr find: run the LR range test first and train at its suggestion
    recipe: str | None = None  # recipes.RECIPES: what it expanded to is in the other fields
    class_names_file: Path | None = None  # --class-names FILE; None: class_names.json beside the data, if any

    def __post_init__(self) -> None:
        arch_info(self.arch)
        check_choice("--augment", self.augment, AUGMENT_POLICIES)
        for name in ("random_erasing",):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"--random-erasing is a probability in [0, 1], got {self.random_erasing}")
        for name in ("pca_lighting", "mixup", "cutmix", "warmup_epochs"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(self, name)}")
        if not 0.0 <= self.ema < 1.0:
            raise ConfigError(f"--ema is a decay in [0, 1), such as 0.999; got {self.ema}")
        class_weight_power(self.class_weights)
        epochs = self.epochs or DEFAULT_EPOCHS
        if self.warmup_epochs and epochs > 0 and self.warmup_epochs >= epochs:
            raise ConfigError(f"--warmup-epochs {self.warmup_epochs} leaves no epoch after the warm-up "
                              f"(--epochs {epochs})")
        check_choice("--cache", self.cache, CACHE_MODES)
        if self.pretrained and self.arch != "alexnet-torchvision":
            raise ConfigError(
                f"--pretrained needs --arch alexnet-torchvision (the variant with ImageNet weights), not {self.arch}"
            )
        if self.freeze_features and not self.pretrained:
            raise ConfigError("--freeze-features keeps the ImageNet features fixed: use it with --pretrained")
        if self.image_size is not None:
            check_image_size(self.arch, self.image_size)
        if self.frame is not None and self.frame not in FRAMES:
            raise ConfigError(f"unknown --frame {self.frame!r}: choose {' or '.join(FRAMES)}")
        _positive("--batch-size", self.batch_size)
        if self.epochs is not None:
            _positive("--epochs", self.epochs)
        _positive("--log-interval", self.log_interval)
        if self.lr is not None:
            _positive("--lr", self.lr)
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}: choose {' or '.join(OPTIMIZERS)}")
        check_choice("scheduler", self.scheduler, SCHEDULERS)
        if self.weight_decay is not None and self.weight_decay < 0:
            raise ConfigError(f"--weight-decay must be 0 or more, got {self.weight_decay}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"--dropout must be in [0, 1), got {self.dropout}")
        if self.val_split is not None and not 0.0 <= self.val_split < 1.0:
            raise ConfigError(f"--val-split must be a fraction in [0, 1), got {self.val_split}")
        if self.val is not None and self.val_split is not None:
            raise ConfigError("give --val or --val-split, not both")
        if self.patience is not None:
            _positive("--patience", self.patience)
        _check_runtime(self.device, self.no_cuda, self.workers, self.precision)

    @property
    def effective_image_size(self) -> int:
        return self.image_size or arch_info(self.arch).default_image_size

    @property
    def effective_lr(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.optimizer]

    @property
    def effective_weight_decay(self) -> float:
        return self.weight_decay if self.weight_decay is not None else DEFAULT_WEIGHT_DECAY[self.optimizer]

    @property
    def class_weight_power(self) -> float:
        """0 for none, 1 for auto, else the power given."""
        return class_weight_power(self.class_weights)

    def to_dict(self) -> dict[str, Any]:
        """Plain values only (paths as strings with `/`, which every OS reads back), with the defaults
        resolved: what config.json records."""
        data = {k: (v.as_posix() if isinstance(v, Path) else v) for k, v in asdict(self).items()}
        data.update(
            image_size=self.effective_image_size, frame=self.frame or "crop", lr=self.effective_lr,
            weight_decay=self.effective_weight_decay,
        )
        return data


@dataclass(frozen=True)
class EvaluateConfig:
    data: Path | None  # None: the images `run` validated on
    weights: Path | None = None  # None: run/best.pt, else the newest runs/*/best.pt
    batch_size: int = 32
    workers: int | None = None
    device: str = "auto"
    no_cuda: bool = False
    precision: str = "auto"
    top_k: int = 5
    strict: bool = False
    save_errors: Path | None = None  # link the misclassified images into DIR/<true>__as__<pred>/
    tta: str = "none"  # vocabulary.TTA_MODES
    run: Path | None = None  # a run folder: its best.pt, and without DATA the images it validated on
    pretrained: bool = False  # torchvision's ImageNet weights, on DATA's WordNet-ID folders

    def __post_init__(self) -> None:
        check_tta(self.tta)
        if self.pretrained and (self.weights is not None or self.run is not None or self.data is None):
            raise ConfigError("--pretrained evaluates torchvision's ImageNet weights on a folder: alexnet evaluate "
                              "DATA --pretrained, without --weights or --run")
        if self.data is None and self.run is None:
            raise ConfigError("give the folder to evaluate on, alexnet evaluate DATA, or a run folder, "
                              "alexnet evaluate --run runs/NAME (the images it held out)")
        if self.run is not None and self.weights is not None:
            raise ConfigError("give --run or --weights, not both: --run evaluates the run's best.pt")
        _positive("--batch-size", self.batch_size)
        _positive("--top-k", self.top_k)
        _check_runtime(self.device, self.no_cuda, self.workers, self.precision)


@dataclass(frozen=True)
class PredictConfig:
    inputs: tuple[str, ...]
    weights: Path | None = None  # None: the newest runs/*/best.pt, unless pretrained
    pretrained: bool = False
    top_k: int = 5
    batch_size: int = 32
    workers: int | None = None
    device: str = "auto"
    no_cuda: bool = False
    precision: str = "auto"
    strict: bool = False
    explain: Path | None = None  # write a Grad-CAM overlay per image into this folder
    tta: str = "none"  # vocabulary.TTA_MODES

    def __post_init__(self) -> None:
        check_tta(self.tta)
        if self.explain is not None and self.tta != "none":
            raise ConfigError("--explain shows one view of each image: drop --tta")
        if not self.inputs:
            raise ConfigError("give at least one image, folder or glob to predict")
        if self.weights is not None and self.pretrained:
            raise ConfigError("give --weights or --pretrained, not both")
        _positive("--top-k", self.top_k)
        _positive("--batch-size", self.batch_size)
        _check_runtime(self.device, self.no_cuda, self.workers, self.precision)


@dataclass(frozen=True)
class ServeConfig:
    """`alexnet serve`: one model behind HTTP (docs/serve.md)."""

    weights: Path | None = None  # None: the newest runs/*/best.pt, unless pretrained
    pretrained: bool = False
    name: str = "alexnet"  # the model's name in the Open Inference Protocol's paths: /v2/models/{name}
    host: str = "127.0.0.1"  # only this machine; exposing it takes an explicit --host 0.0.0.0
    port: int = 8000  # 0: any free port, said at start
    # Dynamic batching: a forward pass takes up to max_batch images, and waits at most max_wait_ms after the
    # first for more, and only while more are already on their way (being read or decoded).
    max_batch: int = 32
    max_wait_ms: float = 5.0
    # Images admitted and not yet answered; past it a request is refused at once with 503 and Retry-After. Two
    # batches: one in the forward pass, the next one gathering.
    max_queue: int = 64
    max_upload_mb: float = 20.0
    top_k: int = 5  # what /predict lists when the request gives no ?top_k=
    device: str = "auto"
    no_cuda: bool = False
    precision: str = "auto"
    # After SIGTERM, how long requests in flight get to be answered: under Kubernetes' default grace period
    # of 30 s, so that the server exits on its own before it is killed.
    drain_seconds: float = 20.0
    # The pixels an upload may decode to (a JPEG's after its draft), checked from its header. None: what a
    # quarter of the available memory holds for every decoding thread at once, at 24 bytes a pixel at the
    # peak of a decode (an RGBA PNG's, measured), and at most MAX_PIXELS.
    max_pixels: int | None = None
    max_connections: int = 256  # open connections; past it, the one waited for longest makes room (server.py)
    docs: bool = False  # the OpenAPI page at /docs, off unless asked for
    timeout: float = 30.0  # the longest a request may take once its body has arrived; past it, 504
    api_key: str | None = None  # a bearer token every request but health and metrics must carry
    cors_origins: tuple[str, ...] = ()  # origins a browser may call it from (--cors-origin)
    quiet: bool = False  # no access log line per request
    head_timeout: float = 10.0  # the longest a request head may take to arrive; past it, the connection closes
    body_timeout: float = 30.0  # the longest a body may take to arrive; past it, 408
    # Refusals (4xx) a second answered at once, past a burst of 2 s' worth; past it they wait their turn, so
    # that a client looping on bad requests cannot take the CPU from good ones. 0: every refusal at once.
    refusal_rate: float = 20.0

    def __post_init__(self) -> None:
        if self.weights is not None and self.pretrained:
            raise ConfigError("give --weights or --pretrained, not both")
        if not self.name or not all(c.isalnum() or c in "-_." for c in self.name):
            raise ConfigError(f"--name is letters, digits, '-', '_' and '.', got {self.name!r}")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port is 0 to 65535, got {self.port}")
        for option, value in (("--max-batch", self.max_batch), ("--max-queue", self.max_queue),
                              ("--max-upload-mb", self.max_upload_mb), ("--top-k", self.top_k),
                              ("--max-connections", self.max_connections), ("--timeout", self.timeout),
                              ("--max-pixels", self.max_pixels or 1), ("--drain-seconds", self.drain_seconds),
                              ("--head-timeout", self.head_timeout), ("--body-timeout", self.body_timeout)):
            _positive(option, value)
        if self.max_wait_ms < 0:
            raise ConfigError(f"--max-wait-ms must be 0 or more, got {self.max_wait_ms}")
        if self.refusal_rate < 0:
            raise ConfigError(f"--refusal-rate must be 0 (off) or more, got {self.refusal_rate}")
        if self.api_key is not None and len(self.api_key) < 16:
            raise ConfigError("--api-key is at least 16 characters (a token such as `python3 -c 'import secrets; "
                              "print(secrets.token_urlsafe())'`)")
        for origin in self.cors_origins:
            if origin != "*" and not origin.startswith(("http://", "https://")):
                raise ConfigError(f"--cors-origin is an origin such as https://example.org, got {origin!r}")
        if self.max_queue < self.max_batch:
            raise ConfigError(f"--max-queue ({self.max_queue}) must hold at least one batch (--max-batch "
                              f"{self.max_batch})")
        _check_runtime(self.device, self.no_cuda, None, self.precision)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


@dataclass(frozen=True)
class DemoConfig:
    """`alexnet demo`: its data set of four textures, and the run it makes on it."""

    folder: Path = Path("alexnet-demo")
    per_class: int = 300  # training images per class when the data set is made
    val_per_class: int = 75
    # The smallest input the default alexnet takes (docs/architecture.md): the demo's 8 epochs of 1,200 images
    # reach 90%+ validation accuracy in about 2 minutes on a 2-core CPU (docs/getting-started.md).
    image_size: int = 67
    epochs: int = 8
