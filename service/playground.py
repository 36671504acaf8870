"""The playground page: one model's served precisions side by side, with charts (self-contained, works offline)."""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import FileResponse

PAGE = files("service") / "static" / "playground.html"


def playground_router() -> APIRouter:
    """`GET /` and `GET /playground`: the page, served from the package's file as it stands (no read at start-up). It
    carries no data of its own and calls the API from the browser, so it is open even where an API key guards the
    API: it asks for the key and sends it."""
    router = APIRouter(include_in_schema=False)

    @router.get("/")
    @router.get("/playground")
    async def playground() -> FileResponse:
        return FileResponse(str(PAGE), media_type="text/html; charset=utf-8", headers={"Cache-Control": "no-cache"})

    return router
