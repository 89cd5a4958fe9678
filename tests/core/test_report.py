"""portal/core/report.py: the API's one status type and override view, and their plain form."""

from __future__ import annotations

from portal.core.model import Connectivity, Override, Source
from portal.core.report import OverrideView, StatusReport, from_plain, to_plain

# The keys of GetStatus() / StateChanged and of `portal status --json`, in their order
# (docs/dbus-api.md): a rename here breaks every reader of an older or newer daemon.
STATUS_KEYS = [
    "version",
    "listen",
    "upstreams",
    "upstream_source",
    "network",
    "network_id",
    "interface",
    "state",
    "portal_url",
    "venue_dns",
    "seconds_remaining",
    "overrides",
    "wiring",
    "portal_hosts",
    "auth",
    "probe_error",  # new keys are added at the end; none is ever renamed or removed
    "nm_connectivity",
    "user_dns",
    "expired",
    "expiry_watch",
    "quiet",
    "quiet_networks",
    "vpn",
    "vpn_name",
    "vpn_routing",
    "vpn_dns",
    "vpn_bypass",
    "clashes",
    "random_mac",
    "stable_mac_command",
]
OVERRIDE_KEYS = [
    "name",
    "addresses",
    "expires_at",
    "scope",
    "scope_name",
    "source",
    "active",
    "created_by",
]


def test_keys_and_their_order_stay() -> None:
    assert list(to_plain(StatusReport())) == STATUS_KEYS
    assert list(to_plain(OverrideView())) == OVERRIDE_KEYS


def test_plain_round_trip() -> None:
    report = StatusReport(
        version="1",
        listen=("127.0.0.153:53",),
        state=Connectivity.CAPTIVE,
        seconds_remaining=0,
        overrides=3,
        portal_hosts=("login.hotel.test",),
        auth="polkit",
    )
    plain = to_plain(report)
    assert plain["state"] == "captive" and plain["listen"] == ["127.0.0.153:53"]
    assert from_plain(StatusReport, plain) == report


def test_override_view_of_an_override() -> None:
    o = Override(
        name="login.hotel.test",
        addresses=("10.0.0.1",),
        expires_at=1_800_000_000.7,
        scope="uuid-hotel",
        scope_name="Hotel",
        source=Source.AUTO,
        created_by="portal detection",
    )
    view = OverrideView.of(o, active=True)
    assert view == OverrideView(
        "login.hotel.test", ("10.0.0.1",), 1_800_000_000, "uuid-hotel", "Hotel", "auto", True,
        "portal detection",
    )  # fmt: skip
    forever = OverrideView.of(Override("a.test", ("10.0.0.2",), None), active=False)
    assert (forever.expires_at, forever.scope, forever.source) == (0, "", "user")
