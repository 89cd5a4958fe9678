"""The shortcuts the daemon takes before its first answer (bench/: reading 1000 overrides was a
tenth of a start): each must give exactly what the full path gives, for any input."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from portal.config import Config, parse
from portal.core import overrides as ov
from portal.core.packet import pack_addresses
from portal.errors import PortalError

name_chars = st.sampled_from(list("abcxyz019_-.AZ") + ["é", " ", "\n"])
names = st.one_of(
    st.text(name_chars, max_size=70),
    st.lists(st.text(st.sampled_from(list("az09_-")), min_size=0, max_size=70), max_size=6).map(
        ".".join
    ),
)


def outcome(fn: object, text: object) -> tuple[str, str]:
    try:
        return ("ok", fn(text))  # type: ignore[operator]
    except PortalError as exc:
        return (type(exc).__name__, str(exc))


@settings(max_examples=3000, deadline=None)
@given(names)
@example("a" * 63 + ".test")
@example("a" * 64 + ".test")
@example(".".join(["a" * 63] * 3) + "." + "a" * 61)  # 253 characters
@example(".".join(["a" * 63] * 3) + "." + "a" * 62)  # 254
@example("10.0.0.1")
@example("host.123")
@example("-a.test")
@example("a-.test")
@example("_dmarc.example")
def test_a_normal_name_shortcut_is_the_full_check(text: str) -> None:
    assert outcome(ov.parse_domain, text) == outcome(ov._parse_domain, text)


octets = st.one_of(st.integers(0, 300).map(str), st.sampled_from(["00", "01", "007", "", "a"]))
addresses = st.one_of(
    st.lists(octets, min_size=3, max_size=5).map(".".join),
    st.ip_addresses().map(str),
    st.text(st.sampled_from(list("0123456789.:af ")), max_size=20),
)


@settings(max_examples=3000, deadline=None)
@given(addresses)
@example("0.0.0.0")
@example("224.0.0.1")
@example("239.255.255.255")
@example("240.0.0.1")
@example("223.255.255.255")
@example("255.255.255.255")
@example("1.2.3.04")
def test_a_dotted_quad_shortcut_is_the_full_check(text: str) -> None:
    assert outcome(ov.parse_address, text) == outcome(ov._parse_address, text)


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.ip_addresses(), max_size=4))
def test_packing_is_what_ipaddress_packs(addrs: list[object]) -> None:
    texts = tuple(str(a) for a in addrs)
    v4, v6 = pack_addresses(texts)
    assert v4 == tuple(a.packed for a in addrs if a.version == 4)  # type: ignore[attr-defined]
    assert v6 == tuple(a.packed for a in addrs if a.version == 6)  # type: ignore[attr-defined]


@pytest.mark.parametrize("text", ["1.2.3", "1.2.3.256", "1.2.3.4.5", "a.b.c.d", "１.2.3.4"])
def test_packing_refuses_what_is_no_address(text: str) -> None:
    with pytest.raises(ValueError):
        pack_addresses((text,))
    with pytest.raises(ValueError):
        ipaddress.IPv4Address(text)


def test_a_config_without_keys_is_the_defaults_and_bad_text_still_fails() -> None:
    assert parse("") == Config()
    assert parse("# a comment\n\n   # another\n") == Config()
    assert parse('wiring = "none"\n') == Config(wiring="none")
    with pytest.raises(PortalError):
        parse("# a comment\nnot toml\n")
