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
