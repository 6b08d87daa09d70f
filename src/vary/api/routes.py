"""Thin routes: read the request, call the serving logic, record usage. No generation logic here."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from starlette.concurrency import run_in_threadpool

from vary.api.auth import require_api_key
from vary.api.errors import ApiError, model_not_found
from vary.api.limits import admit
from vary.api.protocol import ERROR_RESPONSES, CreateImageVariationRequest, ImagesResponse, Model, ModelList
from vary.api.request_context import describe_request, request_id_of
from vary.api.variation_form import read_variation_form
from vary.db import Database, KeyInfo, UsageRow
from vary.echo import clipped
from vary.ratelimit import Admission
from vary.serving import ClientGone
from vary.signing import ExpiredError, SignatureError

log = logging.getLogger("vary.routes")
router = APIRouter()
CallerKey = Annotated[KeyInfo | None, Depends(require_api_key)]
_EXPIRES = re.compile(r"[0-9]{1,12}")
# nginx's code for "client closed the request"; only ever recorded, never sent to anyone.
CLIENT_CLOSED_REQUEST = 499


@router.post(
    "/v1/images/variations",
    response_model=ImagesResponse,
    response_model_exclude_none=True,
    responses=ERROR_RESPONSES,
    openapi_extra={"requestBody": CreateImageVariationRequest.request_body()},
    summary="Creates variations of a given image.",
    operation_id="createImageVariation",
)
async def create_variation(request: Request, key: CallerKey) -> Response:
    services = request.app.state.services
    started = time.perf_counter()
    usage = UsageRow(
        created_at=time.time(), key_id=key.id if key else None, status=500, request_id=request_id_of(request)
    )
    admission: Admission | None = None
    stages: dict[str, float] = {}
    try:
        form = await read_variation_form(
            request,
            max_user_chars=services.settings.max_user_chars,
            max_steps=services.settings.max_request_steps,
        )
        usage.model = clipped(form.model or services.registry.default.info.id)
        usage.n, usage.size, usage.response_format, usage.user = (
            form.n,
            form.size_label,
            form.response_format,
            form.user,
        )
        admission = await admit(services, key, form.n)
        services.metrics.in_flight.inc()
        result = await services.variations.create(
            form, base_url=str(request.base_url), wait_for_disconnect=lambda: _disconnected(request)
        )
        usage.status, usage.target, usage.attempts = 200, result.target, result.attempts
        result.timings.stages["total"] = time.perf_counter() - started
        stages = result.timings.stages
        services.metrics.observe_request(usage.model, stages)
        headers = {
            "Server-Timing": result.timings.header(),
            "x-vary-batch-images": str(result.batch_images),
            **admission.headers,
        }
        if result.seed is not None:
            headers["x-vary-seed"] = str(result.seed)  # so a request without `seed` can be repeated exactly
        if result.target != usage.model:
            headers["x-vary-target"] = result.target  # which of a route's targets answered
        return Response(result.body, media_type="application/json", headers=headers)
    except ApiError as exc:
        usage.status = exc.status
        if admission is not None:
            exc.headers = {**admission.headers, **exc.headers}
        raise
    except ClientGone:
        usage.status = CLIENT_CLOSED_REQUEST
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    finally:
        usage.latency_ms = (time.perf_counter() - started) * 1000.0
        services.metrics.count_request(usage.model, usage.status)
        describe_request(
            request,
            key_id=usage.key_id,
            user=usage.user,
            model=usage.model,
            n=usage.n,
            size=usage.size,
            timings_ms={stage: round(seconds * 1000, 1) for stage, seconds in stages.items()},
        )
        await _record(services.db, usage)
        if admission is not None:
            services.limiter.release(admission)  # after the usage row: the quota never double-counts low
            services.metrics.in_flight.dec()


async def _record(db: Database, usage: UsageRow) -> None:
    # Accounting must never cost the client the images it was already given.
    try:
        await run_in_threadpool(db.record_usage, usage)
    except Exception:
        log.exception("could not record usage")


async def _disconnected(request: Request) -> None:
    """Returns when the client hangs up; the body has been read by then, so nothing else is lost."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


@router.head("/v1/files/{filename}", include_in_schema=False)  # what answers GET answers HEAD
@router.get("/v1/files/{filename}", responses={403: ERROR_RESPONSES[401] | {"description": "Bad or expired signature"}})
async def get_file(request: Request, filename: str, expires: str = "", signature: str = "") -> Response:
    """A generated PNG, for as long as its signed URL is valid. The signature is the credential."""
    services = request.app.state.services
    image_id, _, extension = filename.rpartition(".")
    if extension != "png" or not services.store.is_valid_id(image_id):
        raise ApiError(404, "No such file.", code="file_not_found")
    if not _EXPIRES.fullmatch(expires) or not signature:
        raise ApiError(
            403, "This URL is not signed: it needs its expires and signature parameters.", code="invalid_signature"
        )
    now = time.time()
    try:
        services.signer.verify(image_id, int(expires), signature, now=now)
    except SignatureError:
        raise ApiError(403, "The URL's signature does not match.", code="invalid_signature") from None
    except ExpiredError:
        raise ApiError(403, "This URL has expired.", code="url_expired") from None
    data = await run_in_threadpool(_read_if_present, services.store.get(image_id))
    if data is None:
        raise ApiError(404, "No such file.", code="file_not_found")
    return Response(
        data,
        media_type="image/png",
        headers={"Cache-Control": f"private, max-age={max(0, int(expires) - int(now))}"},
    )


def _read_if_present(path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except FileNotFoundError:  # swept between lookup and read
        return None


def _model_cards(request: Request) -> list[Model]:
    services = request.app.state.services
    cards = []
    for served in services.registry.served():
        info = served.engine.info
        cards.append(
            Model(
                id=served.id,
                created=services.started_at,
                owned_by=info.owned_by,
                root=info.id,
                parent=served.alias_of,
                description=info.description if served.alias_of is None else f"Alias of {info.id}. {info.description}",
                license=info.license,
            )
        )
    return cards


@router.get("/v1/models", response_model=ModelList, responses=ERROR_RESPONSES)
async def list_models(request: Request, _: CallerKey) -> ModelList:
    return ModelList(data=_model_cards(request))


@router.get("/v1/models/{model_id}", response_model=Model, responses=ERROR_RESPONSES)
async def retrieve_model(request: Request, model_id: str, _: CallerKey) -> Model:
    for card in _model_cards(request):
        if card.id == model_id:
            return card
    raise model_not_found(model_id)
