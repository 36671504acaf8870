"""Typed service errors and the one place that maps every error to HTTP.

Every error response has one shape: `{"error": <code>, "detail": <human message>}` (plus
`available` where the client picked something that does not exist); on the V2 protocol's routes, the protocol's
own: `{"error": "<code>: <message>"}`, with 400 for a request it cannot read.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger("qbert.service")


class ServiceError(Exception):
    """An error with its HTTP status and a stable machine-readable code."""

    status = 500
    code = "internal_error"

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"error": self.code, "detail": self.detail, **self.extra}


class InvalidInputError(ServiceError):
    status, code = 422, "invalid_input"


class UnauthorizedError(ServiceError):
    status, code = 401, "unauthorized"


class UnknownTaskError(ServiceError):
    status, code = 404, "unknown_task"


class UnknownPrecisionError(ServiceError):
    status, code = 404, "unknown_precision"


class PayloadTooLargeError(ServiceError):
    status, code = 413, "payload_too_large"


class OverloadedError(ServiceError):
    status, code = 429, "overloaded"


class NotReadyError(ServiceError):
    status, code = 503, "not_ready"


class ModelUnavailableError(ServiceError):
    status, code = 503, "model_unavailable"


class ModelNotReadyError(ServiceError):
    """The precision exists but is still being built, evaluated or loaded (`state` says which): retry later."""

    status, code = 503, "model_not_ready"


class WorkerLostError(ServiceError):
    status, code = 503, "worker_lost"


class ShuttingDownError(ServiceError):
    status, code = 503, "shutting_down"


class DeadlineExceededError(ServiceError):
    status, code = 504, "deadline_exceeded"


class InferenceFailedError(ServiceError):
    status, code = 500, "inference_failed"


# Outcome label of `qbert_requests_total` for each error; bounded by construction.
def outcome_of(error: ServiceError | None) -> str:
    return "ok" if error is None else error.code


def _validation_detail(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


V2_PREFIX = "/v2"  # the V2 (Open Inference) protocol's routes: its own error shape, 400 for a bad request


def _is_v2(request: Request) -> bool:
    path = request.url.path
    return path == V2_PREFIX or path.startswith(V2_PREFIX + "/")


def _v2_error(status: int, detail: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": detail}, status_code=400 if status == 422 else status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        if _is_v2(request):
            return _v2_error(exc.status, f"{exc.code}: {exc.detail}", exc.headers)
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        invalid_json = any(err.get("type") == "json_invalid" for err in exc.errors())
        code = "invalid_json" if invalid_json else "invalid_input"
        return JSONResponse({"error": code, "detail": _validation_detail(exc)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if _is_v2(request):
            return _v2_error(exc.status_code, str(exc.detail), exc.headers)
        # 400 comes from FastAPI's body reading: bytes that are not UTF-8 JSON.
        codes = {400: "invalid_json", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}
        code = codes.get(exc.status_code, "http_error")
        # Starlette's own headers (405's Allow, RFC 9110) go out with the error
        return JSONResponse(
            {"error": code, "detail": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error", exc_info=exc)
        return JSONResponse({"error": "internal_error", "detail": "internal server error"}, status_code=500)
