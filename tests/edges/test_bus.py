"""portal/edges/bus.py, the one D-Bus layer, against a private dbus-daemon."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

import pytest
from dbus_next import Message, MessageType, Variant

from portal.core.model import Connectivity
from portal.core.report import OverrideView, StatusReport
from portal.edges.bus import (
    CallFailed,
    add_match,
    call,
    call_bus_daemon,
    close,
    connect,
    from_variants,
    name_owner,
    name_owner_changed,
    name_owner_rule,
    to_variants,
    unwrap,
)
from portal.errors import DaemonUnreachable
from tests.support.dbus import PrivateBus

NAME = "org.example.Watched"


def test_unwrap_nested() -> None:
    value = Variant("a{sv}", {"a": Variant("as", ["x"]), "b": Variant("v", Variant("b", True))})
    assert unwrap(value) == {"a": ["x"], "b": True}


async def test_connect_to_a_missing_bus_is_one_line_and_leaks_nothing(tmp_path: Path) -> None:
    with pytest.raises(DaemonUnreachable, match="cannot connect to the bus at unix:path="):
        await connect(f"unix:path={tmp_path}/none")
    gc.collect()  # a leaked socket would warn here (warnings are errors)
    with pytest.raises(DaemonUnreachable, match="cannot connect"):
        await connect("nonsense-address")


async def test_calls_owners_and_their_changes(bus: PrivateBus) -> None:
    watcher = await connect(bus.address)
    other = await connect(bus.address)
    try:
        seen: asyncio.Queue[str] = asyncio.Queue()

        def on_message(msg: Message) -> None:
            owner = name_owner_changed(msg, NAME)
            if owner is not None:
                seen.put_nowait(owner)

        watcher.add_message_handler(on_message)
        await add_match(watcher, name_owner_rule(NAME))
        await add_match(watcher, f"type='signal',sender='{other.unique_name}'")
        assert await name_owner(watcher, NAME) is None

        # anyone may send a signal that looks like the bus's own: it must not count
        forged = Message.new_signal(
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "NameOwnerChanged",
            "sss",
            [NAME, "", ":1.999"],
        )
        await other.send(forged)
        await other.request_name(NAME)
        async with asyncio.timeout(10):
            assert await seen.get() == other.unique_name
        assert await name_owner(watcher, NAME) == other.unique_name
        await other.release_name(NAME)
        async with asyncio.timeout(10):
            assert await seen.get() == ""
        assert seen.empty()

        reply = await call_bus_daemon(watcher, "NameHasOwner", "s", [NAME])
        assert reply.message_type == MessageType.METHOD_RETURN and reply.body == [False]
        with pytest.raises(CallFailed) as failed:
            await call(watcher, "org.freedesktop.DBus", "/", "org.freedesktop.DBus", "NoSuch")
        assert failed.value.name == "org.freedesktop.DBus.Error.UnknownMethod"
        assert failed.value.member == "NoSuch" and failed.value.text
    finally:
        await close(other)
        await close(watcher)
    assert not watcher.connected


def test_reports_on_the_wire_and_back() -> None:
    report = StatusReport(
        version="1",
        listen=("127.0.0.153:53",),
        state=Connectivity.ONLINE,
        seconds_remaining=-1,
        overrides=2,
    )
    wire = to_variants(report)
    # the signatures docs/dbus-api.md promises: s, as, x
    assert (wire["version"].signature, wire["listen"].signature) == ("s", "as")
    assert (wire["state"].signature, wire["state"].value) == ("s", "online")
    assert wire["seconds_remaining"].signature == wire["overrides"].signature == "x"
    assert from_variants(StatusReport, wire) == report
    view = OverrideView("a.test", ("10.0.0.1",), 0, "", "", "user", True, "uid 0")
    assert to_variants(view)["active"].signature == "b"
    assert from_variants(OverrideView, to_variants(view)) == view
