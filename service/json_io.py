"""Typed JSON in and out of the predict routes, without FastAPI's per-request parameter machinery.

Declared as parameters, a body model and the two precision selectors cost FastAPI a large share of a short
request (annotation introspection for every query and header parameter, the body parsed to Python objects and
then validated, the response validated again and encoded through `jsonable_encoder`; the README's serving
section has the figures). Here pydantic-core parses and validates the raw bytes in one step and serializes the response
model straight to bytes; the OpenAPI schema still describes the same body, parameters and response.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError

RequestModel = TypeVar("RequestModel", bound=BaseModel)

PRECISION_QUERY = "precision"
PRECISION_HEADER = "X-Precision"
_SCHEMA_REF = "#/components/schemas/{model}"


async def read_body(request: Request, model: type[RequestModel]) -> RequestModel:
    """The request body validated as `model`; invalid JSON or fields raise what FastAPI's own parsing would."""
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as exc:
        # Located under "body" as FastAPI locates body errors, so the one error handler words them alike.
        errors = [{**error, "loc": ("body", *error["loc"])} for error in exc.errors(include_url=False)]
        raise RequestValidationError(errors) from None


def requested_precision(request: Request) -> tuple[str | None, str | None]:
    """The precision named by `?precision=` and by the `X-Precision` header (either may be absent; the query wins)."""
    return request.query_params.get(PRECISION_QUERY), request.headers.get(PRECISION_HEADER)


def json_response(model: BaseModel) -> Response:
    return Response(model.model_dump_json(), media_type="application/json")


def openapi_inputs(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` for a route that reads `model` as its JSON body and takes a precision selector."""
    return {
        "requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": _schema_ref(model)}}}},
        "parameters": [
            {
                "name": PRECISION_QUERY,
                "in": "query",
                "required": False,
                "schema": {"type": "string"},
                "description": "precision name, e.g. w8, w4g128 (see /models); wins over X-Precision",
            },
            {
                "name": PRECISION_HEADER,
                "in": "header",
                "required": False,
                "schema": {"type": "string"},
                "description": "precision name where ?precision= is absent (the response's `precision` names the one "
                "that ran)",
            },
        ],
    }


def document_request_models(
    app: FastAPI, models: list[type[BaseModel]], limits: Callable[[str], dict[str, Any]] | None = None
) -> None:
    """Add the bodies that routes read themselves to the OpenAPI components, where `openapi_inputs` points.

    `limits`: per property name, the JSON-schema keywords the service enforces on its free-text strings (length, a
    non-blank character) or lists of them (item count), published so that a request the schema allows is one the
    service takes."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schemas = generate().setdefault("components", {}).setdefault("schemas", {})
            for model in models:
                schema = model.model_json_schema(ref_template=_SCHEMA_REF)
                for name, prop in schema.get("properties", {}).items():
                    _constrain(prop, limits(name) if limits is not None else {})
                schemas[model.__name__] = schema
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to extend the schema


def _constrain(prop: dict[str, Any], keywords: dict[str, Any]) -> None:
    """Put `keywords` on a string property, or on an array property and its string items."""
    if prop.get("type") == "array":
        prop.update({k: v for k, v in keywords.items() if k in ("minItems", "maxItems")})
        _constrain(prop.setdefault("items", {}), keywords)
    elif prop.get("type") == "string" and "enum" not in prop:  # a choice among names is no free text
        prop.update({k: v for k, v in keywords.items() if k not in ("minItems", "maxItems")})


def _schema_ref(model: type[BaseModel]) -> str:
    return _SCHEMA_REF.format(model=model.__name__)
