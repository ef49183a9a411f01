"""The callback URL policy: where a source's decision callbacks may go (checked when a URL is set and at
every connection, since DNS can change in between)."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass

import httpx
from django.conf import settings
from django.core.exceptions import ValidationError

# What the /callbacks/ page shows for an address the policy refuses: nothing a port probe could use.
ADDRESS_REFUSED = "callback address not allowed"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class CallbackUrlRefused(ValueError):
    """The callback URL breaks the policy (scheme, user info, or an address that is not allowed)."""


class CallbackAddressRefused(CallbackUrlRefused):
    """The host is, or resolves to, an address callbacks may not reach (loopback, private, link-local...)."""


@dataclass(frozen=True)
class _AllowList:
    hosts: frozenset[str]
    networks: tuple[IPNetwork, ...]

    def names(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.hosts

    def covers(self, address: IPAddress) -> bool:
        return any(address in network for network in self.networks)


def _allow_list() -> _AllowList:
    """CALLBACK_ALLOWED_HOSTS: host names (exactly as in the URL) and addresses or CIDR networks."""
    hosts: set[str] = set()
    networks: list[IPNetwork] = []
    for entry in settings.CALLBACK_ALLOWED_HOSTS:
        try:
            networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
        except ValueError:
            hosts.add(entry.lower().rstrip("."))
    return _AllowList(frozenset(hosts), tuple(networks))


def address_refusal(address: IPAddress) -> str:
    """Why an address is refused ('' if callbacks may reach it), ignoring the allow-list."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address_refusal(address.ipv4_mapped)
    checks = (
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("unspecified", address.is_unspecified),
        ("reserved", address.is_reserved),
        ("private", address.is_private),
        ("non-public", not address.is_global),
    )
    return next((f"{kind} address" for kind, hit in checks if hit), "")


def host_addresses(host: str, port: int) -> list[IPAddress]:
    """Every address the host resolves to (a literal address is itself). Tests replace this resolver."""
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        pass
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    # A scoped IPv6 address ("fe80::1%eth0") keeps its scope; link-local is refused either way.
    return list(dict.fromkeys(ipaddress.ip_address(str(info[4][0])) for info in infos))


def addresses_check(host: str, addresses: Iterable[IPAddress]) -> None:
    """Every address must be allowed (a name resolving to one public and one private address is refused)."""
    allowed = _allow_list()
    if allowed.names(host):
        return
    for address in addresses:
        reason = address_refusal(address)
        if reason and not allowed.covers(address):
            raise CallbackAddressRefused(f"{ADDRESS_REFUSED}: {host} is or resolves to a {reason}")


def callback_url_check(url: str, *, resolve: bool = True) -> None:
    """The callback URL policy; raises CallbackUrlRefused with the reason.

    https only, unless DEBUG or CALLBACK_ALLOW_HTTP; no user name or password; the host must not be, or
    resolve to, a loopback, private, link-local, multicast or reserved address unless CALLBACK_ALLOWED_HOSTS
    names the host or covers the address. A name that does not resolve now is accepted (it is checked again
    at every connection, as any name is: DNS can change between the two).
    """
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise CallbackUrlRefused(f"not a valid URL ({exc})") from exc
    if parsed.scheme not in {"http", "https"}:
        raise CallbackUrlRefused("the callback URL must use https")
    if parsed.scheme == "http" and not settings.CALLBACK_ALLOW_HTTP:  # on with DEBUG unless set
        raise CallbackUrlRefused("the callback URL must use https (set CALLBACK_ALLOW_HTTP to allow http)")
    if parsed.userinfo:
        raise CallbackUrlRefused("the callback URL must not contain a user name or password")
    if not parsed.host:
        raise CallbackUrlRefused("the callback URL has no host")
    if not resolve or _allow_list().names(parsed.host):
        return
    try:
        addresses = host_addresses(parsed.host, parsed.port or (443 if parsed.scheme == "https" else 80))
    except (OSError, UnicodeError):
        return
    addresses_check(parsed.host, addresses)


def callback_url_validate(url: str) -> None:
    """callback_url_check for forms and services: a ValidationError on the callback_url field."""
    if not url:
        return
    try:
        callback_url_check(url)
    except CallbackUrlRefused as exc:
        raise ValidationError({"callback_url": [str(exc)]}, code="callback_url_refused") from exc
