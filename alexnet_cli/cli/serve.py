"""`alexnet serve`: a trained model behind HTTP (docs/serve.md). The server itself is alexnet_cli.serving,
imported inside the command with the serve extra's packages."""

from __future__ import annotations

from typing import Annotated

import typer

from alexnet_cli.cli.app import boundary
from alexnet_cli.cli.options import (
    CheckpointOption,
    DeviceOption,
    NoCudaOption,
    OldCheckpointArgument,
    PrecisionOption,
    checkpoint,
)
from alexnet_cli.cli.progress import RichObserver
from alexnet_cli.config.settings import ServeConfig
from alexnet_cli.errors import require_extra

# The modules the serve extra installs (python-multipart's is python_multipart: `multipart` is its deprecated
# alias, and the name of an unrelated package too).
SERVE_MODULES = ("fastapi", "uvicorn", "python_multipart", "prometheus_client")


def serve(
    old_weights: OldCheckpointArgument = None,
    weights: CheckpointOption = None,
    pretrained: Annotated[
        bool, typer.Option("--pretrained", help="Serve torchvision's ImageNet weights (1000 classes).")] = False,
    name: Annotated[str, typer.Option(help="The model's name in the protocol's paths: /v2/models/NAME.")
                    ] = ServeConfig.name,
    host: Annotated[str, typer.Option(help="Address to bind; 0.0.0.0 exposes it to the network.")
                    ] = ServeConfig.host,
    port: Annotated[int, typer.Option(help="Port; 0 takes any free one.")] = ServeConfig.port,
    max_batch: Annotated[int, typer.Option(help="Images per forward pass, at most.")] = ServeConfig.max_batch,
    max_wait_ms: Annotated[
        float, typer.Option(help="How long a batch waits for more images after its first, while more are coming.")
    ] = ServeConfig.max_wait_ms,
    max_queue: Annotated[
        int, typer.Option(help="Images admitted and not yet answered; past it, 503 with Retry-After.")
    ] = ServeConfig.max_queue,
    max_upload_mb: Annotated[float, typer.Option(help="Largest upload; past it, 413.")] = ServeConfig.max_upload_mb,
    top_k: Annotated[int, typer.Option(help="Classes /predict lists when ?top_k= is not given.")
                     ] = ServeConfig.top_k,
    max_pixels: Annotated[int | None, typer.Option(
        help="Pixels an upload may decode to (a JPEG's after its draft), checked from its header; past it, 400.",
        show_default="what a quarter of the available memory holds, at most 40,000,000")] = None,
    max_connections: Annotated[int, typer.Option(
        help="Connections open at once; past it, a new one takes the place of the one waited for longest (503 "
             "where all are busy).")] = ServeConfig.max_connections,
    timeout: Annotated[float, typer.Option(help="Seconds a request may take once its body has arrived; past "
                                                "it, 504, and ready turns false while a forward pass runs longer.")
                       ] = ServeConfig.timeout,
    drain_seconds: Annotated[float, typer.Option(help="After SIGTERM, how long the requests in flight get.")
                             ] = ServeConfig.drain_seconds,
    head_timeout: Annotated[float, typer.Option(help="Seconds a request head may take to arrive; past it, the "
                                                     "connection closes.")] = ServeConfig.head_timeout,
    body_timeout: Annotated[float, typer.Option(help="Seconds a body may take to arrive; past it, 408.")
                            ] = ServeConfig.body_timeout,
    refusal_rate: Annotated[float, typer.Option(
        help="Refusals (4xx) a second answered at once, past a burst of 2 s' worth; past it they wait their turn, "
             "so a client looping on bad requests cannot starve good ones. 0: no pacing.")
                            ] = ServeConfig.refusal_rate,
    docs: Annotated[bool, typer.Option("--docs", help="Serve the OpenAPI page at /docs (it loads scripts from a "
                                                      "CDN).")] = False,
    api_key: Annotated[str | None, typer.Option(
        envvar="ALEXNET_API_KEY", show_envvar=True, show_default="none",
        help="A token every request but health and metrics must send as Authorization: Bearer TOKEN.")] = None,
    cors_origin: Annotated[list[str] | None, typer.Option(
        help="An origin a browser page may call the server from, such as https://example.org (repeat it for "
             "more).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No access log line per request.")] = False,
    device: DeviceOption = ServeConfig.device,
    no_cuda: NoCudaOption = False,
    precision: PrecisionOption = ServeConfig.precision,
) -> None:
    """Serve a model over HTTP: a page to try it, /predict, the Open Inference Protocol, metrics (pip install
    'alexnet-cli\\[serve]')."""
    with boundary():
        cfg = ServeConfig(weights=checkpoint(old_weights, weights), pretrained=pretrained, name=name, host=host,
                          port=port, max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue,
                          max_upload_mb=max_upload_mb, top_k=top_k, device=device, no_cuda=no_cuda,
                          precision=precision, max_pixels=max_pixels, max_connections=max_connections,
                          timeout=timeout, drain_seconds=drain_seconds, docs=docs, head_timeout=head_timeout,
                          body_timeout=body_timeout, refusal_rate=refusal_rate, api_key=api_key,
                          cors_origins=tuple(cors_origin or ()), quiet=quiet)
        require_extra("alexnet serve needs its extra", "serve", SERVE_MODULES)
        from alexnet_cli.serving.server import serve as run_server

        run_server(cfg, RichObserver())
