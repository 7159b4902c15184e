"""The server's routes, one APIRouter per concern: the page, /predict, the Open Inference Protocol (KServe v2),
health, and metrics. Each handler takes the Service that the app holds (`app.state.service`), and refuses a
bad request by raising RequestError, which the app answers as one line of JSON."""

from importlib import resources
from typing import Annotated

# Imported at the top: FastAPI reads the handlers' annotations (Request, Query, Depends) from this module's
# globals. Only the serve command imports this module.
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from alexnet_cli import __version__
from alexnet_cli.serving import protocol
from alexnet_cli.serving.service import Service
from alexnet_cli.serving.uploads import IMAGE_FIELD, RequestError, image_bytes, read_body

# The request body /predict takes, for the OpenAPI docs: the handler reads it itself, to refuse it on its own
# terms (size, type, field) rather than with the framework's validation error.
PREDICT_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": [IMAGE_FIELD],
                                       "properties": {IMAGE_FIELD: {"type": "string", "format": "binary"}}}},
    "image/*": {"schema": {"type": "string", "format": "binary"}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
}}}


def the_service(request: Request) -> Service:
    return request.app.state.service


Served = Annotated[Service, Depends(the_service)]

page = APIRouter()
predict = APIRouter()
inference_protocol = APIRouter(prefix="/v2")
health = APIRouter(prefix="/v2/health")
metrics = APIRouter()


PAGE = resources.files("alexnet_cli.serving").joinpath("page.html").read_text(encoding="utf-8")


@page.get("/", response_class=HTMLResponse, include_in_schema=False)
async def index() -> HTMLResponse:
    return HTMLResponse(PAGE)


@predict.post("/predict", openapi_extra=PREDICT_BODY)
async def predict_one(request: Request, service: Served,
                      top_k: int | None = Query(None, ge=1, description="How many classes to list (default: "
                                                                           "the server's --top-k)."),
                      explain: bool = Query(False, description="Add the Grad-CAM overlay, a PNG data URL.")
                      ) -> JSONResponse:
    """One image, as a multipart `image` file or as the body: predict --json's record for it."""
    ticket = service.admit()
    try:
        data = await image_bytes(request, service.cfg.max_upload_bytes)
        return JSONResponse(await service.predict(ticket, data, top_k or service.cfg.top_k, explain))
    finally:
        ticket.close()


@metrics.get("/metrics", include_in_schema=False)
async def exposition(service: Served) -> Response:
    body, content_type = service.metrics.exposition()
    return Response(body, media_type=content_type)


@health.get("/live")
async def live() -> dict[str, bool]:
    return {"live": True}


@health.get("/ready")
async def ready() -> dict[str, bool]:
    return {"ready": True}


def known(service: Service, name: str, version: str = "1") -> None:
    """The protocol's model and version, or 404."""
    served = service.cfg.name
    if name != served:
        raise RequestError(404, f"unknown model {name[:60]!r}: this server serves {served!r}")
    if version != "1":
        raise RequestError(404, f"unknown version {version[:20]!r} of {served!r}: it has version '1'")


@inference_protocol.get("")
async def server_metadata() -> dict[str, object]:
    return {"name": "alexnet-cli", "version": __version__, "extensions": ["binary_tensor_data"]}


# Each model route also answers under /versions/1, the protocol's path for a model's one version.
@inference_protocol.get("/models/{name}")
@inference_protocol.get("/models/{name}/versions/{version}")
async def model_metadata(service: Served, name: str, version: str = "1") -> dict[str, object]:
    known(service, name, version)
    model = service.model
    return protocol.model_metadata(service.cfg.name, len(model.class_names), model.metadata())


@inference_protocol.get("/models/{name}/ready")
@inference_protocol.get("/models/{name}/versions/{version}/ready")
async def model_ready(service: Served, name: str, version: str = "1") -> dict[str, object]:
    known(service, name, version)
    return {"name": service.cfg.name, "ready": True}


@inference_protocol.post("/models/{name}/infer")
@inference_protocol.post("/models/{name}/versions/{version}/infer")
async def infer(request: Request, service: Served, name: str, version: str = "1") -> Response:
    """Images as the BYTES input `image`: base64 in JSON, or raw with the binary tensor data extension."""
    known(service, name, version)
    if request.headers.get("content-encoding", "identity").lower() != "identity":
        raise RequestError(415, "compressed requests are not supported: send them without Content-Encoding")
    cfg, model = service.cfg, service.model
    ticket = service.admit()
    try:
        body = await read_body(request, cfg.max_upload_bytes)
        parsed = protocol.parse_infer(body, request.headers.get(protocol.HEADER_LENGTH), cfg.max_queue)
        ticket.grow(len(parsed.images) - 1)
        outputs = await service.classify(ticket, parsed.images)
    finally:
        ticket.close()
    probabilities = [output.probabilities.tolist() for output in outputs]
    labels = [model.class_names[int(output.probabilities.argmax())] for output in outputs]
    content, headers = protocol.infer_response(cfg.name, parsed, labels, probabilities)
    return Response(content, headers=headers)


ROUTERS = (page, predict, inference_protocol, health, metrics)
