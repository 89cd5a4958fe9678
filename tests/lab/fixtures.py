"""pytest fixtures and skip markers for the network-namespace lab (tests/lab/lab.py).

Use them from a test module::

    from tests.lab.marks import LabFactory, requires_lab

    pytest_plugins = ["tests.lab.fixtures"]      # registers the fixtures lab_factory and lab
    pytestmark = [pytest.mark.root, pytest.mark.lab, requires_lab]

    def test_something(lab_factory: LabFactory) -> None:
        lab = lab_factory(dns_mode="strict", https=True)   # up now, down after the test

``requires_lab`` / ``requires_static_lab`` / ``requires_dhclient`` (in marks.py) skip with the
reason when not root or when NetworkManager, dnsmasq, dhclient... are missing; ``lab_factory``
checks again per lab, so a test that forgot the marker still skips instead of failing.

This module must not build a lab at import time or leave one behind after a test.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.lab.lab import Lab, unavailable_reason
from tests.lab.marks import LabFactory


@pytest.fixture
def lab_factory() -> Iterator[LabFactory]:
    """Build labs with Lab(**options); every one is torn down after the test, even on failure."""
    labs: list[Lab] = []

    def make(**options: Any) -> Lab:
        reason = unavailable_reason(
            nm=bool(options.get("nm", True)),
            dhclient=options.get("dhcp_client") == "dhclient",
            https=bool(options.get("https", False)),
            packages=options.get("packages", ()),
        )
        if reason is not None:
            pytest.skip(reason)
        lab = Lab(**options)
        labs.append(lab)
        lab.up()
        return lab

    try:
        yield make
    finally:
        for lab in reversed(labs):
            lab.down()


@pytest.fixture
def lab(lab_factory: LabFactory) -> Lab:
    """The default lab: DNS hijack, NM with its internal DHCP client, plain HTTP."""
    return lab_factory()
