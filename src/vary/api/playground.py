"""The browser playground at `/` and the API docs at `/docs`: static files from vary/web, no build step,
nothing from a CDN (Swagger UI's files come with the fastapi-offline package and are served from /docs-assets)."""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import APIRouter
from fastapi.responses import FileResponse

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
SWAGGER_UI_DIR = Path(fastapi_offline.__file__).resolve().parent / "static"
router = APIRouter(include_in_schema=False)


@router.get("/")
async def playground() -> FileResponse:
    return FileResponse(WEB_DIR / "index.html", media_type="text/html")


@router.get("/favicon.ico")
async def favicon() -> FileResponse:
    # Browsers and tools ask for /favicon.ico whatever a page links; the page's own SVG icon answers.
    return FileResponse(WEB_DIR / "favicon.svg", media_type="image/svg+xml")


@router.get("/docs")
async def docs() -> FileResponse:
    return FileResponse(WEB_DIR / "docs.html", media_type="text/html")
