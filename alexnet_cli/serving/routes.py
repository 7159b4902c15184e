"""The server's routes, one APIRouter per concern: the page, /predict, the Open Inference Protocol (KServe v2),
health, and metrics. Each handler takes the Service that the app holds (`app.state.service`), and refuses a
bad request by raising RequestError, which the app answers as one line of JSON."""

from importlib import resources
from typing import Annotated

# Imported at the top: FastAPI reads the handlers' annotations (Request, Query, Depends) from this module's
# globals. Only the serve command imports this module.
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

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
    classes = len(service.model.class_names)
    if top_k is not None and top_k > classes:
        raise RequestError(400, f"top_k={top_k}: the model has {classes} classes")
    if explain and service.model.predictor.onnx is not None:
        raise RequestError(400, f"explain=1 draws Grad-CAM from the model's gradients, which this server's "
                                f"{service.model.predictor.precision} ONNX model does not have")
    # The body first (within the bytes of uploads the server holds), then a place in the queue.
    async with service.bodies.hold() as take:
        data = await image_bytes(request, service.cfg.max_upload_bytes, service.cfg.body_timeout, take)
        ticket = service.admit()
        try:
            return JSONResponse(await service.within_timeout(
                service.predict(ticket, data, top_k or service.cfg.top_k, explain)))
        finally:
            ticket.close()


@metrics.get("/metrics", include_in_schema=False)
async def exposition(service: Served) -> Response:
    body, content_type = service.metrics.exposition()
    return Response(body, media_type=content_type)


@health.get("/live")
async def live(service: Served) -> JSONResponse:
    """200 while the server can serve or recover; 503 when it cannot (its batcher has died): restart it."""
    alive = service.live()
    return JSONResponse({"live": alive}, status_code=200 if alive else 503)


@health.get("/ready")
async def ready(service: Served) -> JSONResponse:
    """200 when it takes traffic; 503, with the reason, while draining, or with a dead or stuck batcher."""
    is_ready, why = service.ready()
    return JSONResponse({"ready": is_ready, **({"reason": why} if why else {})}, status_code=200 if is_ready else 503)


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
    platform = "onnxruntime_onnx" if model.predictor.onnx is not None else "pytorch"  # Triton's platform names
    return protocol.model_metadata(service.cfg.name, len(model.class_names), model.metadata(), platform)


@inference_protocol.get("/models/{name}/ready")
@inference_protocol.get("/models/{name}/versions/{version}/ready")
async def model_ready(service: Served, name: str, version: str = "1") -> JSONResponse:
    known(service, name, version)
    is_ready, why = service.ready()
    return JSONResponse({"name": service.cfg.name, "ready": is_ready, **({"reason": why} if why else {})},
                        status_code=200 if is_ready else 503)


@inference_protocol.post("/models/{name}/infer")
@inference_protocol.post("/models/{name}/versions/{version}/infer")
async def infer(request: Request, service: Served, name: str, version: str = "1") -> Response:
    """Images as the BYTES input `image`: base64 in JSON, or raw with the binary tensor data extension."""
    known(service, name, version)
    if request.headers.get("content-encoding", "identity").lower() != "identity":
        raise RequestError(415, "compressed requests are not supported: send them without Content-Encoding")
    cfg, model = service.cfg, service.model
    # The body first (within the bytes of uploads the server holds), then a place in the queue: a slow sender
    # holds a connection (--max-connections), never a queue slot. Parsing runs on a thread, within bounds
    # checked before it (protocol.parse_infer).
    async with service.bodies.hold() as take:
        body = await read_body(request, cfg.max_upload_bytes, cfg.body_timeout, take)
        parsed = await run_in_threadpool(protocol.parse_infer, body, request.headers.get(protocol.HEADER_LENGTH),
                                         cfg.max_batch)
        del body  # the images are in `parsed` now: the body need not wait in the queue with them
        ticket = service.admit(len(parsed.images))
        try:
            outputs = await service.within_timeout(service.classify(ticket, parsed.images))
        finally:
            ticket.close()
    probabilities = [output.probabilities.tolist() for output in outputs]
    labels = [model.class_names[int(output.probabilities.argmax())] for output in outputs]
    content, headers = protocol.infer_response(cfg.name, parsed, labels, probabilities)
    return Response(content, headers=headers)


ROUTERS = (page, predict, inference_protocol, health, metrics)
