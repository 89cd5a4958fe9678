"""Tests for portal.core.inet: one parser for ADDR[:PORT], DNS servers as files write them."""

from __future__ import annotations

import pytest

from portal.core.inet import format_host_port, is_loopback, parse_host_port, parse_server
from portal.core.model import Upstream
from portal.errors import InvalidAddress


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.1", ("10.0.0.1", 53)),
        ("10.0.0.1:5353", ("10.0.0.1", 5353)),
        ("fe80::1", ("fe80::1", 53)),
        ("[fd00::1]:5300", ("fd00::1", 5300)),
        ("[fd00::1]", ("fd00::1", 53)),
        (" 10.0.0.1 ", ("10.0.0.1", 53)),
    ],
)
def test_parse_host_port(text: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(text) == expected


@pytest.mark.parametrize("text", ["dns.example", "10.0.0.1:0", "[fd00::1", "10.0.0.1:99999", ""])
def test_parse_host_port_rejects(text: str) -> None:
    with pytest.raises(InvalidAddress):
        parse_host_port(text)


@pytest.mark.parametrize("text", ["10.0.0.1%eth0", "fe80::1%eth/0", "[fe80::1]x", "10.0.0.1:+53"])
def test_parse_host_port_names_what_is_wrong(text: str) -> None:
    with pytest.raises(InvalidAddress, match="invalid (address|port)"):
        parse_host_port(text)


def test_format_host_port_is_what_parse_reads() -> None:
    for host, port in (("10.0.0.1", 5353), ("2001:db8::1", 53), ("fe80::1%lap0", 53)):
        assert parse_host_port(format_host_port(host, port)) == (host, port)
    assert format_host_port("::1", 53) == "[::1]:53" == str(Upstream("::1"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.77.0.1", Upstream("10.77.0.1")),
        (" 10.77.0.1 ", Upstream("10.77.0.1")),
        ("10.77.0.1:5353", Upstream("10.77.0.1", 5353)),
        ("1.1.1.1#cloudflare-dns.com", Upstream("1.1.1.1")),
        ("1.1.1.1:853#cloudflare-dns.com", Upstream("1.1.1.1", 853)),
        ("2001:DB8::1", Upstream("2001:db8::1")),
        ("[2001:db8::1]:5353", Upstream("2001:db8::1", 5353)),
        ("[2001:db8::1]", Upstream("2001:db8::1")),
        ("fe80::1%wlan0", Upstream("fe80::1%wlan0")),
        ("", None),
        ("#only-a-name", None),
        ("dns.example", None),
        ("10.77.0.1:dns", None),
        ("10.77.0.1:0", None),
        ("10.77.0.1:65536", None),
        ("[2001:db8::1", None),
        ("[2001:db8::1]53", None),
        ("[2001:db8::1]:x", None),
        ("10.0.0.1%eth0", None),
        ("fe80::1%eth/0", None),
        ("300.1.1.1", None),
    ],
)
def test_parse_server(text: str, expected: Upstream | None) -> None:
    assert parse_server(text) == expected


def test_is_loopback() -> None:
    assert is_loopback("127.0.0.153")
    assert is_loopback("::1")
    assert not is_loopback("10.77.0.1")
    assert not is_loopback("fe80::1%lap0")
    assert is_loopback("::ffff:127.0.0.1") and is_loopback("127.9.9.9")
    assert not is_loopback("not-an-address")
