"""Which callback URLs may be called, and the one address each delivery connects to.

A URL is checked when the job is submitted and again before each delivery (a name may resolve
elsewhere later). It must be http(s), at most ``MAX_CALLBACK_URL`` characters, one that httpx can
send (no control characters, no ambiguous numeric host such as ``010.010.010.010``), and its host
must either match an entry of ``webhook_hosts`` (``name``, ``*.domain``, IP or CIDR, each optionally
with ``:port``, which then allows that port only) or, with no allow-list, resolve to public
addresses only. The check returns a ``Target``: the addresses it checked. The delivery connects to
the first of them, with the name in the Host header and TLS's SNI, so a name that resolves to a
public address for the check and to 127.0.0.1 a moment later (DNS rebinding) still reaches the
address that was checked.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

MAX_CALLBACK_URL = 2048  # characters: longer URLs are refused (a record carries its URL for a day)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")
# the IPv6 prefixes that embed an IPv4 address in their last 32 bits (NAT64, well-known and local)
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


class CallbackRefused(ValueError):
    """The callback URL may not be called (scheme, form, host, port or address not allowed)."""


@dataclass(frozen=True)
class Target:
    """A checked callback: the URL, its host and port, and the addresses the check resolved (none when
    an allow-list entry matched the name itself: then they are resolved once, when connecting)."""

    url: httpx.URL
    host: str
    port: int
    addresses: tuple[IPAddress, ...] = ()

    def pinned(self) -> tuple[httpx.URL, IPAddress]:
        """The URL with its host replaced by the address to connect to (the Host header keeps the name)."""
        address = (self.addresses or resolve(self.host))[0]
        return self.url.copy_with(host=str(address)), address


@dataclass(frozen=True)
class AllowEntry:
    """One ``webhook_hosts`` entry: a name, ``*.domain``, IP or CIDR, and the one port it allows (or any)."""

    host: str
    port: int | None

    @classmethod
    def parse(cls, entry: str) -> AllowEntry:
        text = entry.strip().lower()
        port: int | None = None
        if text.startswith("["):  # [v6]:port or [v6]
            inside, _, rest = text[1:].partition("]")
            text, port_text = inside, rest.removeprefix(":")
            port = _port(port_text, entry) if port_text else None
        elif text.count(":") == 1:  # name:port, v4:port or cidr:port (a bare v6 has several colons)
            text, port_text = text.split(":")
            port = _port(port_text, entry)
        if not text:
            raise ValueError(f"BBCU_WEBHOOK_HOSTS entry {entry!r} names no host")
        return cls(text, port)

    @property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
        try:
            return ipaddress.ip_network(self.host, strict=False)
        except ValueError:
            return None

    def matches(self, host: str, port: int) -> bool:
        """The entry names this host (a name, or an address literal inside its network) and port."""
        if self.port is not None and self.port != port:
            return False
        if self.host.startswith("*."):
            return host.endswith(self.host[1:])
        network = self.network
        if network is None:
            return host == self.host
        try:
            return ipaddress.ip_address(host) in network
        except ValueError:
            return False


def _port(text: str, entry: str) -> int:
    if not text.isascii() or not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"BBCU_WEBHOOK_HOSTS entry {entry!r}: the port must be 1..65535")
    return int(text)


def allow_list(hosts: list[str]) -> tuple[AllowEntry, ...]:
    """The parsed ``webhook_hosts`` entries; ValueError for a malformed one (stops the start)."""
    return tuple(AllowEntry.parse(h) for h in hosts)


def embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, 6to4, NAT64), if any."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if any(address in net for net in _NAT64):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_public(address: IPAddress) -> bool:
    """A unicast address reachable on the internet; an IPv6 form of an IPv4 address is judged by it."""
    inner = embedded_ipv4(address)
    if inner is not None:
        return is_public(inner)
    internal_v6 = isinstance(address, ipaddress.IPv6Address) and (address.is_site_local
                                                                  or address.teredo is not None)
    return address.is_global and not (address.is_multicast or address.is_reserved or address.is_unspecified
                                      or address.is_link_local or internal_v6)


def resolve(host: str) -> tuple[IPAddress, ...]:
    """The addresses of ``host`` (an address literal is its own), in the resolver's order."""
    try:
        return (ipaddress.ip_address(host),)
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError) as e:
        raise CallbackRefused(f"callback host {host} does not resolve ({e})") from e
    found = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    if not found:
        raise CallbackRefused(f"callback host {host} resolves to no address")
    return tuple(dict.fromkeys(found))


def parse(url: str) -> tuple[httpx.URL, str, int]:
    """The URL as httpx will send it, its host and its port; CallbackRefused for any other form."""
    if len(url) > MAX_CALLBACK_URL:
        raise CallbackRefused(f"callback_url is {len(url)} characters long, over the limit of "
                              f"{MAX_CALLBACK_URL}")
    if not url.isascii() or any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        raise CallbackRefused("callback_url may hold printable ASCII only (no spaces or control "
                              "characters; percent-encode the rest, punycode for a host)")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CallbackRefused(f"callback_url must be an http or https URL with a host, got {url!r}")
    if parts.username is not None or parts.password is not None:
        raise CallbackRefused("callback_url may not carry a user name or password")
    host = parts.hostname.lower()
    try:
        parsed = httpx.URL(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except (httpx.InvalidURL, ValueError) as e:
        raise CallbackRefused(f"callback_url is not a valid URL: {e}") from e
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not is_dns_name(host):
            raise CallbackRefused(f"callback host {host!r} is neither an IP address in its usual form nor "
                                  "a DNS name") from None
    return parsed, host, port


def is_dns_name(host: str) -> bool:
    """Labels of letters, digits, '-' and '_', and a last label no resolver reads as a number
    (``010.010.010.010``, ``0x7f.1`` and ``2130706433`` are addresses to inet_aton)."""
    labels = host.removesuffix(".").split(".")
    last = labels[-1]
    return (len(host) <= 253 and all(_LABEL.match(label) for label in labels)
            and not last.isdigit() and not last.startswith("0x"))


def check_callback(url: str, allowed: tuple[AllowEntry, ...]) -> Target:
    """The target of ``url`` if it may be called (see the module text), else ``CallbackRefused``."""
    parsed, host, port = parse(url)
    if allowed:
        if any(entry.matches(host, port) for entry in allowed):
            return Target(parsed, host, port)
        raise CallbackRefused(f"callback host {host} port {port} is not in the allow-list "
                              "(BBCU_WEBHOOK_HOSTS)")
    addresses = resolve(host)
    internal = sorted({str(a) for a in addresses if not is_public(a)})
    if internal:
        raise CallbackRefused(f"callback host {host} resolves to non-public address(es) "
                              f"{', '.join(internal)}; allow it with BBCU_WEBHOOK_HOSTS")
    return Target(parsed, host, port, addresses)
