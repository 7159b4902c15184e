"""`alexnet serve`: load and warm the model, bind, say where it listens, serve until SIGTERM or Ctrl-C.

SIGTERM drains in two steps. First readiness turns false (503 from /v2/health/ready) while the server still
answers, for READY_FALSE_SECONDS, so that a load balancer stops sending before the listener closes. Then
uvicorn stops accepting connections and answers the requests in flight for up to --drain-seconds (under
Kubernetes' default grace period of 30 s); the app's shutdown cancels decodes still queued, and the process
exits 0, as a container's orchestrator expects. A second signal stops at once.

The HTTP parser is pinned to h11 (uvicorn would switch to httptools where it is installed, which has no limit
on a request head's size), with its limit on an incomplete request head, and --max-connections caps the
connections open at once: past it, a new connection takes the place of the one that has waited longest for its
client (GuardedH11) where that is 0.5 s or more, and only where none has waited so long is the new one refused, 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import signal
import socket
import threading
import time
from contextlib import contextmanager
from typing import ClassVar, cast

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from alexnet_cli.config.settings import ServeConfig
from alexnet_cli.data.images import pillow_warnings
from alexnet_cli.errors import ConfigError, first_line
from alexnet_cli.observer import Observer
from alexnet_cli.serving.app import HEAD_LIMIT, create_app
from alexnet_cli.serving.metrics import ACCESS, Metrics
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


CHUNKS_ALLOWED = 64  # chunks of a chunked body before their average size is checked
SEND_SECONDS = 30.0  # the longest an answer may wait for its client to read it (nginx's send_timeout: 60 s)
SEND_BUFFER = 128 * 1024  # bytes of a connection's kernel send buffer (Linux doubles it), in place of autotuning's 4 MB
LONG_WAIT = 0.5  # seconds a connection has waited for its client before it may be closed to make room
PIPELINED = 2  # requests answered in a row that the client had sent before it had its previous answer
SMALLEST_MEAN_CHUNK = 1024  # bytes: a chunked body whose chunks average less is refused


class GuardedH11(H11Protocol):
    """uvicorn's h11 protocol with guards of its own.

    - Past --max-connections, a new connection makes room: the connection that has waited longest for its
      client (for a request's head, for the rest of its body, or to read its answer), if that is LONG_WAIT or
      more, is closed, a body's with a 408. A connection whose request has arrived whole, and whose answer is
      being written, is never closed for room; where no other has waited that long, the new one is answered
      503 and closed. So connections that send half a head, or a body a byte at a time, or that read nothing,
      cannot hold every place: uvicorn's limit alone answered every request 503 while they were open, however
      little they sent. A good client's connection waits for it a millisecond or so between its requests.
    - A client that does not read its answers gets little for it. Each connection's kernel send buffer is
      SEND_BUFFER, not the 4 MB that Linux's autotuning gave a client that read nothing (885 answers of the
      page for one write of requests). A client that pipelines (sends its next requests before it has read
      the answer to the last) gets PIPELINED answers in a row, and then its connection is closed: HTTP/1.1
      lets a server close between requests, and clients that pipeline (few do) send the rest again. And an
      answer that waits for its client to read it (uvicorn holding the rest) gets SEND_SECONDS, and then its
      connection is dropped: such a client held its connection, and its request, for ever.
    - A time limit on each request head, from the connection's start (or the end of its last answer) to the
      head's last byte: a byte at a time does not renew it, as it renews uvicorn's keep-alive timer. A
      connection that has sent no whole head in `head_seconds` is closed. The body has a limit of its own
      (uploads.read_body).
    - A chunked body whose chunks average under SMALLEST_MEAN_CHUNK bytes (past the first CHUNKS_ALLOWED) is
      refused, 400, and the connection closed: h11 spends about 10 us on each chunk, so a megabyte sent in
      chunks of 16 bytes cost 0.65 s of CPU, and 20 MB 13 s.
    - A request that is not valid HTTP/1.1 gets uvicorn's 400 as one line of JSON, naming what h11 found,
      rather than as text."""

    head_seconds = 10.0  # set per server by uvicorn_config (--head-timeout)
    max_connections = 256  # and --max-connections
    metrics: ClassVar[Metrics | None] = None  # and the server's metrics (the connections closed for room)
    # Per server: the connections waiting for their client (a head, or a body), the longest waiting first.
    waiting: ClassVar[dict[GuardedH11, None]] = {}

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._head_timer: asyncio.TimerHandle | None = None
        self._arm()
        self._chunked, self._chunks = False, 0
        self._refusal = ""
        self._waiting_since, self._body_bytes = self.loop.time(), 0
        self._next_event = self.conn.next_event
        self.conn.next_event = self._counted_event  # type: ignore[method-assign]
        self._send_timer: asyncio.TimerHandle | None = None
        self._pipelined = 0
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        self._wait(True)
        self._full = len(self.connections) > self.max_connections and not self._make_room()

    def pause_writing(self) -> None:
        """The client reads no more for now: its answer waits for it, SEND_SECONDS at most."""
        super().pause_writing()
        self._wait(True)
        if self._send_timer is None:
            self._send_timer = self.loop.call_later(SEND_SECONDS, self.transport.abort)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
        if self.cycle is not None and not self.cycle.response_complete and self.conn.their_state is not h11.SEND_BODY:
            self.waiting.pop(self, None)  # its request has arrived whole, and its answer is being written again

    # -- room for a new connection ---------------------------------------------------------------------------

    def _wait(self, waiting: bool) -> None:
        """Keep `waiting` in order. With `waiting`, this connection waits for its client from now on (a head, a
        body) and joins it last; without, it leaves. Either way, while its client is not reading its answers
        (writing paused) it keeps its place: it has waited for its client since then."""
        if self.flow.write_paused and self in self.waiting:
            return
        self.waiting.pop(self, None)
        if waiting or self.flow.write_paused:
            self._waiting_since = self.loop.time()
            self.waiting[self] = None

    def _make_room(self) -> bool:
        """Close the connection, other than this one, that has waited longest for its client, where it has
        waited LONG_WAIT at least; False where none has. A good client's connection waits for it a
        millisecond or so between its requests: it is not closed for one that has just arrived."""
        for connection in self.waiting:
            if connection is not self:
                if self.loop.time() - connection._waiting_since < LONG_WAIT:
                    return False
                connection._evict()
                return True
        return False

    def _evict(self) -> None:
        now = self.loop.time()
        body = self.cycle is not None and not self.cycle.response_complete
        if self.metrics is not None:
            self.metrics.connection_closed("body" if body else "head")
        if body and self.conn.our_state is h11.SEND_RESPONSE:  # its body was arriving, no answer begun: say why
            self._refusal = (f"the upload was the longest waited for ({self._body_bytes:,} bytes in "
                             f"{now - self._waiting_since:.1f} s) when the server needed its connection for "
                             f"another (--max-connections {self.max_connections})")
            if self.cycle is not None:  # the app, waiting for the body, counts the refusal as ours
                self.cycle.scope["alexnet.refused"] = (408, self._refusal)  # type: ignore[typeddict-unknown-key]
            self._answer(408, b"Request Timeout", self._refusal)
        if self.flow.write_paused:  # what it has not read would hold the close for ever
            self.transport.abort()
        else:
            self.transport.close()
        # Its place is free now, not once the loop has run its close.
        self.waiting.pop(self, None)
        self.connections.discard(self)

    def _refuse_full(self) -> None:
        """The answer of a connection that found every place taken, none of them idle for LONG_WAIT: 503, closed
        (written whole, before its request is parsed)."""
        if self.metrics is not None:
            self.metrics.connection_closed("full")
        body = json.dumps({"error": f"the server has --max-connections ({self.max_connections}) connections open, "
                                    f"none of them idle for long: try again"}).encode()
        self.transport.write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\nretry-after: 1\r\nconnection: close\r\n\r\n%s"
                             % (len(body), body))
        self.transport.close()

    def _counted_event(self):
        try:
            event = self._next_event()
        except h11.RemoteProtocolError as exc:
            self._refusal = self._refusal or f"the request is not valid HTTP/1.1 ({first_line(exc)[:100]})"
            raise
        if isinstance(event, h11.Request):
            self._wait(True)  # for its body now, if it has one
            self._body_bytes = 0
            self._chunked = any(name.lower() == b"transfer-encoding" and b"chunked" in value.lower()
                                for name, value in event.headers)
            self._chunks = 0
        elif isinstance(event, h11.EndOfMessage):
            self._wait(False)  # the request has arrived whole
        elif isinstance(event, h11.Data):
            self._body_bytes += len(event.data)
            self._chunks += self._chunked
            if self._chunks > CHUNKS_ALLOWED and self._body_bytes < SMALLEST_MEAN_CHUNK * self._chunks:
                mean = self._body_bytes // self._chunks
                self._refusal = (f"the body came in chunks of {mean} bytes on average; send it with a "
                                 f"Content-Length, or in chunks of {SMALLEST_MEAN_CHUNK} bytes or more")
                if self.cycle is not None:  # the app, waiting for the body, counts the refusal as ours
                    self.cycle.scope["alexnet.refused"] = (400, self._refusal)  # type: ignore[typeddict-unknown-key]
                raise h11.RemoteProtocolError(self._refusal)
        return event

    def _unsupported_upgrade_warning(self) -> None:
        """An Upgrade header is ignored, as HTTP/1.1 lets a server do (the app has no WebSocket route), and the
        request served as it is: uvicorn would log two warnings for each such request, a log a client could
        fill."""

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request h11 cannot take, as {"error": ...}; the connection closes after it."""
        self._answer(400, b"Bad Request", self._refusal or msg)
        self.transport.close()

    def _answer(self, status: int, reason: bytes, message: str) -> None:
        """{"error": message} written by the protocol itself, with Connection: close (the caller closes)."""
        body = json.dumps({"error": message}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")]
        with contextlib.suppress(h11.LocalProtocolError):  # an answer had begun: only the close is left
            for event in (h11.Response(status_code=status, headers=headers, reason=reason), h11.Data(data=body),
                          h11.EndOfMessage()):
                self.transport.write(self.conn.send(event))

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(self.head_seconds, self._head_too_slow)

    def _disarm(self) -> None:
        if getattr(self, "_head_timer", None) is not None:
            self._head_timer.cancel()  # type: ignore[union-attr]
            self._head_timer = None

    def _head_too_slow(self) -> None:
        if (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing():
            self.transport.close()

    def handle_events(self) -> None:
        if self._full:  # at its start: is there room now?
            self._full = len(self.connections) > self.max_connections and not self._make_room()
            if self._full:
                return self._refuse_full()
        super().handle_events()
        if self.cycle is not None and not self.cycle.response_complete:
            self._disarm()  # a whole head has arrived: the request is running

    def on_response_complete(self) -> None:
        # The client's next request is here already (it pipelines): PIPELINED of them in a row, then close.
        self._pipelined = self._pipelined + 1 if self.conn.trailing_data[0] else 0
        if self._pipelined >= PIPELINED and not self.transport.is_closing():
            self.transport.close()
        self._wait(not self.transport.is_closing())  # for the next request's head
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()  # the next request's head gets its own time

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.waiting.pop(self, None)
        if getattr(self, "_send_timer", None) is not None:
            self._send_timer.cancel()  # type: ignore[union-attr]
        super().connection_lost(exc)


READY_FALSE_SECONDS = 2.0  # after SIGTERM: not ready, still serving; then the listener closes


class DrainingServer(uvicorn.Server):
    """uvicorn's server, with SIGTERM's first step: readiness false for a moment before uvicorn's own drain."""

    def __init__(self, config: uvicorn.Config, service: Service, pause: float = READY_FALSE_SECONDS) -> None:
        super().__init__(config)
        self.service, self.pause = service, pause

    def handle_exit(self, sig, frame) -> None:
        if sig == signal.SIGTERM and not self.service.draining:
            self.service.draining = True
            timer = threading.Timer(self.pause, super().handle_exit, (sig, frame))
            timer.daemon = True
            timer.start()
            return
        super().handle_exit(sig, frame)


def uvicorn_config(app, cfg: ServeConfig, metrics: Metrics | None = None) -> uvicorn.Config:
    """How uvicorn runs the app: h11 pinned with its head limits (size, and time: --head-timeout), the
    connection cap (GuardedH11's, in place of uvicorn's limit_concurrency, which would answer 503 to every request
    while the cap's worth of idle connections were open), no
    WebSocket (the app has no such route: an Upgrade header is ignored), the drain's length."""
    protocol = type("GuardedH11", (GuardedH11,), {
        "head_seconds": cfg.head_timeout, "max_connections": cfg.max_connections,
        "metrics": metrics, "waiting": {}})
    return uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", http=protocol, ws="none",
                          h11_max_incomplete_event_size=HEAD_LIMIT,
                          # uvicorn annotates an int, and waits with asyncio.wait_for, which takes seconds as a float
                          timeout_graceful_shutdown=cast(int, cfg.drain_seconds))


def access_log_to_stderr() -> None:
    """The access log's lines (metrics.ACCESS: client, method, path, status, time, request ID) on stderr."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%dT%H:%M:%S"))
    ACCESS.addHandler(handler)
    ACCESS.setLevel(logging.INFO)
    ACCESS.propagate = False


def exposed(host: str) -> bool:
    """Whether binding `host` reaches beyond this machine: every address but a loopback one ("0", "" and a LAN
    address do)."""
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:  # "", "0", a name: it may be anything
        return True


def url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve(cfg: ServeConfig, observer: Observer) -> None:
    started = time.perf_counter()
    model = ServedModel.load(cfg, observer)
    warm = model.warm_up(cfg.max_batch)
    sock = bind(cfg.host, cfg.port)
    host, port = sock.getsockname()[:2]
    service = Service(model, cfg)
    config = uvicorn_config(create_app(service), cfg, service.metrics)
    if exposed(cfg.host):
        guard = "a token (--api-key)" if cfg.api_key else "no authentication"
        observer.warn(f"listening on {cfg.host or 'every interface'}, reachable from other machines, with {guard} "
                      "and no TLS: put a proxy in front of it (docs/serve.md)")
    if not cfg.quiet:
        access_log_to_stderr()
    observer.info(f"model '{cfg.name}': {len(model.class_names)} classes, input {model.preprocess.image_size} px, "
                  f"batches of up to {cfg.max_batch} (waiting up to {cfg.max_wait_ms:g} ms), queue of "
                  f"{cfg.max_queue}; warm-up {warm:.1f} s")
    pacing = (f"refusals past {cfg.refusal_rate:g} a second wait their turn (--refusal-rate)" if cfg.refusal_rate
              else "refusals answered at once, however many (--refusal-rate 0)")
    observer.info(f"uploads decode to at most {model.max_pixels:,} pixels (--max-pixels); at most "
                  f"{cfg.max_connections} connections (--max-connections); {cfg.timeout:g} s a request (--timeout); "
                  f"{pacing}")
    api = "the API at /docs, " if cfg.docs else ""
    observer.info(f"listening on {url(host, port)} (ready in {time.perf_counter() - started:.1f} s): the page "
                  f"at /, {api}metrics at /metrics; Ctrl-C or SIGTERM to stop")
    # Pillow's warnings filters are process-wide: set once for the server's life, not per request (images.py)
    with sock, pillow_warnings(), sigterm_exits_cleanly():
        DrainingServer(config, service).run(sockets=[sock])
    observer.info("stopped")
