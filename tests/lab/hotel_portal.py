"""A simulated hotel captive portal for the test lab: HTTP(S), RFC 8908 API, blackhole DNS.

Run as a script (the lab starts it inside the hotel network namespace):

    python3 hotel_portal.py --listen 10.77.0.1 --lifetime 600 \\
        [--https-port 443 --cert server.pem --key server.key] \\
        [--control-socket PATH] [--state-file PATH] [--ready-file PATH] \\
        [--blackhole-dns 192.0.2.53 --blackhole-mode drop|refused|servfail|nxdomain] \\
        [--also-listen 203.0.113.80 ...] [--partner-host cdn.venue-partner.test]

Behaviour, per client (clients are told apart by source IP):

- Before login every URL on every host answers ``302 Location:
  <scheme>://login.hotel.test/portal?orig=<url>`` (``--unauth-style page``: ``200`` with the
  sign-in page instead). ``<scheme>`` is https when HTTPS is on (RFC 8908 and RFC 8910 want the
  API and the sign-in page on https).
- The portal host (``--portal-host``, or ``--portal-ip`` by address) serves ``GET /portal``,
  ``POST /login``, ``POST /logout``, ``GET /venue`` and ``GET /captive-portal/api``
  (``application/captive+json``: ``captive``, ``user-portal-url``, ``venue-info-url``, and
  ``seconds-remaining`` / ``can-extend-session`` once logged in).
- After login: ``/check_network_status.txt`` -> ``NetworkManager is online`` (NetworkManager's
  check), ``/generate_204`` and ``/gen_204`` -> 204, ``/hotspot-detect.html`` -> Apple's
  "Success" page, ``/connecttest.txt`` -> ``Microsoft Connect Test``, ``/success.txt`` ->
  ``success``; anything else -> 200 "simulated internet".
- Lab controls, on the portal host and on ``--control-socket`` (HTTP over a Unix socket, so the
  lab can reach them from outside the namespaces): ``GET /__lab/state``,
  ``GET|POST /__lab/login?ip=A[&seconds=N]`` (a session of N seconds instead of
  ``--session-seconds``; when it runs out the client is captive again),
  ``GET|POST /__lab/logout?ip=A``, ``GET|POST /__lab/reset``.
- ``--blackhole-dns ADDR`` also listens on UDP ADDR:53 and drops every query (or answers
  REFUSED / SERVFAIL / NXDOMAIN, or ``hijack``: every A query with the portal's address): the
  "user's public resolver" a hotel blocks. With ``--dns-after-login ADDR`` it answers signed-in
  clients as a resolver of the internet would (every A query with ADDR, an address the portal
  also serves on), so a portal that takes the network back takes DNS back too.
- ``--also-listen ADDR`` (repeatable, IPv4 or IPv6) serves the same on more addresses (an
  off-link one that clients reach through the venue's gateway, an IPv6 one).
- ``--partner-host NAME``: the sign-in page loads ``<scheme>://NAME/partner.js``, a script from a
  third party (a CDN) that is reachable before login, like the walled garden of a real portal;
  the script writes "Wi-Fi by Venue Partner" into the page.
- ``--open-network``: no portal at all: every client is online from its first request (a
  network that is never captive), until ``/__lab/logout`` says otherwise for one.

It must not: import anything outside the standard library (it runs with whatever python3 the
machine has), listen anywhere but the addresses it is given, or run longer than ``--lifetime``
seconds. It never changes the system; its only files are the ones named on the command line.
"""

from __future__ import annotations

import argparse
import collections
import html
import json
import os
import select
import signal
import socket
import socketserver
import ssl
import struct
import sys
import threading
import time
import types
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

NM_CHECK_BODY = b"NetworkManager is online"
APPLE_SUCCESS = b"<HTML><HEAD><TITLE>Success</TITLE></HEAD><BODY>Success</BODY></HTML>"
MAX_BODY = 64 * 1024  # a sign-in form is tiny; refuse to read more than this
REQUEST_LOG_LEN = 500  # recent requests kept for /__lab/state


@dataclass(frozen=True)
class Settings:
    """What the portal pretends to be; fixed for the life of the process."""

    portal_host: str = "login.hotel.test"
    portal_ip: str = "10.77.0.1"
    public_scheme: str = "http"  # scheme of the sign-in and API URLs it hands out
    public_port: int = 80  # port of those URLs (omitted from them when it is the default)
    unauth_style: str = "redirect"  # or "page"
    session_s: int = 3600
    partner_host: str = ""  # a third-party host the sign-in page loads a script from
    open_network: bool = False  # no portal: every client is online unless logged out

    @property
    def base_url(self) -> str:
        default = 443 if self.public_scheme == "https" else 80
        port = "" if self.public_port == default else f":{self.public_port}"
        return f"{self.public_scheme}://{self.portal_host}{port}"

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/captive-portal/api"


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


class PortalState:
    """Who is logged in, plus a short request log. Thread-safe; optionally mirrored to a file."""

    def __init__(self, settings: Settings, state_file: str | None) -> None:
        self._settings = settings
        self._state_file = state_file
        self._lock = threading.Lock()
        self._logins: dict[str, float] = {}  # client IP -> monotonic end of its session
        self._logged_out: set[str] = set()  # open network: clients sent back to the portal
        self._requests: collections.deque[dict[str, Any]] = collections.deque(
            maxlen=REQUEST_LOG_LEN
        )
        self._dns_queries = 0
        self._write()

    def login(self, ip: str, session_s: float | None = None) -> None:
        """Sign `ip` in for `session_s` seconds (default: the portal's session length)."""
        length = self._settings.session_s if session_s is None else session_s
        with self._lock:
            self._logins[ip] = time.monotonic() + length
            self._logged_out.discard(ip)
        self._write()

    def logout(self, ip: str) -> None:
        with self._lock:
            self._logins.pop(ip, None)
            self._logged_out.add(ip)
        self._write()

    def reset(self) -> None:
        with self._lock:
            self._logins.clear()
            self._logged_out.clear()
            self._requests.clear()
            self._dns_queries = 0
        self._write()

    def seconds_remaining(self, ip: str) -> int | None:
        """Seconds left in `ip`'s session, or None when it is not logged in (or it expired)."""
        with self._lock:
            now = time.monotonic()
            ends = self._logins.get(ip)
            if self._settings.open_network and ip not in self._logged_out:
                if ends is None or ends <= now:
                    # no portal here: a session as long as the portal's default, renewed
                    ends = self._logins[ip] = now + self._settings.session_s
            if ends is None:
                return None
            left = ends - now
            if left <= 0:
                # The session ran out: the client is captive again, like a real hotel.
                del self._logins[ip]
                return None
            return int(left)

    def record_request(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self._requests.append(entry)

    def record_dns_query(self) -> None:
        with self._lock:
            self._dns_queries += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            ips = sorted(self._logins)
            requests = list(self._requests)
            dns_queries = self._dns_queries
        return {
            "logged_in": [ip for ip in ips if self.seconds_remaining(ip) is not None],
            "requests": requests,
            "blackhole_dns_queries": dns_queries,
            "api_url": self._settings.api_url,
            "portal_url": f"{self._settings.base_url}/portal",
            "unauth_style": self._settings.unauth_style,
        }

    def _write(self) -> None:
        if not self._state_file:
            return
        with self._lock:
            data = {"logged_in": sorted(self._logins)}
        tmp = f"{self._state_file}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f)
        os.replace(tmp, self._state_file)


def _page(title: str, body_html: str) -> bytes:
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title></head><body>{body_html}</body></html>"
    ).encode()


def _html(status: int, title: str, body_html: str) -> Response:
    return Response(status, _page(title, body_html), {"Content-Type": "text/html; charset=utf-8"})


def _text(status: int, text: bytes, **headers: str) -> Response:
    return Response(status, text, {"Content-Type": "text/plain; charset=utf-8", **headers})


def _json(data: dict[str, Any], content_type: str = "application/json") -> Response:
    return Response(200, json.dumps(data).encode(), {"Content-Type": content_type})


PARTNER_SCRIPT = (
    b"document.getElementById('partner').textContent = 'Wi-Fi by Venue Partner';\n"
    b"document.body.dataset.partner = 'loaded';\n"
)


def sign_in_page(orig: str, partner_url: str = "") -> Response:
    form = (
        "<h1>Welcome to Hotel Lab</h1><p>Please sign in to use the Internet.</p>"
        "<form method='post' action='/login'>"
        f"<input type='hidden' name='orig' value='{html.escape(orig, quote=True)}'>"
        "<button type='submit'>Accept and connect</button></form>"
    )
    if partner_url:
        form += (
            f"<p id='partner'></p><script src='{html.escape(partner_url, quote=True)}'></script>"
        )
    return _html(200, "Hotel Lab sign-in", form)


def lab_control(
    state: PortalState, path: str, query: dict[str, list[str]], client_ip: str | None
) -> Response:
    """The /__lab/* endpoints: let tests log a client in or out without a browser."""
    ip = query.get("ip", [client_ip])[0]
    if path == "/__lab/state":
        return _json(state.snapshot())
    if path == "/__lab/reset":
        state.reset()
        return _json(state.snapshot())
    if path in ("/__lab/login", "/__lab/logout"):
        if not ip:
            return _text(400, b"missing ip=\n")
        if path == "/__lab/logout":
            state.logout(ip)
            return _json(state.snapshot())
        seconds = query.get("seconds", [""])[0]
        try:
            session_s = float(seconds) if seconds else None
        except ValueError:
            return _text(400, b"seconds= must be a number\n")
        state.login(ip, session_s)
        return _json(state.snapshot())
    return _text(404, b"no such lab control\n")


def route(
    state: PortalState,
    settings: Settings,
    *,
    method: str,
    scheme: str,
    host: str,
    target: str,
    client_ip: str,
    form: dict[str, list[str]],
) -> Response:
    """Decide the answer to one HTTP request. No I/O beyond the state object."""
    split = urllib.parse.urlsplit(target)
    path = split.path or "/"
    query = urllib.parse.parse_qs(split.query)
    on_portal = host in (settings.portal_host, settings.portal_ip)
    remaining = state.seconds_remaining(client_ip)
    online = remaining is not None
    partner_url = (
        f"{settings.public_scheme}://{settings.partner_host}/partner.js"
        if settings.partner_host
        else ""
    )
    if settings.partner_host and host == settings.partner_host:
        # In the walled garden: reachable before login, as portals allow their CDNs.
        if path == "/partner.js":
            return Response(200, PARTNER_SCRIPT, {"Content-Type": "text/javascript"})
        return _text(404, b"no such partner file\n")

    if on_portal:
        if path.startswith("/__lab/"):
            return lab_control(state, path, query, client_ip)
        if path == "/captive-portal/api":
            api: dict[str, Any] = {
                "captive": not online,
                "user-portal-url": f"{settings.base_url}/portal",
                "venue-info-url": f"{settings.base_url}/venue",
            }
            if online:
                api["seconds-remaining"] = remaining
                api["can-extend-session"] = True
            resp = _json(api, "application/captive+json")
            # RFC 8908 section 5: the API's answers are per client and must not be cached.
            resp.headers["Cache-Control"] = "private"
            return resp
        if path == "/portal" and method in ("GET", "HEAD"):
            if online:
                return _html(200, "Connected", f"<p>You are connected ({remaining} s left).</p>")
            return sign_in_page(query.get("orig", [""])[0], partner_url)
        if path == "/venue":
            return _html(200, "Hotel Lab", "<p>Hotel Lab: breakfast from 7 to 10.</p>")
        if path == "/login" and method == "POST":
            state.login(client_ip)
            orig = form.get("orig", [""])[0]
            if orig:
                return Response(303, b"", {"Location": orig})
            return _html(200, "Connected", "<p>You are now connected.</p>")
        if path == "/logout" and method == "POST":
            state.logout(client_ip)
            return _html(200, "Signed out", "<p>You are signed out.</p>")

    if not online:
        if settings.unauth_style == "page":
            return sign_in_page(f"{scheme}://{host}{target}", partner_url)
        orig = urllib.parse.quote(f"{scheme}://{host}{target}", safe="")
        return Response(
            302,
            b"",
            {"Location": f"{settings.base_url}/portal?orig={orig}", "Cache-Control": "no-store"},
        )

    if path == "/check_network_status.txt":
        return _text(200, NM_CHECK_BODY, **{"X-NetworkManager-Status": "online"})
    if path in ("/generate_204", "/gen_204"):
        return Response(204)
    if path == "/hotspot-detect.html":
        return Response(200, APPLE_SUCCESS, {"Content-Type": "text/html"})
    if path == "/connecttest.txt":
        return _text(200, b"Microsoft Connect Test")
    if path == "/success.txt":
        return _text(200, b"success\n")
    return _text(200, b"simulated internet\n")


class PortalHandler(BaseHTTPRequestHandler):
    """Translates between http.server and `route`; one instance per request."""

    server_version = "HotelLabPortal/1.0"
    # Plain HTTP/1.0 closes each connection; no keep-alive state to get wrong.
    protocol_version = "HTTP/1.0"
    state: PortalState
    settings: Settings
    scheme: str
    control_only: bool = False

    def do_GET(self) -> None:
        self._handle("GET")

    def do_HEAD(self) -> None:
        self._handle("HEAD")

    def do_POST(self) -> None:
        self._handle("POST")

    def _client_ip(self) -> str:
        addr = self.client_address
        return str(addr[0]) if isinstance(addr, tuple) and addr else ""

    def _handle(self, method: str) -> None:
        form: dict[str, list[str]] = {}
        length = int(self.headers.get("Content-Length") or 0)
        if 0 < length <= MAX_BODY:
            form = urllib.parse.parse_qs(self.rfile.read(length).decode("utf-8", "replace"))
        host = (self.headers.get("Host") or self.settings.portal_ip).strip().lower()
        if host.startswith("["):
            host = host[1 : host.find("]")]
        else:
            host = host.rsplit(":", 1)[0]
        client_ip = self._client_ip()
        if self.control_only:
            split = urllib.parse.urlsplit(self.path)
            query = urllib.parse.parse_qs(split.query)
            resp = lab_control(self.state, split.path, query, None)
        else:
            resp = route(
                self.state,
                self.settings,
                method=method,
                scheme=self.scheme,
                host=host,
                target=self.path,
                client_ip=client_ip,
                form=form,
            )
            self.state.record_request(
                {
                    "time": time.time(),
                    "client": client_ip,
                    "scheme": self.scheme,
                    "method": method,
                    "host": host,
                    "path": self.path,
                    "status": resp.status,
                    "agent": self.headers.get("User-Agent") or "",
                }
            )
        self.send_response(resp.status)
        for name, value in resp.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(resp.body)))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(resp.body)

    def log_message(self, format: str, *args: Any) -> None:
        client = self._client_ip() or "control"
        sys.stderr.write(f"{time.time():.3f} {self.scheme} {client} {format % args}\n")


class QuietHTTPServer(ThreadingHTTPServer):
    """One log line per failed request (a client rejecting our certificate is normal here)."""

    daemon_threads = True


class QuietHTTPServer6(QuietHTTPServer):
    address_family = socket.AF_INET6

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        sys.stderr.write(f"{time.time():.3f} request from {client_address} failed: {exc!r}\n")


class UnixHTTPServer(socketserver.ThreadingUnixStreamServer):
    """HTTP over a Unix socket for the lab controls (reachable from outside the namespace)."""

    daemon_threads = True


def _dns_reply(query: bytes, rcode: int) -> bytes | None:
    """A header-and-question reply with `rcode` (RFC 1035 4.1), or None for garbage."""
    if len(query) < 12:
        return None
    qid, flags, qdcount = struct.unpack("!HHH", query[:6])
    if flags & 0x8000 or qdcount != 1:
        return None
    pos = 12
    while pos < len(query) and query[pos] != 0:
        pos += 1 + query[pos]
    end = pos + 5  # the root label, QTYPE and QCLASS
    if end > len(query):
        return None
    # QR=1, keep OPCODE and RD, RA=1, and the requested RCODE.
    reply_flags = 0x8000 | (flags & 0x7900) | 0x0080 | rcode
    return struct.pack("!HHHHHH", qid, reply_flags, 1, 0, 0, 0) + query[12:end]


BLACKHOLE_RCODES = {"drop": None, "servfail": 2, "nxdomain": 3, "refused": 5, "hijack": 0}


def _dns_answer(query: bytes, address: str) -> bytes | None:
    """A reply with one A record `address` for an A query, NODATA for any other type."""
    reply = _dns_reply(query, 0)
    if reply is None:
        return None
    qtype = struct.unpack("!H", reply[-4:-2])[0]
    if qtype != 1:
        return reply
    # ANCOUNT 1; the record names the question by a pointer to offset 12 (RFC 1035 4.1.4)
    record = struct.pack("!HHHIH", 0xC00C, 1, 1, 30, 4) + socket.inet_aton(address)
    return reply[:6] + struct.pack("!H", 1) + reply[8:] + record


def blackhole_dns(
    sock: socket.socket,
    mode: str,
    state: PortalState,
    stop: threading.Event,
    *,
    portal_ip: str = "",
    after_login: str = "",
) -> None:
    rcode = BLACKHOLE_RCODES[mode]
    while not stop.is_set():
        ready, _, _ = select.select([sock], [], [], 0.2)
        if not ready:
            continue
        try:
            data, peer = sock.recvfrom(4096)
        except OSError:
            continue
        state.record_dns_query()
        signed_in = bool(after_login) and state.seconds_remaining(peer[0]) is not None
        how = "answered" if signed_in else mode
        sys.stderr.write(f"{time.time():.3f} dns {peer[0]} {how} {len(data)} bytes\n")
        if signed_in:
            reply = _dns_answer(data, after_login)
        elif mode == "hijack":
            reply = _dns_answer(data, portal_ip)
        elif rcode is None:
            continue
        else:
            reply = _dns_reply(data, rcode)
        if reply is not None:
            sock.sendto(reply, peer)


def make_http_server(
    addr: str, port: int, state: PortalState, settings: Settings, context: ssl.SSLContext | None
) -> QuietHTTPServer:
    scheme = "https" if context else "http"
    handler = type(
        f"{scheme.upper()}Handler",
        (PortalHandler,),
        {"state": state, "settings": settings, "scheme": scheme},
    )
    server_class = QuietHTTPServer6 if ":" in addr else QuietHTTPServer
    server = server_class((addr, port), handler)
    if context is not None:
        # Handshake in the worker thread, not in accept(), so one stuck client stalls nobody.
        server.socket = context.wrap_socket(
            server.socket, server_side=True, do_handshake_on_connect=False
        )
    return server


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Simulated hotel captive portal for the test lab.")
    p.add_argument("--listen", default="127.0.0.1", help="address for HTTP(S)")
    p.add_argument("--http-port", type=int, default=80)
    p.add_argument("--https-port", type=int, default=0, help="0: no HTTPS")
    p.add_argument("--cert", help="PEM certificate chain for HTTPS")
    p.add_argument("--key", help="PEM private key for HTTPS")
    p.add_argument("--portal-host", default="login.hotel.test")
    p.add_argument("--portal-ip", help="the portal host's address (default: --listen)")
    p.add_argument("--unauth-style", choices=("redirect", "page"), default="redirect")
    p.add_argument("--session-seconds", type=int, default=3600)
    p.add_argument("--lifetime", type=float, required=True, help="exit after this many seconds")
    p.add_argument("--control-socket", help="Unix socket path for the /__lab/ controls")
    p.add_argument("--state-file", help="JSON file mirroring who is logged in")
    p.add_argument("--ready-file", help="written once every socket is bound")
    p.add_argument("--blackhole-dns", help="address whose UDP port 53 swallows DNS queries")
    p.add_argument("--blackhole-port", type=int, default=53)
    p.add_argument("--blackhole-mode", choices=sorted(BLACKHOLE_RCODES), default="drop")
    p.add_argument("--dns-after-login", default="", help="the blackhole answers signed-in clients")
    p.add_argument("--also-listen", action="append", default=[], help="another address to serve on")
    p.add_argument("--partner-host", default="", help="third-party host of the sign-in page")
    p.add_argument("--open-network", action="store_true", help="no portal: every client online")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    https = bool(args.https_port)
    if https and not (args.cert and args.key):
        print("hotel_portal: error: --https-port needs --cert and --key", file=sys.stderr)
        return 2
    settings = Settings(
        portal_host=args.portal_host.lower(),
        portal_ip=args.portal_ip or args.listen,
        public_scheme="https" if https else "http",
        public_port=args.https_port if https else args.http_port,
        unauth_style=args.unauth_style,
        session_s=args.session_seconds,
        partner_host=args.partner_host.lower(),
        open_network=args.open_network,
    )
    state = PortalState(settings, args.state_file)
    stop = threading.Event()

    def on_signal(signum: int, frame: types.FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    servers: list[socketserver.BaseServer] = []
    for address in [args.listen, *args.also_listen]:
        servers.append(make_http_server(address, args.http_port, state, settings, None))
    if https:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(args.cert, args.key)
        for address in [args.listen, *args.also_listen]:
            servers.append(make_http_server(address, args.https_port, state, settings, ctx))
    if args.control_socket:
        control = type(
            "ControlHandler",
            (PortalHandler,),
            {"state": state, "settings": settings, "scheme": "unix", "control_only": True},
        )
        if os.path.exists(args.control_socket):
            os.unlink(args.control_socket)
        servers.append(UnixHTTPServer(args.control_socket, control))
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    if args.blackhole_dns:
        dns_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        dns_sock.bind((args.blackhole_dns, args.blackhole_port))
        threads.append(
            threading.Thread(
                target=blackhole_dns,
                args=(dns_sock, args.blackhole_mode, state, stop),
                kwargs={"portal_ip": settings.portal_ip, "after_login": args.dns_after_login},
                daemon=True,
            )
        )
    for t in threads:
        t.start()
    if args.ready_file:
        with open(args.ready_file, "w", encoding="utf-8") as f:
            f.write(f"{os.getpid()}\n")
    sys.stderr.write(
        f"{time.time():.3f} portal ready on {args.listen} http:{args.http_port}"
        f" https:{args.https_port or '-'} api={settings.api_url}\n"
    )
    sys.stderr.flush()
    stop.wait(args.lifetime)
    for s in servers:
        s.shutdown()
        s.server_close()
    if args.control_socket and os.path.exists(args.control_socket):
        os.unlink(args.control_socket)
    sys.stderr.write(f"{time.time():.3f} portal exiting\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
