"""Whether this connection shows the network a new MAC address each time, and the fix.

    random_mac(network) -> bool
    stable_mac_command(network) -> str

Portals remember a signed-in device by its MAC address. NetworkManager can give a connection a
random one each time it connects (the profile's `cloned-mac-address=random`, or a global
default in NetworkManager.conf's [connection] section, e.g. `wifi.cloned-mac-address=random`),
and then the portal sees a new device and asks again at every connection. `stable` keeps one
MAC per network (derived from the profile and a machine secret) that is still not the
hardware's, so the privacy of a random MAC elsewhere stays.

Pure: a Network in (portal/core/model.py), plain values out.
"""

from __future__ import annotations

import re

from portal.core.model import Network

# What NetworkManager's cloned-mac-address can say besides an address (nm-setting-wired.h).
NOT_RANDOM = frozenset({"stable", "stable-ssid", "permanent", "preserve"})
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")

# The profile setting that fixes it, by the connection's kind (NM's setting names).
SETTING = {"wifi": "802-11-wireless.cloned-mac-address", "ethernet": "ethernet.cloned-mac-address"}


def random_mac(network: Network | None) -> bool:
    """True when the connection uses a random MAC of its own: the profile says `random`, or the
    profile says nothing (NetworkManager.conf's default applies, which D-Bus does not show) and
    the interface's MAC is not the hardware's."""
    if network is None:
        return False
    setting = network.mac_setting.strip().lower()
    if setting == "random":
        return True
    if setting in NOT_RANDOM or _MAC.match(setting):
        return False
    now, own = network.mac_address.strip().lower(), network.permanent_mac.strip().lower()
    return bool(setting == "" and now and own and now != own)


def stable_mac_command(network: Network) -> str:
    """The command that keeps one MAC address on this network only; "" where there is none (no
    NM profile, or a kind of connection without a cloned MAC)."""
    setting = SETTING.get(network.kind)
    if not network.profile or setting is None:
        return ""
    return f"nmcli connection modify {_quote(network.profile)} {setting} stable"


def _quote(text: str) -> str:
    """Quoted for a POSIX shell when it needs to be (an SSID-like name with spaces)."""
    if re.fullmatch(r"[A-Za-z0-9_.@%+=:,/-]+", text):
        return text
    return "'" + text.replace("'", "'\"'\"'") + "'"
