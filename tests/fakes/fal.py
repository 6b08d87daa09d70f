"""A fake of fal's queue API on loopback, as fal documents it, for FLUX.1 Redux (schnell and dev).

- POST /{application} with `Authorization: Key <key>` and the input as JSON -> {request_id,
  response_url, status_url, cancel_url, queue_position}; the status, result and cancel URLs name the
  application's owner and name only, never its path (fal-ai/flux-1, not fal-ai/flux-1/schnell/redux),
  as fal's own are;
- GET status_url -> 202 {"status": "IN_QUEUE" | "IN_PROGRESS", "queue_position"} until the job is done,
  then 200 {"status": "COMPLETED"};
- GET response_url -> 200 {"images": [{"url", "width", "height", "content_type"}], "timings", "seed",
  "has_nsfw_concepts", "prompt"}, or the job's error: a 422 {"detail": [{"loc", "msg", "type", "url"}]}
  (the type `content_policy_violation` for fal's content check) or a 5xx {"detail", "error_type"};
- PUT cancel_url -> 202 {"status": "CANCELLATION_REQUESTED"}, or 400 {"status": "ALREADY_COMPLETED"}.
A wrong key is 401 and an exhausted balance 403 ("User is locked. Reason: Exhausted balance."), as fal
answers them. The input is checked against each application's documented schema (image_url,
num_images 1 to 4, image_size, seed, num_inference_steps in the application's range, guidance_scale
on dev only, enable_safety_checker, output_format, sync_mode); the fake is stricter than fal in one
way: a field the application does not document is refused, so vary never relies on fal ignoring one.

Faults: per route ("submit", "status", "files") and per job (`fail("job", ...)` or by seed):
("never",) a job that never finishes; ("error", status, detail) a job that fails; ("content_policy",
field) fal's content check refuses; ("nsfw", indices) the safety checker flags those images;
("count", m) a result of m images; ("elsewhere", base) status URLs on another host; ("result_host",
server) result URLs on another fake.
"""

from __future__ import annotations

import base64
import binascii
import io
import uuid
from dataclasses import dataclass, field
from typing import Any

from PIL import Image
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from tests.fakes.jobs import JobServer, picture

APPLICATIONS: dict[str, dict[str, Any]] = {
    "fal-ai/flux-1/schnell/redux": {"steps": (1, 12), "guidance": None},
    "fal-ai/flux-1/dev/redux": {"steps": (1, 50), "guidance": (1.0, 20.0)},
}
SIZES = {
    "square_hd": (1024, 1024),
    "square": (512, 512),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1024, 576),
}
COMMON = {
    "image_url",
    "num_images",
    "image_size",
    "seed",
    "sync_mode",
    "enable_safety_checker",
    "output_format",
    "acceleration",
    "num_inference_steps",
}
LOCKED = "User is locked. Reason: Exhausted balance. Top up your balance at fal.ai/dashboard/billing."


@dataclass
class FalJob:
    id: str
    application: str
    body: dict[str, Any]
    fault: tuple[Any, ...]
    base: str  # where its status, result and cancel URLs point
    polls: int = 0
    cancelled: bool = False


@dataclass
class Submission:
    application: str
    body: dict[str, Any]
    headers: dict[str, str]


@dataclass
class FakeFal(JobServer):
    locked: bool = False  # the account's balance is exhausted
    polls_to_finish: int = 1  # status answers before a job is COMPLETED
    submissions: list[Submission] = field(default_factory=list)
    jobs: dict[str, FalJob] = field(default_factory=dict)
    cancels: list[str] = field(default_factory=list)
    status_polls: int = 0

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/{owner}/{name}/requests/{id}/status", self._status, methods=["GET"]),
            Route("/{owner}/{name}/requests/{id}/cancel", self._cancel, methods=["PUT"]),
            Route("/{owner}/{name}/requests/{id}", self._result, methods=["GET"]),
            Route("/{application:path}", self._submit, methods=["POST"]),
        ]

    def _refused(self, request: Request) -> Response | None:
        if request.headers.get("authorization") != f"Key {self.key}":
            return JSONResponse({"detail": "Invalid Key Authorization header format or key"}, status_code=401)
        if self.locked:
            return JSONResponse({"detail": LOCKED}, status_code=403)
        return None

    async def _submit(self, request: Request) -> Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        application = request.path_params["application"]
        if application not in APPLICATIONS:
            return JSONResponse({"detail": f"Application '{application}' not found"}, status_code=404)
        body = await request.json()
        self.submissions.append(Submission(application, body, dict(request.headers)))
        fault = self.next_fault("submit")
        if fault[0] == "status":
            return JSONResponse({"detail": fault[2] if len(fault) > 2 else "Internal error"}, status_code=fault[1])
        if fault[0] == "429":
            return JSONResponse(
                {"detail": "Too many requests"}, status_code=429, headers={"Retry-After": str(fault[1])}
            )
        errors = check(application, body)
        if errors:
            return JSONResponse({"detail": errors}, status_code=422)
        job_fault = self.job_fault(int(body.get("seed") or 0))
        owner, name = application.split("/")[:2]
        base = job_fault[1] if job_fault[0] == "elsewhere" else str(request.base_url).rstrip("/")
        job = FalJob(uuid.uuid4().hex, application, body, job_fault, f"{base}/{owner}/{name}/requests")
        self.jobs[job.id] = job
        urls = _urls(job)
        return JSONResponse({"request_id": job.id, **urls, "queue_position": 0})

    def _job(self, request: Request, missing: dict[str, str]) -> FalJob | Response:
        """The job the path names, or the answer fal gives instead (a refused key, or `missing` with a 404)."""
        refused = self._refused(request)
        if refused is not None:
            return refused
        job = self.jobs.get(request.path_params["id"])
        return JSONResponse(missing, status_code=404) if job is None else job

    async def _status(self, request: Request) -> Response:
        self.status_polls += 1
        job = self._job(request, missing={"detail": "Request not found"})
        if isinstance(job, Response):
            return job
        fault = self.next_fault("status")
        if fault[0] == "status":
            return JSONResponse({"detail": "Internal error"}, status_code=fault[1])
        job.polls += 1
        if job.fault[0] == "never" or job.polls <= self.polls_to_finish:
            state = "IN_QUEUE" if job.polls == 1 else "IN_PROGRESS"
            return JSONResponse({"status": state, "queue_position": 0, "logs": None, **_urls(job)}, status_code=202)
        return JSONResponse({"status": "COMPLETED", "logs": None, "metrics": {"inference_time": 0.1}, **_urls(job)})

    async def _result(self, request: Request) -> Response:
        job = self._job(request, missing={"detail": "Request not found"})
        if isinstance(job, Response):
            return job
        if job.fault[0] == "never" or job.polls <= self.polls_to_finish:
            return JSONResponse({"detail": "Request is still in progress"}, status_code=400)
        kind = job.fault[0]
        if kind == "error":
            return JSONResponse({"detail": job.fault[2], "error_type": "runner_server_error"}, status_code=job.fault[1])
        if kind == "content_policy":
            item = {
                "loc": ["body", job.fault[1]],
                "msg": "The content was flagged by the content checker.",
                "type": "content_policy_violation",
                "url": "https://docs.fal.ai/errors#content_policy_violation",
            }
            return JSONResponse({"detail": [item]}, status_code=422)
        return JSONResponse(self._images(job, request))

    def _images(self, job: FalJob, request: Request) -> dict[str, Any]:
        body, fault = job.body, job.fault
        size = body.get("image_size", "landscape_4_3")
        width, height = (size["width"], size["height"]) if isinstance(size, dict) else SIZES[size]
        count = fault[1] if fault[0] == "count" else int(body.get("num_images", 1))
        fmt = body.get("output_format", "jpeg")
        seed = int(body.get("seed") or 0)
        host = fault[1] if fault[0] == "result_host" else None
        images = []
        for k in range(count):
            data = picture(width, seed, k, fmt) if width == height else _rectangle(width, height, fmt)
            url = self.result_url(data, fmt, request, host=host)
            images.append({"url": url, "width": width, "height": height, "content_type": f"image/{fmt}"})
        flagged = set(fault[1]) if fault[0] == "nsfw" and body.get("enable_safety_checker", True) else set()
        return {
            "images": images,
            "timings": {"inference": 0.1},
            "seed": seed,
            "has_nsfw_concepts": [k in flagged for k in range(count)],
            "prompt": "",
        }

    async def _cancel(self, request: Request) -> Response:
        job = self._job(request, missing={"status": "NOT_FOUND"})
        if isinstance(job, Response):
            return job
        self.cancels.append(job.id)
        if job.fault[0] != "never" and job.polls > self.polls_to_finish:
            return JSONResponse({"status": "ALREADY_COMPLETED"}, status_code=400)
        job.cancelled = True
        return JSONResponse({"status": "CANCELLATION_REQUESTED"}, status_code=202)


def _urls(job: FalJob) -> dict[str, str]:
    return {
        "status_url": f"{job.base}/{job.id}/status",
        "response_url": f"{job.base}/{job.id}",
        "cancel_url": f"{job.base}/{job.id}/cancel",
    }


def check(application: str, body: Any) -> list[dict[str, Any]]:
    """The application's input schema: a list of FastAPI-style errors, empty when the input is valid."""
    if not isinstance(body, dict):
        return [_error([], "Input should be a valid dictionary", "dict_type")]
    schema = APPLICATIONS[application]
    allowed = COMMON | ({"guidance_scale"} if schema["guidance"] else set())
    errors = [
        _error([name], "Extra inputs are not permitted", "extra_forbidden") for name in body if name not in allowed
    ]
    errors += _image_errors(body.get("image_url"))
    for name, low, high in (("num_images", 1, 4), ("num_inference_steps", *schema["steps"])):
        value = body.get(name, low)
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            errors.append(_error([name], f"Input should be an integer from {low} to {high}", "value_error"))
    if schema["guidance"] and "guidance_scale" in body:
        value, (low, high) = body["guidance_scale"], schema["guidance"]
        if not isinstance(value, (int, float)) or not low <= value <= high:
            errors.append(_error(["guidance_scale"], f"Input should be from {low} to {high}", "value_error"))
    size = body.get("image_size", "landscape_4_3")
    if not (size in SIZES or (isinstance(size, dict) and set(size) == {"width", "height"})):
        errors.append(_error(["image_size"], "Input should be an image size", "value_error"))
    if body.get("output_format", "jpeg") not in ("jpeg", "png"):
        errors.append(_error(["output_format"], "Input should be 'jpeg' or 'png'", "enum"))
    seed = body.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
        errors.append(_error(["seed"], "Input should be a non-negative integer", "int_type"))
    for name in ("enable_safety_checker", "sync_mode"):
        if name in body and not isinstance(body[name], bool):
            errors.append(_error([name], "Input should be a valid boolean", "bool_type"))
    return errors


def _image_errors(url: Any) -> list[dict[str, Any]]:
    if not isinstance(url, str):
        return [_error(["image_url"], "Field required", "missing")]
    if not url.startswith("data:image/"):
        return [_error(["image_url"], "The fake takes data URIs only", "image_load_error")]
    try:
        Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1], validate=True))).verify()
    except (binascii.Error, IndexError, OSError, ValueError):
        return [_error(["image_url"], "Failed to load the image", "image_load_error")]
    return []


def _error(loc: list[str], msg: str, kind: str) -> dict[str, Any]:
    return {"loc": ["body", *loc], "msg": msg, "type": kind, "url": f"https://docs.fal.ai/errors#{kind}"}


def _rectangle(width: int, height: int, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (1, 2, 3)).save(buffer, format="PNG" if fmt == "png" else "JPEG")
    return buffer.getvalue()
