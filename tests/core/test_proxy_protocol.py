"""The sign-in proxy's parsers: SOCKS5 (RFC 1928) and HTTP CONNECT, well-formed, truncated,
oversize and hostile; the replies they build."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from portal.core.proxy_protocol import (
    MAX_HTTP_HEAD,
    NEED_MORE,
    Greeting,
    Malformed,
    Protocol,
    Refused,
    Reply,
    Target,
    choose_method,
    format_http_reply,
    format_method,
    format_reply,
    http_head_complete,
    online_page,
    parse_greeting,
    parse_http_connect,
    parse_literal,
    parse_request,
    sniff,
)


def socks_request(atyp: int, address: bytes, port: int = 443, command: int = 1) -> bytes:
    return bytes((5, command, 0, atyp)) + address + port.to_bytes(2, "big")


def name_request(name: bytes, port: int = 443, command: int = 1) -> bytes:
    return socks_request(3, bytes((len(name),)) + name, port, command)


# --- sniffing -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "protocol"),
    [
        (b"\x05\x01\x00", Protocol.SOCKS5),
        (b"CONNECT a:1 HTTP/1.1", Protocol.HTTP),
        (b"GET / HTTP/1.1", Protocol.HTTP),
        (b"\x04\x01", None),  # SOCKS4: not served
        (b"\x16\x03\x01", None),  # a TLS ClientHello sent straight at the proxy
        (b"get / HTTP/1.1", None),
        (b"", None),
    ],
)
def test_sniff(first: bytes, protocol: Protocol | None) -> None:
    assert sniff(first) is protocol


# --- SOCKS5 greeting --------------------------------------------------------------------------


def test_greeting_offers_no_auth() -> None:
    greeting = parse_greeting(b"\x05\x02\x00\x02")
    assert greeting == Greeting(frozenset({0, 2}), 4)
    assert isinstance(greeting, Greeting)
    assert choose_method(greeting) == 0
    assert format_method(0) == b"\x05\x00"


def test_greeting_without_no_auth_gets_no_acceptable_method() -> None:
    greeting = parse_greeting(b"\x05\x01\x02")  # username/password only
    assert isinstance(greeting, Greeting)
    assert choose_method(greeting) == 0xFF


@pytest.mark.parametrize("prefix", [b"", b"\x05", b"\x05\x03", b"\x05\x03\x00\x01"])
def test_truncated_greeting_needs_more(prefix: bytes) -> None:
    assert parse_greeting(prefix) is NEED_MORE


def test_greeting_leaves_what_follows() -> None:
    greeting = parse_greeting(b"\x05\x01\x00" + name_request(b"a.test"))
    assert isinstance(greeting, Greeting) and greeting.size == 3


@pytest.mark.parametrize("data", [b"\x04\x01\x00", b"\x05\x00", b"\xff\xff"])
def test_malformed_greeting(data: bytes) -> None:
    assert isinstance(parse_greeting(data), Malformed)


# --- SOCKS5 request ---------------------------------------------------------------------------


def test_connect_by_name_is_normalised() -> None:
    target = parse_request(name_request(b"Login.Hotel.Test.", 80))
    assert target == Target("login.hotel.test", 80, True, 5 + 17 + 2)


def test_connect_by_internationalised_name() -> None:
    target = parse_request(name_request("bücher.test".encode()))
    assert isinstance(target, Target) and target.host == "xn--bcher-kva.test"


def test_connect_by_ipv4_and_ipv6() -> None:
    assert parse_request(socks_request(1, bytes((10, 77, 0, 1)), 80)) == Target(
        "10.77.0.1", 80, False, 10
    )
    v6 = ipaddress.IPv6Address("fd77::1").packed
    assert parse_request(socks_request(4, v6)) == Target("fd77::1", 443, False, 22)


@pytest.mark.parametrize("literal", [b"10.77.0.1", b"[fd77::1]", b"fd77::1"])
def test_address_sent_as_a_name_is_an_address(literal: bytes) -> None:
    target = parse_request(name_request(literal))
    assert isinstance(target, Target) and not target.is_name
    assert target.host in ("10.77.0.1", "fd77::1")


def test_request_size_leaves_pipelined_bytes() -> None:
    data = name_request(b"a.test") + b"GET / HTTP/1.1\r\n"
    target = parse_request(data)
    assert isinstance(target, Target)
    assert data[target.size :] == b"GET / HTTP/1.1\r\n"


def test_every_truncation_of_a_request_needs_more() -> None:
    for whole in (
        name_request(b"login.hotel.test"),
        socks_request(1, b"\x0a\x4d\x00\x01"),
        socks_request(4, bytes(16)),
    ):
        for cut in range(len(whole)):
            assert parse_request(whole[:cut]) is NEED_MORE, (whole, cut)
        assert isinstance(parse_request(whole), Target)


@pytest.mark.parametrize(
    ("data", "reply"),
    [
        (name_request(b"a.test", command=2), Reply.COMMAND_NOT_SUPPORTED),  # BIND
        (name_request(b"a.test", command=3), Reply.COMMAND_NOT_SUPPORTED),  # UDP ASSOCIATE
        (name_request(b"a.test", command=9), Reply.COMMAND_NOT_SUPPORTED),
        (socks_request(5, b""), Reply.ADDRESS_TYPE_NOT_SUPPORTED),
        (socks_request(0, b""), Reply.ADDRESS_TYPE_NOT_SUPPORTED),
        (name_request(b"a.test", port=0), Reply.NOT_ALLOWED),
        (socks_request(3, b"\x00"), Reply.HOST_UNREACHABLE),  # an empty name
        (name_request(b"\xff\xfe"), Reply.HOST_UNREACHABLE),  # not UTF-8
        (name_request(b"a b.test"), Reply.HOST_UNREACHABLE),
        (name_request(b"a\x00.test"), Reply.HOST_UNREACHABLE),
        (name_request(b"-bad-.test"), Reply.HOST_UNREACHABLE),
        (name_request(b"a" * 64 + b".test"), Reply.HOST_UNREACHABLE),  # label > 63
        (name_request(b"a." * 127 + b"b"), Reply.HOST_UNREACHABLE),  # 255 bytes > 253
    ],
)
def test_refused_requests(data: bytes, reply: Reply) -> None:
    result = parse_request(data)
    assert isinstance(result, Refused), result
    assert result.reply is reply and result.reason


def test_request_of_another_version_is_malformed() -> None:
    assert isinstance(parse_request(b"\x04\x01\x00\x03\x01a\x00\x50"), Malformed)


def test_longest_name_the_format_allows_is_bounded() -> None:
    # One length byte: 255 is the most a client can make the parser wait for.
    data = name_request(b"a" * 255)
    assert parse_request(data[:-1]) is NEED_MORE
    assert isinstance(parse_request(data), Refused)


@given(st.binary(max_size=300))
def test_request_parser_never_raises(data: bytes) -> None:
    result = parse_request(data)
    assert result is NEED_MORE or isinstance(result, Target | Malformed | Refused)
    if isinstance(result, Target):
        assert 0 < result.port < 65536 and result.size <= len(data)


@given(st.binary(max_size=300))
def test_greeting_parser_never_raises(data: bytes) -> None:
    result = parse_greeting(data)
    assert result is NEED_MORE or isinstance(result, Greeting | Malformed)


# --- SOCKS5 replies ---------------------------------------------------------------------------


def test_reply_bytes() -> None:
    assert format_reply(Reply.SUCCEEDED, ("10.77.0.50", 40000)) == (
        b"\x05\x00\x00\x01\x0a\x4d\x00\x32" + (40000).to_bytes(2, "big")
    )
    assert format_reply(Reply.HOST_UNREACHABLE) == b"\x05\x04\x00\x01\x00\x00\x00\x00\x00\x00"
    v6 = format_reply(Reply.SUCCEEDED, ("fe80::1%lap0", 1))
    assert v6[:4] == b"\x05\x00\x00\x04" and len(v6) == 4 + 16 + 2


def test_every_reply_code_has_an_http_status() -> None:
    for reply in Reply:
        head = format_http_reply(reply, "why").split(b"\r\n", 1)[0]
        assert head.startswith(b"HTTP/1.1 ")
    assert format_http_reply(Reply.SUCCEEDED) == b"HTTP/1.1 200 Connection established\r\n\r\n"
    refusal = format_http_reply(Reply.NOT_ALLOWED, "the network is online")
    assert refusal.startswith(b"HTTP/1.1 403 ") and refusal.endswith(b"the network is online\n")
    length = int(refusal.split(b"Content-Length: ")[1].split(b"\r\n")[0])
    assert length == len(refusal.split(b"\r\n\r\n", 1)[1])


# --- HTTP CONNECT -----------------------------------------------------------------------------


def test_http_connect() -> None:
    data = b"CONNECT Login.Hotel.Test:443 HTTP/1.1\r\nHost: login.hotel.test:443\r\n\r\nTLS"
    target = parse_http_connect(data)
    assert target == Target("login.hotel.test", 443, True, len(data) - 3)


def test_http_connect_to_addresses() -> None:
    v6 = parse_http_connect(b"CONNECT [fd77::1]:80 HTTP/1.0\r\n\r\n")
    assert isinstance(v6, Target) and (v6.host, v6.port, v6.is_name) == ("fd77::1", 80, False)
    v4 = parse_http_connect(b"CONNECT 10.77.0.1:8080 HTTP/1.1\r\n\r\n")
    assert isinstance(v4, Target) and (v4.host, v4.port) == ("10.77.0.1", 8080)


def test_http_head_in_pieces_needs_more() -> None:
    whole = b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test\r\n\r\n"
    for cut in range(len(whole)):
        assert parse_http_connect(whole[:cut]) is NEED_MORE
    assert isinstance(parse_http_connect(whole), Target)


def test_oversize_http_head_is_malformed() -> None:
    endless = b"CONNECT a.test:443 HTTP/1.1\r\n" + b"X: " + b"y" * MAX_HTTP_HEAD
    assert isinstance(parse_http_connect(endless), Malformed)
    late_end = endless + b"\r\n\r\n"
    assert isinstance(parse_http_connect(late_end), Malformed)


@pytest.mark.parametrize(
    ("data", "reply"),
    [
        (b"GET http://a.test/ HTTP/1.1\r\n\r\n", Reply.COMMAND_NOT_SUPPORTED),
        (b"CONNECT a.test HTTP/1.1\r\n\r\n", Reply.ADDRESS_TYPE_NOT_SUPPORTED),
        (b"CONNECT a.test:0 HTTP/1.1\r\n\r\n", Reply.ADDRESS_TYPE_NOT_SUPPORTED),
        (b"CONNECT a.test:65536 HTTP/1.1\r\n\r\n", Reply.ADDRESS_TYPE_NOT_SUPPORTED),
        (b"CONNECT a.test:-1 HTTP/1.1\r\n\r\n", Reply.ADDRESS_TYPE_NOT_SUPPORTED),
        (b"CONNECT :443 HTTP/1.1\r\n\r\n", Reply.ADDRESS_TYPE_NOT_SUPPORTED),
        (b"CONNECT [fd77::1 HTTP/1.1\r\n\r\n", Reply.ADDRESS_TYPE_NOT_SUPPORTED),
        (b"CONNECT [fd77::1]443 HTTP/1.1\r\n\r\n", Reply.ADDRESS_TYPE_NOT_SUPPORTED),
        (b"CONNECT bad_name!:443 HTTP/1.1\r\n\r\n", Reply.HOST_UNREACHABLE),
    ],
)
def test_refused_http_requests(data: bytes, reply: Reply) -> None:
    result = parse_http_connect(data)
    assert isinstance(result, Refused) and result.reply is reply


@pytest.mark.parametrize(
    "data",
    [
        b"CONNECT a.test:443\r\n\r\n",  # no version
        b"CONNECT a.test:443 SPDY/3\r\n\r\n",
        b"CONNECT  a.test:443 HTTP/1.1\r\n\r\n",
        "CONNECT ä.test:443 HTTP/1.1\r\n\r\n".encode(),
    ],
)
def test_malformed_http_requests(data: bytes) -> None:
    assert isinstance(parse_http_connect(data), Malformed)


@given(st.binary(max_size=MAX_HTTP_HEAD + 100))
def test_http_parser_never_raises(data: bytes) -> None:
    result = parse_http_connect(data)
    assert result is NEED_MORE or isinstance(result, Target | Malformed | Refused)


# --- the rest -------------------------------------------------------------------------------


def test_literals() -> None:
    assert parse_literal("10.0.0.1") == "10.0.0.1"
    assert parse_literal("[FD77:0::1]") == "fd77::1"
    assert parse_literal("login.hotel.test") is None
    assert parse_literal("[login.hotel.test]") is None


def test_online_page_is_a_whole_response() -> None:
    page = online_page()
    head, body = page.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0]) == len(body)
    assert b"You can close this window" in body


def test_http_head_complete() -> None:
    assert http_head_complete(b"GET / HTTP/1.1\r\n\r\n") is True
    assert http_head_complete(b"GET / HTTP/1.1\r\n") is False
    assert http_head_complete(b"x" * (MAX_HTTP_HEAD + 1)) is None
