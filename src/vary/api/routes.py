"""Thin routes: read the request, call the service, answer. Accounting and cancellation are the edge's helpers."""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from opentelemetry import trace
from starlette.concurrency import run_in_threadpool

from vary.api.accounting import CLIENT_CLOSED_REQUEST, RequestAccount
from vary.api.auth import require_api_key
from vary.api.cancellation import unless_disconnected
from vary.api.deps import services_of
from vary.api.errors import ApiError, api_error
from vary.api.protocol import (
    ERROR_RESPONSES,
    VARIATION_ERRORS,
    ControlRange,
    CreateImageVariationRequest,
    ImagesResponse,
    Model,
    ModelControls,
    ModelList,
)
from vary.api.variation_form import read_variation_form
from vary.controls import MAX_GUIDANCE_SCALE, MAX_SEED
from vary.engines.base import ModelInfo
from vary.errors import ModelNotFound
from vary.state.keys import KeyInfo
from vary.state.signing import ExpiredError, SignatureError

__all__ = ["CLIENT_CLOSED_REQUEST", "API_PREFIX", "azure_router", "router"]

# The OpenAI API's routes, without their version prefix: the app mounts them under API_PREFIX (the documented
# paths) and again at the root, undocumented, for gateways whose base URL has no /v1 (TrueFoundry's, for one).
router = APIRouter()
azure_router = APIRouter(include_in_schema=False)
API_PREFIX = "/v1"
CallerKey = Annotated[KeyInfo | None, Depends(require_api_key)]
_EXPIRES = re.compile(r"[0-9]{1,12}")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
log = logging.getLogger("vary.files")
tracer = trace.get_tracer(__name__)


@router.post(
    "/images/variations",
    # Documented here, and rendered from the same model (ImagesResponse.render) by the edge's accounting.
    responses={200: {"model": ImagesResponse, "description": "The variations."}, **VARIATION_ERRORS},
    openapi_extra={"requestBody": CreateImageVariationRequest.request_body()},
    summary="Creates variations of a given image.",
    operation_id="createImageVariation",
)
async def create_variation(request: Request, key: CallerKey) -> Response:
    return await _create_variation(request, key)


# Azure OpenAI's path scheme, so an unchanged `AzureOpenAI` client works: its `api-version` query
# parameter is accepted and ignored, its `api-key` header is a key (api/auth.py), and the deployment
# in the path names the model. Not in the schema: the OpenAI route is the one documented.
@azure_router.post("/openai/deployments/{deployment}/images/variations")
async def create_variation_azure_deployment(request: Request, deployment: str, key: CallerKey) -> Response:
    return await _create_variation(request, key, deployment=deployment)


@azure_router.post("/openai/images/variations")
async def create_variation_azure(request: Request, key: CallerKey) -> Response:
    return await _create_variation(request, key)


async def _create_variation(request: Request, key: KeyInfo | None, *, deployment: str | None = None) -> Response:
    services = services_of(request)
    settings = services.settings
    async with RequestAccount(request, services, key) as account:
        await account.admit_request()  # before the body: a key over its limits uploads nothing
        with tracer.start_as_current_span("vary.read_form"):  # the multipart body, its fields checked
            form = await read_variation_form(
                request, max_user_chars=settings.max_user_chars, max_steps=settings.max_request_steps
            )
        if deployment is not None:  # Azure's deployment is the model, whatever the form says
            form = dataclasses.replace(form, model=deployment)
        account.describe(form)
        await account.admit(form.n)
        checks = key is None or key.checks_content  # an operator may trust a key with checks off
        work = services.variations.create(
            form.to_request(),
            base_url=str(request.base_url),
            tried=account.tried,
            findings=account.findings,
            safety=checks,
            admit_images=account.admit,  # a regeneration's images, before they are made
        )
        return await account.respond(await unless_disconnected(request, work))
    return Response(status_code=CLIENT_CLOSED_REQUEST)  # the client left: nobody reads this


@router.head("/files/{filename}", include_in_schema=False)  # what answers GET answers HEAD
@router.get("/files/{filename}", responses={403: ERROR_RESPONSES[401] | {"description": "Bad or expired signature"}})
async def get_file(request: Request, filename: str, expires: str = "", signature: str = "") -> Response:
    """A generated PNG, for as long as its signed URL is valid. The signature is the credential."""
    services = services_of(request)
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
    # From whichever store is configured, so any replica serves a URL another signed; a store that cannot
    # be reached raises StoreUnavailable (503).
    data = await run_in_threadpool(services.store.read, image_id)
    if data is None:
        raise ApiError(404, "No such file.", code="file_not_found")
    if not data.startswith(PNG_SIGNATURE):
        # Put there by someone else who can write to the store (a shared bucket): never served as ours.
        log.warning("stored image %s is not a PNG: not served", image_id)
        raise ApiError(404, "No such file.", code="file_not_found")
    return Response(
        data,
        media_type="image/png",
        headers={
            "Cache-Control": f"private, max-age={max(0, int(expires) - int(now))}",
            "X-Content-Type-Options": "nosniff",  # a browser takes it as the PNG it says it is, nothing else
        },
    )


def _model_cards(request: Request) -> list[Model]:
    services = services_of(request)
    max_steps = services.settings.max_request_steps
    cards = []
    for served in services.registry.served():
        info = served.info
        cards.append(
            Model(
                id=served.id,
                created=services.started_at,
                owned_by=info.owned_by,
                root=info.id,
                parent=served.alias_of,
                description=info.description if served.alias_of is None else f"Alias of {info.id}. {info.description}",
                license=info.license,
                controls=_controls(info, max_steps),
            )
        )
    return cards


def _controls(info: ModelInfo, max_steps: int) -> ModelControls:
    """What the model declares it does with each control, its defaults, and the bounds the form checks."""
    able, defaults = info.capabilities, info.defaults  # no defaults: the provider's own
    steps = defaults.steps if defaults else None
    guidance = defaults.guidance_scale if defaults else None
    strength = ControlRange(default=1.0, minimum=0.0, maximum=1.0, exclusive_minimum=True)
    return ModelControls(
        seed=ControlRange(default=None, minimum=0, maximum=MAX_SEED) if able.seed else None,
        steps=ControlRange(default=steps, minimum=1, maximum=max_steps) if able.steps else None,
        guidance_scale=(
            ControlRange(default=guidance, minimum=0.0, maximum=MAX_GUIDANCE_SCALE) if able.guidance_scale else None
        ),
        strength=strength if able.img2img else None,
        max_images=able.max_images,
        image_weights=able.image_weights,
    )


@router.get("/models", response_model=ModelList, responses=ERROR_RESPONSES)
async def list_models(request: Request, _: CallerKey) -> ModelList:
    return ModelList(data=_model_cards(request))


@router.get("/models/{model_id}", response_model=Model, responses=ERROR_RESPONSES)
async def retrieve_model(request: Request, model_id: str, _: CallerKey) -> Model:
    for card in _model_cards(request):
        if card.id == model_id:
            return card
    raise api_error(ModelNotFound(model_id))
