"""core/choices.py: the networks portal does not ask about again, and their file."""

from __future__ import annotations

import json

import pytest

from portal.core.choices import (
    MAX_CHOICES,
    Choices,
    NetworkChoice,
    format_choices,
    parse_choices,
)


def test_dont_ask_then_ask_again_by_id_or_name() -> None:
    c = Choices().dont_ask("uuid-hotel", "Hotel Wi-Fi", now=100.0)
    c = c.dont_ask("uuid-train", "", now=200.0)
    assert c.is_quiet("uuid-hotel") and c.is_quiet("uuid-train")
    assert not c.is_quiet("uuid-cafe") and not c.is_quiet(None) and not c.is_quiet("")
    assert c.labels() == ("Hotel Wi-Fi", "uuid-train")  # a network without a name: its id
    c2, gone = c.ask_again("hotel wi-fi")  # names compare without case
    assert [g.network_id for g in gone] == ["uuid-hotel"] and not c2.is_quiet("uuid-hotel")
    c3, gone = c2.ask_again("uuid-train")
    assert c3 == Choices() and len(gone) == 1
    assert c.ask_again("nothing")[1] == ()
    assert c.ask_again("*") == (Choices(), c.quiet)


def test_asking_twice_refreshes_instead_of_repeating() -> None:
    c = Choices().dont_ask("uuid-hotel", "Hotel", now=1.0).dont_ask("uuid-hotel", "Lobby", now=2.0)
    assert c.quiet == (NetworkChoice("uuid-hotel", "Lobby", 2.0),)


def test_limits() -> None:
    with pytest.raises(ValueError, match="not connected"):
        Choices().dont_ask("", "x", now=0.0)
    with pytest.raises(ValueError, match="too long"):
        Choices().dont_ask("u", "x" * 600, now=0.0)
    full = Choices(tuple(NetworkChoice(f"u{i}") for i in range(MAX_CHOICES)))
    with pytest.raises(ValueError, match="at most"):
        full.dont_ask("one-more", "", now=0.0)
    assert full.dont_ask("u1", "again", now=0.0).is_quiet("u1")  # refreshing one is fine


def test_file_round_trip() -> None:
    c = Choices().dont_ask("uuid-hotel", "Hotel \u2615", now=1_800_000_000.5)
    text = format_choices(c)
    assert json.loads(text)["version"] == 1
    assert parse_choices(text) == c
    assert parse_choices(format_choices(Choices())) == Choices()


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not json",
        "[]",
        '{"version": 2, "dont_ask": []}',
        '{"version": 1}',
        '{"version": 1, "dont_ask": {}}',
        '{"version": 1, "dont_ask": [1]}',
        '{"version": 1, "dont_ask": [{"name": "x"}]}',
        '{"version": 1, "dont_ask": [{"id": ""}]}',
        '{"version": 1, "dont_ask": [{"id": "a", "name": 3}]}',
        '{"version": 1, "dont_ask": [{"id": "a", "since": "yesterday"}]}',
        '{"version": 1, "dont_ask": [{"id": "a", "since": true}]}',
        '{"version": 1, "dont_ask": [{"id": "a"}, {"id": "a"}]}',
        "[" * 100_000,
        "x" * (2 * 1024 * 1024),
    ],
)
def test_anything_else_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_choices(text)


def test_unknown_keys_are_ignored() -> None:
    text = '{"version": 1, "dont_ask": [{"id": "a", "later": 1}], "later": {}}'
    assert parse_choices(text) == Choices((NetworkChoice("a"),))
