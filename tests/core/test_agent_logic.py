"""The agent's decisions: which notification to show, replace or close, and the tray's view."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

import pytest

from portal.core import user_dns
from portal.core.agent_logic import (
    ACTION_LATER,
    ACTION_NEVER,
    ACTION_OPEN,
    CLOSED_BY_CALL,
    CLOSED_DISMISSED,
    CLOSED_EXPIRED,
    FALLBACK_URL,
    MENU_CHECK,
    MENU_OPEN,
    MENU_OVERRIDES,
    ActionInvoked,
    AgentAction,
    AgentEvent,
    AgentState,
    CloseNotification,
    DaemonVanished,
    DesktopChanged,
    DesktopHandler,
    DesktopPrompt,
    Kind,
    MenuClicked,
    NotificationClosed,
    NotificationShown,
    OpenPage,
    OverridesListed,
    RequestCheck,
    ServerChanged,
    ShowNotification,
    SignInNotification,
    StatusChanged,
    TrayStatus,
    UpdateTray,
    Voice,
    desktop_handler,
    desktop_prompt,
    escape_markup,
    is_openable,
    sign_in_notification,
    step,
    tray_view,
    url_host,
    voice,
)
from portal.core.model import Connectivity
from portal.core.report import OverrideView, StatusReport, from_plain

CAPS = frozenset({"actions", "body"})
URL = "http://login.hotel.test/portal?a=1&b=2"


def st(
    state: Connectivity,
    *,
    net: str = "uuid-hotel",
    name: str = "Hotel",
    url: str = "",
    remaining: int = -1,
    venue_dns: tuple[str, ...] = (),
) -> StatusChanged:
    return StatusChanged(
        StatusReport(
            network=name,
            network_id=net,
            state=state,
            portal_url=url,
            venue_dns=venue_dns,
            seconds_remaining=remaining,
        )
    )


CAPTIVE = st(Connectivity.CAPTIVE, url=URL)
ONLINE = st(Connectivity.ONLINE)


def run(
    events: Iterable[AgentEvent], state: AgentState | None = None, *, ids: bool = True
) -> tuple[AgentState, list[AgentAction]]:
    """Feed events; like the agent, answer each ShowNotification with an id (1, 2, ...) or 0."""
    state = state or AgentState()
    out: list[AgentAction] = []
    next_id = 1
    for event in events:
        state, actions = step(state, event)
        for action in actions:
            if isinstance(action, UpdateTray):
                continue
            out.append(action)
            if isinstance(action, ShowNotification):
                nid = (action.replaces_id or next_id) if ids else 0
                if nid == next_id:
                    next_id += 1
                state, more = step(state, NotificationShown(nid, action.notification.kind))
                assert more == []
    return state, out


def shows(actions: list[AgentAction]) -> list[tuple[Kind, int]]:
    return [
        (a.notification.kind, a.replaces_id) for a in actions if isinstance(a, ShowNotification)
    ]


def with_server(caps: frozenset[str] = CAPS) -> AgentState:
    return step(AgentState(), ServerChanged(caps))[0]


# ---- episodes ----


def test_captive_shows_one_sign_in_notification_with_actions() -> None:
    state, actions = run([CAPTIVE], with_server())
    assert shows(actions) == [(Kind.SIGN_IN, 0)]
    note = actions[0].notification  # type: ignore[union-attr]
    assert note.summary == "Sign in to Hotel"
    assert "login.hotel.test" in note.body
    assert note.actions == (
        (ACTION_OPEN, "Open sign-in page"),
        (ACTION_LATER, "Not now"),
        (ACTION_NEVER, "Don't ask again"),
    )
    assert note.expire_timeout_ms == 0
    assert state.shown_id == 1 and state.episode == "uuid-hotel"


def test_repeated_status_does_not_stack_and_changes_replace() -> None:
    other = st(Connectivity.CAPTIVE, url="https://other.hotel.test/x")
    _, actions = run([CAPTIVE, CAPTIVE, st(Connectivity.PROBING), CAPTIVE, other], with_server())
    assert shows(actions) == [(Kind.SIGN_IN, 0), (Kind.SIGN_IN, 1)]
    assert "other.hotel.test" in actions[-1].notification.body  # type: ignore[union-attr]


def test_online_replaces_with_transient_connected() -> None:
    state, actions = run([CAPTIVE, st(Connectivity.PROBING), ONLINE], with_server())
    assert shows(actions) == [(Kind.SIGN_IN, 0), (Kind.CONNECTED, 1)]
    note = actions[-1].notification  # type: ignore[union-attr]
    assert note.summary == "Connected to Hotel"
    assert note.transient and note.expire_timeout_ms > 0 and note.actions == ()
    assert state.episode is None
    # Still online: nothing more.
    assert run([ONLINE], state)[1] == []


def test_online_without_an_episode_is_silent() -> None:
    _, actions = run([ONLINE, st(Connectivity.OFFLINE), ONLINE], with_server())
    assert actions == []


@pytest.mark.parametrize(
    "leave",
    [
        st(Connectivity.OFFLINE, net="", name=""),
        st(Connectivity.ONLINE, net="uuid-home", name="Home"),
        st(Connectivity.LIMITED, net="uuid-home", name="Home"),
    ],
)
def test_leaving_the_network_closes_the_sign_in(leave: StatusChanged) -> None:
    state, actions = run([CAPTIVE, leave], with_server())
    assert actions[1:] == [CloseNotification(1)]
    assert state.shown is None and state.episode is None


def test_limited_within_the_episode_keeps_it() -> None:
    state, actions = run([CAPTIVE, st(Connectivity.LIMITED), st(Connectivity.UNKNOWN)])
    assert state.episode == "uuid-hotel"


def test_new_captive_network_replaces_the_old_episode() -> None:
    other = st(Connectivity.CAPTIVE, net="uuid-cafe", name="Cafe", url="http://cafe.test/")
    state, actions = run([CAPTIVE, other], with_server())
    assert shows(actions) == [(Kind.SIGN_IN, 0), (Kind.SIGN_IN, 1)]
    assert actions[-1].notification.summary == "Sign in to Cafe"  # type: ignore[union-attr]
    assert state.episode == "uuid-cafe"


@pytest.mark.parametrize("reason", [CLOSED_DISMISSED, CLOSED_EXPIRED])
def test_dismissed_stays_gone_for_the_episode(reason: int) -> None:
    state, _ = run([CAPTIVE], with_server())
    state, actions = run([NotificationClosed(1, reason), CAPTIVE], state)
    assert actions == [] and state.dismissed
    # Connected still follows, and the next episode notifies again.
    state, actions = run([ONLINE, CAPTIVE], state)
    assert shows(actions) == [(Kind.CONNECTED, 0), (Kind.SIGN_IN, 1)]


def test_not_now_closes_and_dismisses() -> None:
    state, _ = run([CAPTIVE], with_server())
    state, actions = step(state, ActionInvoked(1, ACTION_LATER))
    assert actions == [CloseNotification(1)]
    assert state.dismissed and state.shown_id == 0
    # The close the server reports back concerns nothing on screen any more.
    assert step(state, NotificationClosed(1, CLOSED_BY_CALL)) == (state, [])
    assert run([CAPTIVE], state)[1] == []


def test_open_action_opens_the_sign_in_url() -> None:
    state, _ = run([CAPTIVE], with_server())
    opened, actions = step(state, ActionInvoked(1, ACTION_OPEN))
    assert actions == [OpenPage(URL), CloseNotification(1)]
    # Acted on: no second sign-in notification this episode; Connected still follows.
    assert run([CAPTIVE], opened)[1] == []
    assert shows(run([ONLINE], opened)[1]) == [(Kind.CONNECTED, 0)]
    # Someone else's notification, or an unknown key: nothing.
    assert step(state, ActionInvoked(7, ACTION_OPEN))[1] == []
    assert step(state, ActionInvoked(0, ACTION_OPEN))[1] == []
    assert step(state, ActionInvoked(1, "bogus"))[1] == []


def test_close_sent_before_the_replacing_reply_is_about_the_old_instance() -> None:
    # Connected on screen as id 7; the user closes it just as a new episode replaces it, and
    # the server re-uses id 7 for the new sign-in: its close signal came before its reply.
    state, _ = run([CAPTIVE, ONLINE], with_server())
    state, actions = step(state, st(Connectivity.CAPTIVE, url=URL))
    assert shows(actions) == [(Kind.SIGN_IN, 1)]
    state, _ = step(state, NotificationShown(1, Kind.SIGN_IN, serial=40))
    state, _ = step(state, NotificationClosed(1, CLOSED_DISMISSED, serial=39))
    assert state.shown_id == 1 and not state.dismissed
    state, _ = step(state, NotificationClosed(1, CLOSED_DISMISSED, serial=41))
    assert state.shown_id == 0 and state.dismissed


def test_closed_by_our_own_call_is_not_a_dismissal() -> None:
    state, _ = run([CAPTIVE], with_server())
    state, _ = step(state, NotificationClosed(1, CLOSED_BY_CALL))
    assert not state.dismissed
    assert shows(run([CAPTIVE], state)[1]) == [(Kind.SIGN_IN, 0)]


def test_unsafe_portal_url_is_never_opened() -> None:
    bad = st(Connectivity.CAPTIVE, url="file:///etc/shadow")
    state, _ = run([bad], with_server())
    assert step(state, ActionInvoked(1, ACTION_OPEN))[1] == []


def test_captive_without_url_uses_the_fallback_page() -> None:
    state, actions = run([st(Connectivity.CAPTIVE)], with_server())
    assert "plain http://" in actions[0].notification.body  # type: ignore[union-attr]
    assert step(state, ActionInvoked(1, ACTION_OPEN))[1][0] == OpenPage(FALLBACK_URL)


def test_unnamed_network() -> None:
    _, actions = run([st(Connectivity.CAPTIVE, name="", url=URL)], with_server())
    note = actions[0].notification  # type: ignore[union-attr]
    assert note.summary == "Sign in to the network"
    assert note.body.startswith("this network asks")


# ---- capabilities ----


def test_no_actions_capability_puts_the_url_in_the_body() -> None:
    _, actions = run([CAPTIVE], with_server(frozenset({"body"})))
    note = actions[0].notification  # type: ignore[union-attr]
    assert note.actions == ()
    assert f"Open {URL} in a browser" in note.body


def test_body_markup_is_escaped() -> None:
    _, actions = run([CAPTIVE], with_server(frozenset({"actions", "body-markup"})))
    note = actions[0].notification  # type: ignore[union-attr]
    assert "&amp;" not in URL and "&" in URL
    assert escape_markup("a&b<c>") == "a&amp;b&lt;c&gt;"
    no_actions = run([CAPTIVE], with_server(frozenset({"body-markup"})))[1][0]
    assert "?a=1&amp;b=2" in no_actions.notification.body  # type: ignore[union-attr]
    assert "<" not in note.body


def test_body_says_pinned_or_routed() -> None:
    status = CAPTIVE.status
    pinned = (OverrideView("login.hotel.test", ("10.0.0.1",), active=True),)
    inactive = (OverrideView("login.hotel.test", ("10.0.0.1",), active=False),)
    assert "pinned login.hotel.test" in sign_in_notification(status, pinned, CAPS).body
    assert "pinned" not in sign_in_notification(status, inactive, CAPS).body
    routed = st(Connectivity.CAPTIVE, url=URL, venue_dns=("10.0.0.1",)).status
    assert "network's own DNS" in sign_in_notification(routed, (), CAPS).body
    assert "DNS" not in sign_in_notification(status, (), CAPS).body


def test_new_pin_updates_the_shown_notification() -> None:
    state, _ = run([CAPTIVE], with_server())
    rows = (OverrideView("login.hotel.test", ("10.0.0.1",), active=True),)
    state, actions = run([OverridesListed(rows)], state)
    assert shows(actions) == [(Kind.SIGN_IN, 1)]
    assert "pinned" in actions[0].notification.body  # type: ignore[union-attr]
    assert run([OverridesListed(rows)], state)[1] == []
    assert run([OverridesListed(rows)], AgentState())[1] == []


# ---- servers and daemons coming and going ----


def test_no_server_then_server_appears_shows_pending() -> None:
    state, actions = run([CAPTIVE])
    assert actions == [] and state.shown is not None
    state, actions = run([ServerChanged(frozenset({"body"}))], state)
    assert shows(actions) == [(Kind.SIGN_IN, 0)]
    # Rendered for the new server: no buttons, URL in the body.
    assert URL in actions[0].notification.body  # type: ignore[union-attr]


def test_pending_sign_in_is_dropped_when_leaving() -> None:
    state, _ = run([CAPTIVE])  # no server: pending
    state, actions = run([st(Connectivity.OFFLINE, net="", name="")], state)
    assert actions == [] and state.shown is None
    assert run([ServerChanged(CAPS)], state)[1] == []


def test_server_restart_while_the_daemon_is_away_reshows_as_it_was() -> None:
    state, _ = run([st(Connectivity.ONLINE, url=URL, remaining=100)], with_server())
    before = state.shown
    state, _ = run([DaemonVanished(), ServerChanged(None)], state)
    state, actions = run([ServerChanged(frozenset({"body"}), ":1.7")], state)
    assert [a.notification for a in actions if isinstance(a, ShowNotification)] == [before]


def test_server_restart_reshows_and_forgets_old_ids() -> None:
    state, _ = run([CAPTIVE], with_server())
    state, actions = run([ServerChanged(None)], state)
    assert actions == [] and state.shown_id == 0
    state, actions = run([ServerChanged(CAPS)], state)
    assert shows(actions) == [(Kind.SIGN_IN, 0)]
    # An id of the old server closing means nothing now... but the new one's id counts.
    assert step(state, NotificationClosed(99, CLOSED_DISMISSED))[0] == state


def test_same_server_reported_twice_is_no_restart() -> None:
    # D-Bus activation: reported for the call that started it, then for its arrival.
    state = step(AgentState(), ServerChanged(CAPS, ":1.5"))[0]
    state, _ = run([CAPTIVE], state)
    state, actions = step(state, ServerChanged(CAPS | {"body-markup"}, ":1.5"))
    assert actions == [] and state.shown_id == 1
    assert state.capabilities is not None and "body-markup" in state.capabilities
    # Another server is a restart, even without a departure in between.
    state, actions = step(state, ServerChanged(CAPS, ":1.9"))
    assert shows(actions) == [(Kind.SIGN_IN, 0)]


def test_server_restart_does_not_repeat_connected() -> None:
    state, _ = run([CAPTIVE, ONLINE], with_server())
    assert run([ServerChanged(None), ServerChanged(CAPS)], state)[1] == []


def test_failed_notify_is_retried_on_next_status() -> None:
    state, actions = run([CAPTIVE], with_server(), ids=False)
    assert state.shown_id == 0
    state, actions = run([CAPTIVE], state)
    assert shows(actions) == [(Kind.SIGN_IN, 0)]


def test_stale_shown_event_is_ignored() -> None:
    state, _ = run([CAPTIVE], with_server())
    assert step(state, NotificationShown(5, Kind.CONNECTED))[0] == state
    assert step(AgentState(), NotificationShown(5, Kind.SIGN_IN))[0] == AgentState()


def test_daemon_restart_keeps_the_notification() -> None:
    state, _ = run([CAPTIVE], with_server())
    state, actions = step(state, DaemonVanished())
    assert [a for a in actions if not isinstance(a, UpdateTray)] == []
    assert state.status is None and state.shown_id == 1
    assert run([CAPTIVE], state)[1] == []


# ---- reminder ----


def test_one_reminder_when_time_runs_low() -> None:
    events = [
        st(Connectivity.ONLINE, url=URL, remaining=3600),
        st(Connectivity.ONLINE, url=URL, remaining=290),
        st(Connectivity.ONLINE, url=URL, remaining=120),
    ]
    state, actions = run(events, with_server())
    assert shows(actions) == [(Kind.REMINDER, 0)]
    note = actions[0].notification  # type: ignore[union-attr]
    assert "about 5 minutes" in note.body
    assert note.actions[0] == (ACTION_OPEN, "Open sign-in page")
    assert step(state, ActionInvoked(1, ACTION_OPEN))[1] == [OpenPage(URL), CloseNotification(1)]
    # Extended, then running low again: a second reminder, in place of the first.
    more = [st(Connectivity.ONLINE, url=URL, remaining=1800), st(Connectivity.ONLINE, remaining=59)]
    state, actions = run(more, state)
    assert shows(actions) == [(Kind.REMINDER, 1)]
    assert "about 1 minute." in actions[0].notification.body  # type: ignore[union-attr]
    assert actions[0].notification.actions == ()  # type: ignore[union-attr]


def test_reminder_without_actions_names_the_url() -> None:
    _, actions = run(
        [st(Connectivity.ONLINE, url=URL, remaining=100)], with_server(frozenset({"body-markup"}))
    )
    assert "Open http://login.hotel.test/portal?a=1&amp;b=2 to extend" in (
        actions[0].notification.body  # type: ignore[union-attr]
    )


def test_reminder_closes_when_leaving_that_network() -> None:
    state, _ = run([st(Connectivity.ONLINE, remaining=100)], with_server())
    state, actions = run([st(Connectivity.ONLINE, net="uuid-home", name="Home")], state)
    assert actions == [CloseNotification(1)]
    _, actions = run([st(Connectivity.ONLINE, remaining=100)], with_server())
    assert shows(actions) == [(Kind.REMINDER, 0)]


def test_reminder_after_connected() -> None:
    _, actions = run([CAPTIVE, st(Connectivity.ONLINE, remaining=200)], with_server())
    assert shows(actions) == [(Kind.SIGN_IN, 0), (Kind.CONNECTED, 1), (Kind.REMINDER, 1)]


def test_reminder_dismissed_with_not_now() -> None:
    state, _ = run([st(Connectivity.ONLINE, remaining=100)], with_server())
    state, actions = step(state, ActionInvoked(1, ACTION_LATER))
    assert actions == [CloseNotification(1)] and not state.dismissed
    assert run([st(Connectivity.ONLINE, remaining=90)], state)[1] == []


def test_reminder_rerendered_for_a_new_server() -> None:
    state, _ = run([st(Connectivity.ONLINE, url=URL, remaining=100)], with_server())
    state, actions = run([ServerChanged(None), ServerChanged(frozenset())], state)
    assert shows(actions) == [(Kind.REMINDER, 0)]
    assert URL in actions[0].notification.body  # type: ignore[union-attr]


# ---- parsing ----


def test_status_report_reading_is_tolerant() -> None:
    assert from_plain(StatusReport, {}) == StatusReport()
    raw: dict[str, object] = {
        "network": "Hotel",
        "network_id": "u",
        "state": "captive",
        "portal_url": URL,
        "venue_dns": ["10.0.0.1", 5],
        "portal_hosts": ("login.hotel.test",),
        "seconds_remaining": 42,
        "future_key": object(),
    }
    status = from_plain(StatusReport, raw)
    assert status.state is Connectivity.CAPTIVE and status.venue_dns == ("10.0.0.1",)
    assert status.portal_hosts == ("login.hotel.test",) and status.seconds_remaining == 42
    assert url_host(status.portal_url) == "login.hotel.test"
    bad = {"state": "weird", "network": 3, "seconds_remaining": True, "venue_dns": 1}
    assert from_plain(StatusReport, bad) == StatusReport()


def rows_of(raw: list[dict[str, object]]) -> tuple[OverrideView, ...]:
    """ListOverrides() rows as the agent reads them, and keeps them (nameless rows dropped)."""
    listed = OverridesListed(tuple(from_plain(OverrideView, r) for r in raw))
    return step(AgentState(), listed)[0].overrides


def test_override_rows_reading_is_tolerant() -> None:
    rows = rows_of(
        [
            {"name": "a.test", "addresses": ["10.0.0.1"], "active": True, "scope_name": "Hotel"},
            {"name": "", "addresses": []},
            {"name": "b.test", "active": 1, "source": "auto"},
        ]
    )
    assert rows == (
        OverrideView("a.test", ("10.0.0.1",), active=True, scope_name="Hotel"),
        OverrideView("b.test", (), active=False, source="auto"),
    )


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("http://a.test/x", "a.test"),
        ("https://A.test:8443/", "a.test"),
        ("file:///etc/passwd", ""),
        ("javascript:alert(1)", ""),
        ("http://[::1", ""),
        ("", ""),
    ],
)
def test_url_host(url: str, host: str) -> None:
    assert url_host(url) == host
    assert is_openable(url) is bool(host)


# ---- tray ----


def _labels(state: AgentState) -> list[str]:
    menu = tray_view(state).menu
    out = []
    for item in menu.children:
        out.append(item.label)
        out.extend("  " + child.label for child in item.children)
    return out


def test_tray_states() -> None:
    assert tray_view(AgentState()).status is TrayStatus.PASSIVE
    cases = {
        Connectivity.ONLINE: (TrayStatus.ACTIVE, "Online on Hotel"),
        Connectivity.CAPTIVE: (TrayStatus.NEEDS_ATTENTION, "Sign-in needed on Hotel"),
        Connectivity.LIMITED: (TrayStatus.ACTIVE, "Limited connectivity on Hotel"),
        Connectivity.PROBING: (TrayStatus.ACTIVE, "Checking on Hotel"),
        Connectivity.OFFLINE: (TrayStatus.PASSIVE, "Offline"),
    }
    for conn, (tray_status, tip) in cases.items():
        state, _ = run([st(conn, url=URL)])
        view = tray_view(state)
        assert (view.status, view.tooltip) == (tray_status, tip)
    state, _ = run([st(Connectivity.ONLINE, name="")])
    assert tray_view(state).tooltip == "Online"


def test_tray_menu_and_overrides() -> None:
    assert _labels(AgentState()) == [
        "Open sign-in page (private window)",
        "Check now",
        "Don't ask again for this network",
        "",
        "Overrides (0)",
        "  No overrides",
    ]
    rows = rows_of(
        [
            {"name": "a.test", "addresses": ["10.0.0.1", "fd00::1"], "active": True},
            {"name": "b.test", "addresses": [], "active": False, "scope_name": "Hotel"},
        ]
    )
    state, _ = run([CAPTIVE, OverridesListed(rows)], with_server())
    assert _labels(state)[4:] == [
        "Overrides (2)",
        "  a.test → 10.0.0.1, fd00::1",
        "  b.test → venue DNS (Hotel) [inactive]",
    ]
    menu = tray_view(state).menu
    assert [c.enabled for c in menu.children[:3]] == [True, True, True]
    assert menu.children[4].id == MENU_OVERRIDES
    many = tuple(OverrideView(f"n{i}.test") for i in range(60))
    assert _labels(run([OverridesListed(many)])[0])[-1] == "  … 10 more"


def test_tray_clicks() -> None:
    state, _ = run([CAPTIVE], with_server())
    assert step(state, MenuClicked(MENU_OPEN))[1] == [OpenPage(URL)]
    assert step(state, MenuClicked(MENU_CHECK))[1] == [RequestCheck()]
    assert step(state, MenuClicked(12345))[1] == []
    # Dismissed and the URL forgotten: the menu can still open the page.
    state, _ = run([CAPTIVE], with_server())
    state, _ = step(state, ActionInvoked(1, ACTION_LATER))
    assert step(state, MenuClicked(MENU_OPEN))[1] == [OpenPage(URL)]
    state, _ = run([st(Connectivity.CAPTIVE)], with_server())
    state, _ = step(state, ActionInvoked(1, ACTION_LATER))
    assert step(state, MenuClicked(MENU_OPEN))[1] == [OpenPage(FALLBACK_URL)]
    # Online with nothing to open: nothing.
    assert step(run([ONLINE])[0], MenuClicked(MENU_OPEN))[1] == []


def test_every_status_updates_the_tray() -> None:
    for event in (CAPTIVE, OverridesListed(()), DaemonVanished()):
        _, actions = step(AgentState(), event)
        assert isinstance(actions[-1], UpdateTray)


# ---- one prompt, not two: the desktop's own prompt ----

GNOME = DesktopHandler.GNOME
KDE = DesktopHandler.KDE
NO_DESKTOP = DesktopHandler.NONE


def desk(
    nm: Connectivity = Connectivity.CAPTIVE, dns: str = user_dns.RESOLVES, *, url: str = URL
) -> StatusChanged:
    """A captive status as the daemon reports it: NM's own word and the user's resolver's."""
    report = CAPTIVE.status
    return StatusChanged(replace(report, portal_url=url, nm_connectivity=nm, user_dns=dns))


def on(
    handler: DesktopHandler, setting: SignInNotification = SignInNotification.AUTO
) -> AgentState:
    return replace(with_server(), desktop=handler, setting=setting)


@pytest.mark.parametrize(
    ("gnome_shell", "gnome_helper", "plasma_nm", "handler"),
    [
        (False, False, False, NO_DESKTOP),
        (True, True, False, GNOME),
        (True, False, False, NO_DESKTOP),  # Shell without its helper: its call fails, no window
        (False, True, False, NO_DESKTOP),  # a helper alone is never called
        (False, False, True, KDE),
        (True, True, True, GNOME),  # GNOME's window is the one that opens
        (True, False, True, KDE),
    ],
)
def test_desktop_handler_from_what_the_bus_shows(
    gnome_shell: bool, gnome_helper: bool, plasma_nm: bool, handler: DesktopHandler
) -> None:
    found = desktop_handler(gnome_shell=gnome_shell, gnome_helper=gnome_helper, plasma_nm=plasma_nm)
    assert found is handler


@pytest.mark.parametrize(
    ("handler", "nm", "dns", "prompt"),
    [
        (NO_DESKTOP, Connectivity.CAPTIVE, user_dns.RESOLVES, DesktopPrompt.ABSENT),
        (GNOME, Connectivity.CAPTIVE, user_dns.RESOLVES, DesktopPrompt.WORKS),
        (KDE, Connectivity.CAPTIVE, user_dns.RESOLVES, DesktopPrompt.WORKS),
        (GNOME, Connectivity.CAPTIVE, user_dns.FAILS, DesktopPrompt.FAILS),
        (KDE, Connectivity.CAPTIVE, user_dns.CHECKING, DesktopPrompt.CHECKING),
        (GNOME, Connectivity.CAPTIVE, user_dns.NOT_ASKED, DesktopPrompt.UNSURE),
        (GNOME, Connectivity.CAPTIVE, "something newer", DesktopPrompt.UNSURE),
        # NM did not say PORTAL: its check host did not resolve (LIMITED), it runs no check
        # (UNKNOWN), or it has not spoken yet: the desktop shows nothing.
        (GNOME, Connectivity.LIMITED, user_dns.RESOLVES, DesktopPrompt.SILENT),
        (KDE, Connectivity.UNKNOWN, user_dns.RESOLVES, DesktopPrompt.SILENT),
        (GNOME, Connectivity.ONLINE, user_dns.FAILS, DesktopPrompt.SILENT),
    ],
)
def test_what_the_desktops_own_prompt_will_do(
    handler: DesktopHandler, nm: Connectivity, dns: str, prompt: DesktopPrompt
) -> None:
    assert desktop_prompt(handler, desk(nm, dns).status) is prompt


AUTO, ALWAYS, NEVER = SignInNotification.AUTO, SignInNotification.ALWAYS, SignInNotification.NEVER


@pytest.mark.parametrize(
    ("setting", "prompt", "said"),
    [
        (AUTO, DesktopPrompt.ABSENT, Voice.SPEAK),
        (AUTO, DesktopPrompt.SILENT, Voice.SPEAK),
        (AUTO, DesktopPrompt.FAILS, Voice.SPEAK),
        (AUTO, DesktopPrompt.UNSURE, Voice.SPEAK),
        (AUTO, DesktopPrompt.CHECKING, Voice.WAIT),
        (AUTO, DesktopPrompt.WORKS, Voice.QUIET),
        *((ALWAYS, p, Voice.SPEAK) for p in DesktopPrompt),
        *((NEVER, p, Voice.QUIET) for p in DesktopPrompt),
    ],
)
def test_when_portal_speaks(
    setting: SignInNotification, prompt: DesktopPrompt, said: Voice
) -> None:
    assert voice(setting, prompt) is said


def test_the_desktops_working_prompt_is_left_alone_and_the_tray_still_offers_the_page() -> None:
    state, actions = run([desk(dns=user_dns.CHECKING)], on(GNOME))
    assert actions == []  # the daemon is still asking the user's resolver: wait
    state, actions = run([desk(dns=user_dns.RESOLVES), OverridesListed(())], state)
    assert actions == [] and state.deferred
    view = tray_view(state)
    assert view.status is TrayStatus.NEEDS_ATTENTION
    assert view.tooltip == "Sign-in needed on Hotel (GNOME's own sign-in window asks for it)"
    assert step(state, MenuClicked(MENU_OPEN))[1] == [OpenPage(URL)]
    # Signed in through the desktop's window: "Connected" would answer a prompt we never made.
    state, actions = run([ONLINE], state)
    assert actions == [] and state.episode is None and not state.deferred


def test_the_desktops_failing_prompt_is_answered_with_ours_saying_why() -> None:
    state, actions = run([desk(dns=user_dns.CHECKING), desk(dns=user_dns.FAILS)], on(KDE))
    assert shows(actions) == [(Kind.SIGN_IN, 0)]
    (note,) = [a.notification for a in actions if isinstance(a, ShowNotification)]
    assert (
        "KDE's own sign-in notification cannot reach it: your DNS cannot resolve "
        "login.hotel.test." in note.body
    )
    assert note.actions[0] == (ACTION_OPEN, "Open sign-in page")
    state, actions = run([ONLINE], state)
    assert shows(actions) == [(Kind.CONNECTED, 1)]


@pytest.mark.parametrize("nm", [Connectivity.LIMITED, Connectivity.UNKNOWN])
def test_a_portal_only_portal_saw_is_ours_to_announce(nm: Connectivity) -> None:
    """GNOME Shell prompts only on NM's PORTAL: when NM's check host did not resolve through
    the user's resolver (LIMITED) or NM checks nothing, portal is the only one to speak."""
    state, actions = run([desk(nm, user_dns.RESOLVES)], on(GNOME))
    assert shows(actions) == [(Kind.SIGN_IN, 0)]
    (note,) = [a.notification for a in actions if isinstance(a, ShowNotification)]
    assert "GNOME" not in note.body


def test_ours_gives_way_when_the_desktops_prompt_takes_over() -> None:
    """portal's probe saw the portal first; NM says PORTAL a moment later and the user's
    resolver can see the portal: GNOME's window opens, ours closes. One prompt, not two."""
    state, actions = run([desk(Connectivity.UNKNOWN)], on(GNOME))
    assert shows(actions) == [(Kind.SIGN_IN, 0)]
    state, actions = run([desk(dns=user_dns.CHECKING)], state)
    assert actions == []  # ours stays while the daemon asks
    state, actions = run([desk(dns=user_dns.RESOLVES)], state)
    assert actions == [CloseNotification(1)]
    assert state.shown is None and state.page_url == URL
    # The close was ours (reason 3): it is no dismissal, so ours can come back in this episode.
    state, _ = step(state, NotificationClosed(1, CLOSED_BY_CALL))
    state, actions = run([desk(Connectivity.LIMITED)], state)  # NM's recheck failed
    assert shows(actions) == [(Kind.SIGN_IN, 0)]


def test_a_desktop_handler_that_comes_or_goes_mid_episode() -> None:
    state, actions = run([desk()], with_server())
    assert shows(actions) == [(Kind.SIGN_IN, 0)]  # no desktop handler: ours
    state, actions = run([DesktopChanged(KDE)], state)
    assert actions == [CloseNotification(1)]
    state, actions = run([DesktopChanged(NO_DESKTOP)], state)  # plasma-nm's kded went away
    assert shows(actions) == [(Kind.SIGN_IN, 0)]
    # Outside an episode a desktop change shows nothing, and only updates the tray.
    state, _ = run([ONLINE], state)
    state, actions = step(state, DesktopChanged(GNOME))
    assert actions == [UpdateTray(tray_view(state))]


def test_quiet_stays_quiet_through_pins_and_a_new_notification_server() -> None:
    # Without a server what should be shown waits for one; with nothing to show, nothing comes.
    state, actions = run([desk(), ServerChanged(CAPS)], AgentState())
    assert shows(actions) == [(Kind.SIGN_IN, 0)]
    quiet = replace(AgentState(), desktop=GNOME)
    state, actions = run([desk(), ServerChanged(CAPS)], quiet)
    assert actions == []
    pinned = rows_of([{"name": "login.hotel.test", "addresses": ["10.0.0.1"], "active": True}])
    state, actions = run([OverridesListed(pinned)], state)
    assert actions == []


def test_the_setting_always_and_never() -> None:
    state, actions = run([desk()], on(GNOME, ALWAYS))
    assert shows(actions) == [(Kind.SIGN_IN, 0)]  # even where GNOME's window works
    state, actions = run([desk(Connectivity.LIMITED)], on(NO_DESKTOP, NEVER))
    assert actions == []
    assert tray_view(state).status is TrayStatus.NEEDS_ATTENTION  # the tray alone
    assert tray_view(state).tooltip == "Sign-in needed on Hotel"  # no desktop to name
