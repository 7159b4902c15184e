"""The Open Inference Protocol (KServe v2) for one image classifier, as KServe, Triton and MLServer speak it
over REST, with Triton's binary tensor data extension, which tritonclient uses by default.

The model takes one input, `image`: BYTES of shape [N] (or [N, 1]), each element an encoded image (JPEG, PNG,
...). In JSON each element is the image's bytes in base64; with the binary extension they are the raw bytes,
each after its length as a 4-byte little-endian integer. It gives three outputs:
    label          BYTES [N]       the top class's name
    confidence     FP32  [N]       its probability
    probabilities  FP32  [N, C]    every class's, in the order of the metadata's `classes`
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from dataclasses import dataclass
from typing import Any

from alexnet_cli.serving.uploads import RequestError

INPUT = "image"
OUTPUTS = ("label", "confidence", "probabilities")
HEADER_LENGTH = "Inference-Header-Content-Length"  # the binary extension's: the JSON's length, then binary data
# What a request's JSON may hold, counted before it is parsed (json.loads holds Python's lock while it works,
# so a body of millions of elements, or of nesting a thousand deep, would stall the event loop for seconds): its
# structural characters, `[`, `{` and `,`. A request of N images holds a few dozen and N more.
JSON_ELEMENTS = 256


def _digits(value: str, what: str) -> int:
    """A header that holds a length: ASCII digits only ("²" and "١" are digits to str.isdigit, not to int)."""
    value = value.strip()
    if not value or not value.isascii() or not value.isdigit():
        raise RequestError(400, f"{what} is not a number: {value[:20]!r}")
    return int(value)


def model_metadata(name: str, num_classes: int, parameters: dict[str, Any], platform: str = "pytorch"
                   ) -> dict[str, Any]:
    """$metadata_model_response: the input and outputs, and (in `parameters`) the classes and preprocessing.
    The protocol's parameters hold strings, numbers and booleans only: a list or an object (the classes, the
    mean) is written as its JSON, a string."""
    parameters = {key: json.dumps(value, ensure_ascii=False) if isinstance(value, (list, dict, tuple)) else value
                  for key, value in parameters.items()}
    return {
        "name": name, "versions": ["1"], "platform": platform,
        "inputs": [{"name": INPUT, "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": "label", "datatype": "BYTES", "shape": [-1]},
                    {"name": "confidence", "datatype": "FP32", "shape": [-1]},
                    {"name": "probabilities", "datatype": "FP32", "shape": [-1, num_classes]}],
        "parameters": parameters,
    }


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    images: list[bytes]
    outputs: list[tuple[str, bool]]  # (name, as binary data), in the order to answer them


def _flat(values) -> list:
    """Tensor data may come nested ([[a], [b]]) or flat ([a, b]); row-major either way."""
    if isinstance(values, list) and values and isinstance(values[0], list):
        return [item for value in values for item in _flat(value)]
    return values if isinstance(values, list) else [values]


def _bytes_elements(data: bytes, count: int) -> list[bytes]:
    """BYTES as binary data: each element's length (uint32, little-endian), then its bytes. Refused as soon as
    it holds more elements than its shape says, so the work is bounded by the shape, not by the body."""
    elements: list[bytes] = []
    offset = 0
    while offset < len(data):
        if len(elements) == count:
            raise RequestError(400, f"input '{INPUT}': its binary data holds more than the {count} elements its "
                                    "shape says")
        if offset + 4 > len(data):
            raise RequestError(400, f"input '{INPUT}': its binary data ends inside an element's length")
        (length,) = struct.unpack_from("<I", data, offset)
        offset += 4
        if offset + length > len(data):
            raise RequestError(400, f"input '{INPUT}': element {len(elements)} says {length} bytes, and "
                                    f"{len(data) - offset} are left")
        elements.append(data[offset:offset + length])
        offset += length
    if len(elements) != count:
        raise RequestError(400, f"input '{INPUT}': its shape says {count} elements, its binary data holds "
                                f"{len(elements)}")
    return elements


def parse_infer(body: bytes, header_length: str | None, max_images: int) -> InferRequest:
    """$inference_request, in JSON or JSON followed by binary tensor data. Every bound is checked before the
    work it bounds: the JSON's size in elements before it is parsed, the images per request (`max_images`,
    --max-batch) before any is decoded from base64 or split from binary data."""
    binary = b""
    if header_length is not None:
        length = _digits(header_length, HEADER_LENGTH)
        if length > len(body):
            raise RequestError(400, f"{HEADER_LENGTH} is {length}, for a body of {len(body)} bytes")
        body, binary = body[:length], body[length:]
    elements = body.count(b"[") + body.count(b"{") + body.count(b",")
    if elements > JSON_ELEMENTS + 2 * max_images:
        raise RequestError(400, f"the inference request's JSON holds {elements:,} arrays, objects and elements; an "
                                f"inference request of at most {max_images} images needs far fewer")
    try:
        request = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise RequestError(400, f"the inference request is not JSON: {exc}") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise RequestError(400, "the inference request has no 'inputs' list")
    inputs = request["inputs"]
    if len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise RequestError(400, f"this model takes one input, '{INPUT}' (BYTES); the request has {len(inputs)}")
    tensor = inputs[0]
    if tensor.get("name") != INPUT:
        raise RequestError(400, f"unknown input {str(tensor.get('name'))[:40]!r}: this model's input is "
                                f"'{INPUT}' (BYTES)")
    if tensor.get("datatype") != "BYTES":
        raise RequestError(400, f"input '{INPUT}' is BYTES (encoded images), not "
                                f"{str(tensor.get('datatype'))[:20]}")
    shape = tensor.get("shape")
    if (not isinstance(shape, list) or not 1 <= len(shape) <= 2 or not all(type(d) is int for d in shape)
            or (len(shape) == 2 and shape[1] != 1) or shape[0] < 1):
        raise RequestError(400, f"input '{INPUT}' has shape [N] or [N, 1], with N at least 1; got "
                                f"{str(shape)[:40]}")
    count = shape[0]
    if count > max_images:
        raise RequestError(400, f"{count} images in one request; at most {max_images} (--max-batch)")
    parameters = _parameters(tensor)
    if "binary_data_size" in parameters:
        size = parameters["binary_data_size"]
        if type(size) is not int or size != len(binary):
            raise RequestError(400, f"input '{INPUT}': binary_data_size is {str(size)[:20]}, and "
                                    f"{len(binary)} bytes follow the JSON")
        images = _bytes_elements(binary, count)
    else:
        try:
            data = _flat(tensor.get("data"))
        except RecursionError:
            raise RequestError(400, f"input '{INPUT}': 'data' is nested too deep") from None
        if len(data) != count or not all(isinstance(item, str) for item in data):
            raise RequestError(400, f"input '{INPUT}': 'data' holds {count} base64 strings for shape "
                                    f"{shape}")
        images = []
        for index, item in enumerate(data):
            try:
                images.append(base64.b64decode(item, validate=True))
            except (binascii.Error, ValueError):
                raise RequestError(400, f"input '{INPUT}': element {index} is not base64") from None
    return InferRequest(_request_id(request), images, _requested_outputs(request))


def _parameters(value: dict) -> dict:
    parameters = value.get("parameters")
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise RequestError(400, "'parameters' is an object: {\"name\": value, ...}")
    return parameters


def _request_id(request: dict) -> str | None:
    value = request.get("id")
    return value if isinstance(value, str) else None


def _boolean(parameters: dict, key: str, default: bool) -> bool:
    """A boolean parameter, as the protocol has it: true or false in JSON, not "false" (which is truthy)."""
    value = parameters.get(key, default)
    if type(value) is not bool:
        raise RequestError(400, f"parameter '{key}' is true or false, not {str(value)[:20]!r}")
    return value


def _requested_outputs(request: dict) -> list[tuple[str, bool]]:
    all_binary = _boolean(_parameters(request), "binary_data_output", False)
    asked = request.get("outputs")
    if asked is None:
        return [(name, all_binary) for name in OUTPUTS]
    if not isinstance(asked, list):
        raise RequestError(400, "'outputs' is a list of {\"name\": ...}")
    outputs: list[tuple[str, bool]] = []
    for output in asked:
        name = output.get("name") if isinstance(output, dict) else None
        if name not in OUTPUTS:
            raise RequestError(400, f"unknown output {str(name)[:40]!r}: this model's are {', '.join(OUTPUTS)}")
        if any(name == seen for seen, _ in outputs):
            raise RequestError(400, f"output '{name}' is asked for twice: name each output once")
        parameters = _parameters(output)
        if "classification" in parameters:
            raise RequestError(400, "the classification extension is not supported: ask for 'label' and "
                                    "'confidence', or 'probabilities'")
        outputs.append((name, _boolean(parameters, "binary_data", all_binary)))
    return outputs


def infer_response(name: str, request: InferRequest, labels: list[str], probabilities: list[list[float]]
                   ) -> tuple[bytes, dict[str, str]]:
    """$inference_response as (body, headers): JSON, or JSON followed by the outputs asked for as binary."""
    count = len(labels)
    tensors: dict[str, tuple[str, list[int], list[Any]]] = {
        "label": ("BYTES", [count], labels),
        "confidence": ("FP32", [count], [max(row) for row in probabilities]),
        "probabilities": ("FP32", [count, len(probabilities[0])], [p for row in probabilities for p in row]),
    }
    outputs, blobs = [], []
    for output_name, binary in request.outputs:
        datatype, shape, data = tensors[output_name]
        tensor: dict[str, Any] = {"name": output_name, "datatype": datatype, "shape": shape}
        if binary:
            blob = (b"".join(struct.pack("<I", len(v.encode())) + v.encode() for v in data) if datatype == "BYTES"
                    else struct.pack(f"<{len(data)}f", *data))
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = data
        outputs.append(tensor)
    response: dict[str, Any] = {"model_name": name, "model_version": "1", "outputs": outputs}
    if request.id is not None:
        response["id"] = request.id
    header = json.dumps(response, ensure_ascii=False, separators=(",", ":")).encode()
    if not blobs:
        return header, {"content-type": "application/json"}
    return header + b"".join(blobs), {"content-type": "application/octet-stream",
                                      HEADER_LENGTH.lower(): str(len(header))}
