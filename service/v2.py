"""The V2 (Open Inference) protocol of KServe and Triton: health, server and model metadata, readiness and inference.

A model is a served name; its version is a precision (no version: the default precision). Requests go through what
the task routes use (`service.answering.answer`: the pool, batching, limits, metrics, API key); errors take the
protocol's shape, `{"error": "..."}` (`service.errors`)."""

from __future__ import annotations

from typing import Any, Protocol

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from quantization.tasks import Task
from service.answering import Answering, answer, api_key_dependencies, check_text, max_chars
from service.errors import InvalidInputError, UnknownPrecisionError, UnknownTaskError
from service.pool import WorkerPool
from service.v2_codec import (
    BINARY_CONTENT_TYPE,
    INFER_HEADER,
    V2InputError,
    encode_infer_response,
    parse_infer_request,
)


class Service(Answering, Protocol):
    """What the V2 routes need of the service (`service.app.Service`)."""

    served: dict[str, Task]
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


def v2_router(service: Service) -> APIRouter:
    # Out of our OpenAPI document: the protocol has its own specification (KServe's Open Inference Protocol), which
    # its clients (tritonclient, KServe's) follow; our schema-driven contract test covers our own routes.
    router = APIRouter(prefix="/v2", tags=["v2"], include_in_schema=False)
    ops = api_key_dependencies(service.settings, protects=service.settings.api_key_protects_ops)
    guarded = api_key_dependencies(service.settings, protects=True)

    def task_of(name: str) -> Task:
        task = service.served.get(name) if name in service.tasks() else None
        if task is None:
            raise UnknownTaskError(f"no model {name!r}; available: {', '.join(service.tasks())}")
        return task

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
        task = task_of(name)
        if version is not None:
            check_version(name, version)
        labels = _labels(service, name)
        return {
            "name": name,
            "versions": service.precisions_of(name),
            "platform": "qbert",
            "inputs": [spec.metadata() for spec in task.v2_inputs()],
            "outputs": [spec.metadata() for spec in task.v2_outputs(len(labels) or -1)],
            "parameters": {"kind": task.kind, "labels": labels, "default_version": service.settings.default_precision},
        }

    @router.get("/models/{name}", dependencies=guarded, summary="Model metadata: inputs, outputs, versions")
    async def model_metadata(name: str) -> dict[str, Any]:
        return metadata(name, None)

    @router.get("/models/{name}/versions/{version}", dependencies=guarded, summary="A version's metadata")
    async def version_metadata(name: str, version: str) -> dict[str, Any]:
        return metadata(name, version) | {"versions": [version]}

    def readiness(name: str, version: str | None) -> JSONResponse:
        task_of(name)
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
        task = task_of(name)
        header = request.headers.get(INFER_HEADER)
        try:
            parsed = parse_infer_request(
                await request.body(), int(header) if header is not None else None, task.v2_inputs()
            )
        except (V2InputError, ValueError) as exc:
            raise InvalidInputError(str(exc)) from None
        payloads = task.v2_payloads(parsed.inputs)

        def check() -> None:
            if len(payloads) > service.settings.max_texts:
                raise InvalidInputError(f"a batch of {len(payloads)}; at most {service.settings.max_texts} per request")
            for input_name, rows in parsed.inputs.items():
                for row, text in enumerate(rows):
                    check_text(text, max_chars(service.settings, input_name), f"{input_name}[{row}]")

        answered_by, values = await answer(service, name, request, check, payloads, version=version)
        labels = _labels(service, name)
        try:
            content, json_length = encode_infer_response(
                name, answered_by["precision"], parsed, task.v2_outputs(len(labels)), task.v2_columns(labels, values)
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
