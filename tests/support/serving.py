"""alexnet serve under test: its app under uvicorn in a thread, distinct images, and the one-line refusal."""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path

import httpx

from alexnet_cli.config.settings import ServeConfig

UPLOAD_MB = 1  # the servers under test refuse uploads over 1 MB, so that the 413s stay cheap


def png_bytes(seed: int, size: int | tuple[int, int] = 90) -> bytes:
    """A distinct image per seed: a random colour field with a random rectangle."""
    import torch
    from PIL import Image

    width, height = (size, size) if isinstance(size, int) else size
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (height, width, 3), generator=generator, dtype=torch.uint8)
    top, left = (int(v) for v in torch.randint(0, max(1, min(width, height) // 2), (2,), generator=generator))
    side = max(1, min(width, height) // 3)
    pixels[top:top + side, left:left + side] = torch.randint(0, 256, (3,), generator=generator, dtype=torch.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels.numpy()).save(buffer, format="PNG")
    return buffer.getvalue()


class Server:
    """alexnet serve's app under uvicorn, in a thread of this process, on a port of its own."""

    def __init__(self, checkpoint: Path, **options) -> None:

        from alexnet_cli.observer import SilentObserver
        from alexnet_cli.serving.app import create_app
        from alexnet_cli.serving.model import ServedModel
        from alexnet_cli.serving.server import DrainingServer, bind, uvicorn_config
        from alexnet_cli.serving.service import Service

        self.cfg = ServeConfig(**{"weights": checkpoint, "port": 0, "max_upload_mb": UPLOAD_MB, "device": "cpu",
                                  "precision": "fp32", **options})
        self.model = ServedModel.load(self.cfg, SilentObserver())
        self.model.warm_up(self.cfg.max_batch)
        self.service = Service(self.model, self.cfg)
        sock = bind("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        config = uvicorn_config(create_app(self.service), self.cfg, self.service.metrics)
        self.server = DrainingServer(config, self.service)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def one_line_error(response: httpx.Response) -> str:
    """The refusal's body: exactly {"error": "..."} on one line."""
    text = response.text.strip()
    assert "\n" not in text, text
    body = json.loads(text)
    assert list(body) == ["error"] and isinstance(body["error"], str) and body["error"], body
    return body["error"]
