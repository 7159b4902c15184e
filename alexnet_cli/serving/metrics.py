"""Prometheus metrics at GET /metrics: requests by route and status, their latency, the batch sizes the
forward pass ran at, and the queue's depth. Each app has its own registry: nothing process-wide.

Routes are labelled by their template (/v2/models/{name}/infer), never by the path a client sent, and methods
by a fixed set (any other is "other"), so a client cannot grow the number of series; a path that matches no
route counts as "unmatched".
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self, queue_depth: Callable[[], int], max_queue: int) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("alexnet_requests", "HTTP requests answered, by route, method and status.",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("alexnet_request_duration_seconds", "Time from a request's arrival to its "
                                 "answer, by route.", ["route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("alexnet_batch_size", "Images per forward pass.", buckets=BATCH_BUCKETS,
                                    registry=self.registry)
        self.batch_seconds = Histogram("alexnet_batch_duration_seconds", "Time of one forward pass.",
                                       buckets=LATENCY_BUCKETS, registry=self.registry)
        Gauge("alexnet_queue_depth", "Images admitted and not yet answered (being read, decoded, waiting or in "
              "the forward pass).", registry=self.registry).set_function(queue_depth)
        Gauge("alexnet_queue_limit", "--max-queue: past it, requests are refused with 503.",
              registry=self.registry).set(max_queue)
        self.queue_wait = Histogram("alexnet_queue_wait_seconds", "Time from an image's decode to the start of "
                                    "its forward pass.", buckets=LATENCY_BUCKETS, registry=self.registry)
        self.decode_seconds = Histogram("alexnet_decode_duration_seconds", "Time to decode one upload.",
                                        buckets=LATENCY_BUCKETS, registry=self.registry)
        self.refusals_paced = Counter("alexnet_refusals_paced", "Refusals (4xx) past --refusal-rate, held "
                                      "back before their answer: 'waited' for their turn, or 'closed' (too many "
                                      "waiting: held the longest wait, then the connection closed).", ["outcome"],
                                      registry=self.registry)
        for outcome in ("waited", "closed"):
            self.refusals_paced.labels(outcome)  # at 0 from the start
        self.connections_closed = Counter("alexnet_connections_closed", "Connections closed at --max-connections: "
                                          "the longest waited for, to make room for a new one, while it waited "
                                          "for a request's 'head' (or to have its answer read) or its 'body' "
                                          "(answered 408); or the new one, answered 503, where the server was "
                                          "'full': no other had waited 0.5 s for its client.", ["waiting"],
                                          registry=self.registry)
        for waiting in ("head", "body", "full"):
            self.connections_closed.labels(waiting)
        # The process's memory, open files and CPU time (process_resident_memory_bytes, process_open_fds, ...).
        ProcessCollector(registry=self.registry)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def paced(self, outcome: str) -> None:
        self.refusals_paced.labels(outcome).inc()

    def connection_closed(self, waiting: str) -> None:
        self.connections_closed.labels(waiting).inc()

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


ACCESS = logging.getLogger("alexnet.access")  # one line a request; serve prints it unless --quiet
_UNPRINTABLE = re.compile(r'[\x00-\x1f\x7f-\x9f"\\]')


def printable(text: str) -> str:
    """`text` (a path a client sent, decoded) fit for one line of a log: control characters, quotes and
    backslashes as \\xHH, as nginx writes them, so that a client can neither begin a line of its own (%0a)
    nor send the terminal escape codes (%1b)."""
    return _UNPRINTABLE.sub(lambda match: f"\\x{ord(match.group()):02x}", text)


REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")  # an incoming X-Request-ID is echoed only if it looks like one


class CountRequests:
    """ASGI middleware (app.add_middleware(CountRequests, metrics=...)) that counts and times every request,
    gives it a request ID (the client's X-Request-ID, or a new one), sends that ID back, and logs one line."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), 500  # 500 unless a response starts
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if REQUEST_ID.fullmatch(given) else uuid.uuid4().hex

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"x-request-id", request_id.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            seconds = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", "unmatched")
            method = scope["method"] if scope["method"] in METHODS else "other"
            self.metrics.requests.labels(route, method, str(status)).inc()
            self.metrics.latency.labels(route).observe(seconds)
            client = (scope.get("client") or ("-",))[0]
            ACCESS.info('%s "%s %s" %d %.1f ms id=%s', client, printable(scope["method"][:16]),
                        printable(scope["path"][:200]), status, seconds * 1000, request_id)
