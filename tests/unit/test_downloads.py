"""The download policy of a provider's image URLs, against real servers on loopback, with a resolver of the
test's own standing in for DNS (so a public provider name can be made to resolve to an internal address)."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import png_bytes
from tests.fakes.providers import FakeProvider
from vary.errors import UpstreamFailure
from vary.targets.hosted.downloads import Downloader, DownloadPolicy, host_matches, network_of

PUBLIC = "93.184.216.34"


@pytest.fixture(scope="module")
def internal() -> Iterator[FakeProvider]:
    server = FakeProvider(key="unused", host="127.0.0.2").start()
    server.files["a.png"] = png_bytes(32)
    yield server
    server.stop()


def resolver(names: dict[str, str]):  # type: ignore[no-untyped-def]
    async def resolve(host: str, port: int) -> list[str]:
        if host in names:
            return [names[host]]
        raise OSError("no such host")

    return resolve


async def body(response: httpx.Response) -> bytes:
    return await response.aread()


def fetch(downloader: Downloader, url: str) -> bytes:
    async def run() -> bytes:
        try:
            return await downloader.get(url, body)
        finally:
            await downloader.aclose()

    return asyncio.run(run())


def test_networks_are_told_apart() -> None:
    kinds = {
        "127.0.0.2": "loopback",
        "10.1.2.3": "private",
        "192.168.0.1": "private",
        "100.64.0.1": "private",  # carrier-grade NAT: not reachable from the internet
        "169.254.169.254": "link-local",  # cloud metadata
        "224.0.0.1": "multicast",
        "0.0.0.0": "reserved",
        "::1": "loopback",
        "fe80::1": "link-local",
        "fd00::1": "private",
        "::ffff:127.0.0.1": "loopback",  # an IPv4-mapped address is its IPv4 address
        "fec0::1": "private",  # IPv6 site-local (deprecated, still routed inside some sites)
        "2002:7f00:1::1": "loopback",  # 6to4 is its embedded IPv4 address: 127.0.0.1
        "2002:a01:203::1": "private",  # 10.1.2.3
        "2002:a9fe:a9fe::1": "link-local",  # 169.254.169.254
        "2002:5db8:d822::1": "public",  # 93.184.216.34
        PUBLIC: "public",
        "2606:4700::1111": "public",
    }
    assert {a: network_of(ipaddress.ip_address(a)) for a in kinds} == kinds


def test_host_patterns() -> None:
    assert host_matches("cdn.example.com", "*.example.com")
    assert not host_matches("example.com", "*.example.com")
    assert not host_matches("evilexample.com", "*.example.com")
    assert host_matches("example.com", "example.com") and not host_matches("a.example.com", "example.com")


def test_an_https_provider_s_urls_must_be_https(internal: FakeProvider) -> None:
    policy = DownloadPolicy.of("https://provider.example/v1")
    downloader = Downloader(policy, timeout=httpx.Timeout(10), resolve=resolver({"provider.example": PUBLIC}))
    with pytest.raises(UpstreamFailure, match="scheme 'http' is not allowed") as refused:
        fetch(downloader, "http://provider.example/a.png")
    assert refused.value.kind == "unavailable"  # not retried


def test_a_public_provider_s_name_resolving_to_an_internal_address_is_refused(internal: FakeProvider) -> None:
    """The name is the provider's own, so the host check passes: the address, resolved once, is what refuses."""
    before = internal.downloads
    policy = DownloadPolicy.of("http://provider.example/v1", [f"cdn.example:{internal.port}"])
    names = {"provider.example": PUBLIC, "cdn.example": "127.0.0.2"}
    downloader = Downloader(policy, timeout=httpx.Timeout(10), resolve=resolver(names))
    with pytest.raises(UpstreamFailure, match="resolves to a loopback address"):
        fetch(downloader, f"http://cdn.example:{internal.port}/files/a.png")
    assert internal.downloads == before


def test_a_host_not_listed_is_refused_before_any_lookup(internal: FakeProvider) -> None:
    policy = DownloadPolicy.of("http://127.0.0.2:1/v1")
    downloader = Downloader(policy, timeout=httpx.Timeout(10), resolve=resolver({"127.0.0.2": "127.0.0.2"}))
    with pytest.raises(UpstreamFailure, match="neither the provider's nor one of its download_hosts"):
        fetch(downloader, "http://169.254.169.254/latest/meta-data/")


@pytest.mark.parametrize(
    ("base", "listed", "url", "allowed"),
    [
        ("https://p.example/v1", (), "https://p.example/a.png", True),
        ("https://p.example/v1", (), "https://p.example:443/a.png", True),  # the scheme's default, written out
        ("https://p.example/v1", (), "https://p.example:8443/a.png", False),  # another service on that host
        ("https://p.example:8443/v1", (), "https://p.example:8443/a.png", True),
        ("https://p.example:8443/v1", (), "https://p.example/a.png", False),
        ("http://p.example/v1", (), "https://p.example/a.png", True),  # no port given: the URL scheme's default
        ("http://p.example/v1", (), "http://p.example:8080/a.png", False),
        ("https://p.example/v1", ("cdn.example",), "https://cdn.example/a.png", True),
        ("https://p.example/v1", ("cdn.example",), "https://cdn.example:6379/a.png", False),
        ("https://p.example/v1", ("*.cdn.example:8443",), "https://a.cdn.example:8443/a.png", True),
        ("https://p.example/v1", ("*.cdn.example:8443",), "https://a.cdn.example/a.png", False),
        ("https://p.example/v1", ("[::1]:8443",), "https://[::1]:8443/a.png", True),
    ],
)
def test_a_url_s_port_must_be_its_host_s_own(base: str, listed: tuple[str, ...], url: str, allowed: bool) -> None:
    """A host's port is its own (the base URL's or the listed one, when given; else the URL scheme's default): a
    provider's URL on its own host but another port is another service there."""
    policy = DownloadPolicy.of(base, listed)
    if allowed:
        policy.check_url(httpx.URL(url))
    else:
        with pytest.raises(UpstreamFailure, match="port"):
            policy.check_url(httpx.URL(url))


def test_the_connection_goes_to_the_address_that_was_checked(internal: FakeProvider) -> None:
    """images.test exists only in the test's resolver: the download works only if vary connects to the
    address it checked, with the name in the Host header, instead of resolving the name again."""
    policy = DownloadPolicy.of(f"http://images.test:{internal.port}/v1")
    downloader = Downloader(policy, timeout=httpx.Timeout(10), resolve=resolver({"images.test": "127.0.0.2"}))
    assert fetch(downloader, f"http://images.test:{internal.port}/files/a.png") == internal.files["a.png"]
    assert internal.hosts_seen[-1] == f"images.test:{internal.port}"


def test_redirects_are_followed_hop_by_hop_and_not_forever(internal: FakeProvider) -> None:
    policy = DownloadPolicy.of(internal.base_url)
    downloader = Downloader(policy, timeout=httpx.Timeout(10))
    internal.fail("files", ("redirect", 302, "/files/a.png"))
    assert fetch(downloader, f"{internal.base_url}/files/start.png") == internal.files["a.png"]
    internal.fail("files", *[("redirect", 302, "/files/again.png")] * 6)
    with pytest.raises(UpstreamFailure, match="more than 5 redirects"):
        fetch(Downloader(policy, timeout=httpx.Timeout(10)), f"{internal.base_url}/files/start.png")
