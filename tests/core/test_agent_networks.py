"""The agent on real networks: a portal that takes the network back, VPNs, address clashes,
random MAC addresses, and networks the user asked not to be asked about again."""

from __future__ import annotations

from dataclasses import replace

from portal.core.agent_logic import (
    ShowNotification,
    StatusChanged,
    step,
)
from portal.core.model import Connectivity
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
