"""The sign-in proxy's wire protocols, as bytes in and decisions out.

- SOCKS5 (RFC 1928): the "no authentication" method only (the proxy listens on loopback and
  checks each peer's uid instead), the CONNECT command only, destinations as a domain name
  (resolved by the proxy: the whole point), IPv4 or IPv6; every reply code of RFC 1928 §6.
- HTTP CONNECT (RFC 9110 §9.3.6) on the same port, for programs that only speak HTTP proxies
  (`curl --proxytunnel -x http://...`). Nothing else of HTTP proxying: a plain `GET
  http://...` gets a 405 that says what to use instead.
- The small page the proxy serves once the network is online and the window could not be
  closed (RFC 9112 message, written out in full).

Pure: parsers take the bytes received so far and say "need more", "here is the request (and
how many bytes it took)", or "refuse, with this reply". They never read or write a socket, and
every length they accept is bounded (a domain is at most 255 bytes by the format itself; an
HTTP head at most MAX_HTTP_HEAD bytes), so hostile input costs nothing but a refusal.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass
from typing import Final

from portal.core.overrides import parse_domain
from portal.errors import InvalidDomain

SOCKS_VERSION: Final = 5
METHOD_NO_AUTH: Final = 0x00
METHOD_NONE_ACCEPTABLE: Final = 0xFF
CMD_CONNECT: Final = 0x01
ATYP_IPV4: Final = 0x01
ATYP_DOMAIN: Final = 0x03
ATYP_IPV6: Final = 0x04

MAX_HTTP_HEAD: Final = 8192  # a CONNECT request is one line and a few headers


class Reply(enum.IntEnum):
    """SOCKS5 reply codes (RFC 1928 §6)."""

    SUCCEEDED = 0x00
    GENERAL_FAILURE = 0x01
    NOT_ALLOWED = 0x02  # "connection not allowed by ruleset"
    NETWORK_UNREACHABLE = 0x03
    HOST_UNREACHABLE = 0x04
    CONNECTION_REFUSED = 0x05
    TTL_EXPIRED = 0x06  # what clients show for a timeout
    COMMAND_NOT_SUPPORTED = 0x07
    ADDRESS_TYPE_NOT_SUPPORTED = 0x08


#: The HTTP status that says the same as a SOCKS reply, for HTTP CONNECT clients.
HTTP_STATUS: Final[dict[Reply, tuple[int, str]]] = {
    Reply.SUCCEEDED: (200, "Connection established"),
    Reply.GENERAL_FAILURE: (502, "Bad Gateway"),
    Reply.NOT_ALLOWED: (403, "Forbidden"),
    Reply.NETWORK_UNREACHABLE: (502, "Bad Gateway"),
    Reply.HOST_UNREACHABLE: (502, "Bad Gateway"),
    Reply.CONNECTION_REFUSED: (502, "Bad Gateway"),
    Reply.TTL_EXPIRED: (504, "Gateway Timeout"),
    Reply.COMMAND_NOT_SUPPORTED: (405, "Method Not Allowed"),
    Reply.ADDRESS_TYPE_NOT_SUPPORTED: (400, "Bad Request"),
}


class Protocol(enum.StrEnum):
    SOCKS5 = "socks5"
    HTTP = "http"


@dataclass(frozen=True, slots=True)
class NeedMore:
    """The bytes so far are a valid beginning; read more."""


NEED_MORE: Final = NeedMore()


@dataclass(frozen=True, slots=True)
class Malformed:
    """Not this protocol at all, or broken beyond a polite answer: close without replying."""

    reason: str


@dataclass(frozen=True, slots=True)
class Refused:
    """Understood, but refused: send `reply` (its SOCKS or HTTP form), then close."""

    reply: Reply
    reason: str


@dataclass(frozen=True, slots=True)
class Greeting:
    """A SOCKS5 method-selection message: the methods the client offers."""

    methods: frozenset[int]
    size: int  # bytes it took


@dataclass(frozen=True, slots=True)
class Target:
    """Where the client wants to go: a normalised domain name or an address, and a port."""

    host: str
    port: int
    is_name: bool  # True: resolve `host` (the proxy's job); False: an address literal
    size: int = 0  # bytes the request took


def sniff(first: bytes) -> Protocol | None:
    """Which protocol a connection speaks, from its first byte (None: neither)."""
    if not first:
        return None
    if first[0] == SOCKS_VERSION:
        return Protocol.SOCKS5
    if 0x41 <= first[0] <= 0x5A:  # an upper-case letter: an HTTP method ("CONNECT", "GET")
        return Protocol.HTTP
    return None


# --- SOCKS5 ---------------------------------------------------------------------------------


def parse_greeting(buf: bytes) -> Greeting | NeedMore | Malformed:
    """VER, NMETHODS, METHODS (RFC 1928 §3)."""
    if len(buf) < 2:
        return NEED_MORE
    if buf[0] != SOCKS_VERSION:
        return Malformed(f"SOCKS version {buf[0]}, not 5")
    count = buf[1]
    if count == 0:
        return Malformed("a SOCKS5 greeting with no methods")
    if len(buf) < 2 + count:
        return NEED_MORE
    return Greeting(frozenset(buf[2 : 2 + count]), 2 + count)


def choose_method(greeting: Greeting) -> int:
    """No authentication, or "no acceptable methods" (the client must then close)."""
    return METHOD_NO_AUTH if METHOD_NO_AUTH in greeting.methods else METHOD_NONE_ACCEPTABLE


def format_method(method: int) -> bytes:
    return bytes((SOCKS_VERSION, method))


def parse_request(buf: bytes) -> Target | NeedMore | Malformed | Refused:
    """VER, CMD, RSV, ATYP, DST.ADDR, DST.PORT (RFC 1928 §4)."""
    if len(buf) < 5:
        return NEED_MORE
    version, command, _reserved, atyp = buf[0], buf[1], buf[2], buf[3]
    if version != SOCKS_VERSION:
        return Malformed(f"SOCKS version {version} in a request")
    if atyp == ATYP_IPV4:
        end = 4 + 4
    elif atyp == ATYP_IPV6:
        end = 4 + 16
    elif atyp == ATYP_DOMAIN:
        length = buf[4]
        if length == 0:
            return Refused(Reply.HOST_UNREACHABLE, "an empty domain name")
        end = 5 + length
    else:
        return Refused(Reply.ADDRESS_TYPE_NOT_SUPPORTED, f"address type {atyp}")
    if len(buf) < end + 2:
        return NEED_MORE
    size = end + 2
    port = int.from_bytes(buf[end : end + 2], "big")
    if command != CMD_CONNECT:
        # BIND and UDP ASSOCIATE: a sign-in page needs neither, and UDP would leave the
        # captive interface's reach (and the uid check) behind.
        return Refused(Reply.COMMAND_NOT_SUPPORTED, f"command {command} (only CONNECT)")
    if port == 0:
        return Refused(Reply.NOT_ALLOWED, "port 0")
    if atyp == ATYP_IPV4:
        return Target(str(ipaddress.IPv4Address(buf[4:8])), port, False, size)
    if atyp == ATYP_IPV6:
        return Target(str(ipaddress.IPv6Address(buf[4:20])), port, False, size)
    return _name_target(buf[5:end], port, size)


def _name_target(raw: bytes, port: int, size: int) -> Target | Refused:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return Refused(Reply.HOST_UNREACHABLE, "a domain name that is not UTF-8")
    literal = parse_literal(text)
    if literal is not None:
        # Clients may send an address as a "name" (curl does for [::1]).
        return Target(literal, port, False, size)
    try:
        return Target(parse_domain(text), port, True, size)
    except InvalidDomain as exc:
        return Refused(Reply.HOST_UNREACHABLE, str(exc))


def parse_literal(text: str) -> str | None:
    """The normalised address when `text` is an IPv4/IPv6 literal (brackets allowed)."""
    candidate = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        return None


def format_reply(reply: Reply, bound: tuple[str, int] | None = None) -> bytes:
    """VER, REP, RSV, ATYP, BND.ADDR, BND.PORT; 0.0.0.0:0 when nothing is bound."""
    host, port = bound or ("0.0.0.0", 0)
    address = ipaddress.ip_address(host.split("%", 1)[0])
    atyp = ATYP_IPV4 if address.version == 4 else ATYP_IPV6
    return bytes((SOCKS_VERSION, reply, 0, atyp)) + address.packed + port.to_bytes(2, "big")


# --- HTTP CONNECT ---------------------------------------------------------------------------


def parse_http_connect(buf: bytes) -> Target | NeedMore | Malformed | Refused:
    """An HTTP/1.x CONNECT request head; `size` is where the tunnelled bytes begin."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if len(buf) > MAX_HTTP_HEAD:
            return Malformed(f"an HTTP request head longer than {MAX_HTTP_HEAD} bytes")
        return NEED_MORE
    if end + 4 > MAX_HTTP_HEAD:
        return Malformed(f"an HTTP request head longer than {MAX_HTTP_HEAD} bytes")
    line = buf[: buf.find(b"\r\n")]
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        return Malformed("an HTTP request line that is not ASCII")
    parts = text.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return Malformed(f"not an HTTP/1 request line: {text[:80]!r}")
    method, authority, _version = parts
    if method != "CONNECT":
        return Refused(
            Reply.COMMAND_NOT_SUPPORTED,
            f"{method[:16]} (this proxy tunnels with CONNECT or SOCKS5 only)",
        )
    target = _parse_authority(authority)
    if isinstance(target, Refused):
        return target
    host, port = target
    literal = parse_literal(host)
    if literal is not None:
        return Target(literal, port, False, end + 4)
    try:
        return Target(parse_domain(host), port, True, end + 4)
    except InvalidDomain as exc:
        return Refused(Reply.HOST_UNREACHABLE, str(exc))


def _parse_authority(text: str) -> tuple[str, int] | Refused:
    """`host:port` or `[v6]:port` (RFC 9110 §9.3.6: CONNECT takes the authority form)."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            return Refused(Reply.ADDRESS_TYPE_NOT_SUPPORTED, f"bad authority {text[:80]!r}")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            return Refused(Reply.ADDRESS_TYPE_NOT_SUPPORTED, f"bad authority {text[:80]!r}")
    if not port_text.isdigit() or len(port_text) > 5 or not 0 < int(port_text) < 65536:
        return Refused(Reply.ADDRESS_TYPE_NOT_SUPPORTED, f"bad port in {text[:80]!r}")
    return host, int(port_text)


def format_http_reply(reply: Reply, reason: str = "") -> bytes:
    """The status line (and, for a refusal, a one-line text body saying why)."""
    status, phrase = HTTP_STATUS[reply]
    if reply is Reply.SUCCEEDED:
        return f"HTTP/1.1 {status} {phrase}\r\n\r\n".encode("ascii")
    body = (reason or phrase).encode("utf-8", "replace")[:512] + b"\n"
    head = (
        f"HTTP/1.1 {status} {phrase}\r\n"
        + ("Allow: CONNECT\r\n" if status == 405 else "")
        + "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


# --- the "you're online" page -----------------------------------------------------------------

ONLINE_PAGE_TITLE: Final = "You're online"


def online_page() -> bytes:
    """A whole HTTP/1.1 response: the page shown in a window that could not be closed."""
    body = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{ONLINE_PAGE_TITLE}</title></head>"
        "<body style='font-family:sans-serif;margin:3em'>"
        "<h1>You're online</h1><p>You can close this window.</p></body></html>"
    ).encode()
    head = (
        "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def http_head_complete(buf: bytes) -> bool | None:
    """True when `buf` holds a whole HTTP request head, None when it never will (too long)."""
    if b"\r\n\r\n" in buf:
        return True
    return None if len(buf) > MAX_HTTP_HEAD else False
