"""A request's body to the bytes of one image, refused at its own boundary when it cannot be one.

Each refusal is a RequestError: a status and one line for {"error": ...}. The body is read within
--max-upload-mb: a declared Content-Length over it is refused before a byte is read, and a body without one
(chunked) is counted as it arrives. Nothing a client sends (a file name, a field, a header) is used as a path:
the image's bytes stay in memory, and the file name of a multipart part is ignored.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import asynccontextmanager

from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

# The multipart field that carries the image: curl -F image=@cat.jpg
IMAGE_FIELD = "image"
RAW_TYPES = ("application/octet-stream",)  # besides image/*
# A body refused for its size is still read, up to this many times the limit, and thrown away: a client that
# sends its whole body before it reads the answer (most do) then sees the 413 instead of a reset connection.
DRAIN_FACTOR = 2
BODY_SECONDS = 30.0  # the longest a body may take to arrive, where the caller gives no --body-timeout
DISCARD_SECONDS = 5.0  # the longest a refused body is read for, to be thrown away


class RequestError(Exception):
    """A refusal: its status, its one line, its headers; `drain`: read the rest of the body (and throw it away)
    before answering, so that a client still sending sees the answer, and the connection can be kept."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None, drain: bool = True) -> None:
        super().__init__(message)
        self.status, self.message, self.headers, self.drain = status, message, headers or {}, drain


UPLOADS_HELD = 16  # times --max-upload-mb: the bytes of bodies held in memory at once, server-wide
SMALL_BODY = 1024 * 1024  # a photo's body is under it: the last quarter of the bodies' room (at most 64 MB) is theirs


class BodyBudget:
    """The bytes of request bodies held in memory at once, across the server: each request takes them as its
    body arrives and gives them back when it is answered. Past `limit`, the request is refused, 503 with
    Retry-After, and its connection closed without the rest of its body being read. A body is read whole
    before its request takes a place in the queue (so that a slow sender holds no place), and without this,
    --max-connections bodies of --max-upload-mb (5 GB with the defaults) could be held at once. The last
    `reserve` bytes are for bodies of SMALL_BODY or less, so that uploads of --max-upload-mb in a loop cannot
    take the room of the photos."""

    def __init__(self, limit: int) -> None:
        self.limit, self.held = limit, 0
        self.reserve = min(64 * SMALL_BODY, limit // 4)

    @asynccontextmanager
    async def hold(self) -> AsyncIterator[Callable[[int], None]]:
        """take(size) for one request's body; what it took is given back when the block ends."""
        taken = 0

        def take(size: int) -> None:
            nonlocal taken
            room = self.limit if taken + size <= SMALL_BODY else self.limit - self.reserve
            if self.held + size > room:
                raise RequestError(503, f"the server holds {_megabytes(self.held)} of uploads, its limit of "
                                        f"{_megabytes(room)} for {'this one' if room < self.limit else 'any'} "
                                        f"({UPLOADS_HELD} x --max-upload-mb): try again", {"Retry-After": "1"},
                                   drain=False)  # not read at all: the connection closes
            self.held += size
            taken += size

        try:
            yield take
        finally:
            self.held -= taken


def _megabytes(size: int) -> str:
    return f"{size / 1024 / 1024:.3g} MB"


def declared_length(request: Request) -> int | None:
    value = request.headers.get("content-length")
    if value is None:
        return None
    if not value.strip().isascii() or not value.strip().isdigit():
        raise RequestError(400, f"Content-Length is not a number: {value[:40]!r}")
    return int(value)


async def discard_body(request: Request, limit: int) -> bool:
    """Read and drop what is left of the body, up to `limit` bytes and DISCARD_SECONDS, so that the answer
    reaches a client that is still sending. Returns whether the whole body was read: where it was not, the
    answer closes the connection (the rest of the body must not be read as the next request)."""
    try:
        declared = declared_length(request)
    except RequestError:
        return False
    if declared is not None and declared > limit:
        return False

    async def drop() -> bool:
        read = 0
        async for chunk in request.stream():
            read += len(chunk)
            if read > limit:
                return False
        return True

    try:
        return await asyncio.wait_for(drop(), DISCARD_SECONDS)
    except RuntimeError:  # Starlette's "Stream consumed": the handler read it all already
        return True
    except Exception:  # too slow, or the client went away
        return False


async def read_body(request: Request, limit: int, seconds: float | None = None,
                    take: Callable[[int], None] | None = None) -> bytes:
    """The whole body, or 413 past `limit` bytes, or 408 when it takes longer than `seconds` to arrive (a
    request holds its place in the queue while its body arrives: a slow sender must not hold it for ever).
    Each chunk is taken from a BodyBudget as it arrives, with `take`."""
    declared = declared_length(request)
    too_large = RequestError(413, f"the upload is over the limit of {_megabytes(limit)} (--max-upload-mb)")
    if declared is not None and declared > limit:
        too_large.message = (f"the upload is {_megabytes(declared)}, over the limit of {_megabytes(limit)} "
                             f"(--max-upload-mb)")
        raise too_large
    seconds = BODY_SECONDS if seconds is None else seconds

    async def collect() -> bytes:
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large
            if take is not None:
                take(len(chunk))
            chunks.append(chunk)
        return b"".join(chunks)

    # One deadline for the whole body, not one per chunk: a large upload arrives in many chunks, and a
    # wait_for per chunk (a task each) was a cost every upload paid, good or hostile.
    try:
        return await asyncio.wait_for(collect(), seconds)
    except asyncio.TimeoutError:
        raise RequestError(408, f"the upload took longer than {seconds:g} s to arrive") from None


async def _one_chunk(body: bytes) -> AsyncGenerator[bytes, None]:
    yield body


async def image_bytes(request: Request, limit: int, seconds: float | None = None,
                      take: Callable[[int], None] | None = None) -> bytes:
    """The image of a POST /predict: a multipart form with an `image` file (curl -F image=@cat.jpg), or the
    image's own bytes as the body (Content-Type image/* or application/octet-stream)."""
    content_type = request.headers.get("content-type", "")
    kind = content_type.split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        return await _multipart_image(request, await read_body(request, limit, seconds, take))
    if kind.startswith("image/") or kind in RAW_TYPES:
        return await read_body(request, limit, seconds, take)
    shown = f"Content-Type {kind!r}" if kind else "no Content-Type"
    raise RequestError(415, f"{shown}: send multipart/form-data with an '{IMAGE_FIELD}' file (curl -F "
                            f"{IMAGE_FIELD}=@cat.jpg), or the image's bytes as image/* or application/octet-stream")


class InMemoryParser(MultiPartParser):
    """Starlette's parser, with its file parts kept in memory however large (it spools a part over 1 MB to a
    temporary file): the whole body is in memory already, within --max-upload-mb, and nothing is written to disk
    (a read-only root filesystem serves as well)."""

    spool_max_size = 1 << 62


async def _multipart_image(request: Request, body: bytes) -> bytes:
    # One file, a few other fields at most: a form of thousands of parts is refused while it is parsed.
    parser = InMemoryParser(request.headers, _one_chunk(body), max_files=1, max_fields=8)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise RequestError(400, f"the multipart form is malformed: {exc.message}") from None
    try:
        part = form.get(IMAGE_FIELD)
        if part is None:
            fields = ", ".join(repr(name[:40]) for name in form) or "none"
            raise RequestError(400, f"no '{IMAGE_FIELD}' field in the form (fields: {fields}): send the file as "
                                    f"-F {IMAGE_FIELD}=@cat.jpg")
        if isinstance(part, str):
            raise RequestError(400, f"the '{IMAGE_FIELD}' field holds text, not a file: send it as "
                                    f"-F {IMAGE_FIELD}=@cat.jpg")
        return await part.read()
    finally:
        await form.close()
