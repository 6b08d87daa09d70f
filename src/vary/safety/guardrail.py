"""An operator's HTTP guardrail, in LiteLLM's Generic Guardrail API shape.

vary POSTs `{"input_type": "request"|"response", "images": ["data:image/png;base64,...", ...], "texts": [],
"litellm_call_id": ..., "request_data": {}}` (the whole batch in one call) and reads
`{"action": "NONE"|"BLOCKED"|"GUARDRAIL_INTERVENED", "blocked_reason": ...}`. The verdict is the batch's:
BLOCKED (or INTERVENED: it would have changed the images) flags every image in it with score 1, NONE passes
them with score 0.

Down, slow (the whole answer within `timeout_seconds`), a non-2xx status, an answer past MAX_ANSWER_BYTES
(refused as it streams in, never read whole) or one that is not that JSON: ClassifierFailed, and the policy's
`fail` mode decides. The URL never reaches a client.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Sequence

import httpx
import pybase64

from vary.echo import clipped
from vary.safety.classifier import ClassifierFailed, Picture, Stage, Verdict

ACTIONS = ("NONE", "BLOCKED", "GUARDRAIL_INTERVENED")
INPUT_TYPES: dict[Stage, str] = {"input": "request", "output": "response"}
# An answer larger than this is not a verdict.
MAX_ANSWER_BYTES = 64 * 1024


class HttpGuardrail:
    name = "guardrail"

    def __init__(self, url: str, *, timeout_seconds: float) -> None:
        self.url = url
        self.timeout_seconds = timeout_seconds
        self._client: httpx.AsyncClient | None = None

    def load(self) -> None:
        """Nothing to load: the guardrail is asked at each check."""

    async def classify(self, pictures: Sequence[Picture], stage: Stage) -> list[Verdict]:
        if not pictures:
            return []
        images = ["data:image/png;base64," + pybase64.b64encode(p.png).decode("ascii") for p in pictures]
        # The fields LiteLLM's own request model requires, so a guardrail built on it parses the call.
        body: dict[str, object] = {
            "input_type": INPUT_TYPES[stage],
            "litellm_call_id": uuid.uuid4().hex,
            "images": images,
            "texts": [],
            "request_data": {},
        }
        try:
            answer = await asyncio.wait_for(self._post(body), self.timeout_seconds)
        except asyncio.TimeoutError:
            raise ClassifierFailed(f"the guardrail did not answer within {self.timeout_seconds:g}s") from None
        except httpx.HTTPError as exc:
            raise ClassifierFailed(f"the guardrail cannot be reached ({type(exc).__name__})") from None
        action, reason = verdict_of(answer)
        flagged = action != "NONE"
        return [Verdict(1.0 if flagged else 0.0, (action,), reason) for _ in pictures]

    async def _post(self, body: dict[str, object]) -> bytes:
        """The answer's bytes, read as they stream in and refused once past MAX_ANSWER_BYTES: never held whole."""
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.timeout_seconds, follow_redirects=False)
        async with self._client.stream("POST", self.url, json=body) as response:
            if not response.is_success:
                raise ClassifierFailed(f"the guardrail answered HTTP {response.status_code}")
            chunks, total = [], 0
            async for chunk in response.aiter_bytes():
                total += len(chunk)
                if total > MAX_ANSWER_BYTES:
                    raise ClassifierFailed("the guardrail's answer is too large to be a verdict")
                chunks.append(chunk)
            return b"".join(chunks)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()


def verdict_of(answer: bytes) -> tuple[str, str | None]:
    if len(answer) > MAX_ANSWER_BYTES:
        raise ClassifierFailed("the guardrail's answer is too large to be a verdict")
    try:
        document = json.loads(answer)
    except ValueError:
        raise ClassifierFailed("the guardrail's answer is not JSON") from None
    action = document.get("action") if isinstance(document, dict) else None
    if action not in ACTIONS:
        raise ClassifierFailed(f"the guardrail's answer has no action of {', '.join(ACTIONS)}")
    reason = document.get("blocked_reason")
    return str(action), clipped(reason, 200) if isinstance(reason, str) else None
