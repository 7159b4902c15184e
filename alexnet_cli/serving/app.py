"""The FastAPI app: the routes, and every refusal as one line of JSON, {"error": ...}, with its status.

The model, the batcher and the threads are made before the app (server.py loads and warms the model first);
the app's lifespan starts and stops the batcher. Each request is refused at its own boundary: a bad upload,
a full queue or an unknown model is that request's 4xx/503, and the next request is served as before.
"""

from contextlib import asynccontextmanager
from importlib import resources
from typing import TYPE_CHECKING, Optional

# Imported here, not inside create_app: FastAPI reads the handlers' annotations (Request, Query) from this
# module's globals. Only the serve command imports this module.
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException

from alexnet_cli import __version__
from alexnet_cli.serving import protocol
from alexnet_cli.serving.batching import Overloaded
from alexnet_cli.serving.metrics import CountRequests
from alexnet_cli.serving.uploads import DRAIN_FACTOR, IMAGE_FIELD, RequestError, discard_body, image_bytes, read_body

if TYPE_CHECKING:
    from alexnet_cli.serving.service import Service

# The request body /predict takes, for the OpenAPI docs: the handler reads it itself, to refuse it on its own
# terms (size, type, field) rather than with the framework's validation error.
PREDICT_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": [IMAGE_FIELD],
                                       "properties": {IMAGE_FIELD: {"type": "string", "format": "binary"}}}},
    "image/*": {"schema": {"type": "string", "format": "binary"}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
}}}


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def create_app(service: "Service") -> FastAPI:
    cfg, model = service.cfg, service.model
    limit = cfg.max_upload_bytes
    page = resources.files("alexnet_cli.serving").joinpath("page.html").read_text(encoding="utf-8")

    @asynccontextmanager
    async def lifespan(app):
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(title="alexnet serve", version=__version__, lifespan=lifespan,
                  description=f"{model.source}: {len(model.class_names)} classes. The page is at /, the Open "
                              f"Inference Protocol under /v2, Prometheus metrics at /metrics.")

    def error(status: int, message: str, headers: Optional[dict[str, str]] = None) -> JSONResponse:
        return JSONResponse({"error": _one_line(message)}, status_code=status, headers=headers)

    @app.exception_handler(RequestError)
    async def refused(request: Request, exc: RequestError):
        await discard_body(request, DRAIN_FACTOR * limit)
        return error(exc.status, exc.message, exc.headers)

    @app.exception_handler(Overloaded)
    async def overloaded(request: Request, exc: Overloaded):
        await discard_body(request, limit)
        return error(503, str(exc), {"Retry-After": str(exc.retry_after)})

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        return error(exc.status_code, exc.detail, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(part) for part in e.get('loc', ())[1:])}: {e.get('msg')}"
                             for e in exc.errors())
        return error(422, problems or "invalid request")

    @app.exception_handler(Exception)
    async def failed(request: Request, exc: Exception):
        first = (str(exc).strip().splitlines() or [""])[0]
        return error(500, f"internal error: {type(exc).__name__}: {first}")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index():
        return HTMLResponse(page)

    @app.post("/predict", openapi_extra=PREDICT_BODY)
    async def predict(request: Request,
                      top_k: Optional[int] = Query(None, ge=1, description=f"How many classes to list (default "
                                                                       f"{cfg.top_k})."),
                      explain: bool = Query(False, description="Add the Grad-CAM overlay, a PNG data URL.")):
        """One image, as a multipart `image` file or as the body: predict --json's record for it."""
        ticket = service.admit()
        try:
            data = await image_bytes(request, limit)
            return JSONResponse(await service.predict(ticket, data, top_k or cfg.top_k, explain))
        finally:
            ticket.close()

    @app.get("/metrics", include_in_schema=False)
    async def metrics():
        body, content_type = service.metrics.exposition()
        return Response(body, media_type=content_type)

    # -- the Open Inference Protocol (KServe v2) ------------------------------------------------------------

    def known(name: str, version: str = "1") -> None:
        if name != cfg.name:
            raise RequestError(404, f"unknown model {name[:60]!r}: this server serves {cfg.name!r}")
        if version != "1":
            raise RequestError(404, f"unknown version {version[:20]!r} of {cfg.name!r}: it has version '1'")

    @app.get("/v2")
    async def server_metadata():
        return {"name": "alexnet-cli", "version": __version__, "extensions": ["binary_tensor_data"]}

    @app.get("/v2/health/live")
    async def live():
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready():
        return {"ready": True}

    # Each model route also answers under /versions/1, the protocol's path for a model's one version.
    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    async def model_metadata(name: str, version: str = "1"):
        known(name, version)
        return protocol.model_metadata(cfg.name, len(model.class_names), model.metadata())

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(name: str, version: str = "1"):
        known(name, version)
        return {"name": cfg.name, "ready": True}

    @app.post("/v2/models/{name}/infer")
    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer(request: Request, name: str, version: str = "1"):
        """Images as the BYTES input `image`: base64 in JSON, or raw with the binary tensor data extension."""
        known(name, version)
        if request.headers.get("content-encoding", "identity").lower() != "identity":
            raise RequestError(415, "compressed requests are not supported: send them without Content-Encoding")
        ticket = service.admit()
        try:
            body = await read_body(request, limit)
            parsed = protocol.parse_infer(body, request.headers.get(protocol.HEADER_LENGTH), cfg.max_queue)
            ticket.grow(len(parsed.images) - 1)
            outputs = await service.classify(ticket, parsed.images)
        finally:
            ticket.close()
        probabilities = [output.probabilities.tolist() for output in outputs]
        labels = [model.class_names[int(output.probabilities.argmax())] for output in outputs]
        content, headers = protocol.infer_response(cfg.name, parsed, labels, probabilities)
        return Response(content, headers=headers)

    app.add_middleware(CountRequests, metrics=service.metrics)
    return app
