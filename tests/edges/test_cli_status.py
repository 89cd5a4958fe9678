"""`portal status` as text: what a desktop's own sign-in prompt would meet is said in words."""

from __future__ import annotations

from portal.cli import format_status
from portal.core.model import Connectivity
from portal.core.report import StatusReport


def test_nm_and_the_users_resolver_are_said_while_known() -> None:
    text = format_status(
        StatusReport(
            network="Hotel",
            state=Connectivity.CAPTIVE,
            portal_url="http://login.hotel.test/portal",
            nm_connectivity=Connectivity.LIMITED,
            user_dns="fails",
        ),
        [],
    )
    assert "NM check:   limited\n" in text
    assert (
        "your DNS:   cannot resolve the portal's name (a desktop's own sign-in window fails)"
        in text
    )


def test_nothing_is_said_of_what_is_not_known() -> None:
    text = format_status(StatusReport(network="Hotel", state=Connectivity.ONLINE), [])
    assert "NM check" not in text and "your DNS" not in text
