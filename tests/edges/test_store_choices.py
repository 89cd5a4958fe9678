"""The choices file (choices.json) on a real filesystem: written atomically, read back, and a
corrupt one moved aside rather than lost."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from portal.core.choices import Choices
from portal.edges.store import CHOICES_FILE, Store
from portal.errors import StateError


def test_saved_choices_come_back(tmp_path: Path) -> None:
    store = Store(tmp_path / "state")
    assert store.load_choices() == Choices()  # no file yet
    choices = Choices().dont_ask("uuid-hotel", "Hotel", now=1.0)
    store.save_choices(choices)
    assert Store(tmp_path / "state").load_choices() == choices
    assert not list((tmp_path / "state").glob(".*.tmp"))


def test_a_corrupt_file_is_moved_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / CHOICES_FILE
    path.write_text('{"version": 1, "dont_ask": [{"id": 3}]}')
    with caplog.at_level(logging.ERROR, "portal.store"):
        assert Store(tmp_path).load_choices() == Choices()
    [aside] = tmp_path.glob(f"{CHOICES_FILE}.corrupt-*")
    assert aside.read_text() == '{"version": 1, "dont_ask": [{"id": 3}]}'
    assert not path.exists()
    assert "is corrupt" in caplog.text


def test_a_stale_temp_file_is_swept(tmp_path: Path) -> None:
    stale = tmp_path / f".{CHOICES_FILE}.999999.tmp"
    stale.write_text("half a write")
    Store(tmp_path).load_choices()
    assert not stale.exists()


def test_a_failed_save_says_why_in_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")  # even root cannot make a directory inside a file
    with pytest.raises(StateError, match="cannot save choices") as err:
        Store(blocker / "state").save_choices(Choices().dont_ask("u", "", now=0.0))
    assert "\n" not in str(err.value)
