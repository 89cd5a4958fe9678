"""The sign-in window's rules: the page, whether a window can work, names and addresses, the
browser and its command line or profile, and when it ends."""

from __future__ import annotations

import pytest

from portal.core.agent_logic import FALLBACK_URL
from portal.core.model import Connectivity
from portal.core.report import OverrideView, StatusReport, from_plain
from portal.core.sign_in import (
    KNOWN_BROWSERS,
    SEARCH_ORDER,
    Browser,
    EndReason,
    Episode,
    Family,
    NoBrowser,
    browser_argv,
    choose_browser,
    chromium_argv,
    connect_order,
    destination_refusal,
    end_reason,
    episode_of,
    firefox_user_js,
    override_addresses,
    profile_parent,
    proxy_obstacle,
    sign_in_url,
)

URL = "http://login.hotel.test/portal?room=12"
CAPTIVE = StatusReport(
    network="hotel-wifi",
    network_id="uuid-1",
    state=Connectivity.CAPTIVE,
    portal_url=URL,
    venue_dns=("10.77.0.1",),
    interface="lap0",
)
PIN = OverrideView("login.hotel.test", ("10.77.0.1",), active=True)


def status(**changes: object) -> StatusReport:
    from dataclasses import replace

    return replace(CAPTIVE, **changes)  # type: ignore[arg-type]


def test_status_carries_the_interface() -> None:
    assert from_plain(StatusReport, {"interface": "lap0"}).interface == "lap0"
    assert from_plain(StatusReport, {"interface": 7}).interface == ""


# --- the page ---------------------------------------------------------------------------------


def test_page_asked_for_or_the_daemons_or_a_fallback() -> None:
    assert sign_in_url(CAPTIVE) == URL
    assert sign_in_url(CAPTIVE, "http://other.test/") == "http://other.test/"
    assert sign_in_url(status(portal_url="")) == FALLBACK_URL
    assert sign_in_url(status(portal_url="", state=Connectivity.ONLINE)) is None
    # Only http(s): a venue's "javascript:" or "file:" URL is never opened.
    assert sign_in_url(CAPTIVE, "file:///etc/passwd") is None
    assert sign_in_url(status(portal_url="javascript:alert(1)")) is None


def test_obstacles() -> None:
    assert proxy_obstacle(CAPTIVE, (), interface_here=True) is None
    no_iface = proxy_obstacle(status(interface=""), (), interface_here=False)
    assert no_iface is not None and "no network interface" in no_iface
    elsewhere = proxy_obstacle(CAPTIVE, (), interface_here=False)
    assert elsewhere is not None and "lap0" in elsewhere
    no_dns = status(venue_dns=())
    reason = proxy_obstacle(no_dns, (), interface_here=True)
    assert reason is not None and "DNS" in reason
    # An override is enough to reach the portal's own host.
    assert proxy_obstacle(no_dns, (PIN,), interface_here=True) is None
    inactive = OverrideView("login.hotel.test", ("10.77.0.1",), active=False)
    assert proxy_obstacle(no_dns, (inactive,), interface_here=True) is not None


# --- names and addresses ----------------------------------------------------------------------


def test_override_first_only_when_active_with_addresses() -> None:
    rows = (
        OverrideView("other.test", ("192.0.2.9",), active=True),
        OverrideView("venue-only.test", (), active=True),
        OverrideView("elsewhere.test", ("192.0.2.8",), active=False),
        PIN,
    )
    assert override_addresses("login.hotel.test", rows) == ("10.77.0.1",)
    assert override_addresses("venue-only.test", rows) == ()
    assert override_addresses("elsewhere.test", rows) == ()
    assert override_addresses("nothing.test", rows) == ()


def test_connect_order_is_ipv4_first_without_duplicates() -> None:
    got = connect_order(["fd77::1", "10.77.0.1", "fd77::2", "10.77.0.1", "10.77.0.2"])
    assert got == ["10.77.0.1", "10.77.0.2", "fd77::1", "fd77::2"]


@pytest.mark.parametrize(
    ("address", "refused"),
    [
        ("10.77.0.1", False),
        ("203.0.113.80", False),
        ("fd77::1", False),
        ("fe80::1%lap0", False),  # a venue gateway may well be link-local
        ("169.254.1.1", False),
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("0.0.0.0", True),
        ("::", True),
        ("224.0.0.1", True),
        ("ff02::1", True),
        ("255.255.255.255", True),
        ("not-an-address", True),
    ],
)
def test_destinations(address: str, refused: bool) -> None:
    assert (destination_refusal(address) is not None) is refused


# --- the end ----------------------------------------------------------------------------------


def test_end_reasons() -> None:
    episode = episode_of(CAPTIVE)
    assert episode == Episode("uuid-1", "lap0", started_online=False)
    assert end_reason(episode, CAPTIVE) is None
    assert end_reason(episode, status(state=Connectivity.PROBING)) is None
    assert end_reason(episode, status(state=Connectivity.LIMITED)) is None
    assert end_reason(episode, status(state=Connectivity.ONLINE)) is EndReason.ONLINE
    assert end_reason(episode, status(network_id="uuid-2")) is EndReason.NETWORK_CHANGED
    assert end_reason(episode, status(network_id="", interface="")) is (EndReason.NETWORK_CHANGED)
    assert end_reason(episode, status(interface="wlan0")) is EndReason.NETWORK_CHANGED
    assert end_reason(episode, status(state=Connectivity.OFFLINE)) is EndReason.NETWORK_CHANGED
    # What a restarting daemon says before it has read the network: not a change.
    restarted = StatusReport()
    assert end_reason(episode, restarted) is None
    gone = StatusReport(state=Connectivity.OFFLINE)
    assert end_reason(episode, gone) is EndReason.NETWORK_CHANGED


def test_a_window_opened_while_online_does_not_close_at_once() -> None:
    """The low-time reminder opens the page on a network that is online, to extend the
    session: that window ends with the network, not with the next "online"."""
    online = status(state=Connectivity.ONLINE)
    episode = episode_of(online)
    assert episode.started_online
    assert end_reason(episode, online) is None
    assert end_reason(episode, status(network_id="uuid-2")) is EndReason.NETWORK_CHANGED


# --- browsers -------------------------------------------------------------------------------


def installed(*names: str) -> dict[str, str]:
    return {name: f"/usr/bin/{name}" for name in names}


def test_search_order_prefers_chromium_family() -> None:
    found = installed("firefox-esr", "chromium")
    assert choose_browser("", found.get) == Browser(Family.CHROMIUM, "/usr/bin/chromium")
    found = installed("firefox-esr")
    assert choose_browser("", found.get) == Browser(Family.FIREFOX, "/usr/bin/firefox-esr")
    assert all(name in KNOWN_BROWSERS for name in SEARCH_ORDER)


def test_no_browser_installed() -> None:
    got = choose_browser("", {}.get)
    assert isinstance(got, NoBrowser) and "no Chromium" in got.reason


def test_configured_browser_with_arguments() -> None:
    found = {"firefox": "/usr/bin/firefox", "/opt/brave/brave": "/opt/brave/brave"}
    got = choose_browser("firefox --kiosk", found.get)
    assert got == Browser(Family.FIREFOX, "/usr/bin/firefox", ("--kiosk",))
    assert choose_browser("/opt/brave/brave", found.get) == Browser(
        Family.CHROMIUM, "/opt/brave/brave"
    )
    assert got.name == "firefox"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("setting", "words"),
    [
        ("none", '"none"'),
        ("epiphany", "none of the browsers"),
        ("chromium", "not installed"),
        ("chromium 'unterminated", "cannot be read"),
    ],
)
def test_configured_browser_refusals(setting: str, words: str) -> None:
    got = choose_browser(setting, {}.get)
    assert isinstance(got, NoBrowser) and words in got.reason


def test_profile_parent() -> None:
    where = {"home": "/home/ann/", "runtime_dir": "/run/user/1000", "temp_dir": "/tmp"}
    assert profile_parent(snap_name=None, **where) == "/run/user/1000"
    assert profile_parent(snap_name=None, **{**where, "runtime_dir": ""}) == "/tmp"
    assert profile_parent(snap_name="chromium", **where) == "/home/ann/snap/chromium/common"


def test_chromium_command_line() -> None:
    browser = Browser(Family.CHROMIUM, "/usr/bin/chromium", ("--headless=new",))
    argv = chromium_argv(browser, profile="/run/user/1000/p", proxy_port=4321, url=URL)
    assert argv[:2] == ["/usr/bin/chromium", "--headless=new"]
    assert argv[-1] == URL
    assert "--user-data-dir=/run/user/1000/p" in argv
    assert "--proxy-server=socks5://127.0.0.1:4321" in argv
    assert "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1" in argv
    assert "--no-first-run" in argv
    assert browser_argv(browser, profile="/p", proxy_port=1, url=URL)[0] == "/usr/bin/chromium"


def test_firefox_profile_and_command_line() -> None:
    browser = Browser(Family.FIREFOX, "/usr/bin/firefox-esr")
    argv = browser_argv(browser, profile="/tmp/p", proxy_port=4321, url=URL)
    assert argv == ["/usr/bin/firefox-esr", "--new-instance", "--profile", "/tmp/p", URL]
    js = firefox_user_js(proxy_port=4321, profile='/tmp/p"q')
    prefs = dict(
        line.removeprefix("user_pref(").removesuffix(");").split(", ", 1)
        for line in js.splitlines()
        if line.startswith("user_pref(")
    )
    assert prefs['"network.proxy.type"'] == "1"
    assert prefs['"network.proxy.socks"'] == '"127.0.0.1"'
    assert prefs['"network.proxy.socks_port"'] == "4321"
    assert prefs['"network.proxy.socks_version"'] == "5"
    assert prefs['"network.proxy.socks_remote_dns"'] == "true"
    assert prefs['"network.trr.mode"'] == "5"
    assert prefs['"dom.security.https_only_mode"'] == "false"
    assert prefs['"network.captive-portal-service.enabled"'] == "false"
    assert prefs['"browser.cache.disk.parent_directory"'] == '"/tmp/p\\"q"'  # escaped
