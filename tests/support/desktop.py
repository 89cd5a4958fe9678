"""The agent's desktop tests: Xvfb with dunst, private session and system buses, a stand-in for
the portal daemon's D-Bus API, and a small fake notification server for what dunst cannot do on
demand (no "actions" capability, a restart at a chosen moment).

Every process is started under `timeout` (bounded even if the test run dies), in its own session,
and stopped by its PID. The fixtures are registered by tests/desktop/conftest.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from dbus_next import Message, MessageType, Variant
from dbus_next.aio import MessageBus

from portal.agent import Agent, run_agent
from portal.edges.bus import close as close_bus
from portal.edges.control_api import BUS_NAME, INTERFACE, OBJECT_PATH
from tests.support.dbus import PrivateBus
from tests.support.dbus import start_bus as _start_bus
from tests.support.procs import bounded, stop_pid

DUNSTRC = """[global]
    font = DejaVu Sans 10
    width = 420
    origin = top-right
    offset = 10x10
    frame_width = 2
    mouse_left_click = do_action, close_current
[urgency_low]
    timeout = 0
[urgency_normal]
    timeout = 0
[urgency_critical]
    timeout = 0
# Transient notifications skip dunst's history by default; the tests read them back from it.
[keep_transient]
    match_transient = yes
    history_ignore = no
"""


def start_bus(directory: Path, name: str, extra: str = "") -> PrivateBus:
    """A private bus in `directory`/`name` (the caller stops it); skips without dbus-daemon."""
    if shutil.which("dbus-daemon") is None:
        pytest.skip("dbus-daemon is not installed (apt: dbus-daemon)")
    (directory / name).mkdir()
    (directory / name).chmod(0o755)
    return _start_bus(directory / name, kind="session", extra=extra)


@pytest.fixture
def system_bus(short_tmp: Path) -> Iterator[PrivateBus]:
    """Stands for the system bus: where the portal daemon lives."""
    bus = start_bus(short_tmp, "system")
    yield bus
    stop_pid(bus.proc)


@pytest.fixture
def session_bus(short_tmp: Path) -> Iterator[PrivateBus]:
    """The user's session bus: notifications and the tray."""
    bus = start_bus(short_tmp, "session")
    yield bus
    stop_pid(bus.proc)


@dataclass
class Desktop:
    display: str
    env: dict[str, str]
    xvfb: subprocess.Popen[bytes]
    dunst: subprocess.Popen[bytes] | None  # None: started by D-Bus activation

    def ctl(self, *args: str) -> str:
        out = subprocess.run(
            ["dunstctl", *args], env=self.env, capture_output=True, text=True, timeout=10
        )
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    def displayed(self) -> int:
        return int(self.ctl("count", "displayed"))

    def history(self) -> list[dict[str, Any]]:
        """dunst's own record of closed notifications, newest first, as plain values."""
        import json

        data = json.loads(self.ctl("history"))["data"][0]
        return [{k: v["data"] for k, v in row.items()} for row in data]

    def click(self, x: int, y: int) -> None:
        """A real left click on the X display, as the user's mouse would."""
        subprocess.run(
            ["xdotool", "mousemove", str(x), str(y), "click", "1"],
            env=self.env,
            check=True,
            timeout=10,
        )

    def screenshot(self, path: Path) -> None:
        subprocess.run(
            ["import", "-window", "root", str(path)], env=self.env, check=True, timeout=20
        )


def start_xvfb() -> tuple[str, subprocess.Popen[bytes]]:
    """A virtual X server; returns its display number and process."""
    read_fd, write_fd = os.pipe()
    # -displayfd picks a free display, so parallel runs cannot clash; no TCP, no /tmp socket.
    xvfb = subprocess.Popen(
        bounded(
            [
                "Xvfb",
                "-displayfd",
                str(write_fd),
                "-nolisten",
                "tcp",
                "-nolisten",
                "unix",
                "-screen",
                "0",
                "800x240x24",
            ]
        ),
        pass_fds=(write_fd,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    os.close(write_fd)
    with os.fdopen(read_fd) as f:
        number = f.readline().strip()
    if not number:
        stop_pid(xvfb)
        pytest.fail("Xvfb did not report a display")
    return number, xvfb


@pytest.fixture
def desktop(short_tmp: Path, session_bus: PrivateBus) -> Iterator[Desktop]:
    """Xvfb and dunst on the private session bus (notes: the steps that worked)."""
    for tool in ("Xvfb", "dunst", "dunstctl"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (apt: xvfb dunst)")
    number, xvfb = start_xvfb()
    env = {
        **os.environ,
        "DISPLAY": f":{number}",
        "DBUS_SESSION_BUS_ADDRESS": session_bus.address,
    }
    rc = short_tmp / "dunstrc"
    rc.write_text(DUNSTRC)
    dunst = subprocess.Popen(
        bounded(["dunst", "-config", str(rc)]),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    desk = Desktop(f":{number}", env, xvfb, dunst)
    try:
        deadline = time.monotonic() + 20
        while True:
            probe = subprocess.run(
                ["dunstctl", "is-paused"], env=env, capture_output=True, timeout=10
            )
            if probe.returncode == 0:
                break
            if time.monotonic() > deadline or dunst.poll() is not None:
                pytest.fail("dunst did not come up on the session bus")
            time.sleep(0.05)
        yield desk
    finally:
        stop_pid(dunst)
        stop_pid(xvfb)


def variant_status(status: dict[str, Any]) -> dict[str, Variant]:
    types = {"seconds_remaining": "x", "overrides": "u"}
    out = {}
    for key, value in status.items():
        if isinstance(value, list):
            out[key] = Variant("as", value)
        elif isinstance(value, bool):
            out[key] = Variant("b", value)
        else:
            out[key] = Variant(types.get(key, "s"), value)
    return out


def variant_override(row: dict[str, Any]) -> dict[str, Variant]:
    types = {"expires_at": "x", "active": "b", "addresses": "as"}
    return {k: Variant(types.get(k, "s"), v) for k, v in row.items()}


ONLINE: dict[str, Any] = {
    "version": "test",
    "network": "Hotel Wi-Fi",
    "network_id": "uuid-hotel",
    "state": "online",
    "portal_url": "",
    "venue_dns": [],
    "seconds_remaining": -1,
    "overrides": 0,
}


def captive(url: str = "http://login.hotel.test/portal?room=12&lang=en") -> dict[str, Any]:
    return {**ONLINE, "state": "captive", "portal_url": url, "venue_dns": ["10.77.0.1"]}


@dataclass
class StandInDaemon:
    """org.portalhelper.Portal1 as docs/dbus-api.md describes it, with state set by the test."""

    address: str
    status: dict[str, Any] = field(default_factory=lambda: dict(ONLINE))
    overrides: list[dict[str, Any]] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    asked: list[tuple[str, str]] = field(default_factory=list)  # DontAskAgain/AskAgain calls
    bus: MessageBus | None = None
    called: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        self.bus = await MessageBus(bus_address=self.address).connect()
        self.bus.add_message_handler(self._on_message)
        await self.bus.request_name(BUS_NAME)

    async def stop(self) -> None:
        if self.bus is not None:
            await close_bus(self.bus)  # a round trip first: what was sent goes out
        self.bus = None

    def _on_message(self, msg: Message) -> Message | None:
        if msg.message_type != MessageType.METHOD_CALL or msg.path != OBJECT_PATH:
            return None
        self.calls.append(msg.member)
        self.called.set()
        if msg.member == "GetStatus":
            return Message.new_method_return(msg, "a{sv}", [variant_status(self.status)])
        if msg.member == "ListOverrides":
            rows = [variant_override(r) for r in self.overrides]
            return Message.new_method_return(msg, "aa{sv}", [rows])
        if msg.member == "Check":
            return Message.new_method_return(msg)
        if msg.member in ("DontAskAgain", "AskAgain"):
            self.asked.append((msg.member, msg.body[0]))
            name = str(self.status.get("network", ""))
            if msg.member == "DontAskAgain":
                return Message.new_method_return(msg, "s", [name])
            return Message.new_method_return(msg, "as", [[name]])
        return Message.new_error(msg, "org.freedesktop.DBus.Error.UnknownMethod", msg.member)

    def set_status(self, status: dict[str, Any]) -> None:
        """Change the state and announce it, as the daemon does."""
        self.status = status
        assert self.bus is not None
        self.bus.send(
            Message.new_signal(
                OBJECT_PATH, INTERFACE, "StateChanged", "a{sv}", [variant_status(status)]
            )
        )

    def set_overrides(self, rows: list[dict[str, Any]]) -> None:
        self.overrides = rows
        assert self.bus is not None
        self.bus.send(Message.new_signal(OBJECT_PATH, INTERFACE, "OverridesChanged"))

    async def wait_for(self, member: str, count: int = 1, timeout_s: float = 10) -> None:
        async with asyncio.timeout(timeout_s):
            while self.calls.count(member) < count:
                self.called.clear()
                await self.called.wait()


@pytest.fixture
async def stand_in(system_bus: PrivateBus) -> AsyncIterator[StandInDaemon]:
    d = StandInDaemon(system_bus.address)
    await d.start()
    yield d
    await d.stop()


@dataclass
class Shown:
    id: int
    replaces_id: int
    summary: str
    body: str
    actions: list[str]
    hints: dict[str, Any]
    expire_timeout: int


@dataclass
class FakeNotificationServer:
    """Just enough of org.freedesktop.Notifications; capabilities chosen by the test."""

    address: str
    capabilities: list[str] = field(default_factory=lambda: ["body", "actions"])
    shown: list[Shown] = field(default_factory=list)
    closed: list[int] = field(default_factory=list)
    bus: MessageBus | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    next_id: int = 1

    async def start(self) -> None:
        self.bus = await MessageBus(bus_address=self.address).connect()
        self.bus.add_message_handler(self._on_message)
        await self.bus.request_name("org.freedesktop.Notifications")

    async def stop(self) -> None:
        if self.bus is not None:
            await close_bus(self.bus)  # a round trip first: what was sent goes out
        self.bus = None

    def _on_message(self, msg: Message) -> Message | None:
        if msg.message_type != MessageType.METHOD_CALL:
            return None
        if msg.path != "/org/freedesktop/Notifications":
            return None
        self.changed.set()
        if msg.member == "GetCapabilities":
            return Message.new_method_return(msg, "as", [self.capabilities])
        if msg.member == "GetServerInformation":
            return Message.new_method_return(msg, "ssss", ["fake", "portal-tests", "1", "1.2"])
        if msg.member == "Notify":
            _app, replaces, _icon, summary, body, actions, hints, timeout = msg.body
            nid = replaces or self.next_id
            if not replaces:
                self.next_id += 1
            plain = {k: v.value for k, v in hints.items()}
            self.shown.append(Shown(nid, replaces, summary, body, actions, plain, timeout))
            return Message.new_method_return(msg, "u", [nid])
        if msg.member == "CloseNotification":
            self.closed.append(msg.body[0])
            self.signal("NotificationClosed", "uu", [msg.body[0], 3])
            return Message.new_method_return(msg)
        return Message.new_error(msg, "org.freedesktop.DBus.Error.UnknownMethod", msg.member)

    def signal(self, member: str, signature: str, body: list[Any]) -> None:
        assert self.bus is not None
        self.bus.send(
            Message.new_signal(
                "/org/freedesktop/Notifications",
                "org.freedesktop.Notifications",
                member,
                signature,
                body,
            )
        )

    async def wait_shown(self, count: int, timeout_s: float = 10) -> Shown:
        async with asyncio.timeout(timeout_s):
            while len(self.shown) < count:
                self.changed.clear()
                await self.changed.wait()
        return self.shown[count - 1]


@pytest.fixture
async def fake_server(session_bus: PrivateBus) -> AsyncIterator[FakeNotificationServer]:
    server = FakeNotificationServer(session_bus.address)
    await server.start()
    yield server
    await server.stop()


@contextlib.asynccontextmanager
async def running_agent(system: str, session: str, browser: str = "") -> AsyncIterator[Agent]:
    """The agent in this process and loop, until the block ends."""
    ready: asyncio.Future[Agent] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        run_agent(bus=system, session_bus=session, browser=browser, ready=ready.set_result)
    )
    try:
        async with asyncio.timeout(15):
            waiters: list[asyncio.Future[Any]] = [task, ready]
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()
            pytest.fail("the agent returned before it was ready")
        yield ready.result()
        assert not task.done(), "the agent stopped on its own"
    finally:
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=15)
        assert done, "the agent did not stop when cancelled"
        with contextlib.suppress(asyncio.CancelledError):
            task.result()
