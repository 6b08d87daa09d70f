"""The one place errors become OpenAI's error JSON and an HTTP status.

Lower layers raise domain errors (`vary.errors`); `api_error` maps each to its status, type and
code here. The edge's own refusals (auth, signatures, the form) raise ApiError directly. Every
non-2xx answer, FastAPI's own validation errors and unknown routes included, has the shape
{"error": {"message", "type", "param", "code"}}.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from vary import errors as domain
from vary.echo import clipped

log = logging.getLogger("vary.errors")

INVALID_REQUEST = "invalid_request_error"
SERVER_ERROR = "server_error"


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = INVALID_REQUEST,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    def body(self) -> dict[str, dict[str, str | None]]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def invalid(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def server_error() -> ApiError:
    # Says nothing about the cause: internals stay in the server log.
    return ApiError(
        500,
        "The server had an error while processing your request. Sorry about that!",
        type=SERVER_ERROR,
    )


def api_error(exc: domain.VaryError) -> ApiError:
    """A domain error as OpenAI would answer it."""
    message, param = exc.message, exc.param
    if isinstance(exc, domain.RequestInvalid):
        return ApiError(400, message, param=param, code=exc.code)
    if isinstance(exc, domain.ModelNotFound):
        return ApiError(404, message, param=param, code="model_not_found")
    if isinstance(exc, domain.ModelUnavailable):
        return ApiError(503, message, type=SERVER_ERROR, param=param, code="model_unavailable")
    if isinstance(exc, domain.Overloaded):
        return _retry_later(exc.retry_after, message, type="requests", code="queue_full")
    if isinstance(exc, domain.ReplicaLost):
        retry = {"Retry-After": str(exc.retry_after)}
        return ApiError(503, message, type=SERVER_ERROR, code="replica_unavailable", headers=retry)
    if isinstance(exc, domain.ShuttingDown):
        retry = {"Retry-After": str(exc.retry_after)}
        return ApiError(503, message, type=SERVER_ERROR, code="server_shutting_down", headers=retry)
    if isinstance(exc, domain.RateLimited):
        return _retry_later(exc.retry_after, message, type=exc.unit, code="rate_limit_exceeded", headers=exc.headers)
    if isinstance(exc, domain.QuotaExceeded):
        return ApiError(429, message, type="insufficient_quota", code="insufficient_quota", headers=exc.headers)
    if isinstance(exc, domain.UpstreamRefused):
        return ApiError(exc.status, message, type=exc.type or INVALID_REQUEST, param=param, code=exc.code)
    if isinstance(exc, domain.UpstreamRateLimited):
        return _retry_later(exc.retry_after, message, type="requests", code="rate_limit_exceeded")
    if isinstance(exc, domain.UpstreamUnavailable):
        return ApiError(502, message, type=SERVER_ERROR, code="upstream_unavailable")
    if isinstance(exc, domain.UpstreamFailure):
        return ApiError(502, message, type=SERVER_ERROR, code="upstream_error")
    if isinstance(exc, domain.StoreUnavailable):
        return ApiError(
            503, message, type=SERVER_ERROR, code="store_unavailable", headers={"Retry-After": str(exc.retry_after)}
        )
    if isinstance(exc, domain.SafetyUnavailable):
        return ApiError(
            503, message, type=SERVER_ERROR, code="safety_unavailable", headers={"Retry-After": str(exc.retry_after)}
        )
    if isinstance(exc, domain.DatabaseUnavailable):
        return ApiError(
            503, message, type=SERVER_ERROR, code="database_unavailable", headers={"Retry-After": str(exc.retry_after)}
        )
    return server_error()


def _retry_later(
    seconds: int, message: str, *, type: str, code: str, headers: Mapping[str, str] | None = None
) -> ApiError:
    return ApiError(429, message, type=type, code=code, headers={**(headers or {}), "Retry-After": str(seconds)})


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return exc.response()


async def _domain_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, domain.VaryError)
    return api_error(exc).response()


def validation_error(errors: Sequence[Any]) -> ApiError:
    """pydantic's (or FastAPI's) validation errors as OpenAI's 400, naming the first field that is wrong."""
    first = errors[0] if errors else {}
    loc = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path")]
    param = ".".join(loc) or None
    message = str(first.get("msg", "Invalid request."))
    return invalid(f"{message} - '{param}'" if param else message, param=param)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return validation_error(exc.errors()).response()


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404:
        error = ApiError(404, f"Invalid URL ({request.method} {clipped(request.url.path)})")
    elif exc.status_code == 405:
        error = ApiError(405, f"Method not allowed ({request.method} {clipped(request.url.path)})")
    else:
        # Starlette raises 400s itself, e.g. for malformed multipart bodies; keep its reason.
        error = ApiError(exc.status_code, str(exc.detail))
    error.headers.update(exc.headers or {})
    return error.response()


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    error = server_error()
    # Starlette sends this from outside every middleware, so the request id is added here.
    request_id = request.scope.get("state", {}).get("request_id")
    if isinstance(request_id, str):
        error.headers["x-request-id"] = request_id
    return error.response()


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(domain.VaryError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
