"""core/session.py: the per-network state machine, event by event. Synchronous, table-driven."""

from __future__ import annotations

from dataclasses import replace

import pytest

from portal.core.actions import (
    Action,
    AskNMToRecheck,
    CancelProbe,
    PinPortalHosts,
    PublishStatus,
    RouteToVenue,
    StartProbe,
    StopRouting,
    UnpinPortalHosts,
    WatchDns,
)
from portal.core.detect import FIREFOX_CANONICAL_BODY, UNRESTRICTED_URN
from portal.core.events import (
    CheckRequested,
    ConnectivityReported,
    NetworkChanged,
    Resumed,
    UpstreamsChanged,
)
from portal.core.expiry import watch_delay_s
from portal.core.model import Connectivity, Network, PortalStatus
from portal.core.probe_model import CaptiveApi, ProbeFinished, ProbeResponse, ProbeSpec
from portal.core.session import BACKOFF_CAP_S, Session, backoff_s, restore, status, step

C = Connectivity
G = ProbeSpec("http://connectivitycheck.gstatic.com/generate_204", 204)
F = ProbeSpec("http://detectportal.firefox.com/canonical.html", 200, FIREFOX_CANONICAL_BODY)

HOTEL = Network(
    id="uuid-hotel",
    name="Hotel",
    interface="wlan0",
    addresses=("10.77.0.100",),
    venue_dns=("10.77.0.1",),
)
CAFE = Network(id="uuid-cafe", name="Cafe", interface="wlan0", venue_dns=("192.168.1.1",))

CAPTIVE = ((G, ProbeResponse(G.url, 302, (("location", "http://login.hotel.test/portal"),))),)
CAPTIVE_MORE = (
    *CAPTIVE,
    (F, ProbeResponse(F.url, 302, (("location", "https://auth.hotel.test/"),))),
)
CAPTIVE_NO_HOST = ((G, ProbeResponse(G.url, 302, (("location", "http://10.77.0.1/login"),))),)
ONLINE = (
    (G, ProbeResponse(G.url, 204)),
    (F, ProbeResponse(F.url, 200, body=FIREFOX_CANONICAL_BODY)),
)
LIMITED = ((G, ProbeResponse(G.url, error="timeout")),)
OFFLINE = ((G, ProbeResponse(G.url, error="no-route")),)

PIN = PinPortalHosts("uuid-hotel", ("login.hotel.test",))
ROUTE = RouteToVenue(("login.hotel.test", "hotel.test"), ("10.77.0.1",))


def done(
    probe_id: int, results: object = CAPTIVE, network: Network = HOTEL, **kw: object
) -> object:
    return ProbeFinished(network.id, probe_id, results, **kw)  # type: ignore[arg-type]


def run(
    events: list[tuple[object, float]], start: Session | None = None
) -> list[tuple[Session, tuple[Action, ...]]]:
    session = start or Session()
    out = []
    for event, now in events:
        session, actions = step(session, event, now)
        out.append((session, actions))
    return out


def kinds(actions: tuple[Action, ...]) -> list[type]:
    return [type(a) for a in actions]


def published(actions: tuple[Action, ...]) -> PortalStatus | None:
    found = [a.status for a in actions if isinstance(a, PublishStatus)]
    assert len(found) <= 1
    return found[0] if found else None


# --- a whole episode ---------------------------------------------------------------------------


def test_hotel_episode() -> None:
    (s1, a1), (s2, a2), (s3, a3), (s4, a4) = run(
        [
            (NetworkChanged(HOTEL), 100.0),
            (done(1), 100.2),
            (done(2), 101.3),
            (done(3, ONLINE), 103.4),
        ]
    )
    # joined: probe at once, say "probing"
    assert s1.state is C.PROBING
    assert a1 == (StartProbe(HOTEL, 0.0, 1), PublishStatus(status(s1)))
    assert published(a1) == PortalStatus(network=HOTEL, state=C.PROBING)
    # first answer: captive; pin and route the portal's names, re-probe in 1 s
    assert s2.state is C.CAPTIVE
    assert s2.portal_url == "http://login.hotel.test/portal"
    assert a2 == (PIN, ROUTE, StartProbe(HOTEL, 1.0, 2), PublishStatus(status(s2)))
    assert published(a2) == PortalStatus(
        network=HOTEL,
        state=C.CAPTIVE,
        portal_url="http://login.hotel.test/portal",
        portal_hosts=("login.hotel.test",),
    )
    # still captive: nothing new to pin or publish, the next probe waits twice as long
    assert a3 == (StartProbe(HOTEL, 2.0, 3),)
    # signed in: undo pins and routes, tell NM; the network was captive, so watch for the
    # portal's return (tests/core/test_session_expiry.py): a sparse re-probe, the DNS alarm
    assert s4.state is C.ONLINE
    watch = watch_delay_s(0, key="uuid-hotel")
    assert a4 == (
        StopRouting(),
        UnpinPortalHosts("uuid-hotel"),
        AskNMToRecheck(),
        StartProbe(HOTEL, watch, 4),
        WatchDns(()),
        PublishStatus(PortalStatus(network=HOTEL, state=C.ONLINE, expiry_watch=True)),
    )
    assert (s4.pinned, s4.routed, s4.probe_due, s4.retries) == ((), (), 103.4 + watch, 0)


def test_backoff_doubles_to_the_cap_and_online_stops_it() -> None:
    session, _ = step(Session(), NetworkChanged(HOTEL), 0.0)
    delays = []
    now = 0.0
    for _ in range(9):
        session, actions = step(session, done(session.probe_id, LIMITED), now)
        [start] = [a for a in actions if isinstance(a, StartProbe)]
        delays.append(start.delay_s)
        now += start.delay_s
        assert session.probe_due == now
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
    session, actions = step(session, done(session.probe_id, ONLINE), now)
    assert not any(isinstance(a, StartProbe) for a in actions)  # no periodic work while online
    assert AskNMToRecheck() in actions  # limited → online: NM should look again


@pytest.mark.parametrize(
    ("retries", "delay"),
    [
        (0, 1.0),
        (1, 2.0),
        (5, 32.0),
        (6, BACKOFF_CAP_S),
        (50, BACKOFF_CAP_S),
        (10**6, BACKOFF_CAP_S),
    ],
)
def test_backoff_s(retries: int, delay: float) -> None:
    assert backoff_s(retries) == delay


# --- stale and foreign results -----------------------------------------------------------------

PROBING = Session(network=HOTEL, state=C.PROBING, probe_id=4, probe_due=10.0)


@pytest.mark.parametrize(
    ("session", "event"),
    [
        (PROBING, done(3)),  # an older probe of this network
        (PROBING, done(5)),  # a probe id never asked for
        (PROBING, done(4, network=CAFE)),  # another network's probe
        (Session(), done(0)),  # no network at all
        (replace(PROBING, probe_due=None), done(4)),  # cancelled, or already answered
        (PROBING, UpstreamsChanged(())),  # not an event the session handles
        (Session(network=HOTEL, state=C.ONLINE), "not an event"),
    ],
)
def test_ignored(session: Session, event: object) -> None:
    assert step(session, event, 11.0) == (session, ())


def test_result_after_network_switch_is_ignored() -> None:
    (_, _), (s2, a2), (s3, a3) = run(
        [(NetworkChanged(HOTEL), 0.0), (NetworkChanged(CAFE), 0.1), (done(1), 0.2)]
    )
    assert a2[0] == CancelProbe()
    assert StartProbe(CAFE, 0.0, 3) in a2  # id 2 went to the cancelled hotel probe
    assert (s3, a3) == (s2, ())


# --- network events ----------------------------------------------------------------------------

CAPTIVE_SESSION = Session(
    network=HOTEL,
    state=C.CAPTIVE,
    portal_url="http://login.hotel.test/portal",
    portal_hosts=("login.hotel.test",),
    probe_id=7,
    probe_due=20.0,
    retries=3,
    pinned=("login.hotel.test",),
    routed=("login.hotel.test", "hotel.test"),
    nm=C.CAPTIVE,
    episode=True,
)


def test_network_gone_while_captive_undoes_everything() -> None:
    session, actions = step(CAPTIVE_SESSION, NetworkChanged(None), 15.0)
    assert session == Session(state=C.OFFLINE, probe_id=8, nm=C.CAPTIVE)
    assert actions == (
        CancelProbe(),
        StopRouting(),
        UnpinPortalHosts("uuid-hotel"),
        PublishStatus(PortalStatus(state=C.OFFLINE)),
    )


def test_no_network_twice() -> None:
    (s1, a1), (s2, a2) = run([(NetworkChanged(None), 0.0), (NetworkChanged(None), 1.0)])
    assert s1.state is C.OFFLINE and kinds(a1) == [PublishStatus]
    assert (s2, a2) == (s1, ())


def test_switch_from_captive_network_cleans_up_and_probes_the_new_one() -> None:
    session, actions = step(CAPTIVE_SESSION, NetworkChanged(CAFE), 15.0)
    assert actions == (
        CancelProbe(),
        StopRouting(),
        UnpinPortalHosts("uuid-hotel"),
        StartProbe(CAFE, 0.0, 9),
        PublishStatus(PortalStatus(network=CAFE, state=C.PROBING)),
    )
    assert session.nm is C.CAPTIVE  # NM's last word is kept until it speaks again


def test_same_network_renamed_only_publishes() -> None:
    renamed = replace(HOTEL, name="Hotel Lobby")
    session, actions = step(CAPTIVE_SESSION, NetworkChanged(renamed), 15.0)
    assert session == replace(CAPTIVE_SESSION, network=renamed)
    assert kinds(actions) == [PublishStatus]


def test_same_network_new_dns_reroutes_and_probes_now() -> None:
    moved = replace(HOTEL, venue_dns=("10.77.0.2",))
    session, actions = step(CAPTIVE_SESSION, NetworkChanged(moved), 15.0)
    assert actions[:2] == (
        RouteToVenue(("login.hotel.test", "hotel.test"), ("10.77.0.2",)),
        StartProbe(moved, 0.0, 8),
    )
    assert session.state is C.CAPTIVE and session.retries == 0


def test_same_network_without_dns_stops_routing() -> None:
    no_dns = replace(HOTEL, venue_dns=())
    session, actions = step(CAPTIVE_SESSION, NetworkChanged(no_dns), 15.0)
    assert actions[:2] == (StopRouting(), StartProbe(no_dns, 0.0, 8))
    assert session.routed == () and session.pinned == CAPTIVE_SESSION.pinned
    # The next captive verdict pins nothing new and cannot route without DNS servers.
    session, actions = step(session, done(8, network=no_dns), 15.5)
    assert kinds(actions) == [StartProbe]


def test_same_network_new_address_probes_without_rerouting() -> None:
    online = Session(network=HOTEL, state=C.ONLINE, probe_id=2)
    readdressed = replace(HOTEL, addresses=("10.77.0.101",))
    session, actions = step(online, NetworkChanged(readdressed), 15.0)
    assert actions[0] == StartProbe(readdressed, 0.0, 3)
    assert session.state is C.ONLINE


def test_unrestricted_network_is_online_without_probing() -> None:
    open_net = replace(CAFE, api_uri=UNRESTRICTED_URN)
    session, actions = step(Session(), NetworkChanged(open_net), 0.0)
    assert session.state is C.ONLINE
    assert actions == (PublishStatus(PortalStatus(network=open_net, state=C.ONLINE)),)


# --- NetworkManager reports --------------------------------------------------------------------

ONLINE_SESSION = Session(network=HOTEL, state=C.ONLINE, probe_id=5, nm=C.ONLINE)


@pytest.mark.parametrize(
    ("session", "reported", "now", "expected"),
    [
        # PORTAL or LIMITED from NM: probe now
        (ONLINE_SESSION, C.CAPTIVE, 50.0, [StartProbe(HOTEL, 0.0, 6)]),
        (ONLINE_SESSION, C.LIMITED, 50.0, [StartProbe(HOTEL, 0.0, 6)]),
        # ... unless a probe is running right now
        (replace(ONLINE_SESSION, probe_due=49.0), C.CAPTIVE, 50.0, []),
        # ... or one whose answer never came (a crashed task): then probe again
        (replace(ONLINE_SESSION, probe_due=19.0), C.CAPTIVE, 50.0, [StartProbe(HOTEL, 0.0, 6)]),
        # ... but a re-probe scheduled for later is brought forward
        (CAPTIVE_SESSION, C.LIMITED, 15.0, [StartProbe(HOTEL, 0.0, 8)]),
        # FULL contradicts the captive verdict: probe again now, do not take NM's word
        (CAPTIVE_SESSION, C.ONLINE, 15.0, [StartProbe(HOTEL, 0.0, 8)]),
        # ... and while a probe runs, its answer decides
        (PROBING, C.ONLINE, 10.0, []),
        (ONLINE_SESSION, C.ONLINE, 50.0, []),
        (ONLINE_SESSION, C.UNKNOWN, 50.0, []),
        (ONLINE_SESSION, C.OFFLINE, 50.0, []),
        (Session(), C.CAPTIVE, 50.0, []),  # no network: only remembered
    ],
)
def test_nm_reports(
    session: Session, reported: Connectivity, now: float, expected: list[Action]
) -> None:
    new, actions = step(session, ConnectivityReported(reported), now)
    assert list(actions) == expected
    assert new.nm is reported


def test_nm_full_then_a_captive_probe_stands() -> None:
    """NM's check host may be let through by the portal: portal's captive verdict stands."""
    session, _ = step(PROBING, ConnectivityReported(C.ONLINE), 10.0)
    session, actions = step(session, done(4), 10.1)
    assert session.state is C.CAPTIVE and session.nm is C.ONLINE
    assert PIN in actions and StartProbe(HOTEL, 1.0, 5) in actions


def test_nm_full_then_a_probe_without_answer_goes_online() -> None:
    """NM reached the internet and portal saw no portal: online, NM needs no nudge."""
    session, _ = step(PROBING, ConnectivityReported(C.ONLINE), 10.0)
    session, actions = step(session, done(4, LIMITED), 10.1)
    assert session.state is C.ONLINE
    assert AskNMToRecheck() not in actions and not any(isinstance(a, StartProbe) for a in actions)


def test_nm_full_then_a_failed_round_is_no_evidence() -> None:
    session, _ = step(PROBING, ConnectivityReported(C.ONLINE), 10.0)
    session, _ = step(session, done(4, LIMITED, error="cannot start the probe process"), 10.1)
    assert session.state is C.LIMITED


def test_nm_full_after_sign_in_then_the_probe_confirms_online() -> None:
    session, actions = step(CAPTIVE_SESSION, ConnectivityReported(C.ONLINE), 15.0)
    assert session.state is C.CAPTIVE and actions == (StartProbe(HOTEL, 0.0, 8),)
    session, actions = step(session, done(8, ONLINE), 15.2)
    assert session.state is C.ONLINE
    assert UnpinPortalHosts("uuid-hotel") in actions and StopRouting() in actions
    assert AskNMToRecheck() not in actions  # NM said so already


# --- NetworkManager without a connectivity check of its own -------------------------------------

UNCHECKED_FULL = ConnectivityReported(C.ONLINE, checked=False)


@pytest.mark.parametrize("session", [PROBING, CAPTIVE_SESSION, ONLINE_SESSION, Session()])
def test_an_unchecked_full_changes_nothing_but_the_nm_word(session: Session) -> None:
    new, actions = step(session, UNCHECKED_FULL, 10.05)
    assert actions == ()
    assert new == replace(session, nm=C.UNKNOWN, nm_checks=False)


def test_without_nm_check_detection_is_portals_own() -> None:
    """Debian's default: NM says FULL 15 ms after the connection comes up, on any network."""
    events: list[tuple[object, float]] = [
        (NetworkChanged(HOTEL), 10.0),
        (UNCHECKED_FULL, 10.015),
        (done(1), 10.4),
        (done(2, ONLINE), 11.5),
    ]
    (s1, a1), (s2, a2), (s3, a3), (s4, a4) = run(events)
    assert s1.state is C.PROBING and StartProbe(HOTEL, 0.0, 1) in a1
    assert s2.state is C.PROBING and a2 == ()  # the probe is not cancelled
    assert s3.state is C.CAPTIVE and PIN in a3
    assert s4.state is C.ONLINE
    assert AskNMToRecheck() not in a4  # NM cannot be asked to see what it never checks


def test_nm_turning_its_check_on_again_counts_again() -> None:
    session, _ = step(PROBING, UNCHECKED_FULL, 10.0)
    session, actions = step(session, ConnectivityReported(C.CAPTIVE), 10.1)
    assert session.nm is C.CAPTIVE and session.nm_checks
    assert actions == ()  # a probe is running


# --- a failed probe round ------------------------------------------------------------------------


def test_a_failed_round_is_limited_retried_and_says_why() -> None:
    why = "cannot start the probe process (/usr/bin/python3): Permission denied"
    session, actions = step(PROBING, done(4, LIMITED, error=why), 10.5)
    assert session.state is C.LIMITED and session.probe_error == why
    assert StartProbe(HOTEL, backoff_s(0), 5) in actions
    status_published = published(actions)
    assert status_published is not None and status_published.probe_error == why
    session, actions = step(session, done(5, CAPTIVE), 11.6)
    assert session.state is C.CAPTIVE and session.probe_error == ""
    assert published(actions) is not None


# --- after a restart: the last network, assumed --------------------------------------------------


def test_restore_without_a_network_is_a_new_session() -> None:
    assert restore(None) == Session()


def test_restore_assumes_the_network_until_the_watcher_speaks() -> None:
    session = restore(HOTEL, ("login.hotel.test",))
    assert session.network == HOTEL and session.assumed and session.state is C.UNKNOWN
    # nothing happens by itself: no probe until the watcher reports
    assert step(session, UNCHECKED_FULL, 1.0)[1] == ()


def test_the_same_network_reported_after_a_restart_is_probed_and_keeps_its_pins() -> None:
    session = restore(HOTEL, ("login.hotel.test",))
    session, actions = step(session, NetworkChanged(HOTEL), 1.0)
    assert not session.assumed and session.state is C.PROBING
    assert StartProbe(HOTEL, 0.0, 1) in actions and UnpinPortalHosts("uuid-hotel") not in actions
    # still captive: nothing pinned again (the pin is there), routed again
    session, actions = step(session, done(1), 1.4)
    assert session.state is C.CAPTIVE and PIN not in actions and ROUTE in actions
    # online: the pins from before the restart go
    session, actions = step(session, done(2, ONLINE), 3.0)
    assert UnpinPortalHosts("uuid-hotel") in actions


def test_another_network_reported_after_a_restart_unpins_the_assumed_one() -> None:
    session = restore(HOTEL, ("login.hotel.test",))
    session, actions = step(session, NetworkChanged(CAFE), 1.0)
    assert session.network == CAFE and not session.assumed
    assert UnpinPortalHosts("uuid-hotel") in actions and StartProbe(CAFE, 0.0, 1) in actions


def test_no_network_reported_after_a_restart_drops_the_assumption() -> None:
    session, _ = step(restore(HOTEL), NetworkChanged(None), 1.0)
    assert session.network is None and session.state is C.OFFLINE


# --- check and resume --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("session", "event", "state", "publishes"),
    [
        (ONLINE_SESSION, CheckRequested(), C.ONLINE, False),  # no flicker for `portal check`
        (CAPTIVE_SESSION, CheckRequested(), C.CAPTIVE, False),
        (Session(network=HOTEL, state=C.OFFLINE, probe_id=5), CheckRequested(), C.PROBING, True),
        (Session(network=HOTEL, probe_id=5), CheckRequested(), C.PROBING, True),
        (ONLINE_SESSION, Resumed(), C.PROBING, True),  # after a suspend the answer is stale
    ],
)
def test_check_and_resume_probe_now(
    session: Session, event: object, state: Connectivity, publishes: bool
) -> None:
    new, actions = step(session, event, 50.0)
    assert actions[0] == StartProbe(HOTEL, 0.0, session.probe_id + 1)
    assert new.state is state and new.retries == 0 and new.probe_due == 50.0
    assert (published(actions) is not None) is publishes


@pytest.mark.parametrize("event", [CheckRequested(), Resumed()])
def test_check_and_resume_without_network(event: object) -> None:
    assert step(Session(state=C.OFFLINE), event, 1.0) == (Session(state=C.OFFLINE), ())


# --- probe verdicts ----------------------------------------------------------------------------


def test_an_episode_lasts_from_captive_until_online_or_the_network_goes() -> None:
    sessions = [
        s
        for s, _ in run(
            [
                (NetworkChanged(HOTEL), 100.0),
                (done(1), 100.2),  # captive
                (done(2, LIMITED), 101.3),
                (CheckRequested(), 102.0),
                (done(4, OFFLINE), 102.5),
                (Resumed(), 103.0),
                (done(5), 103.2),
                (done(6, ONLINE), 104.3),
            ]
        )
    ]
    assert [s.episode for s in sessions] == [False, True, True, True, True, True, True, False]
    gone, _ = step(CAPTIVE_SESSION, NetworkChanged(None), 15.0)
    moved, _ = step(CAPTIVE_SESSION, NetworkChanged(CAFE), 15.0)
    assert not gone.episode and not moved.episode
    assert step(CAPTIVE_SESSION, NetworkChanged(replace(HOTEL, name="x")), 15.0)[0].episode


def test_limited_keeps_the_sign_in_url_and_pins() -> None:
    session, actions = step(CAPTIVE_SESSION, done(7, LIMITED), 20.5)
    assert session.state is C.LIMITED
    assert session.portal_url == CAPTIVE_SESSION.portal_url
    assert session.pinned == CAPTIVE_SESSION.pinned
    assert actions[0] == StartProbe(HOTEL, 8.0, 8)  # retries was 3
    assert kinds(actions) == [StartProbe, PublishStatus]


def test_offline_verdict_waits_for_an_event() -> None:
    session, actions = step(PROBING, done(4, OFFLINE), 10.5)
    assert session.state is C.OFFLINE and session.probe_due is None
    assert kinds(actions) == [PublishStatus]


def test_nothing_probed_is_unknown() -> None:
    session, actions = step(PROBING, done(4, ()), 10.5)
    assert session.state is C.UNKNOWN
    assert kinds(actions) == [PublishStatus]


def test_online_first_time_does_not_bother_nm() -> None:
    session, actions = step(PROBING, done(4, ONLINE), 10.5)
    assert actions == (PublishStatus(PortalStatus(network=HOTEL, state=C.ONLINE)),)


def test_online_while_nm_says_limited_asks_nm() -> None:
    session, actions = step(replace(PROBING, nm=C.LIMITED), done(4, ONLINE), 10.5)
    assert actions[0] == AskNMToRecheck()


def test_online_with_session_time_from_api() -> None:
    net = replace(HOTEL, api_uri="https://login.hotel.test/api")
    start = replace(PROBING, network=net)
    session, actions = step(
        start, done(4, ONLINE, network=net, api=CaptiveApi(seconds_remaining=600)), 10.5
    )
    assert session.seconds_remaining == 600
    assert published(actions) == PortalStatus(network=net, state=C.ONLINE, seconds_remaining=600)


def test_api_uri_host_is_pinned_with_the_sign_in_host() -> None:
    net = replace(HOTEL, api_uri="https://api.hotel.test/capport")
    start = replace(PROBING, network=net)
    api = CaptiveApi(captive=True, user_portal_url="https://login.hotel.test/p")
    session, actions = step(start, done(4, ONLINE, network=net, api=api), 10.5)
    assert session.state is C.CAPTIVE
    assert PinPortalHosts(net.id, ("login.hotel.test", "api.hotel.test")) in actions
    assert (
        RouteToVenue(("login.hotel.test", "hotel.test", "api.hotel.test"), ("10.77.0.1",))
        in actions
    )


def test_api_uri_from_the_config_is_pinned_too() -> None:
    # The network advertised nothing; the daemon fetched an API named in the config.
    api = CaptiveApi(captive=True)
    event = done(4, CAPTIVE, api=api, api_uri="https://capport.hotel.test/api")
    session, actions = step(PROBING, event, 10.5)
    assert session.portal_hosts == ("capport.hotel.test", "login.hotel.test")


def test_new_portal_host_is_pinned_on_its_own() -> None:
    session, actions = step(CAPTIVE_SESSION, done(7, CAPTIVE_MORE), 20.5)
    assert PinPortalHosts("uuid-hotel", ("auth.hotel.test",)) in actions
    assert (
        RouteToVenue(("login.hotel.test", "hotel.test", "auth.hotel.test"), ("10.77.0.1",))
        in actions
    )
    assert session.pinned == ("login.hotel.test", "auth.hotel.test")


def test_captive_without_names_or_venue_dns_pins_and_routes_only_what_it_can() -> None:
    session, actions = step(PROBING, done(4, CAPTIVE_NO_HOST), 10.5)
    assert session.state is C.CAPTIVE and session.portal_url == "http://10.77.0.1/login"
    assert kinds(actions) == [StartProbe, PublishStatus]
    no_dns = replace(HOTEL, venue_dns=())
    start = replace(PROBING, network=no_dns)
    session, actions = step(start, done(4, CAPTIVE, network=no_dns), 10.5)
    assert kinds(actions) == [PinPortalHosts, StartProbe, PublishStatus]
    assert session.routed == ()


def test_status_mirrors_the_session() -> None:
    assert status(CAPTIVE_SESSION) == PortalStatus(
        network=HOTEL,
        state=C.CAPTIVE,
        portal_url="http://login.hotel.test/portal",
        portal_hosts=("login.hotel.test",),
    )


def test_core_session_is_pure() -> None:
    import ast
    from pathlib import Path

    import portal.core.actions
    import portal.core.probe_model
    import portal.core.session

    for module in (portal.core.session, portal.core.actions, portal.core.probe_model):
        tree = ast.parse(Path(module.__file__ or "").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                )
                for name in names:
                    assert name.split(".")[0] in {
                        "__future__",
                        "collections",
                        "dataclasses",
                        "portal",
                    }, name
