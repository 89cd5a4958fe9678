"""`portal open`: the sign-in page in a private window, or only its proxy, for one episode.

The process runs as the user who asked (the agent starts it as a child when "Open sign-in
page" is clicked; the tray and the CLI do the same), so the proxy never outlives its window,
costs the agent and the daemon nothing, and needs no privilege: "only this uid" is the uid of
this process. It reads the network's interface, venue DNS, sign-in URL and overrides from the
daemon over D-Bus and follows `StateChanged` and `OverridesChanged` as the agent does
(edges/client.py DaemonLink: from the daemon's own bus name only, since anyone on the bus can
emit a signal and a forged venue DNS would be phishing), runs portal/edges/sign_in_proxy.py
and portal/edges/sign_in_window.py, and ends when the network turns online, changes, the time
bound passes, the window is closed, or on Ctrl-C, saying which. Every rule is in
portal/core/sign_in.py; this module only wires.

Where a window cannot work (no sign-in browser installed, `sign_in_browser = "none"`, no
interface or venue DNS known, the daemon in another network namespace) it opens the page the
old way, in the everyday browser (`browser`, $BROWSER, xdg-open), with one line saying why.
It never starts a browser as root.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from portal import config
from portal.core.agent_logic import OverridesListed, StatusChanged
from portal.core.report import OverrideView, StatusReport
from portal.core.sign_in import (
    DEFAULT_MAX_TIME_S,
    END_TEXT,
    HANDOFF_S,
    ONLINE_GRACE_S,
    PROXY_HOST,
    Browser,
    EndReason,
    Episode,
    NoBrowser,
    choose_browser,
    end_reason,
    episode_of,
    proxy_obstacle,
    sign_in_url,
)
from portal.edges.bus import close, connect
from portal.edges.client import DaemonEvent, DaemonLink
from portal.edges.control_api import describe, resolve_bus
from portal.edges.sign_in_proxy import Limits, SignInProxy
from portal.edges.sign_in_window import SignInWindow, which
from portal.errors import ConfigError, DaemonUnreachable, PortalError
from portal.opener import open_url

log = logging.getLogger("portal.sign_in")

EXIT_CODES = {
    EndReason.ONLINE: 0,
    EndReason.WINDOW_CLOSED: 0,
    EndReason.INTERRUPTED: 130,
    EndReason.NETWORK_CHANGED: 1,
    EndReason.TIME_BOUND: 1,
}


@dataclass(frozen=True, slots=True)
class OpenOptions:
    """What `portal open` (or the agent's button) was asked to do."""

    bus: str | None = None
    url: str = ""  # the page to open; "" = the daemon's sign-in URL
    proxy_only: bool = False
    print_only: bool = False
    max_time_s: float = DEFAULT_MAX_TIME_S
    config_path: str | None = None
    browser: str = ""  # the everyday browser, for the fallback
    limits: Limits = field(default_factory=Limits)


def say(text: str) -> None:
    """One line for the user, on stderr (stdout belongs to `--proxy`'s URL and `--print`)."""
    print(f"portal: {text}", file=sys.stderr, flush=True)


# --- the daemon, followed (edges/client.py DaemonLink, as the agent follows it) ---------------


def _take_newest(
    heard: asyncio.Queue[DaemonEvent],
) -> tuple[StatusReport | None, tuple[OverrideView, ...]]:
    """Everything heard so far, newest last: the status and overrides to start from."""
    status: StatusReport | None = None
    overrides: tuple[OverrideView, ...] = ()
    while not heard.empty():
        event = heard.get_nowait()
        if isinstance(event, StatusChanged):
            status = event.status
        elif isinstance(event, OverridesListed):
            overrides = _named(event.overrides)
    return status, overrides


def _named(rows: tuple[OverrideView, ...]) -> tuple[OverrideView, ...]:
    """Overrides with a name (a row without one, from another version, says nothing)."""
    return tuple(row for row in rows if row.name)


# --- the run --------------------------------------------------------------------------------


def interface_here(name: str) -> bool:
    try:
        socket.if_nametoindex(name)
    except OSError:
        return False
    return True


def load_config(path: str | None) -> config.Config:
    """The shared config file; the default one unreadable means the defaults, said once."""
    try:
        return config.load(path)
    except ConfigError as exc:
        if path is not None:
            raise
        log.warning("%s; using the defaults", exc)
        return config.Config()


async def run(options: OpenOptions) -> int:
    """`portal open`; returns the exit status."""
    choice = resolve_bus(options.bus)
    bus = await connect(choice)
    heard: asyncio.Queue[DaemonEvent] = asyncio.Queue()
    link = DaemonLink(bus, choice, heard.put_nowait)
    try:
        if not await link.start():
            raise DaemonUnreachable(
                f"the portal daemon is not running on {describe(choice)}; start it "
                "(systemctl enable --now portal.service) or pass --bus to reach another bus"
            )
        await link.read()
        # What the read said is the newest; signals from now on are newer still.
        newest, overrides = _take_newest(heard)
        assert newest is not None  # read() emitted it or raised
        status = newest
        if options.print_only:
            url = sign_in_url(status, options.url)
            if url is None:
                raise PortalError(_no_page(status, options.url))
            print(url)
            return 0
        return await _run_episode(options, heard, status, overrides)
    finally:
        link.stop()
        await close(bus)


def _no_page(status: StatusReport, asked: str) -> str:
    if asked:
        return f"{asked!r} is not an http(s) URL"
    return f"no sign-in page known (state: {status.state}); try 'portal check'"


async def _run_episode(
    options: OpenOptions,
    heard: asyncio.Queue[DaemonEvent],
    status: StatusReport,
    overrides: tuple[OverrideView, ...],
) -> int:
    cfg = load_config(options.config_path)
    everyday = options.browser or cfg.browser
    url = ""
    browser: Browser | None = None
    if not options.proxy_only:
        found = sign_in_url(status, options.url)
        if found is None:
            raise PortalError(_no_page(status, options.url))
        url = found
        if os.geteuid() == 0:
            raise PortalError(f"refusing to start a browser as root; open {url} as your user")
        chosen = choose_browser(cfg.sign_in_browser, which)
        if isinstance(chosen, NoBrowser):
            return _fallback(url, chosen.reason, everyday)
        browser = chosen
    obstacle = proxy_obstacle(status, overrides, interface_here=interface_here(status.interface))
    if obstacle is not None:
        if options.proxy_only:
            raise PortalError(f"cannot start the sign-in proxy: {obstacle}")
        return _fallback(url, obstacle, everyday)

    episode = episode_of(status)
    proxy = SignInProxy(
        interface=status.interface,
        network_id=status.network_id,
        venue_dns=status.venue_dns,
        overrides=overrides,
        uid=os.getuid(),
        limits=options.limits,
    )
    port = await proxy.start()
    window: SignInWindow | None = None
    loop = asyncio.get_running_loop()
    ended: asyncio.Future[EndReason] = loop.create_future()

    def end(reason: EndReason) -> None:
        if not ended.done():
            ended.set_result(reason)

    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    for signum in signals:
        loop.add_signal_handler(signum, end, EndReason.INTERRUPTED)
    timer = loop.call_later(options.max_time_s, end, EndReason.TIME_BOUND)
    tasks: list[asyncio.Task[Any]] = []
    try:
        if options.proxy_only:
            print(f"socks5://{PROXY_HOST}:{port}", flush=True)
            if episode.started_online:
                say("the network is already online; the proxy runs until the network changes")
        else:
            assert browser is not None
            try:
                window = await SignInWindow.open(browser, url=url, proxy_port=port)
            except PortalError as exc:
                return _fallback(url, str(exc), everyday)
            say(f"opening {url} in a private sign-in window ({browser.name})")
        tasks.append(asyncio.ensure_future(_follow(heard, episode, proxy, end)))
        if window is not None:
            tasks.append(asyncio.ensure_future(_watch_window(window, end, url, everyday)))
        reason = await ended
        return await _finish(reason, proxy, window, options, end_signals=signals)
    finally:
        timer.cancel()
        for signum in signals:
            loop.remove_signal_handler(signum)
        for task in tasks:
            task.cancel()
        await proxy.close()
        if window is not None:
            await window.close()


async def _follow(
    heard: asyncio.Queue[DaemonEvent],
    episode: Episode,
    proxy: SignInProxy,
    end: Callable[[EndReason], None],
) -> None:
    while True:
        event = await heard.get()
        if isinstance(event, OverridesListed):
            proxy.update(venue_dns=proxy.venue_dns, overrides=_named(event.overrides))
            continue
        if not isinstance(event, StatusChanged):
            log.info("the portal daemon left the bus; the proxy keeps what it knew")
            continue
        status = event.status
        proxy.update(venue_dns=status.venue_dns or proxy.venue_dns, overrides=proxy.overrides)
        reason = end_reason(episode, status)
        if reason is not None:
            end(reason)
            return


async def _watch_window(
    window: SignInWindow, end: Callable[[EndReason], None], url: str, everyday: str
) -> None:
    code = await window.wait()
    if window.handed_off:
        # A launcher handed the page to a browser already running: that window is out of
        # reach, so the proxy serves it until the end and cannot close it.
        say(f"{window.browser.name} handed the page to a window portal cannot close")
        return
    if window.exited_after_s is not None and window.exited_after_s < HANDOFF_S and code != 0:
        for line in window.stderr_tail:
            log.warning("%s: %s", window.browser.name, line)
        say(f"{window.browser.name} exited at once (status {code}); see the lines above")
        with contextlib.suppress(PortalError):
            _fallback(url, f"the sign-in browser {window.browser.name} failed", everyday)
    end(EndReason.WINDOW_CLOSED)


async def _finish(
    reason: EndReason,
    proxy: SignInProxy,
    window: SignInWindow | None,
    options: OpenOptions,
    *,
    end_signals: tuple[signal.Signals, ...],
) -> int:
    what = "sign-in proxy" if options.proxy_only else "sign-in window"
    if reason is EndReason.ONLINE and window is not None and window.handed_off:
        # The window cannot be closed: its next page says it is done, for a little while.
        proxy.online = True
        say(f"the network is online; you can close the sign-in window ({ONLINE_GRACE_S:.0f} s)")
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def stop() -> None:
            if not done.done():
                done.set_result(None)

        for signum in end_signals:
            loop.add_signal_handler(signum, stop)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done, ONLINE_GRACE_S)
        return EXIT_CODES[reason]
    if reason is EndReason.ONLINE and window is not None:
        say(f"the network is online; closing the {what}")
    else:
        say(f"{what} ended: {END_TEXT[reason]}")
    return EXIT_CODES[reason]


def _fallback(url: str, reason: str, everyday: str) -> int:
    """Today's behaviour: the page in the everyday browser, with one line saying why."""
    say(f"opening {url} in your usual browser: {reason}")
    open_url(url, everyday)
    return 0


# --- the agent's side -----------------------------------------------------------------------


async def start_window_process(
    url: str, *, bus: str, config_path: str | None = None, browser: str = ""
) -> asyncio.subprocess.Process:
    """Start `portal open --url URL` as a child (the agent's "Open sign-in page")."""
    if os.geteuid() == 0:
        raise PortalError(f"refusing to start a browser as root; open {url} as your user")
    argv = [sys.executable, "-m", "portal", "open", "--url", url, "--bus", bus]
    if config_path:
        argv += ["--config", config_path]
    if browser:
        argv += ["--browser", browser]
    try:
        return await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL)
    except OSError as exc:
        raise PortalError(f"cannot run {sys.executable}: {exc.strerror}") from exc
