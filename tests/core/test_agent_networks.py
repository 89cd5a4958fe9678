"""The agent on real networks: a portal that takes the network back, VPNs, address clashes,
random MAC addresses, and networks the user asked not to be asked about again."""

from __future__ import annotations

from dataclasses import replace

from portal.core.agent_logic import (
    ACTION_NEVER,
    MENU_ASKING,
    ActionInvoked,
    CloseNotification,
    Kind,
    MenuClicked,
    RequestAskAgain,
    RequestDontAsk,
    ShowNotification,
    StatusChanged,
    step,
    tray_view,
)
from portal.core.model import Connectivity
from portal.core.notes import network_notes
from portal.core.report import StatusReport
from tests.core.test_agent_logic import run, shows, with_server

URL = "http://login.hotel.test/portal"
BASE = StatusReport(network="Hotel", network_id="uuid-hotel", interface="wlan0")
CAPTIVE = replace(BASE, state=Connectivity.CAPTIVE, portal_url=URL)
ONLINE = replace(BASE, state=Connectivity.ONLINE, expiry_watch=True)
EXPIRED = replace(CAPTIVE, expired=True)


def notes(actions: list[object]) -> list[ShowNotification]:
    return [a for a in actions if isinstance(a, ShowNotification)]


def test_the_portal_taking_the_network_back_asks_to_sign_in_again() -> None:
    state, actions = run(
        [StatusChanged(CAPTIVE), StatusChanged(ONLINE), StatusChanged(EXPIRED)], with_server()
    )
    first, connected, again = notes(actions)
    assert first.notification.summary == "Sign in to Hotel"
    assert connected.notification.summary == "Connected to Hotel"
    assert again.notification.summary == "Sign in again to Hotel"
    assert again.notification.body.startswith("Your session on Hotel has ended.")
    assert "login.hotel.test" in again.notification.body
    assert state.episode == "uuid-hotel"


def test_sign_in_again_for_an_unnamed_network() -> None:
    nameless = replace(EXPIRED, network="")
    _, actions = run([StatusChanged(nameless)], with_server())
    assert notes(actions)[0].notification.summary == "Sign in again to the network"
    assert shows(actions)


def test_watching_alone_shows_nothing() -> None:
    state, actions = step(with_server(), StatusChanged(ONLINE))
    assert notes(actions) == [] and state.episode is None


# ---- "don't ask again" ----

QUIET = replace(CAPTIVE, quiet=True, quiet_networks=("Hotel",))


def test_dont_ask_again_from_the_notification() -> None:
    state, actions = run([StatusChanged(CAPTIVE)], with_server())
    [note] = notes(actions)
    assert (ACTION_NEVER, "Don't ask again") in note.notification.actions
    state, actions = step(state, ActionInvoked(state.shown_id, ACTION_NEVER))
    assert actions == [RequestDontAsk("uuid-hotel"), CloseNotification(1)]
    # the daemon remembers it and says so: nothing more is shown, for this episode or later
    state, actions = run([StatusChanged(QUIET)], state)
    assert notes(actions) == []
    state, actions = run(
        [StatusChanged(replace(ONLINE, quiet=True)), StatusChanged(replace(EXPIRED, quiet=True))],
        state,
    )
    assert [n.notification.kind for n in notes(actions)] == [Kind.CONNECTED]


def test_a_quiet_network_shows_no_sign_in_and_closes_one_on_screen() -> None:
    _, actions = run([StatusChanged(QUIET)], with_server())
    assert notes(actions) == []
    state, _ = run([StatusChanged(CAPTIVE)], with_server())
    state, actions = run([StatusChanged(QUIET)], state)
    assert actions == [CloseNotification(1)]
    assert tray_view(state).tooltip == "Sign-in needed on Hotel"  # the tray still says so


def test_the_tray_toggles_asking() -> None:
    state, _ = run([StatusChanged(CAPTIVE)], with_server())
    [item] = [c for c in tray_view(state).menu.children if c.id == MENU_ASKING]
    assert item.label == "Don't ask again for this network" and item.enabled
    assert step(state, MenuClicked(MENU_ASKING))[1] == [RequestDontAsk("uuid-hotel")]
    state, _ = run([StatusChanged(QUIET)], state)
    [item] = [c for c in tray_view(state).menu.children if c.id == MENU_ASKING]
    assert item.label == "Ask again on this network"
    assert step(state, MenuClicked(MENU_ASKING))[1] == [RequestAskAgain("uuid-hotel")]
    # no network, nothing to choose about
    state, _ = run([StatusChanged(StatusReport(state=Connectivity.OFFLINE))], with_server())
    [item] = [c for c in tray_view(state).menu.children if c.id == MENU_ASKING]
    assert not item.enabled and step(state, MenuClicked(MENU_ASKING))[1] == []


# ---- what status and notifications say about the network ----


def topics(status: StatusReport) -> list[str]:
    return [n.topic for n in network_notes(status)]


def test_notes_about_expiry_and_choices() -> None:
    assert topics(BASE) == []
    assert topics(ONLINE) == ["re-check"]
    assert topics(EXPIRED) == ["session"]
    assert "took the network back" in network_notes(EXPIRED)[0].text
    assert topics(QUIET) == ["asking"]
    assert "portal ask-again" in network_notes(QUIET)[0].text


COMMAND = "nmcli connection modify Hotel 802-11-wireless.cloned-mac-address stable"
RANDOM_MAC = replace(CAPTIVE, random_mac=True, stable_mac_command=COMMAND)


def test_a_random_mac_is_named_in_status_and_the_sign_in_notification() -> None:
    assert topics(replace(BASE, random_mac=True, stable_mac_command=COMMAND)) == ["MAC"]
    [note] = network_notes(RANDOM_MAC)
    assert "asks again every time" in note.text and note.text.endswith(COMMAND)
    _, actions = run([StatusChanged(RANDOM_MAC)], with_server())
    body = notes(actions)[0].notification.body
    assert "shows Hotel a new random MAC address at each connection, so its portal" in body
    assert COMMAND in body
    # a random MAC with no known fix (no NM profile) still says why; no command
    bare = replace(RANDOM_MAC, stable_mac_command="")
    assert "nmcli" not in network_notes(bare)[0].text
    # without a random MAC the notification says nothing of it
    _, actions = run([StatusChanged(CAPTIVE)], with_server())
    assert "MAC" not in notes(actions)[0].notification.body
