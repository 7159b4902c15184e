"""Issue 16's training recipes: augmentation, mixes, EMA, schedules, class balance, lr-find, TTA, recipes."""

import json
import math
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from support.helpers import ROOT, SMALL, TEST_ARCH, StopAfterEpoch, invoke, sample, sample_pixels

from alexnet_cli.config.vocabulary import AUGMENT_POLICIES as POLICIES
from alexnet_cli.data.augment import Augmentation, batch_mix, class_weights, imbalance_warning, rgb_pca
from alexnet_cli.data.preprocess import Preprocess
from alexnet_cli.observer import SilentObserver


def _image(seed: int, size: int = 40) -> torch.Tensor:
    return torch.randint(0, 256, (3, size, size + 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


AUGMENTATIONS = [Augmentation(policy) for policy in POLICIES] + [
    Augmentation("flip", random_erasing=1.0),
    Augmentation("flip", pca_sigma=0.5, pca_eigval=(0.3, 0.02, 0.01),
                 pca_eigvec=((0.58, -0.7, 0.4), (0.58, 0.0, -0.8), (0.58, 0.7, 0.4))),
]


@pytest.mark.parametrize("augmentation", AUGMENTATIONS, ids=lambda a: a.describe())
def test_each_augmentation_is_deterministic_per_seed_epoch_and_index(augmentation):
    from alexnet_cli.runtime.seeds import epoch_augment_seed

    crop = augmentation.train_crop(Preprocess.for_arch(32, 227))
    image = _image(0)
    epoch1, epoch2 = epoch_augment_seed(1, 1), epoch_augment_seed(1, 2)
    first = sample(crop, image, epoch1, 5)
    torch.rand(7)  # the global stream moves on between the two: it must not matter
    assert torch.equal(first, sample(crop, image, epoch1, 5))
    if augmentation.policy != "none" or augmentation.on_cpu_floats:
        others = [sample(crop, image, seed, index) for seed, index in ((epoch2, 5), (epoch1, 6), (epoch1 + 7, 5))]
        assert any(not torch.equal(first, other) for other in others), "the draws ignore the seed"


@pytest.mark.parametrize("augmentation", [Augmentation(policy) for policy in POLICIES] + [
    Augmentation("flip", random_erasing=0.5), Augmentation("trivial", random_erasing=1.0),
    Augmentation("none", random_erasing=0.5)], ids=lambda a: a.describe())
def test_the_uint8_and_float_paths_agree(augmentation):
    """A batch made on the device (flips and erasing boxes per image) equals the float path's samples."""
    from alexnet_cli.data.preprocess import PixelBatch

    preprocess = Preprocess.for_arch(32, 227)
    on_device = augmentation.train_crop(preprocess, on_device=True)
    on_cpu = augmentation.train_crop(preprocess, on_device=False)
    samples = [sample_pixels(on_device, _image(index), 11, index) for index in range(8)]
    assert all(s.pixels.dtype == torch.uint8 for s in samples)
    batch = PixelBatch.stack(samples).to_model(torch.device("cpu"))
    floats = torch.stack([sample(on_cpu, _image(index), 11, index) for index in range(8)])
    assert torch.equal(batch.contiguous(), floats)
    erased = [s.erase is not None for s in samples]
    if augmentation.random_erasing:  # some images erased, and some not when p < 1
        assert any(erased) and (augmentation.random_erasing == 1 or not all(erased))
        assert (floats == 0).flatten(1).sum(1).max() > 50  # a box, not a stray pixel at the mean
    else:
        assert not any(erased)


def test_only_pca_lighting_takes_the_float_path():
    assert Augmentation("flip", pca_sigma=0.1).on_cpu_floats
    assert not Augmentation("flip", random_erasing=0.2).on_cpu_floats
    assert not Augmentation("trivial").on_cpu_floats


def test_pca_lighting_statistics_match_numpy():
    images = [_image(seed, size=9) for seed in range(4)]
    eigval, eigvec = rgb_pca(images)
    pixels = np.concatenate([im.numpy().reshape(3, -1) for im in images], axis=1).astype(np.float64) / 255
    values, vectors = np.linalg.eigh(np.cov(pixels))
    order = np.argsort(values)[::-1]
    np.testing.assert_allclose(eigval, values[order], rtol=1e-9, atol=1e-12)
    for i in range(3):  # eigenvectors are defined up to their sign
        ours, theirs = np.array(eigvec)[:, i], vectors[:, order[i]]
        assert min(np.abs(ours - theirs).max(), np.abs(ours + theirs).max()) < 1e-9


def test_pca_lighting_adds_one_colour_per_image_along_the_eigenvectors():
    from alexnet_cli.data.augment import PCALighting

    eigvec = ((0.6, 0.8, 0.0), (0.8, -0.6, 0.0), (0.0, 0.0, 1.0))
    lighting = PCALighting(0.1, (0.5, 0.0, 0.0), eigvec)
    torch.manual_seed(3)
    out = lighting(torch.zeros(3, 4, 4))
    torch.manual_seed(3)
    alpha = torch.randn(3) * 0.1
    expected = torch.tensor([0.6, 0.8, 0.0]) * alpha[0] * 0.5
    assert torch.allclose(out[:, 0, 0], expected) and torch.equal(out[:, 0, 0], out[:, 3, 2])


@pytest.mark.parametrize("mixup,cutmix", [(0.2, 0.0), (0.0, 1.0), (0.4, 1.0)])
def test_mixup_and_cutmix_targets_sum_to_one(mixup, cutmix):
    mix = batch_mix(mixup, cutmix, num_classes=5)
    torch.manual_seed(0)
    images, labels = torch.rand(8, 3, 16, 16), torch.randint(0, 5, (8,))
    for _ in range(5):
        mixed, targets = mix(images, labels)
        assert mixed.shape == images.shape and targets.shape == (8, 5)
        assert torch.allclose(targets.sum(1), torch.ones(8))
        assert (targets >= 0).all()
    assert batch_mix(0.0, 0.0, 5) is None


def test_class_weights_follow_the_formula_and_the_imbalance_warning():
    counts = [100, 25, 10]
    for power in (0.0, 0.5, 1.0):
        expected = [(135 / (3 * n)) ** power for n in counts]
        assert class_weights(counts, power) == pytest.approx(expected)
    weighted = [w * n for w, n in zip(class_weights(counts, 1.0), counts)]
    assert weighted == pytest.approx([45.0] * 3)  # power 1: every class weighs the same in the loss
    assert imbalance_warning({"a": 100, "b": 30}) is not None
    assert "--class-weights auto" in imbalance_warning({"a": 100, "b": 30})
    assert imbalance_warning({"a": 90, "b": 30}) is None


def test_the_warm_up_composes_with_step_and_cosine():
    from alexnet_cli.training.state import WARMUP_START, lr_factor

    common = dict(epochs=6, steps_per_epoch=10, warmup_epochs=2)
    assert lr_factor(0, scheduler="none", **common) == pytest.approx(WARMUP_START)
    assert lr_factor(10, scheduler="none", **common) == pytest.approx((1 + WARMUP_START) / 2)
    assert lr_factor(20, scheduler="none", **common) == 1.0
    assert lr_factor(20, scheduler="cosine", **common) == pytest.approx(1.0)
    assert lr_factor(40, scheduler="cosine", **common) == pytest.approx(0.5)
    assert lr_factor(60, scheduler="cosine", **common) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(25, scheduler="step", **common) == pytest.approx(0.1)  # epoch 2 of 6: the first tenth
    assert lr_factor(5, scheduler="step", **common) == pytest.approx(WARMUP_START + (1 - WARMUP_START) * 0.25)


def test_ema_equals_a_hand_computed_average():
    from alexnet_cli.training.state import make_ema

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ema = make_ema(model, 0.9, optimizer)
    expected = [p.detach().clone() for p in model.parameters()]
    first = True
    for step in range(4):
        optimizer.zero_grad()
        model(torch.full((1, 3), float(step))).sum().backward()
        optimizer.step()
        now = [p.detach() for p in model.parameters()]
        expected = [n.clone() if first else 0.9 * e + 0.1 * n for e, n in zip(expected, now)]
        first = False
    for averaged, value in zip(ema.module.parameters(), expected):
        assert torch.allclose(averaged, value, atol=1e-7)
    assert int(ema.n_averaged) == 4


@pytest.mark.skipif(not hasattr(signal, "SIGTERM"), reason="needs SIGTERM")
def test_resume_mid_epoch_is_exact_with_every_recipe_feature(shapes, tmp_path):
    """EMA, warm-up + cosine stepped per iteration, the balanced sampler, mixup/cutmix, TrivialAugment,
    random erasing and PCA lighting: a run stopped inside epoch 2 and resumed ends bit for bit as a straight one."""
    from alexnet_cli.config.settings import TrainConfig
    from alexnet_cli.training import TrainingInterrupted, fit

    settings = dict(data=shapes / "train", epochs=3, arch=TEST_ARCH, image_size=67, batch_size=4, workers=0,
                    optimizer="adamw", lr=1e-4, scheduler="cosine", warmup_epochs=1, ema=0.9, balanced_sampler=True,
                    mixup=0.4, cutmix=1.0, augment="trivial", random_erasing=0.5, pca_lighting=0.1,
                    class_weights="auto")
    fit(TrainConfig(**settings, output=tmp_path / "straight"), SilentObserver())
    with pytest.raises(TrainingInterrupted):
        fit(TrainConfig(**settings, output=tmp_path / "stopped"), StopAfterEpoch())
    partial = torch.load(tmp_path / "stopped" / "last.pt", weights_only=True)
    assert partial["partial"]["epoch"] == 2 and partial["partial"]["iteration"] == 1
    fit(TrainConfig(resume=tmp_path / "stopped" / "last.pt", workers=0), SilentObserver())
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "stopped" / "last.pt", weights_only=True)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key  # the average
        assert torch.equal(a["ema"]["weights"][key], b["ema"]["weights"][key]), key  # the trained weights
    assert a["ema"]["n_averaged"] == b["ema"]["n_averaged"] == 3 * 4
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 12
    assert a["metrics"] == {**b["metrics"], "epoch_seconds": a["metrics"]["epoch_seconds"],
                            "images_per_second": a["metrics"]["images_per_second"]}
    assert not any(torch.equal(a["model"][k], a["ema"]["weights"][k]) for k in a["model"])
    config = json.loads((tmp_path / "straight" / "config.json").read_text())
    assert len(config["pca_eigval"]) == 3 and config["pca_lighting"] == 0.1  # stored with the run


def test_the_balanced_sampler_draws_each_class_equally_and_the_same_on_resume():
    from alexnet_cli.config.settings import TrainConfig
    from alexnet_cli.runtime.distributed import Dist
    from alexnet_cli.training.setup import epoch_order

    labels = [0] * 90 + [1] * 10
    cfg = TrainConfig(data=Path("x"), balanced_sampler=True, seed=3)
    single = Dist()
    order = epoch_order(cfg, labels, 1, single)
    assert order == epoch_order(cfg, labels, 1, single)  # (seed, epoch) alone decide it
    assert order != epoch_order(cfg, labels, 2, single)
    minority = sum(labels[i] for i in order)
    assert len(order) == 100 and 35 <= minority <= 65
    ranks = [epoch_order(cfg, labels, 1, Dist(world_size=2, rank=r)) for r in (0, 1)]
    assert [i for pair in zip(*ranks) for i in pair] == order  # two ranks share out the one draw


def test_lr_find_leaves_the_model_alone_and_suggests_a_rate_in_its_range(runner, shapes):
    result = invoke(runner, ["lr-find", str(shapes / "train"), "--steps", "12", "--start", "1e-6", "--end", "1",
                             *SMALL, "--batch-size", "4"])
    assert result.exit_code == 0, result.output
    assert "suggested --lr" in result.stderr and "LR range test" in result.stdout + result.stderr
    suggested = float(result.stderr.split("suggested --lr ")[1].split()[0])
    assert 1e-6 <= suggested <= 1


def test_find_lr_restores_model_optimizer_and_random_streams(shapes):
    from alexnet_cli.config.settings import TrainConfig
    from alexnet_cli.runtime.context import resolve_runtime
    from alexnet_cli.runtime.distributed import SINGLE
    from alexnet_cli.training import steps_per_epoch
    from alexnet_cli.training.lrfind import find_lr
    from alexnet_cli.training.setup import list_folders, prepare_data
    from alexnet_cli.training.state import TrainingParts

    cfg = TrainConfig(data=shapes / "train", arch=TEST_ARCH, image_size=67, batch_size=4, workers=0,
                      scheduler="cosine", ema=0.9)
    runtime = resolve_runtime("cpu", False, "fp32", 0)
    data = prepare_data(cfg, list_folders(cfg, None, SINGLE, SilentObserver()), None, SINGLE, SilentObserver())
    parts = TrainingParts.build(cfg, 2, runtime, 2, SINGLE,
                                steps_per_epoch(len(data.train), 4, SINGLE))
    before = {k: v.clone() for k, v in parts.model.state_dict().items()}
    optimizer_before = parts.optimizer.state_dict()
    stream = torch.get_rng_state()
    result = find_lr(parts, data, runtime, cfg, SilentObserver(), steps=10, start=1e-5, end=0.1)
    assert all(torch.equal(before[k], v) for k, v in parts.model.state_dict().items())
    assert parts.optimizer.state_dict()["state"] == optimizer_before["state"] == {}
    assert torch.equal(torch.get_rng_state(), stream)
    assert int(parts.ema.n_averaged) == 0 and parts.scheduler.last_epoch == 0
    assert 1e-5 <= result.suggestion <= 0.1 and len(result.lrs) == len(result.losses) <= 10
    assert result.lrs[0] == pytest.approx(1e-5) and all(a < b for a, b in zip(result.lrs, result.lrs[1:]))


def test_ten_crop_tta_equals_the_average_of_the_ten_crops(tmp_path):
    from PIL import Image
    from torchvision.transforms import v2

    from alexnet_cli.inference.tta import TenCrops, eval_transforms, forward
    from alexnet_cli.models.alexnet import build_model

    preprocess = Preprocess.for_arch(67, 227)
    Image.fromarray(_image(4, 90).permute(1, 2, 0).numpy()).save(tmp_path / "a.png")
    from alexnet_cli.data.images import open_image

    crops = eval_transforms(preprocess, "ten-crop")(open_image(tmp_path / "a.png"))
    assert crops.shape == (10, 3, 67, 67) and isinstance(eval_transforms(preprocess, "ten-crop").steps[1], TenCrops)
    model = build_model(TEST_ARCH, num_classes=4).eval()
    resized = preprocess.decode_transforms()(open_image(tmp_path / "a.png"))
    manual = []
    for crop in v2.TenCrop(67)(resized):
        view = v2.Normalize(preprocess.mean, preprocess.std)(crop.float() / 255)
        manual.append(model(view[None]).softmax(1))
    with torch.no_grad():
        ours = forward(model, crops[None], torch.device("cpu"), None, "ten-crop").exp()
        expected = torch.cat(manual).mean(0, keepdim=True)
    assert torch.allclose(ours, expected, atol=1e-6)
    with torch.no_grad():
        single = crops[:1]
        flip = forward(model, single, torch.device("cpu"), None, "flip").exp()
        both = (model(single).softmax(1) + model(single.flip(-1)).softmax(1)) / 2
    assert torch.allclose(flip, both, atol=1e-6)


def test_evaluate_and_predict_take_tta(runner, shapes, trained_run):
    plain = invoke(runner, ["evaluate", str(shapes / "val"), "--weights", "run/best.pt", "--json", "--workers", "0"])
    for mode in ("flip", "ten-crop"):
        result = invoke(runner, ["evaluate", str(shapes / "val"), "--weights", "run/best.pt", "--json",
                                 "--workers", "0", "--tta", mode])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["images"] == 6
        assert json.loads(result.stdout)["loss"] != json.loads(plain.stdout)["loss"]
        predicted = invoke(runner, ["predict", str(shapes / "val"), "--weights", "run/best.pt", "--json",
                                    "--tta", mode])
        assert predicted.exit_code == 0, predicted.output
        rows = json.loads(predicted.stdout)
        assert len(rows) == 6 and all(math.isclose(sum(r["probability"] for r in row["top_k"]), 1, rel_tol=1e-4)
                                      for row in rows)
    bad = invoke(runner, ["evaluate", str(shapes / "val"), "--tta", "five-crop"])
    assert bad.exit_code == 2 and "unknown --tta 'five-crop'" in bad.stderr


def test_each_recipe_expands_as_documented_and_flags_override(runner, shapes):
    from alexnet_cli.config.recipes import RECIPES

    docs = (ROOT / "docs" / "training.md").read_text()
    for name, settings in RECIPES.items():
        result = invoke(runner, ["train", str(shapes / "train"), "--recipe", name, "--epochs", "1", "--output",
                                 f"run-{name}", *SMALL, "--batch-size", "8", "--workers", "0",
                                 "--lr", "2e-5", "--warmup-epochs", "0"])
        assert result.exit_code == 0, result.output
        config = json.loads(Path(f"run-{name}/config.json").read_text())
        assert config["recipe"] == name
        for key, value in settings.items():
            if key not in ("epochs", "batch_size", "lr", "warmup_epochs"):
                assert config[key] == value, (name, key)
        assert config["epochs"] == 1 and config["batch_size"] == 8 and config["lr"] == 2e-5  # the flags won
        assert config["warmup_epochs"] == 0
        line = next(line for line in result.stderr.splitlines() if line.startswith(f"recipe {name}:"))
        assert "--lr" not in line and "--epochs" not in line and "--batch-size" not in line
        assert f"`{name}`" in docs
    unknown = invoke(runner, ["train", str(shapes / "train"), "--recipe", "fancy"])
    assert unknown.exit_code == 2 and "unknown --recipe 'fancy'" in unknown.stderr


def test_bad_recipe_options_are_one_line_errors(runner, shapes):
    for args, message in (
        (["--augment", "cutout"], "unknown --augment 'cutout'"),
        (["--random-erasing", "1.5"], "--random-erasing is a probability"),
        (["--ema", "1"], "--ema is a decay in [0, 1)"),
        (["--class-weights", "heavy"], "--class-weights is auto, none or a power"),
        (["--warmup-epochs", "3", "--epochs", "2"], "--warmup-epochs 3 leaves no epoch"),
        (["--lr", "fast"], "--lr is a number such as 3e-4, or find"),
        (["--mixup", "-1"], "--mixup must be 0 or more"),
    ):
        result = invoke(runner, ["train", str(shapes / "train"), *args])
        assert result.exit_code == 2, (args, result.output)
        assert message in result.stderr and "Traceback" not in result.output, args
