"""`alexnet serve`: load and warm the model, bind, say where it listens, serve until SIGTERM or Ctrl-C.

SIGTERM drains: uvicorn stops accepting connections, answers the requests in flight (for up to
--drain-seconds), runs the app's shutdown, and the process exits 0, as a container's orchestrator expects.
"""

from __future__ import annotations

import signal
import socket
import time
from contextlib import contextmanager
from typing import cast

import uvicorn

from alexnet_cli.config.settings import ServeConfig
from alexnet_cli.data.images import pillow_warnings
from alexnet_cli.errors import ConfigError
from alexnet_cli.observer import Observer
from alexnet_cli.serving.app import create_app
from alexnet_cli.serving.model import ServedModel
from alexnet_cli.serving.service import Service


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the server starts: port 0 takes any free port, and the line that
    says where the server listens names the real one."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # IPPROTO_TCP named, not 0: asyncio sets TCP_NODELAY only on sockets that say so, and without it a
        # response written in two parts waits for the client's delayed ACK (about 40 ms a request).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)  # from now on connections wait in the backlog until uvicorn accepts them
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


@contextmanager
def sigterm_exits_cleanly():
    """uvicorn answers SIGTERM by draining, then raises the signal again under the handler it found. This one
    does nothing, so a drained server returns and the process exits 0. The previous handler comes back after."""
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve(cfg: ServeConfig, observer: Observer) -> None:
    started = time.perf_counter()
    model = ServedModel.load(cfg, observer)
    warm = model.warm_up(cfg.max_batch)
    sock = bind(cfg.host, cfg.port)
    host, port = sock.getsockname()[:2]
    app = create_app(Service(model, cfg))
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                            # uvicorn annotates an int, and waits with asyncio.wait_for, which takes seconds as a float
                            timeout_graceful_shutdown=cast(int, cfg.drain_seconds))
    if cfg.host in ("0.0.0.0", "::"):
        observer.warn("listening on every interface, with no authentication: put a proxy in front of it "
                      "(docs/serve.md)")
    observer.info(f"model '{cfg.name}': {len(model.class_names)} classes, input {model.preprocess.image_size} px, "
                  f"batches of up to {cfg.max_batch} (waiting up to {cfg.max_wait_ms:g} ms), queue of "
                  f"{cfg.max_queue}; warm-up {warm:.1f} s")
    observer.info(f"listening on {url(host, port)} (ready in {time.perf_counter() - started:.1f} s): the page "
                  f"at /, the API at /docs, metrics at /metrics; Ctrl-C or SIGTERM to stop")
    # Pillow's warnings filters are process-wide: set once for the server's life, not per request (images.py)
    with sock, pillow_warnings(), sigterm_exits_cleanly():
        uvicorn.Server(config).run(sockets=[sock])
    observer.info("stopped")
