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


def config(provider: FakeProvider) -> str:
    def openai_api(name: str, **options: object) -> dict[str, object]:
        base_url = f"{provider.base_url}/v1"
        return hosted(name, "openai-compatible", base_url, key_env="FAKE_OPENAI_KEY", max_attempts=1, **options)

    return catalogue(
        local(),
        openai_api("up-rehost"),
        openai_api("up-listed", download_hosts=["127.0.0.2"]),
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


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    provider = FakeProvider(key=SECRET).start()
    internal = FakeProvider(key="unused", host="127.0.0.2").start()
    internal.files["metadata.png"] = INTERNAL_PNG
    try:
        env = {"FAKE_OPENAI_KEY": SECRET}
        with serve(tmp_path_factory.mktemp("downloads"), catalogue=config(provider), env=env) as vary:
            yield Setup(vary, provider, internal)
    finally:
        provider.stop()
        internal.stop()


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
