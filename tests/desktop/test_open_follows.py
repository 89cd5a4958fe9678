"""`portal open` follows the daemon as the agent does (edges/client.py DaemonLink).

The daemon is the stand-in exporting the documented API on a private bus; `portal open` runs
as a user types it. What must hold: the status is read once at the start and then followed
through the daemon's signals; a forged StateChanged from anyone else on the bus is ignored
(a forged venue DNS or network would be phishing, or end the window); a daemon that restarts
is read again and followed; no daemon at all is one clear line.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
from dbus_next import Message

from portal.edges.bus import call_bus_daemon
from portal.edges.control_api import INTERFACE, OBJECT_PATH
from tests.support.dbus import PrivateBus, connected
from tests.support.desktop import ONLINE, StandInDaemon, captive, variant_status
from tests.support.procs import REPO

URL = "http://login.hotel.test/portal?room=12&lang=en"
# The proxy needs an interface of this machine and the venue's DNS; loopback stands for both.
CAPTIVE: dict[str, Any] = {**captive(URL), "interface": "lo", "venue_dns": ["127.0.0.1"]}
WAIT_S = 20.0


async def portal_open(bus: str, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "portal", "open", "--bus", bus, "--config", "/dev/null", *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
    )  # fmt: skip


async def ended(proc: asyncio.subprocess.Process) -> tuple[int, str, str]:
    out, err = await asyncio.wait_for(proc.communicate(), WAIT_S)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
async def proxy(
    stand_in: StandInDaemon, system_bus: PrivateBus
) -> AsyncIterator[asyncio.subprocess.Process]:
    """`portal open --proxy` on a captive network, up and following (its address printed)."""
    stand_in.status = dict(CAPTIVE)
    proc = await portal_open(system_bus.address, "--proxy")
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), WAIT_S)
        assert line.decode().startswith("socks5://127.0.0.1:"), line
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_print_reads_the_daemons_sign_in_url(
    stand_in: StandInDaemon, system_bus: PrivateBus
) -> None:
    stand_in.status = dict(CAPTIVE)
    code, out, err = await ended(await portal_open(system_bus.address, "--print"))
    assert (code, out) == (0, URL + "\n"), err
    await stand_in.stop()
    code, out, err = await ended(await portal_open(system_bus.address, "--print"))
    assert code == 1 and out == ""
    assert err.startswith("portal: error: the portal daemon is not running on"), err


async def test_a_forged_state_changed_is_ignored_the_daemons_own_is_followed(
    proxy: asyncio.subprocess.Process, stand_in: StandInDaemon, system_bus: PrivateBus
) -> None:
    forged = {**CAPTIVE, "network_id": "uuid-elsewhere", "venue_dns": ["192.0.2.66"]}
    async with connected(system_bus.address) as other:
        # Broadcast, the bus's match rules (sender=the daemon's name) keep it away; sent to
        # the follower's own unique name, it arrives, and only the follower can refuse it.
        (names,) = (await call_bus_daemon(other, "ListNames")).body
        assert stand_in.bus is not None
        ours = {other.unique_name, stand_in.bus.unique_name}
        for destination in [None, *(n for n in names if n.startswith(":") and n not in ours)]:
            signal = Message.new_signal(
                OBJECT_PATH, INTERFACE, "StateChanged", "a{sv}", [variant_status(forged)]
            )
            signal.destination = destination
            other.send(signal)
    # Sent after the forgeries have reached the bus: the proxy hears them in that order.
    stand_in.set_status({**ONLINE, "interface": "lo"})
    code, _, err = await ended(proxy)
    assert code == 0, err  # "network changed" would be 1
    assert "portal: sign-in proxy ended: the network is online" in err


async def test_a_daemon_that_restarts_is_read_again_and_followed(
    proxy: asyncio.subprocess.Process, stand_in: StandInDaemon, system_bus: PrivateBus
) -> None:
    await stand_in.stop()
    again = StandInDaemon(system_bus.address, status=dict(CAPTIVE))
    await again.start()
    try:
        await again.wait_for("GetStatus")  # the proxy read the new daemon's status
        again.set_status({**CAPTIVE, "network_id": "uuid-cafe"})
        code, _, err = await ended(proxy)
        assert code == 1, err
        assert "portal: sign-in proxy ended: the network changed" in err
    finally:
        await again.stop()
