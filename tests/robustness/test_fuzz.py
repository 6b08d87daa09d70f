"""Generated input: schemathesis from vary's own OpenAPI document, and hypothesis on the form fields.
Whatever arrives, the answer is a 2xx or a 4xx in OpenAI's error JSON: never a 5xx."""

from __future__ import annotations

import httpx
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error

from tests.conftest import png_bytes
from vary.app import build_app
from vary.settings import Settings
from vary.testing import ServerProcess

# vary's own OpenAPI document, as the app publishes it at /openapi.json (building the app loads no model).
OPENAPI = build_app(Settings(no_auth=True)).openapi()
VARIATIONS = schemathesis.openapi.from_dict(OPENAPI)["/v1/images/variations"]["POST"]


@given(case=VARIATIONS.as_strategy())
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_variations_endpoint_never_fails_on_generated_requests(
    server: ServerProcess, api_key: str, case: schemathesis.Case
) -> None:
    response = case.call(base_url=server.base_url, headers={"Authorization": f"Bearer {api_key}"}, timeout=60)
    case.validate_response(response, checks=[not_a_server_error])
    if response.status_code >= 400:
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}


FIELDS = ("n", "size", "response_format", "model", "user", "seed", "strength", "steps", "guidance_scale")
text = st.text(st.characters(blacklist_categories=["Cs"]), max_size=40)
values = st.one_of(
    text,
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["1", "10", "256x256", "1024x1024", "url", "b64_json", "dall-e-2", "0.5", " 1", "1e3"]),
)


@given(form=st.dictionaries(st.sampled_from(FIELDS), values, max_size=5))
@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
def test_form_fields_fuzzed(http: httpx.Client, form: dict[str, str]) -> None:
    response = http.post(
        "/v1/images/variations",
        files={"image": ("a.png", png_bytes(8), "image/png")},
        data={"size": "256x256", **form},
    )
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        body = response.json()
        assert set(body["error"]) == {"message", "type", "param", "code"}
        assert len(body["error"]["message"]) < 400  # bounded, whatever was sent
