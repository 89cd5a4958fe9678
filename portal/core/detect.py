"""Captive-portal detection rules: probe responses and RFC 8908 answers in, a verdict out.

    classify(response, spec)            one probe → ProbeVerdict (NetworkManager's rules)
    classify_all(results, api=, ...)    a probe round (+ API answer) → one ProbeVerdict
    parse_captive_api(text)             RFC 8908 JSON → CaptiveApi (bad input → `error` set)
    default_probe_specs(check_uri, configured)   what to probe on a network
    parse_probe_spec(text)              "URL [STATUS [BODY]]" from the config → ProbeSpec
    is_unrestricted(uri), api_uri_to_fetch(uri)   RFC 8910 URI handling
    routing_names(hosts)                names to send to the venue's DNS while a portal is up

The rules follow NetworkManager (src/core/nm-connectivity.c): the expected body (a prefix
match) or, when none is expected, 204 means online, and so does the header
`X-NetworkManager-Status: online`; any other HTTP answer, redirects included, means a portal;
no answer means limited. On top of NM: a DNS-hijacking portal is recognised even when its
HTTP side does not answer, the sign-in URL is dug out of the answer, and the RFC 8908 API
(when the network advertises one) is believed about captivity and the session's time left.

Pure: no I/O, no logging, no clock. Must not import asyncio, sockets, httpx or dnspython.
"""

from __future__ import annotations

import html
import ipaddress
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from urllib.parse import urljoin, urlsplit

from portal.core.model import Connectivity
from portal.core.probe_model import CaptiveApi, ProbeResponse, ProbeSpec, ProbeVerdict

# RFC 8910 §2: this URI in DHCP/RA means "no captive portal here"; clients may skip probing.
UNRESTRICTED_URN = "urn:ietf:params:capport:unrestricted"

NM_DEFAULT_RESPONSE = "NetworkManager is online"
APPLE_SUCCESS_BODY = "<HTML><HEAD><TITLE>Success</TITLE></HEAD><BODY>Success</BODY></HTML>"
FIREFOX_CANONICAL_BODY = (
    '<meta http-equiv="refresh" content="0;url=https://support.mozilla.org/kb/captive-portal"/>'
)

# Two well-known probes besides NM's own: run by parties other than the distribution, answered
# without a body to check (Android) or with a fixed one (Firefox), plain HTTP so that a portal
# can intercept them.
DEFAULT_PROBE_SPECS: tuple[ProbeSpec, ...] = (
    ProbeSpec("http://connectivitycheck.gstatic.com/generate_204", 204),
    ProbeSpec("http://detectportal.firefox.com/canonical.html", 200, FIREFOX_CANONICAL_BODY),
)

# Check URIs shipped by distributions, with the answer their NM configuration expects. An
# unknown URI gets NM's default response; servers that add `X-NetworkManager-Status: online`
# (Ubuntu's) are recognised by that header anyway.
KNOWN_CHECK_URIS: Mapping[str, ProbeSpec] = {
    spec.url: spec
    for spec in (
        ProbeSpec("http://nmcheck.gnome.org/check_network_status.txt", 200, NM_DEFAULT_RESPONSE),
        ProbeSpec("http://network-test.debian.org/nm", 200, NM_DEFAULT_RESPONSE),
        ProbeSpec("http://fedoraproject.org/static/hotspot.txt", 200, "OK"),
        ProbeSpec("http://connectivity-check.ubuntu.com/", 204),
        ProbeSpec("http://connectivity-check.ubuntu.com./", 204),
        *DEFAULT_PROBE_SPECS,
        # Other platforms' probes, for configs that name them (their pages, as served).
        ProbeSpec("http://detectportal.firefox.com/success.txt", 200, "success"),
        ProbeSpec("http://captive.apple.com/hotspot-detect.html", 200, APPLE_SUCCESS_BODY),
        ProbeSpec("http://www.msftconnecttest.com/connecttest.txt", 200, "Microsoft Connect Test"),
        ProbeSpec("http://www.msftncsi.com/ncsi.txt", 200, "Microsoft NCSI"),
    )
}

# Public probe hosts never resolve to private, loopback, link-local or shared (CGNAT)
# addresses; when the venue's DNS says they do, the venue is hijacking DNS for its portal.
KNOWN_PUBLIC_PROBE_HOSTS = frozenset(
    {
        "connectivitycheck.gstatic.com",
        "www.gstatic.com",
        "clients3.google.com",
        "www.google.com",
        "play.googleapis.com",
        "detectportal.firefox.com",
        "captive.apple.com",
        "www.msftconnecttest.com",
        "www.msftncsi.com",
        "nmcheck.gnome.org",
        "network-test.debian.org",
        "connectivity-check.ubuntu.com",
        "fedoraproject.org",
    }
)

# Errors that mean "this machine cannot send at all" rather than "nothing answered".
OFFLINE_ERRORS = frozenset({"no-route", "no-address", "bind-error"})

# Every pattern is bounded (no `.*` across the page): a hostile page must not make the
# classification, which runs on the daemon's event loop, take quadratic time. URLs in pages
# hold no quotes, spaces or angle brackets.
MAX_SCAN_CHARS = 64 * 1024
_URL_CHARS = r"""[^"'\s<>]{1,2048}"""
_META_TAG = re.compile(r"<meta\b[^<>]{0,2048}>", re.IGNORECASE)
_ATTR = re.compile(r"""([a-zA-Z_:-]{1,64})\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'>]+))""")
_REFRESH_URL = re.compile(r"""^\s*\d*(?:\.\d*)?\s*[;,]?\s*url\s*=\s*['"]?([^'"]+)""", re.I)
_JS_ASSIGN = re.compile(r"""\blocation(?:\.href)?\s*=\s*(["'])(""" + _URL_CHARS + r""")\1""", re.I)
_JS_CALL = re.compile(
    r"""\blocation\.(?:replace|assign)\(\s*(["'])(""" + _URL_CHARS + r""")\1\s*\)""", re.I
)
_A_HREF = re.compile(
    r"""<a\b[^<>]{0,512}?\bhref\s*=\s*(?:"([^"]{0,2048})"|'([^']{0,2048})'|([^\s"'>]{1,2048}))""",
    re.I,
)

# Second-level labels under which the label to their left is what a venue owns
# (example.co.uk); without a public-suffix list we stay on the safe side and route no parent
# domain for them.
_GENERIC_SECOND_LEVEL = frozenset(
    {"co", "com", "net", "org", "gov", "edu", "ac", "or", "ne", "go", "gob", "mil", "nic"}
)


# --- probe specs -------------------------------------------------------------------------------


def spec_for_url(url: str) -> ProbeSpec:
    """The expected answer for a probe URL: known table, then `*204` paths, then NM's default."""
    url = url.strip()
    known = KNOWN_CHECK_URIS.get(url)
    if known is not None:
        return known
    path = urlsplit(url).path
    if path.endswith(("generate_204", "gen_204")):
        return ProbeSpec(url, 204)
    return ProbeSpec(url, 200, NM_DEFAULT_RESPONSE)


def parse_probe_spec(text: str) -> ProbeSpec:
    """Parse a config entry "URL", "URL 204" or "URL 200 Expected body". Raise ValueError.

    The URL must be plain http: a portal can only answer a probe it can intercept.
    """
    parts = text.strip().split(None, 2)
    if not parts:
        raise ValueError("empty probe URL")
    url = parts[0]
    split = urlsplit(url)
    if split.scheme != "http" or not split.hostname:
        raise ValueError(f"probe URL {url!r} must be an http:// URL with a host")
    if len(parts) == 1:
        return spec_for_url(url)
    if not parts[1].isdigit() or not 100 <= int(parts[1]) <= 599:
        raise ValueError(f"probe status {parts[1]!r} is not an HTTP status code")
    return ProbeSpec(url, int(parts[1]), parts[2] if len(parts) > 2 else "")


def default_probe_specs(
    check_uri: str = "", configured: Iterable[ProbeSpec] = ()
) -> tuple[ProbeSpec, ...]:
    """What to probe: NM's own check URI first when known, then the configured specs (or, when
    none are configured, DEFAULT_PROBE_SPECS). Duplicate URLs are probed once."""
    specs: list[ProbeSpec] = []
    if check_uri.strip():
        specs.append(spec_for_url(check_uri))
    chosen = tuple(configured) or DEFAULT_PROBE_SPECS
    seen = {s.url for s in specs}
    for spec in chosen:
        if spec.url not in seen:
            seen.add(spec.url)
            specs.append(spec)
    return tuple(specs)


# --- RFC 8910 / 8908 ---------------------------------------------------------------------------


def is_unrestricted(uri: str) -> bool:
    """True for RFC 8910's "no captive portal here" URN (URNs compare case-insensitively)."""
    return uri.strip().lower() == UNRESTRICTED_URN


def api_uri_to_fetch(uri: str) -> str:
    """The API URI worth fetching, or "": RFC 8910 §2 requires https; the URN means no API."""
    uri = uri.strip()
    split = urlsplit(uri)
    if split.scheme.lower() != "https" or not split.hostname:
        return ""
    return uri


def _is_https_url(value: object) -> bool:
    if not isinstance(value, str):
        return False
    split = urlsplit(value)
    return split.scheme.lower() == "https" and bool(split.hostname)


def _count(value: object) -> int | None:
    """A non-negative JSON number as int (RFC 8908 §5 numbers), or None. bool is not a number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if value != value or value < 0 or value == float("inf"):  # NaN, negative, infinite
        return None
    return int(value)


def parse_captive_api(text: str | bytes) -> CaptiveApi:
    """Parse an RFC 8908 §5 API answer. Never raises: a bad answer comes back with `error`.

    `captive` is required and must be a boolean. `user-portal-url` and `venue-info-url` must
    be https (RFC 8908 §5: "MUST be secure"); other values are dropped. Unknown keys are
    ignored, as the RFC asks.
    """
    try:
        data = json.loads(text)
    except RecursionError:  # "[[[[...": deeper than the parser goes
        return CaptiveApi(error="not JSON: nested too deeply")
    except ValueError as exc:  # UnicodeDecodeError included
        return CaptiveApi(error=f"not JSON: {exc}")
    if not isinstance(data, dict):
        return CaptiveApi(error="not a JSON object")
    captive = data.get("captive")
    if not isinstance(captive, bool):
        return CaptiveApi(error='"captive" missing or not a boolean')
    dropped: list[str] = []
    urls: dict[str, str] = {}
    for key in ("user-portal-url", "venue-info-url"):
        if key in data:
            if _is_https_url(data[key]):
                urls[key] = data[key].strip()
            else:
                dropped.append(key)
    counts: dict[str, int] = {}
    for key in ("seconds-remaining", "bytes-remaining"):
        if key in data:
            number = _count(data[key])
            if number is None:
                dropped.append(key)
            else:
                counts[key] = number
    extend = data.get("can-extend-session", False)
    if not isinstance(extend, bool):
        dropped.append("can-extend-session")
        extend = False
    return CaptiveApi(
        captive=captive,
        user_portal_url=urls.get("user-portal-url", ""),
        venue_info_url=urls.get("venue-info-url", ""),
        seconds_remaining=counts.get("seconds-remaining", -1),
        bytes_remaining=counts.get("bytes-remaining", -1),
        can_extend_session=extend,
        dropped=tuple(dropped),
    )


# --- the sign-in URL ---------------------------------------------------------------------------


def _http_url(candidate: str, base: str) -> str:
    """`candidate` made absolute against `base` when it is an http(s) URL, else ""."""
    candidate = html.unescape(candidate).strip()
    if not candidate:
        return ""
    try:
        url = urljoin(base, candidate)
        split = urlsplit(url)
        split.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError:
        return ""
    if split.scheme.lower() not in ("http", "https") or not split.hostname:
        return ""
    return url


def _attributes(tag: str) -> dict[str, str]:
    attrs: dict[str, str] = {}
    for match in _ATTR.finditer(tag):
        value = next(g for g in match.groups()[1:] if g is not None)
        attrs.setdefault(match.group(1).lower(), value)
    return attrs


def find_portal_url(body: str, base: str) -> str:
    """The sign-in URL an HTML answer points to, or "".

    Looked for in the order browsers act on them: a `<meta http-equiv="refresh">`, a script
    assigning `location`, then the first link. Only the first MAX_SCAN_CHARS are read.
    """
    body = body[:MAX_SCAN_CHARS]
    for tag in _META_TAG.findall(body):
        attrs = _attributes(tag)
        if attrs.get("http-equiv", "").lower() == "refresh":
            match = _REFRESH_URL.match(attrs.get("content", ""))
            if match:
                url = _http_url(match.group(1), base)
                if url:
                    return url
    for pattern in (_JS_ASSIGN, _JS_CALL):
        for match in pattern.finditer(body):
            url = _http_url(match.group(2), base)
            if url:
                return url
    for match in _A_HREF.finditer(body):
        href = next(g for g in match.groups() if g is not None)
        url = _http_url(href, base)
        if url:
            return url
    return ""


def _host(url: str) -> str:
    """The lower-case host name of `url`, or "" for an IP literal or no host."""
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        return ""
    host = host.rstrip(".").lower()
    if not host or _ip(host) is not None:
        return ""
    return host


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(i for i in items if i))


# --- DNS hijack --------------------------------------------------------------------------------


def resolves_privately(addresses: Iterable[str]) -> bool:
    """True when any address is not globally routable (RFC 1918, CGNAT, loopback, ULA, ...)."""
    for text in addresses:
        ip = _ip(text)
        if ip is not None and not ip.is_global:
            return True
    return False


def hijack_suspected(response: ProbeResponse) -> bool:
    """The venue DNS sent a known public probe host to an address it never has."""
    host = _host(response.url)
    return host in KNOWN_PUBLIC_PROBE_HOSTS and resolves_privately(response.addresses)


def all_names_same_address(answers: Mapping[str, Sequence[str]]) -> bool:
    """True when at least two different names were resolved and all got the same addresses.

    Distinct public probe hosts never share addresses; a venue DNS answering every name with
    its portal does exactly that.
    """
    resolved = {name.rstrip(".").lower(): frozenset(a) for name, a in answers.items() if a}
    return len(resolved) >= 2 and len(set(resolved.values())) == 1


# --- verdicts ----------------------------------------------------------------------------------


def _is_online(response: ProbeResponse, spec: ProbeSpec) -> bool:
    # NM believes this header whatever the body (Ubuntu's and the lab's servers send it).
    if response.header("x-networkmanager-status").strip().lower() == "online":
        return True
    if spec.expected_body:
        # NM compares a prefix of the body; surrounding whitespace is not meaningful.
        return response.status == spec.expected_status and response.body.lstrip().startswith(
            spec.expected_body.strip()
        )
    if response.status == spec.expected_status:
        return True
    # NM with an empty expected response: "204 or send no data".
    return response.status == 200 and not response.body.strip()


def _captive(response: ProbeResponse, url: str, reason: str) -> ProbeVerdict:
    probe_host = _host(response.url)
    hosts = tuple(h for h in (_host(url),) if h and h != probe_host)
    return ProbeVerdict(Connectivity.CAPTIVE, portal_url=url, portal_hosts=hosts, reason=reason)


def classify(response: ProbeResponse, spec: ProbeSpec) -> ProbeVerdict:
    """One probe's verdict, by NetworkManager's rules plus DNS-hijack recognition."""
    if response.status == 0:
        if hijack_suspected(response):
            # The portal's HTTP side did not answer, but its DNS gave it away: NM would say
            # LIMITED here; the user can still be sent to the probe URL to be intercepted.
            return _captive(
                response,
                response.url,
                f"probe host resolved to {', '.join(response.addresses)}",
            )
        error = response.error or "no-answer"
        state = Connectivity.OFFLINE if error in OFFLINE_ERRORS else Connectivity.LIMITED
        return ProbeVerdict(state, error=error, reason=f"no answer from {response.url}: {error}")
    if _is_online(response, spec):
        return ProbeVerdict(Connectivity.ONLINE, reason=f"expected answer from {response.url}")
    location = response.header("location")
    if 300 <= response.status < 400 and location:
        url = _http_url(location, response.url)
        if url:
            return _captive(response, url, f"{response.status} redirect to {url}")
    url = find_portal_url(response.body, response.url)
    if url:
        return _captive(response, url, f"{response.status} answer pointing to {url}")
    # Any other answer is a portal too (NM); opening the probe URL lets the portal intercept it.
    return _captive(response, response.url, f"unexpected {response.status} answer")


def _merge_api(verdict: ProbeVerdict, api: CaptiveApi, api_uri: str) -> ProbeVerdict:
    if api.captive:
        url = api.user_portal_url or verdict.portal_url
        hosts = _unique((_host(api.user_portal_url), _host(api_uri), *verdict.portal_hosts))
        return ProbeVerdict(
            Connectivity.CAPTIVE,
            portal_url=url,
            portal_hosts=hosts,
            seconds_remaining=api.seconds_remaining,
            venue_info_url=api.venue_info_url,
            reason=f"captive-portal API says captive; {verdict.reason}",
        )
    # "Not captive" from the API cannot make a failing probe succeed, and a portal the probe
    # actually met outweighs an API that has not caught up; it still tells the session's time.
    return ProbeVerdict(
        verdict.connectivity,
        portal_url=verdict.portal_url,
        portal_hosts=verdict.portal_hosts,
        seconds_remaining=api.seconds_remaining,
        venue_info_url=api.venue_info_url,
        error=verdict.error,
        reason=verdict.reason,
    )


def is_strong_portal_sign(response: ProbeResponse, verdict: ProbeVerdict) -> bool:
    """A captive verdict no working internet path produces: a redirect, RFC 6585's 511, or an
    unanswered probe whose host the venue's DNS hijacked.

    A 200 with an unexpected body is a weaker sign: it is also what a probe endpoint that
    changed its content (or a test network that does not emulate it) answers.
    """
    if verdict.connectivity is not Connectivity.CAPTIVE:
        return False
    if response.status == 0 or response.status == 511:
        return True
    return 300 <= response.status < 400 and bool(response.header("location"))


def classify_all(
    results: Sequence[tuple[ProbeSpec, ProbeResponse]],
    *,
    api: CaptiveApi | None = None,
    api_uri: str = "",
) -> ProbeVerdict:
    """One verdict for a probe round.

    A strong portal sign (see is_strong_portal_sign) wins even over another probe's expected
    answer, as on Android, where the HTTP probe's portal outweighs HTTPS success: a portal
    that lets one well-known probe through still wants a sign-in. Then any online answer, then
    weak portal signs (an unexpected 200), then limited, then offline. When every probed name
    resolved to the same addresses, failed probes count as strong portal signs. A usable RFC
    8908 answer saying captive makes the verdict captive with its sign-in URL.
    """
    verdicts = [classify(response, spec) for spec, response in results]
    strong = [is_strong_portal_sign(r, v) for v, (_, r) in zip(verdicts, results, strict=True)]
    answers = {_host(r.url) or r.url: r.addresses for _, r in results}
    if all_names_same_address(answers):
        shared = ", ".join(next(iter(a for a in answers.values() if a)))
        for i, (v, (_, r)) in enumerate(zip(verdicts, results, strict=True)):
            if v.connectivity in (Connectivity.LIMITED, Connectivity.OFFLINE):
                verdicts[i] = _captive(r, r.url, f"every probe host resolved to {shared}")
                strong[i] = True
    verdict = _combine(verdicts, strong)
    if api is not None and not api.error:
        verdict = _merge_api(verdict, api, api_uri)
    return verdict


def _combine(verdicts: Sequence[ProbeVerdict], strong: Sequence[bool]) -> ProbeVerdict:
    if not verdicts:
        return ProbeVerdict(Connectivity.UNKNOWN, error="no-probes", reason="nothing was probed")
    captive = [v for v in verdicts if v.connectivity is Connectivity.CAPTIVE]
    online = next((v for v in verdicts if v.connectivity is Connectivity.ONLINE), None)
    if captive and (online is None or any(strong)):
        # Prefer a verdict that found a sign-in page elsewhere over "open the probe URL".
        best = next((v for v in captive if v.portal_hosts), captive[0])
        hosts = _unique(h for v in captive for h in v.portal_hosts)
        return ProbeVerdict(
            Connectivity.CAPTIVE, portal_url=best.portal_url, portal_hosts=hosts, reason=best.reason
        )
    if online is not None:
        return online
    limited = next((v for v in verdicts if v.connectivity is Connectivity.LIMITED), None)
    return limited if limited is not None else verdicts[0]


# --- routing while a portal is up --------------------------------------------------------------


def routing_names(hosts: Iterable[str]) -> tuple[str, ...]:
    """The names to resolve through the venue's DNS while its portal is up.

    Each portal host, plus its parent domain when that is safely the venue's own
    (login.hotel.example → hotel.example): sign-in pages pull assets from sibling hosts. No
    parent is added for two-label hosts or when the parent looks like a public suffix
    (example.co.uk), and never a domain of a public probe host.
    """
    names: list[str] = []
    for raw in hosts:
        host = raw.rstrip(".").lower()
        if not host or _ip(host) is not None:
            continue
        names.append(host)
        labels = host.split(".")
        if len(labels) < 3:
            continue
        parent = ".".join(labels[1:])
        if len(labels) == 3 and labels[1] in _GENERIC_SECOND_LEVEL:
            continue
        if any(p == parent or p.endswith("." + parent) for p in KNOWN_PUBLIC_PROBE_HOSTS):
            continue
        names.append(parent)
    return _unique(names)
