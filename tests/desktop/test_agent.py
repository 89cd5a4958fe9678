"""The agent against a real notification server (dunst under Xvfb) and against a fake one for the
cases a real server cannot be made to show on demand (no actions; restarts; absence).

The daemon side is a stand-in exporting the documented D-Bus API on a private "system" bus;
one test runs the real `portal daemon` instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from dbus_next import Message, MessageType
from dbus_next.aio import MessageBus

from portal.agent import Agent, _defaults, build_parser, main, run_agent
from portal.core.agent_logic import Kind, SignInNotification
from portal.edges.bus import call_bus_daemon
from portal.edges.bus import close as close_bus
from portal.edges.control_api import INTERFACE, OBJECT_PATH
from portal.edges.notify import DESKTOP_ENTRY
from portal.errors import PortalError
from tests.lab.marks import LabFactory, requires_lab
from tests.support.daemon import spawn_in_lab
from tests.support.dbus import PrivateBus, connected
from tests.support.desktop import (
    DUNSTRC,
    ONLINE,
    Desktop,
    FakeNotificationServer,
    StandInDaemon,
    captive,
    running_agent,
    start_bus,
    start_xvfb,
)
from tests.support.procs import LIFETIME_S, REPO, eventually, stop_pid

# The lab's fixtures (lab_factory), registered by name as the e2e tests do.
pytest_plugins = ["tests.lab.fixtures"]

URL = "http://login.hotel.test/portal?room=12&lang=en"
AUTO, ALWAYS, NEVER = SignInNotification.AUTO, SignInNotification.ALWAYS, SignInNotification.NEVER
POLICY = REPO / "dbus" / "org.portalhelper.Portal1.conf"
ARTIFACTS = (
    Path(os.environ.get("PORTAL_TEST_ARTIFACTS", ""))
    if "PORTAL_TEST_ARTIFACTS" in (os.environ)
    else None
)


def recorder(directory: Path) -> tuple[str, Path]:
    """A 'browser' that writes the URL it was asked to open (any user may run it)."""
    out_dir = directory / "opened"
    out_dir.mkdir()
    out_dir.chmod(0o777)
    record = out_dir / "urls.txt"
    script = directory / "browser.sh"
    script.write_text(f'#!/bin/sh\nprintf "%s\\n" "$1" >> {record}\n')
    script.chmod(0o755)
    return str(script), record


def spawn_agent_as_user(
    system: str, session: str, browser: str, log_path: Path
) -> subprocess.Popen[bytes]:
    """`portal agent` as a user types it, as an unprivileged user (it refuses to open pages as
    root). The ambient capability only lets that user read an interpreter installed under /root."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("PORTAL_BUS", "DISPLAY", "BROWSER")
    }
    env.update(DBUS_SESSION_BUS_ADDRESS=session, PYTHONPATH=str(REPO), HOME="/tmp", LANG="C.UTF-8")
    argv = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=+dac_read_search",
        "--ambient-caps=+dac_read_search",
        "--",
        "timeout",
        "--kill-after=5",
        str(LIFETIME_S),
        sys.executable,
        "-m",
        "portal",
        "agent",
        "--bus",
        system,
        "--browser",
        browser,
    ]
    with open(log_path, "wb") as log:
        return subprocess.Popen(argv, env=env, stdout=log, stderr=log, cwd="/")


def stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.terminate()
        try:
            return proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait(timeout=10)


async def until(predicate: Any, what: str, timeout_s: float = 10) -> None:
    await eventually(predicate, timeout_s, what)


# ---- the real notification server ----


@pytest.mark.desktop
@pytest.mark.skipif(os.geteuid() != 0, reason="runs the agent as another user; needs root")
async def test_sign_in_in_dunst_opens_the_page_as_the_user(
    desktop: Desktop,
    stand_in: StandInDaemon,
    system_bus: PrivateBus,
    session_bus: PrivateBus,
    short_tmp: Path,
    tmp_path: Path,
) -> None:
    for tool in ("setpriv", "xdotool", "import"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (apt: util-linux xdotool imagemagick)")
    browser, record = recorder(short_tmp)
    log_path = tmp_path / "agent.log"
    agent = spawn_agent_as_user(system_bus.address, session_bus.address, browser, log_path)
    try:
        # Subscribed and read the state: online, so nothing to show.
        await stand_in.wait_for("ListOverrides", timeout_s=20)
        assert desktop.displayed() == 0

        started = time.perf_counter()
        stand_in.set_status(captive(URL))
        await until(lambda: desktop.displayed() == 1, "the notification in dunst")
        latency_ms = (time.perf_counter() - started) * 1000
        print(f"\nStateChanged → shown by dunst: {latency_ms:.0f} ms")

        shot = tmp_path / "notification.png"
        desktop.screenshot(shot)
        assert shot.stat().st_size > 0
        if ARTIFACTS is not None:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, ARTIFACTS / "notification.png")

        # The user clicks the notification (dunstrc: left click = default action, close). On a
        # busy machine dunst may count it displayed a moment before its window is mapped, so a
        # first click can land on nothing: like a user, click again (a click on no
        # notification does nothing).
        for _ in range(3):
            desktop.click(600, 50)
            with contextlib.suppress(AssertionError):
                await until(lambda: record.exists() and record.read_text(), "the browser", 3)
                break
        await until(lambda: record.exists() and record.read_text(), "the browser to be started")
        assert record.read_text().splitlines() == [URL]

        (note,) = desktop.history()
        assert note["appname"] == "portal"
        assert note["summary"] == "Sign in to Hotel Wi-Fi"
        assert "login.hotel.test" in note["body"]
        assert "network's own DNS" in note["body"]

        stand_in.set_status(ONLINE)
        await until(lambda: desktop.displayed() == 1, "Connected in dunst")
        desktop.ctl("close")
        assert desktop.history()[0]["summary"] == "Connected to Hotel Wi-Fi"
    finally:
        code = stop(agent)
    log = log_path.read_text(errors="replace")
    assert "Traceback" not in log, log
    assert "opened " + URL in log
    # The agent ends cleanly on SIGTERM; `timeout` around it then re-raises that signal.
    assert "portal agent stopping" in log
    assert code in (0, -signal.SIGTERM), log


@pytest.mark.desktop
async def test_dunst_updates_in_place_instead_of_stacking(
    desktop: Desktop, stand_in: StandInDaemon, system_bus: PrivateBus, session_bus: PrivateBus
) -> None:
    async with running_agent(system_bus.address, session_bus.address) as agent:
        stand_in.set_status(captive(URL))
        await until(lambda: desktop.displayed() == 1, "the sign-in notification")
        before = agent.state.shown_serial
        stand_in.set_status(captive("https://other.hotel.test/login"))
        stand_in.set_status(ONLINE)
        # The agent has had dunst's answer to the last update: every update went in before.
        await answered(agent, Kind.CONNECTED, before)
        # One notification on screen, and it is the last word: closing it leaves one entry.
        assert desktop.displayed() == 1
        desktop.ctl("close")
        history = desktop.history()
        assert [n["summary"] for n in history] == ["Connected to Hotel Wi-Fi"]


async def answered(agent: Agent, kind: Kind, serial_before: int) -> None:
    """Wait for the server's answer to the agent's latest notification of `kind`.

    The core records what it asked for at once and the answer's serial when it comes; waiting on
    the asked-for content alone would let a test act before the server has the notification.
    """
    await until(
        lambda: (
            agent.state.shown is not None
            and agent.state.shown.kind is kind
            and agent.state.shown_serial != serial_before
            and agent.state.shown_id != 0
        ),
        f"the server's answer for the {kind} notification",
    )


@pytest.mark.desktop
async def test_every_episode_notifies_once_and_latency(
    desktop: Desktop, stand_in: StandInDaemon, system_bus: PrivateBus, session_bus: PrivateBus
) -> None:
    """Ten portal episodes in a row: each shows one sign-in notification. Prints the time from
    the daemon's StateChanged to dunst counting it as displayed (read over D-Bus, ~1 ms)."""
    samples_ms = []
    async with (
        running_agent(system_bus.address, session_bus.address) as agent,
        connected(session_bus.address) as probe,
    ):
        await stand_in.wait_for("ListOverrides")
        for i in range(10):
            desktop.ctl("close-all")
            # The agent has heard of the close: the next sign-in is a new notification, not a
            # replacement of the closed one (dunst would re-use its id, and keep only one of
            # the two in its history).
            await until(lambda: agent.state.shown is None, "the close to reach the agent")
            await until(lambda: desktop.displayed() == 0, "an empty screen")
            started = time.perf_counter()
            stand_in.set_status(captive(f"{URL}&try={i}"))
            async with asyncio.timeout(10):
                # Polling dunst's own count: it has no signal for "drawn".
                while await dunst_displayed(probe) != 1:  # noqa: ASYNC110
                    await asyncio.sleep(0.001)
            samples_ms.append((time.perf_counter() - started) * 1000)
            before = agent.state.shown_serial
            stand_in.set_status(ONLINE)
            await answered(agent, Kind.CONNECTED, before)
        desktop.ctl("close-all")
    summaries = [n["summary"] for n in desktop.history()]
    # Newest first: each episode left its Connected (the sign-in was replaced in place).
    assert summaries.count("Connected to Hotel Wi-Fi") == 10
    assert "Sign in to Hotel Wi-Fi" not in summaries
    samples_ms.sort()
    median = statistics.median(samples_ms)
    print(
        f"\nStateChanged → displayed by dunst, 10 episodes: median {median:.1f} ms,"
        f" min {samples_ms[0]:.1f} ms, max {samples_ms[-1]:.1f} ms"
    )


async def dunst_displayed(bus: MessageBus) -> int:
    """dunst's own count of notifications on screen (what `dunstctl count displayed` reads)."""
    reply = await bus.call(
        Message(
            destination="org.freedesktop.Notifications",
            path="/org/freedesktop/Notifications",
            interface="org.freedesktop.DBus.Properties",
            member="Get",
            signature="ss",
            body=["org.dunstproject.cmd0", "displayedLength"],
        )
    )
    assert reply is not None and reply.message_type == MessageType.METHOD_RETURN, reply
    value: int = reply.body[0].value
    return value


@pytest.mark.desktop
async def test_activated_dunst_crashes_and_comes_back(
    stand_in: StandInDaemon, system_bus: PrivateBus, short_tmp: Path
) -> None:
    """dunst as desktops often run it: started by D-Bus activation on the first call. One
    notification, not two, although the server is reported twice (the call that starts it, its
    arrival); after a crash, the sign-in reappears when another app's notification brings dunst
    back."""
    for tool in ("Xvfb", "dunst", "dunstctl", "notify-send"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (apt: xvfb dunst libnotify-bin)")
    number, xvfb = start_xvfb()
    services = short_tmp / "services"
    services.mkdir()
    rc = short_tmp / "dunstrc"
    rc.write_text(DUNSTRC)
    (services / "org.freedesktop.Notifications.service").write_text(
        "[D-BUS Service]\nName=org.freedesktop.Notifications\n"
        f"Exec={shutil.which('timeout')} --kill-after=5 {LIFETIME_S} "
        f"{shutil.which('dunst')} -config {rc}\n"
    )
    session = start_bus(short_tmp, "activated", f"<servicedir>{services}</servicedir>")
    env = {**os.environ, "DISPLAY": f":{number}", "DBUS_SESSION_BUS_ADDRESS": session.address}
    desk = Desktop(f":{number}", env, xvfb, None)

    async def dunst_pid(bus: MessageBus) -> int:
        (pid,) = (
            await call_bus_daemon(
                bus, "GetConnectionUnixProcessID", "s", ["org.freedesktop.Notifications"]
            )
        ).body
        return int(pid)

    async def displayed_is(bus: MessageBus, count: int) -> None:
        async with asyncio.timeout(10):
            while await dunst_displayed(bus) != count:  # noqa: ASYNC110 (state in dunst)
                await asyncio.sleep(0.01)

    try:
        async with connected(session.address) as h:
            # What a session manager does: give activated services the display.
            display = [{"DISPLAY": f":{number}"}]
            await call_bus_daemon(h, "UpdateActivationEnvironment", "a{ss}", display)
            stand_in.status = captive(URL)
            async with running_agent(system_bus.address, session.address) as agent:
                await until(lambda: agent.state.shown_id != 0, "the notification")
                first_pid = await dunst_pid(h)
                await stand_in.wait_for("ListOverrides")
                # Both reports of the server are in once a status after them is handled.
                before = agent.state.shown_serial
                stand_in.set_status({**captive(URL), "network": "Hotel Wi-Fi 2"})
                await answered(agent, Kind.SIGN_IN, before)
                assert agent.state.shown is not None
                assert agent.state.shown.summary == "Sign in to Hotel Wi-Fi 2"
                await displayed_is(h, 1)

                os.kill(first_pid, signal.SIGKILL)  # by its PID, from the bus
                await until(lambda: agent.state.capabilities is None, "the crash to be noticed")
                other = await asyncio.create_subprocess_exec(
                    "notify-send", "Other app", "hello", env=env
                )
                async with asyncio.timeout(10):
                    assert await other.wait() == 0
                await displayed_is(h, 2)
                assert await dunst_pid(h) != first_pid
            desk.ctl("close-all")
            summaries = sorted(n["summary"] for n in desk.history())
            assert summaries == ["Other app", "Sign in to Hotel Wi-Fi 2"]
            with contextlib.suppress(AssertionError, TimeoutError):
                os.kill(await dunst_pid(h), signal.SIGTERM)
    finally:
        stop_pid(session.proc)
        stop_pid(xvfb)


@pytest.mark.desktop
async def test_agent_refuses_to_open_pages_as_root(
    desktop: Desktop,
    stand_in: StandInDaemon,
    system_bus: PrivateBus,
    session_bus: PrivateBus,
    short_tmp: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    if os.geteuid() != 0:
        pytest.skip("checks the root refusal; run as root (CI is)")
    browser, record = recorder(short_tmp)
    caplog.set_level(logging.INFO, logger="portal")
    stand_in.status = captive(URL)
    async with running_agent(system_bus.address, session_bus.address, browser):
        await until(lambda: desktop.displayed() == 1, "the notification at start")
        desktop.ctl("action", "0")
        await until(lambda: "refusing" in caplog.text, "the refusal in the log")
    assert "refusing to start a browser as root" in caplog.text
    assert not record.exists()


@pytest.mark.root
@pytest.mark.lab
@pytest.mark.desktop
@requires_lab
async def test_real_daemon_in_the_lab_to_dunst(
    lab_factory: LabFactory,
    desktop: Desktop,
    session_bus: PrivateBus,
    short_tmp: Path,
    tmp_path: Path,
) -> None:
    """All real: NetworkManager joins the hotel network, the daemon on the laptop finds the
    portal, and the agent (as a user, on the host) tells dunst; the click opens the portal's URL
    that the daemon found; signing in turns it into "Connected"."""
    for tool in ("setpriv", "xdotool"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (apt: util-linux xdotool)")
    lab = lab_factory(dns_mode="hijack", bus_policy_files=[POLICY], nm_check_interval_s=3)
    started = time.perf_counter()
    daemon = spawn_in_lab(lab)
    browser, record = recorder(short_tmp)
    log_path = tmp_path / "agent.log"
    # The laptop's system bus is a filesystem socket: the agent reaches it from the host.
    agent = spawn_agent_as_user(lab.bus_address, session_bus.address, browser, log_path)
    try:
        await until(lambda: desktop.displayed() == 1, "the sign-in notification", 45)
        print(
            f"\nlab: daemon start → sign-in notification in {time.perf_counter() - started:.2f} s"
        )
        desktop.screenshot(tmp_path / "lab-notification.png")
        desktop.click(600, 50)
        await until(lambda: record.exists() and record.read_text(), "the browser", 15)
        (url,) = record.read_text().splitlines()
        assert url.startswith("http://login.hotel.test/portal")
        (note,) = desktop.history()
        assert note["summary"] == "Sign in to hotel-wifi"
        assert "login.hotel.test" in note["body"]
        assert "portal pinned login.hotel.test" in note["body"]

        # The lab asks for the laptop's address, which NetworkManager may be renewing.
        await until(lambda: lab.laptop_ip() is not None, "the laptop's address", 20)
        lab.login()
        check = lab.run_laptop(
            [sys.executable, "-m", "portal", "check"], env={"PYTHONPATH": str(REPO)}, timeout_s=30
        )
        assert check.returncode == 0, check.stderr
        await until(lambda: desktop.displayed() == 1, "Connected", 30)
        desktop.ctl("close")
        assert desktop.history()[0]["summary"] == "Connected to hotel-wifi"
    finally:
        code = stop(agent)
        daemon.stop()
    log = log_path.read_text(errors="replace")
    assert "Traceback" not in log, log
    assert code in (0, -signal.SIGTERM), log


# ---- a fake server: capabilities, restarts, absence ----


async def test_no_actions_capability_puts_the_url_in_the_body(
    fake_server: FakeNotificationServer,
    stand_in: StandInDaemon,
    system_bus: PrivateBus,
    session_bus: PrivateBus,
) -> None:
    fake_server.capabilities = ["body"]
    stand_in.status = captive(URL)
    async with running_agent(system_bus.address, session_bus.address):
        note = await fake_server.wait_shown(1)
    assert note.actions == []
    assert f"Open {URL} in a browser" in note.body
    assert note.summary == "Sign in to Hotel Wi-Fi"
    assert note.hints["desktop-entry"] == "portal-agent"
    assert note.expire_timeout == 0


async def test_started_while_captive_notifies_at_once_with_actions(
    fake_server: FakeNotificationServer,
    stand_in: StandInDaemon,
    system_bus: PrivateBus,
    session_bus: PrivateBus,
) -> None:
    stand_in.status = captive(URL)
    async with running_agent(system_bus.address, session_bus.address):
        note = await fake_server.wait_shown(1)
        assert note.actions == [
            "default", "Open sign-in page", "later", "Not now", "never", "Don't ask again"
        ]  # fmt: skip
        assert URL not in note.body
        # "Not now": closed, and this portal episode stays quiet.
        fake_server.signal("ActionInvoked", "us", [note.id, "later"])
        await until(lambda: fake_server.closed == [note.id], "CloseNotification")
        stand_in.set_status(captive(URL))
        stand_in.set_status({**captive(URL), "portal_url": "http://login.hotel.test/2"})
        # Online: a transient Connected, and nothing in between (signals arrive in order).
        stand_in.set_status(ONLINE)
        connected = await fake_server.wait_shown(2)
    assert connected.summary == "Connected to Hotel Wi-Fi"
    assert connected.hints["transient"] is True
    assert connected.expire_timeout > 0


async def test_low_session_time_gives_one_reminder(
    fake_server: FakeNotificationServer,
    stand_in: StandInDaemon,
    system_bus: PrivateBus,
    session_bus: PrivateBus,
) -> None:
    paid = {**ONLINE, "portal_url": URL, "seconds_remaining": 3600}
    stand_in.status = paid
    async with running_agent(system_bus.address, session_bus.address):
        await stand_in.wait_for("ListOverrides")
        stand_in.set_status({**paid, "seconds_remaining": 240})
        note = await fake_server.wait_shown(1)
        stand_in.set_status({**paid, "seconds_remaining": 180})
        stand_in.set_status({**paid, "seconds_remaining": 120})
        # A change that does notify, after them: once it shows, they were all handled.
        stand_in.set_status(captive(URL))
        await fake_server.wait_shown(2)
    assert [n.summary for n in fake_server.shown] == [
        "Hotel Wi-Fi session ends soon",
        "Sign in to Hotel Wi-Fi",
    ]
    assert note.summary == "Hotel Wi-Fi session ends soon"
    assert "about 4 minutes" in note.body
    assert note.actions == ["default", "Open sign-in page", "later", "Not now"]


async def test_notification_server_restart(
    stand_in: StandInDaemon, system_bus: PrivateBus, session_bus: PrivateBus
) -> None:
    first = FakeNotificationServer(session_bus.address)
    await first.start()
    stand_in.status = captive(URL)
    async with running_agent(system_bus.address, session_bus.address) as agent:
        await first.wait_shown(1)
        await until(lambda: agent.state.shown_id == 1, "the id to reach the agent")
        await first.stop()
        second = FakeNotificationServer(session_bus.address, capabilities=["body"])
        second.next_id = 40
        await second.start()
        try:
            # The new server knows nothing of the old id: shown afresh, for its capabilities.
            again = await second.wait_shown(1)
            assert again.replaces_id == 0 and URL in again.body
            stand_in.set_status(ONLINE)
            connected = await second.wait_shown(2)
            assert connected.replaces_id == 40
        finally:
            await second.stop()


async def test_no_notification_server_then_one_appears(
    stand_in: StandInDaemon,
    system_bus: PrivateBus,
    session_bus: PrivateBus,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="portal")
    stand_in.status = captive(URL)
    async with running_agent(system_bus.address, session_bus.address):
        assert "no notification server" in caplog.text
        server = FakeNotificationServer(session_bus.address)
        await server.start()
        try:
            note = await server.wait_shown(1)
            assert note.summary == "Sign in to Hotel Wi-Fi"
        finally:
            await server.stop()


async def test_daemon_restart_and_absence(
    fake_server: FakeNotificationServer,
    system_bus: PrivateBus,
    session_bus: PrivateBus,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="portal")
    async with running_agent(system_bus.address, session_bus.address):
        assert "daemon is not running" in caplog.text
        first = StandInDaemon(system_bus.address)
        await first.start()
        await first.wait_for("ListOverrides")
        first.set_status(captive(URL))
        note = await fake_server.wait_shown(1)
        await first.stop()
        await until(lambda: "left the bus" in caplog.text, "the departure in the log")
        second = StandInDaemon(system_bus.address, status=ONLINE)
        await second.start()
        try:
            # Back with news: the portal cleared while the daemon was away.
            connected = await fake_server.wait_shown(2)
            assert connected.replaces_id == note.id
            assert connected.summary == "Connected to Hotel Wi-Fi"
        finally:
            await second.stop()


async def test_forged_signals_are_ignored(
    fake_server: FakeNotificationServer,
    stand_in: StandInDaemon,
    system_bus: PrivateBus,
    session_bus: PrivateBus,
) -> None:
    async with running_agent(system_bus.address, session_bus.address):
        await stand_in.wait_for("ListOverrides")
        forger = await MessageBus(bus_address=system_bus.address).connect()
        try:
            from tests.support.desktop import variant_status

            forger.send(
                Message.new_signal(
                    OBJECT_PATH,
                    INTERFACE,
                    "StateChanged",
                    "a{sv}",
                    [variant_status(captive("http://evil.test/"))],
                )
            )
            # A real change after the forgery: once it shows, the forgery had its chance.
            stand_in.set_status(captive(URL))
            note = await fake_server.wait_shown(1)
        finally:
            await close_bus(forger)
    assert len(fake_server.shown) == 1
    assert "evil.test" not in note.body and "login.hotel.test" in note.body


async def test_second_agent_in_a_session_steps_aside(
    fake_server: FakeNotificationServer,
    stand_in: StandInDaemon,
    system_bus: PrivateBus,
    session_bus: PrivateBus,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="portal")
    stand_in.status = captive(URL)
    async with running_agent(system_bus.address, session_bus.address):
        await fake_server.wait_shown(1)
        async with asyncio.timeout(15):
            await run_agent(bus=system_bus.address, session_bus=session_bus.address)
        assert "another portal agent runs in this session" in caplog.text
        stand_in.set_status(ONLINE)
        await fake_server.wait_shown(2)
    assert [n.summary for n in fake_server.shown] == [
        "Sign in to Hotel Wi-Fi",
        "Connected to Hotel Wi-Fi",
    ]


async def test_losing_the_system_bus_ends_the_agent_with_an_error(
    fake_server: FakeNotificationServer,
    stand_in: StandInDaemon,
    system_bus: PrivateBus,
    session_bus: PrivateBus,
) -> None:
    """The unit restarts it (Restart=on-failure); carrying on deaf would be worse."""
    ready: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        run_agent(bus=system_bus.address, session_bus=session_bus.address, ready=ready.set_result)
    )
    async with asyncio.timeout(15):
        await ready
    system_bus.proc.terminate()  # the bus daemon goes away (by its PID)
    system_bus.proc.wait(timeout=10)
    async with asyncio.timeout(15):
        with pytest.raises(PortalError, match="lost the connection"):
            await task


# ---- the command line ----


def test_main_reports_a_missing_bus(capsys: pytest.CaptureFixture[str], short_tmp: Path) -> None:
    code = main(["--bus", f"unix:path={short_tmp}/nothing-here"])
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("portal: error: ") and err.count("\n") == 1


def test_config_file_gives_bus_browser_and_when_to_speak(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PORTAL_BUS", raising=False)
    cfg = tmp_path / "portal.toml"
    cfg.write_text(
        'bus = "unix:path=/run/elsewhere"\nbrowser = "firefox --new-tab %s"\n'
        'sign_in_notification = "never"\n'
    )
    args = build_parser().parse_args(["--config", str(cfg)])
    assert _defaults(args) == ("unix:path=/run/elsewhere", "firefox --new-tab %s", NEVER)
    flags = build_parser().parse_args(
        ["--config", str(cfg), "--bus", "session", "--browser", "b"]
        + ["--sign-in-notification", "always"]
    )
    assert _defaults(flags) == ("session", "b", ALWAYS)
    assert _defaults(build_parser().parse_args(["--config", "/dev/null"]))[2] is AUTO
    monkeypatch.setenv("PORTAL_BUS", "system")
    assert _defaults(args)[0] == "system"
    cfg.write_text("bus = [\n")
    assert main(["--config", str(cfg)]) == 2


def test_main_usage_error() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--no-such-flag"])
    assert exc.value.code == 2


# ---- the files that start it ----


def unit_settings(text: str) -> dict[str, list[str]]:
    """`Section.Key` → values, in order (comments and blank lines skipped)."""
    out: dict[str, list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.setdefault(f"{section}.{key}", []).append(value)
    return out


def test_user_unit_contract() -> None:
    unit = unit_settings((REPO / "systemd" / "portal-agent.service").read_text())
    assert unit["Unit.PartOf"] == ["graphical-session.target"]
    assert unit["Unit.After"] == ["graphical-session.target"]
    assert unit["Install.WantedBy"] == ["graphical-session.target"]
    assert unit["Unit.ConditionUser"] == ["!@system"]
    assert unit["Service.Type"] == ["exec"]
    assert unit["Service.Restart"] == ["on-failure"]
    assert unit["Service.ExecStart"] == ["/usr/bin/portal agent"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_user_unit_verifies_silently(tmp_path: Path) -> None:
    # verify exits 0 even on a misspelt key, so any output on stderr is a failure.
    text = (REPO / "systemd" / "portal-agent.service").read_text()
    (tmp_path / "portal-agent.service").write_text(
        text.replace("ExecStart=/usr/bin/portal ", "ExecStart=/bin/true ", 1)
    )
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    result = subprocess.run(
        ["systemd-analyze", "--user", "verify", "./portal-agent.service"],
        cwd=tmp_path,
        env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_autostart_entry() -> None:
    entry = unit_settings((REPO / "xdg" / "portal-agent.desktop").read_text())
    assert entry["Desktop Entry.Type"] == ["Application"]
    assert entry["Desktop Entry.Exec"] == ["portal agent"]
    assert entry["Desktop Entry.NoDisplay"] == ["true"]
    # The notification's desktop-entry hint names this file.
    assert (REPO / "xdg" / f"{DESKTOP_ENTRY}.desktop").exists()
