"""The agent's tray icon, seen by a minimal StatusNotifierWatcher and queried as a tray host would:
registration, status, tooltip, the dbusmenu layout, and clicks (Check now reaches the daemon).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import pytest
from dbus_next import Message, MessageType, Variant
from dbus_next.aio import MessageBus

from portal.edges.bus import close as close_bus
from tests.support.dbus import PrivateBus, call_body, connected
from tests.support.desktop import ONLINE, StandInDaemon, captive, running_agent
from tests.support.procs import eventually

WATCHER = "org.kde.StatusNotifierWatcher"
ITEM = "org.kde.StatusNotifierItem"
MENU = "com.canonical.dbusmenu"

OVERRIDE = {
    "name": "login.hotel.test",
    "addresses": ["10.77.0.1"],
    "expires_at": 0,
    "scope": "uuid-hotel",
    "scope_name": "Hotel Wi-Fi",
    "source": "auto",
    "active": True,
    "created_by": "uid 0",
}


@dataclass
class Watcher:
    """Just the registration half of org.kde.StatusNotifierWatcher, plus a host's signals."""

    address: str
    items: list[tuple[str, str]] = field(default_factory=list)  # (service, sender)
    signals: list[tuple[str, str]] = field(default_factory=list)  # (member, path) seen
    bus: MessageBus | None = None

    async def start(self) -> None:
        self.bus = await MessageBus(bus_address=self.address).connect()
        self.bus.add_message_handler(self._on_message)
        await call_body(self.bus, "org.freedesktop.DBus", "/org/freedesktop/DBus",
                   "org.freedesktop.DBus", "AddMatch", "s",
                   [f"type='signal',interface='{ITEM}'"])  # fmt: skip
        await call_body(self.bus, "org.freedesktop.DBus", "/org/freedesktop/DBus",
                   "org.freedesktop.DBus", "AddMatch", "s",
                   [f"type='signal',interface='{MENU}'"])  # fmt: skip
        await self.bus.request_name(WATCHER)

    async def stop(self) -> None:
        if self.bus is not None:
            await close_bus(self.bus)  # a round trip first: what was sent goes out
        self.bus = None

    def _on_message(self, msg: Message) -> Message | None:
        if msg.message_type == MessageType.SIGNAL and msg.interface in (ITEM, MENU):
            self.signals.append((msg.member, msg.path))
            return None
        if msg.message_type != MessageType.METHOD_CALL or msg.interface != WATCHER:
            return None
        if msg.member == "RegisterStatusNotifierItem":
            self.items.append((msg.body[0], msg.sender))
            return Message.new_method_return(msg)
        return Message.new_error(msg, "org.freedesktop.DBus.Error.UnknownMethod", msg.member)


async def item_props(bus: MessageBus, service: str) -> dict[str, Any]:
    (props,) = await call_body(
        bus, service, "/StatusNotifierItem", "org.freedesktop.DBus.Properties", "GetAll", "s",
        [ITEM],
    )  # fmt: skip
    return {k: v.value for k, v in props.items()}


def labels(node: list[Any], depth: int = 0) -> list[str]:
    """The menu as text, one entry a line, children indented; separators as '---'."""
    out = []
    for child in node[2]:
        item_id, props, _children = child.value
        props = {k: v.value for k, v in props.items()}
        text = "---" if props.get("type") == "separator" else props.get("label", "")
        if props.get("enabled") is False:
            text += " (disabled)"
        out.append("  " * depth + f"{item_id}: {text}")
        out += labels(child.value, depth + 1)
    return out


async def layout(bus: MessageBus, service: str) -> tuple[int, list[str]]:
    revision, root = await call_body(
        bus, service, "/MenuBar", MENU, "GetLayout", "iias", [0, -1, []]
    )
    return revision, labels(root)


@pytest.mark.desktop
async def test_tray_registers_and_shows_state_menu_and_clicks(
    stand_in: StandInDaemon,
    system_bus: PrivateBus,
    session_bus: PrivateBus,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="portal")
    watcher = Watcher(session_bus.address)
    await watcher.start()
    stand_in.status = captive()
    stand_in.overrides = [OVERRIDE]
    try:
        async with running_agent(system_bus.address, session_bus.address):
            await eventually(lambda: watcher.items, what="the registration")
            ((service, sender),) = watcher.items
            assert service.startswith("org.kde.StatusNotifierItem-")
            async with connected(session_bus.address) as h:
                (owner,) = await call_body(
                    h, "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                    "GetNameOwner", "s", [service],
                )  # fmt: skip
                assert owner == sender  # the name it registered is its own

                props = await item_props(h, service)
                assert props["Status"] == "NeedsAttention"
                assert props["Menu"] == "/MenuBar"
                assert props["ToolTip"][3] == "Sign-in needed on Hotel Wi-Fi"
                (xml,) = await call_body(
                    h, service, "/StatusNotifierItem", "org.freedesktop.DBus.Introspectable",
                    "Introspect",
                )  # fmt: skip
                assert '<interface name="org.kde.StatusNotifierItem">' in xml

                async def menu_has(line: str) -> None:
                    async with asyncio.timeout(10):
                        # Polling as a host would after LayoutUpdated; no Event to wait on.
                        while line not in (await layout(h, service))[1]:  # noqa: ASYNC110
                            await asyncio.sleep(0.02)

                await menu_has("  100: login.hotel.test → 10.77.0.1 (Hotel Wi-Fi) (disabled)")
                revision, menu = await layout(h, service)
                assert menu == [
                    "1: Open sign-in page (private window)",
                    "2: Check now",
                    "5: Don't ask again for this network",
                    "3: ---",
                    "4: Overrides (1)",
                    "  100: login.hotel.test → 10.77.0.1 (Hotel Wi-Fi) (disabled)",
                ]

                # "Check now", clicked as a host reports it.
                await call_body(
                    h, service, "/MenuBar", MENU, "Event", "isvu",
                    [2, "clicked", Variant("s", ""), 0],
                )  # fmt: skip
                await stand_in.wait_for("Check")

                # "Open sign-in page": the agent runs as root here, so it must refuse.
                await call_body(
                    h, service, "/MenuBar", MENU, "Event", "isvu",
                    [1, "clicked", Variant("s", ""), 0],
                )  # fmt: skip
                await eventually(lambda: "refusing" in caplog.text, what="the refusal")

                # The daemon's changes reach the tray: status, then the overrides.
                watcher.signals.clear()
                stand_in.set_status(ONLINE)
                await eventually(lambda: ("NewStatus", "/StatusNotifierItem") in watcher.signals)
                assert (await item_props(h, service))["Status"] == "Active"
                stand_in.set_overrides([])
                await menu_has("  100: No overrides (disabled)")
                assert ("LayoutUpdated", "/MenuBar") in watcher.signals
                assert (await layout(h, service))[0] > revision
    finally:
        await watcher.stop()


@pytest.mark.desktop
async def test_tray_registers_when_a_watcher_appears_later(
    stand_in: StandInDaemon, system_bus: PrivateBus, session_bus: PrivateBus
) -> None:
    async with running_agent(system_bus.address, session_bus.address) as agent:
        assert agent.tray is not None and not agent.tray.registered
        watcher = Watcher(session_bus.address)
        await watcher.start()
        try:
            await eventually(lambda: watcher.items, what="the late registration")
            # And again when the watcher restarts (a panel restart).
            await watcher.stop()
            again = Watcher(session_bus.address)
            await again.start()
            try:
                await eventually(lambda: again.items, what="the registration after a restart")
            finally:
                await again.stop()
        finally:
            await watcher.stop()


@pytest.mark.desktop
async def test_no_watcher_is_quiet(
    stand_in: StandInDaemon,
    system_bus: PrivateBus,
    session_bus: PrivateBus,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="portal")
    stand_in.status = captive()
    async with running_agent(system_bus.address, session_bus.address) as agent:
        await stand_in.wait_for("ListOverrides")
        await eventually(lambda: agent.state.status is not None, what="the status")
        # The menu still follows the state (a watcher may come later).
        assert agent.tray is not None
        assert agent.tray.view.tooltip == "Sign-in needed on Hotel Wi-Fi"
    tray_records = [r for r in caplog.records if r.name == "portal.edges.tray"]
    assert tray_records and all(r.levelno <= logging.DEBUG for r in tray_records)
