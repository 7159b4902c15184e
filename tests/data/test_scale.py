"""ImageNet's scale: the folder index (reused, refreshed for what changed, kept out of the data folder), the
cheap check that catches what breaks training, and samples that cost nothing to send to a loader process."""

from __future__ import annotations

import io
import os
import re
import stat
from pathlib import Path

import pytest
import torch
from PIL import Image
from support.helpers import FAST_TRAIN, invoke

from alexnet_cli.data import headers, loading
from alexnet_cli.data import index as indexmod
from alexnet_cli.data.folders import load_image_folder
from alexnet_cli.data.images import UnreadableImage
from alexnet_cli.data.preprocess import Preprocess
from alexnet_cli.data.samples import Paths, Strings


@pytest.fixture
def checked(monkeypatch) -> list[str]:
    """Every path the index opens, in order."""
    opened: list[str] = []
    real = indexmod.check_file

    def counting(path):
        opened.append(os.path.basename(path))
        return real(path)

    monkeypatch.setattr(indexmod, "check_file", counting)
    return opened


def test_the_index_is_reused_and_refreshed_for_a_changed_new_or_removed_file(shapes, checked):
    train = shapes / "train"
    first = load_image_folder(train)
    assert len(checked) == len(first) == 16
    index_files = list((Path(os.environ["ALEXNET_CACHE_DIR"]) / "index").iterdir())
    assert [p.name.split("-")[0] for p in index_files] == ["train"]  # in the user cache, named after the folder

    checked.clear()
    again = load_image_folder(train)
    assert checked == [] and list(again.paths) == list(first.paths)  # nothing opened the second time

    changed = train / "circle" / "circle_0002.png"
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    Image.new("RGB", (40, 30), "red").save(train / "square" / "square_new.png")
    (train / "circle" / "circle_0005.png").unlink()
    checked.clear()
    refreshed = load_image_folder(train)
    assert sorted(checked) == ["circle_0002.png", "square_new.png"]  # the changed and the new file alone
    names = {Path(p).name for p in refreshed.paths}
    assert "square_new.png" in names and "circle_0005.png" not in names and len(names) == 16
    assert refreshed.sizes[[Path(p).name for p in refreshed.paths].index("square_new.png")].tolist() == [40, 30]

    checked.clear()
    assert len(load_image_folder(train)) == 16 and checked == []  # and the refreshed index was saved


def test_a_file_damaged_since_the_last_run_is_named_again_on_every_run(shapes, checked):
    train = shapes / "train"
    load_image_folder(train)
    checked.clear()
    broken = train / "square" / "square_0004.png"
    broken.write_bytes(broken.read_bytes()[:200])  # truncated: its size changes, so it is checked again
    for _ in range(2):
        images = load_image_folder(train)
        assert len(images) == 15
        assert [s.split(": ")[0] for s in images.skipped] == [str(broken)]
    assert checked.count("square_0004.png") == 1  # the verdict is remembered, not re-read


def _jpeg(size=(64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 120, 200)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _png(size=(64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise(size, 60).convert("RGB").save(buffer, format="PNG")  # noise: the pixel data is long
    return buffer.getvalue()


def _declaring(side: int) -> bytes:
    """A 1x1 PNG whose header declares side x side pixels (with the header's checksum made right)."""
    import zlib

    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="PNG")
    raw = bytearray(buffer.getvalue())
    raw[16:24] = side.to_bytes(4, "big") * 2  # IHDR's width and height
    raw[29:33] = zlib.crc32(bytes(raw[12:29])).to_bytes(4, "big")  # IHDR's CRC covers its type and data
    return bytes(raw)


def test_the_cheap_check_catches_what_breaks_training(tmp_path, checked):
    """Header, declared size and end marker: no full decode of a good JPEG or PNG, but every kind of damage
    that would stop a decode is named, with the reason."""
    files = {
        "good.jpg": _jpeg(), "good.png": _png(),
        "trailing.jpg": _jpeg() + b"camera maker notes",  # bytes after the end marker: it decodes, so it is kept
        "truncated.jpg": _jpeg()[:-300], "truncated.png": _png((300, 200))[:150], "empty.jpg": b"",
        "text.jpg": b"this is not an image at all", "html.png": b"<html>404 not found</html>",
    }
    for name, side in (("bomb.png", 10_000), ("huge-bomb.png", 20_000)):  # 100 MP (over the limit), 400 MP (2x)
        files[name] = _declaring(side)
    for name, content in files.items():
        (tmp_path / "data" / "a").mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / "a" / name).write_bytes(content)
    (tmp_path / "data" / "b").mkdir()
    (tmp_path / "data" / "b" / "good.jpg").write_bytes(_jpeg())
    images = load_image_folder(tmp_path / "data")
    kept = sorted(Path(p).name for p in images.paths)
    assert kept == ["good.jpg", "good.jpg", "good.png", "trailing.jpg"]
    reasons = {Path(s.split(": ")[0]).name: s.split(": ", 1)[1] for s in images.skipped}
    assert set(reasons) == {"truncated.jpg", "truncated.png", "empty.jpg", "text.jpg", "html.png", "bomb.png",
                            "huge-bomb.png"}
    assert reasons["empty.jpg"] == "empty file"
    assert reasons["text.jpg"] == reasons["html.png"] == "not an image (no image format recognised)"
    assert reasons["bomb.png"].startswith("refused as a possible decompression bomb (")
    assert reasons["huge-bomb.png"].startswith("refused as a possible decompression bomb (")
    assert "truncated" in reasons["truncated.jpg"].lower()
    with pytest.raises(UnreadableImage, match="truncated.png"):
        headers.check_file(str(tmp_path / "data" / "a" / "truncated.png"))
    assert Image.MAX_IMAGE_PIXELS == 89_478_485  # the limit was read, never changed


def test_the_index_never_writes_into_a_read_only_data_folder(shapes, runner):
    train = shapes / "train"
    before = sorted(p.relative_to(shapes) for p in shapes.rglob("*"))
    modes = {p: p.stat().st_mode for p in [shapes, *shapes.rglob("*")] if p.is_dir()}
    for folder in modes:
        folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        result = invoke(runner, ["train", str(train), "--epochs", "1", "--output", str(Path.cwd() / "run"),
                                 *FAST_TRAIN])
    finally:
        for folder, mode in modes.items():
            folder.chmod(mode)
    assert result.exit_code == 0, result.output
    assert "index: 16 files, 16 checked" in result.stderr
    assert sorted(p.relative_to(shapes) for p in shapes.rglob("*")) == before


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong-shapes", "other-root"])
def test_a_damaged_or_foreign_index_is_built_again(shapes, checked, damage):
    train = shapes / "train"
    load_image_folder(train)
    path = indexmod.index_file(os.path.realpath(train))
    if damage == "garbage":
        path.write_bytes(b"\x80\x04not a torch file")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    else:
        data = torch.load(path, weights_only=True)
        if damage == "wrong-shapes":
            data["size"] = data["size"][:3]
        else:
            data["root"] = "/somewhere/else"
        torch.save(data, path)
    checked.clear()
    assert len(load_image_folder(train)) == 16
    assert len(checked) == 16  # every file checked again, and the index written anew
    checked.clear()
    load_image_folder(train)
    assert checked == []


def test_a_pickled_object_in_the_index_is_refused_not_run(shapes, checked):
    """The index is read with weights_only: a file that would run code when unpickled is rebuilt instead."""
    train = shapes / "train"
    load_image_folder(train)
    marker = Path("ran.txt")

    class Hostile:
        def __reduce__(self):
            return (Path.write_text, (marker.resolve(), "code ran"))

    torch.save({"format": indexmod.FORMAT, "payload": Hostile()}, indexmod.index_file(os.path.realpath(train)))
    checked.clear()
    assert len(load_image_folder(train)) == 16 and len(checked) == 16
    assert not marker.exists()


def test_strings_hold_any_path_and_take_keeps_order():
    names = ["cat/a.jpg", "dög/ß.png", "", "x" * 300, "bad-\udcff.jpg"]  # the last: an undecodable byte
    strings = Strings.build(names)
    assert list(strings) == names and [strings[i] for i in range(5)] == names and strings[-1] == names[-1]
    assert list(strings.take([4, 0, 0, 2])) == [names[4], names[0], names[0], names[2]]
    assert list(strings.take([])) == []
    assert Paths("/data", strings.take([0]))[0] == os.path.join("/data", "cat/a.jpg")


def test_a_spawned_worker_gets_100_000_samples_in_a_pickle_under_1_mb():
    """Paths and labels are flat tensors, which torch sends to a spawned loader process as shared memory: the
    pickle holds handles, not 100,000 paths (as a list of (str, int) tuples it would be 4.8 MB)."""
    from multiprocessing.reduction import ForkingPickler

    names = [f"n{c:08d}/n{c:08d}_{i}.JPEG" for c in range(1000) for i in range(100)]
    paths = Paths("/datasets/imagenet/train", Strings.build(names))
    labels = torch.arange(100_000) // 100
    preprocess = Preprocess.for_arch(227, 227)
    dataset = loading.ImageDataset(paths, labels, preprocess.eval_transforms())
    sent = ForkingPickler.dumps(dataset)
    assert len(sent) < 1_000_000
    as_lists = ForkingPickler.dumps(list(zip(names, labels.tolist())))
    assert len(as_lists) > 4 * len(sent)
    received = ForkingPickler.loads(sent)
    assert received.paths[12_345] == os.path.join("/datasets/imagenet/train", names[12_345])
    assert int(received.labels[12_345]) == 123


def _thousand_classes():
    """A result over 1,000 classes of 50 images each: class i is right 50 - (i % 40) times and otherwise taken
    for class i + 1; class 999 is also taken for class 3 seven times."""
    from alexnet_cli.inference.evaluate import EvalResult

    n = 1000
    confusion = [[0] * n for _ in range(n)]
    for i in range(n):
        wrong = i % 40
        confusion[i][i] = 50 - wrong
        confusion[i][(i + 1) % n] += wrong
    confusion[999][999] -= 7
    confusion[999][3] += 7
    names = tuple(f"n{i:08d} a long human-readable class name, with synonyms" for i in range(n))
    return EvalResult(names, images=50 * n, loss=2.0, confusion=confusion, k=5, topk_correct=40_000)


@pytest.mark.parametrize("columns", [80, 100])
def test_evaluate_summarises_1000_classes_in_a_screenful_and_json_keeps_everything(capsys, monkeypatch, columns):
    from alexnet_cli.cli import tables as console

    monkeypatch.setattr(console.console, "width", columns)
    report = _thousand_classes().to_dict()
    assert report["top1_error"] == pytest.approx(1 - report["accuracy"]) and report["top5_error"] == pytest.approx(0.2)
    assert len(report["per_class"]) == 1000 and len(report["confusion_matrix"]) == 1000  # --json keeps all
    console.evaluation(report, "val")
    shown = capsys.readouterr().err
    lines = shown.splitlines()
    assert len(lines) <= 60
    assert max(len(line) for line in lines if "│" in line) <= columns  # the tables fit the terminal's width
    assert "accuracy 60.99% (top-1 error 39.01%), top-5 80.00% (top-5 error 20.00%)" in lines[0]
    # the worst classes: those right 11 times of 50 (i % 40 == 39), lowest first, with what they are taken for
    worst = report["worst_classes"]
    assert [row["class"][:9] for row in worst[:3]] == ["n00000999", "n00000039", "n00000079"]
    assert worst[1]["mistaken_for"].startswith("n00000040") and worst[1]["recall"] == pytest.approx(11 / 50)
    row = next(line for line in lines if line.startswith("│ n00000039"))  # the numbers whole, the names cut
    assert re.fullmatch(r"│ n00000039 a long hum[-a-z ]*… │ +0\.220 │ +0\.224 │ +50 │ "
                        r"n00000040 a long hum[-a-z ]*… │", row)
    pairs = report["most_confused"]
    assert len(pairs) == 10 and pairs[0]["count"] == 39 and pairs[0]["share"] == pytest.approx(39 / 50)
    assert all(pair["true"] != pair["predicted"] for pair in pairs)
    assert "1,000 classes: every class's precision, recall and F1, and the whole confusion matrix, are in --json" \
        in shown


def test_the_confusion_picture_at_1000_classes_shows_the_most_confused_ones(tmp_path):
    pytest.importorskip("matplotlib")
    from PIL import Image as PILImage

    from alexnet_cli.reporting.plots import CONFUSION_CLASSES, most_confused_classes, write_confusion

    result = _thousand_classes()
    chosen = most_confused_classes(result.confusion)
    assert len(chosen) == CONFUSION_CLASSES == len(set(chosen))
    assert chosen[0] == 999  # 39 + 7 mistakes as the true class, 38 as the prediction: the most
    # classes confused with each other sit next to each other: 38 is taken for 39 more than anything else
    assert chosen.index(38) == chosen.index(39) + 1
    path = write_confusion(tmp_path / "confusion.png", result.class_names, result.confusion)
    with PILImage.open(path) as picture:
        assert picture.width <= 4000 and picture.height <= 2000


def test_the_header_parser_reads_what_pillow_reads(tmp_path):
    """header_size against Image.open on JPEGs of every kind Pillow writes (baseline, progressive, grey,
    CMYK, a large EXIF block, restart markers) and PNGs; anything else goes to Pillow."""
    exif = Image.Exif()
    exif[0x010E] = "x" * 30_000  # ImageDescription: a long APP1 segment before the frame header
    exif[0x0112] = 6  # rotated: the header's size is the stored one, as Pillow's .size
    cases = {
        "baseline.jpg": dict(mode="RGB", format="JPEG"),
        "progressive.jpg": dict(mode="RGB", format="JPEG", progressive=True),
        "grey.jpg": dict(mode="L", format="JPEG"),
        "cmyk.jpg": dict(mode="CMYK", format="JPEG"),
        "exif.jpg": dict(mode="RGB", format="JPEG", exif=exif.tobytes()),
        "restart.jpg": dict(mode="RGB", format="JPEG", restart_marker_blocks=1),
        "rgba.png": dict(mode="RGBA", format="PNG"),
        "palette.png": dict(mode="P", format="PNG"),
    }
    for name, options in cases.items():
        mode = options.pop("mode")
        Image.new(mode, (123, 45)).save(tmp_path / name, **options)
        head = (tmp_path / name).read_bytes()[:headers.HEAD_BYTES]
        with Image.open(tmp_path / name) as image:
            assert headers.header_size(head) == (image.format, *image.size), name
        assert headers.check_file(str(tmp_path / name)) == (123, 45)
    Image.new("RGB", (20, 10)).save(tmp_path / "photo.webp")
    assert headers.header_size((tmp_path / "photo.webp").read_bytes()) is None
    assert headers.check_file(str(tmp_path / "photo.webp")) == (20, 10)  # Pillow's path


def test_files_read_slowly_are_checked_on_threads_with_the_same_verdicts(shapes, monkeypatch):
    """A first probe that comes slower than FROM_MEMORY (a cold disk) sends the rest to CHECK_THREADS
    threads: the verdicts, sizes and order are those of one thread."""
    (shapes / "train" / "circle" / "circle_0001.png").write_bytes(b"broken")
    serial = load_image_folder(shapes / "train")
    indexmod.index_file(os.path.realpath(shapes / "train")).unlink()
    monkeypatch.setattr(indexmod, "PROBE", 1)
    monkeypatch.setattr(indexmod, "FROM_MEMORY", float("inf"))
    monkeypatch.setattr(indexmod, "CHUNK", 3)
    threaded = load_image_folder(shapes / "train")
    assert list(threaded.paths) == list(serial.paths) and threaded.skipped == serial.skipped
    assert torch.equal(threaded.sizes, serial.sizes) and torch.equal(threaded.labels, serial.labels)
