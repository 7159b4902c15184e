"""alexnet serve: a real uvicorn on 127.0.0.1 (a port of its own), spoken to with httpx, Triton's client and
headless Chromium. Bad uploads each get their status and one line of JSON; concurrent callers each get their
own image's answer; the Open Inference Protocol's shapes; a full queue answers 503 at once; SIGTERM answers the
requests in flight and exits 0 (in a process of its own: the signal is the behaviour)."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import functools
import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time

import pytest

pytest.importorskip("fastapi", reason="alexnet serve's extra is not installed: pip install '.[serve]'")
import httpx
from support.helpers import env_without_debug, invoke
from support.serving import UPLOAD_MB, Server, one_line_error, png_bytes

from alexnet_cli.config.settings import ServeConfig

# -- POST /predict -------------------------------------------------------------------------------------------

def test_predict_answers_predict_json_record_for_a_multipart_upload_or_raw_bytes(server, client):
    image = png_bytes(1)
    multipart = client.post("/predict", files={"image": ("a.png", image, "image/png")})
    raw = client.post("/predict?top_k=1", content=image, headers={"content-type": "image/png"})
    assert multipart.status_code == raw.status_code == 200, (multipart.text, raw.text)
    record = multipart.json()
    assert set(record) == {"label", "class", "confidence", "top_k"}
    assert [row["label"] for row in record["top_k"]] and record["top_k"][0]["label"] == record["label"]
    assert record["label"] in server.model.class_names
    assert len(record["top_k"]) == 5
    assert raw.json()["label"] == record["label"] and len(raw.json()["top_k"]) == 1


def test_predict_explain_adds_the_grad_cam_overlay_as_a_png(client):
    from PIL import Image

    response = client.post("/predict?explain=1", files={"image": ("a.png", png_bytes(2, size=120))})
    assert response.status_code == 200, response.text
    prefix = "data:image/png;base64,"
    explanation = response.json()["explanation"]
    assert explanation.startswith(prefix)
    picture = Image.open(io.BytesIO(base64.b64decode(explanation[len(prefix):])))
    assert picture.format == "PNG" and picture.size == (120, 120)


@functools.lru_cache(maxsize=1)
def _bomb() -> bytes:
    """A PNG that declares more pixels than Pillow's decompression-bomb limit (2x over it), in a few kB."""
    from PIL import Image

    side = int((Image.MAX_IMAGE_PIXELS * 2) ** 0.5) + 1
    buffer = io.BytesIO()
    Image.new("1", (side, side)).save(buffer, format="PNG")
    return buffer.getvalue()


def _bad_uploads() -> dict:
    image = png_bytes(3)
    return {  # name: (status, request keywords, a word the error says)
        "not an image": (400, {"files": {"image": ("a.jpg", b"hello, this is text")}}, "not an image"),
        "truncated": (400, {"files": {"image": ("a.png", image[:len(image) // 2])}}, "the upload"),
        "empty": (400, {"files": {"image": ("a.png", b"")}}, "empty"),
        "empty raw body": (400, {"content": b"", "headers": {"content-type": "image/png"}}, "empty"),
        "over the size limit": (413, {"files": {"image": ("a.png", os.urandom(UPLOAD_MB * 1024 * 1024 + 10))}},
                                "limit"),
        "over the size limit, chunked": (413, {"content": iter([os.urandom(256 * 1024)] * (4 * UPLOAD_MB + 1)),
                                               "headers": {"content-type": "image/png"}}, "limit"),
        "decompression bomb": (400, {"files": {"image": ("a.png", _bomb())}}, "decompression bomb"),
        "wrong field name": (400, {"files": {"file": ("a.png", image)}}, "'image' field"),
        "text in the image field": (400, {"data": {"image": "cat.jpg"}, "files": {"other": ("b", b"x")}},
                                    "holds text"),
        "two files": (400, {"files": [("image", ("a.png", image)), ("image", ("b.png", image))]}, "malformed"),
        "wrong content type": (415, {"content": image, "headers": {"content-type": "application/json"}},
                               "Content-Type"),
        "no content type": (415, {"content": image}, "Content-Type"),
        "url-encoded form": (415, {"data": {"image": "x"}}, "Content-Type"),
        "PostScript (Pillow would hand it to Ghostscript)": (
            400, {"files": {"image": ("a.eps", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")}},
            "not an image"),
        "one side 60 times the other": (400, {"files": {"image": ("a.png", png_bytes(7, size=(1, 60)))}},
                                        "60 pixels, one side over 50 times the other"),
        "top_k not a number": (422, {"params": {"top_k": "many"}, "files": {"image": ("a.png", image)}}, "top_k"),
        "top_k zero": (422, {"params": {"top_k": "0"}, "files": {"image": ("a.png", image)}}, "top_k"),
    }


@pytest.mark.parametrize("case", list(_bad_uploads()))
def test_a_bad_upload_gets_its_status_and_one_line_and_the_next_good_request_is_answered(client, case):
    status, request, says = _bad_uploads()[case]
    response = client.post("/predict", **request)
    assert response.status_code == status, response.text
    assert says in one_line_error(response)
    good = client.post("/predict", files={"image": ("a.png", png_bytes(4))})
    assert good.status_code == 200, good.text


def test_a_body_that_arrives_too_slowly_is_refused_with_408(server, client, monkeypatch):
    """A body has --body-timeout to arrive: a slow sender gets 408."""
    monkeypatch.setattr(server.service, "cfg", dataclasses.replace(server.service.cfg, body_timeout=0.3))

    async def slowly():
        yield png_bytes(8)[:100]
        await asyncio.sleep(1.0)
        yield b"rest"

    async def send():
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            return await http.post("/predict", content=slowly(), headers={"content-type": "image/png"})

    response = asyncio.run(send())
    assert response.status_code == 408 and "longer than 0.3 s" in one_line_error(response)
    assert client.post("/predict", files={"image": ("a.png", png_bytes(9))}).status_code == 200


def test_a_client_file_name_is_never_used_as_a_path(client, tmp_path):
    """The multipart file name is ignored: a name that climbs out of any folder changes nothing."""
    target = tmp_path / "planted.png"
    name = "../" * 12 + str(target).lstrip("/")
    response = client.post("/predict?explain=1", files={"image": (name, png_bytes(5))})
    assert response.status_code == 200 and not target.exists()
    assert not any(tmp_path.iterdir()) or list(tmp_path.iterdir()) == [tmp_path / "user-cache"]


def test_unknown_routes_and_methods_answer_one_line_of_json(client):
    assert client.get("/nowhere").status_code == 404 and one_line_error(client.get("/nowhere"))
    assert client.delete("/predict").status_code == 405 and one_line_error(client.delete("/predict"))


def test_64_concurrent_distinct_images_each_get_their_own_answer(server):
    images = [png_bytes(100 + i) for i in range(64)]
    # Each image alone through the same model: what its own caller must get back, whatever it is batched with.
    expected = [server.model.run([server.model.decode(image)])[0].probabilities for image in images]
    closest = min(float((a - b).abs().max()) for i, a in enumerate(expected) for b in expected[i + 1:])
    tolerance = 1e-4
    assert closest > 10 * tolerance, "the images must be told apart by their answers for this test to mean anything"

    async def load():
        async with httpx.AsyncClient(base_url=server.url, timeout=60,
                                     limits=httpx.Limits(max_connections=64)) as http:
            return await asyncio.gather(*(http.post("/predict", params={"top_k": 2},
                                                    files={"image": (f"{i}.png", image)})
                                          for i, image in enumerate(images)))

    before = _batches(server.url)
    responses = asyncio.run(load())
    assert [r.status_code for r in responses] == [200] * 64
    for response, probabilities in zip(responses, expected):
        for row in response.json()["top_k"]:
            own = float(probabilities[server.model.class_names.index(row["label"])])
            assert abs(row["probability"] - own) < tolerance
    count, images_run = (after - earlier for after, earlier in zip(_batches(server.url), before))
    assert images_run == 64 and count < 64, "the 64 requests were not batched together"


def test_the_batched_forward_answers_as_the_model_itself_does(server):
    """The classifier held in oneDNN's layout (serving/model.py) is a speed-up, never a different answer."""
    import torch

    if torch.backends.mkldnn.is_available():
        assert server.model.forward is not server.model.model  # CPU, fp32: the packed classifier serves
    images = torch.randn(8, 3, 67, 67).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        torch.testing.assert_close(server.model.forward(images), server.model.model(images), rtol=1e-4, atol=1e-4)


def test_the_batcher_sends_a_lone_image_at_once_and_waits_only_for_images_on_their_way():
    """The two knobs and the rule beside them (serving/batching.py), on a batcher alone."""
    from alexnet_cli.serving.batching import Batcher

    batches = []

    def run(items):
        batches.append(list(items))
        return [item * 10 for item in items]

    async def scenario():
        batcher = Batcher(run, max_batch=4, max_wait_s=5.0, max_queue=8)
        await batcher.start()
        started = time.monotonic()
        alone = batcher.admit()
        assert await alone.submit(1) == 10
        alone.close()
        lone_seconds = time.monotonic() - started

        async def arrive(ticket, item, delay):
            await asyncio.sleep(delay)
            return await ticket.submit(item)

        together = [batcher.admit() for _ in range(3)]  # admitted at once, decoded one after another
        answers = await asyncio.gather(*(arrive(t, i + 2, 0.05 * i) for i, t in enumerate(together)))
        for ticket in together:
            ticket.close()
        batcher.max_wait_s = 0.2
        late, never = batcher.admit(), batcher.admit()  # one image whose sender never sends it
        started = time.monotonic()
        assert await late.submit(5) == 50
        waited = time.monotonic() - started
        late.close()
        never.close()
        await batcher.stop()
        return lone_seconds, answers, waited

    lone_seconds, answers, waited = asyncio.run(scenario())
    assert lone_seconds < 1.0, "a lone image waited for --max-wait-ms"
    assert answers == [20, 30, 40] and batches[:2] == [[1], [2, 3, 4]]
    assert 0.2 <= waited < 1.0, "a batch waits for an image on its way, at most --max-wait-ms"



def test_costly_items_go_one_at_a_time_and_rest_while_others_wait():
    """Negative items stand for Grad-CAM: they go one a batch, never with plain ones; while another image is on
    its way, a costly batch of t s makes the next costly one wait t * (1 / share - 1) (here 3t), and the plain
    ones pending go meanwhile."""
    from alexnet_cli.serving.batching import Batcher

    batches: list[tuple[float, list[int]]] = []

    def run(items):
        time.sleep(0.05 if items[0] < 0 else 0.1 if items[0] == 100 else 0.0)
        batches.append((time.monotonic(), list(items)))
        return list(items)

    async def scenario():
        batcher = Batcher(run, max_batch=8, max_wait_s=0.0, max_queue=16, costly=lambda item: item < 0,
                          costly_share=0.25)
        await batcher.start()
        on_its_way = batcher.admit()  # another image in flight all along
        tickets = [batcher.admit() for _ in range(5)]
        blocker = asyncio.ensure_future(tickets[0].submit(100))  # holds the forward thread while the rest arrive
        await asyncio.sleep(0.03)
        answers = await asyncio.gather(*(t.submit(i) for t, i in zip(tickets[1:], (-1, 1, -2, 2))))
        await blocker
        for ticket in tickets:
            ticket.close()
        on_its_way.close()
        await batcher.stop()
        return answers

    import asyncio

    assert asyncio.run(scenario()) == [-1, 1, -2, 2]
    assert [items for _, items in batches] == [[100], [-1], [1, 2], [-2]]
    _, _, (first_costly, _), (second_costly, _) = batches
    assert second_costly - first_costly >= 3 * 0.05 * 0.9 + 0.05  # its rest, then its own pass


def _batches(url: str) -> tuple[float, float]:
    """(forward passes, images in them) so far, from /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    families = {f.name: f for f in text_string_to_metric_families(httpx.get(f"{url}/metrics").text)}
    samples = {s.name: s.value for s in families["alexnet_batch_size"].samples}
    return samples["alexnet_batch_size_count"], samples["alexnet_batch_size_sum"]


def test_metrics_count_requests_by_status_and_report_batches_latency_and_queue(client):
    from prometheus_client.parser import text_string_to_metric_families

    client.post("/predict", files={"image": ("a.png", png_bytes(6))})
    client.post("/predict", content=b"x", headers={"content-type": "text/plain"})
    client.get(f"/nowhere/{'x' * 50}")
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    requests = {(s.labels["route"], s.labels["status"]) for s in families["alexnet_requests"].samples
                if s.name == "alexnet_requests_total"}
    assert {("/predict", "200"), ("/predict", "415"), ("unmatched", "404")} <= requests  # never the raw path
    assert families["alexnet_request_duration_seconds"].type == "histogram"
    assert families["alexnet_batch_size"].type == "histogram"
    assert [s.value for s in families["alexnet_queue_depth"].samples] == [0]
    assert [s.value for s in families["alexnet_queue_limit"].samples] == [ServeConfig.max_queue]


# -- the Open Inference Protocol -------------------------------------------------------------------------------

TENSOR_METADATA = {"name": str, "datatype": str, "shape": list}


def _shaped(value: dict, fields: dict) -> None:
    for name, kind in fields.items():
        assert isinstance(value.get(name), kind), (name, value)


def test_oip_health_and_metadata_have_the_protocol_shapes(server, client):
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    server_metadata = client.get("/v2").json()
    _shaped(server_metadata, {"name": str, "version": str, "extensions": list})
    metadata = client.get("/v2/models/alexnet").json()
    _shaped(metadata, {"name": str, "versions": list, "platform": str, "inputs": list, "outputs": list})
    for tensor in metadata["inputs"] + metadata["outputs"]:
        _shaped(tensor, TENSOR_METADATA)
    assert metadata["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
    classes = list(server.model.class_names)
    assert json.loads(metadata["parameters"]["classes"]) == classes  # the protocol's parameters: no lists
    assert metadata["parameters"]["image_size"] == server.model.preprocess.image_size
    assert {o["name"]: o["shape"] for o in metadata["outputs"]}["probabilities"] == [-1, len(classes)]
    assert client.get("/v2/models/alexnet/ready").json() == {"name": "alexnet", "ready": True}
    assert client.get("/v2/models/alexnet/versions/1/ready").json() == {"name": "alexnet", "ready": True}
    assert client.get("/v2/models/alexnet/versions/1").json() == metadata
    missing = client.get("/v2/models/resnet")
    assert missing.status_code == 404 and "resnet" in one_line_error(missing)
    missing = client.get("/v2/models/alexnet/versions/2")
    assert missing.status_code == 404 and "version '2'" in one_line_error(missing)


def test_oip_infer_in_json_answers_each_image_as_predict_does(client):
    images = [png_bytes(10), png_bytes(11), png_bytes(12)]
    request = {"id": "req-1", "inputs": [{"name": "image", "datatype": "BYTES", "shape": [3],
                                          "data": [base64.b64encode(i).decode() for i in images]}]}
    response = client.post("/v2/models/alexnet/infer", json=request)
    assert response.status_code == 200, response.text
    body = response.json()
    _shaped(body, {"model_name": str, "outputs": list})
    assert body["id"] == "req-1" and body["model_name"] == "alexnet"
    outputs = {o["name"]: o for o in body["outputs"]}
    for output in outputs.values():
        _shaped(output, {**TENSOR_METADATA, "data": list})
    assert outputs["label"]["shape"] == [3] and outputs["label"]["datatype"] == "BYTES"
    classes = len(outputs["probabilities"]["data"]) // 3
    assert outputs["probabilities"]["shape"] == [3, classes]
    for i, image in enumerate(images):
        record = client.post("/predict", files={"image": ("a.png", image)}).json()
        assert outputs["label"]["data"][i] == record["label"]
        assert outputs["confidence"]["data"][i] == pytest.approx(record["confidence"], abs=1e-5)


def test_oip_infer_with_the_binary_tensor_extension_both_ways(client):
    """Triton's binary tensor data extension, written out: BYTES elements each after a 4-byte length."""
    images = [png_bytes(13), png_bytes(14)]
    blob = b"".join(struct.pack("<I", len(i)) + i for i in images)
    header = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2, 1],
                                     "parameters": {"binary_data_size": len(blob)}}],
                         "outputs": [{"name": "confidence", "parameters": {"binary_data": True}},
                                     {"name": "label"}]}).encode()
    response = client.post("/v2/models/alexnet/infer", content=header + blob,
                           headers={"Inference-Header-Content-Length": str(len(header))})
    assert response.status_code == 200, response.text
    length = int(response.headers["inference-header-content-length"])
    body = json.loads(response.content[:length])
    confidence, label = body["outputs"]
    assert confidence["name"] == "confidence" and "data" not in confidence
    values = struct.unpack("<2f", response.content[length:length + confidence["parameters"]["binary_data_size"]])
    versioned = client.post("/v2/models/alexnet/versions/1/infer", content=header + blob,
                            headers={"Inference-Header-Content-Length": str(len(header))})
    assert versioned.content == response.content
    for image, value, name in zip(images, values, label["data"]):
        record = client.post("/predict", files={"image": ("a.png", image)}).json()
        assert (name, value) == (record["label"], pytest.approx(record["confidence"], abs=1e-5))


@pytest.mark.parametrize("request_body, says", [
    ({"inputs": [{"name": "image", "datatype": "FP32", "shape": [1], "data": [1.0]}]}, "BYTES"),
    ({"inputs": [{"name": "pixels", "datatype": "BYTES", "shape": [1], "data": ["eA=="]}]}, "unknown input"),
    ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2], "data": ["eA=="]}]}, "base64 strings"),
    ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["***"]}]}, "not base64"),
    ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["eA=="]}]}, "not an image"),
    ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["eA=="]}],
      "outputs": [{"name": "logits"}]}, "unknown output"),
    ({"inputs": []}, "one input"),
    ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["eA=="], "parameters": [1]}]},
     "'parameters' is an object"),
    (json.loads("[" * 50 + "]" * 50), "no 'inputs'"),
    ([1, 2], "no 'inputs'"),
])
def test_oip_infer_refuses_a_malformed_request_with_400_and_one_line(client, request_body, says):
    response = client.post("/v2/models/alexnet/infer", json=request_body)
    assert response.status_code == 400 and says in one_line_error(response)


def test_oip_infer_refuses_json_nested_past_the_parser_with_400(client):
    deep = ("[" * 100_000 + "]" * 100_000).encode()
    response = client.post("/v2/models/alexnet/infer", content=deep, headers={"content-type": "application/json"})
    assert response.status_code == 400 and "arrays, objects and elements" in one_line_error(response)


def test_tritons_own_http_client_reads_the_metadata_and_infers(server, client):
    """tritonclient.http as its users call it: binary input and binary outputs by default."""
    numpy = pytest.importorskip("numpy")
    triton = pytest.importorskip("tritonclient.http")
    triton_client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    try:
        assert triton_client.is_server_live() and triton_client.is_model_ready("alexnet")
        assert triton_client.get_model_metadata("alexnet")["inputs"][0]["datatype"] == "BYTES"
        images = [png_bytes(20), png_bytes(21)]
        tensor = triton.InferInput("image", [2], "BYTES")
        tensor.set_data_from_numpy(numpy.array(images, dtype=numpy.object_))
        result = triton_client.infer("alexnet", [tensor])
        labels = [value.decode() for value in result.as_numpy("label")]
        probabilities = result.as_numpy("probabilities")
    finally:
        triton_client.close()
    assert probabilities.shape == (2, len(server.model.class_names))
    for image, label, row in zip(images, labels, probabilities):
        record = client.post("/predict", files={"image": ("a.png", image)}).json()
        assert label == record["label"] and float(row.max()) == pytest.approx(record["confidence"], abs=1e-5)


# -- load and faults -------------------------------------------------------------------------------------------

def test_a_full_queue_answers_503_with_retry_after_at_once_and_every_request_is_answered(checkpoint):
    running = Server(checkpoint, max_batch=2, max_queue=2)
    run = running.service.batcher.run_batch

    def slow(samples):  # a forward pass as long as the real model's, so that the queue fills
        time.sleep(0.3)
        return run(samples)

    running.service.batcher.run_batch = slow

    async def load():
        async with httpx.AsyncClient(base_url=running.url, timeout=30) as http:
            async def one(i):
                started = time.monotonic()
                response = await http.post("/predict", files={"image": ("a.png", png_bytes(30 + i))})
                return response, time.monotonic() - started
            return await asyncio.gather(*(one(i) for i in range(12)))

    try:
        answers = asyncio.run(load())
        statuses = sorted(response.status_code for response, _ in answers)
        assert set(statuses) == {200, 503} and statuses.count(200) >= 2, statuses
        for response, seconds in answers:
            if response.status_code == 503:
                assert int(response.headers["retry-after"]) >= 1 and "busy" in one_line_error(response)
                assert seconds < 0.3, "a refusal waited for the forward pass"
        with httpx.Client(base_url=running.url) as http:  # and the server serves on
            assert http.post("/predict", files={"image": ("a.png", png_bytes(50))}).status_code == 200
            refused = [line for line in http.get("/metrics").text.splitlines()
                       if line.startswith("alexnet_requests_total") and 'status="503"' in line]
            assert float(refused[0].split()[-1]) == statuses.count(503)
    finally:
        running.stop()


def _start_process(args: list[str], env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    """`alexnet serve` in a process of its own; returns it and the URL its line names."""
    process = subprocess.Popen([sys.executable, "-m", "alexnet_cli", "serve", *args], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        lines.append(line)
        if "listening on http://" in line:
            return process, line.split("listening on ")[1].split()[0]
        if not line and process.poll() is not None:
            break
    process.kill()
    raise AssertionError("".join(lines))


def test_sigterm_answers_the_requests_in_flight_then_exits_0(checkpoint):
    env = {**env_without_debug(), "ALEXNET_TEST_FORWARD_SECONDS": "0.4", "COLUMNS": "200"}
    process, url = _start_process(["--weights", str(checkpoint), "--port", "0", "--max-batch", "4", "--device", "cpu"],
                                  env)
    try:
        async def in_flight():
            async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                requests = [asyncio.ensure_future(http.post("/predict", files={"image": ("a.png", png_bytes(60 + i))}))
                            for i in range(8)]
                while True:  # signal once every request is inside the server
                    metrics = (await http.get("/metrics")).text
                    depth = [line for line in metrics.splitlines() if line.startswith("alexnet_queue_depth ")]
                    if depth and float(depth[0].split()[1]) >= 8:
                        break
                    await asyncio.sleep(0.02)
                process.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.3)
                # Not ready first, while the listener is still open: a load balancer stops sending.
                ready = await http.get("/v2/health/ready")
                return await asyncio.gather(*requests), ready

        responses, ready = asyncio.run(in_flight())
        assert ready.status_code == 503 and ready.json() == {"ready": False, "reason": "draining after SIGTERM"}
        assert [r.status_code for r in responses] == [200] * 8
        assert process.wait(30) == 0
        with pytest.raises(httpx.ConnectError):  # it took no more requests
            httpx.post(f"{url}/predict", files={"image": ("a.png", png_bytes(70))}, timeout=5)
        stderr = process.stderr.read()
        assert "Traceback" not in stderr and "stopped" in stderr
    finally:
        if process.poll() is None:
            process.kill()
        process.stdout.close()
        process.stderr.close()


# -- the page -------------------------------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium: apt-get install chromium (CI installs it)")
def test_the_page_in_headless_chromium_shows_the_label_of_an_uploaded_image(server, client, tmp_path):
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    image = tmp_path / "upload.png"
    image.write_bytes(png_bytes(80, size=160))
    expected = client.post("/predict", files={"image": ("upload.png", image.read_bytes())}).json()
    requests = []
    with sync_playwright() as playwright:
        # The system's Chromium, with nothing of its own that reaches the network (the machine may be offline)
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page()
            page.on("request", lambda request: requests.append(request.url))
            page.goto(server.url)
            page.set_input_files("#file", str(image))
            page.wait_for_function("document.getElementById('label').textContent.length > 0", timeout=20000)
            shown = page.text_content("#label")
            bars = page.locator(".bar").count()
            overlay = page.get_attribute("#overlay", "src")
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        finally:
            browser.close()
    assert shown.startswith(f"{expected['label']}:"), shown
    assert bars == len(expected["top_k"]) and overlay.startswith("data:image/png;base64,")
    assert all(url.startswith(server.url) or url.startswith("data:") for url in requests), requests  # no CDN


# -- the command ---------------------------------------------------------------------------------------------

def test_serve_refuses_impossible_options_in_one_line(runner, tmp_path):
    result = invoke(runner, ["serve", "--max-batch", "64", "--max-queue", "8", "--pretrained"])
    assert result.exit_code == 2 and "--max-queue (8) must hold at least one batch" in result.output
    result = invoke(runner, ["serve", "--name", "../x"])
    assert result.exit_code == 2 and "--name" in result.output
    result = invoke(runner, ["serve", "--refusal-rate", "-1", "--pretrained"])
    assert result.exit_code == 2 and "--refusal-rate must be 0 (off) or more, got -1" in result.output


def test_serve_says_what_is_missing_without_its_extra(runner, monkeypatch, checkpoint):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "uvicorn" else find_spec(name, *args))
    result = invoke(runner, ["serve", "--weights", str(checkpoint)])
    assert result.exit_code == 2 and "pip install 'alexnet-cli[serve]'" in result.output


def test_serve_names_a_port_it_cannot_take(runner, checkpoint):
    from alexnet_cli.serving.server import bind

    with bind("127.0.0.1", 0) as taken:
        port = taken.getsockname()[1]
        result = invoke(runner, ["serve", "--weights", str(checkpoint), "--port", str(port), "--device", "cpu"])
    assert result.exit_code == 2 and f"cannot listen on 127.0.0.1:{port}" in result.output
    assert "Traceback" not in result.output
