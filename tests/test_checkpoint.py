import os
import pickle
import signal
import subprocess
import sys

import pytest
import torch

from alexnet_cli.checkpoint import atomic_write, load_checkpoint, publish_copy, save_checkpoint
from alexnet_cli.errors import CheckpointError
from alexnet_cli.models import build_model


def test_failed_write_keeps_the_previous_file(tmp_path):
    target = tmp_path / "last.pt"
    save_checkpoint(target, {"format_version": 1, "value": torch.tensor([1.0])})
    before = target.read_bytes()

    def half_then_fail(file):
        file.write(b"partial bytes")
        raise OSError(28, "No space left on device")

    with pytest.raises(CheckpointError, match="No space left on device"):
        atomic_write(target, half_then_fail)
    assert target.read_bytes() == before
    assert os.listdir(tmp_path) == ["last.pt"]  # the temp file is gone too


def test_kill_during_write_keeps_the_previous_file(tmp_path):
    target = tmp_path / "last.pt"
    save_checkpoint(target, {"format_version": 1, "epoch": 1})
    code = (
        "import sys, time\n"
        "from alexnet_cli.checkpoint import atomic_write\n"
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
