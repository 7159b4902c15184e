import os
import pickle
import signal
import subprocess
import sys

import pytest
import torch
from support.helpers import ROOT, TEST_ARCH

from alexnet_cli.artifacts.checkpoint import load_checkpoint, save_checkpoint
from alexnet_cli.errors import CheckpointError, OutputError
from alexnet_cli.models.alexnet import build_model
from alexnet_cli.runtime.files import atomic_write, publish_copy


def test_failed_write_keeps_the_previous_file(tmp_path):
    target = tmp_path / "last.pt"
    save_checkpoint(target, {"format_version": 1, "value": torch.tensor([1.0])})
    before = target.read_bytes()

    def half_then_fail(file):
        file.write(b"partial bytes")
        raise OSError(28, "No space left on device")

    with pytest.raises(OutputError, match="No space left on device"):
        atomic_write(target, half_then_fail)
    assert target.read_bytes() == before
    assert os.listdir(tmp_path) == ["last.pt"]  # the temp file is gone too


def test_kill_during_write_keeps_the_previous_file(tmp_path):
    target = tmp_path / "last.pt"
    save_checkpoint(target, {"format_version": 1, "epoch": 1})
    code = (
        "import sys, time\n"
        "from alexnet_cli.runtime.files import atomic_write\n"
        "def slow(file):\n"
        "    file.write(b'x' * 1000); file.flush(); print('writing', flush=True); time.sleep(60)\n"
        f"atomic_write({str(target)!r}, slow)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "writing"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert torch.load(target, weights_only=True) == {"format_version": 1, "epoch": 1}


def test_publish_copy_is_a_snapshot(tmp_path):
    save_checkpoint(tmp_path / "last.pt", {"epoch": 1})
    publish_copy(tmp_path / "last.pt", tmp_path / "best.pt")
    save_checkpoint(tmp_path / "last.pt", {"epoch": 2})
    assert torch.load(tmp_path / "best.pt", weights_only=True) == {"epoch": 1}
    assert torch.load(tmp_path / "last.pt", weights_only=True) == {"epoch": 2}


class Payload:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


MARKER = ""


def test_hostile_pickle_is_refused_and_never_run(tmp_path):
    global MARKER
    MARKER = str(tmp_path / "pwned")
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"format_version": 1, "model": Payload()}, f)
    torch.save({"format_version": 1, "model": Payload()}, tmp_path / "evil-zip.pt")
    for candidate in (path, tmp_path / "evil-zip.pt"):
        with pytest.raises(CheckpointError, match="refused to load"):
            load_checkpoint(candidate)
    assert not os.path.exists(MARKER)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not a PyTorch checkpoint"),
        (b"hello, I am a text file\n", "not a PyTorch checkpoint"),
    ],
)
def test_files_that_are_not_checkpoints(tmp_path, content, message):
    path = tmp_path / "x.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_missing_and_foreign_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="holds a list"):
        load_checkpoint(tmp_path / "list.pt")
    torch.save({"weight": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not of an AlexNet"):
        load_checkpoint(tmp_path / "other.pt")
    torch.save({"format_version": 99}, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="upgrade alexnet-cli"):
        load_checkpoint(tmp_path / "future.pt")


def test_imports_the_original_writeups_state_dict(tmp_path):
    """The write-up saved AlexNet.pkl with layers conv1..conv5 and `lostlayer`: it loads as `alexnet`."""
    ours = build_model("alexnet", num_classes=2)
    names = {"features.0": "conv1.0", "features.3": "conv2.0", "features.6": "conv3.0", "features.8": "conv4.0",
             "features.10": "conv5.0", "classifier.0": "lostlayer.0", "classifier.3": "lostlayer.3",
             "classifier.6": "lostlayer.6"}
    writeup = {names[k.rsplit(".", 1)[0]] + "." + k.rsplit(".", 1)[1]: v for k, v in ours.state_dict().items()}
    torch.save(writeup, tmp_path / "AlexNet.pkl")
    checkpoint = load_checkpoint(tmp_path / "AlexNet.pkl")
    assert checkpoint.arch == "alexnet" and checkpoint.class_names == ("class_0", "class_1")
    x = torch.randn(1, 3, 227, 227)
    with torch.no_grad():
        assert torch.equal(checkpoint.build()(x), ours.eval()(x))


def test_recognises_the_paper_variant_from_shapes(tmp_path):
    torch.save(build_model("alexnet-paper", num_classes=4).state_dict(), tmp_path / "paper.pth")
    assert load_checkpoint(tmp_path / "paper.pth").arch == "alexnet-paper"


def _v1_checkpoint(path, data_dir) -> None:
    """A last.pt laid out as alexnet-cli 0.1.0 writes format 1, key by key, written here without the
    tool's own writer: after one training step of a 2-class model (the suite's small one) at 67 pixels, epoch 1
    of 2 done."""
    import random

    from support.helpers import TEST_ARCH, TINY

    torch.manual_seed(3)
    model = build_model(TEST_ARCH, num_classes=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss = model(torch.randn(2, 3, TINY, TINY)).sum()
    loss.backward()
    optimizer.step()
    row = {"epoch": 1, "train_loss": 0.7, "train_acc": 0.5, "val_loss": 0.69, "val_acc": 0.5, "val_images": 6,
           "lr": 1e-4, "epoch_seconds": 1.0, "images_per_second": 16.0}
    config = {
        "data": str(data_dir / "train"), "val": None, "val_split": None, "arch": TEST_ARCH, "image_size": TINY,
        "batch_size": 8, "epochs": 2, "lr": 1e-4, "optimizer": "adam", "weight_decay": 0.0, "scheduler": "none",
        "label_smoothing": 0.0, "dropout": 0.5, "patience": None, "workers": 0, "device": "cpu", "no_cuda": False,
        "precision": "fp32", "seed": 1, "log_interval": 1, "output": str(path.parent), "resume": None,
        "pretrained": False, "freeze_features": False, "strict": False, "tensorboard": False, "cache": "auto",
        "world_size": 1,
    }
    python_state = random.getstate()
    torch.save({
        "format_version": 1, "tool_version": "0.1.0", "arch": TEST_ARCH, "num_classes": 2,
        "class_names": ["circle", "square"],
        "preprocess": {"image_size": TINY, "resize_size": 76, "mean": [0.485, 0.456, 0.406],
                       "std": [0.229, 0.224, 0.225], "interpolation": "bilinear"},
        "dropout": 0.5, "model": model.state_dict(), "epoch": 1, "optimizer": optimizer.state_dict(),
        "scheduler": None, "scaler": None,
        "rng": {"torch": torch.get_rng_state(), "python": [python_state[0], list(python_state[1]), None]},
        "run_state": {"epoch": 1, "history": [row], "best_acc": 0.5, "best_loss": 0.69, "best_epoch": 1,
                      "epochs_since_best": 0},
        "metrics": row, "config": config, "partial": None,
    }, path)


def test_a_format_1_checkpoint_of_release_0_1_0_evaluates_and_resumes(runner, shapes, tmp_path):
    from support.helpers import invoke

    run = tmp_path / "old-run"
    run.mkdir()
    _v1_checkpoint(run / "last.pt", shapes)
    evaluated = invoke(runner, ["evaluate", str(shapes / "val"), "--weights", str(run / "last.pt"), "--workers", "0",
                                "--device", "cpu", "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    assert '"images": 6' in evaluated.stdout
    resumed = invoke(runner, ["train", "--resume", str(run / "last.pt"), "--workers", "0", "--device", "cpu"])
    assert resumed.exit_code == 0, resumed.output
    assert "resuming" in resumed.stderr and "at epoch 2 of 2" in resumed.stderr
    after = torch.load(run / "last.pt", weights_only=True)
    assert after["epoch"] == 2 and [row["epoch"] for row in after["run_state"]["history"]] == [1, 2]


def test_the_format_document_and_the_schema_agree():
    """docs/checkpoint-format.md's table is the schema's keys, in order (test_golden checks a real file)."""
    import re

    from alexnet_cli.artifacts.checkpoint import Checkpoint

    document = (ROOT / "docs" / "checkpoint-format.md").read_text()
    assert tuple(re.findall(r"^\| `(\w+)` \|", document, flags=re.M)) == Checkpoint.payload_keys()


def test_checkpoints_are_memory_mapped_where_torch_can_map_them(tmp_path, monkeypatch):
    """evaluate and predict map the file (best.pt's Adam moments are never read); a legacy pickle is read."""
    model = build_model(TEST_ARCH, num_classes=2)
    torch.save(model.state_dict(), tmp_path / "zip.pt")
    torch.save(model.state_dict(), tmp_path / "legacy.pkl", _use_new_zipfile_serialization=False)
    real, mapped = torch.load, []
    monkeypatch.setattr(torch, "load", lambda *a, **k: mapped.append(k.get("mmap")) or real(*a, **k))
    loaded = [load_checkpoint(tmp_path / "zip.pt"), load_checkpoint(tmp_path / "legacy.pkl"),
              load_checkpoint(tmp_path / "zip.pt", mmap=False)]
    assert mapped == [True, False, False]
    for checkpoint in loaded:
        built = checkpoint.build()
        assert all(torch.equal(a, b) for a, b in zip(built.state_dict().values(), model.state_dict().values()))


def test_weights_in_half_precision_build_a_float32_model():
    half = {k: v.half() for k, v in build_model(TEST_ARCH, num_classes=2).state_dict().items()}
    model = build_model(TEST_ARCH, num_classes=2, state_dict=half)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert model(torch.randn(1, 3, 67, 67)).dtype == torch.float32
