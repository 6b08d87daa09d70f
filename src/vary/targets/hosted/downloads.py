"""Downloads of the image URLs a provider answers with, only where the provider's configuration allows.

A provider's answer is not trusted to point anywhere: a compromised or malicious one could make vary
fetch its cloud metadata endpoint or an internal service, and hand the bytes back as an image. So a
download, and every redirect hop of it, is checked before any connection:

- the scheme is https, or http as well when the provider's own `base_url` is http;
- the host is the `base_url`'s host or one of the configuration's `download_hosts`
  (an entry `*.example.com` takes the subdomains of example.com), on that entry's port: the one it
  names (`cdn.example.com:8443`, or the base URL's own), else the URL scheme's default (443, 80);
- the host is resolved once, here, and the connection goes to that checked address (no DNS
  rebinding between the check and the connect); TLS still verifies the certificate for the name;
- the address is public, unless the `base_url` itself is on the same kind of network (a provider on
  loopback or on a private network may send vary there, nowhere else).

Redirects are followed here, hop by hop, never by httpx. A refused download is an UpstreamFailure
that is not retried: the attempt fails and the route moves on.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import httpx

from vary.errors import UpstreamFailure

MAX_REDIRECTS = 5
DEFAULT_PORTS = {"http": 80, "https": 443}
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# host, port -> the addresses it resolves to, best first (getaddrinfo's order)
Resolver = Callable[[str, int], Awaitable[list[str]]]


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def network_of(address: IPAddress) -> str:
    """The kind of network an address is on: "public", or what makes it not public."""
    if isinstance(address, ipaddress.IPv6Address):
        # An IPv4-mapped or 6to4 (2002::/16) address reaches its embedded IPv4 address: that one decides.
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is not None:
            address = embedded
        elif address.is_site_local:  # fec0::/10, deprecated but still routed inside some sites
            return "private"
    if address.is_multicast:
        return "multicast"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_unspecified or address.is_reserved:
        return "reserved"
    if address.is_private or not address.is_global:
        return "private"
    return "public"


def host_matches(host: str, pattern: str) -> bool:
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return host == pattern


def port_of(url: httpx.URL) -> int | None:
    """The port a URL connects to: its own, or its scheme's default."""
    return url.port or DEFAULT_PORTS.get(url.scheme)


def host_and_port(entry: str) -> tuple[str, int | None]:
    """A download_hosts entry ("cdn.example.com", "*.example.com:8443", "[::1]:9000") as its lower-case host and
    its port (None: the URL scheme's default)."""
    entry = entry.lower()
    host, colon, port = entry.rpartition(":")
    if colon and port.isdigit() and (not host.startswith("[") or host.endswith("]")):
        return host.strip("[]"), int(port)
    return entry.strip("[]"), None


def _refused(why: str) -> UpstreamFailure:
    return UpstreamFailure(f"refused to download the provider's image: {why}", retryable=False)


@dataclass(frozen=True)
class DownloadPolicy:
    """Where a provider's image URLs may point: schemes, hosts, and kinds of network."""

    base_host: str
    # The base URL's host and the configured download_hosts, lower case, each with its port (None: the URL
    # scheme's default): another port of an allowed host is another service there, and is refused.
    hosts: tuple[tuple[str, int | None], ...]
    schemes: frozenset[str]

    @classmethod
    def of(cls, base_url: str, download_hosts: Iterable[str] = ()) -> DownloadPolicy:
        base = httpx.URL(base_url)
        schemes = frozenset({"http", "https"}) if base.scheme == "http" else frozenset({"https"})
        base_host = base.host.lower()
        hosts = ((base_host, base.port), *(host_and_port(entry) for entry in download_hosts))
        return cls(base_host, hosts, schemes)

    def check_url(self, url: httpx.URL) -> None:
        if url.scheme not in self.schemes:
            raise _refused(f"the scheme {url.scheme or '(none)'!r} is not allowed")
        host, port = url.host.lower(), port_of(url)
        ports = [allowed or DEFAULT_PORTS[url.scheme] for pattern, allowed in self.hosts if host_matches(host, pattern)]
        if not host or not ports:
            raise _refused("its host is neither the provider's nor one of its download_hosts")
        if port not in ports:
            raise _refused(f"its port {port} is not the one allowed for its host ({', '.join(map(str, ports))})")

    def check_address(self, address: IPAddress, base_network: str) -> None:
        network = network_of(address)
        if network != "public" and network != base_network:
            raise _refused(f"its host resolves to a {network} address")


class Downloader:
    """GETs of a provider's image URLs under its DownloadPolicy, each read up to a limit."""

    def __init__(self, policy: DownloadPolicy, *, timeout: httpx.Timeout, resolve: Resolver = system_resolver) -> None:
        self.policy = policy
        self._resolve = resolve
        self._base_network: str | None = None
        # No proxies from the environment (the address checked must be the one connected to), and no
        # kept connections: one made for a name is never reused for another name on the same address.
        self.client = httpx.AsyncClient(
            timeout=timeout, follow_redirects=False, trust_env=False, limits=httpx.Limits(max_keepalive_connections=0)
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    async def get(self, url: str, read: Callable[[httpx.Response], Awaitable[bytes]]) -> bytes:
        """The body `read` returns from the final answer; raises UpstreamFailure (refusals are not retryable)."""
        try:
            target = httpx.URL(url)
        except httpx.InvalidURL:
            raise _refused("it is not a URL") from None
        for _ in range(MAX_REDIRECTS + 1):
            self.policy.check_url(target)
            address = await self._checked_address(target)
            request = self.client.build_request(
                "GET",
                target.copy_with(host=str(address)),
                headers={"Host": target.netloc.decode("ascii")},
                extensions={"sni_hostname": target.raw_host.decode("ascii")},
            )
            response = await self.client.send(request, stream=True)
            try:
                location = response.headers.get("location")
                if response.status_code in REDIRECT_STATUSES and location:
                    try:
                        target = target.join(location)
                    except httpx.InvalidURL:
                        raise _refused("a redirect pointed at something that is not a URL") from None
                    continue
                return await read(response)
            finally:
                await response.aclose()
        raise _refused(f"more than {MAX_REDIRECTS} redirects")

    async def _checked_address(self, url: httpx.URL) -> IPAddress:
        base_network = await self._network_of_base()
        host = url.raw_host.decode("ascii")
        try:
            addresses = await self._resolve(host, port_of(url) or 443)
            address = ipaddress.ip_address(addresses[0].split("%", 1)[0])
        except (OSError, IndexError, ValueError):
            raise UpstreamFailure("an image URL's host could not be resolved", retryable=True) from None
        self.policy.check_address(address, base_network)
        return address

    async def _network_of_base(self) -> str:
        """The kind of network the provider's own host is on: resolved once, at the first download."""
        if self._base_network is None:
            try:
                addresses = await self._resolve(self.policy.base_host, 443)
                self._base_network = network_of(ipaddress.ip_address(addresses[0].split("%", 1)[0]))
            except (OSError, IndexError, ValueError):
                return "public"  # not known yet: only public addresses this time, and asked again next time
        return self._base_network
