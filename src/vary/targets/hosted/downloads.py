"""Downloads of the image URLs a provider answers with, only where the provider's configuration allows.

A provider's answer is not trusted to point anywhere: a compromised or malicious one could make vary
fetch its cloud metadata endpoint or an internal service, and hand the bytes back as an image. So a
download, and every redirect hop of it, is checked before any connection:

- the scheme is https, or http as well when the provider's own `base_url` is http;
- the host is the `base_url`'s host or one of the configuration's `download_hosts`
  (an entry `*.example.com` takes the subdomains of example.com);
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
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# host, port -> the addresses it resolves to, best first (getaddrinfo's order)
Resolver = Callable[[str, int], Awaitable[list[str]]]


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def network_of(address: IPAddress) -> str:
    """The kind of network an address is on: "public", or what makes it not public."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
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


def _refused(why: str) -> UpstreamFailure:
    return UpstreamFailure(f"refused to download the provider's image: {why}", retryable=False)


@dataclass(frozen=True)
class DownloadPolicy:
    """Where a provider's image URLs may point: schemes, hosts, and kinds of network."""

    base_host: str
    hosts: tuple[str, ...]  # the base host and the configured download_hosts, lower case
    schemes: frozenset[str]

    @classmethod
    def of(cls, base_url: str, download_hosts: Iterable[str] = ()) -> DownloadPolicy:
        base = httpx.URL(base_url)
        schemes = frozenset({"http", "https"}) if base.scheme == "http" else frozenset({"https"})
        base_host = base.host.lower()
        hosts = (base_host, *(host.lower().strip("[]") for host in download_hosts))  # "[::1]" is the host "::1"
        return cls(base_host, hosts, schemes)

    def check_url(self, url: httpx.URL) -> None:
        if url.scheme not in self.schemes:
            raise _refused(f"the scheme {url.scheme or '(none)'!r} is not allowed")
        host = url.host.lower()
        if not host or not any(host_matches(host, pattern) for pattern in self.hosts):
            raise _refused("its host is neither the provider's nor one of its download_hosts")

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
            addresses = await self._resolve(host, url.port or (443 if url.scheme == "https" else 80))
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
