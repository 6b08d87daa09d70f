"""vary as a gateway: fake providers on loopback, the openai SDK against vary, faults injected per request."""

from __future__ import annotations

import base64
import io
import json
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from urllib.parse import quote, quote_plus

import httpx
import openai
import pytest
from openai import OpenAI
from PIL import Image

from tests.fakes.providers import FakeProvider, ResetServer
from tests.harness import (
    FAST,
    catalogue,
    create_key,
    hosted,
    local,
    png_bytes,
    post_variation,
    route,
    serve,
    usage_rows,
)
from vary.state.schema import UsageRow
from vary.testing import ServerProcess

SECRET = "sk-fake-upstream-SECRET-0123456789"
AZURE_SECRET = "azure-fake-SECRET-9876543210"
# Characters that URL and JSON encoding change, so each form of an echo differs from the key.
SECOND_SECRET = 'sk-second/KEY+with="quotes"-0123456789'


@pytest.fixture(scope="module")
def second() -> Iterator[FakeProvider]:
    """A second provider, for routes: its faults never touch the first one's."""
    with FakeProvider(key=SECOND_SECRET) as fake:
        yield fake


@pytest.fixture(scope="module")
def probe() -> Iterator[FakeProvider]:
    """A provider whose circuit opens after one failure and cools down in a second."""
    with FakeProvider(key=SECRET) as fake:
        yield fake


def config(provider: FakeProvider, reset: ResetServer, second: FakeProvider, probe: FakeProvider) -> str:
    def openai_api(name: str, url: str = f"{provider.base_url}/v1", **options: object) -> dict[str, object]:
        return hosted(name, "openai-compatible", url, **{"key_env": "FAKE_OPENAI_KEY", **options})

    def azure(name: str, deployment: str, **options: object) -> dict[str, object]:
        return hosted(
            name, "azure-openai", provider.base_url, key_env="FAKE_AZURE_KEY", deployment=deployment, **options
        )

    breaker = {"circuit_failures": 2, "circuit_cooldown_seconds": 600}
    gpt_image = {"upstream_model": "gpt-image-1-mini", "prompt": "Make a variation of this picture."}
    return catalogue(
        local(),
        openai_api("up-openai", upstream_model="dall-e-2", max_attempts=3, **FAST),
        azure("up-azure", "vary-dalle", api_version="2024-02-01", **FAST),
        hosted(
            "up-gpt-image",
            "openai-gpt-image",
            f"{provider.base_url}/v1",
            key_env="FAKE_OPENAI_KEY",
            **gpt_image,
            **FAST,
        ),
        openai_api("up-passthrough", rehost_urls=False),
        openai_api("up-wrong-key", key_env="FAKE_WRONG_KEY", max_attempts=1),
        openai_api("up-reset", f"{reset.base_url}/v1", key_env=None, max_attempts=2, backoff_seconds=0.05),
        azure("up-flaky", "flaky", max_attempts=1, **breaker),
        route("fallback", ["up-reset", "up-openai", "local"]),
        route("cloud-then-local", ["up-flaky", "local"]),
        openai_api("up-second", f"{second.base_url}/v1", key_env="FAKE_SECOND_KEY", max_attempts=2, **FAST),
        route("second-then-openai", ["up-second", "up-openai"]),
        route("deadline-route", ["up-second", "up-openai"], deadline_seconds=1),
        azure("azure-missing", "missing", max_attempts=3, **breaker),
        route("missing-then-openai", ["azure-missing", "up-openai"]),
        openai_api(
            "up-probe",
            f"{probe.base_url}/v1",
            max_attempts=1,
            timeout_seconds=60,
            circuit_failures=1,
            circuit_cooldown_seconds=1,
        ),
        route("probe-then-openai", ["up-probe", "up-openai"]),
        default="local",
    )


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, second: FakeProvider, probe: FakeProvider
) -> Iterator[tuple[ServerProcess, FakeProvider, ResetServer, Path]]:
    provider = FakeProvider(key=SECRET, azure_key=AZURE_SECRET).start()
    reset = ResetServer()
    env = {
        "FAKE_OPENAI_KEY": SECRET,
        "FAKE_AZURE_KEY": AZURE_SECRET,
        "FAKE_WRONG_KEY": "sk-not-the-key",
        "FAKE_SECOND_KEY": SECOND_SECRET,
    }
    try:
        models, root = config(provider, reset, second, probe), tmp_path_factory.mktemp("gateway")
        with serve(root, catalogue=models, env=env, key=False) as vary:  # the client fixture makes its key
            yield vary.server, provider, reset, vary.data_dir
    finally:
        provider.stop()
        reset.stop()


@pytest.fixture(scope="module")
def client(gateway: tuple[ServerProcess, FakeProvider, ResetServer, Path]) -> OpenAI:
    server, _, _, data_dir = gateway
    return OpenAI(base_url=f"{server.base_url}/v1", api_key=create_key(data_dir)[1], max_retries=0)


def last_usage(data_dir: Path) -> tuple[str | None, int | None, int]:
    row = last_row(data_dir)
    return row.target, row.attempts, row.status


def last_row(data_dir: Path) -> UsageRow:
    return usage_rows(data_dir)[-1]


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
    server, provider, _, _ = gateway
    provider.fail("openai", ("429", 1), ("429", 1), ("429", 1))
    raw = post_variation(server.base_url, client.api_key, model="up-openai", response_format=None, timeout=60)
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
    for secret in (SECRET, AZURE_SECRET, SECOND_SECRET, "sk-not-the-key"):
        assert secret not in server.log()
        assert secret not in models


# --- every provider failure, classified and survived (issue 17) --------------------------------

Gateway = tuple[ServerProcess, FakeProvider, ResetServer, Path]


def bomb_png(side: int = 100_000) -> bytes:
    """A PNG whose header claims side x side pixels: a decompression bomb, as Pillow meets it."""
    data = bytearray(png_bytes(8))
    data[16:24] = struct.pack(">II", side, side)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


HUGE_PNG = png_bytes(8) + b"\0" * (48 * 1024 * 1024)  # a 48 MiB answer


def variation(client: OpenAI, model: str) -> tuple[int, dict[str, str], dict[str, object]]:
    """Status, headers and JSON of one request, whatever the status."""
    base_url = str(client.base_url).removesuffix("/v1/")
    raw = post_variation(base_url, client.api_key, model=model, response_format=None, timeout=60)
    return raw.status_code, dict(raw.headers), raw.json()


def served_by(client: OpenAI, model: str) -> str:
    raw = client.images.with_raw_response.create_variation(image=png_bytes(), model=model, size="256x256")
    assert len(raw.parse().data) == 1
    return raw.headers.get("x-vary-target", model)


def test_an_unreadable_provider_image_falls_back_to_the_next_target(
    gateway: Gateway, second: FakeProvider, client: OpenAI
) -> None:
    _, provider, _, data_dir = gateway
    before, good_before = len(second.calls), len(provider.calls_to("openai"))
    second.fail("openai", ("b64", b"not an image at all"), ("b64", png_bytes(64)[:60]))
    assert served_by(client, "second-then-openai") == "up-openai"
    assert len(second.calls) - before == 2, "retried, as any unreadable answer"
    assert len(provider.calls_to("openai")) - good_before == 1
    row = last_row(data_dir)
    assert (row.status, row.target, row.attempts, row.targets_tried) == (200, "up-openai", 3, "up-second:2,up-openai:1")


def test_a_decompression_bomb_from_a_provider_is_a_502_never_a_500(
    gateway: Gateway, second: FakeProvider, client: OpenAI
) -> None:
    server, _, _, _ = gateway
    second.fail("openai", ("b64", bomb_png()), ("b64", bomb_png()))
    with httpx.Client(base_url=str(client.base_url), headers={"Authorization": f"Bearer {client.api_key}"}) as http:
        failed = http.post(
            "images/variations", files={"image": ("a.png", png_bytes())}, data={"model": "up-second"}, timeout=60
        )
        assert failed.status_code == 502 and failed.json()["error"]["code"] == "upstream_unavailable"
        assert failed.headers.get("connection") != "close", "the client's kept-alive connection stays open"
        again = http.post(
            "images/variations", files={"image": ("a.png", png_bytes())}, data={"model": "up-second"}, timeout=60
        )
        assert again.status_code == 200
    assert "DecompressionBombError" not in server.log() and "Traceback" not in server.log()
    second.fail("openai", ("b64", bomb_png()), ("b64", bomb_png()))
    assert served_by(client, "second-then-openai") == "up-openai"


@pytest.mark.parametrize(
    "fault",
    [
        ("status", 400, "x" * 190 + f"key {SECOND_SECRET} refused"),  # the key crosses the 200-character cut
        ("text", 400, f"bad request for key={quote(SECOND_SECRET, safe='')}"),
        ("text", 400, '{"error": "bad key ' + json.dumps(SECOND_SECRET)[1:-1] + '"}'),
        ("status", 422, "rejected: " + quote_plus(SECOND_SECRET)),
    ],
    ids=["across-the-cut", "url-encoded", "json-escaped-text", "form-encoded"],
)
def test_a_key_echoed_by_a_provider_reaches_the_client_in_no_form(
    gateway: Gateway, second: FakeProvider, client: OpenAI, fault: tuple[object, ...]
) -> None:
    server, _, _, _ = gateway
    second.fail("openai", fault)
    status, _, body = variation(client, "up-second")
    assert status == fault[1]
    text = json.dumps(body) + server.log()
    for form in (SECOND_SECRET, quote(SECOND_SECRET, safe=""), json.dumps(SECOND_SECRET)[1:-1]):
        leaked = [form[i : i + 8] for i in range(len(form) - 7) if form[i : i + 8] in text]
        assert leaked == [], f"fragments of the key reached the client or the log: {leaked}"


def test_a_provider_redirect_is_vary_s_configuration_and_falls_back(
    gateway: Gateway, second: FakeProvider, client: OpenAI
) -> None:
    before = len(second.calls)
    second.fail("openai", ("redirect", 301, "https://elsewhere.example/v1/images/variations"))
    assert served_by(client, "second-then-openai") == "up-openai"
    assert len(second.calls) - before == 1, "a configuration failure is not retried"
    second.fail("openai", ("redirect", 308, "https://elsewhere.example/v1/images/variations"))
    status, _, body = variation(client, "up-second")
    assert status == 502 and body["error"]["code"] == "upstream_unavailable"  # type: ignore[index]


def test_a_missing_azure_deployment_falls_through_and_opens_its_circuit(gateway: Gateway, client: OpenAI) -> None:
    server, provider, _, data_dir = gateway
    missing = lambda: len([c for c in provider.calls_to("azure") if "/missing/" in c.path])  # noqa: E731
    for expected in (1, 2, 2):  # not retried; two failures open the circuit; then skipped
        assert served_by(client, "missing-then-openai") == "up-openai"
        assert missing() == expected
    assert last_row(data_dir).targets_tried == "up-openai:1"
    metrics = httpx.get(f"{server.base_url}/metrics", timeout=30).text
    assert 'vary_target_attempts_total{outcome="configuration",target="azure-missing"} 2.0' in metrics
    assert 'vary_target_circuit_state{state="open",target="azure-missing"} 1.0' in metrics


def test_after_the_cooldown_one_of_eight_concurrent_requests_probes(
    gateway: Gateway, probe: FakeProvider, client: OpenAI
) -> None:
    probe.fail("openai", ("status", 500))
    assert served_by(client, "probe-then-openai") == "up-openai"  # one failure opens the circuit
    assert len(probe.calls) == 1
    time.sleep(1.5)  # past the 1 s cooldown: the circuit is half-open
    release = threading.Event()
    probe.fail("openai", ("hold", release))  # the probe is held until the seven others are answered
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(served_by, client, "probe-then-openai") for _ in range(8)]
        done = []
        for future in as_completed(futures):
            done.append(future.result())
            if len(done) == 7:
                assert len(probe.calls) == 2, "one probe, held"
                release.set()
    release.set()
    assert sorted(done) == ["up-openai"] * 7 + ["up-probe"]
    assert len(probe.calls) == 2
    assert served_by(client, "probe-then-openai") == "up-probe", "the probe succeeded: the circuit is closed"


def test_a_retry_after_past_the_cap_moves_on_instead_of_waiting_short(
    gateway: Gateway, second: FakeProvider, client: OpenAI
) -> None:
    before = len(second.calls)
    second.fail("openai", ("429", 60))
    assert served_by(client, "second-then-openai") == "up-openai"
    second.fail("openai", ("429-date", 60))
    assert served_by(client, "second-then-openai") == "up-openai"
    assert len(second.calls) - before == 2, "neither 60 s wait was taken, nor cut short to the 2 s cap"
    second.fail("openai", ("429", 60))
    status, headers, body = variation(client, "up-second")
    assert status == 429 and headers["retry-after"] == "60"
    assert body["error"]["code"] == "rate_limit_exceeded"  # type: ignore[index]
    assert len(second.calls) - before == 3
    second.fail("openai", ("429-ms", 50, 60))  # retry-after-ms wins over its Retry-After: waited out
    assert served_by(client, "up-second") == "up-second"
    assert len(second.calls) - before == 5


def test_a_route_s_deadline_bounds_every_attempt_and_wait(
    gateway: Gateway, second: FakeProvider, client: OpenAI
) -> None:
    _, provider, _, data_dir = gateway
    before, good_before = len(second.calls), len(provider.calls_to("openai"))
    second.fail("openai", ("delay", 5))  # within the target's 2 s timeout? no: the route has 1 s in all
    status, _, body = variation(client, "deadline-route")
    assert status == 502 and body["error"]["code"] == "upstream_unavailable"  # type: ignore[index]
    assert len(second.calls) - before == 1 and len(provider.calls_to("openai")) == good_before
    row = last_row(data_dir)
    assert (row.status, row.target, row.attempts, row.targets_tried) == (502, None, 1, "up-second:1")


def test_a_48_mib_provider_image_is_refused_in_base64_and_behind_a_url(
    gateway: Gateway, second: FakeProvider, client: OpenAI
) -> None:
    before, downloads = len(second.calls), second.downloads
    second.fail("openai", ("b64", HUGE_PNG), ("b64", HUGE_PNG))
    status, _, _ = variation(client, "up-second")
    assert status == 502 and len(second.calls) - before == 2
    second.fail("openai", ("url", HUGE_PNG))
    status, _, _ = variation(client, "up-second")
    assert status == 502
    assert len(second.calls) - before == 3, "a refused download never asks for the generation again"
    assert second.downloads - downloads == 1, "nor the download: it would be as large"


def test_re_hosting_retries_the_download_never_the_generation(
    gateway: Gateway, second: FakeProvider, client: OpenAI
) -> None:
    before, downloads = len(second.calls), second.downloads
    second.fail("files", ("status", 500))
    assert served_by(client, "up-second") == "up-second"
    assert (len(second.calls) - before, second.downloads - downloads) == (1, 2)
    second.fail("files", ("status", 503), ("status", 503))  # both download attempts fail
    assert served_by(client, "second-then-openai") == "up-openai"
    assert (len(second.calls) - before, second.downloads - downloads) == (2, 4)


def test_a_failed_routed_request_records_the_targets_tried_and_every_attempt(
    gateway: Gateway, second: FakeProvider, client: OpenAI
) -> None:
    _, provider, _, data_dir = gateway
    second.fail("openai", ("status", 500), ("status", 500))
    provider.fail("openai", ("status", 503), ("status", 503), ("status", 503))
    status, _, _ = variation(client, "second-then-openai")
    assert status == 502
    row = last_row(data_dir)
    assert (row.status, row.target, row.attempts, row.targets_tried) == (502, None, 5, "up-second:2,up-openai:3")


def test_per_target_metrics_carry_configuration_names_only(
    gateway: Gateway, second: FakeProvider, client: OpenAI
) -> None:
    server, provider, _, _ = gateway
    second.fail("openai", ("status", 500))
    assert served_by(client, "up-second") == "up-second"
    metrics = httpx.get(f"{server.base_url}/metrics", timeout=30).text
    for line in (
        'vary_target_attempts_total{outcome="retryable",target="up-second"}',
        'vary_target_attempts_total{outcome="success",target="up-second"}',
        'vary_target_attempt_seconds_count{target="up-second"}',
        'vary_target_circuit_state{state="closed",target="up-second"} 1.0',
    ):
        assert line in metrics
    for url in (provider.base_url, second.base_url, "127.0.0.1"):
        assert url not in metrics


def test_v1_models_shows_no_provider_url(gateway: Gateway, second: FakeProvider, client: OpenAI) -> None:
    server, provider, reset, _ = gateway
    models = httpx.get(
        f"{server.base_url}/v1/models", headers={"Authorization": f"Bearer {client.api_key}"}, timeout=30
    )
    cards = {card["id"]: card for card in models.json()["data"]}
    assert cards["up-second"]["description"] == "A hosted provider (openai-compatible)."
    for url in (provider.base_url, second.base_url, reset.base_url, "127.0.0.1"):
        assert url not in models.text
