"""The in-process daemon (tests/e2e/test_daemon.py's set-up) watching for a portal's return:
the re-probe schedule runs only on a network that was captive, and the stub's DNS alarm makes
it probe at once. The schedule is shortened here (monkeypatched) so that nothing waits long;
the lab tests (tests/e2e/test_expiry_lab.py) run it as shipped."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from portal.core import expiry
from portal.core.events import NetworkChanged
from portal.core.model import Connectivity, Upstream
from tests.support.dns import dnsmasq
from tests.support.procs import free_port, need
from tests.test_daemon import Running, started

VENUE = {"login.hotel.test": "10.77.0.1"}

C = Connectivity


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    need("dnsmasq")
    with dnsmasq({"www.example.test": "192.0.2.20"}) as upstream, dnsmasq(VENUE) as venue:
        async with started(tmp_path / "state", upstream, venue) as r:
            yield r


async def signed_in(r: Running) -> None:
    await r.watcher.send(NetworkChanged(r.hotel))
    await r.until("captive", lambda: r.daemon.status().state is C.CAPTIVE)
    r.prober.signed_in = True
    await r.until("online", lambda: r.daemon.status().state is C.ONLINE)
    assert r.daemon.status().expiry_watch is True


async def test_the_schedule_notices_the_portal_taking_the_network_back(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(expiry, "WATCH_INTERVALS_S", (1.0,))
    r = running
    await signed_in(r)
    rounds = len(r.prober.rounds)
    await r.until("re-probed", lambda: len(r.prober.rounds) > rounds + 1)
    assert r.daemon.status().state is C.ONLINE
    r.prober.signed_in = False  # the portal takes the network back
    await r.until("captive again", lambda: r.daemon.status().state is C.CAPTIVE)
    status = r.daemon.status()
    assert status.expired is True and status.expiry_watch is False
    await r.until("pinned again", lambda: any(o.source == "auto" for o in r.daemon.overrides()))
    r.prober.signed_in = True
    await r.until("online again", lambda: r.daemon.status().state is C.ONLINE)
    assert r.daemon.status().expired is False


async def test_failing_dns_makes_it_probe_at_once(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(expiry, "WATCH_INTERVALS_S", (3600.0,))  # the schedule cannot do it
    r = running
    await signed_in(r)
    rounds = len(r.prober.rounds)
    r.prober.signed_in = False
    # the user's resolver stops answering (nothing listens there: refused at once)
    r.daemon.forwarder.set_upstreams([Upstream("127.0.0.1", free_port())])
    answers = await asyncio.gather(*(r.ask(f"n{i}.example.test") for i in range(8)))
    assert answers == [[]] * 8  # SERVFAIL, as before
    await r.until("captive again", lambda: r.daemon.status().state is C.CAPTIVE)
    assert r.daemon.status().expired is True
    assert len(r.prober.rounds) > rounds


async def test_a_network_never_captive_is_not_probed_again(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(expiry, "WATCH_INTERVALS_S", (1.0,))
    r = running
    r.prober.signed_in = True
    await r.watcher.send(NetworkChanged(r.hotel))
    await r.until("online", lambda: r.daemon.status().state is C.ONLINE)
    assert r.daemon.status().expiry_watch is False
    await asyncio.sleep(3.0)  # three of the shortened intervals: nothing may happen
    assert r.prober.rounds == ["uuid-hotel"]
    assert r.daemon.stub._watch is None  # noqa: SLF001 (the DNS alarm stays unarmed)
