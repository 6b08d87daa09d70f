"""A fake of Replicate's predictions API on loopback, as Replicate documents it, for FLUX.1 Redux.

- POST /v1/models/{owner}/{name}/predictions with `Authorization: Bearer <token>` and {"input": {...}}:
  201 and the prediction ({"id", "model", "status", "input", "output", "error", "logs", "metrics",
  "created_at", "started_at", "completed_at", "urls": {"get", "cancel", "stream", "web"}}). With
  `Prefer: wait=N` (or `wait`, 60 s) the answer is held until the prediction ends or N seconds pass;
- GET /v1/predictions/{id} -> the prediction; it is `starting`, then `processing`, and ends
  `succeeded` (output: a list of result URLs), `failed` (error) or `canceled`;
- POST /v1/predictions/{id}/cancel -> the prediction, canceled unless it had ended.
Errors are problem details: 401 Unauthenticated, 402 Insufficient credit, 404, 422 "Input validation
failed" with `invalid_fields`, 429 with Retry-After. The input is checked against the model's schema
(redux_image, aspect_ratio, num_outputs 1 to 4, num_inference_steps in the model's range, guidance on
dev only, megapixels, seed, output_format, output_quality, disable_safety_checker); an input the
schema does not have is refused, stricter than Replicate, so vary never relies on one being ignored.
The safety checker drops a flagged image from `output`, and fails the prediction when it flags all.

Faults per route ("create": ("status", code), ("429", seconds), ("invalid", field, words); "files") and
per prediction (`fail("job", ...)` or by seed): ("never",) it never ends; ("failed", error) it fails;
("nsfw", m) the safety checker flags m images; ("elsewhere", base) its `urls` on another host;
("result_host", server) result URLs on another fake.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from PIL import Image
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from tests.fakes.jobs import JobServer, picture

MODELS: dict[str, dict[str, Any]] = {
    "black-forest-labs/flux-redux-schnell": {"steps": (1, 4), "guidance": None},
    "black-forest-labs/flux-redux-dev": {"steps": (1, 50), "guidance": (0.0, 10.0)},
}
ASPECT_RATIOS = ("1:1", "16:9", "21:9", "3:2", "2:3", "4:5", "5:4", "3:4", "4:3", "9:16", "9:21")
COMMON = {
    "redux_image",
    "aspect_ratio",
    "num_outputs",
    "num_inference_steps",
    "seed",
    "output_format",
    "output_quality",
    "disable_safety_checker",
    "megapixels",
}
ALL_NSFW = "All generated images contained NSFW content. Try running it again with a different prompt."
_WAIT = re.compile(r"wait(?:=(\d+))?")


@dataclass
class Prediction:
    id: str
    model: str
    input: dict[str, Any]
    fault: tuple[Any, ...]
    base: str  # where its urls point
    created: float = field(default_factory=time.monotonic)
    canceled: bool = False
    output: list[str] | None = None


@dataclass
class FakeReplicate(JobServer):
    run_seconds: float = 0.2  # how long a prediction runs
    no_credit: bool = False
    created: list[tuple[str, dict[str, Any], dict[str, str]]] = field(default_factory=list)  # model, body, headers
    predictions: dict[str, Prediction] = field(default_factory=dict)
    cancels: list[str] = field(default_factory=list)
    gets: int = 0

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/v1/models/{owner}/{name}/predictions", self._create, methods=["POST"]),
            Route("/v1/predictions/{id}/cancel", self._cancel, methods=["POST"]),
            Route("/v1/predictions/{id}", self._get, methods=["GET"]),
        ]

    def _refused(self, request: Request) -> Response | None:
        if request.headers.get("authorization") not in (f"Bearer {self.key}", f"Token {self.key}"):
            return _problem(401, "Unauthenticated", "You did not pass a valid authentication token")
        if self.no_credit:
            detail = "You have insufficient credit to run this model. Go to https://replicate.com/account/billing"
            return _problem(402, "Insufficient credit", detail)
        return None

    async def _create(self, request: Request) -> Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        model = f"{request.path_params['owner']}/{request.path_params['name']}"
        if model not in MODELS:
            return _problem(404, "Not found", "The requested resource could not be found.")
        body = await request.json()
        self.created.append((model, body, dict(request.headers)))
        fault = self.next_fault("create")
        if fault[0] == "status":
            return _problem(fault[1], "Internal server error", "Something went wrong.")
        if fault[0] == "429":
            headers = {"Retry-After": str(fault[1])}
            return _problem(429, "Request was throttled", "Your rate limit resets in ~1s.", headers=headers)
        if fault[0] == "invalid":  # the input refused: ("invalid", field, description)
            invalid_field = _invalid(f"input.{fault[1]}", "format", fault[2])
            return _problem(
                422, "Input validation failed", f"- input.{fault[1]}: {fault[2]}\n", invalid_fields=[invalid_field]
            )
        given = body.get("input") if isinstance(body, dict) else None
        invalid = check(model, given)
        if invalid or not isinstance(given, dict):
            detail = "".join(f"- {field['field']}: {field['description']}\n" for field in invalid)
            return _problem(422, "Input validation failed", detail, invalid_fields=invalid)
        job_fault = self.job_fault(int(given.get("seed") or 0))
        base = job_fault[1] if job_fault[0] == "elsewhere" else str(request.base_url).rstrip("/")
        prediction = Prediction(_id(), model, given, job_fault, base)
        self.predictions[prediction.id] = prediction
        wait = _WAIT.fullmatch(request.headers.get("prefer", ""))
        if wait is not None:
            until = time.monotonic() + min(60, int(wait.group(1) or 60))
            while self._status(prediction) in ("starting", "processing") and time.monotonic() < until:
                await asyncio.sleep(0.02)
        return JSONResponse(self._render(prediction, request), status_code=201)

    def _prediction(self, request: Request) -> Prediction | Response:
        """The prediction the path names, or the answer Replicate gives instead (a refused key, or a 404)."""
        refused = self._refused(request)
        if refused is not None:
            return refused
        prediction = self.predictions.get(request.path_params["id"])
        if prediction is None:
            return _problem(404, "Not found", "The requested resource could not be found.")
        return prediction

    async def _get(self, request: Request) -> Response:
        self.gets += 1
        prediction = self._prediction(request)
        if isinstance(prediction, Response):
            return prediction
        return JSONResponse(self._render(prediction, request))

    async def _cancel(self, request: Request) -> Response:
        prediction = self._prediction(request)
        if isinstance(prediction, Response):
            return prediction
        self.cancels.append(prediction.id)
        if self._status(prediction) in ("starting", "processing"):
            prediction.canceled = True
        return JSONResponse(self._render(prediction, request))

    def _status(self, prediction: Prediction) -> str:
        if prediction.canceled:
            return "canceled"
        elapsed = time.monotonic() - prediction.created
        if prediction.fault[0] == "never" or elapsed < self.run_seconds:
            return "starting" if elapsed < self.run_seconds / 2 else "processing"
        if prediction.fault[0] == "failed":
            return "failed"
        if prediction.fault[0] == "nsfw" and prediction.fault[1] >= self._count(prediction):
            return "failed" if not prediction.input.get("disable_safety_checker") else "succeeded"
        return "succeeded"

    def _count(self, prediction: Prediction) -> int:
        return int(prediction.input.get("num_outputs", 1))

    def _render(self, prediction: Prediction, request: Request) -> dict[str, Any]:
        status = self._status(prediction)
        error = None
        if status == "failed":
            error = prediction.fault[1] if prediction.fault[0] == "failed" else ALL_NSFW
        if status == "succeeded" and prediction.output is None:
            prediction.output = self._outputs(prediction, request)
        links = f"{prediction.base}/v1/predictions/{prediction.id}"
        return {
            "id": prediction.id,
            "model": prediction.model,
            "version": "hidden",
            "input": {**prediction.input, "redux_image": "data:..."},
            "logs": "",
            "output": prediction.output if status == "succeeded" else None,
            "data_removed": False,
            "error": error,
            "status": status,
            "created_at": "2026-12-07T12:00:00.000000Z",
            "started_at": "2026-12-07T12:00:00.100000Z",
            "completed_at": "2026-12-07T12:00:01.000000Z" if status not in ("starting", "processing") else None,
            "metrics": {"predict_time": 0.1} if status == "succeeded" else {},
            "urls": {
                "get": links,
                "cancel": f"{links}/cancel",
                "stream": f"{prediction.base}/stream/{prediction.id}",
                "web": f"https://replicate.com/p/{prediction.id}",
            },
        }

    def _outputs(self, prediction: Prediction, request: Request) -> list[str]:
        given = prediction.input
        side = 512 if given.get("megapixels", "1") == "0.25" else 1024
        fmt = given.get("output_format", "webp")
        seed = int(given.get("seed") or 0)
        count = self._count(prediction)
        dropped = (
            prediction.fault[1] if prediction.fault[0] == "nsfw" and not given.get("disable_safety_checker") else 0
        )
        host = prediction.fault[1] if prediction.fault[0] == "result_host" else None
        urls = [self.result_url(picture(side, seed, k, fmt), fmt, request, host=host) for k in range(count - dropped)]
        return urls


def check(model: str, given: Any) -> list[dict[str, str]]:
    """The model's input schema: Replicate's `invalid_fields`, empty when the input is valid."""
    if not isinstance(given, dict):
        return [_invalid("input", "required", "input is required")]
    schema = MODELS[model]
    allowed = COMMON | ({"guidance"} if schema["guidance"] else set())
    invalid = [_invalid(f"input.{name}", "additional_property", "Additional property is not allowed") for name in given]
    invalid = [field for field in invalid if field["field"].removeprefix("input.") not in allowed]
    image = given.get("redux_image")
    if not isinstance(image, str) or not _readable(image):
        invalid.append(_invalid("input.redux_image", "format", "Does not match format 'uri'"))
    for name, (low, high) in (("num_outputs", (1, 4)), ("num_inference_steps", schema["steps"])):
        value = given.get(name, low)
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            invalid.append(_invalid(f"input.{name}", "range", f"Must be from {low} to {high}"))
    if "guidance" in given and schema["guidance"]:
        low, high = schema["guidance"]
        if not isinstance(given["guidance"], (int, float)) or not low <= given["guidance"] <= high:
            invalid.append(_invalid("input.guidance", "range", f"Must be from {low} to {high}"))
    enums = {"aspect_ratio": ASPECT_RATIOS, "megapixels": ("1", "0.25"), "output_format": ("webp", "jpg", "png")}
    for name, choices in enums.items():
        if name in given and given[name] not in choices:
            invalid.append(_invalid(f"input.{name}", "enum", f"Must be one of: {', '.join(choices)}"))
    return invalid


def _readable(uri: str) -> bool:
    if not uri.startswith("data:image/"):
        return False
    try:
        Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1], validate=True))).verify()
    except (binascii.Error, IndexError, OSError, ValueError):
        return False
    return True


def _invalid(name: str, kind: str, description: str) -> dict[str, str]:
    return {"type": kind, "field": name, "description": description}


def _problem(status: int, title: str, detail: str, headers: dict[str, str] | None = None, **extra: Any) -> Response:
    body = {"title": title, "detail": detail, "status": status, **extra}
    return JSONResponse(body, status_code=status, headers=headers, media_type="application/problem+json")


def _id() -> str:
    return base64.b32encode(secrets.token_bytes(16)).decode().lower().rstrip("=")
