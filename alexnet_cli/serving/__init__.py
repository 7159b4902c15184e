"""`alexnet serve`: a trained model behind HTTP (docs/serve.md).

    batching.py   the queue that gathers concurrent requests into one forward pass (no web framework)
    model.py      the served model: decode an upload, run a batch, make the records (no web framework)
    service.py    what every endpoint does with images: admit, decode on threads, batch, answer
    uploads.py    a request's body to an image's bytes, within the limits
    protocol.py   the Open Inference Protocol (KServe v2): its JSON, and Triton's binary tensor extension
    metrics.py    Prometheus metrics, and the middleware that counts every request
    routes.py     one APIRouter per concern: the page, /predict, the protocol, health, metrics
    app.py        the FastAPI app: its routers, and every error as one line of JSON
    server.py     uvicorn on a bound socket, SIGTERM that drains and exits 0
    page.html     the page at /: one file, no build step, nothing from a CDN
"""
