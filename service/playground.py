"""The playground page: one model's served precisions side by side, with charts (self-contained, works offline)."""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

PAGE = "playground.html"


def playground_router() -> APIRouter:
    """`GET /` and `GET /playground`: the page (read once, here). It carries no data of its own and calls the API from
    the browser, so it is open even where an API key guards the API: it asks for the key and sends it."""
    page = (files("service") / "static" / PAGE).read_text(encoding="utf-8")
    router = APIRouter(include_in_schema=False)

    @router.get("/", response_class=HTMLResponse)
    @router.get("/playground", response_class=HTMLResponse)
    async def playground() -> HTMLResponse:
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

    return router
