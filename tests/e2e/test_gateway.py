"""vary as a gateway: fake providers on loopback, the openai SDK against vary, faults injected per request."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI
from PIL import Image

from tests.conftest import create_key, png_bytes
from tests.fakes.providers import FakeProvider, ResetServer
from vary.db import Database
from vary.testing import ServerProcess

SECRET = "sk-fake-upstream-SECRET-0123456789"
AZURE_SECRET = "azure-fake-SECRET-9876543210"


def config(provider: FakeProvider, reset: ResetServer) -> str:
    fast = "timeout_seconds = 2\nbackoff_seconds = 0.05\nmax_backoff_seconds = 2\ncircuit_failures = 1000"
    return f"""
default = "local"

[[models]]
name = "local"
engine = "kandinsky-2.2"
weights = "tiny-random"

[[models]]
name = "up-openai"
engine = "openai-compatible"
[models.options]
base_url = "{provider.base_url}/v1"
api_key_env = "FAKE_OPENAI_KEY"
upstream_model = "dall-e-2"
max_attempts = 3
{fast}

[[models]]
name = "up-azure"
engine = "azure-openai"
[models.options]
base_url = "{provider.base_url}"
deployment = "vary-dalle"
api_version = "2024-02-01"
api_key_env = "FAKE_AZURE_KEY"
{fast}

[[models]]
name = "up-gpt-image"
engine = "openai-gpt-image"
[models.options]
base_url = "{provider.base_url}/v1"
api_key_env = "FAKE_OPENAI_KEY"
upstream_model = "gpt-image-1-mini"
prompt = "Make a variation of this picture."
{fast}

[[models]]
name = "up-passthrough"
engine = "openai-compatible"
[models.options]
base_url = "{provider.base_url}/v1"
api_key_env = "FAKE_OPENAI_KEY"
rehost_urls = false

[[models]]
name = "up-wrong-key"
engine = "openai-compatible"
[models.options]
base_url = "{provider.base_url}/v1"
api_key_env = "FAKE_WRONG_KEY"
max_attempts = 1

[[models]]
name = "up-reset"
engine = "openai-compatible"
[models.options]
base_url = "{reset.base_url}/v1"
max_attempts = 2
backoff_seconds = 0.05

[[models]]
name = "up-flaky"
engine = "azure-openai"
[models.options]
base_url = "{provider.base_url}"
deployment = "flaky"
api_key_env = "FAKE_AZURE_KEY"
max_attempts = 1
circuit_failures = 2
circuit_cooldown_seconds = 600

[[models]]
name = "fallback"
route = ["up-reset", "up-openai", "local"]

[[models]]
name = "cloud-then-local"
route = ["up-flaky", "local"]
"""


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ServerProcess, FakeProvider, ResetServer, Path]]:
    provider = FakeProvider(key=SECRET, azure_key=AZURE_SECRET).start()
    reset = ResetServer()
    root = tmp_path_factory.mktemp("gateway")
    (root / "vary.toml").write_text(config(provider, reset))
    data_dir = root / "data"
    data_dir.mkdir()
    env = {"FAKE_OPENAI_KEY": SECRET, "FAKE_AZURE_KEY": AZURE_SECRET, "FAKE_WRONG_KEY": "sk-not-the-key"}
    server = ServerProcess(data_dir, extra_args=["--config", str(root / "vary.toml")], env=env).start()
    yield server, provider, reset, data_dir
    server.stop()
    provider.stop()
    reset.stop()


@pytest.fixture(scope="module")
def client(gateway: tuple[ServerProcess, FakeProvider, ResetServer, Path]) -> OpenAI:
    server, _, _, data_dir = gateway
    return OpenAI(base_url=f"{server.base_url}/v1", api_key=create_key(data_dir)[1], max_retries=0)


def last_usage(data_dir: Path) -> tuple[str | None, int | None, int]:
    db = Database(data_dir / "vary.db")
    try:
        row = db.usage_rows()[-1]
        return row.target, row.attempts, row.status
    finally:
        db.close()


def size_of(data: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(data)).size


def test_openai_compatible_rebuilds_the_request_and_rehosts_urls(
    gateway: tuple[ServerProcess, FakeProvider, ResetServer, Path], client: OpenAI
) -> None:
    server, provider, _, data_dir = gateway
    result = client.images.create_variation(image=png_bytes(64), model="up-openai", n=2, size="256x256", user="u-1")
    call = provider.calls_to("openai")[-1]
    assert call.fields == {"n": "2", "size": "256x256", "response_format": "url", "user": "u-1", "model": "dall-e-2"}
    assert call.headers["authorization"] == f"Bearer {SECRET}" and call.image_size == (64, 64)
    for item in result.data:
        assert item.url and item.url.startswith(f"{server.base_url}/v1/files/") and "signature=" in item.url
        fetched = httpx.get(item.url, timeout=30)
        assert fetched.status_code == 200 and size_of(fetched.content) == (256, 256)
    assert last_usage(data_dir) == ("up-openai", 1, 200)
    inline = client.images.create_variation(image=png_bytes(), model="up-openai", response_format="b64_json")
    assert size_of(base64.b64decode(inline.data[0].b64_json or "")) == (1024, 1024)
    assert provider.calls_to("openai")[-1].fields["response_format"] == "b64_json"


def test_azure_deployment_url_api_version_and_api_key_header(
    gateway: tuple[ServerProcess, FakeProvider, ResetServer, Path], client: OpenAI
) -> None:
    _, provider, _, _ = gateway
    result = client.images.create_variation(
        image=png_bytes(), model="up-azure", size="512x512", response_format="b64_json"
    )
    call = provider.calls_to("azure")[-1]
    assert call.path == "/openai/deployments/vary-dalle/images/variations"
    assert call.query == {"api-version": "2024-02-01"}
    assert call.headers["api-key"] == AZURE_SECRET and "authorization" not in call.headers
    assert "model" not in call.fields  # Azure names the model by its deployment
    assert size_of(base64.b64decode(result.data[0].b64_json or "")) == (512, 512)


def test_gpt_image_edits_make_variations_of_every_size(
    gateway: tuple[ServerProcess, FakeProvider, ResetServer, Path], client: OpenAI
) -> None:
    _, provider, _, _ = gateway
    result = client.images.create_variation(image=png_bytes(), model="up-gpt-image", n=2, size="256x256")
    call = provider.calls_to("edits")[-1]
    assert call.path == "/v1/images/edits"
    assert call.fields == {
        "n": "2",
        "prompt": "Make a variation of this picture.",
        "model": "gpt-image-1-mini",
        "size": "1024x1024",
    }
    for item in result.data:  # gpt-image answers 1024 px in base64; vary resized, stored and signed them
        assert item.url and "/v1/files/" in item.url
        assert size_of(httpx.get(item.url, timeout=30).content) == (256, 256)


def test_url_answers_can_be_handed_on_as_they_are(
    gateway: tuple[ServerProcess, FakeProvider, ResetServer, Path], client: OpenAI
) -> None:
    _, provider, _, _ = gateway
    result = client.images.create_variation(image=png_bytes(), model="up-passthrough", size="256x256")
    assert result.data[0].url and result.data[0].url.startswith(f"{provider.base_url}/files/")


@pytest.mark.parametrize(
    ("faults", "calls"),
    [
        ([("status", 500), ("429", 1)], 3),  # a 500, then a 429 honoured for its Retry-After, then an answer
        ([("status", 503)], 2),
        ([("malformed",)], 2),
        ([("delay", 5)], 2),  # past the 2 s timeout
        ([("trickle", 5)], 2),  # headers at once, then a body slower than the timeout allows in all
    ],
)
def test_retries_on_what_may_pass(
    gateway: tuple[ServerProcess, FakeProvider, ResetServer, Path],
    client: OpenAI,
    faults: list[tuple[object, ...]],
    calls: int,
) -> None:
    _, provider, _, data_dir = gateway
    before = len(provider.calls_to("openai"))
    provider.fail("openai", *faults)
    result = client.images.create_variation(image=png_bytes(), model="up-openai", size="256x256")
    assert len(result.data) == 1
    assert len(provider.calls_to("openai")) - before == calls
    assert last_usage(data_dir) == ("up-openai", calls, 200)


def test_a_refused_request_is_not_retried_and_comes_back_as_the_provider_said(
    gateway: tuple[ServerProcess, FakeProvider, ResetServer, Path], client: OpenAI
) -> None:
    server, provider, _, _ = gateway
    before = len(provider.calls_to("openai"))
    provider.fail("openai", ("status", 400, f"Your request was rejected by the safety system (key {SECRET})."))
    with pytest.raises(openai.BadRequestError) as refused:
        client.images.create_variation(image=png_bytes(), model="up-openai", size="256x256")
    assert len(provider.calls_to("openai")) - before == 1
    assert refused.value.body == {
        "message": "Your request was rejected by the safety system (key [redacted]).",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }


def test_a_reset_connection_falls_back_to_the_next_target(
    gateway: tuple[ServerProcess, FakeProvider, ResetServer, Path], client: OpenAI
) -> None:
    _, provider, reset, data_dir = gateway
    accepted = reset.accepted
    raw = client.images.with_raw_response.create_variation(image=png_bytes(), model="fallback", size="256x256")
    assert raw.headers["x-vary-target"] == "up-openai"
    assert len(raw.parse().data) == 1
    assert reset.accepted - accepted == 2  # both attempts on the first target
    assert last_usage(data_dir) == ("up-openai", 3, 200)


def test_the_circuit_opens_and_the_route_goes_straight_to_the_local_model(
    gateway: tuple[ServerProcess, FakeProvider, ResetServer, Path], client: OpenAI
) -> None:
    _, provider, _, data_dir = gateway
    provider.fail("azure", ("status", 500), ("status", 500), ("status", 500))
    flaky_calls = lambda: len([c for c in provider.calls_to("azure") if "flaky" in c.path])  # noqa: E731
    for expected_calls in (1, 2, 2, 2):  # two failures open the circuit; then the target is skipped
        raw = client.images.with_raw_response.create_variation(
            image=png_bytes(), model="cloud-then-local", size="256x256"
        )
        assert raw.headers["x-vary-target"] == "local"
        assert flaky_calls() == expected_calls
    assert last_usage(data_dir) == ("local", 1, 200)  # the skipped target cost no attempt
    # Alone, a target with an open circuit is a 502 in OpenAI's shape.
    with pytest.raises(openai.APIStatusError) as failed:
        client.images.create_variation(image=png_bytes(), model="up-flaky", size="256x256")
    assert failed.value.status_code == 502
    assert failed.value.body == {
        "message": "No target could serve this model (up-flaky): the providers failed or did not answer.",
        "type": "server_error",
        "param": None,
        "code": "upstream_unavailable",
    }


def test_rate_limited_everywhere_is_a_429_with_retry_after(
    gateway: tuple[ServerProcess, FakeProvider, ResetServer, Path], client: OpenAI
) -> None:
    _, provider, _, _ = gateway
    provider.fail("openai", ("429", 1), ("429", 1), ("429", 1))
    raw = httpx.post(
        f"{client.base_url}images/variations",
        headers={"Authorization": f"Bearer {client.api_key}"},
        files={"image": ("a.png", png_bytes())},
        data={"model": "up-openai", "size": "256x256"},
        timeout=60,
    )
    assert raw.status_code == 429 and raw.headers["retry-after"] == "1"
    assert raw.json()["error"]["code"] == "rate_limit_exceeded"


def test_vary_s_own_bad_credentials_are_a_502_not_the_client_s_401(
    gateway: tuple[ServerProcess, FakeProvider, ResetServer, Path], client: OpenAI
) -> None:
    with pytest.raises(openai.APIStatusError) as failed:
        client.images.create_variation(image=png_bytes(), model="up-wrong-key", size="256x256")
    assert failed.value.status_code == 502


def test_a_bad_image_is_refused_before_any_provider_is_called(
    gateway: tuple[ServerProcess, FakeProvider, ResetServer, Path], client: OpenAI
) -> None:
    _, provider, _, _ = gateway
    before = len(provider.calls)
    with pytest.raises(openai.BadRequestError):
        client.images.create_variation(image=png_bytes((64, 32)), model="up-openai")
    assert len(provider.calls) == before


def test_secrets_never_reach_logs_or_answers(
    gateway: tuple[ServerProcess, FakeProvider, ResetServer, Path], client: OpenAI
) -> None:
    server, _, _, _ = gateway
    models = httpx.get(
        f"{server.base_url}/v1/models", headers={"Authorization": f"Bearer {client.api_key}"}, timeout=30
    ).text
    assert "up-openai" in models
    for secret in (SECRET, AZURE_SECRET, "sk-not-the-key"):
        assert secret not in server.log()
        assert secret not in models
