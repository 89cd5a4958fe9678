"""Tests for portal.core.resolvconf: the one resolv.conf parser (its wiring cases are in
tests/core/test_wiring.py)."""

from __future__ import annotations

from portal.core.inet import MAX_SERVERS
from portal.core.model import Upstream
from portal.core.resolvconf import parse_resolv_conf


def test_parse_resolv_conf_keeps_order_drops_junk_and_duplicates() -> None:
    text = (
        "# generated\n"
        "search hotel.test\n"
        "nameserver 127.0.0.153\n"
        "nameserver 10.77.0.1\n"
        ";nameserver 10.9.9.9\n"
        "nameserver\n"
        "nameserver not-an-address\n"
        "nameserver 10.77.0.1\n"
        "  nameserver   2001:db8::53  \n"
        "options timeout:1\n"
    )
    assert parse_resolv_conf(text).upstreams == (
        Upstream("127.0.0.153"),
        Upstream("10.77.0.1"),
        Upstream("2001:db8::53"),
    )


def test_parse_resolv_conf_is_bounded() -> None:
    text = "".join(f"nameserver 10.0.0.{i}\n" for i in range(1, 50))
    assert len(parse_resolv_conf(text).upstreams) == MAX_SERVERS
    assert parse_resolv_conf(
        "nameserver 10.0.0.1\n" + "#" * 70_000 + "\nnameserver 10.0.0.2"
    ).upstreams == (Upstream("10.0.0.1"),)
