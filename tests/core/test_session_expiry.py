"""core/session.py, expiry: a network that was captive is watched for the portal's return while
online (a sparse re-probe, the stub's DNS alarm); a network never captive is left alone."""

from __future__ import annotations

import pytest

from portal.core.actions import (
    Action,
    CancelProbe,
    PinPortalHosts,
    StartProbe,
    StopWatchingDns,
    WatchDns,
)
from portal.core.detect import FIREFOX_CANONICAL_BODY
from portal.core.events import (
    CheckRequested,
    ConnectivityReported,
    DnsTroubleSeen,
    NetworkChanged,
    Resumed,
)
from portal.core.expiry import FALSE_ALARM_MUTE_S, SESSION_END_SLACK_S, watch_delay_s
from portal.core.model import Connectivity, Network
from portal.core.probe_model import CaptiveApi, ProbeFinished, ProbeResponse, ProbeSpec
from portal.core.session import Session, status, step

C = Connectivity
G = ProbeSpec("http://connectivitycheck.gstatic.com/generate_204", 204)
F = ProbeSpec("http://detectportal.firefox.com/canonical.html", 200, FIREFOX_CANONICAL_BODY)
HOTEL = Network(id="uuid-hotel", name="Hotel", interface="wlan0", venue_dns=("10.77.0.1",))
CAFE = Network(id="uuid-cafe", name="Cafe", interface="wlan0", venue_dns=("192.168.1.1",))

REDIRECT = (("location", "http://login.hotel.test/portal"),)
# a hijacking portal: the venue's DNS points the probe hosts at the portal
CAPTIVE = (
    (G, ProbeResponse(G.url, 302, REDIRECT, addresses=("10.77.0.1",))),
    (F, ProbeResponse(F.url, 302, REDIRECT, addresses=("10.77.0.1",))),
)
ONLINE = (
    (G, ProbeResponse(G.url, 204, addresses=("142.250.1.1",))),
    (F, ProbeResponse(F.url, 200, body=FIREFOX_CANONICAL_BODY)),
)
LIMITED = ((G, ProbeResponse(G.url, error="timeout")),)


class Run:
    """A session driven event by event; `actions` are the last step's."""

    def __init__(self, network: Network = HOTEL) -> None:
        self.s = Session()
        self.actions: tuple[Action, ...] = ()
        self.now = 1000.0
        self.feed(NetworkChanged(network))

    def feed(self, event: object, *, after_s: float = 0.1) -> tuple[Action, ...]:
        self.now += after_s
        self.s, self.actions = step(self.s, event, self.now)
        return self.actions

    def probe(self, results: object, *, api: CaptiveApi | None = None) -> tuple[Action, ...]:
        """The answer to the probe asked for last, when it is due."""
        assert self.s.network is not None and self.s.probe_due is not None
        self.now = max(self.now, self.s.probe_due) + 0.2
        event = ProbeFinished(self.s.network.id, self.s.probe_id, results, api=api)  # type: ignore[arg-type]
        self.s, self.actions = step(self.s, event, self.now)
        return self.actions

    def scheduled(self) -> list[StartProbe]:
        return [a for a in self.actions if isinstance(a, StartProbe)]


def signed_in() -> Run:
    run = Run()
    run.probe(CAPTIVE)
    run.probe(ONLINE)
    return run


def test_a_network_never_captive_gets_no_periodic_work() -> None:
    run = Run()
    actions = run.probe(ONLINE)
    assert run.s.state is C.ONLINE
    assert not run.scheduled() and not any(isinstance(a, WatchDns) for a in actions)
    assert run.s.probe_due is None
    assert status(run.s).expiry_watch is False
    # the stub's alarm cannot start anything there either
    assert run.feed(DnsTroubleSeen("failing")) == ()


def test_once_captive_the_network_is_re_probed_under_fifty_seconds_apart() -> None:
    run = signed_in()
    assert status(run.s).expiry_watch is True and status(run.s).expired is False
    [first] = run.scheduled()
    assert first.delay_s == watch_delay_s(0, key=HOTEL.id)
    assert WatchDns(("10.77.0.1",)) in run.actions
    delays = [first.delay_s]
    for _ in range(6):
        actions = run.probe(ONLINE)
        [nxt] = run.scheduled()
        delays.append(nxt.delay_s)
        # nothing to publish: online stays online while watching
        assert run.s.state is C.ONLINE
        assert WatchDns(("10.77.0.1",)) in actions  # armed afresh
    assert delays == [watch_delay_s(r, key=HOTEL.id) for r in range(7)]
    assert delays[0] < delays[1] < delays[2] and max(delays) < 50.0


def test_the_portal_taking_the_network_back_is_expired() -> None:
    run = signed_in()
    actions = run.probe(CAPTIVE)
    st = status(run.s)
    assert st.state is C.CAPTIVE and st.expired is True and st.expiry_watch is False
    assert StopWatchingDns() in actions
    assert PinPortalHosts(HOTEL.id, ("login.hotel.test",)) in actions
    # still expired while captive; signed in again, it is not
    run.probe(CAPTIVE)
    assert status(run.s).expired is True
    actions = run.probe(ONLINE)
    assert status(run.s).expired is False and status(run.s).expiry_watch is True
    # the schedule starts over after a new sign-in
    assert [a.delay_s for a in run.scheduled()] == [watch_delay_s(0, key=HOTEL.id)]


def test_the_session_the_portal_announced_ends_first() -> None:
    run = Run()
    run.probe(CAPTIVE)
    run.probe(ONLINE, api=CaptiveApi(captive=False, seconds_remaining=7))
    [start] = run.scheduled()
    assert start.delay_s == 7 + SESSION_END_SLACK_S


def test_the_dns_alarm_probes_at_once() -> None:
    run = signed_in()
    actions = run.feed(DnsTroubleSeen("hijacked"))
    [start] = run.scheduled()
    assert start.delay_s == 0.0 and start.probe_id == run.s.probe_id
    assert not run.s.dns_watch  # the stub disarmed itself
    assert StopWatchingDns() not in actions
    run.probe(CAPTIVE)
    assert status(run.s).expired is True


def test_a_false_alarm_mutes_the_alarm_for_a_while() -> None:
    run = signed_in()
    run.feed(DnsTroubleSeen("failing"))
    actions = run.probe(ONLINE)
    # online after all: keep the schedule, but not the alarm
    assert run.scheduled() and not any(isinstance(a, WatchDns) for a in actions)
    assert run.feed(DnsTroubleSeen("failing")) == ()
    muted_until = run.s.alarm_muted_until
    assert muted_until == pytest.approx(run.now - 0.1 + FALSE_ALARM_MUTE_S, abs=1)
    while run.now < muted_until:
        actions = run.probe(ONLINE)
    assert WatchDns(("10.77.0.1",)) in actions


def test_an_alarm_while_captive_or_limited_changes_nothing() -> None:
    run = Run()
    run.probe(CAPTIVE)
    assert run.feed(DnsTroubleSeen("failing")) == ()
    run.probe(ONLINE)
    run.probe(LIMITED)
    assert StopWatchingDns() in run.actions and run.s.state is C.LIMITED
    assert run.feed(DnsTroubleSeen("failing")) == ()


@pytest.mark.parametrize("leave", [None, CAFE])
def test_leaving_the_network_stops_watching(leave: Network | None) -> None:
    run = signed_in()
    actions = run.feed(NetworkChanged(leave))
    assert StopWatchingDns() in actions and CancelProbe() in actions
    assert run.s.was_captive is False and run.s.dns_watch is False
    if leave is not None:
        run.probe(ONLINE)  # the new network was never captive
        assert not run.scheduled()


def test_resume_and_check_probe_now_and_the_watch_goes_on() -> None:
    for event in (Resumed(), CheckRequested()):
        run = signed_in()
        run.feed(event, after_s=3.0)
        [now] = run.scheduled()
        assert now.delay_s == 0.0
        run.probe(ONLINE)
        [nxt] = run.scheduled()
        assert nxt.delay_s == watch_delay_s(1, key=HOTEL.id)


def test_networkmanager_seeing_the_sign_in_starts_the_watch() -> None:
    run = Run()
    run.probe(CAPTIVE)
    run.feed(ConnectivityReported(C.ONLINE))  # NM's check got through: probe again now
    assert [a.delay_s for a in run.scheduled()] == [0.0]
    run.probe(ONLINE)
    assert run.s.state is C.ONLINE and status(run.s).expiry_watch
    assert [a.delay_s for a in run.scheduled()] == [watch_delay_s(0, key=HOTEL.id)]
    # and NM saying PORTAL again probes at once, ahead of the schedule
    run.feed(ConnectivityReported(C.CAPTIVE), after_s=1.0)
    assert [a.delay_s for a in run.scheduled()] == [0.0]
