"""The per-user agent: the daemon's signals in, desktop notifications and a tray icon out.

Wiring only: it follows the daemon on its bus (system by default; edges/client.py DaemonLink)
and the desktop's own captive-portal prompt on the session bus (edges/desktop.py), feeds what
it hears to `portal/core/agent_logic.py`, and carries out the actions with `edges/notify.py`
(notifications), `edges/tray.py` (StatusNotifierItem) and `portal open` (the sign-in window, a
child process of its own: portal/sign_in.py). It decides nothing itself (not even whether to
speak or leave the word to the desktop), needs no privileges, and never starts a browser as
root. A daemon restart, a notification server that comes and goes, or no tray at all are
logged and lived with; only losing a bus connection ends it (the user unit restarts it).
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

from dbus_next import NameFlag, RequestNameReply

from portal import config
from portal.core.agent_logic import (
    DESKTOP_PROMPT_NAME,
    AgentAction,
    AgentEvent,
    AgentState,
    CloseNotification,
    DaemonVanished,
    NotificationShown,
    OpenPage,
    RequestAskAgain,
    RequestCheck,
    RequestDontAsk,
    ShowNotification,
    SignInNotification,
    UpdateTray,
    step,
)
from portal.edges.bus import close, connect
from portal.edges.client import DaemonLink
from portal.edges.control_api import describe, resolve_bus
from portal.edges.desktop import DesktopWatch
from portal.edges.notify import NotificationServer, NotifyFailed
from portal.edges.tray import Tray
from portal.errors import ConfigError, PortalError
from portal.logsetup import setup_logging

log = logging.getLogger("portal.agent")

AGENT_NAME = "org.portalhelper.PortalAgent1"  # on the session bus: one agent per session


class Agent:
    """The loop: events → core → actions, one event at a time."""

    def __init__(
        self,
        *,
        browser: str = "",
        bus: str = "system",
        config_path: str | None = None,
        sign_in_notification: SignInNotification = SignInNotification.AUTO,
    ) -> None:
        self.browser = browser
        self.bus = bus  # where the daemon is, for the sign-in window's process
        self.config_path = config_path
        self.window: asyncio.subprocess.Process | None = None  # `portal open`, while it runs
        self.events: asyncio.Queue[AgentEvent] = asyncio.Queue()
        self.state = AgentState(setting=sign_in_notification)
        self.notifier: NotificationServer | None = None
        self.tray: Tray | None = None
        self.daemon: DaemonLink | None = None
        self.desktop: DesktopWatch | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def handle(self, event: AgentEvent) -> None:
        before = self.state
        self.state, actions = step(self.state, event)
        if self.state.deferred and not before.deferred:
            who = DESKTOP_PROMPT_NAME.get(self.state.desktop)
            if who is not None and self.state.setting is SignInNotification.AUTO:
                log.info("no sign-in notification of portal's: %s asks for it", who)
            else:
                log.info("no sign-in notification: sign_in_notification is %s", self.state.setting)
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
            case RequestDontAsk(network_id):
                if self.daemon is not None:
                    self._background(self.daemon.dont_ask(network_id))
            case RequestAskAgain(network_id):
                if self.daemon is not None:
                    self._background(self.daemon.ask_again(network_id))

    def _background(self, coro: Any) -> None:
        """A call to the daemon that polkit may hold for a password: never block the loop."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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
    sign_in_notification: SignInNotification = SignInNotification.AUTO,
    ready: Callable[[Agent], None] | None = None,
) -> None:
    """Run until cancelled or until a bus connection is lost (then raise PortalError); return
    at once when another agent already runs in the session.

    `bus` is where the daemon is (default: $PORTAL_BUS or the system bus); `session_bus` is
    where the notification server, the tray and the desktop's own portal prompt are; `browser`
    the everyday browser's command, for when no sign-in window can be made; `config_path` the
    config file `portal open` reads; `sign_in_notification` when to speak (agent_logic.py).
    """
    choice = resolve_bus(bus)
    agent = Agent(
        browser=browser,
        bus=choice,
        config_path=config_path,
        sign_in_notification=sign_in_notification,
    )
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
    agent.desktop = DesktopWatch(session, emit)
    agent.daemon = DaemonLink(daemon_bus, choice, emit)
    try:
        await agent.notifier.start()
        try:
            await agent.tray.start()
        except Exception as exc:  # a tray is a nicety: any failure of it is not the agent's
            log.warning("no tray icon: %s", exc)
            agent.tray = None
        # The desktop first: the first status is judged knowing who else prompts.
        await agent.desktop.start()
        if await agent.daemon.start():
            await agent.daemon.refresh()
        else:
            log.warning("the portal daemon is not running on %s; waiting for it", describe(choice))
            emit(DaemonVanished())
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
        agent.desktop.stop()
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
        "--sign-in-notification",
        choices=[s.value for s in SignInNotification],
        help="when to show portal's own sign-in notification: auto (only when the desktop's "
        "own prompt will not come or will not work), always, never (the tray alone); "
        "default: the config's sign_in_notification",
    )
    p.add_argument(
        "--config",
        help="config file for the browser and bus defaults (default: /etc/portal/portal.toml)",
    )
    p.add_argument("--log-level", choices=["debug", "info"], default="info")
    return p


def _defaults(args: argparse.Namespace) -> tuple[str, str, SignInNotification]:
    """The bus, browser and sign-in notification setting: flags, then $PORTAL_BUS (bus), then
    the shared config file.

    The file is the daemon's; an agent that cannot read or parse it carries on with the
    built-in defaults (the system bus; $BROWSER or xdg-open; "auto"), saying so.
    """
    try:
        cfg = config.load(args.config)
    except ConfigError as exc:
        if args.config is not None:
            raise
        log.warning("%s; using the defaults", exc)
        cfg = config.Config()
    bus = args.bus or os.environ.get("PORTAL_BUS") or cfg.bus
    setting = SignInNotification(args.sign_in_notification or cfg.sign_in_notification)
    return bus, args.browser or cfg.browser, setting


async def _main_async(args: argparse.Namespace) -> None:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    # systemd stops the unit with SIGTERM: end cleanly, closing our notification bus connection.
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, task.cancel)
    bus, browser, setting = _defaults(args)
    try:
        await run_agent(
            bus=bus, browser=browser, config_path=args.config, sign_in_notification=setting
        )
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
