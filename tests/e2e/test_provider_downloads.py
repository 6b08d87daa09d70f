"""A provider cannot make vary read the network it sits in (SSRF), nor hand the client a URL that is not a web
address. 127.0.0.2 stands in for a host on the internal network: on Linux all of 127.0.0.0/8 answers on lo."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.fakes.providers import FakeProvider
from tests.harness import Running, catalogue, hosted, local, png_bytes, route, serve

SECRET = "sk-fake-upstream-SECRET-downloads"
INTERNAL_PNG = png_bytes(256, color=(1, 2, 3))


def config(provider: FakeProvider, internal_port: int) -> str:
    def openai_api(name: str, **options: object) -> dict[str, object]:
        # No breaker: the tests make the provider fail on purpose, more than five times in a row.
        options = {"max_attempts": 1, "circuit_failures": 1000, **options}
        return hosted(name, "openai-compatible", f"{provider.base_url}/v1", key_env="FAKE_OPENAI_KEY", **options)

    return catalogue(
        local(),
        openai_api("up-rehost"),
        openai_api("up-listed", download_hosts=[f"127.0.0.2:{internal_port}"]),
        openai_api("up-as-is", rehost_urls=False),
        route("rehost-route", ["up-rehost", "local"]),
        route("as-is-route", ["up-as-is", "local"]),
        default="local",
    )


@dataclass
class Setup:
    vary: Running
    provider: FakeProvider
    internal: FakeProvider
    other_port: FakeProvider  # the provider's own host, another port: another service


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    provider = FakeProvider(key=SECRET).start()
    internal = FakeProvider(key="unused", host="127.0.0.2").start()
    internal.files["metadata.png"] = INTERNAL_PNG
    other_port = FakeProvider(key="unused").start()
    other_port.files["admin.png"] = INTERNAL_PNG
    try:
        env = {"FAKE_OPENAI_KEY": SECRET}
        root = tmp_path_factory.mktemp("downloads")
        with serve(root, catalogue=config(provider, internal.port), env=env) as vary:
            yield Setup(vary, provider, internal, other_port)
    finally:
        provider.stop()
        internal.stop()
        other_port.stop()


def refusals_logged(setup: Setup) -> list[str]:
    return [line for line in setup.vary.server.log().splitlines() if "refused to download" in line]


def test_a_url_on_an_internal_host_is_never_fetched_and_the_route_moves_on(setup: Setup) -> None:
    before = setup.internal.downloads
    setup.provider.fail("openai", ("urls", [f"{setup.internal.base_url}/files/metadata.png"]))
    response = setup.vary.post_variation(model="rehost-route")
    assert response.status_code == 200, response.text
    assert response.headers["x-vary-target"] == "local"  # the provider's attempt failed; the next target answered
    assert setup.internal.downloads == before


def test_a_redirect_from_the_provider_s_own_host_to_an_internal_one_is_not_followed(setup: Setup) -> None:
    before, own = setup.internal.downloads, setup.provider.downloads
    setup.provider.files["hop.png"] = png_bytes(256)
    setup.provider.fail("openai", ("urls", [f"{setup.provider.base_url}/files/hop.png"]))
    setup.provider.fail("files", ("redirect", 302, f"{setup.internal.base_url}/files/metadata.png"))
    response = setup.vary.post_variation(model="rehost-route")
    assert response.status_code == 200, response.text
    assert response.headers["x-vary-target"] == "local"
    assert setup.provider.downloads == own + 1  # the first hop, on the provider's own host, was allowed
    assert setup.internal.downloads == before


def test_a_refused_download_alone_is_an_upstream_failure_not_a_500(setup: Setup) -> None:
    setup.provider.fail("openai", ("urls", [f"{setup.internal.base_url}/files/metadata.png"]))
    response = setup.vary.post_variation(model="up-rehost")
    assert 500 < response.status_code < 600 and response.status_code != 500, response.text
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert "127.0.0.2" not in response.text


def test_a_refused_download_is_logged_once_with_its_reason_when_the_model_has_one_target(setup: Setup) -> None:
    before = len(refusals_logged(setup))
    setup.provider.fail("openai", ("urls", [f"{setup.internal.base_url}/files/metadata.png"]))
    response = setup.vary.post_variation(model="up-rehost")
    assert response.status_code == 502, response.text
    assert setup.vary.server.wait_for_log("refused to download", timeout=30)
    lines = refusals_logged(setup)[before:]
    assert len(lines) == 1, lines
    assert "WARNING" in lines[0] and "neither the provider's nor one of its download_hosts" in lines[0]


def test_the_provider_s_own_host_on_another_port_is_another_service_and_is_refused(setup: Setup) -> None:
    """The host alone matched before: a provider's URL could make vary GET any port of the provider's host."""
    before = setup.other_port.downloads
    setup.provider.fail("openai", ("urls", [f"{setup.other_port.base_url}/files/admin.png"]))
    response = setup.vary.post_variation(model="rehost-route")
    assert response.status_code == 200, response.text
    assert response.headers["x-vary-target"] == "local"
    assert setup.other_port.downloads == before
    assert "its port" in refusals_logged(setup)[-1]


def test_a_listed_host_on_another_port_than_the_listed_one_is_refused(setup: Setup) -> None:
    with FakeProvider(key="unused", host="127.0.0.2") as other:  # 127.0.0.2 listed, with the internal fake's port
        other.files["metadata.png"] = INTERNAL_PNG
        setup.provider.fail("openai", ("urls", [f"{other.base_url}/files/metadata.png"]))
        assert setup.vary.post_variation(model="up-listed").status_code == 502
        assert other.downloads == 0


def test_a_host_the_configuration_lists_is_downloaded_from(setup: Setup) -> None:
    before = setup.internal.downloads
    setup.provider.fail("openai", ("urls", [f"{setup.internal.base_url}/files/metadata.png"]))
    response = setup.vary.post_variation(model="up-listed")
    assert response.status_code == 200, response.text
    assert setup.internal.downloads == before + 1


@pytest.mark.parametrize(
    "url",
    ["javascript:alert(document.cookie)", "data:text/html,<script>alert(1)</script>", "/relative.png", "https://"],
)
def test_only_absolute_http_urls_are_handed_on_as_they_are(setup: Setup, url: str) -> None:
    setup.provider.fail("openai", ("urls", [url]))
    response = setup.vary.post_variation(model="as-is-route", response_format="url")
    assert response.status_code == 200, response.text
    assert response.headers["x-vary-target"] == "local"
    assert url not in response.text


def test_an_http_url_is_handed_on_as_it_is(setup: Setup) -> None:
    url = "https://images.example/a.png?sig=abc"
    setup.provider.fail("openai", ("urls", [url]))
    response = setup.vary.post_variation(model="as-is-route", response_format="url")
    assert response.status_code == 200, response.text
    assert response.json()["data"][0]["url"] == url


def test_signed_download_urls_never_reach_the_log(setup: Setup) -> None:
    setup.provider.files["signed.png"] = png_bytes(256)
    url = f"{setup.provider.base_url}/files/signed.png?expires=1&signature=PROVIDER-SIGNATURE-SECRET"
    setup.provider.fail("openai", ("urls", [url]))
    response = setup.vary.post_variation(model="up-rehost")
    assert response.status_code == 200, response.text
    assert setup.provider.hosts_seen  # the download happened, so a client logging it had the chance
    assert "PROVIDER-SIGNATURE-SECRET" not in setup.vary.server.log()
