"""The API docs, Swagger UI at /docs and ReDoc at /redoc, from files vary serves itself.

FastAPI's own pages load Swagger UI and ReDoc from a CDN (and ReDoc's fonts from Google): blank on a
GPU box without internet. The `fastapi-offline` package (MIT) bundles both builds (Swagger UI is
Apache-2.0, ReDoc MIT); only its files are used, served under ASSETS_PATH. Nothing on either page
reaches past the server: Swagger UI's validator badge (which sends the schema's URL to swagger.io) is
off, and ReDoc's one outside image, its footer logo, is replaced by an empty one.
"""

from __future__ import annotations

import functools
import html
from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, Request, Response
from fastapi.openapi.docs import get_redoc_html
from fastapi.responses import HTMLResponse

ASSETS_PATH = "/docs-assets"
ASSETS_DIR = Path(str(files("fastapi_offline") / "static"))
router = APIRouter(include_in_schema=False)
REDOC_LOGO = b'src:"https://cdn.redoc.ly/redoc/logo-mini.svg"'
EMPTY_IMAGE = b'src:"data:image/svg+xml,%3Csvg xmlns=%27http://www.w3.org/2000/svg%27/%3E"'


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    """Swagger UI, started by /static/docs.js: FastAPI's page starts it with an inline script, which the
    Content-Security-Policy (api/security_headers.py) does not allow."""
    root = html.escape(request.scope.get("root_path", ""), quote=True)
    openapi = html.escape(f"{request.scope.get('root_path', '')}{request.app.openapi_url}", quote=True)
    page = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{html.escape(request.app.title)} API</title>
<link rel="icon" href="{root}/favicon.ico">
<link rel="stylesheet" href="{root}{ASSETS_PATH}/swagger-ui.css">
<script src="{root}{ASSETS_PATH}/swagger-ui-bundle.js" defer></script>
<script src="{root}/static/docs.js" defer></script>
</head>
<body>
<div id="swagger-ui" data-openapi="{openapi}"></div>
</body>
</html>
"""
    return HTMLResponse(page)


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    page = get_redoc_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=f"{request.app.title} API",
        redoc_js_url=f"{root}/docs-redoc.js",
        redoc_favicon_url=f"{root}/favicon.ico",
        with_google_fonts=False,
    )
    return _in_english(page)


@router.get("/docs-redoc.js")
async def redoc_script() -> Response:
    return Response(_redoc_script(), media_type="text/javascript", headers={"Cache-Control": "max-age=86400"})


@functools.cache
def _redoc_script() -> bytes:
    return (ASSETS_DIR / "redoc.standalone.js").read_bytes().replace(REDOC_LOGO, EMPTY_IMAGE)


def _in_english(page: HTMLResponse) -> HTMLResponse:
    """The page with its language declared (screen readers pick their voice from it; FastAPI's has none)."""
    body = bytes(page.body).replace(b"<html>", b'<html lang="en">', 1)
    return HTMLResponse(body)
