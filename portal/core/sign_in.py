"""The sign-in window, decided: which page, which browser and how, where names go, when to end.

`portal open` shows the sign-in page in a browser with a throwaway profile whose only way out
is a loopback SOCKS5 proxy run by that same process (portal/sign_in.py wires it; the proxy is
portal/edges/sign_in_proxy.py). This module holds every rule of it:

- the page: the URL asked for, else the daemon's sign-in URL, else (captive without one) a
  plain-HTTP page a portal intercepts;
- whether a window can work at all (an interface of this machine, the venue's DNS or an
  override), and otherwise why not, so the caller falls back to the everyday browser saying so;
- names: an active override answers first (portal's own answer on this network), else the
  venue's DNS; never the user's resolver. Addresses are tried IPv4 first (portals often
  black-hole IPv6), and never loopback, multicast or unspecified ones: a venue's DNS must not
  turn the proxy into a way into the laptop itself;
- the browser: `sign_in_browser` from the config, else the first installed of a fixed list
  (Chromium family first, then Firefox family); the command line or user.js that points it
  at the proxy, keeps it from resolving names itself, and turns off what would send traffic
  elsewhere (DoH, HTTPS-Only upgrades, background and first-run traffic, WebRTC's own UDP);
- the end: online (only when it was not online at the start: a window opened to extend a
  session must not close at once), another network, the time bound, the user.

Pure: PATH lookups come in as a function, paths as text; nothing here starts a process, reads
a file or touches a socket.
"""

from __future__ import annotations

import enum
import ipaddress
import json
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from portal.core.agent_logic import FALLBACK_URL, is_openable
from portal.core.model import Connectivity
from portal.core.report import OverrideView, StatusReport

DEFAULT_MAX_TIME_S: Final = 15 * 60  # long enough to find a room number and pay
PROXY_HOST: Final = "127.0.0.1"
PROFILE_PREFIX: Final = "portal-sign-in-"
# A browser that exits this soon with status 0 handed the URL to an instance that was already
# running (a wrapper script, a snap or flatpak launcher): the window lives on out of reach.
HANDOFF_S: Final = 3.0
ONLINE_GRACE_S: Final = 60.0  # such a window then gets the "You're online" page this long


class EndReason(enum.StrEnum):
    """Why the sign-in window (or the proxy alone) ended."""

    ONLINE = "online"
    NETWORK_CHANGED = "network changed"
    TIME_BOUND = "time bound"
    INTERRUPTED = "interrupted"
    WINDOW_CLOSED = "window closed"


END_TEXT: Final[dict[EndReason, str]] = {
    EndReason.ONLINE: "the network is online",
    EndReason.NETWORK_CHANGED: "the network changed",
    EndReason.TIME_BOUND: "the time bound was reached",
    EndReason.INTERRUPTED: "interrupted",
    EndReason.WINDOW_CLOSED: "the window was closed",
}


@dataclass(frozen=True, slots=True)
class Episode:
    """The network a sign-in window belongs to, as it was when the window opened."""

    network_id: str
    interface: str
    started_online: bool


def episode_of(status: StatusReport) -> Episode:
    return Episode(
        network_id=status.network_id,
        interface=status.interface,
        started_online=status.state is Connectivity.ONLINE,
    )


def end_reason(episode: Episode, status: StatusReport) -> EndReason | None:
    """Whether a new status from the daemon ends the window, and why."""
    if not status.network_id and status.state is Connectivity.UNKNOWN:
        # A daemon that (re)starts knows no network yet; a lost network says "offline".
        return None
    if status.network_id != episode.network_id or status.interface != episode.interface:
        return EndReason.NETWORK_CHANGED
    if status.state is Connectivity.OFFLINE:
        return EndReason.NETWORK_CHANGED
    if status.state is Connectivity.ONLINE and not episode.started_online:
        return EndReason.ONLINE
    return None


def sign_in_url(status: StatusReport, asked: str = "") -> str | None:
    """The page to open: the one asked for, the daemon's, or (captive) an interceptable one."""
    if asked:
        return asked if is_openable(asked) else None
    if status.portal_url:
        return status.portal_url if is_openable(status.portal_url) else None
    if status.state is Connectivity.CAPTIVE:
        return FALLBACK_URL
    return None


def proxy_obstacle(
    status: StatusReport, overrides: Sequence[OverrideView], *, interface_here: bool
) -> str | None:
    """Why a proxy for this network cannot work from here, or None when it can."""
    if not status.interface:
        return f"no network interface is known (state: {status.state})"
    if not interface_here:
        return (
            f"the network's interface {status.interface} is not on this machine's network "
            "(the daemon runs in another network namespace?)"
        )
    if not status.venue_dns and not any(o.active and o.addresses for o in overrides):
        return "the network's own DNS servers are not known"
    return None


# --- names and addresses ---------------------------------------------------------------------


def override_addresses(name: str, overrides: Sequence[OverrideView]) -> tuple[str, ...]:
    """The addresses of the override that answers `name` (normalised) right now, or ()."""
    for row in overrides:
        if row.name == name and row.active and row.addresses:
            return row.addresses
    return ()


def connect_order(addresses: Sequence[str]) -> list[str]:
    """IPv4 first, then IPv6, each once, in the order given (RFC 8305 would race them; a
    portal that black-holes IPv6 is more common than one without IPv4)."""
    seen: list[str] = []
    for address in addresses:
        if address not in seen:
            seen.append(address)
    return [a for a in seen if ":" not in a] + [a for a in seen if ":" in a]


def destination_refusal(address: str) -> str | None:
    """Why the proxy must not connect to `address`, or None when it may."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return f"{address!r} is not an address"
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return f"{address} is this machine (loopback)"
    if ip.is_unspecified or ip.is_multicast or ip == ipaddress.IPv4Address("255.255.255.255"):
        return f"{address} is not a host"
    return None


# --- browsers ---------------------------------------------------------------------------------


class Family(enum.StrEnum):
    CHROMIUM = "chromium"
    FIREFOX = "firefox"


#: Command names portal knows, by the way they take a profile and a proxy.
KNOWN_BROWSERS: Final[dict[str, Family]] = {
    "chromium": Family.CHROMIUM,
    "chromium-browser": Family.CHROMIUM,
    "google-chrome": Family.CHROMIUM,
    "google-chrome-stable": Family.CHROMIUM,
    "google-chrome-beta": Family.CHROMIUM,
    "google-chrome-unstable": Family.CHROMIUM,
    "chrome": Family.CHROMIUM,
    "brave": Family.CHROMIUM,
    "brave-browser": Family.CHROMIUM,
    "brave-browser-stable": Family.CHROMIUM,
    "microsoft-edge": Family.CHROMIUM,
    "microsoft-edge-stable": Family.CHROMIUM,
    "vivaldi": Family.CHROMIUM,
    "vivaldi-stable": Family.CHROMIUM,
    "firefox": Family.FIREFOX,
    "firefox-esr": Family.FIREFOX,
    "librewolf": Family.FIREFOX,
    "waterfox": Family.FIREFOX,
}

#: Searched on PATH in this order when `sign_in_browser` is empty.
SEARCH_ORDER: Final = (
    "chromium",
    "chromium-browser",
    "google-chrome-stable",
    "google-chrome",
    "brave-browser",
    "brave",
    "firefox",
    "firefox-esr",
    "librewolf",
)


@dataclass(frozen=True, slots=True)
class Browser:
    """A browser the sign-in window can be made with, and how it was found."""

    family: Family
    path: str  # the executable as found on PATH
    extra: tuple[str, ...] = ()  # arguments from `sign_in_browser` after the command

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


@dataclass(frozen=True, slots=True)
class NoBrowser:
    """Why no sign-in window can be made (the everyday browser is used instead)."""

    reason: str


def choose_browser(setting: str, which: Callable[[str], str | None]) -> Browser | NoBrowser:
    """The sign-in browser: `setting` ("" = search, "none" = never a window, or a command
    whose first word names a known browser, e.g. "chromium --force-dark-mode")."""
    text = setting.strip()
    if text == "none":
        return NoBrowser('sign_in_browser is "none"')
    if not text:
        for name in SEARCH_ORDER:
            path = which(name)
            if path is not None:
                return Browser(KNOWN_BROWSERS[name], path)
        return NoBrowser("no Chromium, Chrome, Brave or Firefox is installed")
    try:
        words = shlex.split(text)
    except ValueError as exc:
        return NoBrowser(f"sign_in_browser {text!r} cannot be read: {exc}")
    command = words[0]
    family = KNOWN_BROWSERS.get(command.rsplit("/", 1)[-1])
    if family is None:
        known = ", ".join(sorted(KNOWN_BROWSERS))
        return NoBrowser(
            f"sign_in_browser {command!r} is none of the browsers portal knows ({known})"
        )
    path = which(command)
    if path is None:
        return NoBrowser(f"sign_in_browser {command!r} is not installed")
    return Browser(family, path, tuple(words[1:]))


def profile_parent(*, snap_name: str | None, home: str, runtime_dir: str, temp_dir: str) -> str:
    """Where the throwaway profile goes: the user's runtime directory (a private tmpfs) when
    there is one, else the temporary directory. A snap-packaged browser can write only under
    ~/snap/NAME/common (its /tmp is private to it and /run/user is closed to it)."""
    if snap_name:
        return f"{home.rstrip('/')}/snap/{snap_name}/common"
    return runtime_dir or temp_dir


def chromium_argv(browser: Browser, *, profile: str, proxy_port: int, url: str) -> list[str]:
    """Chromium, Chrome, Brave...: every request through the proxy, no name resolved locally."""
    return [
        browser.path,
        *browser.extra,
        f"--user-data-dir={profile}",
        f"--proxy-server=socks5://{PROXY_HOST}:{proxy_port}",
        # Chromium sends names to a SOCKS5 proxy, but may still resolve for prefetching and
        # its own features: map every name to "not found" except the proxy's address.
        f"--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE {PROXY_HOST}",
        # Without it that flag puts an "unsupported command-line flag ... security will suffer"
        # bar over the sign-in page, which is the wrong thing to tell someone about to sign in.
        "--test-type",
        # WebRTC would otherwise send UDP around the proxy, out of whatever route is default.
        "--force-webrtc-ip-handling-policy=disable_non_proxied_udp",
        # Upgrading http:// to https:// first costs a failed TLS round per portal page.
        "--disable-features=HttpsUpgrades",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--new-window",
        url,
    ]


#: Firefox preferences of the throwaway profile (user.js), besides the proxy port and paths.
FIREFOX_PREFS: Final[dict[str, bool | int | str]] = {
    "network.proxy.type": 1,  # manual proxy settings
    "network.proxy.socks": PROXY_HOST,
    "network.proxy.socks_version": 5,
    "network.proxy.socks_remote_dns": True,  # names go to the proxy, not to any resolver
    "network.proxy.no_proxies_on": "",
    "network.proxy.failover_direct": False,
    "network.trr.mode": 5,  # DNS over HTTPS off by choice, whatever the user's profile says
    "network.dns.disablePrefetch": True,
    "network.prefetch-next": False,
    "network.http.speculative-parallel-limit": 0,
    "dom.security.https_only_mode": False,
    "dom.security.https_only_mode_pbm": False,
    "dom.security.https_first": False,
    "dom.security.https_first_pbm": False,
    "dom.security.https_first_schemeless": False,
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
    "media.peerconnection.enabled": False,  # WebRTC's UDP would not go through the proxy
    "browser.shell.checkDefaultBrowser": False,
    "browser.startup.homepage_override.mstone": "ignore",
    "startup.homepage_welcome_url": "",
    "startup.homepage_welcome_url.additional": "",
    "browser.aboutwelcome.enabled": False,
    "browser.tabs.warnOnClose": False,
    "browser.sessionstore.resume_from_crash": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "datareporting.healthreport.uploadEnabled": False,
    "toolkit.telemetry.reportingpolicy.firstRun": False,
    "app.normandy.enabled": False,
    "extensions.update.enabled": False,
    "browser.region.update.enabled": False,
}


def firefox_user_js(*, proxy_port: int, profile: str) -> str:
    prefs: dict[str, bool | int | str] = {
        **FIREFOX_PREFS,
        "network.proxy.socks_port": proxy_port,
        # Keep the cache inside the profile, so deleting the profile deletes it.
        "browser.cache.disk.parent_directory": profile,
    }
    lines = ["// portal's sign-in window: a throwaway profile, deleted when the window ends."]
    lines += [f"user_pref({json.dumps(k)}, {json.dumps(v)});" for k, v in prefs.items()]
    return "\n".join(lines) + "\n"


def firefox_argv(browser: Browser, *, profile: str, url: str) -> list[str]:
    # --new-instance: never hand the URL to the user's running Firefox (their own profile).
    return [browser.path, *browser.extra, "--new-instance", "--profile", profile, url]


def browser_argv(browser: Browser, *, profile: str, proxy_port: int, url: str) -> list[str]:
    if browser.family is Family.FIREFOX:
        return firefox_argv(browser, profile=profile, url=url)
    return chromium_argv(browser, profile=profile, proxy_port=proxy_port, url=url)
