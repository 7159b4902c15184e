"""alexnet serve against cheap hostile clients: work bounded by what was sent, slow senders, images that decode
to gigabytes, client faults answered as client faults, health that tells the truth, and what operators expect.
Each server binds 127.0.0.1; every load here is bounded in count and time."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import time

import httpx
import pytest
from support.serving import Server, one_line_error, png_bytes

INFER = "/v2/models/alexnet/infer"


def _solid_png(width: int, height: int) -> bytes:
    """A PNG of one colour: a few kilobytes that decode to width x height pixels."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (30, 120, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def _infer_json(images: list[bytes], **extra) -> dict:
    return {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(images)],
                        "data": [base64.b64encode(i).decode() for i in images]}], **extra}


@pytest.fixture(scope="module")
def small(checkpoint):
    """A server with a small queue and batch, for the tests that reach its limits."""
    running = Server(checkpoint, max_batch=2, max_queue=2, max_connections=12, max_pixels=400_000)
    yield running
    running.stop()


@pytest.fixture
def http(small):
    with httpx.Client(base_url=small.url, timeout=10) as client:
        yield client


# -- 1. work bounded by what was sent --------------------------------------------------------------------------

def test_protocol_refuses_past_each_bound_with_400(http):
    image = png_bytes(1)
    cases = {
        "output 'label' is asked for twice": _infer_json([image], outputs=[{"name": "label"}, {"name": "label"}]),
        "3 images in one request; at most 2 (--max-batch)": _infer_json([image] * 3),
        "parameter 'binary_data' is true or false": _infer_json(
            [image], outputs=[{"name": "label", "parameters": {"binary_data": "false"}}]),
    }
    for message, body in cases.items():
        response = http.post(INFER, json=body)
        assert response.status_code == 400 and message in one_line_error(response), (message, response.text)
    response = http.post("/predict?top_k=65", content=image, headers={"content-type": "image/png"})
    assert response.status_code == 400 and "top_k=65: the model has 64 classes" in one_line_error(response)


def test_json_and_binary_whose_parse_would_grow_with_the_body_are_refused_before_it(http):
    """A body of 400,000 elements is refused from a count of its brackets and commas, in milliseconds; the
    binary extension stops splitting once it has more elements than the shape says."""
    for body in (b"[" + b"0," * 400_000 + b"0]", b"[" * 200_000 + b"]" * 200_000):  # under --max-upload-mb
        started = time.perf_counter()
        response = http.post(INFER, content=body, headers={"content-type": "application/json"})
        assert response.status_code == 400 and "arrays, objects and elements" in one_line_error(response)
        assert time.perf_counter() - started < 1.0
    header = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                     "parameters": {"binary_data_size": 400_000}}]}).encode()
    binary = struct.pack("<I", 0) * 100_000  # a hundred thousand empty elements for a shape of one
    response = http.post(INFER, content=header + binary,
                         headers={"Inference-Header-Content-Length": str(len(header)),
                                  "content-type": "application/octet-stream"})
    assert response.status_code == 400 and "more than the 1 elements its shape says" in one_line_error(response)
    # "²" is a digit to str.isdigit and not to int(): it was a 500. Headers arrive as Latin-1.
    for value in ("²".encode("latin-1"), "١٢".encode(), b"12a"):
        response = http.post(INFER, content=header, headers={"Inference-Header-Content-Length": value})
        assert response.status_code == 400 and "is not a number" in one_line_error(response), response.text



def test_the_refusal_pacer_answers_a_burst_at_once_then_one_a_turn_and_closes_past_the_longest_wait():
    from alexnet_cli.serving.app import RefusalPacer

    pacer = RefusalPacer(rate=10)  # a turn every 0.1 s, and 2 s' worth (21 refusals) at once
    waits = [pacer.wait(100.0) for _ in range(80)]
    assert waits[:21] == [(0.0, False)] * 21
    assert [round(wait, 3) for wait, _ in waits[21:24]] == [0.1, 0.2, 0.3] and not any(c for _, c in waits[21:71])
    assert waits[71:] == [(RefusalPacer.LONGEST, True)] * 9  # past the longest wait: held that long, then closed
    assert pacer.wait(107.0) == (0.0, False)  # the bucket drains at the rate: 7 s on, a refusal goes at once


def test_a_client_looping_on_bad_requests_gets_the_refusal_rate_and_good_requests_wait_for_none(checkpoint,
                                                                                                monkeypatch):
    """20 connections send invented methods as fast as they are answered, for 1 s, past --refusal-rate 20:
    the refusals are answered at the rate (after a burst of 2 s' worth), the ones that would wait past the
    longest wait (0.4 s here) are closed after it, and a good client's requests meanwhile wait for none of it."""
    import asyncio

    from alexnet_cli.serving.app import RefusalPacer

    monkeypatch.setattr(RefusalPacer, "LONGEST", 0.4)
    server = Server(checkpoint, refusal_rate=20)
    image = png_bytes(7)

    async def load(seconds: float = 1.0) -> tuple[list[float], list[float], int]:
        refused, good, closed = [], [], 0
        end = time.monotonic() + seconds
        async with httpx.AsyncClient(base_url=server.url, timeout=10,
                                     limits=httpx.Limits(max_connections=24)) as http:
            async def bad() -> None:
                nonlocal closed
                while time.monotonic() < end:
                    started = time.monotonic()
                    response = await http.request("BREW", "/predict")
                    assert response.status_code == 405 and one_line_error(response)
                    refused.append(time.monotonic() - started)
                    closed += response.headers.get("connection") == "close"

            async def good_client() -> None:
                await asyncio.sleep(0.3)  # past the burst
                while time.monotonic() < end:
                    started = time.monotonic()
                    response = await http.post("/predict", content=image, headers={"content-type": "image/png"})
                    assert response.status_code == 200
                    good.append(time.monotonic() - started)

            await asyncio.gather(*(bad() for _ in range(20)), good_client())
        return refused, good, closed

    try:
        started = time.monotonic()
        refused, good, closed = asyncio.run(load())
        seconds = time.monotonic() - started
        # At most the burst, the rate's worth, and one a connection per longest wait (each connection holds
        # one request at a time): a loop answered at once would have made thousands.
        assert len(refused) <= 41 + 20 * seconds + 20 * (seconds / 0.4 + 1), (len(refused), seconds)
        assert closed > 0
        paced = httpx.get(f"{server.url}/metrics").text
        assert 'alexnet_refusals_paced_total{outcome="waited"}' in paced and 'outcome="closed"} 0.0' not in paced
        assert good and statistics.median(good) < statistics.median(sorted(refused)[-len(refused) // 2:]) / 2
    finally:
        server.stop()


# -- 2. slow clients ------------------------------------------------------------------------------------------

def _slow_upload(url: str, length: int = 50_000) -> socket.socket:
    """A connection that sends its head and a little of its body, then nothing."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.sendall(f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: {length}"
                 f"\r\n\r\n".encode() + b"\x89PNG")
    return sock


def test_slow_uploads_hold_no_place_in_the_queue(small, http):
    """More slow senders than --max-queue: every good request is still answered 200, none 503."""
    slow = [_slow_upload(small.url) for _ in range(small.cfg.max_queue + 2)]
    try:
        time.sleep(0.2)
        for seed in range(3):
            response = http.post("/predict", content=png_bytes(seed), headers={"content-type": "image/png"})
            assert response.status_code == 200, response.text
    finally:
        for sock in slow:
            sock.close()


def test_the_bodies_held_at_once_are_bounded_and_past_it_a_request_is_a_503(checkpoint, monkeypatch):
    """Bodies are read whole before a place in the queue is taken: without a bound, --max-connections uploads
    of --max-upload-mb (5 GB with the defaults) could be held at once. Past UPLOADS_HELD x --max-upload-mb
    (here 150 kB), a request is refused 503 with Retry-After, unread, and its connection closed; the last
    part of that room (here 50 kB) is for bodies of a photo's size (here 50 kB), so that large uploads cannot
    take it. Bodies are given back as their requests end."""
    from alexnet_cli.serving import uploads

    monkeypatch.setattr(uploads, "SMALL_BODY", 50_000)
    server = Server(checkpoint)
    bodies = server.service.bodies
    bodies.limit, bodies.reserve = 150_000, 50_000
    host, port = server.url.removeprefix("http://").split(":")
    held = []
    http = httpx.Client(base_url=server.url, timeout=10)

    def large_upload() -> socket.socket:  # 60 kB of 100 kB, and then nothing
        sock = socket.create_connection((host, int(port)))
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                     b"Content-Length: 100000\r\n\r\n" + b"\0" * 60_000)
        held.append(sock)
        return sock

    try:
        large_upload()
        deadline = time.monotonic() + 5
        while bodies.held < 60_000 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert bodies.held == 60_000
        second = large_upload()  # past the 100 kB that large bodies may hold
        answer = _closed_by_server(second) or b""
        assert answer.startswith(b"HTTP/1.1 503") and b"retry-after: 1" in answer.lower(), answer[:200]
        assert b"connection: close" in answer.lower() and b"of uploads, its limit of" in answer
        assert bodies.held == 60_000  # the refused one gave its part back
        small = http.post("/predict", content=png_bytes(5), headers={"content-type": "image/png"})
        assert small.status_code == 200  # a photo still has room
        junk = http.post("/predict", content=b"\0" * 45_000, headers={"content-type": "image/png"})
        assert junk.status_code == 400  # read (60 + 45 kB: within the room of small bodies), then refused
        for sock in held:
            sock.close()
        while bodies.held and time.monotonic() < deadline:
            time.sleep(0.02)
        assert bodies.held == 0
    finally:
        for sock in held:
            sock.close()
        http.close()
        server.stop()


def _closed_by_server(sock: socket.socket) -> bytes | None:
    """What the server sent before it closed `sock`, or None while it is still open (0.3 s to tell)."""
    sock.settimeout(0.3)
    answer = b""
    try:
        while chunk := sock.recv(65536):
            answer += chunk
    except TimeoutError:
        return None
    except OSError:
        pass
    return answer


def test_past_max_connections_the_longest_waited_for_connection_makes_room(checkpoint):
    """Sockets that send half a request and wait, as many as --max-connections: a new client is still served,
    and the connection that has waited longest for its client is closed to make room for it (an upload's,
    with a 408 that says why), the younger ones not. uvicorn's own limit answered every request 503 while
    such sockets were open, for as long as they chose to renew them."""
    from alexnet_cli.serving.server import LONG_WAIT

    server = Server(checkpoint, max_connections=4, head_timeout=30.0)
    host, port = server.url.removeprefix("http://").split(":")
    upload = _slow_upload(server.url, 1000)  # the oldest: its head has come, its body is not coming
    time.sleep(0.1)
    halves = []
    for _ in range(3):
        halves.append(socket.create_connection((host, int(port))))
        halves[-1].sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n")  # a head that never ends
        time.sleep(0.1)
    time.sleep(LONG_WAIT)  # each has waited long enough to be closed for room
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            assert client.get("/v2/health/live").status_code == 200  # took the upload's place
            answer = _closed_by_server(upload)
            assert answer is not None and answer.startswith(b"HTTP/1.1 408"), answer
            error = json.loads(answer.partition(b"\r\n\r\n")[2])["error"]
            assert "(--max-connections 4)" in error and "4 bytes in" in error, error
            assert all(_closed_by_server(sock) is None for sock in halves)  # the younger ones wait on
            # Between its requests a client's own connection is the youngest waiting: the next new one takes
            # the place of the oldest half head.
            for _ in range(3):
                assert client.post("/predict", content=png_bytes(1), headers={"content-type": "image/png"}
                                   ).status_code == 200
            with httpx.Client(base_url=server.url, timeout=10) as second:
                assert second.get("/v2/health/live").status_code == 200
            assert _closed_by_server(halves[0]) == b"" and _closed_by_server(halves[1]) is None
            assert client.get("/v2/health/live").status_code == 200  # on the first client's own connection
            closed = {line.split('"')[1]: float(line.split()[-1]) for line in client.get("/metrics").text.splitlines()
                      if line.startswith("alexnet_connections_closed_total{")}
            assert closed == {"head": 1.0, "body": 1.0, "full": 0.0}, closed
            assert _counted(client, 'method="POST",route="/predict",status="408"') == 1  # counted as its 408
    finally:
        for sock in [upload, *halves]:
            sock.close()
        server.stop()


def _slow_forward(server: Server, seconds: float) -> None:
    """Each forward pass of `server` takes `seconds` more from now on."""
    real = server.service.batcher.run_batch

    def slow(samples):
        time.sleep(seconds)
        return real(samples)

    server.service.batcher.run_batch = slow


def test_where_every_connection_has_a_request_being_answered_a_new_one_is_a_503(checkpoint):
    """A connection whose request has arrived whole is never closed for room: past --max-connections of them,
    the new connection is answered 503, in one line of JSON, and closed; once they are answered there is room."""
    import threading

    server = Server(checkpoint, max_connections=2)
    _slow_forward(server, 1.0)
    statuses: list[int] = []

    def one() -> None:
        with httpx.Client(base_url=server.url, timeout=10) as own:
            statuses.append(own.post("/predict", content=png_bytes(2), headers={"content-type": "image/png"}
                                     ).status_code)

    threads = [threading.Thread(target=one) for _ in range(2)]
    try:
        for thread in threads:
            thread.start()
        time.sleep(0.5)  # both in the forward pass
        with httpx.Client(base_url=server.url, timeout=10) as client:
            full = client.get("/v2/health/live")
            assert full.status_code == 503 and "--max-connections (2) connections open" in one_line_error(full)
            assert full.headers["connection"] == "close" and full.headers["retry-after"] == "1"
        for thread in threads:
            thread.join()
        assert statuses == [200, 200]
        with httpx.Client(base_url=server.url, timeout=10) as client:
            assert client.get("/v2/health/live").status_code == 200
    finally:
        server.stop()


def _reading_nothing(url: str, count: int) -> list[socket.socket]:
    """`count` clients that ask for the page, over and over, and read none of the answers. Each asks again only
    after its last answer has had time to be written (one that pipelines has its connection closed)."""
    host, port = url.removeprefix("http://").split(":")
    socks = []
    for _ in range(count):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((host, int(port)))
        sock.setblocking(False)
        socks.append(sock)
    for _ in range(40):
        for sock in socks:
            with contextlib.suppress(BlockingIOError):  # the server reads no more of it: its answers wait
                sock.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.02)
    return socks


def test_a_client_that_reads_nothing_holds_no_place_for_long(checkpoint, monkeypatch):
    """Clients that send requests and read none of the answers: such a connection waits for its client, so a
    new one takes its place past --max-connections, and it is dropped once an answer has waited SEND_SECONDS
    to be read. Before, each held its place for ever, and --max-connections of them refused every client."""
    from alexnet_cli.serving import server as served

    monkeypatch.setattr(served, "SEND_SECONDS", 2.0)
    monkeypatch.setattr(served, "SEND_BUFFER", 4096)  # full after a few answers
    server = Server(checkpoint, max_connections=2)
    connections = server.server.server_state.connections
    readers = _reading_nothing(server.url, 2)
    try:
        time.sleep(0.6)  # both blocked, their answers unread, for longer than LONG_WAIT
        assert len(connections) == 2
        for connection in connections:  # a send buffer of its own size, not autotuning's 4 MB (Linux doubles it)
            sock = connection.transport.get_extra_info("socket")
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) <= 2 * served.SEND_BUFFER
        with httpx.Client(base_url=server.url, timeout=10) as client:
            assert client.get("/v2/health/live").status_code == 200  # in the place of the first
        deadline = time.monotonic() + 3
        while connections and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not connections  # the second dropped after SEND_SECONDS
        with pytest.raises(ConnectionResetError):  # what it was sent, then the reset
            readers[1].setblocking(True)
            while readers[1].recv(65536):
                pass
    finally:
        for sock in readers:
            sock.close()
        server.stop()


def test_a_client_that_pipelines_gets_a_few_answers_then_its_connection_closes(small):
    """Requests sent before the previous answer was read cost the client nothing to send: one write of 2,000
    of them had 885 answered. A pipelining client gets PIPELINED answers in a row, then the connection closes
    (it sends the rest again on a new one); a client that reads each answer before it asks again is served on
    one connection for as long as it likes."""
    from alexnet_cli.serving.server import PIPELINED

    request = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"
    answer = _raw(small.url, request * 5)
    assert answer.count(b"HTTP/1.1 200") == PIPELINED < 5
    host, port = small.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        for _ in range(6):
            sock.sendall(request)
            reply = b""
            while not reply.endswith(b"}"):
                reply += sock.recv(65536)
            assert reply.startswith(b"HTTP/1.1 200") and b"connection: close" not in reply.lower()


def test_an_upgrade_header_is_ignored_and_logs_nothing(small):
    """The server has no WebSocket route: a request that asks to upgrade is served as HTTP, and uvicorn's two
    warnings for it (a line in the log for every such request a client sends) are not written."""
    import logging

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("uvicorn.error")  # uvicorn's own: it does not propagate to the root
    logger.addHandler(handler)
    try:
        answer = _raw(small.url, b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, close\r\n"
                                 b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
                                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
    finally:
        logger.removeHandler(handler)
    assert answer.startswith(b"HTTP/1.1 200") and b'{"live":true}' in answer
    assert not records, [record.getMessage() for record in records]


def test_a_head_that_comes_a_byte_at_a_time_is_closed_when_head_timeout_runs_out(checkpoint):
    """A byte every 0.2 s does not renew the head's time, as it would renew uvicorn's keep-alive timer: the
    server closes the connection at --head-timeout, and serves as before."""
    server = Server(checkpoint, head_timeout=1.0)
    host, port = server.url.removeprefix("http://").split(":")
    dribble = socket.create_connection((host, int(port)))
    try:
        started = time.monotonic()
        with pytest.raises(OSError):
            for _ in range(40):
                dribble.sendall(b"G")
                time.sleep(0.2)
        assert time.monotonic() - started < 3
        with httpx.Client(base_url=server.url, timeout=10) as client:
            assert client.get("/v2/health/live").status_code == 200
    finally:
        dribble.close()
        server.stop()


def test_a_refusal_that_did_not_read_the_body_closes_the_connection(http):
    response = http.post("/predict", content=b"x" * (3 * 1024 * 1024), headers={"content-type": "image/png"})
    assert response.status_code == 413 and response.headers.get("connection") == "close"
    response = http.post("/predict", content=b"not an image", headers={"content-type": "image/png"})
    assert response.status_code == 400 and response.headers.get("connection") != "close"  # read whole: kept


def test_the_parser_is_pinned_with_its_head_limit(small):
    from uvicorn.protocols.http.h11_impl import H11Protocol

    from alexnet_cli.serving.server import HEAD_LIMIT, uvicorn_config

    config = uvicorn_config(None, small.cfg)
    assert issubclass(config.http, H11Protocol) and config.h11_max_incomplete_event_size == HEAD_LIMIT
    with httpx.Client(base_url=small.url, timeout=10) as fresh:
        response = fresh.get("/v2/health/live", headers={"x-long": "a" * (HEAD_LIMIT + 1024)})
    assert response.status_code in (400, 431)



def _raw(url: str, request: bytes) -> bytes:
    """`request` sent on a connection of its own; what the server answers before it closes (at most 64 kB)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        with contextlib.suppress(OSError):  # the server may close while the rest is still on its way
            sock.sendall(request)
        answer = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                answer += chunk
        return answer


def _counted(http: httpx.Client, labels: str) -> float:
    """alexnet_requests_total{labels} from /metrics (0 before the first)."""
    for line in http.get("/metrics").text.splitlines():
        if line.startswith(f"alexnet_requests_total{{{labels}}}"):
            return float(line.split()[-1])
    return 0.0


def test_a_body_in_tiny_chunks_is_refused_after_64_of_them_and_chunks_of_a_kilobyte_are_served(small, http):
    """h11 spends about 10 us a chunk: a megabyte in chunks of 16 bytes cost the server 0.65 s of CPU. Such a
    body is a 400 of one line of JSON, counted as 400, and its connection closes; a PNG sent in chunks of
    1 kB is answered as any other."""
    head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n"
    before = _counted(http, 'method="POST",route="/predict",status="400"')
    answer = _raw(small.url, head + (b"10\r\n" + b"x" * 16 + b"\r\n") * 20_000 + b"0\r\n\r\n")
    status, _, body = answer.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 400") and b"connection: close" in status.lower()
    assert json.loads(body) == {"error": "the body came in chunks of 16 bytes on average; send it with a "
                                         "Content-Length, or in chunks of 1024 bytes or more"}
    deadline = time.monotonic() + 5  # counted when the request's task sees its connection closed
    while _counted(http, 'method="POST",route="/predict",status="400"') < before + 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _counted(http, 'method="POST",route="/predict",status="400"') == before + 1  # not a 499
    image = png_bytes(11, 120)
    chunked = b"".join(b"%x\r\n%b\r\n" % (len(image[i:i + 1024]), image[i:i + 1024])
                       for i in range(0, len(image), 1024))
    status, _, body = _raw(small.url, head.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
                           + chunked + b"0\r\n\r\n").partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 200") and json.loads(body)["label"]


def test_a_request_that_is_not_http_is_a_400_of_one_line_of_json(small):
    answer = _raw(small.url, b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n")
    status, _, body = answer.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 400")
    error = json.loads(body)["error"]
    assert error.startswith("the request is not valid HTTP/1.1 (") and "\n" not in error


# -- 3. images ------------------------------------------------------------------------------------------------

def test_max_pixels_and_the_shape_are_checked_from_the_header_before_any_decode(monkeypatch):
    from PIL import Image, ImageFile

    from alexnet_cli.data.images import UnreadableImage, open_upload, pillow_warnings

    big, long = png_bytes(3, size=800), png_bytes(4, size=(3000, 20))
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("decoded before the check"))
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("decoded before the check"))
    with pillow_warnings():
        with pytest.raises(UnreadableImage, match="800x800 pixels to decode, over the server's limit of 400,000"):
            open_upload(big, draft_size=256, max_pixels=400_000)
        with pytest.raises(UnreadableImage, match="3000x20 pixels, one side over"):
            open_upload(long, draft_size=256)


def _progressive_jpeg(side: int, repeats: int) -> bytes:
    """A progressive JPEG of one colour whose smallest scan is sent `repeats` more times before its end: every
    scan is a pass of the decoder over the whole image, and a repeat is a dozen bytes."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (90, 140, 200)).save(buffer, format="JPEG", progressive=True)
    data = buffer.getvalue()
    scans, start = [], data.index(b"\xff\xda")
    while start >= 0:
        end = data.find(b"\xff\xda", start + 2)
        scans.append(data[start:end if end >= 0 else len(data) - 2])
        start = end
    return data[:-2] + min(scans[1:], key=len) * repeats + b"\xff\xd9"


def test_a_jpeg_of_more_scans_than_a_progressive_one_has_is_refused_before_it_is_opened(small, http):
    """A JPEG of 264 kB and 20,000 scans took 2.2 s of the decoder's CPU (a pass over the image each). Past 256
    scans, 400 at once; a progressive JPEG (10 scans) is served."""
    from alexnet_cli.data.structure import MAX_JPEG_SCANS

    served = http.post("/predict", content=_progressive_jpeg(256, 0), headers={"content-type": "image/jpeg"})
    assert served.status_code == 200, served.text
    started = time.monotonic()
    refused = http.post("/predict", content=_progressive_jpeg(1024, 5000), headers={"content-type": "image/jpeg"})
    assert refused.status_code == 400 and time.monotonic() - started < 1.0
    assert one_line_error(refused).startswith("the upload: a JPEG of 5,0") and str(MAX_JPEG_SCANS) in refused.text


def test_an_image_over_max_pixels_is_a_400_and_explain_decodes_once(small, http, monkeypatch):
    response = http.post("/predict", content=_solid_png(800, 800), headers={"content-type": "image/png"})
    assert response.status_code == 400 and "(--max-pixels)" in one_line_error(response)
    from alexnet_cli.serving import model as served

    calls = []
    real = served.open_upload
    monkeypatch.setattr(served, "open_upload", lambda *a, **k: calls.append(1) or real(*a, **k))
    response = http.post("/predict?explain=1", content=png_bytes(6), headers={"content-type": "image/png"})
    assert response.status_code == 200 and "explanation" in response.json() and calls == [1]


def test_the_peak_memory_of_a_worst_case_decode_stays_within_its_stated_bound(tmp_path):
    """docs/serve.md: a decode peaks at PEAK_BYTES_PER_PIXEL bytes a pixel of --max-pixels at most (an RGBA PNG,
    the worst measured), so N decoding threads hold at most N times that. Measured in a process of its own."""
    code = """
import io, resource
from PIL import Image
from alexnet_cli.data.images import open_upload, pillow_warnings
from alexnet_cli.data.preprocess import Preprocess
from alexnet_cli.serving.model import PEAK_BYTES_PER_PIXEL
side = 2000
buffer = io.BytesIO(); Image.new("RGBA", (side, side), (10, 200, 30, 40)).save(buffer, format="PNG")
data = buffer.getvalue(); del buffer
transform = Preprocess.for_arch(227, 227).eval_transforms()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
with pillow_warnings():
    transform(open_upload(data, draft_size=256, max_pixels=side * side))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
print(peak, PEAK_BYTES_PER_PIXEL * side * side)
"""
    peak, bound = map(int, subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                          text=True, timeout=60).stdout.split())
    assert peak <= bound, (peak, bound)



@pytest.fixture
def large_lane(checkpoint, monkeypatch):
    """A server where an image of over 20,000 pixels is large, and each decode takes `large_seconds` (0.4) on
    the large lane (asleep, or with `spend` in CPU time), `small_seconds` (0) asleep on the decoding threads. It
    records the large lane's scheduling policy."""
    from alexnet_cli.serving import service
    from alexnet_cli.serving.model import ServedModel

    monkeypatch.setattr(service, "LARGE_PIXELS", 20_000)
    decode, seen = ServedModel.decode, {"large_seconds": 0.4, "small_seconds": 0.0, "spend": False}

    def slow_decode(self, data, explain=False, large_above=None):
        sample = decode(self, data, explain, large_above)  # LargeUpload from the header, before any sleep
        if large_above is None:
            seen["policy"] = os.sched_getscheduler(0) if hasattr(os, "sched_getscheduler") else None
        if large_above is None and seen["spend"]:  # the costly lane's rest counts its CPU time: spend it
            end = time.thread_time() + seen["large_seconds"]
            while time.thread_time() < end:
                pass
        else:
            time.sleep(seen["large_seconds"] if large_above is None else seen["small_seconds"])
        return sample

    monkeypatch.setattr(ServedModel, "decode", slow_decode)
    server = Server(checkpoint)
    yield server, seen
    server.stop()


async def _post_images(url: str, images: list[tuple[float, bytes]]) -> list[tuple[int, float, httpx.Response]]:
    """Each image posted to /predict after its delay, at once: (status, seconds from the start to the answer,
    the response)."""
    import asyncio

    started = time.monotonic()
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        async def one(delay: float, image: bytes):
            await asyncio.sleep(delay)
            response = await http.post("/predict", content=image, headers={"content-type": "image/png"})
            return response.status_code, time.monotonic() - started, response

        return list(await asyncio.gather(*(one(delay, image) for delay, image in images)))


def test_large_images_decode_on_a_lane_of_their_own_and_past_two_waiting_get_429(large_lane):
    """Four large images at once: one decodes (at the lowest priority), two wait their turn, the fourth is a
    429 with Retry-After; a small image sent meanwhile is answered without waiting for any of them."""
    import asyncio

    server, seen = large_lane
    large, small = png_bytes(3, 200), png_bytes(4, 60)  # 40,000 pixels and 3,600
    answers = asyncio.run(_post_images(server.url, [(0.0, large)] * 3 + [(0.1, large), (0.1, small)]))
    statuses = sorted(status for status, _, _ in answers[:4])
    assert statuses == [200, 200, 200, 429], statuses
    refused = next(response for status, _, response in answers if status == 429)
    assert "this server decodes one image of over 20,000 pixels at a time" in one_line_error(refused)
    assert int(refused.headers["retry-after"]) >= 1
    large_done = sorted(seconds for status, seconds, _ in answers[:4] if status == 200)
    assert large_done[-1] >= 1.2  # one at a time: three decodes of 0.4 s
    status, small_done, response = answers[4]
    assert status == 200 and small_done < large_done[0] and response.json()["label"]
    if sys.platform.startswith("linux"):
        assert seen["policy"] == os.SCHED_IDLE


@pytest.fixture
def normal_priority(monkeypatch):
    """The costly lane at the priority of the rest: on a loaded machine (CI runs two workers) SCHED_IDLE may
    keep it off the cores for seconds, and the test below times its rest, not its priority."""
    from alexnet_cli.serving import service

    monkeypatch.setattr(service, "lowest_priority", lambda: None)


def test_the_large_lane_rests_while_other_images_are_in_flight(normal_priority, large_lane):
    """A large decode of 0.15 s of CPU that ends while a small image is still decoding lets the next large one
    start no sooner than 9 x 0.15 s later (a tenth of a core); with nothing else in flight it would not wait."""
    import asyncio

    server, seen = large_lane
    seen.update(large_seconds=0.15, small_seconds=2.0, spend=True)  # 2 s: in flight however long it takes
    large = png_bytes(5, 200)
    # One small image (it holds one of the two decoding threads; the large ones' headers are read on the other)
    answers = asyncio.run(_post_images(server.url, [(0.0, png_bytes(6, 60)), (0.05, large), (0.3, large)]))
    assert [status for status, _, _ in answers] == [200] * 3
    first, second = answers[1][1], answers[2][1]
    assert second - first >= 9 * 0.15 * 0.9, (first, second)



def test_past_three_requests_with_explain_in_the_server_another_is_a_429(checkpoint, monkeypatch):
    """Grad-CAM costs a dozen plain predictions: three at a time, the fourth refused at once with Retry-After,
    and the overlay is drawn on the costly lane, not on a decoding thread."""
    import asyncio
    import threading

    from alexnet_cli.serving.model import ServedModel

    explanation, threads = ServedModel.explanation, set()

    def slow_explanation(self, sample, output, caption):
        threads.add(threading.current_thread().name)
        time.sleep(0.3)
        return explanation(self, sample, output, caption)

    server = Server(checkpoint)  # its warm-up draws an overlay before the slow one is in place
    monkeypatch.setattr(ServedModel, "explanation", slow_explanation)
    try:
        async def four():
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
                return await asyncio.gather(*(http.post("/predict?explain=1", content=png_bytes(20 + i),
                                                        headers={"content-type": "image/png"}) for i in range(4)))

        answers = asyncio.run(four())
        assert sorted(a.status_code for a in answers) == [200, 200, 200, 429]
        refused = next(a for a in answers if a.status_code == 429)
        assert "this server draws Grad-CAM for 3 requests at a time" in one_line_error(refused)
        assert refused.headers["retry-after"] == "1"
        explained = [a.json()["explanation"] for a in answers if a.status_code == 200]
        assert all(url.startswith("data:image/png;base64,") for url in explained)
        assert {name.split("_")[0] for name in threads} == {"alexnet-costly"}
    finally:
        server.stop()


# -- 4. errors where they belong --------------------------------------------------------------------------------

def test_a_client_that_disconnects_mid_upload_is_a_499_not_a_5xx(small, http):
    sock = _slow_upload(small.url, length=100_000)
    time.sleep(0.2)
    sock.close()
    time.sleep(0.3)
    series = [line for line in http.get("/metrics").text.splitlines() if line.startswith("alexnet_requests_total")]
    assert any('status="499"' in line for line in series)
    assert not any('status="5' in line and 'route="/predict"' in line for line in series)


def test_a_failing_forward_pass_is_a_500_without_internals_and_the_next_is_served(small, http, monkeypatch):
    real = small.model.run

    def fails_once(samples):
        monkeypatch.setattr(small.model, "run", real)
        raise RuntimeError("/secret/path/weights.pt: CUDA error")

    monkeypatch.setattr(small.model, "run", fails_once)
    small.service.batcher.run_batch = lambda samples: small.model.run(samples)
    try:
        response = http.post("/predict", content=png_bytes(7), headers={"content-type": "image/png"})
        assert response.status_code == 500 and "/secret" not in response.text and "CUDA" not in response.text
        assert http.post("/predict", content=png_bytes(8), headers={"content-type": "image/png"}).status_code == 200
    finally:
        small.service.batcher.run_batch = small.model.run


def test_a_failing_grad_cam_fails_only_the_requests_that_asked_for_it(small, monkeypatch):
    from alexnet_cli.inference import gradcam

    monkeypatch.setattr(gradcam, "grad_cam", lambda *a: (_ for _ in ()).throw(RuntimeError("backward failed")))

    async def both():
        async with httpx.AsyncClient(base_url=small.url, timeout=10) as client:
            explain = client.post("/predict?explain=1", content=png_bytes(9), headers={"content-type": "image/png"})
            plain = client.post("/predict", content=png_bytes(10), headers={"content-type": "image/png"})
            return await asyncio.gather(explain, plain)

    import asyncio

    explained, plain = asyncio.run(both())
    assert explained.status_code == 500 and plain.status_code == 200


# -- 5. health ------------------------------------------------------------------------------------------------

def test_a_request_past_timeout_is_a_504_and_ready_turns_false_while_the_pass_runs(checkpoint):
    import threading

    server = Server(checkpoint, timeout=1.0)
    _slow_forward(server, 2.0)
    try:
        with httpx.Client(base_url=server.url, timeout=10) as http, \
                httpx.Client(base_url=server.url, timeout=10) as first:
            answer: dict = {}
            started = time.perf_counter()
            thread = threading.Thread(target=lambda: answer.setdefault("r", first.post(
                "/predict", content=png_bytes(11), headers={"content-type": "image/png"})))
            thread.start()
            time.sleep(1.5)
            ready = http.get("/v2/health/ready")
            thread.join()
            assert answer["r"].status_code == 504 and "--timeout" in one_line_error(answer["r"])
            assert 0.9 < time.perf_counter() - started < 1.9
            assert ready.status_code == 503 and "--timeout" in ready.json()["reason"]
            assert http.get("/v2/health/live").status_code == 200
            time.sleep(0.8)
            assert http.get("/v2/health/ready").status_code == 200  # the pass ended: ready again
    finally:
        server.stop()


def test_a_dead_batcher_makes_live_and_ready_false(checkpoint):
    server = Server(checkpoint)
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            assert client.get("/v2/health/ready").status_code == 200
            server.server.config.loaded_app  # noqa: B018  (the app is up)
            loop_task = server.service.batcher._task
            loop_task.get_loop().call_soon_threadsafe(loop_task.cancel)
            time.sleep(0.2)
            assert client.get("/v2/health/live").status_code == 503
            ready = client.get("/v2/health/ready")
            assert ready.status_code == 503 and ready.json()["reason"] == "the batcher has stopped"
    finally:
        server.stop()


# -- 6. what operators expect ---------------------------------------------------------------------------------

def test_invented_methods_add_no_metric_series(small, http):
    before = len(http.get("/metrics").text.splitlines())
    for i in range(20):
        http.request(f"BREW{i}", "/predict")
    lines = http.get("/metrics").text.splitlines()
    assert not any("BREW" in line for line in lines)
    assert len(lines) <= before + 4  # one "other" series, at most a few new statuses


def test_docs_are_off_unless_asked_for_and_no_answer_holds_a_file_path(checkpoint, small, http):
    assert http.get("/docs").status_code == 404 and http.get("/openapi.json").status_code == 404
    with_docs = Server(checkpoint, docs=True)
    try:
        with httpx.Client(base_url=with_docs.url, timeout=10) as client:
            assert client.get("/docs").status_code == 200
            openapi = client.get("/openapi.json").text
        assert str(checkpoint) not in openapi and str(checkpoint.parent) not in openapi
    finally:
        with_docs.stop()
    for path in ("/", "/v2", "/v2/models/alexnet", "/v2/health/ready", "/metrics"):
        assert str(checkpoint.parent) not in http.get(path).text, path


def test_every_address_beyond_loopback_counts_as_exposed():
    """serve warns when its --host is exposed(): a pure function of the address, so nothing is bound here."""
    from alexnet_cli.serving.server import exposed

    assert not exposed("127.0.0.1") and not exposed("::1") and not exposed("localhost") and not exposed("127.0.0.2")
    for host in ("0.0.0.0", "0", "", "::", "192.168.1.5", "example.org"):
        assert exposed(host), host


def test_multipart_uploads_stay_in_memory(checkpoint, monkeypatch, tmp_path):
    """A 2 MB multipart part (Starlette spools parts over 1 MB to a temporary file) with no usable temporary
    folder: answered, so nothing was written to disk."""
    import tempfile

    big = png_bytes(12, size=900)
    assert len(big) > 1024 * 1024
    server = Server(checkpoint, max_upload_mb=4, max_pixels=2_000_000)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-folder"))
    try:
        with httpx.Client(base_url=server.url, timeout=20) as client:
            response = client.post("/predict", files={"image": ("big.png", big, "image/png")})
        assert response.status_code == 200, response.text
    finally:
        server.stop()


# -- 7. the protocol, to the letter ---------------------------------------------------------------------------

def test_model_metadata_parameters_hold_only_strings_numbers_and_booleans(http):
    parameters = http.get("/v2/models/alexnet").json()["parameters"]
    assert parameters and all(type(value) in (str, int, float, bool) for value in parameters.values()), parameters
    assert len(json.loads(parameters["classes"])) == 64


# -- 6. the token, CORS, the access log and the process metrics ---------------------------------------------------

def test_api_key_guards_everything_but_health_and_metrics(checkpoint):
    token = "a-token-of-24-characters"
    server = Server(checkpoint, api_key=token, cors_origins=("https://example.org",))
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            for path in ("/", "/v2", "/v2/models/alexnet"):
                response = client.get(path)
                assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer", path
            wrong = client.post("/predict", content=png_bytes(1), headers={"content-type": "image/png",
                                                                           "authorization": "Bearer nope"})
            assert wrong.status_code == 401 and "--api-key" in one_line_error(wrong)
            right = client.post("/predict", content=png_bytes(1), headers={"content-type": "image/png",
                                                                           "authorization": f"Bearer {token}"})
            assert right.status_code == 200
            assert client.get("/v2/health/ready").status_code == 200 and client.get("/metrics").status_code == 200
            preflight = client.options("/predict", headers={"origin": "https://example.org",
                                                             "access-control-request-method": "POST",
                                                             "access-control-request-headers": "authorization"})
            assert preflight.status_code == 200
            assert preflight.headers["access-control-allow-origin"] == "https://example.org"
            other = client.options("/predict", headers={"origin": "https://evil.example",
                                                         "access-control-request-method": "POST"})
            assert "access-control-allow-origin" not in other.headers
    finally:
        server.stop()


def test_short_tokens_and_odd_origins_are_refused(checkpoint):
    from alexnet_cli.config.settings import ServeConfig
    from alexnet_cli.errors import ConfigError

    with pytest.raises(ConfigError, match="at least 16 characters"):
        ServeConfig(api_key="short")
    with pytest.raises(ConfigError, match="--cors-origin is an origin"):
        ServeConfig(cors_origins=("example.org",))


def test_each_request_gets_an_id_and_one_access_log_line(http, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="alexnet.access"):
        given = http.get("/v2/health/live", headers={"x-request-id": "abc-123"})
        made = http.get("/v2/health/live")
        hostile = http.get("/v2/health/live", headers={"x-request-id": "x" * 300})
    assert given.headers["x-request-id"] == "abc-123"
    assert len(made.headers["x-request-id"]) == 32 and len(hostile.headers["x-request-id"]) == 32
    lines = [record.getMessage() for record in caplog.records if record.name == "alexnet.access"]
    assert any('"GET /v2/health/live" 200' in line and line.endswith("id=abc-123") for line in lines), lines


def test_a_path_cannot_forge_a_log_line_or_send_terminal_codes(small, caplog):
    """The access log writes the decoded path: %0a began a forged line of its own, and %1b reached the
    terminal that shows the log. Control characters, quotes and backslashes are written as \\xHH."""
    import logging

    with caplog.at_level(logging.INFO, logger="alexnet.access"):
        answer = _raw(small.url, b'GET /%0a2026-12-05T00:00:00%20127.0.0.1%20%22GET%20/admin%22%20200%1b[31m HTTP/1.1'
                                 b"\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 404")
    [line] = [record.getMessage() for record in caplog.records if record.name == "alexnet.access"]
    assert "\n" not in line and "\x1b" not in line and '\\x0a2026-12-05' in line and "\\x22GET /admin\\x22" in line


def test_metrics_include_the_process_and_the_queue_wait_and_decode_time(http):
    http.post("/predict", content=png_bytes(13), headers={"content-type": "image/png"})
    text = http.get("/metrics").text
    for name in ("process_resident_memory_bytes", "process_open_fds", "process_cpu_seconds_total",
                 "alexnet_queue_wait_seconds_count", "alexnet_decode_duration_seconds_count"):
        assert name in text, name
