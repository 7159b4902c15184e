"""Messy folders, bad options, hostile checkpoints, interruptions and numerical faults."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from support.helpers import FAST_TRAIN, TEST_ARCH, invoke, one_error_line

from alexnet_cli.data.images import UnreadableImage, open_image

GOOD = {}  # name -> how it is made; filled below
BAD = ("truncated.jpg", "corrupt.png", "empty.jpg", "text.jpg", "bomb.png")
IGNORED = (".hidden.jpg", "notes.txt", "picture.xyz")


def _shape(mode: str = "RGB", size=(90, 80)) -> Image.Image:
    from PIL import ImageDraw

    image = Image.new("RGB", size, (200, 30, 30))
    w, h = size
    ImageDraw.Draw(image).rectangle((w // 4, h // 4, w // 2, 3 * h // 4), fill=(20, 20, 220))
    return image.convert(mode) if mode != "RGB" else image


def _jpeg_bytes(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", **kwargs)
    return buffer.getvalue()


def make_messy_folder(folder: Path) -> list[str]:
    """Every kind of file from the issue; returns the names of the good ones."""
    folder.mkdir(parents=True, exist_ok=True)
    good = []

    def keep(name: str, image: Image.Image, **kwargs) -> None:
        image.save(folder / name, **kwargs)
        good.append(name)

    rotated = _shape()
    exif = rotated.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees when displayed
    keep("rotated.jpg", rotated, exif=exif)
    keep("grey.png", _shape("L"))
    keep("palette.png", _shape("P"))
    transparent = _shape("P")
    transparent.info["transparency"] = 0
    keep("palette-alpha.png", transparent, transparency=0)
    keep("rgba.png", _shape("RGBA"))
    keep("la.png", _shape("LA"))
    keep("cmyk.jpg", _shape("CMYK"))
    keep("sixteen.png", _shape("L").convert("I;16"))
    keep("UPPER.PNG", _shape())
    keep("UPPER.JPG", _shape())
    keep("photo.webp", _shape())
    keep("photo.bmp", _shape())
    keep("photo.tiff", _shape())
    keep("photo.gif", _shape())

    (folder / "truncated.jpg").write_bytes(_jpeg_bytes(_shape(size=(300, 300)))[:600])
    png = io.BytesIO()
    _shape().save(png, "PNG")
    raw = bytearray(png.getvalue())
    raw[60:80] = b"\x00" * 20  # damage the compressed pixel data, keep the header
    (folder / "corrupt.png").write_bytes(bytes(raw))
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("this is not a picture\n")
    # 10,000 x 9,000 = 90 M pixels: over Pillow's default limit of 89.5 M, a tiny file when 1-bit.
    Image.new("1", (10_000, 9_000)).save(folder / "bomb.png")
    _shape().save(folder / ".hidden.jpg")
    (folder / "notes.txt").write_text("notes")
    _shape().save(folder / "picture.xyz", "PNG")
    return good


@pytest.fixture
def messy(tmp_path) -> tuple[Path, list[str]]:
    root = tmp_path / "messy"
    good_a = make_messy_folder(root / "train" / "alpha")
    make_messy_folder(root / "train" / "beta")
    return root, good_a


def test_open_image_normalises_every_good_kind(messy):
    root, good = messy
    for name in good:
        image = open_image(root / "train" / "alpha" / name)
        assert image.mode == "RGB", name
    # EXIF orientation 6 turns the 90x80 picture into 80x90
    assert open_image(root / "train" / "alpha" / "rotated.jpg").size == (80, 90)
    # 16-bit grey is scaled, not clipped: the red (76 in L) stays mid-grey, not white
    assert open_image(root / "train" / "alpha" / "sixteen.png").getpixel((0, 0))[0] < 128
    # transparent pixels become the white background
    assert open_image(root / "train" / "alpha" / "rgba.png").getpixel((0, 0)) == (200, 30, 30)
    for name in BAD:
        with pytest.raises(UnreadableImage, match=name):
            open_image(root / "train" / "alpha" / name)
    with pytest.raises(UnreadableImage, match="empty file"):
        open_image(root / "train" / "alpha" / "empty.jpg")
    with pytest.raises(UnreadableImage, match="decompression bomb"):
        open_image(root / "train" / "alpha" / "bomb.png")
    assert Image.MAX_IMAGE_PIXELS == 89_478_485  # the limit was used, never changed


def _named_skips(text: str) -> set[str]:
    return {name for name in BAD + IGNORED if f"{name}:" in text}


def test_train_evaluate_predict_skip_exactly_the_bad_files(runner, messy):
    root, good = messy
    result = invoke(runner, ["train", str(root / "train"), "--epochs", "1", "--val-split", "0.2",
                             "--output", "run", *FAST_TRAIN])
    assert result.exit_code == 0, result.output
    assert _named_skips(result.stderr) == set(BAD + IGNORED)
    assert result.stderr.count("skipped ") == 2 * len(BAD + IGNORED)  # each bad file of both classes, once
    # every good file of both classes is loaded: the training and validation counts add up to all of them
    split = json.loads(Path("run/split.json").read_text())
    metrics = Path("run/metrics.csv").read_text().splitlines()[1].split(",")
    assert int(metrics[5]) == len(split["val"])  # val_images
    total = re.search(r"total\s*│\s*(\d+)\s*│\s*(\d+)", result.stderr)
    assert (int(total[1]), int(total[2])) == (2 * len(good) - len(split["val"]), len(split["val"]))

    evaluated = invoke(runner, ["evaluate", str(root / "train"), "--weights", "run/best.pt", "--json",
                                "--workers", "0"])
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.stdout)["images"] == 2 * len(good)
    assert _named_skips(evaluated.stderr) == set(BAD + IGNORED)

    predicted = invoke(runner, ["predict", str(root / "train" / "alpha"), "--weights", "run/best.pt", "--json",
                                "--workers", "0"])
    assert predicted.exit_code == 0, predicted.output
    assert sorted(Path(r["path"]).name for r in json.loads(predicted.stdout)) == sorted(good)
    # a folder given to predict is searched for image extensions, so only the damaged images are named
    assert _named_skips(predicted.stderr) == set(BAD)


def test_strict_turns_a_skip_into_an_error(runner, messy):
    root, _ = messy
    result = invoke(runner, ["train", str(root / "train"), "--strict", *FAST_TRAIN])
    assert result.exit_code == 3
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: --strict: ")
    assert "Traceback" not in result.output


def test_a_file_that_breaks_after_the_scan_is_skipped_mid_epoch(runner, shapes, monkeypatch):
    """The index checks each file once; if a file is damaged later (or in a way the header check cannot
    see), loading skips it instead of crashing. (With the cache, a file is never read after it is decoded
    into it, so this is about --cache off.)"""
    from alexnet_cli.data import index

    real = index.check_file
    broken = shapes / "train" / "circle" / "circle_0003.png"
    # Pretend the index found a good file, then damage it before the epoch reads it.
    monkeypatch.setattr(index, "check_file", lambda path: (64, 64) if path == str(broken) else real(path))
    broken.write_bytes(b"gone bad")
    result = invoke(runner, ["train", str(shapes / "train"), "--epochs", "1", "--output", "run", "--cache", "off",
                             *FAST_TRAIN])
    assert result.exit_code == 0, result.output
    assert "skipped " in result.stderr and "circle_0003.png" in result.stderr


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(
    st.binary(max_size=2048),
    st.tuples(st.integers(0, 5000), st.binary(min_size=1, max_size=64)),
))
def test_open_image_returns_rgb_or_our_error(blob):
    """Random bytes, and valid images with bytes overwritten: an RGB image or UnreadableImage, nothing else."""
    if isinstance(blob, tuple):
        offset, patch = blob
        base = bytearray(_SAMPLES[offset % len(_SAMPLES)])
        start = offset % len(base)
        base[start:start + len(patch)] = patch
        blob = bytes(base)
    with tempfile.NamedTemporaryFile(suffix=".img") as file:
        file.write(blob)
        file.flush()
        try:
            image = open_image(file.name)
        except UnreadableImage:
            return
        assert image.mode == "RGB"


def _encoded(fmt: str) -> bytes:
    buffer = io.BytesIO()
    _shape(size=(40, 30)).save(buffer, fmt)
    return buffer.getvalue()


_SAMPLES = [_encoded(fmt) for fmt in ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")]


# ------------------------------------------------------------------------------------------- bad use


@pytest.mark.parametrize(
    ("make", "code", "message"),
    [
        (lambda root: None, 3, "data folder not found"),
        (lambda root: root.mkdir(), 3, "has no class subfolders"),
        (lambda root: (root / "cat").mkdir(parents=True), 3, "no readable images"),
    ],
)
def test_missing_and_empty_folders(runner, tmp_path, make, code, message):
    make(tmp_path / "data")
    result = invoke(runner, ["train", str(tmp_path / "data")])
    assert result.exit_code == code
    assert one_error_line(result).startswith(f"error: {message}") or message in one_error_line(result)


def test_checkpoint_of_another_class_count_or_architecture(runner, shapes, tmp_path):
    from alexnet_cli.artifacts.checkpoint import Checkpoint
    from alexnet_cli.data.preprocess import Preprocess
    from alexnet_cli.models.alexnet import build_model

    # a checkpoint claiming alexnet, holding the weights of another layout (the suite's small one)
    state = build_model(TEST_ARCH, num_classes=2).state_dict()
    Checkpoint(arch="alexnet", class_names=("circle", "square"), preprocess=Preprocess(67, 76), dropout=0.5,
               state_dict=state).save(tmp_path / "liar.pt")
    result = invoke(runner, ["evaluate", str(shapes / "val"), "--weights", str(tmp_path / "liar.pt")])
    assert result.exit_code == 4 and "do not fit alexnet with 2 classes" in result.stderr
    # a three-class folder against a two-class model
    from alexnet_cli.data.sources.synthetic import make_shapes_folder

    Checkpoint(arch=TEST_ARCH, class_names=("circle", "square"), preprocess=Preprocess(67, 76), dropout=0.5,
               state_dict=state).save(tmp_path / "two.pt")
    make_shapes_folder(tmp_path / "three", classes=("circle", "square", "star"), per_class=2, size=72)
    result = invoke(runner, ["evaluate", str(tmp_path / "three"), "--weights", str(tmp_path / "two.pt")])
    assert result.exit_code == 3 and "classes the model does not know: star" in result.stderr


def test_out_of_memory_suggests_a_smaller_batch(runner, shapes, monkeypatch):
    import alexnet_cli.training.run as training_run

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(training_run, "train_one_epoch", oom)
    result = invoke(runner, ["train", str(shapes / "train"), *FAST_TRAIN])
    assert result.exit_code == 5
    assert "out of GPU memory: try a smaller --batch-size" in result.stderr
    assert "Traceback" not in result.output


def test_hostile_pickle_as_weights_never_runs(runner, shapes, tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"format_version": 1, "model": Payload()}, tmp_path / "evil.pt")
    for command in (["evaluate", str(shapes / "val")], ["predict", str(shapes / "val")], ["summary"],
                    ["train", str(shapes / "train"), *FAST_TRAIN]):
        option = "--resume" if command[0] == "train" else "--weights"
        result = invoke(runner, [*command, option, str(tmp_path / "evil.pt")])
        assert result.exit_code == 4, command
        assert "refused to load" in result.stderr
    assert not marker.exists()


# ------------------------------------------------------------------------------- numerical faults


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(runner, shapes, monkeypatch):
    real = torch.nn.CrossEntropyLoss.forward
    calls = {"train": 0}

    def forward(self, logits, target):
        loss = real(self, logits, target)
        if torch.is_grad_enabled():
            calls["train"] += 1
            if calls["train"] == 3:  # epoch 2, iteration 1 (two iterations per epoch)
                return loss * float("nan")
        return loss

    monkeypatch.setattr(torch.nn.CrossEntropyLoss, "forward", forward)
    result = invoke(runner, ["train", str(shapes / "train"), "--epochs", "3", "--output", "run", *FAST_TRAIN])
    assert result.exit_code == 6
    assert "NaN or infinite at epoch 2" in result.stderr
    checkpoint = torch.load("run/last.pt", weights_only=True)
    assert checkpoint["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in checkpoint["model"].values())


# ---------------------------------------------------------------------------------- interruptions


def test_signal_handlers_are_restored(runner, shapes):
    before = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    trained = invoke(runner, ["train", str(shapes / "train"), "--epochs", "1", "--output", "run", *FAST_TRAIN])
    assert trained.exit_code == 0
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


# SIGTERM to the main process alone, and SIGTERM and SIGINT (a terminal's Ctrl-C) to the whole process group,
# each resumed to the same weights: tests/test_platforms.py.


# ---------------------------------------------------------------------------------------- check


def test_check_reports_counts_skips_and_leaks(runner, tmp_path):
    from alexnet_cli.data.sources.synthetic import make_shapes_folder

    make_shapes_folder(tmp_path / "d" / "train", classes=("circle", "square"), per_class=4, size=80)
    make_shapes_folder(tmp_path / "d" / "val", classes=("circle", "square"), per_class=2, size=80, seed=9)
    leaked = tmp_path / "d" / "val" / "circle" / "leak.png"
    leaked.write_bytes((tmp_path / "d" / "train" / "circle" / "circle_0001.png").read_bytes())
    (tmp_path / "d" / "train" / "square" / "broken.jpg").write_bytes(b"not an image")
    Image.new("L", (40, 200)).save(tmp_path / "d" / "train" / "square" / "thin.png")

    result = invoke(runner, ["check", "d/train", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    rows = {row["class"]: row for row in report["train"]}
    assert rows["circle"]["images"] == 4 and rows["square"]["images"] == 5
    assert [r.split(": ")[0] for r in rows["square"]["skipped"]] == ["d/train/square/broken.jpg"]
    assert rows["square"]["modes"] == {"RGB": 4, "L": 1}
    assert rows["square"]["small"] == ["d/train/square/thin.png (40x200)"]
    assert rows["square"]["elongated"] == ["d/train/square/thin.png (40x200)"]
    assert report["duplicates_train_val"] == [{"train": ["d/train/circle/circle_0001.png"],
                                               "val": ["d/val/circle/leak.png"]}]
    assert report["problems"] == 2

    table = invoke(runner, ["check", "d/train", "--strict"])
    assert table.exit_code == 3
    assert "the same image in train and val" in table.stderr and "broken.jpg" in table.stderr


def test_os_metadata_is_ignored_without_a_word(runner, tmp_path):
    """Finder and Explorer leave .DS_Store, ._* resource forks, Thumbs.db and desktop.ini in every folder they
    open, and zip tools a __MACOSX/ tree: none of them is the user's, so --strict must not refuse the set."""
    from alexnet_cli.data.sources.synthetic import make_shapes_folder

    root = tmp_path / "d"
    make_shapes_folder(root / "train", classes=("circle", "square"), per_class=3, size=80)
    for folder in (root / "train", root / "train" / "circle", root / "train" / "square"):
        (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
        (folder / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
        (folder / "desktop.ini").write_text("[.ShellClassInfo]\n")
    (root / "train" / "circle" / "._circle_0000.png").write_bytes(b"\0\5\26\7 AppleDouble")
    (root / "train" / "__MACOSX" / "circle").mkdir(parents=True)
    (root / "train" / "__MACOSX" / "circle" / "._circle_0001.png").write_bytes(b"\0\5\26\7")

    result = invoke(runner, ["check", str(root / "train"), "--strict", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [(row["class"], row["images"], row["skipped"]) for row in report["train"]] == [
        ("circle", 3, []), ("square", 3, [])]
    assert "warning" not in result.stderr


def test_a_split_written_on_windows_is_read_back_here(shapes, tmp_path):
    from alexnet_cli.data import folders as datamod

    images = datamod.load_image_folder(shapes / "train")
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"fraction": 0.25, "seed": 1,
                                 "val": ["circle\\circle_0001.png", "square\\square_0003.png"]}))
    train, val = datamod.split_from_file(images, split)
    assert sorted(Path(p).relative_to(shapes / "train").as_posix() for p in val.paths) == [
        "circle/circle_0001.png", "square/square_0003.png"]
    assert len(train) == len(images) - 2
    # And what this OS writes uses `/`, which every OS reads back.
    assert all("\\" not in path for path in datamod.split_record(val, 0.25, 1)["val"])


def test_grad_cam_names_differ_where_the_file_system_ignores_case(tmp_path):
    from alexnet_cli.inference.gradcam import output_name

    taken: set[str] = set()
    first = output_name(tmp_path, "a/IMG_1.jpg", "cat", 0.9, taken)
    second = output_name(tmp_path, "b/img_1.JPG", "cat", 0.9, taken)
    assert first.name.casefold() != second.name.casefold()
