"""portal/core/user_dns.py: what the daemon asks the user's own resolver about a portal."""

from __future__ import annotations

import pytest

from portal.core.model import Connectivity, Network, PortalStatus
from portal.core.user_dns import Question, question

HOTEL = Network(id="uuid-hotel", name="Hotel")
UPSTREAMS = ("192.0.2.53:53", "[2001:db8::53]:53")


def captive(
    url: str = "http://login.hotel.test/portal?room=12",
    hosts: tuple[str, ...] = ("login.hotel.test",),
    state: Connectivity = Connectivity.CAPTIVE,
    network: Network | None = HOTEL,
) -> PortalStatus:
    return PortalStatus(network=network, state=state, portal_url=url, portal_hosts=hosts)


@pytest.mark.parametrize(
    ("status", "upstreams", "host"),
    [
        (captive(), UPSTREAMS, "login.hotel.test"),
        # the page's host first, whatever order the portal's names came in
        (captive(hosts=("api.hotel.test", "login.hotel.test")), UPSTREAMS, "login.hotel.test"),
        (captive(url="https://Login.Hotel.TEST./x"), UPSTREAMS, "login.hotel.test"),
        # an address literal needs no resolver: the portal's other names stand in
        (captive(url="http://10.77.0.1/login", hosts=("10.77.0.1", "api.hotel.test")),
         UPSTREAMS, "api.hotel.test"),
        (captive(url="http://[fd77::1]/login", hosts=()), UPSTREAMS, None),
        (captive(url="", hosts=("login.hotel.test",)), UPSTREAMS, "login.hotel.test"),
        (captive(url="http://[::1/broken", hosts=("api.hotel.test",)), UPSTREAMS, "api.hotel.test"),
        (captive(url="", hosts=()), UPSTREAMS, None),
        # kept while the portal stops answering for a moment (limited within the episode)
        (captive(state=Connectivity.LIMITED), UPSTREAMS, "login.hotel.test"),
        # nothing to ask about, or no one to ask
        (captive(state=Connectivity.ONLINE), UPSTREAMS, None),
        (captive(state=Connectivity.PROBING), UPSTREAMS, None),
        (captive(network=None), UPSTREAMS, None),
        (captive(), (), None),
    ],
)  # fmt: skip
def test_the_question(status: PortalStatus, upstreams: tuple[str, ...], host: str | None) -> None:
    asked = question(status, upstreams)
    if host is None:
        assert asked is None
    else:
        assert asked == Question("uuid-hotel", host, upstreams)


def test_another_resolver_or_network_is_another_question() -> None:
    """The daemon asks again when the answer could differ: it compares questions."""
    first = question(captive(), UPSTREAMS)
    assert first == question(captive(), UPSTREAMS)
    assert first != question(captive(), ("127.0.0.1:5353",))
    cafe = Network(id="uuid-cafe", name="Cafe")
    assert first != question(captive(network=cafe), UPSTREAMS)
