"""A fake Bedrock runtime on loopback that speaks InvokeModel for Nova Canvas's IMAGE_VARIATION.

It checks what AWS checks first: a SigV4 Authorization header whose credential scope names the
access key, a date, the region, the `bedrock` service and `aws4_request`; then the JSON body against
Nova Canvas's documented rules. It answers base64 PNGs whose colour depends on the call's seed and the
image's place in it, and faults can be queued per call: ("throttle",) (no Retry-After, as Bedrock
sends none), ("status", 500 | 503), ("validation", message), and faults in a 200 answer:
("trickle", seconds) (the body dribbles in over that long), ("wrong_count",), ("not_an_image",).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from PIL import Image
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from tests.fakes.loopback import LoopbackFake

_SCOPE = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[A-Z0-9]+)/(?P<date>[0-9]{8})/(?P<region>[a-z0-9-]+)/(?P<service>[a-z-]+)"
    r"/aws4_request, SignedHeaders=(?P<signed>[a-z0-9;-]+), Signature=[0-9a-f]{64}"
)


@dataclass
class FakeBedrock(LoopbackFake):
    access_key: str
    region: str
    faults: deque[tuple[Any, ...]] = field(default_factory=deque)
    # Faults for the calls with a given seed only (the calls of a split request arrive in any order).
    seed_faults: dict[int, deque[tuple[Any, ...]]] = field(default_factory=dict)
    calls: list[dict[str, Any]] = field(default_factory=list)  # the JSON bodies of accepted calls
    attempts: int = 0  # every request, refused ones included
    port: int = 0

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def routes(self) -> list[BaseRoute]:
        return [Route("/model/{model_id:path}/invoke", self._invoke, methods=["POST"])]

    async def _invoke(self, request: Request) -> Response:
        self.attempts += 1
        scope = _SCOPE.fullmatch(request.headers.get("authorization", ""))
        if scope is None or scope["key"] != self.access_key:
            return _error(403, "UnrecognizedClientException", "The security token included in the request is invalid.")
        if scope["region"] != self.region or scope["service"] != "bedrock" or "x-amz-date" not in scope["signed"]:
            return _error(403, "InvalidSignatureException", "Credential should be scoped to a valid region/service.")
        if request.path_params["model_id"] != "amazon.nova-canvas-v1:0":
            return _error(404, "ResourceNotFoundException", "The model does not exist.")
        fault: tuple[Any, ...] = self.faults.popleft() if self.faults else ("none",)
        if refused := _refusal(fault):
            return refused
        try:
            body = json.loads(await request.body())
            count, side = _check(body)
        except (ValueError, KeyError, TypeError) as exc:
            return _error(400, "ValidationException", f"Malformed input request: {exc}")
        seed = int(body["imageGenerationConfig"].get("seed", 0))
        if fault[0] == "none" and self.seed_faults.get(seed):
            fault = self.seed_faults[seed].popleft()
            if refused := _refusal(fault):
                return refused
        self.calls.append(body)
        images = [base64.b64encode(_png(side, k, seed)).decode() for k in range(count)]
        if fault[0] == "wrong_count":
            images = images[:-1] or images * 2
        if fault[0] == "not_an_image":
            images = [base64.b64encode(b"GIF89a not really").decode()] * count
        answer = json.dumps({"images": images, "error": None}).encode()
        if fault[0] == "trickle":
            # With its Content-Length, as Bedrock answers (a reader then asks for the whole length in one read).
            length = {"content-length": str(len(answer))}
            return StreamingResponse(_trickle(answer, float(fault[1])), media_type="application/json", headers=length)
        return Response(answer, media_type="application/json")


def _refusal(fault: tuple[Any, ...]) -> Response | None:
    if fault[0] == "throttle":
        return _error(429, "ThrottlingException", "Too many requests, please wait before trying again.")
    if fault[0] == "status":
        return _error(fault[1], "InternalServerException", "The server encountered an error.")
    if fault[0] == "validation":
        return _error(400, "ValidationException", fault[1])
    return None


def _check(body: dict[str, Any]) -> tuple[int, int]:
    """Nova Canvas's IMAGE_VARIATION rules, as its documentation states them."""
    if body.get("taskType") != "IMAGE_VARIATION":
        raise ValueError("taskType must be IMAGE_VARIATION")
    params, config = body["imageVariationParams"], body["imageGenerationConfig"]
    images = params["images"]
    if not 1 <= len(images) <= 5:
        raise ValueError("images: 1 to 5")
    for data in images:
        Image.open(io.BytesIO(base64.b64decode(data, validate=True))).verify()
    if not 0.2 <= float(params["similarityStrength"]) <= 1.0:
        raise ValueError("similarityStrength: 0.2 to 1.0")
    count = int(config["numberOfImages"])
    if not 1 <= count <= 5:
        raise ValueError("numberOfImages: 1 to 5")
    width, height = int(config["width"]), int(config["height"])
    if not (320 <= width <= 4096 and 320 <= height <= 4096 and width % 16 == 0 and height % 16 == 0):
        raise ValueError("width and height: 320 to 4096, multiples of 16")
    if not 0 <= int(config.get("seed", 0)) <= 2147483646:
        raise ValueError("seed: 0 to 2147483646")
    if "cfgScale" in config and not 1.1 <= float(config["cfgScale"]) <= 10:
        raise ValueError("cfgScale: 1.1 to 10")
    return count, width


def _error(status: int, kind: str, message: str) -> JSONResponse:
    return JSONResponse({"message": message}, status_code=status, headers={"x-amzn-ErrorType": f"{kind}:http://"})


def _png(side: int, k: int, seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (10 * k, seed % 256, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


async def _trickle(answer: bytes, seconds: float) -> AsyncIterator[bytes]:
    """The whole answer, a few bytes at a time, spread over `seconds`: every read is prompt, the whole is late."""
    pieces = 40
    step = -(-len(answer) // pieces)
    for start in range(0, len(answer), step):
        yield answer[start : start + step]
        await asyncio.sleep(seconds / pieces)
