"""Where http steps may connect: allow and deny lists of networks and host names, checked after DNS.

A runbook's URL is often a param, so without a rule anyone who may start a run could make a worker fetch
cloud metadata (http://169.254.169.254/ gives out credentials on most clouds). Every connection an http
step opens, the first and each redirect's, goes through connect_tcp below: the host name is checked, then
every address it resolves to, and the socket connects to a checked address (not to a second lookup, which
DNS rebinding could answer differently).

The rules are settings: RUNBOOKD_HTTP_DENY_CIDRS / _DENY_HOSTS always win; when RUNBOOKD_HTTP_ALLOW_CIDRS or
_ALLOW_HOSTS is set, a destination must match one of them too.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx
from httpcore._backends.sync import SyncBackend

from server.settings import Settings, get_settings

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _host_matches(host: str, patterns: Iterable[str]) -> bool:
    host = host.lower().rstrip(".")
    for pattern in patterns:
        pattern = pattern.lower().rstrip(".")
        if host == pattern or (pattern.startswith("*.") and host.endswith(pattern[1:])):
            return True
    return False


@dataclass(frozen=True)
class Policy:
    allow_cidrs: tuple[Network, ...]
    deny_cidrs: tuple[Network, ...]
    allow_hosts: tuple[str, ...]
    deny_hosts: tuple[str, ...]

    @classmethod
    def of(cls, settings: Settings) -> Policy:
        return cls(tuple(ipaddress.ip_network(c, strict=False) for c in settings.http_allow_cidrs),
                   tuple(ipaddress.ip_network(c, strict=False) for c in settings.http_deny_cidrs),
                   tuple(settings.http_allow_hosts), tuple(settings.http_deny_hosts))

    def check_host(self, host: str) -> None:
        if _host_matches(host, self.deny_hosts):
            raise httpcore.ConnectError(f"{host} is blocked by RUNBOOKD_HTTP_DENY_HOSTS")

    def check_address(self, host: str, address: Address) -> None:
        plain = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped \
            else address
        for net in self.deny_cidrs:
            if plain.version == net.version and plain in net:
                raise httpcore.ConnectError(f"{host} ({plain}) is blocked by RUNBOOKD_HTTP_DENY_CIDRS ({net})")
        if not (self.allow_cidrs or self.allow_hosts):
            return
        if _host_matches(host, self.allow_hosts):
            return
        if any(plain.version == net.version and plain in net for net in self.allow_cidrs):
            return
        raise httpcore.ConnectError(f"{host} ({plain}) is not in RUNBOOKD_HTTP_ALLOW_CIDRS or _ALLOW_HOSTS")

    def resolve(self, host: str, port: int) -> list[str]:
        """The addresses to connect to, each checked; ConnectError naming the rule when one is refused."""
        self.check_host(host)
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc.strerror or exc}") from None
        addresses = list(dict.fromkeys(str(info[4][0]).split("%")[0] for info in infos))
        for address in addresses:
            self.check_address(host, ipaddress.ip_address(address))
        return addresses


class GuardedBackend(httpcore.NetworkBackend):
    def __init__(self, policy: Policy) -> None:
        self.policy, self.inner = policy, SyncBackend()

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        last: Exception | None = None
        for address in self.policy.resolve(host, port):
            try:
                return self.inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except httpcore.ConnectError as exc:
                last = exc
        raise last or httpcore.ConnectError(f"{host} resolved to no address")

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("unix sockets are not reachable from http steps")

    def sleep(self, seconds: float) -> None:
        self.inner.sleep(seconds)


def transport(settings: Settings | None = None, *, verify: bool = True) -> httpx.HTTPTransport:
    """An httpx transport whose every connection (redirects included) obeys the settings' rules."""
    guarded = httpx.HTTPTransport(verify=verify)
    # httpx does not take a network backend; its pool does (httpcore's documented extension point).
    guarded._pool._network_backend = GuardedBackend(Policy.of(settings or get_settings()))
    return guarded
