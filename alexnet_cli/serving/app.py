"""The FastAPI app: the routers (routes.py), and every refusal as one line of JSON, {"error": ...}, with its
status.

The model, the batcher and the threads are made before the app (server.py loads and warms the model first);
the app's lifespan starts and stops the batcher. Each request is refused at its own boundary: a bad upload,
a full queue or an unknown model is that request's 4xx/503, and the next request is served as before.
"""

import asyncio
import hmac
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from alexnet_cli import __version__
from alexnet_cli.errors import first_line
from alexnet_cli.serving.batching import Overloaded
from alexnet_cli.serving.metrics import CountRequests, printable
from alexnet_cli.serving.routes import ROUTERS
from alexnet_cli.serving.service import Service
from alexnet_cli.serving.uploads import DRAIN_FACTOR, RequestError, discard_body

LOG = logging.getLogger("alexnet.serve")
CLOSE = {"Connection": "close"}  # after a refusal whose body was not read whole
CLIENT_GONE = 499  # nginx's status for a client that closed the connection before its answer


def create_app(service: Service) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    model, cfg = service.model, service.cfg
    # No file path in any answer: the description names the model, not the checkpoint it came from. The
    # OpenAPI page (and its schema) only with --docs: it loads its scripts from a CDN.
    app = FastAPI(title="alexnet serve", version=__version__, lifespan=lifespan,
                  docs_url="/docs" if cfg.docs else None, redoc_url=None,
                  openapi_url="/openapi.json" if cfg.docs else None,
                  description=f"'{cfg.name}': {len(model.class_names)} classes. The page is at /, the Open "
                              f"Inference Protocol under /v2, Prometheus metrics at /metrics.")
    app.state.service = service
    for router in ROUTERS:
        app.include_router(router)
    add_error_handlers(app, service.cfg.max_upload_bytes)
    app.add_middleware(InternalErrors)
    if cfg.api_key:
        app.add_middleware(BearerToken, token=cfg.api_key)
    app.add_middleware(HeadLimit)
    if cfg.refusal_rate:
        app.add_middleware(PaceRefusals, pacer=RefusalPacer(cfg.refusal_rate), counted=service.metrics.paced)
    app.add_middleware(CountRequests, metrics=service.metrics)
    if cfg.cors_origins:  # outermost: a browser's preflight is answered before the token is asked for
        app.add_middleware(CORSMiddleware, allow_origins=list(cfg.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type", "Inference-Header-Content-Length"])
    return app


OPEN_PATHS = ("/v2/health/", "/metrics")  # what an orchestrator and Prometheus reach without the token


class BearerToken:
    """ASGI middleware: with --api-key, every request but health and metrics carries `Authorization: Bearer
    KEY`; others get 401. The comparison takes the same time however much of the key matches."""

    def __init__(self, app, token: str) -> None:
        self.app, self.expected = app, f"Bearer {token}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and not scope["path"].startswith(OPEN_PATHS):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                response = error(401, "this server needs its token: send Authorization: Bearer <--api-key>",
                                 {"WWW-Authenticate": "Bearer"})
                return await response(scope, receive, send)
        return await self.app(scope, receive, send)


HEAD_LIMIT = 16 * 1024  # bytes of request line and headers; h11's own limit holds only a head sent in pieces


class HeadLimit:
    """ASGI middleware: a request whose head (path, query and headers) is over HEAD_LIMIT bytes is refused
    with 431, before any route runs."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            size = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"") + sum(
                len(name) + len(value) + 4 for name, value in scope["headers"])
            if size > HEAD_LIMIT:
                response = error(431, f"the request head is {size:,} bytes, over the limit of {HEAD_LIMIT:,}",
                                 CLOSE)
                return await response(scope, receive, send)
        return await self.app(scope, receive, send)


class RefusalPacer:
    """When each refusal (a 4xx) is answered: a token bucket (the generic cell rate algorithm) of `rate`
    refusals a second, with room for a burst of 2 s' worth at once. Within it a refusal is answered at once;
    past it, refusals are answered one every 1/rate s, in the order they came. One that would wait longer than
    LONGEST waits LONGEST without taking a turn, and its connection is closed after it: so each connection
    past the rate gets at most one refusal every LONGEST s, and however many connections a client opens
    (--max-connections caps them), the server refuses at most rate + connections / LONGEST requests a second."""

    LONGEST = 5.0

    def __init__(self, rate: float) -> None:
        self.interval, self.tolerance = 1.0 / rate, 2.0
        self.due = 0.0  # when the bucket is empty again (its theoretical arrival time)

    def wait(self, now: float) -> tuple[float, bool]:
        """Seconds this refusal waits, and whether its connection closes after it."""
        due = max(self.due, now)
        wait = due - self.tolerance - now
        if wait > self.LONGEST:
            return self.LONGEST, True
        self.due = due + self.interval
        return max(0.0, wait), False


class PaceRefusals:
    """ASGI middleware: every 4xx goes through RefusalPacer (--refusal-rate), asleep, and the next request on
    its connection is read no sooner (uvicorn reads one request at a time on a connection). A client that loops
    on bad requests gets that rate's worth of the CPU, and the good requests the rest. Answers of 2xx and 5xx
    are never held, nor a 499 (the client has gone)."""

    def __init__(self, app, pacer: RefusalPacer, counted: Callable[[str], None]) -> None:
        self.app, self.pacer, self.counted = app, pacer, counted

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def paced(message):
            if message["type"] == "http.response.start" and 400 <= message["status"] < CLIENT_GONE:
                wait, close = self.pacer.wait(asyncio.get_running_loop().time())
                if wait:
                    self.counted("closed" if close else "waited")
                    await asyncio.sleep(wait)
                headers = message.get("headers", [])
                if close and not any(name.lower() == b"connection" for name, _ in headers):
                    message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        return await self.app(scope, receive, paced)


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status, headers=headers)


def add_error_handlers(app: FastAPI, limit: int) -> None:
    """Every refusal as one line of JSON. A refused body that was not read is drained (up to a bound), so that
    a client still sending sees the status rather than a reset."""

    @app.exception_handler(RequestError)
    async def refused(request: Request, exc: RequestError) -> JSONResponse:
        whole = exc.drain and await discard_body(request, DRAIN_FACTOR * limit)
        return error(exc.status, exc.message, {**exc.headers, **({} if whole else CLOSE)})

    @app.exception_handler(Overloaded)
    async def overloaded(request: Request, exc: Overloaded) -> JSONResponse:
        whole = await discard_body(request, limit)
        return error(503, str(exc), {"Retry-After": str(exc.retry_after), **({} if whole else CLOSE)})

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return error(exc.status_code, exc.detail, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(part) for part in e.get('loc', ())[1:])}: {e.get('msg')}"
                             for e in exc.errors())
        return error(422, problems or "invalid request")

    @app.exception_handler(ClientDisconnect)
    async def gone(request: Request, exc: ClientDisconnect) -> Response:
        """The client went away mid-upload: its fault, logged at info and counted as 499, not as a 5xx. Or the
        protocol refused the body and closed the connection (server.GuardedH11): counted as its 400."""
        refused = request.scope.get("alexnet.refused")
        if refused is not None:
            return error(*refused)  # already sent by the protocol; this one only counts it
        LOG.info("%s %s: the client disconnected before its request arrived", printable(request.method),
                 printable(request.url.path[:200]))
        return Response(status_code=CLIENT_GONE)



class InternalErrors:
    """ASGI middleware: a fault of the server's own (a forward pass that failed, a bug) is logged whole and
    answered 500 without its internals, and goes no further, so the connection stays open for the client's
    next request (Starlette's last-resort handler re-raises, and uvicorn then closes it). The batcher goes on
    with the next batch."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def send_started(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_started)
        except Exception as exc:
            LOG.error("%s %s failed: %s: %s", printable(scope["method"]), printable(scope["path"][:200]),
                      type(exc).__name__, first_line(exc), exc_info=exc)
            if started:
                raise
            response = error(500, "internal error: the server could not answer this request (its log says why)")
            await response(scope, receive, send)
