"""The serving tests' fixtures: a checkpoint whose answers differ per image, and a server on it."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from support.serving import Server


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """The suite's small architecture with 64 classes, its last layer scaled up so that each image gets answers
    of its own (a trained 2-class model answers many images alike): a mix-up between callers shows."""
    import torch
    from alexnet_test_arch import TEST_ARCH

    from alexnet_cli.artifacts.checkpoint import Checkpoint
    from alexnet_cli.data.preprocess import Preprocess
    from alexnet_cli.models.alexnet import build_model

    torch.manual_seed(0)
    model = build_model(TEST_ARCH, num_classes=64)
    state = {name: value * 40 if name.endswith(("6.weight", "6.bias")) else value
             for name, value in model.state_dict().items()}
    path = tmp_path_factory.mktemp("serve") / "best.pt"
    Checkpoint(arch=TEST_ARCH, class_names=tuple(f"class-{i:02d}" for i in range(64)),
               preprocess=Preprocess.for_arch(67, 227), dropout=0.5, state_dict=state).save(path)
    return path


@pytest.fixture(scope="module")
def server(checkpoint):
    running = Server(checkpoint)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as http:
        yield http
