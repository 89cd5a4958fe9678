"""What the per-user agent shows: notifications for portal episodes, and the tray's view.

Pure: plain data in (the daemon's StatusReport and OverrideView rows, portal/core/report.py; what
the notification server reported), plain data out (show / close a notification, open a page). No
D-Bus, no asyncio, no logging, no processes; `portal/agent.py` and `portal/edges/` carry the
actions out.

The rules, one place:
- One sign-in notification per portal episode. An episode starts when the network turns captive
  and ends when it turns online, goes away, or the laptop moves to another network. Updates
  within an episode (a new sign-in URL) replace the notification instead of stacking one more;
  once the user dismissed it ("Not now", or closed it) it stays gone for that episode.
- When an episode ends online, the notification is replaced by a transient "Connected to ...".
  When it ends any other way, the notification is closed: it would point at a network we left.
- One reminder when the session's `seconds_remaining` (RFC 8908) runs low, per network; it re-arms
  when the session is extended above the threshold.
- Without the "actions" capability the sign-in URL goes into the body, since there is no button.
- Only http(s) URLs are ever opened: the URL comes from the venue's network, not from the user.
- One prompt, not two. GNOME Shell and plasma-nm prompt by themselves whenever NetworkManager
  says PORTAL (`desktop_prompt`). With `sign_in_notification = "auto"` the agent stays quiet
  (the tray still shows the state) only when such a prompt will come and can work: a desktop
  handler is present, NetworkManager itself says captive, and the user's own resolver resolves
  the portal's name; while the daemon is still asking that resolver it waits. Otherwise it
  speaks: no desktop handler, only portal's own probe saw the portal (NetworkManager's check
  host unresolvable, no check at all), or the desktop's window would fail. A notification of
  ours already up when the desktop's prompt takes over is closed.
- "Don't ask again" (a button of the sign-in notification, an entry of the tray's menu) asks the
  daemon to remember the network; on such a network (`status.quiet`) no sign-in notification
  is shown, the tray still says "Sign-in needed", and its menu offers "Ask again".
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit

from portal.core import user_dns
from portal.core.model import Connectivity
from portal.core.notes import network_notes
from portal.core.report import OverrideView, StatusReport

REMINDER_THRESHOLD_S = 300  # five minutes: time enough to find the sign-in page and pay
CONNECTED_TIMEOUT_MS = 8000  # the "Connected" note is feedback, not something to act on
# Opened when the network is captive but no sign-in URL is known: a plain-HTTP page that exists to
# be intercepted by portals (HTTPS pages cannot be redirected without certificate errors).
FALLBACK_URL = "http://neverssl.com/"

ACTION_OPEN = "default"  # the spec's key for clicking the notification itself
ACTION_LATER = "later"
ACTION_NEVER = "never"  # "Don't ask again" for this network

# NotificationClosed reasons (Desktop Notifications spec 1.2).
CLOSED_EXPIRED = 1
CLOSED_DISMISSED = 2
CLOSED_BY_CALL = 3


class Kind(enum.StrEnum):
    """Which of the agent's notifications is on screen."""

    SIGN_IN = "sign-in"
    REMINDER = "reminder"
    CONNECTED = "connected"


@dataclass(frozen=True, slots=True)
class Notification:
    """The content of one desktop notification, independent of any server."""

    kind: Kind
    summary: str
    body: str
    actions: tuple[tuple[str, str], ...] = ()  # (key, label); the spec flattens these pairs
    urgency: int = 1  # 0 low, 1 normal, 2 critical
    expire_timeout_ms: int = 0  # 0: stays until acted on
    transient: bool = False
    category: str = "network"


# ---- the desktop's own prompt ----


class DesktopHandler(enum.StrEnum):
    """The desktop component that prompts by itself when NetworkManager says PORTAL."""

    NONE = "none"
    # GNOME Shell (js/ui/status/network.js `_syncConnectivity`): when NM's Connectivity is
    # PORTAL and the primary connection is activated (not on the greeter), it calls
    # org.gnome.Shell.PortalHelper.Authenticate(connection, NM's check URI), once per
    # connection: a D-Bus activated "Hotspot Login" window (js/portalHelper/main.js), an
    # ephemeral WebKit session with no proxy, resolving names the system's way.
    GNOME = "gnome"
    # plasma-nm's kded module "networkmanagement" (kded/connectivitymonitor.cpp): when NM's
    # Connectivity turns Portal, a persistent notification "You need to log in to this network"
    # whose "Log in" opens http://networkcheck.kde.org in the everyday browser.
    KDE = "kde"


def desktop_handler(*, gnome_shell: bool, gnome_helper: bool, plasma_nm: bool) -> DesktopHandler:
    """Which handler answers in this session, from what the session bus shows.

    GNOME Shell counts only with its portal helper installed (activatable or running): without
    it Shell's call fails and nothing appears ("Error launching the portal helper"). plasma-nm
    counts only with its kded module loaded, which kded does only in a KDE session (the
    module's "OnlyShowIn": "KDE;"), so a kded started by a KDE application under GNOME is none.
    """
    if gnome_shell and gnome_helper:
        return DesktopHandler.GNOME
    if plasma_nm:
        return DesktopHandler.KDE
    return DesktopHandler.NONE


class SignInNotification(enum.StrEnum):
    """The `sign_in_notification` setting: when portal shows its own sign-in notification."""

    AUTO = "auto"  # when the desktop's own prompt will not come, or will not work
    ALWAYS = "always"  # every portal episode, whatever the desktop does
    NEVER = "never"  # never: the tray alone


class DesktopPrompt(enum.StrEnum):
    """What the desktop's own prompt will do about the portal in a status."""

    ABSENT = "absent"  # no desktop handler in this session
    SILENT = "silent"  # NetworkManager does not say PORTAL: the desktop shows nothing
    CHECKING = "checking"  # it prompts; the daemon is still asking the user's resolver
    FAILS = "fails"  # it prompts, but the user's resolver cannot resolve the portal's name
    WORKS = "works"  # it prompts, and the user's resolver resolves the portal's name
    UNSURE = "unsure"  # it prompts; whether it can reach the portal is not known


class Voice(enum.Enum):
    SPEAK = "speak"
    WAIT = "wait"
    QUIET = "quiet"


def desktop_prompt(handler: DesktopHandler, status: StatusReport) -> DesktopPrompt:
    if handler is DesktopHandler.NONE:
        return DesktopPrompt.ABSENT
    if status.nm_connectivity is not Connectivity.CAPTIVE:
        # Only portal's own probe saw the portal: NM's check host did not resolve through the
        # user's resolver (NM then says LIMITED), NM runs no check, or no NM at all.
        return DesktopPrompt.SILENT
    return {
        user_dns.RESOLVES: DesktopPrompt.WORKS,
        user_dns.FAILS: DesktopPrompt.FAILS,
        user_dns.CHECKING: DesktopPrompt.CHECKING,
    }.get(status.user_dns, DesktopPrompt.UNSURE)


def voice(setting: SignInNotification, prompt: DesktopPrompt) -> Voice:
    """Whether portal's own sign-in notification speaks, waits or stays quiet."""
    if setting is SignInNotification.ALWAYS:
        return Voice.SPEAK
    if setting is SignInNotification.NEVER:
        return Voice.QUIET
    if prompt is DesktopPrompt.WORKS:
        return Voice.QUIET
    if prompt is DesktopPrompt.CHECKING:
        return Voice.WAIT  # a few seconds at most: the daemon's lookup is bounded
    return Voice.SPEAK


DESKTOP_PROMPT_NAME: dict[DesktopHandler, str] = {
    DesktopHandler.GNOME: "GNOME's own sign-in window",
    DesktopHandler.KDE: "KDE's own sign-in notification",
}


# ---- events (what happened) ----


@dataclass(frozen=True, slots=True)
class StatusChanged:
    """The daemon published a status (StateChanged, or GetStatus at start / after a restart)."""

    status: StatusReport


@dataclass(frozen=True, slots=True)
class OverridesListed:
    """The daemon's override list was (re-)read."""

    overrides: tuple[OverrideView, ...]


@dataclass(frozen=True, slots=True)
class DaemonVanished:
    """The daemon left the bus (stopped or restarting)."""


@dataclass(frozen=True, slots=True)
class ServerChanged:
    """A notification server appeared (with its capabilities) or left (`capabilities` None).

    `server` names it (its unique bus name): the same server reported twice is no restart
    (a D-Bus activated server is reported once for the call that started it and once more for
    its arrival on the bus).
    """

    capabilities: frozenset[str] | None
    server: str = ""


@dataclass(frozen=True, slots=True)
class NotificationShown:
    """The server accepted a notification and gave it this id (0: it failed).

    `serial` is the D-Bus serial of the server's reply (0: unknown); see NotificationClosed.
    """

    notification_id: int
    kind: Kind
    serial: int = 0


@dataclass(frozen=True, slots=True)
class NotificationClosed:
    """The server closed a notification.

    `serial` is the D-Bus serial of the server's signal (0: unknown). A server numbers its
    messages in order, so a close sent before its reply to our Notify is about the instance that
    Notify replaced, even when the server gave the new one the same id (dunst re-uses the id
    it was asked to replace when that one is already gone).
    """

    notification_id: int
    reason: int
    serial: int = 0


@dataclass(frozen=True, slots=True)
class ActionInvoked:
    """The user pressed a notification's button (the notification server's ActionInvoked)."""

    notification_id: int
    action_key: str


@dataclass(frozen=True, slots=True)
class MenuClicked:
    """A tray menu entry was chosen (ids from `tray_menu`)."""

    item_id: int


@dataclass(frozen=True, slots=True)
class DesktopChanged:
    """The desktop's own captive-portal handler in this session came, went or was first seen."""

    handler: DesktopHandler


AgentEvent = (
    StatusChanged
    | OverridesListed
    | DaemonVanished
    | ServerChanged
    | NotificationShown
    | NotificationClosed
    | ActionInvoked
    | MenuClicked
    | DesktopChanged
)


# ---- actions (what to do) ----


@dataclass(frozen=True, slots=True)
class ShowNotification:
    """Send `notification`; `replaces_id` non-zero updates that one in place."""

    notification: Notification
    replaces_id: int = 0


@dataclass(frozen=True, slots=True)
class CloseNotification:
    """Close the notification with this id."""

    notification_id: int


@dataclass(frozen=True, slots=True)
class OpenPage:
    """Open the sign-in page at `url` (the sign-in window, else the browser)."""

    url: str


@dataclass(frozen=True, slots=True)
class RequestCheck:
    """Ask the daemon to probe now (its `Check()` method)."""


@dataclass(frozen=True, slots=True)
class UpdateTray:
    """Show this view in the tray."""

    view: TrayView


@dataclass(frozen=True, slots=True)
class RequestDontAsk:
    """Ask the daemon not to ask about this network again (its `DontAskAgain()`)."""

    network_id: str


@dataclass(frozen=True, slots=True)
class RequestAskAgain:
    """Ask the daemon to ask about this network again (its `AskAgain()`)."""

    network_id: str


AgentAction = (
    ShowNotification
    | CloseNotification
    | OpenPage
    | RequestCheck
    | UpdateTray
    | RequestDontAsk
    | RequestAskAgain
)


@dataclass(frozen=True, slots=True)
class AgentState:
    """Everything the agent remembers between events."""

    status: StatusReport | None = None  # None: the daemon is not on the bus
    overrides: tuple[OverrideView, ...] = ()
    capabilities: frozenset[str] | None = None  # None: no notification server
    server: str = ""  # which server the ids below belong to
    episode: str | None = None  # network_id of the current portal episode
    dismissed: bool = False  # the user dismissed this episode's notification
    reminded_on: str | None = None  # network_id the low-time reminder was given for
    shown_id: int = 0  # the notification of ours on screen, 0 = none
    shown: Notification | None = None  # what we last sent for `shown_id`
    shown_for: str = ""  # network_id the shown notification is about
    shown_serial: int = 0  # serial of the server's reply that gave `shown_id`
    page_url: str = ""  # what "Open sign-in page" opens right now
    desktop: DesktopHandler = DesktopHandler.NONE  # the desktop's own portal prompt
    setting: SignInNotification = SignInNotification.AUTO
    deferred: bool = False  # this episode's sign-in was left to the desktop's own prompt


# ---- formatting ----


def url_host(url: str) -> str:
    """The host part of an http(s) URL, or "" when there is none."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        return ""
    return host if parts.scheme in ("http", "https") else ""


def is_openable(url: str) -> bool:
    """Only http(s) URLs with a host: a `file:` or `javascript:` URL from a venue is refused."""
    return bool(url_host(url))


def escape_markup(text: str) -> str:
    """Escape for servers with "body-markup" (a subset of HTML): `&` in URLs would break it."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _network_label(status: StatusReport) -> str:
    return status.network or "this network"


def sign_in_notification(
    status: StatusReport,
    overrides: Sequence[OverrideView],
    capabilities: frozenset[str],
    desktop: DesktopHandler = DesktopHandler.NONE,
) -> Notification:
    """The "Sign in to <network>" notification for a captive status; `desktop` is the
    desktop's own handler, whose failure it explains."""
    host = url_host(status.portal_url)
    lines = []
    if status.expired:
        # The portal took the network back (its session ran out, or it signed us out).
        lines.append(f"Your session on {_network_label(status)} has ended.")
    if host:
        lines.append(f"{_network_label(status)} asks you to sign in at {host}.")
    else:
        lines.append(
            f"{_network_label(status)} asks you to sign in. Opening any plain http:// page "
            "should lead to its sign-in page."
        )
    # what stands in the way of this sign-in here (a VPN, an address clash: core/notes.py)
    lines += [note.text + "." for note in network_notes(status) if note.sign_in]
    pinned = host and any(o.active and o.name == host for o in overrides)
    if pinned:
        lines.append(f"portal pinned {host} so the page loads despite your DNS settings.")
    elif host and (host in status.portal_hosts or status.venue_dns):
        lines.append("portal sends the sign-in page's names to the network's own DNS.")
    if desktop_prompt(desktop, status) is DesktopPrompt.FAILS:
        lines.append(
            f"{DESKTOP_PROMPT_NAME[desktop]} cannot reach it: your DNS cannot resolve "
            f"{host or 'the sign-in page'}."
        )
    has_actions = "actions" in capabilities
    if has_actions:
        lines.append("The page opens in a private sign-in window.")
    else:
        lines.append(
            f"Open {status.portal_url or FALLBACK_URL} in a browser to sign in, or run "
            "'portal open' for a private sign-in window."
        )
    body = "\n".join(lines)
    if "body-markup" in capabilities:
        body = escape_markup(body)
    actions = (
        (
            (ACTION_OPEN, "Open sign-in page"),
            (ACTION_LATER, "Not now"),
            (ACTION_NEVER, "Don't ask again"),
        )
        if has_actions
        else ()
    )
    return Notification(
        kind=Kind.SIGN_IN,
        summary=sign_in_summary(status),
        body=body,
        actions=actions,
        urgency=1,
        expire_timeout_ms=0,
    )


def sign_in_summary(status: StatusReport) -> str:
    """The notification's title: "Sign in to <network>", or "Sign in again to ..." after expiry."""
    verb = "Sign in again to" if status.expired else "Sign in to"
    return f"{verb} {status.network}" if status.network else f"{verb} the network"


def reminder_notification(status: StatusReport, capabilities: frozenset[str]) -> Notification:
    """One note that the paid or timed session is about to end."""
    minutes = max(1, (status.seconds_remaining + 59) // 60)
    unit = "minute" if minutes == 1 else "minutes"
    body = f"Your session on {_network_label(status)} ends in about {minutes} {unit}."
    has_actions = "actions" in capabilities
    url = status.portal_url
    if url and not has_actions:
        body += f"\nOpen {url} to extend it."
    if "body-markup" in capabilities:
        body = escape_markup(body)
    actions: tuple[tuple[str, str], ...] = ()
    if has_actions and url:
        actions = ((ACTION_OPEN, "Open sign-in page"), (ACTION_LATER, "Not now"))
    return Notification(
        kind=Kind.REMINDER,
        summary=f"{status.network or 'Network'} session ends soon",
        body=body,
        actions=actions,
        urgency=1,
        expire_timeout_ms=0,
    )


def connected_notification(status: StatusReport) -> Notification:
    return Notification(
        kind=Kind.CONNECTED,
        summary=f"Connected to {status.network}" if status.network else "Connected",
        body="You are signed in; the internet is reachable.",
        urgency=0,
        expire_timeout_ms=CONNECTED_TIMEOUT_MS,
        transient=True,
        category="network.connected",
    )


# ---- the decision ----


def _show(
    state: AgentState, note: Notification, url: str, network_id: str
) -> tuple[AgentState, list[AgentAction]]:
    """Show `note`, replacing what is on screen; nothing when it is already shown as is."""
    if state.capabilities is None:
        # No server: remember what should be shown, so it appears when a server does.
        return replace(state, shown=note, shown_for=network_id, shown_id=0, page_url=url), []
    if state.shown_id and state.shown == note:
        return replace(state, page_url=url), []
    return (
        replace(state, shown=note, shown_for=network_id, page_url=url),
        [ShowNotification(note, replaces_id=state.shown_id)],
    )


def _close(state: AgentState) -> tuple[AgentState, list[AgentAction]]:
    actions: list[AgentAction] = []
    if state.shown_id:
        actions.append(CloseNotification(state.shown_id))
    return replace(state, shown_id=0, shown=None, shown_for="", page_url=""), actions


def _on_status(state: AgentState, status: StatusReport) -> tuple[AgentState, list[AgentAction]]:
    caps = state.capabilities or frozenset()
    state = replace(state, status=status)
    net = status.network_id

    if status.state is Connectivity.CAPTIVE:
        if state.episode != net:
            state = replace(state, episode=net, dismissed=False, deferred=False)
        if status.quiet:
            # The user asked not to be asked here: no prompt, and none left on screen.
            state = replace(state, dismissed=True)
            if state.shown is not None and state.shown.kind is Kind.SIGN_IN:
                return _close(state)
            return state, []
        return _sign_in(state, status, caps)

    if state.episode == net and status.state in (
        Connectivity.PROBING,
        Connectivity.UNKNOWN,
        Connectivity.LIMITED,
    ):
        # A re-probe or a flaky answer within the episode: the portal is still there.
        return state, []

    actions: list[AgentAction] = []
    if state.episode is not None:
        # "Connected" answers our own prompt; after the desktop's, the desktop had the word.
        ended_online = (
            status.state is Connectivity.ONLINE and state.episode == net and not state.deferred
        )
        state = replace(state, episode=None, dismissed=False, deferred=False)
        if ended_online:
            state, actions = _show(state, connected_notification(status), "", net)
    shown = state.shown
    if shown is not None and (
        shown.kind is Kind.SIGN_IN or (shown.kind is Kind.REMINDER and state.shown_for != net)
    ):
        # It points at a network we left, or a portal that is gone without a sign-in.
        state, closed = _close(state)
        actions += closed
    state, more = _reminder(state, status, caps)
    return state, actions + more


def _sign_in(
    state: AgentState, status: StatusReport, caps: frozenset[str]
) -> tuple[AgentState, list[AgentAction]]:
    """Within a portal episode: show the sign-in notification, or leave it to the desktop."""
    url = status.portal_url or FALLBACK_URL
    if state.dismissed:
        return state, []
    match voice(state.setting, desktop_prompt(state.desktop, status)):
        case Voice.SPEAK:
            note = sign_in_notification(status, state.overrides, caps, state.desktop)
            return _show(replace(state, deferred=False), note, url, status.network_id)
        case Voice.WAIT:
            return replace(state, page_url=url), []
    # Quiet: the tray still offers the page. A note of ours already up (NetworkManager said
    # PORTAL after portal's own probe did) gives way: one prompt, not two.
    actions: list[AgentAction] = []
    if state.shown is not None and state.shown.kind is Kind.SIGN_IN:
        state, actions = _close(state)
    return replace(state, page_url=url, deferred=True), actions


def _reminder(
    state: AgentState, status: StatusReport, caps: frozenset[str]
) -> tuple[AgentState, list[AgentAction]]:
    if status.state is not Connectivity.ONLINE or status.seconds_remaining < 0:
        return state, []
    if status.seconds_remaining > REMINDER_THRESHOLD_S:
        # The session was extended (or is long): a later run-down deserves a new reminder.
        return replace(state, reminded_on=None), []
    if state.reminded_on == status.network_id:
        return state, []
    state = replace(state, reminded_on=status.network_id)
    return _show(state, reminder_notification(status, caps), status.portal_url, status.network_id)


def step(state: AgentState, event: AgentEvent) -> tuple[AgentState, list[AgentAction]]:
    """Feed one event; return the new state and what to do, in order."""
    actions: list[AgentAction]
    match event:
        case StatusChanged(status):
            state, actions = _on_status(state, status)
            return state, [*actions, UpdateTray(tray_view(state))]
        case OverridesListed(rows):
            # a row without a name (a daemon from another version) has nothing to show
            state = replace(state, overrides=tuple(row for row in rows if row.name))
            actions = []
            shown = state.shown
            if state.status is not None and state.episode is not None and shown is not None:
                if shown.kind is Kind.SIGN_IN:
                    # A new pin changes the body ("portal pinned ..."); _show skips equal
                    # content.
                    caps = state.capabilities or frozenset()
                    note = sign_in_notification(state.status, state.overrides, caps, state.desktop)
                    state, actions = _show(state, note, state.page_url, state.episode)
            return state, [*actions, UpdateTray(tray_view(state))]
        case DaemonVanished():
            # Keep the notification: the daemon restarts and re-publishes; the portal is
            # still there or not regardless of the daemon.
            state = replace(state, status=None)
            return state, [UpdateTray(tray_view(state))]
        case ServerChanged(caps, server):
            if caps is not None and server and server == state.server:
                return replace(state, capabilities=caps), []
            # Ids of a previous server mean nothing to a new one. Without a server, `shown`
            # keeps what should be on screen, so that a server that comes up shows it.
            state = replace(state, capabilities=caps, server=server, shown_id=0)
            if caps is None or state.shown is None or state.shown.kind is Kind.CONNECTED:
                return state, []
            note = state.shown
            if state.status is not None and note.kind is Kind.SIGN_IN:
                # Re-render: the new server's capabilities decide buttons vs. URL in the body.
                note = sign_in_notification(state.status, state.overrides, caps, state.desktop)
            elif state.status is not None and note.kind is Kind.REMINDER:
                note = reminder_notification(state.status, caps)
            return replace(state, shown=note), [ShowNotification(note)]
        case NotificationShown(nid, kind, serial):
            if state.shown is None or state.shown.kind is not kind:
                return state, []
            return replace(state, shown_id=nid, shown_serial=serial), []
        case NotificationClosed(nid, reason, serial):
            if nid == 0 or nid != state.shown_id:
                return state, []
            if serial and serial < state.shown_serial:
                return state, []  # about the instance our last Notify replaced
            closed = state.shown
            state = replace(state, shown_id=0, shown=None)
            if closed is not None and closed.kind is Kind.SIGN_IN and reason != CLOSED_BY_CALL:
                state = replace(state, dismissed=True)
            return state, []
        case ActionInvoked(nid, key):
            if nid == 0 or nid != state.shown_id:
                return state, []
            if key == ACTION_LATER:
                state = replace(state, dismissed=state.episode is not None)
                state, actions = _close(state)
                return state, actions
            if key == ACTION_NEVER and state.shown_for:
                network_id = state.shown_for
                state = replace(state, dismissed=state.episode is not None)
                state, actions = _close(state)
                return state, [RequestDontAsk(network_id), *actions]
            if key == ACTION_OPEN and is_openable(state.page_url):
                # The user acted: the note is done with (some servers keep it after an
                # action), and this episode needs no second one.
                url = state.page_url
                state = replace(state, dismissed=state.episode is not None)
                state, actions = _close(state)
                return replace(state, page_url=url), [OpenPage(url), *actions]
            return state, []
        case MenuClicked(item_id):
            if item_id == MENU_OPEN:
                url = state.page_url or (state.status.portal_url if state.status else "")
                if state.episode is not None and not url:
                    url = FALLBACK_URL
                return state, [OpenPage(url)] if is_openable(url) else []
            if item_id == MENU_CHECK:
                return state, [RequestCheck()]
            if item_id == MENU_ASKING and state.status is not None and state.status.network_id:
                network_id = state.status.network_id
                if state.status.quiet:
                    return state, [RequestAskAgain(network_id)]
                return state, [RequestDontAsk(network_id)]
            return state, []
        case DesktopChanged(handler):
            state = replace(state, desktop=handler)
            actions = []
            now = state.status
            if now is not None and now.state is Connectivity.CAPTIVE:
                state, actions = _sign_in(state, now, state.capabilities or frozenset())
            return state, [*actions, UpdateTray(tray_view(state))]
    raise TypeError(f"not an agent event: {event!r}")  # pragma: no cover


# ---- tray ----

MENU_ROOT = 0
MENU_OPEN = 1
MENU_CHECK = 2
MENU_SEPARATOR = 3
MENU_OVERRIDES = 4
MENU_ASKING = 5  # "Don't ask again for this network" / "Ask again on this network"
MENU_FIRST_OVERRIDE = 100
MAX_MENU_OVERRIDES = 50  # a menu is not a table; `portal list` shows them all


class TrayStatus(enum.StrEnum):
    """The StatusNotifierItem `Status` values (its spec's spelling)."""

    PASSIVE = "Passive"
    ACTIVE = "Active"
    NEEDS_ATTENTION = "NeedsAttention"


@dataclass(frozen=True, slots=True)
class MenuItem:
    """One entry of the tray's menu (the com.canonical.dbusmenu layout)."""

    id: int
    label: str = ""
    enabled: bool = True
    separator: bool = False
    children: tuple[MenuItem, ...] = ()


@dataclass(frozen=True, slots=True)
class TrayView:
    """What the tray shows: its status, icon, title, tooltip and menu."""

    status: TrayStatus
    icon: str  # freedesktop icon-naming-spec name
    title: str
    tooltip: str
    menu: MenuItem = field(default_factory=lambda: MenuItem(MENU_ROOT))


def _describe(state: AgentState) -> tuple[TrayStatus, str, str]:
    status = state.status
    if status is None:
        return TrayStatus.PASSIVE, "network-offline", "portal daemon not running"
    where = f" on {status.network}" if status.network else ""
    match status.state:
        case Connectivity.ONLINE:
            return TrayStatus.ACTIVE, "network-transmit-receive", f"Online{where}"
        case Connectivity.CAPTIVE:
            text = f"Sign-in needed{where}"
            if state.deferred and state.desktop in DESKTOP_PROMPT_NAME:
                text += f" ({DESKTOP_PROMPT_NAME[state.desktop]} asks for it)"
            return TrayStatus.NEEDS_ATTENTION, "dialog-password", text
        case Connectivity.LIMITED:
            return TrayStatus.ACTIVE, "network-error", f"Limited connectivity{where}"
        case Connectivity.PROBING | Connectivity.UNKNOWN:
            return TrayStatus.ACTIVE, "network-idle", f"Checking{where}"
        case _:
            return TrayStatus.PASSIVE, "network-offline", "Offline"


def _override_label(row: OverrideView) -> str:
    addresses = ", ".join(row.addresses) or "venue DNS"
    where = f" ({row.scope_name})" if row.scope_name else ""
    inactive = "" if row.active else " [inactive]"
    return f"{row.name} → {addresses}{where}{inactive}"


def tray_menu(state: AgentState) -> MenuItem:
    """The tray's menu: open the sign-in page, check now, the overrides."""
    can_open = state.episode is not None or is_openable(state.page_url)
    rows = state.overrides[:MAX_MENU_OVERRIDES]
    children = tuple(
        MenuItem(MENU_FIRST_OVERRIDE + i, _override_label(row), enabled=False)
        for i, row in enumerate(rows)
    )
    if len(state.overrides) > len(rows):
        more = len(state.overrides) - len(rows)
        children += (MenuItem(MENU_FIRST_OVERRIDE + len(rows), f"… {more} more", enabled=False),)
    if not children:
        children = (MenuItem(MENU_FIRST_OVERRIDE, "No overrides", enabled=False),)
    status = state.status
    return MenuItem(
        MENU_ROOT,
        children=(
            MenuItem(MENU_OPEN, "Open sign-in page (private window)", enabled=can_open),
            MenuItem(MENU_CHECK, "Check now", enabled=status is not None),
            MenuItem(
                MENU_ASKING,
                "Ask again on this network"
                if status is not None and status.quiet
                else "Don't ask again for this network",
                enabled=status is not None and bool(status.network_id),
            ),
            MenuItem(MENU_SEPARATOR, separator=True),
            MenuItem(MENU_OVERRIDES, f"Overrides ({len(state.overrides)})", children=children),
        ),
    )


def tray_view(state: AgentState) -> TrayView:
    tray_status, icon, text = _describe(state)
    return TrayView(
        status=tray_status, icon=icon, title="portal", tooltip=text, menu=tray_menu(state)
    )
