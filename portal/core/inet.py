"""Addresses as people and files write them, in one place.

    parse_host_port(text, *, default_port=53) -> (host, port)   ADDR, ADDR:PORT, [ADDR]:PORT
    format_host_port(host, port) -> text                        the same form back
    parse_server(text) -> Upstream | None                       a DNS server as files write it
    parse_servers(words) -> tuple[Upstream, ...]                several, in order, bounded
    is_loopback(host) -> bool

Every reader of an address with an optional port uses `parse_host_port`: the config's `listen`
and `upstreams`, resolv.conf and systemd-networkd's DNS lines, NetworkManager's DNS
configuration, the venue's DNS servers. An IPv6 address may carry a zone (`fe80::1%wlan0`): a
link-local server is only reachable through its interface. Hosts come back in their canonical
text form (`2001:DB8::1` → `2001:db8::1`).

Pure: text in, text and model values out. No socket, no file.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from portal.core.model import Upstream
from portal.errors import InvalidAddress

DNS_PORT = 53
# glibc reads three nameservers; keep a few more for the stub's forwarding, but bounded.
MAX_SERVERS = 8


def parse_host_port(text: str, *, default_port: int = DNS_PORT) -> tuple[str, int]:
    """`ADDR`, `ADDR:PORT`, `[V6ADDR]`, `[V6ADDR]:PORT` or `V6ADDR%ZONE` → (host, port).

    An IPv6 address with a port must be bracketed (one colon means a port). Raise InvalidAddress
    with a one-line reason.
    """
    text = str(text).strip()
    host, port = text, default_port
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise InvalidAddress(f"invalid address {text!r}: no closing ']'")
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise InvalidAddress(f"invalid address {text!r}: ':PORT' may follow ']'")
            port = _port(rest[1:], text)
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = _port(port_text, text)
    bare, sep, zone = host.partition("%")
    try:
        addr = ipaddress.ip_address(bare)
    except ValueError:
        raise InvalidAddress(f"invalid address {text!r}: not an IPv4 or IPv6 address") from None
    if sep and (addr.version != 6 or not zone.replace("-", "").replace("_", "").isalnum()):
        raise InvalidAddress(f"invalid address {text!r}: a zone only follows an IPv6 address")
    return str(addr) + (f"%{zone}" if sep else ""), port


def _port(text: str, whole: str) -> int:
    port = int(text) if text.isdigit() else 0
    if not 0 < port < 65536:
        raise InvalidAddress(f"invalid port in {whole!r}")
    return port


def format_host_port(host: str, port: int) -> str:
    """`ADDR:PORT`, with brackets around an IPv6 address (as `Upstream` prints itself)."""
    return str(Upstream(host, port))


def parse_server(text: str) -> Upstream | None:
    """One DNS server as resolv.conf, systemd-networkd or NetworkManager write it; None when it
    is not one. networkd's `ADDR#server-name` form is accepted (the name is for DNS-over-TLS,
    which the stub does not speak)."""
    try:
        host, port = parse_host_port(text.split("#", 1)[0])
    except InvalidAddress:
        return None
    return Upstream(host, port)


def parse_servers(words: Iterable[str]) -> tuple[Upstream, ...]:
    """The DNS servers among `words`, in order, without duplicates, at most MAX_SERVERS."""
    seen: list[Upstream] = []
    for word in words:
        server = parse_server(word)
        if server is not None and server not in seen:
            seen.append(server)
        if len(seen) >= MAX_SERVERS:
            break
    return tuple(seen)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ::ffff:127.x: this machine, never a venue's server.

    The stub asks this for every packet: the common cases are answered without `ipaddress`,
    which costs more than answering the query.
    """
    if host.startswith("127.") or host == "::1":
        return True
    try:
        addr = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback
