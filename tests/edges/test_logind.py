"""portal/edges/logind.py: a wake from suspend is an event, on a private bus."""

from __future__ import annotations

import asyncio

from dbus_next import Message

from portal.core.events import Resumed
from portal.edges.bus import close, connect
from portal.edges.logind import MANAGER, watch_resume
from tests.support.dbus import PrivateBus


async def test_prepare_for_sleep_false_is_a_resume(bus: PrivateBus) -> None:
    daemon = await connect(bus.address)
    logind = await connect(bus.address)  # stands in for systemd-logind: it only sends signals
    seen: asyncio.Queue[object] = asyncio.Queue()
    try:
        await watch_resume(daemon, seen.put_nowait)
        path = "/org/freedesktop/login1"
        for going_to_sleep in (True, False):
            await logind.send(
                Message.new_signal(path, MANAGER, "PrepareForSleep", "b", [going_to_sleep])
            )
        async with asyncio.timeout(10):
            assert await seen.get() == Resumed()
        await asyncio.sleep(0.1)
        assert seen.empty()  # going to sleep is no event
    finally:
        await close(logind)
        await close(daemon)
