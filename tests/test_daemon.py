"""The daemon built in-process (portal/daemon.py `Daemon`), end to end through its real core.

A real stub on a loopback port (real UDP sockets, the real DNS thread), a real dnsmasq as the
usual upstream and another as the venue's DNS, the real override service and state file; in
place of what cannot exist here, a network watcher that emits the events the test tells it to,
a prober that answers with recorded probe responses (tests/data/probe) and a wiring that records
what it is told. Every answer is read back over UDP from the stub.

What must hold: a network appears → it is probed → captive → the portal's host is pinned
(looked up through the venue's DNS) and answered by the stub, the portal's other names go to the
venue's DNS, the wiring hears of the episode → the probe says online → the pin is gone and the
name goes upstream again; an override scoped to a network answers only there.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.asyncquery
import dns.message
import dns.rcode
import pytest

from portal.config import Config
from portal.core.events import ConnectivityReported, NetworkChanged
from portal.core.model import Connectivity, Network, Upstream
from portal.core.probe_model import ProbeFinished, ProbeSpec
from portal.daemon import Daemon
from portal.edges.dns_stub import DnsStub, bind_sockets
from portal.edges.reactor import ThreadReactor
from portal.edges.store import Store
from portal.edges.upstream import Forwarder
from portal.errors import NoNetwork
from tests.support.dns import Dnsmasq, dnsmasq
from tests.support.probes import recorded
from tests.support.procs import free_port, need

CHECK_URL = "http://connectivitycheck.gstatic.com/generate_204"
WAIT_S = 20.0  # bounds a hang only; nothing is timed


class Watcher:
    """Stands in for NetworkManager: emits what the test says, when it says it."""

    def __init__(self) -> None:
        self.emit_to: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self.rechecks = 0

    async def run(self, emit: object) -> None:
        self.emit_to.set_result(emit)
        await asyncio.Event().wait()  # until cancelled, as a real watcher

    async def send(self, event: object) -> None:
        emit = await asyncio.wait_for(self.emit_to, WAIT_S)
        emit(event)  # type: ignore[operator]

    async def check_connectivity(self) -> None:
        self.rechecks += 1


@dataclass
class Prober:
    """Answers every probe round with the recorded hotel portal, before or after sign-in."""

    signed_in: bool = False
    rounds: list[str] = field(default_factory=list)

    async def __call__(
        self,
        network: Network,
        specs: Sequence[ProbeSpec],
        *,
        probe_id: int,
        timeout_s: float,
        ca_file: str | None = None,
    ) -> ProbeFinished:
        capture = (
            "hotel-online-generate_204.http"
            if self.signed_in
            else ("hotel-redirect-generate_204.http")
        )
        self.rounds.append(network.id)
        results = tuple((spec, recorded(capture, spec.url)) for spec in specs)
        return ProbeFinished(network.id, probe_id, results)


@dataclass
class Wiring:
    applied: list[tuple[tuple[str, ...], bool]] = field(default_factory=list)
    closed: bool = False

    def listen(self, on_change: Callable[[], None]) -> None:
        pass  # name resolution never changes under this stand-in

    async def apply(self, names: Sequence[str], *, episode: bool) -> None:
        self.applied.append((tuple(names), episode))

    async def settle(self) -> None:
        pass

    async def describe(self) -> str:
        return "recorded"

    def system_servers(self) -> tuple[str, ...]:
        return ()

    async def close(self) -> None:
        self.closed = True


@dataclass
class Running:
    daemon: Daemon
    port: int
    watcher: Watcher
    prober: Prober
    wiring: Wiring
    venue: Dnsmasq
    upstream: Dnsmasq
    hotel: Network
    cafe: Network

    async def ask(self, name: str) -> list[str]:
        """The stub's answer for `name` (A), over UDP; [] for NXDOMAIN or no record."""
        q = dns.message.make_query(name, "A")
        r = await dns.asyncquery.udp(q, "127.0.0.1", port=self.port, timeout=5)
        return sorted(rr.to_text() for rrset in r.answer for rr in rrset)

    async def until(self, what: str, ok: object) -> None:
        deadline = time.monotonic() + WAIT_S
        while not ok():  # type: ignore[operator]
            assert time.monotonic() < deadline, f"never {what}: {self.daemon.status()}"
            await asyncio.sleep(0.02)

    async def until_answer(self, name: str, want: list[str]) -> None:
        deadline = time.monotonic() + WAIT_S
        while (got := await self.ask(name)) != want:
            assert time.monotonic() < deadline, f"{name}: {got}, not {want}"
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def started(
    state_dir: Path, upstream: Dnsmasq, venue: Dnsmasq, *, prober: Any = None
) -> AsyncIterator[Running]:
    """A Daemon on a loopback port of its own, with `state_dir`, run until the block ends."""
    port = free_port()
    config = Config(
        listen=(f"127.0.0.1:{port}",),
        upstreams=(Upstream(upstream.host, upstream.port),),
        state_dir=str(state_dir),
        probe_urls=(CHECK_URL,),
        network_source="none",
        wiring="none",
    )
    stub = DnsStub(
        bind_sockets([("127.0.0.1", port)]), Forwarder(ThreadReactor(), config.upstreams)
    )
    watcher, wiring = Watcher(), Wiring()
    prober = prober or Prober()
    daemon = Daemon(
        config,
        stub=stub,
        store=Store(config.state_dir),
        prober=prober,
        watcher=watcher,
        wiring=wiring,
    )
    # the venue's DNS answers from loopback: the probes' source address is the network's
    hotel = Network(
        id="uuid-hotel",
        name="Hotel",
        kind="wifi",
        addresses=("127.0.0.1",),
        venue_dns=(f"{venue.host}:{venue.port}",),
    )
    cafe = Network(id="uuid-cafe", name="Cafe", addresses=("127.0.0.1",))
    task = asyncio.create_task(daemon.run())
    r = Running(daemon, port, watcher, prober, wiring, venue, upstream, hotel, cafe)
    try:
        await r.until_answer("www.example.test", ["192.0.2.20"])  # serving, forwarding
        yield r
    finally:
        daemon.stop()
        assert await asyncio.wait_for(task, WAIT_S) == 0
    assert wiring.closed


UPSTREAM_NAMES = {"login.hotel.test": "192.0.2.80", "api.hotel.test": "192.0.2.81",
                  "intranet.test": "192.0.2.82", "www.example.test": "192.0.2.20"}  # fmt: skip


@pytest.fixture
def dns_servers(request: pytest.FixtureRequest) -> Iterator[tuple[Dnsmasq, Dnsmasq]]:
    """The user's resolver and the venue's DNS; `upstream_names` (indirect parameter) is what
    the user's resolver knows."""
    need("dnsmasq")
    upstream_names = getattr(request, "param", UPSTREAM_NAMES)
    venue_names = {"login.hotel.test": "10.77.0.1", "api.hotel.test": "10.77.0.2"}
    with dnsmasq(upstream_names) as upstream, dnsmasq(venue_names) as venue:
        yield upstream, venue


@pytest.fixture
async def running(tmp_path: Path, dns_servers: tuple[Dnsmasq, Dnsmasq]) -> AsyncIterator[Running]:
    async with started(tmp_path / "state", *dns_servers) as r:
        yield r


async def test_portal_episode_pins_routes_and_unpins(running: Running) -> None:
    r, daemon = running, running.daemon
    # before any network: the name is the upstream's
    assert await r.ask("login.hotel.test") == ["192.0.2.80"]

    await r.watcher.send(NetworkChanged(r.hotel))
    await r.until("captive", lambda: daemon.status().state is Connectivity.CAPTIVE)
    status = daemon.status()
    assert status.network == "Hotel" and status.network_id == "uuid-hotel"
    assert status.portal_url.startswith("http://login.hotel.test:18080/portal")
    assert status.portal_hosts == ("login.hotel.test",)
    # pinned: looked up through the venue's DNS, scoped to this network, answered by the stub
    await r.until("pinned", lambda: any(o.source == "auto" for o in daemon.overrides()))
    [pin] = [o for o in daemon.overrides() if o.source == "auto"]
    assert (pin.name, pin.addresses, pin.scope, pin.active) == (
        "login.hotel.test", ("10.77.0.1",), "uuid-hotel", True,
    )  # fmt: skip
    assert await r.ask("login.hotel.test") == ["10.77.0.1"]
    # the portal's other names go to the venue's DNS, everything else upstream
    assert await r.ask("api.hotel.test") == ["10.77.0.2"]
    assert await r.ask("www.example.test") == ["192.0.2.20"]
    # the pinned name and the portal's domain routed to the venue must both reach the stub
    await r.until("wired", lambda: (("hotel.test", "login.hotel.test"), True) in r.wiring.applied)
    assert r.wiring.applied[0] == ((), False)  # at start: nothing to route, no episode

    r.prober.signed_in = True  # the re-probe (1 s after the captive verdict) finds it open
    await r.until("online", lambda: daemon.status().state is Connectivity.ONLINE)
    await r.until("unpinned", lambda: not daemon.overrides())
    assert daemon.status().portal_url == "" and daemon.status().portal_hosts == ()
    await r.until_answer("login.hotel.test", ["192.0.2.80"])
    assert await r.ask("api.hotel.test") == ["192.0.2.81"]  # routed upstream again
    await r.until("unwired", lambda: r.wiring.applied[-1] == ((), False))
    assert r.watcher.rechecks == 1  # NM is asked to see it too
    assert set(r.prober.rounds) == {"uuid-hotel"} and len(r.prober.rounds) >= 2


async def test_network_scoped_overrides_answer_only_on_their_network(running: Running) -> None:
    r, daemon = running, running.daemon
    r.prober.signed_in = True
    await r.watcher.send(NetworkChanged(r.hotel))
    await r.until("online", lambda: daemon.status().state is Connectivity.ONLINE)
    here = await daemon.add("intranet.test", ["10.1.1.1"], None, False, "uid 0")
    anywhere = await daemon.add("printer.test", ["10.2.2.2"], None, True, "uid 0")
    assert (here.scope, here.scope_name, here.active) == ("uuid-hotel", "Hotel", True)
    assert (anywhere.scope, anywhere.active) == ("", True)
    assert await r.ask("intranet.test") == ["10.1.1.1"]
    assert await r.ask("printer.test") == ["10.2.2.2"]

    await r.watcher.send(NetworkChanged(r.cafe))
    await r.until("on the cafe", lambda: daemon.status().network_id == "uuid-cafe")
    assert await r.ask("intranet.test") == ["192.0.2.82"]  # the upstream's: not scoped here
    assert await r.ask("printer.test") == ["10.2.2.2"]
    assert {o.name: o.active for o in daemon.overrides()} == {
        "intranet.test": False,
        "printer.test": True,
    }
    assert daemon.status().overrides == 1

    await r.watcher.send(NetworkChanged(r.hotel))
    await r.until("back", lambda: daemon.status().network_id == "uuid-hotel")
    assert await r.ask("intranet.test") == ["10.1.1.1"]
    # and what was said is on disk: a restart answers the same
    state = (Path(daemon.config.state_dir) / "overrides.json").read_text()
    assert '"intranet.test"' in state and '"uuid-hotel"' in state


async def test_a_restart_answers_the_last_networks_overrides_before_the_watcher_speaks(
    tmp_path: Path, dns_servers: tuple[Dnsmasq, Dnsmasq]
) -> None:
    """Queries that queued while the daemon restarted must get the override, not the upstream's
    answer: the network it was last on is assumed until the watcher reports another."""
    state = tmp_path / "state"
    async with started(state, *dns_servers) as r:
        r.prober.signed_in = True
        await r.watcher.send(NetworkChanged(r.hotel))
        await r.until("online", lambda: r.daemon.status().state is Connectivity.ONLINE)
        await r.daemon.add("intranet.test", ["10.1.1.1"], None, False, "uid 0")
        await r.until("remembered", lambda: (state / "network.json").exists())
    async with started(state, *dns_servers) as again:
        # the watcher has said nothing yet: the override scoped to the hotel answers
        assert await again.ask("intranet.test") == ["10.1.1.1"]
        status = again.daemon.status()
        assert (status.network_id, status.state) == ("uuid-hotel", Connectivity.UNKNOWN)
        await again.watcher.send(NetworkChanged(again.cafe))
        await again.until_answer("intranet.test", ["192.0.2.82"])  # another network: upstream
        await again.until(
            "cafe remembered", lambda: "uuid-cafe" in (state / "network.json").read_text()
        )


async def test_an_override_with_no_network_known_is_refused_not_made_global(
    running: Running,
) -> None:
    with pytest.raises(NoNetwork, match="--any-network"):
        await running.daemon.add("intranet.test", ["10.1.1.1"], None, False, "uid 0")
    assert running.daemon.overrides() == []
    anywhere = await running.daemon.add("printer.test", ["10.2.2.2"], None, True, "uid 0")
    assert anywhere.scope == "" and anywhere.active


@dataclass
class FailingProber:
    """A probe that cannot even start (raises), then works."""

    fail_times: int = 2
    rounds: list[str] = field(default_factory=list)
    signed_in: bool = False

    async def __call__(self, network: Network, specs: Sequence[ProbeSpec], **kw: Any) -> Any:
        self.rounds.append(network.id)
        if len(self.rounds) <= self.fail_times:
            raise PermissionError(13, "Permission denied")
        return await Prober(signed_in=True)(network, specs, **kw)


async def test_a_probe_that_fails_is_a_failed_round_retried_and_shown(
    tmp_path: Path, dns_servers: tuple[Dnsmasq, Dnsmasq]
) -> None:
    prober = FailingProber()
    async with started(tmp_path / "state", *dns_servers, prober=prober) as r:
        await r.watcher.send(NetworkChanged(r.hotel))
        await r.until("failed", lambda: "Permission denied" in r.daemon.status().probe_error)
        assert r.daemon.status().state is Connectivity.LIMITED  # never "probing" for good
        # retried with backoff until it works, and the reason goes with the failure
        await r.until("online", lambda: r.daemon.status().state is Connectivity.ONLINE)
        assert r.daemon.status().probe_error == ""
        assert len(prober.rounds) == 3


async def test_what_a_desktops_own_prompt_would_meet(running: Running) -> None:
    """The status says whether NetworkManager itself sees the portal (so GNOME and KDE prompt
    too) and whether the user's resolver (here the configured upstream, which knows the
    sign-in host) resolves the portal's name, asked once the portal is seen."""
    r, daemon = running, running.daemon
    assert daemon.status().nm_connectivity is Connectivity.UNKNOWN
    assert daemon.status().user_dns == ""
    await r.watcher.send(NetworkChanged(r.hotel))
    await r.watcher.send(ConnectivityReported(Connectivity.CAPTIVE))
    await r.until("captive", lambda: daemon.status().state is Connectivity.CAPTIVE)
    assert daemon.status().nm_connectivity is Connectivity.CAPTIVE
    await r.until("asked", lambda: daemon.status().user_dns == "resolves")
    # once per portal: later statuses keep the answer instead of asking again
    log = r.upstream.log.read_text()
    assert log.count("query[A] login.hotel.test") == 1, log

    r.prober.signed_in = True
    await r.until("online", lambda: daemon.status().state is Connectivity.ONLINE)
    assert daemon.status().user_dns == ""  # no portal, nothing to ask


@pytest.mark.parametrize("dns_servers", [{"www.example.test": "192.0.2.20"}], indirect=True)
async def test_a_resolver_that_cannot_see_the_portal(running: Running) -> None:
    """The user's resolver knows nothing of the venue's names (a resolver of their choosing
    behind the portal): the status says it fails, while NM's word stays unknown (no check)."""
    r, daemon = running, running.daemon
    await r.watcher.send(NetworkChanged(r.hotel))
    await r.until("captive", lambda: daemon.status().state is Connectivity.CAPTIVE)
    await r.until("asked", lambda: daemon.status().user_dns == "fails")
    assert daemon.status().nm_connectivity is Connectivity.UNKNOWN
