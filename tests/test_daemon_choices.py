"""The in-process daemon (tests/e2e/test_daemon.py's set-up) remembering "don't ask again": by
network identity, saved before it is acknowledged, kept across a restart, undone by name."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from portal.core.events import NetworkChanged
from portal.core.model import Connectivity
from portal.errors import NoNetwork, NoSuchNetwork, StateError
from tests.support.dns import Dnsmasq, dnsmasq
from tests.support.procs import need
from tests.test_daemon import started


@pytest.fixture
def dns_pair() -> Iterator[tuple[Dnsmasq, Dnsmasq]]:
    need("dnsmasq")
    with dnsmasq({"www.example.test": "192.0.2.20"}) as upstream, dnsmasq({}) as venue:
        yield upstream, venue


async def test_dont_ask_survives_a_restart_and_is_undone_by_name(
    tmp_path: Path, dns_pair: tuple[Dnsmasq, Dnsmasq]
) -> None:
    state = tmp_path / "state"
    async with started(state, *dns_pair) as r:
        with pytest.raises(NoNetwork):
            await r.daemon.dont_ask("", "uid 0")  # no network yet
        await r.watcher.send(NetworkChanged(r.hotel))
        await r.until("captive", lambda: r.daemon.status().state is Connectivity.CAPTIVE)
        with pytest.raises(NoSuchNetwork):
            await r.daemon.dont_ask("uuid-cafe", "uid 0")  # a network we are not on
        assert await r.daemon.dont_ask("uuid-hotel", "uid 0") == "Hotel"
        status = r.daemon.status()
        assert status.quiet is True and status.quiet_networks == ("Hotel",)
        assert '"uuid-hotel"' in (state / "choices.json").read_text()

    async with started(state, *dns_pair) as r:
        assert r.daemon.status().quiet_networks == ("Hotel",)  # before any network report
        await r.watcher.send(NetworkChanged(r.cafe))
        await r.until("on the cafe", lambda: r.daemon.status().network_id == "uuid-cafe")
        assert r.daemon.status().quiet is False  # another network is asked about
        await r.watcher.send(NetworkChanged(r.hotel))
        await r.until("quiet", lambda: r.daemon.status().quiet)
        assert await r.daemon.ask_again("HOTEL", "uid 0") == ["Hotel"]
        assert r.daemon.status().quiet is False and r.daemon.status().quiet_networks == ()
        with pytest.raises(NoSuchNetwork):
            await r.daemon.ask_again("Hotel", "uid 0")

    async with started(state, *dns_pair) as r:
        assert r.daemon.status().quiet_networks == ()


async def test_a_choice_that_cannot_be_saved_is_not_made(
    tmp_path: Path, dns_pair: tuple[Dnsmasq, Dnsmasq], monkeypatch: pytest.MonkeyPatch
) -> None:
    async with started(tmp_path / "state", *dns_pair) as r:
        await r.watcher.send(NetworkChanged(r.hotel))
        await r.until("on the hotel", lambda: r.daemon.status().network_id == "uuid-hotel")

        def full_disk(choices: object) -> None:
            raise StateError("cannot save choices to choices.json: No space left on device")

        monkeypatch.setattr(r.daemon.store, "save_choices", full_disk)
        with pytest.raises(StateError, match="No space left"):
            await r.daemon.dont_ask("", "uid 0")
        assert r.daemon.status().quiet is False
        assert not (tmp_path / "state" / "choices.json").exists()
