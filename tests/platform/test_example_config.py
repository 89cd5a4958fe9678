"""portal.toml.example, the commented sample configuration, lists every key portal reads.

Every field of `Config` is a key of the file (default_ttl_s is written default_ttl, in words),
each with a comment above it, and the sample parses to the defaults it claims to show.
"""

from __future__ import annotations

import tomllib
from dataclasses import fields
from pathlib import Path

from portal.config import Config, parse

EXAMPLE = Path(__file__).resolve().parents[2] / "portal.toml.example"
# Config fields whose key in the file has another name, and fields that are no key.
KEY_OF_FIELD = {"default_ttl_s": "default_ttl"}
NOT_KEYS = {"extra"}


def config_keys() -> set[str]:
    return {KEY_OF_FIELD.get(f.name, f.name) for f in fields(Config)} - NOT_KEYS


def test_the_example_lists_every_config_key() -> None:
    listed = set(tomllib.loads(EXAMPLE.read_text()))
    missing = config_keys() - listed
    assert not missing, f"portal.toml.example lacks {sorted(missing)}"
    assert listed <= config_keys(), f"unknown keys: {sorted(listed - config_keys())}"


def test_every_key_has_a_comment_above_it() -> None:
    previous = ""
    for line in EXAMPLE.read_text().splitlines():
        if line and not line.startswith("#") and "=" in line:
            assert previous.startswith("#"), f"{line!r} has no comment above it"
        previous = line


def test_the_example_shows_the_defaults() -> None:
    assert parse(EXAMPLE.read_text()) == Config()
