"""Skip markers for tests that need the lab, and the type of the lab_factory fixture.

Separate from fixtures.py so test modules can import these while pytest loads the fixtures
itself (``pytest_plugins = ["tests.lab.fixtures"]``): importing fixtures.py directly first would
stop pytest from rewriting its asserts. It must not build anything at import time; it only asks
`unavailable_reason()`, which reads the effective UID, PATH and /proc.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.lab.lab import Lab, unavailable_reason

LabFactory = Callable[..., Lab]

_LAB = unavailable_reason()
_STATIC = unavailable_reason(nm=False)
_DHCLIENT = unavailable_reason(dhclient=True, https=True)

#: The lab with NetworkManager (root, NetworkManager, nmcli, dnsmasq, dbus-daemon, overlayfs).
requires_lab = pytest.mark.skipif(_LAB is not None, reason=f"needs the NM lab: {_LAB}")
#: The lab with nm=False (no NetworkManager needed).
requires_static_lab = pytest.mark.skipif(
    _STATIC is not None, reason=f"needs the lab without NM: {_STATIC}"
)
#: The lab with dhcp_client="dhclient" and https=True.
requires_dhclient = pytest.mark.skipif(
    _DHCLIENT is not None, reason=f"needs the dhclient lab: {_DHCLIENT}"
)
