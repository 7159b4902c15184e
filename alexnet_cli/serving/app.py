"""The FastAPI app: the routers (routes.py), and every refusal as one line of JSON, {"error": ...}, with its
status.

The model, the batcher and the threads are made before the app (server.py loads and warms the model first);
the app's lifespan starts and stops the batcher. Each request is refused at its own boundary: a bad upload,
a full queue or an unknown model is that request's 4xx/503, and the next request is served as before.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from alexnet_cli import __version__
from alexnet_cli.errors import first_line
from alexnet_cli.serving.batching import Overloaded
from alexnet_cli.serving.metrics import CountRequests
from alexnet_cli.serving.routes import ROUTERS
from alexnet_cli.serving.service import Service
from alexnet_cli.serving.uploads import DRAIN_FACTOR, RequestError, discard_body


def create_app(service: Service) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    model = service.model
    app = FastAPI(title="alexnet serve", version=__version__, lifespan=lifespan,
                  description=f"{model.source}: {len(model.class_names)} classes. The page is at /, the Open "
                              f"Inference Protocol under /v2, Prometheus metrics at /metrics.")
    app.state.service = service
    for router in ROUTERS:
        app.include_router(router)
    add_error_handlers(app, service.cfg.max_upload_bytes)
    app.add_middleware(CountRequests, metrics=service.metrics)
    return app


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status, headers=headers)


def add_error_handlers(app: FastAPI, limit: int) -> None:
    """Every refusal as one line of JSON. A refused body that was not read is drained (up to a bound), so that
    a client still sending sees the status rather than a reset."""

    @app.exception_handler(RequestError)
    async def refused(request: Request, exc: RequestError) -> JSONResponse:
        await discard_body(request, DRAIN_FACTOR * limit)
        return error(exc.status, exc.message, exc.headers)

    @app.exception_handler(Overloaded)
    async def overloaded(request: Request, exc: Overloaded) -> JSONResponse:
        await discard_body(request, limit)
        return error(503, str(exc), {"Retry-After": str(exc.retry_after)})

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return error(exc.status_code, exc.detail, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(part) for part in e.get('loc', ())[1:])}: {e.get('msg')}"
                             for e in exc.errors())
        return error(422, problems or "invalid request")

    @app.exception_handler(Exception)
    async def failed(request: Request, exc: Exception) -> JSONResponse:
        return error(500, f"internal error: {type(exc).__name__}: {first_line(exc)}")
