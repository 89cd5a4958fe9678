"""portal/edges/store.py: the last network, kept beside the overrides, written atomically."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from portal.core.model import Network
from portal.core.overrides import Limits
from portal.edges.store import NETWORK_FILE, Store
from portal.errors import StateError

HOTEL = Network(id="uuid-hotel", name="hotel-wifi", interface="wlan0", venue_dns=("10.77.0.1",))


def test_the_last_network_survives_a_restart(tmp_path: Path) -> None:
    assert Store(tmp_path).load_network() is None  # never saved: nothing assumed
    Store(tmp_path).save_network(HOTEL)
    assert Store(tmp_path).load_network() == HOTEL
    Store(tmp_path).save_network(None)  # offline when it stopped
    assert Store(tmp_path).load_network() is None


def test_an_unreadable_file_is_no_assumption_and_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / NETWORK_FILE).write_text('{"network": {"id": 5}}')
    with caplog.at_level(logging.WARNING, logger="portal.store"):
        assert Store(tmp_path).load_network() is None
    [line] = [r.getMessage() for r in caplog.records]
    assert "cannot read the last network" in line and "ignoring" in line
    (tmp_path / NETWORK_FILE).write_bytes(b"\xff\xfe")
    assert Store(tmp_path).load_network() is None


def test_a_failed_save_is_one_line_and_leaves_no_temp_file(tmp_path: Path) -> None:
    # a directory where the file belongs: the rename fails, for root too
    (tmp_path / NETWORK_FILE).mkdir()
    (tmp_path / NETWORK_FILE / "x").write_text("")
    with pytest.raises(StateError, match="cannot save the network to .*network.json"):
        Store(tmp_path).save_network(HOTEL)
    assert [p.name for p in tmp_path.iterdir()] == [NETWORK_FILE]


def test_a_save_cut_short_leaves_no_temp_file_behind(tmp_path: Path) -> None:
    stale = tmp_path / f".{NETWORK_FILE}.4242.tmp"
    stale.write_text("half")
    Store(tmp_path).save_network(HOTEL)
    assert Store(tmp_path).load_network() == HOTEL
    assert not stale.exists()


def test_only_temp_files_of_that_file_are_swept(tmp_path: Path) -> None:
    """`.NAME.<pid>.tmp` of the file being loaded goes; anything else stays, near misses too."""
    stale = [tmp_path / f".overrides.json.{pid}.tmp" for pid in (1, 4242)]
    kept = [
        tmp_path / ".overrides.json.tmp",  # no writer's part
        tmp_path / ".overrides.json.abc.tmp",  # not a PID
        tmp_path / f".{NETWORK_FILE}.7.tmp",  # another file's, swept when that one loads
        tmp_path / ".overrides.json.1.tmp.bak",
        tmp_path / "overrides.json.1.tmp",
    ]
    for path in stale + kept:
        path.write_text("half")
    assert len(Store(tmp_path).load(limits=Limits())) == 0
    assert [p.exists() for p in stale] == [False, False]
    assert [p.exists() for p in kept] == [True] * len(kept)
