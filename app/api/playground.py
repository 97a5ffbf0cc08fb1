"""The playground: a page at ``/`` that drives ``/v1/jobs`` from a browser.

Static files shipped in the package (``app/playground``), no build step and nothing
fetched from elsewhere, so it works offline. The page is open like the probes; when
the server has an API key the page asks for it and sends it with each API call.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

FILES = Path(__file__).resolve().parents[1] / "playground"

router = APIRouter(tags=["playground"])

_HTML = {200: {"content": {"text/html": {}}, "description": "the playground page"}}


@router.get("/", response_class=FileResponse, responses=_HTML, operation_id="playground")
@router.head("/", response_class=FileResponse, responses=_HTML, operation_id="playground_head")
async def page() -> FileResponse:
    """The playground: a page to generate from a browser, step by step."""
    return FileResponse(FILES / "index.html", headers={"Cache-Control": "no-cache"})


def install(app: FastAPI) -> None:
    """Serve the page's scripts and styles under ``/playground``."""
    app.mount("/playground", StaticFiles(directory=FILES), name="playground")
