"""--frame: small images are seen whole (resized to the input, shifted within a black border to train); larger
ones keep the paper's crop. Chosen on Fashion-MNIST: docs/training.md, "The whole frame for small images"."""

import json

import pytest
import torch
from PIL import Image
from support.helpers import FAST_TRAIN, TEST_ARCH, TINY, invoke, sample, sample_pixels

from alexnet_cli.data.augment import Augmentation
from alexnet_cli.data.preprocess import Preprocess
from alexnet_cli.data.sources.synthetic import make_shapes_folder


def _bordered(size: int = 28) -> Image.Image:
    """Black, with a white column one pixel wide at the left edge: what a crop of the border cuts off."""
    image = Image.new("RGB", (size, size))
    image.paste((255, 255, 255), (0, 0, 1, size))
    return image


def test_evaluation_sees_the_border_that_the_crop_cuts_off():
    full, crop = Preprocess.for_arch(131, 227, "full"), Preprocess.for_arch(131, 227)
    assert (full.resize_size, full.pad) == (131, 8) and (crop.resize_size, crop.pad) == (148, 0)
    for on_device in (True, False):
        seen = {}
        for name, preprocess in (("full", full), ("crop", crop)):
            out = preprocess.eval_transforms(on_device)(_bordered())
            pixels = out.pixels if on_device else out
            assert pixels.shape[-2:] == (131, 131)
            seen[name] = pixels[0, :, :3].float().mean()  # the three leftmost columns of the red channel
        assert seen["full"] > seen["crop"] + 1.0, seen  # uint8 or normalised: the white column is there


@pytest.mark.parametrize("policy", ["flip", "trivial", "none"])
def test_whole_frame_training_crops_shift_within_the_border_and_are_deterministic(policy):
    """Each sample's shift comes from (seed, epoch, index) alone, reaches at most `pad` pixels, and the uint8
    and float paths agree on it."""
    from alexnet_cli.data.preprocess import PixelBatch

    preprocess = Preprocess.for_arch(67, 227, "full")
    assert preprocess.pad == 4
    image = torch.randint(1, 256, (3, 67, 67), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    on_device = Augmentation(policy).train_crop(preprocess, on_device=True)
    on_cpu = Augmentation(policy).train_crop(preprocess, on_device=False)
    samples = [sample_pixels(on_device, image, 11, index) for index in range(12)]
    assert all(s.pixels.shape == (3, 67, 67) for s in samples)
    for index in (0, 5):
        torch.rand(3)  # the global stream moves on: it must not matter
        assert torch.equal(sample(on_device, image, 11, index), sample(on_device, image, 11, index))
    batch = PixelBatch.stack(samples).to_model(torch.device("cpu"))
    assert torch.equal(batch.contiguous(), torch.stack([sample(on_cpu, image, 11, i) for i in range(12)]))
    black_rows = [int((s.pixels == 0).all(0).all(1).sum()) for s in samples]
    black_cols = [int((s.pixels == 0).all(0).all(0).sum()) for s in samples]
    if policy == "none":  # the centre crop: the whole frame, as evaluation sees it
        assert all(torch.equal(s.pixels, image) for s in samples)
    elif policy == "flip":  # (TrivialAugment's own shears and shifts leave black too)
        assert max(black_rows + black_cols) <= 4 and any(black_rows) and any(black_cols)
        assert len({tuple(s.pixels[0, 10, :8].tolist()) for s in samples}) > 3  # not one shift for all


def test_ten_crop_on_the_whole_frame_cuts_the_padded_frame(tmp_path):
    from torchvision.transforms import v2

    from alexnet_cli.data.images import open_image
    from alexnet_cli.inference.tta import eval_transforms

    preprocess = Preprocess.for_arch(TINY, 227, "full")
    _bordered(40).save(tmp_path / "a.png")
    crops = eval_transforms(preprocess, "ten-crop")(open_image(tmp_path / "a.png"))
    resized = preprocess.decode_transforms()(open_image(tmp_path / "a.png"))
    padded = v2.functional.pad(resized, [preprocess.pad])
    manual = torch.stack([v2.Normalize(preprocess.mean, preprocess.std)(c.float() / 255)
                          for c in v2.TenCrop(TINY)(padded)])
    assert crops.shape == (10, 3, TINY, TINY) and torch.equal(crops, manual)
    assert not torch.equal(crops[0], crops[4])  # a corner is not the centre


def _small(root, size: int = 40):
    make_shapes_folder(root / "train", classes=("circle", "square"), per_class=6, size=size, seed=1)
    make_shapes_folder(root / "val", classes=("circle", "square"), per_class=2, size=size, seed=2)
    return root


def test_small_images_train_on_the_whole_frame_unless_frame_says_otherwise(runner, tmp_path, shapes):
    small = _small(tmp_path / "small")
    stored = {}
    for name, data, extra in (("auto", small, []), ("crop", small, ["--frame", "crop"]),
                              ("large", shapes, []), ("full", shapes, ["--frame", "full"])):
        result = invoke(runner, ["train", str(data / "train"), "--epochs", "1", "--output", name, *FAST_TRAIN,
                                 *extra])
        assert result.exit_code == 0, result.output
        assert ("frame: full (the images are small" in result.stderr) == (name == "auto"), name
        checkpoint = torch.load(f"{name}/best.pt", weights_only=True)
        frame = json.loads((tmp_path / name / "config.json").read_text())["frame"]
        stored[name] = (frame, checkpoint["preprocess"]["resize_size"], checkpoint["preprocess"]["pad"])
    assert stored == {"auto": ("full", TINY, 4), "crop": ("crop", 76, 0), "large": ("crop", 76, 0),
                      "full": ("full", TINY, 4)}
    # evaluate and predict read the framing from the checkpoint
    evaluated = invoke(runner, ["evaluate", str(small / "val"), "--weights", "auto/best.pt", "--workers", "0",
                                "--json", "--tta", "ten-crop"])
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.stdout)["images"] == 4
    image = next((small / "val" / "circle").iterdir())
    assert invoke(runner, ["predict", str(image), "--weights", "auto/best.pt"]).exit_code == 0


def test_a_bad_frame_is_a_one_line_error(runner, shapes):
    result = invoke(runner, ["train", str(shapes / "train"), "--frame", "wide", *FAST_TRAIN])
    assert result.exit_code != 0 and "unknown --frame 'wide': choose crop or full" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize("pad", [-1, TINY, "wide"])
def test_a_checkpoint_with_an_impossible_pad_is_refused(runner, shapes, tmp_path, pad):
    from alexnet_cli.artifacts.checkpoint import Checkpoint
    from alexnet_cli.models.alexnet import build_model

    Checkpoint(arch=TEST_ARCH, class_names=("circle", "square"), preprocess=Preprocess.for_arch(TINY, 227, "full"),
               dropout=0.5, state_dict=build_model(TEST_ARCH, num_classes=2).state_dict()).save(tmp_path / "bad.pt")
    payload = torch.load(tmp_path / "bad.pt", weights_only=True)
    payload["preprocess"]["pad"] = pad
    torch.save(payload, tmp_path / "bad.pt")
    result = invoke(runner, ["evaluate", str(shapes / "val"), "--weights", str(tmp_path / "bad.pt")])
    assert result.exit_code != 0 and "preprocessing is malformed" in result.stderr, result.output
    assert "Traceback" not in result.output


def test_resume_keeps_the_runs_frame(runner, tmp_path):
    """Small images with --frame crop: a resumed run crops as it did (auto would pick the whole frame), and a
    run from before --frame (no "frame" in its config) resumes with the crop it had."""
    from alexnet_cli.config.settings import TrainConfig
    from alexnet_cli.training.setup import resume

    small = _small(tmp_path / "small")
    args = ["train", str(small / "train"), *FAST_TRAIN, "--frame", "crop", "--scheduler", "none"]
    assert invoke(runner, [*args, "--epochs", "2", "--output", "straight"]).exit_code == 0
    assert invoke(runner, [*args, "--epochs", "1", "--output", "stopped"]).exit_code == 0
    resumed = invoke(runner, ["train", "--resume", "stopped/last.pt", "--epochs", "2", "--workers", "0"])
    assert resumed.exit_code == 0, resumed.output
    a = torch.load("straight/last.pt", weights_only=True)
    b = torch.load("stopped/last.pt", weights_only=True)
    assert b["preprocess"]["resize_size"] == 76 and b["config"]["frame"] == "crop"
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    del b["config"]["frame"]
    torch.save(b, tmp_path / "old.pt")
    assert resume(TrainConfig(resume=tmp_path / "old.pt", epochs=3))[1].frame == "crop"  # extended: 2 are done
