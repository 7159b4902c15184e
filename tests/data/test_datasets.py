"""`alexnet data fashion-mnist` and `alexnet data cifar10` on tiny fake raw files, offline: the files the data
sets' own downloads fetch, read by torchvision's own classes."""

import gzip
import hashlib
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support.helpers import SMALL, invoke, one_error_line

FASHION_CLASSES = ["T-shirt-top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]


def _idx(path: Path, array: np.ndarray) -> None:
    """An IDX file (MNIST's format), gzipped: magic, dimensions, then the uint8 data."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def fake_fashion_mnist(folder: Path, train_per_class: int = 4, test_per_class: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, per_class in (("train", train_per_class), ("t10k", test_per_class)):
        labels = np.tile(np.arange(10), per_class)
        images = rng.integers(0, 256, (len(labels), 28, 28))
        images[:, 0, 0] = np.arange(len(labels))  # each image tells its index
        _idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        _idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return folder


def test_data_fashion_mnist_from_raw_files(runner, tmp_path):
    raw = fake_fashion_mnist(tmp_path / "debian")
    result = invoke(runner, ["data", "fashion-mnist", "fm", "--from", str(raw), "--per-class", "2",
                             "--val-per-class", "1"])
    assert result.exit_code == 0, result.output
    root = Path("fm")
    for split, per_class in (("train", 2), ("val", 1), ("test", 2)):
        assert sorted(p.name for p in (root / split).iterdir()) == sorted(FASHION_CLASSES), split
        assert all(len(list((root / split / c).glob("*.png"))) == per_class for c in FASHION_CLASSES), split
    # train: the first two of each class; val: the last of each class; none in both; pixels as in the file
    assert sorted(p.name for p in (root / "train" / "Trouser").iterdir()) == ["00001.png", "00011.png"]
    assert sorted(p.name for p in (root / "val" / "Trouser").iterdir()) == ["00031.png"]
    image = np.asarray(Image.open(root / "train" / "Trouser" / "00011.png"))
    assert image.shape == (28, 28) and image[0, 0] == 11
    assert "fm/train: 20 images in 10 classes" in result.stderr.replace("\\", "/")
    again = invoke(runner, ["data", "fashion-mnist", "fm", "--from", str(raw), "--per-class", "2",
                            "--val-per-class", "1"])
    assert again.exit_code == 0 and "wrote 0 PNG files" in again.stderr
    trained = invoke(runner, ["train", "fm/train", "--epochs", "1", *SMALL, "--batch-size", "8",
                              "--workers", "0", "--output", "run"])
    assert trained.exit_code == 0, trained.output
    assert "validation: folder fm/val" in trained.stderr.replace("\\", "/")  # never the test split


def test_data_fashion_mnist_names_what_is_missing(runner, tmp_path):
    (tmp_path / "empty").mkdir()
    result = invoke(runner, ["data", "fashion-mnist", "fm", "--from", str(tmp_path / "empty")])
    assert result.exit_code != 0 and "does not hold train-images-idx3-ubyte.gz" in result.stderr
    assert "Traceback" not in result.output


def fake_cifar10(folder: Path, monkeypatch, per_batch: int = 20) -> Path:
    """cifar-10-python.tar.gz with five tiny training batches and a test batch; torchvision's MD5 list is
    pointed at these files (its real check, on fake data)."""
    from torchvision.datasets import CIFAR10

    base = folder / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(1)
    sums = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        labels = [int(x) for x in np.arange(per_batch) % 10]
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        with open(base / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels}, f)  # as Python 2 wrote them
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                     "ship", "truck"]}, f)
    for name in [*names, "batches.meta"]:
        sums[name] = hashlib.md5((base / name).read_bytes()).hexdigest()
    monkeypatch.setattr(CIFAR10, "train_list", [[n, sums[n]] for n in names[:5]])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", sums["test_batch"]]])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": sums["batches.meta"]})
    archive = folder / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(base, arcname="cifar-10-batches-py")
    return archive


def test_data_cifar10_from_the_archive(runner, tmp_path, monkeypatch):
    archive = fake_cifar10(tmp_path / "src", monkeypatch)
    result = invoke(runner, ["data", "cifar10", "c10", "--from", str(archive), "--val-per-class", "2"])
    assert result.exit_code == 0, result.output
    root = Path("c10")
    assert len(list((root / "train" / "cat").glob("*.png"))) == 8  # 10 per class, the last 2 to val
    assert len(list((root / "val" / "cat").glob("*.png"))) == 2
    assert len(list((root / "test" / "cat").glob("*.png"))) == 2
    assert Image.open(next((root / "train" / "truck").glob("*.png"))).size == (32, 32)
    assert Image.open(next((root / "train" / "truck").glob("*.png"))).mode == "RGB"


@pytest.mark.parametrize("args,message", [
    (["--per-class", "0"], "--per-class must be positive"),
    (["--val-per-class", "5"], "--val-per-class 5 leaves no training images"),
])
def test_impossible_counts_are_refused(runner, tmp_path, args, message):
    raw = fake_fashion_mnist(tmp_path / "debian", train_per_class=4)
    result = invoke(runner, ["data", "fashion-mnist", "fm", "--from", str(raw), *args])
    assert result.exit_code == 2 and message in result.stderr, result.output


@pytest.mark.parametrize("command", ["train", "check"])
def test_the_parent_of_the_splits_is_refused_with_the_folder_meant(runner, shapes, command):
    """`alexnet train data/` where data/ holds train/ and val/ would learn "train vs val": refused before any
    file is listed, naming data/train. `alexnet check` says the same."""
    result = invoke(runner, [command, str(shapes)])
    assert result.exit_code == 3, result.output
    line = one_error_line(result)
    assert "holds the splits train, val, not classes" in line and str(shapes / "train") in line
    assert "index:" not in result.stderr


def test_a_class_that_is_only_named_like_a_split_is_still_a_class(tmp_path):
    """One class called "test" beside real classes is a class: only split folders, or two of them, refuse."""
    from alexnet_cli.data.folders import refuse_split_folders
    from alexnet_cli.errors import DataError

    refuse_split_folders(tmp_path, ["cat", "dog", "test"])
    for splits in (["train"], ["train", "test"], ["test", "train", "val"], ["Training", "Validation"]):
        with pytest.raises(DataError, match="holds the splits"):
            refuse_split_folders(tmp_path, splits)
