"""The per-user agent: the daemon's signals in, desktop notifications and a tray icon out.

Wiring only: it follows the daemon on its bus (system by default), feeds what it hears to
`portal/core/agent_logic.py`, and carries out the actions with `edges/notify.py` (notifications),
`edges/tray.py` (StatusNotifierItem) and `portal open` (the sign-in window, a child process of
its own: portal/sign_in.py). It decides nothing
itself, needs no privileges, and never starts a browser as root. A daemon restart, a
notification server that comes and goes, or no tray at all are logged and lived with; only
losing a bus connection ends it (the user unit restarts it).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from dbus_next import Message, MessageType, NameFlag, RequestNameReply
from dbus_next.aio import MessageBus

from portal import config
from portal.core.agent_logic import (
    AgentAction,
    AgentEvent,
    AgentState,
    CloseNotification,
    DaemonVanished,
    NotificationShown,
    OpenPage,
    OverridesListed,
    RequestCheck,
    ShowNotification,
    StatusChanged,
    UpdateTray,
    step,
)
from portal.core.report import StatusReport
from portal.edges.bus import (
    add_match,
    close,
    connect,
    from_variants,
    name_owner,
    name_owner_changed,
    name_owner_rule,
)
from portal.edges.client import Client
from portal.edges.control_api import BUS_NAME, INTERFACE, OBJECT_PATH, describe, resolve_bus
from portal.edges.notify import NotificationServer, NotifyFailed
from portal.edges.tray import Tray
from portal.errors import ConfigError, PortalError
from portal.logsetup import setup_logging

log = logging.getLogger("portal.agent")

STATUS_READ_ATTEMPTS = 3
AGENT_NAME = "org.portalhelper.PortalAgent1"  # on the session bus: one agent per session


class DaemonLink:
    """The daemon as the agent sees it: its signals, its status, its overrides.

    Signals count only from the current owner of the daemon's name: anyone on the system bus
    can emit a `StateChanged`, and a forged sign-in URL would be phishing.
    """

    def __init__(self, bus: MessageBus, choice: str, emit: Callable[[AgentEvent], None]) -> None:
        self._bus = bus
        self._choice = choice
        self._client = Client(bus, choice)
        self._emit = emit
        self._owner: str | None = None
        self._signals_seen = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        # Subscribe before reading, so that no change falls between the read and the signals.
        self._bus.add_message_handler(self._on_message)
        for rule in (
            f"type='signal',sender='{BUS_NAME}',interface='{INTERFACE}',path='{OBJECT_PATH}'",
            name_owner_rule(BUS_NAME),
        ):
            await add_match(self._bus, rule)
        self._owner = await name_owner(self._bus, BUS_NAME)
        if self._owner is None:
            log.warning(
                "the portal daemon is not running on %s; waiting for it", describe(self._choice)
            )
            self._emit(DaemonVanished())
            return
        await self.refresh()

    def stop(self) -> None:
        self._bus.remove_message_handler(self._on_message)
        for task in self._tasks:
            task.cancel()

    async def check(self) -> None:
        try:
            await self._client.call("Check")
        except PortalError as exc:
            log.warning("check now: %s", exc)

    async def refresh(self) -> None:
        """Read the status (again if a signal crossed the call) and the overrides."""
        try:
            for _ in range(STATUS_READ_ATTEMPTS):
                seen = self._signals_seen
                status = await self._client.status()
                if self._signals_seen == seen:
                    self._emit(StatusChanged(status))
                    break
            await self.refresh_overrides()
        except PortalError as exc:
            log.warning("cannot read the daemon's status: %s", exc)

    async def refresh_overrides(self) -> None:
        try:
            rows = await self._client.overrides()
        except PortalError as exc:
            log.warning("cannot list overrides: %s", exc)
            return
        self._emit(OverridesListed(tuple(rows)))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_message(self, msg: Message) -> None:
        if msg.message_type != MessageType.SIGNAL:
            return
        new_owner = name_owner_changed(msg, BUS_NAME)
        if new_owner is not None:
            if not new_owner:
                log.info("the portal daemon left the bus; waiting for it to come back")
                self._owner = None
                self._emit(DaemonVanished())
                return
            log.info("the portal daemon is on the bus (%s)", new_owner)
            self._owner = new_owner
            self._spawn(self.refresh())
            return
        if msg.interface != INTERFACE or msg.path != OBJECT_PATH:
            return
        if msg.sender != self._owner:
            log.debug("%s from %s, not the daemon, ignoring", msg.member, msg.sender)
            return
        if msg.member == "StateChanged" and msg.signature == "a{sv}":
            self._signals_seen += 1
            self._emit(StatusChanged(from_variants(StatusReport, msg.body[0])))
        elif msg.member == "OverridesChanged":
            self._spawn(self.refresh_overrides())


class Agent:
    """The loop: events → core → actions, one event at a time."""

    def __init__(
        self, *, browser: str = "", bus: str = "system", config_path: str | None = None
    ) -> None:
        self.browser = browser
        self.bus = bus  # where the daemon is, for the sign-in window's process
        self.config_path = config_path
        self.window: asyncio.subprocess.Process | None = None  # `portal open`, while it runs
        self.events: asyncio.Queue[AgentEvent] = asyncio.Queue()
        self.state = AgentState()
        self.notifier: NotificationServer | None = None
        self.tray: Tray | None = None
        self.daemon: DaemonLink | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def handle(self, event: AgentEvent) -> None:
        self.state, actions = step(self.state, event)
        for action in actions:
            await self.perform(action)

    async def perform(self, action: AgentAction) -> None:
        """Carry out one action; a failure is logged, never raised (one failed note is no crash)."""
        match action:
            case ShowNotification(note, replaces_id):
                nid, serial = 0, 0
                if self.notifier is not None:
                    try:
                        nid, serial = await self.notifier.show(note, replaces_id)
                        log.info("notification %d: %s", nid, note.summary)
                    except NotifyFailed as exc:
                        log.warning("cannot show the %s notification: %s", note.kind, exc)
                # Fed back at once, before the next event, so the core knows the id.
                await self.handle(NotificationShown(nid, note.kind, serial))
            case CloseNotification(nid):
                if self.notifier is not None:
                    try:
                        await self.notifier.close(nid)
                    except NotifyFailed as exc:
                        log.debug("closing notification %d: %s, ignoring", nid, exc)
            case OpenPage(url):
                await self._open_window(url)
            case RequestCheck():
                if self.daemon is not None:
                    # In the background: polkit may ask for a password for a while.
                    task = asyncio.get_running_loop().create_task(self.daemon.check())
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
            case UpdateTray(view):
                if self.tray is not None:
                    self.tray.update(view)

    async def _open_window(self, url: str) -> None:
        """`portal open --url URL` as a child: the private sign-in window, one at a time."""
        if self.window is not None and self.window.returncode is None:
            log.info("the sign-in window is open already (pid %d)", self.window.pid)
            return
        # Loaded on the first click only: the proxy's modules need not stay in every session.
        from portal.sign_in import start_window_process

        try:
            self.window = await start_window_process(
                url, bus=self.bus, config_path=self.config_path, browser=self.browser
            )
        except PortalError as exc:
            log.warning("not opening the sign-in page: %s", exc)
            return
        log.info("opened %s (portal open, pid %d)", url, self.window.pid)
        task = asyncio.get_running_loop().create_task(self._reap(self.window))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reap(self, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        log.info("the sign-in window ended (portal open exited %d)", code)

    async def run(self) -> None:
        while True:
            await self.handle(await self.events.get())


async def run_agent(
    *,
    bus: str | None = None,
    session_bus: str = "session",
    browser: str = "",
    config_path: str | None = None,
    ready: Callable[[Agent], None] | None = None,
) -> None:
    """Run until cancelled or until a bus connection is lost (then raise PortalError); return
    at once when another agent already runs in the session.

    `bus` is where the daemon is (default: $PORTAL_BUS or the system bus); `session_bus` is
    where the notification server and the tray are; `browser` the everyday browser's command,
    for when no sign-in window can be made; `config_path` the config file `portal open` reads.
    """
    choice = resolve_bus(bus)
    agent = Agent(browser=browser, bus=choice, config_path=config_path)
    emit = agent.events.put_nowait
    session = await connect(session_bus)
    # One agent per session: the user unit and XDG autostart may both start one, and two
    # would notify twice.
    owned = await session.request_name(AGENT_NAME, NameFlag.DO_NOT_QUEUE)
    if owned is not RequestNameReply.PRIMARY_OWNER:
        log.info("another portal agent runs in this session (%s is taken); exiting", AGENT_NAME)
        await close(session)
        return
    try:
        daemon_bus = session if choice == session_bus else await connect(choice)
    except PortalError:
        await close(session)
        raise
    buses = {id(session): session, id(daemon_bus): daemon_bus}
    gone = {key: asyncio.ensure_future(b.wait_for_disconnect()) for key, b in buses.items()}
    agent.notifier = NotificationServer(session, emit)
    agent.tray = Tray(session, emit)
    agent.daemon = DaemonLink(daemon_bus, choice, emit)
    try:
        await agent.notifier.start()
        try:
            await agent.tray.start()
        except Exception as exc:  # a tray is a nicety: any failure of it is not the agent's
            log.warning("no tray icon: %s", exc)
            agent.tray = None
        await agent.daemon.start()
        log.info("portal agent running (daemon on %s)", describe(choice))
        if ready is not None:
            ready(agent)
        loop_task = asyncio.ensure_future(agent.run())
        try:
            done, _ = await asyncio.wait(
                [loop_task, *gone.values()], return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            loop_task.cancel()
            # Bounded: a cancellation swallowed somewhere below must not hang the exit.
            await asyncio.wait([loop_task], timeout=5)
        if loop_task in done:
            loop_task.result()  # re-raise what broke the loop
        lost = [name for name, b in (("session", session), (choice, daemon_bus)) if not b.connected]
        raise PortalError(f"lost the connection to the {' and '.join(lost) or 'D-Bus'} bus")
    finally:
        agent.daemon.stop()
        agent.notifier.stop()
        if agent.tray is not None:
            agent.tray.stop()
        for key, b in buses.items():
            await close(b, gone[key])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="portal agent",
        description="Per-user agent: desktop notifications and a tray icon for captive portals.",
    )
    p.add_argument(
        "--bus", help="the daemon's bus: system (default), session or an address ($PORTAL_BUS)"
    )
    p.add_argument(
        "--browser",
        default="",
        help="everyday browser, for when no private sign-in window can be made "
        "(default: $BROWSER, xdg-open)",
    )
    p.add_argument(
        "--config",
        help="config file for the browser and bus defaults (default: /etc/portal/portal.toml)",
    )
    p.add_argument("--log-level", choices=["debug", "info"], default="info")
    return p


def _defaults(args: argparse.Namespace) -> tuple[str, str]:
    """The bus and browser: flags, then $PORTAL_BUS (bus), then the shared config file.

    The file is the daemon's; an agent that cannot read or parse it carries on with the
    built-in defaults (the system bus; $BROWSER or xdg-open), saying so.
    """
    try:
        cfg = config.load(args.config)
    except ConfigError as exc:
        if args.config is not None:
            raise
        log.warning("%s; using the defaults", exc)
        cfg = config.Config()
    bus = args.bus or os.environ.get("PORTAL_BUS") or cfg.bus
    return bus, args.browser or cfg.browser


async def _main_async(args: argparse.Namespace) -> None:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    # systemd stops the unit with SIGTERM: end cleanly, closing our notification bus connection.
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, task.cancel)
    bus, browser = _defaults(args)
    try:
        await run_agent(bus=bus, browser=browser, config_path=args.config)
    except asyncio.CancelledError:
        log.info("portal agent stopping")


def main(argv: Sequence[str] | None = None) -> int:
    """`portal agent ...`: 0 when stopped by a signal, 1 on a runtime error, 2 on usage."""
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, "portal-agent")
    try:
        asyncio.run(_main_async(args))
    except ConfigError as exc:
        print(f"portal: error: {exc}", file=sys.stderr)
        return 2
    except PortalError as exc:
        print(f"portal: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
