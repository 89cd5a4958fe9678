"""The agent's words on real networks, shown by a real notification server (dunst under Xvfb)
or the fake one (to click a button of its own choosing), from the documented D-Bus status of a
stand-in daemon: a portal that took the network back, "don't ask again"."""

from __future__ import annotations

import pytest

from portal.core.agent_logic import Kind
from tests.desktop.test_agent import answered, until
from tests.support.dbus import PrivateBus
from tests.support.desktop import (
    ONLINE,
    Desktop,
    FakeNotificationServer,
    StandInDaemon,
    captive,
    running_agent,
)

pytestmark = pytest.mark.desktop


async def test_sign_in_again_after_the_portal_took_the_network_back(
    desktop: Desktop, stand_in: StandInDaemon, system_bus: PrivateBus, session_bus: PrivateBus
) -> None:
    async with running_agent(system_bus.address, session_bus.address) as agent:
        stand_in.set_status(captive())
        await until(lambda: desktop.displayed() == 1, "the first sign-in notification")
        before = agent.state.shown_serial
        stand_in.set_status({**ONLINE, "expiry_watch": True})
        await answered(agent, Kind.CONNECTED, before)
        desktop.ctl("close-all")
        await until(lambda: desktop.displayed() == 0, "an empty screen")
        before = agent.state.shown_serial
        stand_in.set_status({**captive(), "expired": True})
        await answered(agent, Kind.SIGN_IN, before)
        await until(lambda: desktop.displayed() == 1, "the second sign-in notification")
        desktop.ctl("close-all")
        newest = desktop.history()[0]
        assert newest["summary"] == "Sign in again to Hotel Wi-Fi"
        assert newest["body"].startswith("Your session on Hotel Wi-Fi has ended.")
        assert "login.hotel.test" in newest["body"]


async def test_dont_ask_again_button_asks_the_daemon(
    fake_server: FakeNotificationServer,
    stand_in: StandInDaemon,
    system_bus: PrivateBus,
    session_bus: PrivateBus,
) -> None:
    """The notification's third button, as a server reports its click: the daemon is asked to
    remember this network (the stand-in records the call), and the note goes."""
    stand_in.status = captive()
    async with running_agent(system_bus.address, session_bus.address):
        note = await fake_server.wait_shown(1)
        assert note.actions[-2:] == ["never", "Don't ask again"]
        fake_server.signal("ActionInvoked", "us", [note.id, "never"])
        await until(lambda: stand_in.asked == [("DontAskAgain", "uuid-hotel")], "the call")
        await until(lambda: fake_server.closed == [note.id], "CloseNotification")
        # the daemon says so; a re-published captive status shows nothing more
        stand_in.set_status({**captive(), "quiet": True, "quiet_networks": ["Hotel Wi-Fi"]})
        stand_in.set_status({**captive(), "quiet": True, "expired": True})
        stand_in.set_status(ONLINE)
        connected = await fake_server.wait_shown(2)
    assert connected.summary == "Connected to Hotel Wi-Fi"


async def test_the_notification_says_what_a_vpn_and_a_clash_do_to_the_sign_in(
    desktop: Desktop, stand_in: StandInDaemon, system_bus: PrivateBus, session_bus: PrivateBus
) -> None:
    """The status keys as a daemon behind wg-quick, with Docker's bridge on the venue's
    gateway, sends them over D-Bus; dunst shows what to do about each."""
    stand_in.status = {
        **captive(),
        "interface": "wlan0",
        "vpn": "wg0",
        "vpn_name": "office",
        "vpn_routing": "policy",
        "vpn_bypass": True,
        "clashes": ["gateway 10.77.0.1 br-5e2f1c0d9a7b"],
    }
    async with running_agent(system_bus.address, session_bus.address):
        await until(lambda: desktop.displayed() == 1, "the sign-in notification")
        desktop.ctl("close-all")
        body = desktop.history()[0]["body"]
    assert "office (wg0) carries your traffic" in body and "through wlan0" in body
    assert "kill switch" in body
    assert "routes into br-5e2f1c0d9a7b (Docker), not wlan0" in body
    assert "docker network prune" in body


async def test_the_notification_says_a_random_mac_is_why_the_portal_asks_again(
    desktop: Desktop, stand_in: StandInDaemon, system_bus: PrivateBus, session_bus: PrivateBus
) -> None:
    """The status keys a daemon on a connection with a random MAC of its own sends over D-Bus;
    dunst shows why the portal asks again and the command that keeps one MAC there."""
    command = "nmcli connection modify 'Hotel Wi-Fi' 802-11-wireless.cloned-mac-address stable"
    stand_in.status = {**captive(), "random_mac": True, "stable_mac_command": command}
    async with running_agent(system_bus.address, session_bus.address):
        await until(lambda: desktop.displayed() == 1, "the sign-in notification")
        desktop.ctl("close-all")
        body = desktop.history()[0]["body"]
    assert "a new random MAC address at each connection" in body
    assert "asks again every time" in body and command in body
