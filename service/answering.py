"""What every predict route does, whatever its protocol: the API key, the text checks, and answering a request
(choose the precision, check, run through the pool, count and time it)."""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from fastapi import Depends, Request

from quantization.tasks import TextToCheck
from service.errors import InferenceFailedError, InvalidInputError, ServiceError, UnauthorizedError, outcome_of
from service.json_io import requested_precision
from service.latency import RecentLatencies
from service.metrics import ServiceMetrics
from service.settings import ServiceSettings


class Answering(Protocol):
    """What answering needs of the service (`service.app.Service`)."""

    settings: ServiceSettings
    metrics: ServiceMetrics
    latencies: RecentLatencies

    def choose_precision(self, task: str, query: str | None, header: str | None) -> str: ...

    async def run(self, task: str, precision: str, payloads: list[Any]) -> list[Any]: ...

    def model_name(self, task: str, precision: str) -> str: ...


def api_key_dependencies(settings: ServiceSettings, protects: bool) -> list[Any]:
    """The API key check as a route dependency; none at all when no key applies, so nothing runs per request."""
    if settings.api_key is None or not protects:
        return []
    expected = settings.api_key.get_secret_value().encode()

    async def require_api_key(request: Request) -> None:
        # Headers read here rather than declared as parameters: they stay out of the OpenAPI schema.
        headers = request.headers
        given = headers.get("x-api-key") or headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not secrets.compare_digest(given.encode(), expected):
            raise UnauthorizedError("a valid API key is required (Authorization: Bearer KEY or X-API-Key)")

    return [Depends(require_api_key)]


# A text must hold a character outside every notion of whitespace that a client may check with: Python's (which counts
# the separators U+001C-U+001F and U+0085) and JSON Schema's ECMAScript `\s` (which counts U+FEFF). The published
# schema carries this very pattern, so the service and a schema-driven client agree on what is blank.
NON_BLANK = r"[^\t\n\v\f\r \x1c-\x1f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff]"
_NON_BLANK = re.compile(NON_BLANK)


def check_text(text: str, limit: int, field: str) -> None:
    if not _NON_BLANK.search(text):
        raise InvalidInputError(f"{field} is empty")
    if len(text) > limit:
        raise InvalidInputError(f"{field} has {len(text)} characters; at most {limit} are allowed")


# Request fields that hold a passage (up to `max_context_chars`) rather than a sentence (`max_text_chars`).
PASSAGE_FIELDS = frozenset({"context"})


def max_chars(settings: ServiceSettings, field: str) -> int:
    return settings.max_context_chars if field in PASSAGE_FIELDS else settings.max_text_chars


def field_limits(settings: ServiceSettings) -> Callable[[str], dict[str, Any]]:
    """A request field's JSON-schema keywords for what `check_request` enforces: published, so that a request the
    schema allows is one the service takes (items for lists, length and a non-blank character for texts)."""

    def limits(field: str) -> dict[str, Any]:
        text = {"minLength": 1, "maxLength": max_chars(settings, field), "pattern": NON_BLANK}
        return {**text, "minItems": 1, "maxItems": settings.max_texts}

    return limits


def check_request(payloads: Sequence[Any], texts: Sequence[TextToCheck], settings: ServiceSettings) -> None:
    """A request's inputs within the batch limit, and each of its texts not blank and within its field's length."""
    if not 1 <= len(payloads) <= settings.max_texts:
        raise InvalidInputError(f"give 1 to {settings.max_texts} texts, got {len(payloads)}")
    for where, text, field in texts:
        check_text(text, max_chars(settings, field), where)


async def answer(
    service: Answering,
    task: str,
    request: Request,
    check: Callable[[], None],
    payloads: list[Any],
    version: str | None = None,
) -> tuple[dict[str, str], list[Any]]:
    """Choose the precision (`version`, else the request's own choice), check the input, run it: the response's
    `task`/`precision`/`model` and values.

    The request is counted and timed whatever its outcome; precision "none" means it named none that exists.
    """
    started = time.perf_counter()
    precision: str | None = None
    error: ServiceError | None = None
    try:
        chosen = (version, None) if version is not None else requested_precision(request)
        precision = service.choose_precision(task, *chosen)
        check()
        service.metrics.inflight_inputs.inc(len(payloads))
        try:
            values = await service.run(task, precision, payloads)
        finally:
            service.metrics.inflight_inputs.dec(len(payloads))
        return {"task": task, "precision": precision, "model": service.model_name(task, precision)}, values
    except ServiceError as exc:
        error = exc
        raise
    except Exception:
        error = InferenceFailedError("unexpected")
        raise
    finally:
        service.metrics.requests.labels(task, precision or "none", outcome_of(error)).inc()
        if precision is not None:
            seconds = time.perf_counter() - started
            service.metrics.request_duration.labels(task, precision).observe(seconds)
            if error is None:
                service.latencies.record((task, precision), seconds)
