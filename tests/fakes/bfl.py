"""A fake of Black Forest Labs' API on loopback, as BFL documents it, for image prompts on FLUX1.1 [pro].

- POST /v1/{model} (flux-pro-1.1, flux-pro-1.1-ultra) with the key in `x-key` and the input as JSON
  -> {"id", "polling_url", "cost", "input_mp", "output_mp"}; the polling URL may name another host,
  as BFL's regional ones do;
- GET {polling_url} (/v1/get_result?id=...) with `x-key` -> {"id", "status", "result", "progress",
  "details", "preview"}: "Pending" until the task is done, then "Ready" with result.sample, a URL
  signed for `url_ttl_seconds` (`se`, its expiry, and `sig`, its signature: a download past the
  expiry or with another signature is 403 AuthenticationFailed), or "Request Moderated", "Content
  Moderated", "Error", "Task not found".
Errors as BFL answers them: 403 for a key it does not know, 402 for credits run out, 404, 422 with
FastAPI's `detail` list, 429 for too many active tasks. The input is checked against the model's
schema (prompt, image_prompt as base64, width and height 256 to 1440 in multiples of 32 on
flux-pro-1.1, aspect_ratio, image_prompt_strength and raw on ultra, seed, safety_tolerance 0 to 6,
output_format, prompt_upsampling); a field the model does not document is refused.

Faults per route ("submit", "poll", "files") and per task (`fail("job", ...)` or by seed): ("never",),
("request_moderated",), ("content_moderated",), ("error",), ("lost",), ("elsewhere", base) a polling
URL on another host, ("result_host", server) a sample on another fake.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import io
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from PIL import Image
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from tests.fakes.jobs import JobServer, picture

COMMON = {"prompt", "image_prompt", "seed", "safety_tolerance", "output_format", "prompt_upsampling"}
MODELS: dict[str, set[str]] = {
    "flux-pro-1.1": COMMON | {"width", "height"},
    "flux-pro-1.1-ultra": COMMON | {"aspect_ratio", "image_prompt_strength", "raw"},
}
ULTRA_SIDE = 2048  # 1:1 at about 4 megapixels


@dataclass
class Task:
    id: str
    model: str
    body: dict[str, Any]
    fault: tuple[Any, ...]
    polls: int = 0


@dataclass
class FakeBfl(JobServer):
    no_credit: bool = False
    polls_to_finish: int = 1
    url_ttl_seconds: float = 600.0  # BFL's delivery URLs expire after about ten minutes
    signing_key: bytes = field(default_factory=lambda: uuid.uuid4().bytes)
    submitted: list[tuple[str, dict[str, Any], dict[str, str]]] = field(default_factory=list)  # model, body, headers
    tasks: dict[str, Task] = field(default_factory=dict)
    samples: list[str] = field(default_factory=list)  # every signed URL handed out
    polls: int = 0

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/v1/get_result", self._poll, methods=["GET"]),
            Route("/v1/{model}", self._submit, methods=["POST"]),
        ]

    def _refused(self, request: Request) -> Response | None:
        if request.headers.get("x-key") != self.key:
            return JSONResponse({"detail": "Not authenticated - Invalid Authentication"}, status_code=403)
        if self.no_credit:
            return JSONResponse({"detail": "Insufficient credits"}, status_code=402)
        return None

    async def _submit(self, request: Request) -> Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        model = request.path_params["model"]
        if model not in MODELS:
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        body = await request.json()
        self.submitted.append((model, body, dict(request.headers)))
        fault = self.next_fault("submit")
        if fault[0] == "status":
            return JSONResponse({"detail": "Internal Server Error"}, status_code=fault[1])
        if fault[0] == "429":
            detail = "You have exceeded the number of active tasks. Please wait for a task to finish."
            return JSONResponse({"detail": detail}, status_code=429, headers={"Retry-After": str(fault[1])})
        errors = check(model, body)
        if errors:
            return JSONResponse({"detail": errors}, status_code=422)
        task_fault = self.job_fault(int(body.get("seed") or 0))
        task = Task(str(uuid.uuid4()), model, body, task_fault)
        self.tasks[task.id] = task
        base = task_fault[1] if task_fault[0] == "elsewhere" else str(request.base_url).rstrip("/")
        return JSONResponse(
            {
                "id": task.id,
                "polling_url": f"{base}/v1/get_result?id={task.id}",
                "cost": 4.0,
                "input_mp": 1.0,
                "output_mp": 1.0,
            }
        )

    async def _poll(self, request: Request) -> Response:
        self.polls += 1
        refused = self._refused(request)
        if refused is not None:
            return refused
        fault = self.next_fault("poll")
        if fault[0] == "status":
            return JSONResponse({"detail": "Internal Server Error"}, status_code=fault[1])
        task = self.tasks.get(request.query_params.get("id", ""))
        if task is None or task.fault[0] == "lost":
            return JSONResponse({"id": request.query_params.get("id"), "status": "Task not found", "result": None})
        task.polls += 1
        if task.fault[0] == "never" or task.polls <= self.polls_to_finish:
            return JSONResponse({"id": task.id, "status": "Pending", "result": None, "progress": 0.5, "details": None})
        ends = {
            "request_moderated": ("Request Moderated", {"Moderation Reasons": ["Derivative Works Filter"]}),
            "content_moderated": ("Content Moderated", {"Moderation Reasons": ["Derivative Works Filter"]}),
            "error": ("Error", {"error": "Internal processing error"}),
        }
        if task.fault[0] in ends:
            status, details = ends[task.fault[0]]
            return JSONResponse({"id": task.id, "status": status, "result": None, "details": details})
        return JSONResponse({"id": task.id, "status": "Ready", "result": self._result(task, request), "progress": 1})

    def _result(self, task: Task, request: Request) -> dict[str, Any]:
        body = task.body
        side = ULTRA_SIDE if task.model.endswith("-ultra") else int(body.get("width", 1024))
        fmt = body.get("output_format", "jpeg")
        seed = int(body.get("seed") or 0)
        host = task.fault[1] if task.fault[0] == "result_host" else None
        expiry = int(time.time() + self.url_ttl_seconds)
        url = self.result_url(picture(side, seed, 0, fmt), fmt, request, host=host)
        name = url.rsplit("/", 1)[1]
        signed = f"{url}?se={expiry}&sig={self._signature(name, expiry)}"
        self.samples.append(signed)
        return {"sample": signed, "prompt": body.get("prompt", ""), "seed": seed, "duration": 1.0}

    def _signature(self, name: str, expiry: int) -> str:
        return hmac.new(self.signing_key, f"{name}:{expiry}".encode(), hashlib.sha256).hexdigest()

    def check_file(self, request: Request) -> Response | None:
        """A delivery URL: its signature right and its expiry not passed, or 403 as Azure blob storage answers."""
        name = request.path_params["name"]
        try:
            expiry = int(request.query_params.get("se", ""))
        except ValueError:
            expiry = 0
        signature = request.query_params.get("sig", "")
        if expiry < time.time() or not hmac.compare_digest(signature, self._signature(name, expiry)):
            return Response(b"AuthenticationFailed", status_code=403)
        return None


def check(model: str, body: Any) -> list[dict[str, Any]]:
    """The model's input schema, as FastAPI errors; empty when the input is valid."""
    if not isinstance(body, dict):
        return [_error([], "Input should be a valid dictionary", "dict_type")]
    errors = [
        _error([name], "Extra inputs are not permitted", "extra_forbidden")
        for name in body
        if name not in MODELS[model]
    ]
    image = body.get("image_prompt")
    if image is not None and not _readable(image):
        errors.append(_error(["image_prompt"], "Invalid image prompt: not a base64 image", "value_error"))
    for name in ("width", "height"):
        value = body.get(name, 1024)
        if name in MODELS[model] and (not isinstance(value, int) or not 256 <= value <= 1440 or value % 32):
            errors.append(_error([name], "Input should be 256 to 1440, a multiple of 32", "value_error"))
    if not 0 <= body.get("safety_tolerance", 2) <= 6:
        errors.append(_error(["safety_tolerance"], "Input should be 0 to 6", "value_error"))
    if not 0 <= body.get("image_prompt_strength", 0.1) <= 1:
        errors.append(_error(["image_prompt_strength"], "Input should be 0 to 1", "value_error"))
    if body.get("output_format", "jpeg") not in ("jpeg", "png"):
        errors.append(_error(["output_format"], "Input should be 'jpeg' or 'png'", "enum"))
    if "aspect_ratio" in body and body["aspect_ratio"] not in ("1:1", "16:9", "9:16", "4:3", "3:4", "21:9", "9:21"):
        errors.append(_error(["aspect_ratio"], "Invalid aspect ratio", "value_error"))
    return errors


def _readable(data: Any) -> bool:
    if not isinstance(data, str):
        return False
    try:
        Image.open(io.BytesIO(base64.b64decode(data, validate=True))).verify()
    except (binascii.Error, OSError, ValueError):
        return False
    return True


def _error(loc: list[str], msg: str, kind: str) -> dict[str, Any]:
    return {"loc": ["body", *loc], "msg": msg, "type": kind}
