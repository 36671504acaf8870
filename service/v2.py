"""The V2 (Open Inference) protocol of KServe and Triton: health, server and model metadata, readiness and inference.

A model is a served name; its version is a precision (no version: the default precision). Requests go through what
the task routes use (`service.answering.answer`: the pool, batching, limits, metrics, API key); errors take the
protocol's shape, `{"error": "..."}` (`service.errors`)."""

from __future__ import annotations

import json
from typing import Any, Protocol

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from service.answering import Answering, answer, api_key_dependencies, check_text
from service.discovery import ModelKind
from service.errors import InvalidInputError, UnknownPrecisionError, UnknownTaskError
from service.pool import WorkerPool
from service.v2_codec import (
    BINARY_CONTENT_TYPE,
    INFER_HEADER,
    InferRequest,
    V2InputError,
    encode_infer_response,
    kind_inputs,
    kind_outputs,
    parse_infer_request,
)


class Service(Answering, Protocol):
    """What the V2 routes need of the service (`service.app.Service`)."""

    kinds: dict[str, ModelKind]
    pool: WorkerPool

    def tasks(self) -> list[str]: ...

    def precisions_of(self, task: str) -> list[str]: ...

    def ready(self) -> tuple[bool, str]: ...


SERVER_NAME = "qbert-serve"
EXTENSIONS = ["binary_tensor_data"]


def _labels(service: Service, name: str) -> list[str]:
    """The model's labels, from any of its precisions that a worker loaded (empty until one is)."""
    for (task, _), info in service.pool.models.items():
        if task == name and info.labels:
            return list(info.labels)
    return []


def _payloads(name: str, kind: ModelKind, request: InferRequest) -> list[Any]:
    inputs = request.inputs
    if kind.kind == "question-answering":
        return list(zip(inputs["question"], inputs["context"], strict=True))
    if kind.kind == "token-classification" or name == "sst2":
        return list(inputs["text"])  # the task routes' own payloads: SST-2 keeps refusing long texts
    pairs: list[str | None] = list(inputs["text_pair"]) if "text_pair" in inputs else [None] * len(inputs["text"])
    return [{"text": t, "text_pair": p, "truncation": "truncate"} for t, p in zip(inputs["text"], pairs, strict=True)]


def _columns(kind: ModelKind, labels: list[str], values: list[Any]) -> dict[str, list[Any]]:
    if kind.kind == "question-answering":
        return {
            "answer": [v.answer for v in values],
            "start": [v.start for v in values],
            "end": [v.end for v in values],
            "score": [v.score for v in values],
        }
    if kind.kind == "token-classification":
        fields = ("type", "text", "start", "end", "score")
        return {"entities": [json.dumps([{f: getattr(e, f) for f in fields} for e in v.entities]) for v in values]}
    order = labels or list(values[0].scores)
    return {
        "label": [v.label or "" for v in values],
        "score": [v.score for v in values],
        "scores": [[v.scores.get(label, 0.0) for label in order] for v in values],
        "labels": [json.dumps(list(v.labels)) for v in values],
    }


def v2_router(service: Service) -> APIRouter:
    # Out of our OpenAPI document: the protocol has its own specification (KServe's Open Inference Protocol), which
    # its clients (tritonclient, KServe's) follow; our schema-driven contract test covers our own routes.
    router = APIRouter(prefix="/v2", tags=["v2"], include_in_schema=False)
    ops = api_key_dependencies(service.settings, protects=service.settings.api_key_protects_ops)
    guarded = api_key_dependencies(service.settings, protects=True)

    def kind_of(name: str) -> ModelKind:
        kind = service.kinds.get(name) if name in service.tasks() else None
        if kind is None:
            raise UnknownTaskError(f"no model {name!r}; available: {', '.join(service.tasks())}")
        return kind

    def check_version(name: str, version: str | None) -> str:
        chosen = version or service.settings.default_precision
        if chosen not in service.precisions_of(name):
            available = ", ".join(service.precisions_of(name))
            raise UnknownPrecisionError(f"model {name!r} has no version {chosen!r}; versions: {available}")
        return chosen

    @router.get("", dependencies=ops, summary="Server metadata")
    async def server_metadata() -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": "0.1.0", "extensions": EXTENSIONS}

    @router.get("/health/live", dependencies=ops, summary="Liveness (200: live)")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @router.get("/health/ready", dependencies=ops, summary="Readiness (200: ready, 503: not yet)")
    async def ready() -> JSONResponse:
        is_ready, _ = service.ready()
        return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)

    def metadata(name: str, version: str | None) -> dict[str, Any]:
        kind = kind_of(name)
        if version is not None:
            check_version(name, version)
        labels = _labels(service, name)
        outputs = kind_outputs(kind.kind, len(labels) or -1, kind.multi_label, kind.regression)
        return {
            "name": name,
            "versions": service.precisions_of(name),
            "platform": "qbert",
            "inputs": [spec.metadata() for spec in kind_inputs(kind.kind, kind.reads_pairs)],
            "outputs": [spec.metadata() for spec in outputs],
            "parameters": {"kind": kind.kind, "labels": labels, "default_version": service.settings.default_precision},
        }

    @router.get("/models/{name}", dependencies=guarded, summary="Model metadata: inputs, outputs, versions")
    async def model_metadata(name: str) -> dict[str, Any]:
        return metadata(name, None)

    @router.get("/models/{name}/versions/{version}", dependencies=guarded, summary="A version's metadata")
    async def version_metadata(name: str, version: str) -> dict[str, Any]:
        return metadata(name, version) | {"versions": [version]}

    def readiness(name: str, version: str | None) -> JSONResponse:
        kind_of(name)
        chosen = check_version(name, version)
        is_ready = service.pool.serves((name, chosen))
        return JSONResponse({"name": name, "version": chosen, "ready": is_ready}, status_code=200 if is_ready else 503)

    @router.get("/models/{name}/ready", dependencies=guarded, summary="Whether the default version serves")
    async def model_ready(name: str) -> JSONResponse:
        return readiness(name, None)

    @router.get("/models/{name}/versions/{version}/ready", dependencies=guarded, summary="Whether a version serves")
    async def version_ready(name: str, version: str) -> JSONResponse:
        return readiness(name, version)

    async def infer(name: str, version: str | None, request: Request) -> Response:
        kind = kind_of(name)
        header = request.headers.get(INFER_HEADER)
        try:
            parsed = parse_infer_request(
                await request.body(),
                int(header) if header is not None else None,
                kind_inputs(kind.kind, kind.reads_pairs),
            )
        except (V2InputError, ValueError) as exc:
            raise InvalidInputError(str(exc)) from None
        payloads = _payloads(name, kind, parsed)

        def check() -> None:
            if len(payloads) > service.settings.max_texts:
                raise InvalidInputError(f"a batch of {len(payloads)}; at most {service.settings.max_texts} per request")
            for input_name, rows in parsed.inputs.items():
                limit = (
                    service.settings.max_context_chars if input_name == "context" else service.settings.max_text_chars
                )
                for row, text in enumerate(rows):
                    check_text(text, limit, f"{input_name}[{row}]")

        answered_by, values = await answer(service, name, request, check, payloads, version=version)
        labels = _labels(service, name)
        specs = kind_outputs(kind.kind, len(labels), kind.multi_label, kind.regression)
        try:
            content, json_length = encode_infer_response(
                name, answered_by["precision"], parsed, specs, _columns(kind, labels, values)
            )
        except V2InputError as exc:
            raise InvalidInputError(str(exc)) from None
        if json_length is None:
            return Response(content, media_type="application/json")
        return Response(content, media_type=BINARY_CONTENT_TYPE, headers={INFER_HEADER: str(json_length)})

    @router.post("/models/{name}/infer", dependencies=guarded, summary="Inference at the default version")
    async def model_infer(name: str, request: Request) -> Response:
        return await infer(name, None, request)

    @router.post("/models/{name}/versions/{version}/infer", dependencies=guarded, summary="Inference at a version")
    async def version_infer(name: str, version: str, request: Request) -> Response:
        check_version(name, version)
        return await infer(name, version, request)

    return router
