"""One prompt, not two: the agent beside a desktop that prompts by itself (issue 14 item 5).

GNOME Shell and plasma-nm's kded module show their own sign-in prompt whenever NetworkManager
says PORTAL. Here they are tiny owners of their real bus names on the private session bus: a
"GNOME Shell" that owns org.gnome.Shell, with the portal helper's D-Bus service file in the
bus's service directory as GNOME installs it; a "kded" that owns org.kde.kded6 (or kded5) and
answers loadedModules() on /kded. The daemon is the stand-in on a private system bus saying
what the real one says (NetworkManager's own verdict, whether the user's resolver resolves the
portal's name), and the notifications go to dunst under Xvfb, read back from dunst itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from dbus_next import Message, MessageType
from dbus_next.aio import MessageBus

from portal.agent import Agent
from portal.core.agent_logic import DesktopHandler
from portal.core.model import Connectivity
from portal.edges.bus import call_bus_daemon
from portal.edges.bus import close as close_bus
from tests.lab.marks import LabFactory, requires_lab
from tests.support.daemon import spawn_in_lab
from tests.support.dbus import PrivateBus, connected
from tests.support.desktop import (
    ONLINE,
    Desktop,
    StandInDaemon,
    captive,
    running_agent,
    start_bus,
)
from tests.support.procs import REPO, eventually, stop_pid

# The lab's fixtures (lab_factory), registered by name as the e2e tests do.
pytest_plugins = ["tests.lab.fixtures"]
pytestmark = pytest.mark.desktop

POLICY = REPO / "dbus" / "org.portalhelper.Portal1.conf"

URL = "http://login.hotel.test/portal?room=12&lang=en"
HELPER_SERVICE = """[D-BUS Service]
Name=org.gnome.Shell.PortalHelper
Exec=/bin/false
"""


@pytest.fixture
def services(short_tmp: Path) -> Path:
    """The session bus's service directory (where GNOME installs its portal helper's file)."""
    path = short_tmp / "services"
    path.mkdir()
    return path


@pytest.fixture
def session_bus(short_tmp: Path, services: Path) -> Iterator[PrivateBus]:
    """The user's session bus, as tests/support/desktop.py makes it, with a service directory."""
    bus = start_bus(short_tmp, "session", extra=f"<servicedir>{services}</servicedir>")
    yield bus
    stop_pid(bus.proc)


async def install_portal_helper(services: Path, session: str) -> None:
    """GNOME's portal helper installed: its D-Bus service file, and the bus told to reload."""
    (services / "org.gnome.Shell.PortalHelper.service").write_text(HELPER_SERVICE)
    async with connected(session) as bus:
        await call_bus_daemon(bus, "ReloadConfig")


@contextlib.asynccontextmanager
async def owner(session: str, name: str, modules: list[str] | None = None) -> AsyncIterator[Any]:
    """A tiny program owning `name` on the session bus; with `modules`, a kded answering
    loadedModules() on /kded (under the interface named as the bus name, as kded does)."""
    bus = await MessageBus(bus_address=session).connect()

    def answer(msg: Message) -> Message | None:
        if (
            modules is not None
            and msg.message_type == MessageType.METHOD_CALL
            and (msg.path, msg.interface, msg.member) == ("/kded", name, "loadedModules")
        ):
            return Message.new_method_return(msg, "as", [list(modules)])
        return None

    bus.add_message_handler(answer)
    await bus.request_name(name)
    try:
        yield bus
    finally:
        await close_bus(bus)


@contextlib.asynccontextmanager
async def agent_beside_gnome(system: str, session: str, services: Path) -> AsyncIterator[Agent]:
    """ "GNOME Shell" with its portal helper installed, and the agent once it has seen them."""
    await install_portal_helper(services, session)
    async with owner(session, "org.gnome.Shell"), running_agent(system, session) as agent:
        await until(lambda: agent.state.desktop is DesktopHandler.GNOME, "GNOME to be seen")
        yield agent


def status(nm: str = "captive", dns: str = "resolves") -> dict[str, Any]:
    """A captive status with NetworkManager's own word and the user's resolver's answer."""
    return {**captive(URL), "nm_connectivity": nm, "user_dns": dns}


async def heard(agent: Agent, sent: dict[str, Any]) -> None:
    """The agent has handled this status (and whatever it made it do)."""

    def done() -> bool:
        now = agent.state.status
        return now is not None and (now.nm_connectivity, now.user_dns) == (
            sent["nm_connectivity"],
            sent["user_dns"],
        )

    await eventually(done, 10, f"the agent to hear {sent['nm_connectivity']}/{sent['user_dns']}")


async def until(predicate: Any, what: str) -> None:
    await eventually(predicate, 10, what)


async def test_gnome_shells_working_window_is_the_only_prompt(
    desktop: Desktop,
    stand_in: StandInDaemon,
    system_bus: PrivateBus,
    session_bus: PrivateBus,
    services: Path,
) -> None:
    """NetworkManager says PORTAL and the user's resolver resolves the portal's name: GNOME's
    window opens and works, so portal says nothing (while the daemon still asks the resolver,
    it waits). When NM's recheck no longer sees the portal, GNOME is silent: portal speaks."""
    async with agent_beside_gnome(system_bus.address, session_bus.address, services) as agent:
        for sent in (status(dns="checking"), status(dns="resolves")):
            stand_in.set_status(sent)
            await heard(agent, sent)
            assert desktop.displayed() == 0
        assert agent.state.deferred and agent.state.page_url == URL  # the tray still opens it
        stand_in.set_status(status(nm="limited"))
        await until(lambda: desktop.displayed() == 1, "portal's own notification")
        desktop.ctl("close")
        (note,) = desktop.history()
        assert note["summary"] == "Sign in to Hotel Wi-Fi"
        assert "GNOME" not in note["body"]


async def test_portals_note_gives_way_when_gnome_shell_takes_over(
    desktop: Desktop,
    stand_in: StandInDaemon,
    system_bus: PrivateBus,
    session_bus: PrivateBus,
    services: Path,
) -> None:
    """portal's probe saw the portal before NetworkManager said PORTAL: portal's note is up,
    then GNOME's window opens and portal's note is closed. After signing in through GNOME's
    window, no "Connected" from portal either."""
    async with agent_beside_gnome(system_bus.address, session_bus.address, services) as agent:
        stand_in.set_status(status(nm="unknown", dns="checking"))
        await until(lambda: desktop.displayed() == 1, "portal's own notification")
        stand_in.set_status(status(nm="captive", dns="resolves"))
        await until(lambda: desktop.displayed() == 0, "portal's notification to close")
        assert [n["summary"] for n in desktop.history()] == ["Sign in to Hotel Wi-Fi"]
        stand_in.set_status(ONLINE)
        await until(lambda: agent.state.episode is None, "the episode to end")
        assert desktop.displayed() == 0


async def test_gnome_shells_window_would_fail_so_portal_says_why(
    desktop: Desktop,
    stand_in: StandInDaemon,
    system_bus: PrivateBus,
    session_bus: PrivateBus,
    services: Path,
) -> None:
    async with agent_beside_gnome(system_bus.address, session_bus.address, services):
        stand_in.set_status(status(dns="fails"))
        await until(lambda: desktop.displayed() == 1, "portal's own notification")
        desktop.ctl("close")
        (note,) = desktop.history()
        assert "GNOME's own sign-in window cannot reach it" in note["body"]
        assert "The page opens in a private sign-in window." in note["body"]


async def test_gnome_shell_without_its_portal_helper_prompts_nobody(
    desktop: Desktop, stand_in: StandInDaemon, system_bus: PrivateBus, session_bus: PrivateBus
) -> None:
    """Shell calls a helper that is not installed and nothing appears: portal speaks."""
    async with (
        owner(session_bus.address, "org.gnome.Shell"),
        running_agent(system_bus.address, session_bus.address) as agent,
    ):
        stand_in.set_status(status())
        await until(lambda: desktop.displayed() == 1, "portal's own notification")
        assert agent.state.desktop is DesktopHandler.NONE


@pytest.mark.parametrize("kded", ["org.kde.kded6", "org.kde.kded5"])
async def test_plasma_nm_prompts_while_its_kded_runs(
    desktop: Desktop,
    stand_in: StandInDaemon,
    system_bus: PrivateBus,
    session_bus: PrivateBus,
    kded: str,
) -> None:
    """plasma-nm's kded module shows "You need to log in to this network": portal keeps quiet;
    when kded leaves the session mid-episode, nobody would prompt, so portal speaks."""
    async with running_agent(system_bus.address, session_bus.address) as agent:
        async with owner(session_bus.address, kded, ["networkmanagement", "kscreen"]):
            await until(lambda: agent.state.desktop is DesktopHandler.KDE, "plasma-nm to be seen")
            sent = status()
            stand_in.set_status(sent)
            await heard(agent, sent)
            assert desktop.displayed() == 0 and agent.state.deferred
        await until(lambda: desktop.displayed() == 1, "portal's own notification")
        assert agent.state.desktop is DesktopHandler.NONE


async def test_a_kded_without_plasma_nm_is_no_prompt_until_the_module_registers(
    desktop: Desktop, stand_in: StandInDaemon, system_bus: PrivateBus, session_bus: PrivateBus
) -> None:
    """A kded that a KDE application started under another desktop has no networkmanagement
    module (it is "OnlyShowIn=KDE"): no prompt, portal speaks. A module that registers later
    says so with moduleRegistered, and is then seen."""
    modules = ["kscreen"]
    async with (
        owner(session_bus.address, "org.kde.kded6", modules) as kded,
        running_agent(system_bus.address, session_bus.address) as agent,
    ):
        stand_in.set_status(status())
        await until(lambda: desktop.displayed() == 1, "portal's own notification")
        assert agent.state.desktop is DesktopHandler.NONE
        modules.append("networkmanagement")
        kded.send(
            Message.new_signal(
                "/modules/networkmanagement", "org.kde.kf6.KDEDModule", "moduleRegistered", "o",
                ["/modules/networkmanagement"],
            )
        )  # fmt: skip
        await until(lambda: agent.state.desktop is DesktopHandler.KDE, "plasma-nm to be seen")
        await until(lambda: desktop.displayed() == 0, "portal's notification to give way")


# ---- with real NetworkManager and the real daemon, in the lab ----


@pytest.mark.root
@pytest.mark.lab
@requires_lab
@pytest.mark.parametrize(
    ("dns_mode", "nm_check"),
    [("hijack", True), ("blocked", True), ("hijack", False)],
    ids=["nm-sees-it", "resolver-blocked", "nm-checks-nothing"],
)
async def test_real_networkmanager_and_daemon_beside_gnome_shell(
    lab_factory: LabFactory,
    desktop: Desktop,
    session_bus: PrivateBus,
    services: Path,
    dns_mode: str,
    nm_check: bool,
) -> None:
    """All real but GNOME Shell itself: NetworkManager joins the hotel network, the daemon on
    the laptop finds the portal and asks the laptop's resolver, and the agent beside "GNOME
    Shell" decides.

    - The hotel hijacks every DNS query and NetworkManager checks: its check sees the portal
      (PORTAL) and the laptop's resolver resolves the portal's name. GNOME's window opens and
      works: portal stays quiet.
    - The hotel blocks the laptop's resolver: NetworkManager cannot resolve its check host
      (LIMITED), GNOME shows nothing, portal speaks.
    - NetworkManager as distributions ship it, without a check of its own: it never says
      PORTAL, GNOME shows nothing, portal speaks.
    """
    lab = lab_factory(
        dns_mode=dns_mode, nm_check=nm_check, nm_check_interval_s=3, bus_policy_files=[POLICY]
    )
    daemon = spawn_in_lab(lab)
    try:
        # The laptop's system bus is a filesystem socket: the agent reaches it from here.
        async with agent_beside_gnome(lab.bus_address, session_bus.address, services) as agent:

            def asked() -> bool:
                now = agent.state.status
                return (
                    now is not None
                    and now.state is Connectivity.CAPTIVE
                    and now.user_dns in ("resolves", "fails")
                )

            await eventually(asked, 45, "the daemon to see the portal and ask the resolver")
            now = agent.state.status
            assert now is not None
            assert now.user_dns == ("fails" if dns_mode == "blocked" else "resolves"), (
                daemon.read_log()[-3000:]
            )
            if nm_check and dns_mode == "hijack":
                await eventually(
                    lambda: (
                        agent.state.status is not None
                        and agent.state.status.nm_connectivity is Connectivity.CAPTIVE
                    ),
                    30,
                    "NetworkManager's PORTAL",
                )
                await until(lambda: agent.state.deferred, "the agent to leave it to GNOME")
                assert desktop.displayed() == 0
                flashed = [n["summary"] for n in desktop.history()]
                print(f"\nlab, NM sees the portal: GNOME's prompt alone; flashed first: {flashed}")
                return
            await until(lambda: desktop.displayed() == 1, "portal's own notification")
            assert now.nm_connectivity is not Connectivity.CAPTIVE
            if not nm_check:
                assert now.nm_connectivity is Connectivity.UNKNOWN  # its FULL means nothing
            desktop.ctl("close")
            (note,) = desktop.history()
            assert note["summary"] == "Sign in to hotel-wifi"
            assert "GNOME" not in note["body"]  # GNOME shows nothing: nothing to explain
    finally:
        daemon.stop()
