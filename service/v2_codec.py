"""The V2 (Open Inference) protocol's tensors, read and written: pure functions, no HTTP.

A request is JSON, optionally followed by binary tensor data (the binary data extension that `tritonclient` uses by
default: the `Inference-Header-Content-Length` header gives the JSON's length, and each binary input says its
`binary_data_size`). BYTES elements in binary are each a 4-byte little-endian length and the bytes.

Each kind's inputs and outputs are its task's (`Task.v2_inputs`, `Task.v2_outputs`): the metadata route, the request
reader and the response writer all read them there.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from quantization.tasks import TensorSpec

INFER_HEADER = "inference-header-content-length"
BINARY_CONTENT_TYPE = "application/octet-stream"


class V2InputError(ValueError):
    """A request that is not a valid V2 inference request for the model (answered 400)."""


@dataclass(frozen=True)
class InferRequest:
    inputs: dict[str, list[str]]  # BYTES inputs by name, each one string per batch row
    outputs: dict[str, bool] = field(default_factory=dict)  # requested outputs -> binary; empty: every output, JSON
    id: str | None = None


def _bytes_elements(blob: bytes, name: str) -> list[bytes]:
    elements, offset = [], 0
    while offset < len(blob):
        if offset + 4 > len(blob):
            raise V2InputError(f"input {name!r}: binary BYTES data ends inside an element's length")
        (length,) = struct.unpack_from("<I", blob, offset)
        offset += 4
        if offset + length > len(blob):
            raise V2InputError(f"input {name!r}: binary BYTES element longer than its data")
        elements.append(blob[offset : offset + length])
        offset += length
    return elements


def _flat(data: Any) -> list[Any]:
    if isinstance(data, list):
        return [item for element in data for item in _flat(element)]
    return [data]


def parse_infer_request(body: bytes, header_length: int | None, expected: Sequence[TensorSpec]) -> InferRequest:
    """The request's inputs, checked against the model's `expected` inputs (names, BYTES, one batch dimension)."""
    if header_length is not None and not 0 <= header_length <= len(body):
        raise V2InputError(f"{INFER_HEADER} {header_length} is not within the body's {len(body)} bytes")
    head, binary = (body[:header_length], body[header_length:]) if header_length is not None else (body, b"")
    try:
        request = json.loads(head)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise V2InputError(f"the request is not JSON ({exc})") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list) or not request["inputs"]:
        raise V2InputError("the request needs a non-empty `inputs` list")
    wanted = {spec.name: spec for spec in expected}
    inputs: dict[str, list[str]] = {}
    offset = 0
    for tensor in request["inputs"]:
        if not isinstance(tensor, dict):
            raise V2InputError("each input is an object with name, shape, datatype and data")
        name, datatype, shape = tensor.get("name"), tensor.get("datatype"), tensor.get("shape")
        if name not in wanted:
            raise V2InputError(f"unknown input {name!r}; this model reads {sorted(wanted)}")
        if name in inputs:
            raise V2InputError(f"input {name!r} given twice")
        if datatype != "BYTES":
            raise V2InputError(f"input {name!r} must be BYTES, got {datatype!r}")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise V2InputError(f"input {name!r}: shape must be a list of sizes, got {shape!r}")
        if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
            raise V2InputError(f"input {name!r}: shape must be [batch] or [batch, 1], got {shape}")
        size = (tensor.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise V2InputError(f"input {name!r}: binary_data_size {size!r} past the body's binary data")
            elements: list[Any] = _bytes_elements(binary[offset : offset + size], name)
            offset += size
        elif "data" in tensor:
            elements = _flat(tensor["data"])
        else:
            raise V2InputError(f"input {name!r} has neither data nor binary_data_size")
        if len(elements) != shape[0]:
            raise V2InputError(f"input {name!r}: shape {shape} holds {shape[0]} elements, data has {len(elements)}")
        try:
            inputs[name] = [e.decode() if isinstance(e, bytes) else _text(e, name) for e in elements]
        except UnicodeDecodeError:
            raise V2InputError(f"input {name!r}: BYTES elements must be UTF-8 text") from None
    missing = sorted(set(wanted) - set(inputs))
    if missing:
        raise V2InputError(f"missing inputs {missing}; this model reads {sorted(wanted)}")
    sizes = {len(values) for values in inputs.values()}
    if len(sizes) != 1:
        raise V2InputError(f"inputs differ in batch size: { {n: len(v) for n, v in inputs.items()} }")
    outputs = {}
    for requested in request.get("outputs") or []:
        if not isinstance(requested, dict) or not isinstance(requested.get("name"), str):
            raise V2InputError("each requested output is an object with a name")
        outputs[requested["name"]] = bool((requested.get("parameters") or {}).get("binary_data", False))
    identifier = request.get("id")
    return InferRequest(inputs, outputs, str(identifier) if identifier is not None else None)


def _text(element: Any, name: str) -> str:
    if not isinstance(element, str):
        raise V2InputError(f"input {name!r}: BYTES data must be strings, got {type(element).__name__}")
    return element


_PACKED = {"FP32": "<f", "INT64": "<q"}


def _shape(rows: list[Any]) -> list[int]:
    return [len(rows), len(rows[0])] if rows and isinstance(rows[0], list) else [len(rows)]


def _binary(spec: TensorSpec, flat: list[Any]) -> bytes:
    if spec.datatype == "BYTES":
        encoded = [str(v).encode() for v in flat]
        return b"".join(struct.pack("<I", len(v)) + v for v in encoded)
    return b"".join(struct.pack(_PACKED[spec.datatype], v) for v in flat)


def encode_infer_response(
    model: str,
    version: str,
    request: InferRequest,
    specs: Sequence[TensorSpec],
    columns: dict[str, list[Any]],
) -> tuple[bytes, int | None]:
    """The response body and, where an output goes in binary, its JSON header's length (None: all JSON).

    `columns`: each output's rows; an output the request did not ask for is left out (all of them when it asked for
    none); one it asked for that the model does not have is an error."""
    names = [spec.name for spec in specs]
    unknown = sorted(set(request.outputs) - set(names))
    if unknown:
        raise V2InputError(f"unknown outputs {unknown}; this model gives {names}")
    chosen = [spec for spec in specs if not request.outputs or spec.name in request.outputs]
    tensors, blobs = [], []
    for spec in chosen:
        rows = columns[spec.name]
        flat = _flat(rows)
        tensor: dict[str, Any] = {"name": spec.name, "datatype": spec.datatype, "shape": _shape(rows)}
        if request.outputs.get(spec.name):
            blob = _binary(spec, flat)
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = [str(v) for v in flat] if spec.datatype == "BYTES" else flat
        tensors.append(tensor)
    response: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": tensors}
    if request.id is not None:
        response["id"] = request.id
    head = json.dumps(response).encode()
    if not blobs:
        return head, None
    return head + b"".join(blobs), len(head)
