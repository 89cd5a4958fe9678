"""core/detect.py: table-driven, synchronous, against recorded answers in tests/data/probe/."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from portal.core.detect import (
    APPLE_SUCCESS_BODY,
    DEFAULT_PROBE_SPECS,
    FIREFOX_CANONICAL_BODY,
    NM_DEFAULT_RESPONSE,
    UNRESTRICTED_URN,
    all_names_same_address,
    api_uri_to_fetch,
    classify,
    classify_all,
    default_probe_specs,
    find_portal_url,
    hijack_suspected,
    is_strong_portal_sign,
    is_unrestricted,
    parse_captive_api,
    parse_probe_spec,
    resolves_privately,
    routing_names,
    spec_for_url,
)
from portal.core.model import Connectivity
from portal.core.probe_model import CaptiveApi, ProbeResponse, ProbeSpec, ProbeVerdict
from tests.support.probes import recorded

DATA = Path(__file__).parent.parent / "data" / "probe"

GSTATIC = ProbeSpec("http://connectivitycheck.gstatic.com/generate_204", 204)
FIREFOX = ProbeSpec("http://detectportal.firefox.com/canonical.html", 200, FIREFOX_CANONICAL_BODY)
NMCHECK = ProbeSpec("http://nmcheck.gnome.org/check_network_status.txt", 200, NM_DEFAULT_RESPONSE)
APPLE = spec_for_url("http://captive.apple.com/hotspot-detect.html")

C = Connectivity


def body_of(name: str) -> str:
    raw = (DATA / name).read_text()
    return raw.replace("\r\n", "\n").partition("\n\n")[2] if name.endswith(".http") else raw


# --- classify: recorded answers ----------------------------------------------------------------

RECORDED = [
    # (file, spec, connectivity, portal_url, portal_hosts)
    (
        "hotel-redirect-generate_204.http",
        GSTATIC,
        C.CAPTIVE,
        "http://login.hotel.test:18080/portal?orig=http%3A%2F%2Fconnectivitycheck.gstatic.com"
        "%2Fgenerate_204",
        ("login.hotel.test",),
    ),
    (
        "hotel-redirect-nm-check.http",
        NMCHECK,
        C.CAPTIVE,
        "http://login.hotel.test:18080/portal?orig=http%3A%2F%2Fnmcheck.gnome.org"
        "%2Fcheck_network_status.txt",
        ("login.hotel.test",),
    ),
    # The sign-in page posts a form to a relative URL: nothing better than the probe URL,
    # which the portal intercepts when a browser opens it.
    ("hotel-page-generate_204.http", GSTATIC, C.CAPTIVE, GSTATIC.url, ()),
    ("hotel-page-nm-check.http", NMCHECK, C.CAPTIVE, NMCHECK.url, ()),
    ("hotel-online-generate_204.http", GSTATIC, C.ONLINE, "", ()),
    ("hotel-online-nm-check.http", NMCHECK, C.ONLINE, "", ()),
    ("hotel-online-apple.http", APPLE, C.ONLINE, "", ()),
    ("hotel-online-other-path.http", FIREFOX, C.CAPTIVE, FIREFOX.url, ()),
    ("rfc6585-511.http", GSTATIC, C.CAPTIVE, "https://login.example.net/", ("login.example.net",)),
    ("firefox-canonical-online.http", FIREFOX, C.ONLINE, "", ()),
    # The same body where a 204 was expected: its meta refresh is read as a sign-in URL.
    (
        "firefox-canonical-online.http",
        GSTATIC,
        C.CAPTIVE,
        "https://support.mozilla.org/kb/captive-portal",
        ("support.mozilla.org",),
    ),
    (
        "js-redirect.http",
        GSTATIC,
        C.CAPTIVE,
        "http://192.168.1.1:8002/index.php?zone=guest&redirurl=http%3A%2F%2F"
        "connectivitycheck.gstatic.com%2Fgenerate_204",
        (),  # an IP literal needs no name pinned
    ),
    (
        "meta-refresh-quoted.http",
        GSTATIC,
        C.CAPTIVE,
        "https://securelogin.venue.example/cgi-bin/login?cmd=login&mac=00:11:22:33:44:55",
        ("securelogin.venue.example",),
    ),
    (
        "link-only.http",
        NMCHECK,
        C.CAPTIVE,
        "https://wifi.airport.example/login?lang=en",
        ("wifi.airport.example",),
    ),
]


@pytest.mark.parametrize(("name", "spec", "state", "url", "hosts"), RECORDED)
def test_classify_recorded(
    name: str, spec: ProbeSpec, state: Connectivity, url: str, hosts: tuple[str, ...]
) -> None:
    verdict = classify(recorded(name, spec.url), spec)
    assert verdict.connectivity is state
    assert verdict.portal_url == url
    assert verdict.portal_hosts == hosts
    assert verdict.error == ""
    assert verdict.reason


# --- classify: synthetic answers ---------------------------------------------------------------

P = "http://probe.example/check"
PRIVATE = ("10.77.0.1",)


def resp(status: int = 200, body: str = "", *, url: str = P, **headers: str) -> ProbeResponse:
    return ProbeResponse(
        url=url,
        status=status,
        headers=tuple((k.replace("_", "-").lower(), v) for k, v in headers.items()),
        body=body,
    )


SYNTHETIC = [
    # (response, spec, connectivity, portal_url, hosts, error)
    (ProbeResponse(P, error="timeout"), GSTATIC, C.LIMITED, "", (), "timeout"),
    (ProbeResponse(P), GSTATIC, C.LIMITED, "", (), "no-answer"),
    (ProbeResponse(P, error="dns-nxdomain"), GSTATIC, C.LIMITED, "", (), "dns-nxdomain"),
    (ProbeResponse(P, error="no-route"), GSTATIC, C.OFFLINE, "", (), "no-route"),
    (ProbeResponse(P, error="bind-error"), GSTATIC, C.OFFLINE, "", (), "bind-error"),
    # DNS hijack: a public probe host resolved to a private address, HTTP silent.
    (
        ProbeResponse(GSTATIC.url, addresses=PRIVATE, error="timeout"),
        GSTATIC,
        C.CAPTIVE,
        GSTATIC.url,
        (),
        "",
    ),
    (
        ProbeResponse(GSTATIC.url, addresses=("100.64.0.1",), error="connect-refused"),
        GSTATIC,
        C.CAPTIVE,
        GSTATIC.url,
        (),
        "",
    ),
    # A public address, or a name nobody knows: no conclusion from DNS.
    (
        ProbeResponse(GSTATIC.url, addresses=("142.250.74.3",), error="timeout"),
        GSTATIC,
        C.LIMITED,
        "",
        (),
        "timeout",
    ),
    (ProbeResponse(P, addresses=PRIVATE, error="timeout"), GSTATIC, C.LIMITED, "", (), "timeout"),
    # Private DNS answer but the expected answer came: a local mirror, online.
    (
        ProbeResponse(GSTATIC.url, 204, addresses=PRIVATE),
        GSTATIC,
        C.ONLINE,
        "",
        (),
        "",
    ),
    (resp(204), GSTATIC, C.ONLINE, "", (), ""),
    (resp(200, " \n"), GSTATIC, C.ONLINE, "", (), ""),  # NM: 204 "or send no data"
    (resp(200, "x"), GSTATIC, C.CAPTIVE, P, (), ""),
    (resp(200, "NetworkManager is online\n"), NMCHECK, C.ONLINE, "", (), ""),
    (resp(200, "\n NetworkManager is online"), NMCHECK, C.ONLINE, "", (), ""),
    (resp(200, "NetworkManager is"), NMCHECK, C.CAPTIVE, P, (), ""),
    (resp(201, NM_DEFAULT_RESPONSE), NMCHECK, C.CAPTIVE, P, (), ""),
    (resp(204), NMCHECK, C.CAPTIVE, P, (), ""),
    (resp(200, "", x_networkmanager_status="online"), NMCHECK, C.ONLINE, "", (), ""),
    (resp(302, "", x_networkmanager_status="Online "), GSTATIC, C.ONLINE, "", (), ""),
    (resp(200, "", x_networkmanager_status="offline"), NMCHECK, C.CAPTIVE, P, (), ""),
    # Redirects: absolute, relative, to the probe host itself, to an IP, unusable.
    (
        resp(302, location="https://Login.Venue.Example./a"),
        GSTATIC,
        C.CAPTIVE,
        "https://Login.Venue.Example./a",
        ("login.venue.example",),
        "",
    ),
    (
        resp(307, location="/login?x=1"),
        GSTATIC,
        C.CAPTIVE,
        "http://probe.example/login?x=1",
        (),
        "",
    ),
    (
        resp(302, location="http://[fd00::1]:8080/"),
        GSTATIC,
        C.CAPTIVE,
        "http://[fd00::1]:8080/",
        (),
        "",
    ),
    (resp(302, location="javascript:alert(1)"), GSTATIC, C.CAPTIVE, P, (), ""),
    (resp(302, location="http://[fd00::1/"), GSTATIC, C.CAPTIVE, P, (), ""),
    (resp(302, location="http://h.example:99999/"), GSTATIC, C.CAPTIVE, P, (), ""),
    (
        resp(302, '<a href="https://b.example/">b</a>', location=""),
        GSTATIC,
        C.CAPTIVE,
        "https://b.example/",
        ("b.example",),
        "",
    ),
    (resp(301, "moved"), GSTATIC, C.CAPTIVE, P, (), ""),
    # A probe URL that does not parse cannot name a host to pin.
    (resp(200, "x", url="http://[fd00::1/"), GSTATIC, C.CAPTIVE, "http://[fd00::1/", (), ""),
    (resp(503, "Service Unavailable"), GSTATIC, C.CAPTIVE, P, (), ""),
]


@pytest.mark.parametrize(("response", "spec", "state", "url", "hosts", "error"), SYNTHETIC)
def test_classify(
    response: ProbeResponse,
    spec: ProbeSpec,
    state: Connectivity,
    url: str,
    hosts: tuple[str, ...],
    error: str,
) -> None:
    verdict = classify(response, spec)
    assert (verdict.connectivity, verdict.portal_url, verdict.portal_hosts, verdict.error) == (
        state,
        url,
        hosts,
        error,
    )


BASE = "http://probe.example/dir/page"

PAGES = [
    # (body, url found)
    ("", ""),
    ("<html><body>Welcome</body></html>", ""),
    ('<meta http-equiv="refresh" content="0;url=/login">', "http://probe.example/login"),
    ("<meta content='3; URL=https://a.example/' http-equiv='Refresh'>", "https://a.example/"),
    ("<meta http-equiv=refresh content=0;url=https://u.example/x>", "https://u.example/x"),
    ('<meta http-equiv="refresh" content="5">', ""),  # reload only
    ('<meta http-equiv="content-type" content="text/html; url=https://no.example/">', ""),
    ('<meta http-equiv="refresh" content="0;url=javascript:go()">', ""),
    (
        '<meta http-equiv="refresh" content="0;url=javascript:go()"><a href="https://l.example/">',
        "https://l.example/",
    ),
    ("<script>location = 'https://j.example/p';</script>", "https://j.example/p"),
    ('<script>top.location.href="login.php"</script>', "http://probe.example/dir/login.php"),
    ('<script>window.location.replace("https://r.example/")</script>', "https://r.example/"),
    ("<script>document.location.assign('//s.example/q')</script>", "http://s.example/q"),
    ("<script>location = 'javascript:void(0)'</script><a href=next.html>", BASE[:-4] + "next.html"),
    ("<a href='mailto:desk@venue.example'>mail</a><a name=x>", ""),
    ('<a class="b" href="https://x.example/?a=1&amp;b=2">', "https://x.example/?a=1&b=2"),
    ('<a href="  ">blank</a>', ""),
]


@pytest.mark.parametrize(("body", "url"), PAGES)
def test_find_portal_url(body: str, url: str) -> None:
    assert find_portal_url(body, BASE) == url


# A hostile or broken page must not stall the daemon: with unbounded patterns these took from
# 5 to 40 seconds each (quadratic backtracking); bounded, they take milliseconds. The timeout
# only catches a hang, it measures nothing.
HOSTILE_PAGES = [
    "<a " * 20000,
    'location.replace("' * 4000,
    "location='" * 6000,
    "<meta " * 20000,
    '<a href="' * 8000,
    "<meta http-equiv=refresh content='0;url=" + "x" * 70000,
]


@pytest.mark.timeout(10)
@pytest.mark.parametrize("body", HOSTILE_PAGES, ids=lambda b: b[:12])
def test_find_portal_url_on_hostile_pages(body: str) -> None:
    url = find_portal_url(body, BASE)
    assert url == "" or url.startswith("http://probe.example/")


# --- DNS hijack --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("addresses", "private"),
    [
        ((), False),
        (("142.250.74.3",), False),
        (("2a00:1450:4001:82b::2003",), False),
        (("10.1.2.3",), True),
        (("192.168.0.1",), True),
        (("172.16.5.4",), True),
        (("100.64.0.1",), True),  # RFC 6598 shared space (CGNAT), not global
        (("127.0.0.1",), True),
        (("169.254.1.1",), True),
        (("fd00::1",), True),
        (("fe80::1%wlan0",), True),
        (("142.250.74.3", "10.0.0.1"), True),
        (("not-an-address",), False),
    ],
)
def test_resolves_privately(addresses: tuple[str, ...], private: bool) -> None:
    assert resolves_privately(addresses) is private


@pytest.mark.parametrize(
    ("url", "addresses", "hijacked"),
    [
        ("http://connectivitycheck.gstatic.com/generate_204", ("10.0.0.1",), True),
        ("http://Captive.Apple.com./hotspot-detect.html", ("192.168.1.1",), True),
        ("http://connectivitycheck.gstatic.com/generate_204", ("142.250.74.3",), False),
        ("http://intranet.corp.example/check", ("10.0.0.1",), False),
        ("http://10.0.0.1/check", ("10.0.0.1",), False),
    ],
)
def test_hijack_suspected(url: str, addresses: tuple[str, ...], hijacked: bool) -> None:
    assert hijack_suspected(ProbeResponse(url, addresses=addresses)) is hijacked


@pytest.mark.parametrize(
    ("answers", "same"),
    [
        ({}, False),
        ({"a.example": ["10.0.0.1"]}, False),
        ({"a.example": ["10.0.0.1"], "b.example": ["10.0.0.1"]}, True),
        ({"a.example": ["10.0.0.1"], "A.example.": ["10.0.0.1"]}, False),  # one name twice
        ({"a.example": ["10.0.0.1"], "b.example": ["10.0.0.2"]}, False),
        ({"a.example": ["10.0.0.1", "fd00::1"], "b.example": ["fd00::1", "10.0.0.1"]}, True),
        ({"a.example": ["10.0.0.1"], "b.example": []}, False),
    ],
)
def test_all_names_same_address(answers: dict[str, list[str]], same: bool) -> None:
    assert all_names_same_address(answers) is same


# --- classify_all ------------------------------------------------------------------------------

G = GSTATIC
F = FIREFOX
REDIRECT = ProbeResponse(G.url, 302, (("location", "https://login.venue.example/"),))
ONLINE_G = ProbeResponse(G.url, 204)
ONLINE_F = ProbeResponse(F.url, 200, body=FIREFOX_CANONICAL_BODY)
WEAK_F = ProbeResponse(F.url, 200, body="simulated internet")
LIMITED_F = ProbeResponse(F.url, error="timeout")
OFFLINE_G = ProbeResponse(G.url, error="no-route")

ROUNDS = [
    # (results, connectivity, portal_url)
    ([], C.UNKNOWN, ""),
    ([(G, REDIRECT), (F, ONLINE_F)], C.CAPTIVE, "https://login.venue.example/"),
    ([(G, ONLINE_G), (F, WEAK_F)], C.ONLINE, ""),  # a weak sign loses to an expected answer
    ([(F, WEAK_F)], C.CAPTIVE, F.url),
    ([(F, WEAK_F), (G, REDIRECT)], C.CAPTIVE, "https://login.venue.example/"),
    ([(G, OFFLINE_G), (F, LIMITED_F)], C.LIMITED, ""),
    ([(G, OFFLINE_G)], C.OFFLINE, ""),
    ([(G, ProbeResponse(G.url, 511, body="x"))], C.CAPTIVE, G.url),
    # Two different names, one address: a DNS-hijacking venue whose web side is silent.
    (
        [
            (G, ProbeResponse(G.url, addresses=("203.0.113.9",), error="timeout")),
            (F, ProbeResponse(F.url, addresses=("203.0.113.9",), error="connect-refused")),
        ],
        C.CAPTIVE,
        G.url,
    ),
    # ... and when one probe still got through, the silent one is a strong sign.
    (
        [
            (G, ProbeResponse(G.url, 204, addresses=("203.0.113.9",))),
            (F, ProbeResponse(F.url, addresses=("203.0.113.9",), error="timeout")),
        ],
        C.CAPTIVE,
        F.url,
    ),
    # Names no list knows, one address: the upgrade comes from the sharing alone.
    (
        [
            (
                ProbeSpec("http://a.example/"),
                ProbeResponse("http://a.example/", addresses=("192.0.2.1",), error="timeout"),
            ),
            (
                ProbeSpec("http://b.example/"),
                ProbeResponse("http://b.example/", addresses=("192.0.2.1",), error="no-route"),
            ),
        ],
        C.CAPTIVE,
        "http://a.example/",
    ),
    (
        [
            (G, ProbeResponse(G.url, addresses=("142.250.74.3",), error="timeout")),
            (F, ProbeResponse(F.url, addresses=("34.107.221.82",), error="timeout")),
        ],
        C.LIMITED,
        "",
    ),
]


@pytest.mark.parametrize(("results", "state", "url"), ROUNDS)
def test_classify_all(
    results: list[tuple[ProbeSpec, ProbeResponse]], state: Connectivity, url: str
) -> None:
    verdict = classify_all(results)
    assert (verdict.connectivity, verdict.portal_url) == (state, url)


def test_classify_all_collects_hosts_and_prefers_a_real_sign_in_page() -> None:
    other = ProbeResponse(F.url, 302, (("location", "http://auth.venue.example/x"),))
    verdict = classify_all([(F, WEAK_F), (G, REDIRECT), (F, other)])
    assert verdict.portal_url == "https://login.venue.example/"
    assert verdict.portal_hosts == ("login.venue.example", "auth.venue.example")


def test_is_strong_portal_sign() -> None:
    captive = ProbeVerdict(C.CAPTIVE)
    assert is_strong_portal_sign(REDIRECT, captive)
    assert is_strong_portal_sign(ProbeResponse(G.url, 511), captive)
    assert is_strong_portal_sign(ProbeResponse(G.url, addresses=PRIVATE), captive)
    assert not is_strong_portal_sign(ProbeResponse(G.url, 302), captive)  # no Location
    assert not is_strong_portal_sign(WEAK_F, captive)
    assert not is_strong_portal_sign(REDIRECT, ProbeVerdict(C.ONLINE))


API_URI = "https://api.venue.example/capport"

API_ROUNDS = [
    # (results, api, connectivity, portal_url, hosts, seconds_remaining)
    (
        [(G, ONLINE_G)],
        CaptiveApi(
            captive=True, user_portal_url="https://portal.venue.example/", seconds_remaining=0
        ),
        C.CAPTIVE,
        "https://portal.venue.example/",
        ("portal.venue.example", "api.venue.example"),
        0,
    ),
    (
        [(G, REDIRECT)],
        CaptiveApi(captive=True),
        C.CAPTIVE,
        "https://login.venue.example/",
        ("api.venue.example", "login.venue.example"),
        -1,
    ),
    (
        [(G, REDIRECT)],
        CaptiveApi(captive=False, seconds_remaining=30),
        C.CAPTIVE,
        "https://login.venue.example/",
        ("login.venue.example",),
        30,
    ),
    ([(G, ONLINE_G)], CaptiveApi(captive=False, seconds_remaining=326), C.ONLINE, "", (), 326),
    ([(F, LIMITED_F)], CaptiveApi(captive=False), C.LIMITED, "", (), -1),
    # An unusable API answer is ignored.
    ([(G, ONLINE_G)], CaptiveApi(captive=True, error="not JSON"), C.ONLINE, "", (), -1),
    # Captive by the API alone, with nothing probed.
    (
        [],
        CaptiveApi(captive=True, user_portal_url="https://p.example/"),
        C.CAPTIVE,
        "https://p.example/",
        ("p.example", "api.venue.example"),
        -1,
    ),
]


@pytest.mark.parametrize(("results", "api", "state", "url", "hosts", "seconds"), API_ROUNDS)
def test_classify_all_with_api(
    results: list[tuple[ProbeSpec, ProbeResponse]],
    api: CaptiveApi,
    state: Connectivity,
    url: str,
    hosts: tuple[str, ...],
    seconds: int,
) -> None:
    verdict = classify_all(results, api=api, api_uri=API_URI)
    assert verdict.connectivity is state
    assert verdict.portal_url == url
    assert verdict.portal_hosts == hosts
    assert verdict.seconds_remaining == seconds


def test_api_venue_info_is_kept() -> None:
    api = parse_captive_api(body_of("rfc8908-open.json"))
    verdict = classify_all([(G, ONLINE_G)], api=api, api_uri=API_URI)
    assert verdict.venue_info_url == "https://flight.example.com/entertainment"
    assert verdict.seconds_remaining == 326


def test_recorded_lab_round_after_sign_in_is_online() -> None:
    # The lab's portal does not emulate Firefox's page: a weak sign that must not keep a
    # signed-in user "captive".
    results = [
        (NMCHECK, recorded("hotel-online-nm-check.http", NMCHECK.url)),
        (GSTATIC, recorded("hotel-online-generate_204.http", GSTATIC.url)),
        (FIREFOX, recorded("hotel-online-other-path.http", FIREFOX.url)),
    ]
    api = parse_captive_api(body_of("hotel-api-signed-in.http"))
    verdict = classify_all(results, api=api, api_uri="https://login.hotel.test/captive-portal/api")
    assert verdict.connectivity is C.ONLINE
    assert verdict.seconds_remaining == 3599


# --- RFC 8908 API ------------------------------------------------------------------------------

APIS = [
    # (text, expected CaptiveApi)
    (
        body_of("rfc8908-captive.json"),
        CaptiveApi(captive=True, user_portal_url="https://example.org/portal.html"),
    ),
    (
        body_of("rfc8908-open.json"),
        CaptiveApi(
            captive=False,
            user_portal_url="https://example.org/portal.html",
            venue_info_url="https://flight.example.com/entertainment",
            seconds_remaining=326,
            can_extend_session=True,
        ),
    ),
    # The lab's API on plain http: its URLs are not https and are dropped (RFC 8908 §5).
    (
        body_of("hotel-api-captive.http"),
        CaptiveApi(captive=True, dropped=("user-portal-url", "venue-info-url")),
    ),
    (
        body_of("hotel-api-signed-in.http"),
        CaptiveApi(
            captive=False,
            seconds_remaining=3599,
            can_extend_session=True,
            dropped=("user-portal-url", "venue-info-url"),
        ),
    ),
    (b'{"captive": false, "bytes-remaining": 1000}', CaptiveApi(bytes_remaining=1000)),
    (
        '{"captive": true, "seconds-remaining": 12.7}',
        CaptiveApi(captive=True, seconds_remaining=12),
    ),
    ('{"captive": true, "unknown-key": [1]}', CaptiveApi(captive=True)),
    (
        '{"captive": true, "seconds-remaining": -5}',
        CaptiveApi(True, dropped=("seconds-remaining",)),
    ),
    (
        '{"captive": true, "seconds-remaining": true}',
        CaptiveApi(True, dropped=("seconds-remaining",)),
    ),
    (
        '{"captive": true, "seconds-remaining": "60"}',
        CaptiveApi(True, dropped=("seconds-remaining",)),
    ),
    (
        '{"captive": true, "seconds-remaining": NaN}',
        CaptiveApi(True, dropped=("seconds-remaining",)),
    ),
    (
        '{"captive": true, "bytes-remaining": Infinity}',
        CaptiveApi(True, dropped=("bytes-remaining",)),
    ),
    (
        '{"captive": true, "can-extend-session": "yes"}',
        CaptiveApi(True, dropped=("can-extend-session",)),
    ),
    ('{"captive": true, "user-portal-url": 5}', CaptiveApi(True, dropped=("user-portal-url",))),
    (
        '{"captive": true, "user-portal-url": "https://"}',
        CaptiveApi(True, dropped=("user-portal-url",)),
    ),
    (
        '{"captive": true, "user-portal-url": " HTTPS://Portal.example/x "}',
        CaptiveApi(True, user_portal_url="HTTPS://Portal.example/x"),
    ),
]


@pytest.mark.parametrize(("text", "expected"), APIS)
def test_parse_captive_api(text: str | bytes, expected: CaptiveApi) -> None:
    assert parse_captive_api(text) == expected


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("", "not JSON"),
        ("{not json", "not JSON"),
        (b"\xff\xfe{", "not JSON"),
        ("[" * 60000, "not JSON"),  # nested deeper than the parser's recursion limit
        ("[]", "not a JSON object"),
        ('"captive"', "not a JSON object"),
        ("{}", '"captive" missing'),
        ('{"captive": "true"}', '"captive" missing'),
        ('{"captive": 1}', '"captive" missing'),
        ('{"captive": null}', '"captive" missing'),
    ],
)
def test_parse_captive_api_errors(text: str | bytes, error: str) -> None:
    api = parse_captive_api(text)
    assert api.error.startswith(error)
    assert api.captive is False


@pytest.mark.parametrize(
    ("uri", "unrestricted", "fetch"),
    [
        (UNRESTRICTED_URN, True, ""),
        ("  URN:IETF:PARAMS:CAPPORT:UNRESTRICTED ", True, ""),
        (
            "https://login.hotel.test/captive-portal/api",
            False,
            "https://login.hotel.test/captive-portal/api",
        ),
        (" HTTPS://api.example/x ", False, "HTTPS://api.example/x"),
        ("http://login.hotel.test/captive-portal/api", False, ""),
        ("https://", False, ""),
        ("", False, ""),
    ],
)
def test_rfc8910_uris(uri: str, unrestricted: bool, fetch: str) -> None:
    assert is_unrestricted(uri) is unrestricted
    assert api_uri_to_fetch(uri) == fetch


# --- probe specs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "status", "body"),
    [
        ("http://nmcheck.gnome.org/check_network_status.txt", 200, NM_DEFAULT_RESPONSE),
        ("http://fedoraproject.org/static/hotspot.txt", 200, "OK"),
        ("http://connectivity-check.ubuntu.com./", 204, ""),
        (" http://connectivitycheck.gstatic.com/generate_204 ", 204, ""),
        ("http://clients3.google.com/generate_204", 204, ""),
        ("http://www.google.com/gen_204", 204, ""),
        ("http://captive.apple.com/hotspot-detect.html", 200, APPLE_SUCCESS_BODY),
        ("http://www.msftconnecttest.com/connecttest.txt", 200, "Microsoft Connect Test"),
        ("http://detectportal.firefox.com/success.txt", 200, "success"),
        ("http://check.example/nm", 200, NM_DEFAULT_RESPONSE),
    ],
)
def test_spec_for_url(url: str, status: int, body: str) -> None:
    spec = spec_for_url(url)
    assert (spec.url, spec.expected_status, spec.expected_body) == (url.strip(), status, body)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("http://a.example/x", ProbeSpec("http://a.example/x", 200, NM_DEFAULT_RESPONSE)),
        ("http://a.example/generate_204", ProbeSpec("http://a.example/generate_204", 204)),
        ("  http://a.example/x   204 ", ProbeSpec("http://a.example/x", 204, "")),
        ("http://a.example/x 200 Hello there", ProbeSpec("http://a.example/x", 200, "Hello there")),
    ],
)
def test_parse_probe_spec(text: str, expected: ProbeSpec) -> None:
    assert parse_probe_spec(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "   ", "https://a.example/x", "ftp://a.example/", "http:///x", "http://a.example/ ok",
     "http://a.example/ 99", "http://a.example/ 600"],
)  # fmt: skip
def test_parse_probe_spec_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_probe_spec(text)


def test_default_probe_specs() -> None:
    assert default_probe_specs() == DEFAULT_PROBE_SPECS
    assert len(DEFAULT_PROBE_SPECS) >= 2
    assert all(s.url.startswith("http://") for s in DEFAULT_PROBE_SPECS)
    with_nm = default_probe_specs("http://nmcheck.gnome.org/check_network_status.txt")
    assert with_nm[0] == NMCHECK
    assert with_nm[1:] == DEFAULT_PROBE_SPECS
    mine = ProbeSpec("http://mine.example/ok", 200, "ok")
    assert default_probe_specs("  ", [mine]) == (mine,)
    # NM's check URI is also configured: probed once.
    assert default_probe_specs(GSTATIC.url, [GSTATIC, mine]) == (GSTATIC, mine)


# --- routing -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hosts", "names"),
    [
        ((), ()),
        (("login.hotel.test",), ("login.hotel.test", "hotel.test")),
        (("hotel.test",), ("hotel.test",)),
        (("Login.Hotel.Test.",), ("login.hotel.test", "hotel.test")),
        (("a.login.hotel.test",), ("a.login.hotel.test", "login.hotel.test")),
        (("example.co.uk",), ("example.co.uk",)),
        (("wifi.example.co.uk",), ("wifi.example.co.uk", "example.co.uk")),
        (("portal.gstatic.com",), ("portal.gstatic.com",)),  # never all of a probe's domain
        (("10.0.0.1", "", "fd00::1"), ()),
        (
            ("login.hotel.test", "api.hotel.test"),
            ("login.hotel.test", "hotel.test", "api.hotel.test"),
        ),
    ],
)
def test_routing_names(hosts: tuple[str, ...], names: tuple[str, ...]) -> None:
    assert routing_names(hosts) == names


def test_core_detect_is_pure() -> None:
    import ast

    import portal.core.detect as module

    tree = ast.parse(Path(module.__file__).read_text())
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in (
            node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")]
        )
    }
    assert not imported & {"asyncio", "socket", "httpx", "dns", "logging", "os", "subprocess"}


# --- never raises, whatever a venue sends ------------------------------------------------------


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=20), inner, max_size=4)
    ),
    max_leaves=10,
)
_api_objects = st.fixed_dictionaries(
    {},
    optional={
        "captive": _json_values,
        "user-portal-url": st.text(max_size=30) | _json_values,
        "venue-info-url": st.text(max_size=30),
        "seconds-remaining": _json_values,
        "bytes-remaining": _json_values,
        "can-extend-session": _json_values,
    },
)


@settings(max_examples=100, deadline=None)
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200), _api_objects.map(json.dumps)))
def test_parse_captive_api_never_raises(text: str | bytes) -> None:
    api = parse_captive_api(text)
    assert api.error or isinstance(api.captive, bool)
    assert api.seconds_remaining >= -1 and api.bytes_remaining >= -1
    for url in (api.user_portal_url, api.venue_info_url):
        assert url == "" or url.lower().startswith("https://")


_html_bits = st.sampled_from(
    ["<meta http-equiv=refresh content='0;url=", "<a href=", "location=", "location.replace(",
     '"', "'", ">", "<", "http://", "https://", "javascript:", "//", "[", "]", ":99999", "&amp;",
     "/p", " ", "x.example", "\n"]
)  # fmt: skip


@settings(max_examples=100, deadline=None)
@given(st.lists(_html_bits | st.text(max_size=5), max_size=30).map("".join))
def test_find_portal_url_never_raises(body: str) -> None:
    url = find_portal_url(body, BASE)
    assert url == "" or url.split(":", 1)[0].lower() in ("http", "https")


@settings(max_examples=100, deadline=None)
@given(
    status=st.integers(min_value=0, max_value=999),
    location=st.text(max_size=30),
    body=st.text(max_size=50),
    addresses=st.lists(
        st.sampled_from(["10.0.0.1", "142.250.74.3", "fd00::1", "bogus"]), max_size=2
    ),
    url=st.sampled_from([GSTATIC.url, P, "http://[fd00::1/", "http://10.0.0.1/x"]),
)
def test_classify_never_raises(
    status: int, location: str, body: str, addresses: list[str], url: str
) -> None:
    response = ProbeResponse(url, status, (("location", location),), body, tuple(addresses))
    verdict = classify_all([(GSTATIC, response), (NMCHECK, response)])
    assert verdict.connectivity in set(Connectivity)
    assert all(h and h == h.lower() for h in verdict.portal_hosts)
