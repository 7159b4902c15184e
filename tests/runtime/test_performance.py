"""The fast path: --precision, channels_last, fused optimizers, inference casting, and bf16 accuracy."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from support.helpers import SMALL, TEST_ARCH, TINY, env_without_debug, invoke, one_error_line

from alexnet_cli.errors import ConfigError, DeviceError
from alexnet_cli.models.alexnet import build_model
from alexnet_cli.runtime import precision as devmod
from alexnet_cli.runtime import system
from alexnet_cli.runtime.context import prepare_for_inference, to_device
from alexnet_cli.runtime.precision import Precision, resolve_precision
from alexnet_cli.training import make_optimizer, train_step

CPU = torch.device("cpu")


def test_explicit_precisions_and_their_limits():
    assert resolve_precision("fp32", CPU).name == "fp32"
    assert resolve_precision("bf16", CPU).name == "bf16"
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        resolve_precision("fp16", CPU)
    with pytest.raises(ConfigError, match="unknown precision"):
        resolve_precision("fp8", CPU)


def test_auto_on_a_cpu_uses_bf16_only_where_it_measured_faster(monkeypatch):
    chosen = resolve_precision("auto", CPU, speedup=1.9)
    assert chosen.name == "bf16" and "1.90x" in chosen.reason
    slow = resolve_precision("auto", CPU, speedup=0.54)
    assert slow.name == "fp32" and "native bf16, but it measured 0.54x" in slow.reason
    # Without native bf16 it does not even measure.
    monkeypatch.setattr(devmod, "cpu_native_bf16", lambda: False)
    monkeypatch.setattr(devmod, "measure_cpu_bf16_speedup", lambda: pytest.fail("measured"))
    assert resolve_precision("auto", CPU).reason == "auto: fp32 (this CPU has no native bf16)"
    monkeypatch.setattr(devmod, "cpu_native_bf16", lambda: True)
    monkeypatch.setattr(devmod, "measure_cpu_bf16_speedup", lambda: 1.5)
    assert resolve_precision("auto", CPU).name == "bf16"


def test_the_cpu_measurement_is_remembered_per_machine_and_torch_version(tmp_path, monkeypatch):
    measured = []
    monkeypatch.setattr(devmod, "cpu_native_bf16", lambda: True)
    monkeypatch.setattr(devmod, "measure_cpu_bf16_speedup", lambda: measured.append(1) or 0.54)
    first = resolve_precision("auto", CPU)
    assert first.name == "fp32" and "remembered" not in first.reason and len(measured) == 1
    again = resolve_precision("auto", CPU)  # as the next command would: no new measurement
    path = tmp_path / "user-cache" / devmod.SPEEDUP_FILE
    assert len(measured) == 1 and "0.54x" in again.reason and f"remembered in {path}" in again.reason
    assert "torch " + torch.__version__ in next(iter(json.loads(path.read_text())))
    monkeypatch.setattr(torch, "__version__", "9.9.9")  # another torch measures for itself
    resolve_precision("auto", CPU)
    assert len(measured) == 2 and len(json.loads(path.read_text())) == 2
    path.write_text("{not json")  # a damaged file is measured around, and rewritten
    resolve_precision("auto", CPU)
    assert len(measured) == 3 and json.loads(path.read_text())
    path.unlink()  # the documented way to measure again
    resolve_precision("auto", CPU)
    assert len(measured) == 4


def test_the_user_cache_folder_per_platform(monkeypatch, tmp_path):
    monkeypatch.delenv("ALEXNET_CACHE_DIR")
    monkeypatch.setattr(system.Path, "home", lambda: tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert system.user_cache_dir() == tmp_path / "xdg" / "alexnet-cli"
    monkeypatch.setattr(system.sys, "platform", "darwin")
    assert system.user_cache_dir() == tmp_path / "Library" / "Caches" / "alexnet-cli"
    monkeypatch.setattr(system.sys, "platform", "win32")
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "local"))
    assert system.user_cache_dir() == tmp_path / "local" / "alexnet-cli"


def test_the_cpu_measurement_is_a_real_ratio():
    """A finite, positive ratio of two timings. Not a range of CPUs: bf16 ran 0.036 times as fast as fp32 on a
    2-core AMD EPYC of family 23 (no native bf16), and about 6 times on a Xeon with AMX."""
    import math

    ratio = devmod.measure_cpu_bf16_speedup(rounds=1)
    assert math.isfinite(ratio) and 0 < ratio < 100


@pytest.mark.parametrize("capability, auto", [((7, 5), "fp16"), ((7, 0), "fp16"), ((8, 0), "bf16"), ((9, 0), "bf16")])
def test_auto_on_cuda_uses_bf16_only_with_bf16_units(monkeypatch, capability, auto):
    """torch.cuda.is_bf16_supported() says yes on a T4 (7.5) too, where bf16 is emulated and slower than fp16:
    the compute capability of the chosen GPU decides."""
    cuda = torch.device("cuda", 1)
    asked = []
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: asked.append(device) or capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Some GPU")
    chosen = resolve_precision("auto", cuda)
    assert chosen.name == auto
    assert asked and all(device == cuda for device in asked)  # the chosen GPU, not the current one
    if auto == "fp16":
        major, minor = capability
        with pytest.raises(DeviceError, match=rf"Some GPU \(compute capability {major}.{minor}\) has no bf16"):
            resolve_precision("bf16", cuda)
    else:
        assert resolve_precision("bf16", cuda).name == "bf16"


def test_mps_stays_fp32_and_takes_bf16_only_from_macos_14(monkeypatch):
    mps = torch.device("mps")
    assert resolve_precision("auto", mps).name == "fp32"
    monkeypatch.setattr(torch.backends.mps, "is_macos_or_newer", lambda major, minor: (major, minor) <= (13, 6),
                        raising=False)
    with pytest.raises(DeviceError, match="MPS has bf16 from macOS 14"):
        resolve_precision("bf16", mps)
    monkeypatch.setattr(torch.backends.mps, "is_macos_or_newer", lambda major, minor: True, raising=False)
    assert resolve_precision("bf16", mps).name == "bf16"


def test_training_uses_fused_optimizers_and_keeps_fp32_master_weights_under_bf16():
    model = build_model(TEST_ARCH, num_classes=3).to(memory_format=torch.channels_last)
    assert model.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    for name in ("adam", "sgd"):
        assert make_optimizer(name, model, lr=1e-4, weight_decay=0.0, device=CPU).defaults["fused"] is True
    optimizer = make_optimizer("adam", model, lr=1e-4, weight_decay=0.0, device=CPU)
    images = to_device(torch.randn(4, 3, TINY, TINY), CPU)
    assert images.is_contiguous(memory_format=torch.channels_last)
    before = model.classifier[-1].weight.detach().clone()
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    loss, logits = train_step(model, images, torch.tensor([0, 1, 2, 0]), optimizer, scaler,
                              torch.nn.CrossEntropyLoss(), Precision("bf16", "test"))
    assert torch.isfinite(loss) and logits.dtype == torch.bfloat16  # computed in bf16...
    assert all(p.dtype == torch.float32 for p in model.parameters())  # ...weights stay fp32
    assert not torch.equal(before, model.classifier[-1].weight)


def test_cpu_runs_flush_subnormals_so_decayed_adam_moments_stay_fast():
    """A dead unit's Adam moment decays into subnormals, on which an x86 CPU is many times slower
    (bench/denormals.py); every command's runtime on a CPU flushes them to zero."""
    from alexnet_cli.runtime.context import resolve_runtime

    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU cannot flush subnormals")
    torch.set_flush_denormal(False)
    subnormal = torch.tensor([1e-39])
    assert (subnormal * 1.0).item() != 0.0
    try:
        resolve_runtime("cpu", False, "fp32", 0)
        assert (subnormal * 1.0).item() == 0.0
        moment = torch.full((1000,), 1e-30)
        for _ in range(250):  # what Adam's beta1 does to a moment whose gradient is zero
            moment.mul_(0.9)
        assert moment.abs().max().item() == 0.0  # flushed: 3.6e-42, a subnormal, without it
    finally:
        torch.set_flush_denormal(False)


def test_inference_casts_the_weights_rather_than_autocasting():
    model = prepare_for_inference(build_model(TEST_ARCH, num_classes=2), CPU, Precision("bf16", "test"))
    assert all(p.dtype == torch.bfloat16 for p in model.parameters()) and not model.training
    assert model.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    fp32 = prepare_for_inference(build_model(TEST_ARCH, num_classes=2), CPU, Precision("fp32", "test"))
    assert all(p.dtype == torch.float32 for p in fp32.parameters())


def test_precision_option_is_checked_and_reported(runner, shapes):
    result = invoke(runner, ["train", str(shapes / "train"), "--precision", "fp8"])
    assert result.exit_code == 2 and "unknown precision 'fp8'" in one_error_line(result)
    result = invoke(runner, ["predict", str(shapes / "val"), "--pretrained", "--precision", "fp16", "--device", "cpu"])
    assert result.exit_code == 2 and "fp16 needs a GPU" in one_error_line(result)
    result = invoke(runner, ["train", str(shapes / "train"), "--epochs", "1", *SMALL, "--workers",
                             "0", "--batch-size", "8", "--precision", "bf16", "--output", "run"])
    assert result.exit_code == 0, result.output
    assert "precision: bf16 mixed precision (--precision bf16" in result.output
    evaluated = invoke(runner, ["evaluate", str(shapes / "val"), "--weights", "run/best.pt", "--precision", "bf16",
                                "--workers", "0"])
    assert evaluated.exit_code == 0 and "precision: bf16" in evaluated.output


def _best_accuracy(root: Path, precision: str) -> float:
    """Tiny: two of the demo's textures (stripes, rings), 160 training and 64 validation images each, 4 epochs of
    the suite's small architecture at `precision`: the run's best validation accuracy. Every call trains on the
    same seed and data."""
    from alexnet_cli.config.settings import TrainConfig
    from alexnet_cli.data.sources.synthetic import make_shapes_folder
    from alexnet_cli.observer import SilentObserver
    from alexnet_cli.training import train

    if not (root / "val").is_dir():
        make_shapes_folder(root / "train", ("stripes", "rings"), 160, TINY, seed=0)
        make_shapes_folder(root / "val", ("stripes", "rings"), 64, TINY, seed=1)
    # The suite's small architecture, at its rate (the default 2e-4 is the 58M-parameter alexnet's).
    train(TrainConfig(data=root / "train", val=root / "val", arch=TEST_ARCH, image_size=TINY, epochs=4,
                      batch_size=16, lr=1e-3, workers=0, precision=precision, output=root / precision),
          SilentObserver())
    with open(root / precision / "metrics.csv") as handle:
        return max(float(row["val_acc"]) for row in csv.DictReader(handle))


@pytest.fixture(scope="module")
def textures(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("textures")


@pytest.fixture(scope="module")
def fp32_best(textures) -> float:
    return _best_accuracy(textures, "fp32")


@pytest.mark.whole_machine
def test_fp32_training_learns_the_demo_textures(fp32_best):
    """The fp32 half of the bf16 comparison below (each half a test of its own, so that each stays within the
    suite's budget of one test): it learns the task. Chance is 0.5."""
    assert fp32_best >= 0.95, fp32_best


@pytest.mark.whole_machine
def test_bf16_training_reaches_fp32_accuracy_on_the_demo_data(textures, fp32_best):
    """Both runs use the same seed and data, and both train until they saturate (mid-training, accuracies that
    differ only by rounding drift apart by several points); their best validation accuracies must agree within
    2 points. bench/precision_accuracy.py is the full-size check (the whole demo data set, 8 epochs)."""
    bf16_best = _best_accuracy(textures, "bf16")
    assert min(bf16_best, fp32_best) >= 0.95, (bf16_best, fp32_best)  # both learnt the task: chance is 0.5
    assert abs(bf16_best - fp32_best) <= 0.02, (bf16_best, fp32_best)


@pytest.mark.parametrize("frame", ["crop", "full"])
@pytest.mark.parametrize("cached", [False, True], ids=["from-files", "from-cache"])
def test_the_uint8_path_gives_the_float_paths_batches(shapes, cached, frame):
    """Crops stay uint8 until to_device, which flips, scales and normalises the batch: the same tensors, bit
    for bit, as the float path's per-sample transforms (torchvision's v2.RandomCrop, padded for the whole
    frame), for training (random crops and flips) and evaluation."""
    from alexnet_cli.data import folders as datamod
    from alexnet_cli.data import loading
    from alexnet_cli.data.augment import Augmentation
    from alexnet_cli.data.cache import ImageCache
    from alexnet_cli.data.preprocess import Chain, PixelBatch, Preprocess

    preprocess = Preprocess.for_arch(TINY, 227, frame)
    cache = ImageCache(preprocess, "ram") if cached else None
    images = datamod.load_image_folder(shapes / "train")
    if cache is not None:
        cache.fill([images], strict=True)
    paths, labels = images.paths, images.labels
    flips = 0
    for train in (True, False):
        batches = {}
        for on_device in (False, True):
            crop = Augmentation().train_crop(preprocess, on_device) if train else preprocess.eval_crop(on_device)
            make = Chain(preprocess.decode_transforms(), crop)
            sampler = loading.EpochSampler()
            sampler.set_epoch(list(reversed(range(len(paths)))), augment_seed=7 if train else None)
            dataset = loading.ImageDataset(paths, labels, make, cache=cache, from_cache=crop if cached else None)
            loader = loading.make_loader(dataset, loading.LoaderSettings(batch_size=5), sampler)
            batches[on_device] = [(to_device(b, torch.device("cpu")), b) for b, *_ in loader]
        for (floats, _), (pixels, raw) in zip(batches[False], batches[True]):
            assert isinstance(raw, PixelBatch) and raw.pixels.dtype == torch.uint8
            assert pixels.dtype == torch.float32 and torch.equal(floats, pixels)
            flips += int(raw.flips.sum())
    assert flips > 0  # some images were flipped, so the flip itself was compared


def test_the_torchvision_free_training_crop_refuses_what_torchvisions_refuses():
    """RandomCropPixels, like v2.RandomCrop without pad_if_needed, will not crop more than the padded image holds."""
    from torchvision.transforms import v2

    from alexnet_cli.data.preprocess import RandomCropPixels

    small = torch.zeros(3, 60, 80, dtype=torch.uint8)
    with pytest.raises(ValueError, match="larger than"):
        v2.RandomCrop(67)(small)
    with pytest.raises(ValueError, match=r"Required crop size \(67, 67\) is larger than input image size \(60, 80\)"):
        RandomCropPixels(67)(small)
    assert RandomCropPixels(67, pad=4)(small).shape == (3, 67, 67)  # the padding makes room, as torchvision's


def test_decoding_threads_give_the_batches_of_one_thread_in_order(shapes):
    """evaluate and predict decode on threads: the same batches, in order, a broken file named in its batch;
    a seeded (training) dataset never goes to threads."""
    from alexnet_cli.data import loading
    from alexnet_cli.data.preprocess import Preprocess

    broken = shapes / "train" / "circle" / "broken.png"
    broken.write_bytes(b"not a png")
    paths = sorted(str(p) for p in (shapes / "train").rglob("*.png"))
    transform = Preprocess.for_arch(TINY, 227).eval_transforms()
    runs = {}
    for threads in (0, 2):
        loader = loading.make_loader(loading.ImageDataset(paths, None, transform),
                                     loading.LoaderSettings(batch_size=3, threads=threads))
        assert isinstance(loader, loading.ThreadLoader) == (threads > 0) and len(loader) == 6
        with loader:
            runs[threads] = [(b.pixels if b is not None else None, idx, failed) for b, _, idx, failed in loader]
    for (a, ia, fa), (b, ib, fb) in zip(runs[0], runs[2], strict=True):
        assert ia == ib and fa == fb and (a is None and b is None or torch.equal(a, b))
    assert [f for *_, failed in runs[2] for f in failed][0][0] == paths.index(str(broken))
    seeded = loading.make_loader(loading.ImageDataset(paths, None, transform, augment_seed=1),
                                 loading.LoaderSettings(batch_size=3, threads=2))
    assert not isinstance(seeded, loading.ThreadLoader)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest", "lanczos"])
def test_the_torchvision_free_eval_steps_equal_torchvisions(tmp_path, interpolation):
    """evaluate and predict resize and crop without importing torchvision: the same bits as v2.Resize,
    PILToTensor and CenterCrop, on wide, tall, square, grey, RGBA and too-small images."""
    from PIL import Image
    from torchvision.transforms import v2

    from alexnet_cli.data.preprocess import Preprocess

    preprocess = Preprocess(image_size=67, resize_size=76, interpolation=interpolation)
    reference = v2.Compose([v2.Resize(76, interpolation=v2.InterpolationMode(interpolation), antialias=True),
                            v2.PILToTensor(), v2.CenterCrop(67)])
    generator = torch.Generator().manual_seed(0)
    for size in [(300, 200), (199, 301), (76, 76), (77, 250), (40, 30), (1000, 999)]:
        for mode in ("RGB", "L", "RGBA"):
            data = torch.randint(0, 256, (size[1], size[0], len(mode)), dtype=torch.uint8, generator=generator)
            image = Image.frombytes(mode, size, data.numpy().tobytes())
            decoded = preprocess.decode_transforms()(image)
            assert torch.equal(decoded, v2.Compose(reference.transforms[:2])(image)), (size, mode)
            assert torch.equal(preprocess.eval_transforms()(image).pixels, reference(image)), (size, mode)


def test_predict_and_evaluate_import_no_torchvision(shapes, trained_run):
    """torchvision imports torch._dynamo: about a second that evaluate and predict do not need."""
    import subprocess
    import sys

    code = ("import sys\nfrom alexnet_cli.cli import main\nsys.argv = ['alexnet', *sys.argv[1:]]\n"
            "try:\n    main()\nfinally:\n    print('torchvision' in sys.modules, 'torch._dynamo' in sys.modules)")
    for command in (["predict", str(shapes / "val"), "--weights", "run/best.pt"],
                    ["evaluate", str(shapes / "val"), "--weights", "run/best.pt"]):
        result = subprocess.run([sys.executable, "-c", code, *command], capture_output=True, text=True, check=False,
                                env=env_without_debug())
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip().splitlines()[-1] == "False False", (command, result.stdout[-500:])
