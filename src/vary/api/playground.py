"""The browser playground at `/`: static files from vary/web, no build step, nothing from a CDN."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
router = APIRouter(include_in_schema=False)


@router.get("/")
async def playground() -> FileResponse:
    return FileResponse(WEB_DIR / "index.html", media_type="text/html")


@router.get("/favicon.ico")
async def favicon() -> FileResponse:
    # Browsers and tools ask for /favicon.ico whatever a page links; the page's own SVG icon answers.
    return FileResponse(WEB_DIR / "favicon.svg", media_type="image/svg+xml")
