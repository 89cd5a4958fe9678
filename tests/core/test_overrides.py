"""Override table: normalisation, expiry, scoping, limits, state text round trip."""

from __future__ import annotations

import json

import pytest

from portal.core.model import Source
from portal.core.overrides import (
    Limits,
    OverrideTable,
    format_duration,
    format_state,
    parse_address,
    parse_domain,
    parse_duration,
    parse_hosts,
    parse_state,
)
from portal.errors import (
    InvalidAddress,
    InvalidDomain,
    InvalidTTL,
    NoSuchOverride,
    StateError,
    TooManyOverrides,
)

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("login.hotel.example", "login.hotel.example"),
        ("Login.Hotel.Example.", "login.hotel.example"),
        ("  wifi.train.example  ", "wifi.train.example"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("_portal._tcp.example", "_portal._tcp.example"),
        ("router", "router"),
        ("a" * 63 + ".example", "a" * 63 + ".example"),
        ("10.0.0.1.example", "10.0.0.1.example"),
    ],
)
def test_domain_is_normalised(text: str, expected: str) -> None:
    assert parse_domain(text) == expected


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "empty"),
        (".", "empty"),
        ("a..b", "empty label"),
        ("-bad.example", "hyphen"),
        ("bad-.example", "hyphen"),
        ("sp ace.example", "bad character"),
        ("a" * 64 + ".example", "longer than 63"),
        (".".join(["abcdefghi"] * 26), "longer than 253"),
        ("10.0.0.1", "looks like an address"),
        ("evil.example/x", "bad character"),
        ("xn--\udcff.example", "internationalised"),
    ],
)
def test_bad_domain_is_rejected_with_reason(text: str, why: str) -> None:
    with pytest.raises(InvalidDomain, match=why):
        parse_domain(text)


def test_domain_errors_are_value_errors() -> None:
    with pytest.raises(ValueError):
        parse_domain("a..b")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.1", "10.0.0.1"),
        (" fd00:0::1 ", "fd00::1"),
        ("2001:DB8::1", "2001:db8::1"),
        ("::ffff:102:304", "::ffff:1.2.3.4"),
        ("::FFFF:10.0.0.1", "::ffff:10.0.0.1"),
    ],
)
def test_address_is_normalised(text: str, expected: str) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize(
    "text", ["10.0.0", "10.0.0.256", "fe80::1%eth0", "0.0.0.0", "::", "224.0.0.1", "hotel", ""]
)
def test_bad_address_is_rejected(text: str) -> None:
    with pytest.raises(InvalidAddress):
        parse_address(text)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("90", 90),
        ("30m", 1800),
        ("2h", 7200),
        ("1d", 86400),
        ("1w", 604800),
        ("1.5h", 5400),
        ("never", None),
        ("forever", None),
        ("until-removed", None),
    ],
)
def test_duration(text: str, seconds: float | None) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "-5m", "0s", "10y", "400d", "nan", "1e9"])
def test_bad_duration(text: str) -> None:
    with pytest.raises(InvalidTTL):
        parse_duration(text)


def test_format_duration() -> None:
    assert [format_duration(s) for s in (5, 90, 3700, 90000, -3)] == [
        "5s",
        "1m",
        "1h01m",
        "1d01h",
        "0s",
    ]


def table(max_overrides: int = 10) -> OverrideTable:
    return OverrideTable(limits=Limits(max_overrides=max_overrides))


def test_add_lookup_and_expiry() -> None:
    t = table()
    o = t.add("Login.Hotel.Example", ["10.0.0.1", "10.0.0.1", "fd00::1"], ttl_s=60, now=NOW)
    assert o.addresses == ("10.0.0.1", "fd00::1")
    assert o.ipv4 == ("10.0.0.1",) and o.ipv6 == ("fd00::1",)
    assert t.lookup("login.hotel.example", network_id=None, now=NOW + 59) == o
    assert t.lookup("login.hotel.example", network_id=None, now=NOW + 60) is None
    assert t.next_expiry() == NOW + 60
    assert t.expire(NOW + 30) == []
    assert t.expire(NOW + 61) == [o]
    assert len(t) == 0 and t.next_expiry() is None


def test_until_removed_never_expires() -> None:
    t = table()
    t.add("a.example", ["10.0.0.1"], ttl_s=None, now=NOW)
    assert t.next_expiry() is None
    assert t.lookup("a.example", network_id="x", now=NOW + 10**9) is not None


def test_scope_answers_only_on_its_network_and_again_on_return() -> None:
    t = table()
    t.add(
        "login.hotel.example",
        ["10.0.0.1"],
        ttl_s=3600,
        now=NOW,
        scope="uuid-hotel",
        scope_name="Hotel",
    )
    t.add("any.example", ["10.0.0.2"], ttl_s=3600, now=NOW)
    assert set(t.active(network_id="uuid-hotel", now=NOW)) == {"login.hotel.example", "any.example"}
    assert set(t.active(network_id="uuid-home", now=NOW)) == {"any.example"}
    assert set(t.active(network_id=None, now=NOW)) == {"any.example"}
    assert t.lookup("login.hotel.example", network_id="uuid-hotel", now=NOW + 100) is not None


def test_replacing_keeps_one_entry_per_name() -> None:
    t = table()
    t.add("a.example", ["10.0.0.1"], ttl_s=60, now=NOW)
    t.add("A.example.", ["10.0.0.9"], ttl_s=60, now=NOW)
    assert len(t) == 1 and t.get("a.example").addresses == ("10.0.0.9",)  # type: ignore[union-attr]


def test_limit_on_count_changes_nothing() -> None:
    t = table(max_overrides=2)
    t.add("a.example", ["10.0.0.1"], ttl_s=60, now=NOW)
    t.add("b.example", ["10.0.0.1"], ttl_s=60, now=NOW)
    with pytest.raises(TooManyOverrides):
        t.add("c.example", ["10.0.0.1"], ttl_s=60, now=NOW)
    t.add("a.example", ["10.0.0.3"], ttl_s=60, now=NOW)  # replacing is fine when full
    assert [o.name for o in t.entries()] == ["a.example", "b.example"]
    with pytest.raises(TooManyOverrides):
        t.add_many([t.prepare("d.example", ["10.0.0.1"], ttl_s=1, now=NOW)])


def test_prepare_validates_everything_before_changing() -> None:
    t = table()
    with pytest.raises(InvalidAddress):
        t.add("a.example", [], ttl_s=60, now=NOW)
    with pytest.raises(InvalidAddress):
        t.add("a.example", [f"10.0.0.{i}" for i in range(1, 20)], ttl_s=60, now=NOW)
    with pytest.raises(InvalidTTL):
        t.add("a.example", ["10.0.0.1"], ttl_s=0, now=NOW)
    with pytest.raises(InvalidDomain):
        t.add("a..example", ["10.0.0.1"], ttl_s=60, now=NOW)
    assert len(t) == 0


def test_remove_and_remove_auto() -> None:
    t = table()
    t.add("a.example", ["10.0.0.1"], ttl_s=60, now=NOW)
    t.add("auto.example", ["10.0.0.2"], ttl_s=60, now=NOW, source=Source.AUTO, scope="n1")
    t.add("auto2.example", ["10.0.0.2"], ttl_s=60, now=NOW, source=Source.AUTO, scope="n2")
    assert t.remove("A.EXAMPLE").name == "a.example"
    with pytest.raises(NoSuchOverride):
        t.remove("a.example")
    assert [o.name for o in t.unpin("n1")] == ["auto.example"]
    assert [o.name for o in t.unpin()] == ["auto2.example"]
    assert len(t) == 0


def test_state_round_trip() -> None:
    t = table()
    t.add(
        "a.example",
        ["10.0.0.1", "fd00::1"],
        ttl_s=60,
        now=NOW,
        scope="u",
        scope_name="Hotel",
        created_by="uid 1000",
    )
    t.add("b.example", ["10.0.0.2"], ttl_s=None, now=NOW, source=Source.AUTO)
    again = parse_state(format_state(t))
    assert again.entries() == t.entries()


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{",
        "[]",
        '{"version": 2, "overrides": []}',
        '{"version": 1}',
        '{"version": 1, "overrides": [1]}',
        '{"version": 1, "overrides": [{"name": "a..b", "addresses": ["10.0.0.1"],'
        ' "expires_at": null}]}',
        '{"version": 1, "overrides": [{"name": "a.b", "addresses": ["x"], "expires_at": null}]}',
        '{"version": 1, "overrides": [{"name": "a.b", "addresses": [], "expires_at": null}]}',
        '{"version": 1, "overrides": [{"name": "a.b", "addresses": ["10.0.0.1"],'
        ' "expires_at": "x"}]}',
        '{"version": 1, "overrides": [{"name": "a.b", "addresses": ["10.0.0.1"]}]}',
        '{"version": 1, "overrides": [{"name": "a.b", "addresses": ["10.0.0.1"], "expires_at": 1,'
        ' "source": "martian"}]}',
        "[" * 100000,
    ],
)
def test_corrupt_state_is_a_state_error(text: str) -> None:
    with pytest.raises(StateError):
        parse_state(text)


def test_state_over_the_limit_is_refused() -> None:
    items = [
        {"name": f"n{i}.example", "addresses": ["10.0.0.1"], "expires_at": None} for i in range(3)
    ]
    with pytest.raises(StateError, match="limit"):
        parse_state(json.dumps({"version": 1, "overrides": items}), limits=Limits(max_overrides=2))


def test_hosts_lines() -> None:
    text = """
    # venue instructions
    10.0.0.1   login.hotel.example  portal.hotel.example
    fd00::1    login.hotel.example   # v6 too
    10.0.0.2   API.hotel.example.
    """
    assert parse_hosts(text) == [
        ("login.hotel.example", ["10.0.0.1", "fd00::1"]),
        ("portal.hotel.example", ["10.0.0.1"]),
        ("api.hotel.example", ["10.0.0.2"]),
    ]


@pytest.mark.parametrize(
    ("text", "error", "line"),
    [
        ("10.0.0.1 ok.example\nnonsense\n", InvalidDomain, "line 2"),
        ("10.0.0.1 ok.example\n10.0.0.999 x.example\n", InvalidAddress, "line 2"),
        ("10.0.0.1 bad..example\n", InvalidDomain, "line 1"),
    ],
)
def test_bad_hosts_line_is_named(text: str, error: type[Exception], line: str) -> None:
    with pytest.raises(error, match=line):
        parse_hosts(text)


def test_pin_auto_prefers_ipv4_and_never_replaces_a_persons_override() -> None:
    t = table()
    t.add("mine.hotel.example", ["10.9.9.9"], ttl_s=60, now=NOW)
    made, refused = t.pin(
        {
            "login.hotel.example": ["10.0.0.1", "fd00::1"],
            "v6only.hotel.example": ["fd00::2"],
            "mine.hotel.example": ["10.0.0.3"],
            "bad..example": ["10.0.0.4"],
        },
        network_id="uuid-hotel",
        network_name="Hotel",
        ttl_s=3600,
        now=NOW,
    )
    assert [(o.name, o.addresses) for o in made] == [
        ("login.hotel.example", ("10.0.0.1",)),
        ("v6only.hotel.example", ("fd00::2",)),
    ]
    assert all(o.source is Source.AUTO and o.scope == "uuid-hotel" for o in made)
    assert [name for name, _ in refused] == ["bad..example"]
    assert t.get("mine.hotel.example").addresses == ("10.9.9.9",)  # type: ignore[union-attr]
    assert t.get("mine.hotel.example").source is Source.USER  # type: ignore[union-attr]
