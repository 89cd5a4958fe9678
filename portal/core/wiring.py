"""Resolver wiring decisions: how the stub joins name resolution, and how to say whether it does.

Pure: text and plain data in, text and plain data out. It renders resolv.conf (core/resolvconf.py
reads it), picks the wiring mode from facts an edge gathered (is systemd-resolved on the bus, what
does /etc/resolv.conf say, does nsswitch use nss-resolve), plans the settings of the dedicated
systemd-resolved link, and words the health line shown by `portal status`. It must not read
files, talk to D-Bus or know about sockets: edges/resolver.py does that.

The rules behind every function here:

- The stub is never the only resolver. On resolv.conf systems it comes first and the system's
  own servers follow, so a stopped stub costs one refused datagram (glibc moves to the next
  server at once). On systemd-resolved systems it serves only route-only domains, one per
  override, on a link of its own, so a stopped stub can only affect those names.
- The stub is in the path only while it has work: an override answering on this network, or a
  portal episode. Otherwise resolution is exactly the system's own. On resolv.conf systems a
  small root helper (`portal wire`, run by portal-wire.path) puts one marked block before the
  first nameserver line of whatever wrote resolv.conf (NetworkManager, openresolv, dhclient,
  dhcpcd, a person) and takes exactly that block out again, so the file goes back byte for byte.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from portal.core.resolvconf import ResolvConf as ResolvConf  # re-exported
from portal.core.resolvconf import parse_resolv_conf as parse_resolv_conf  # re-exported

# glibc's resolver reads at most MAXNS = 3 nameserver lines (resolv.h); later ones are ignored.
GLIBC_MAXNS = 3
# systemd-resolved refuses more search/routing domains than this on one link
# (LINK_SEARCH_DOMAINS_MAX in src/resolve/resolved-link.h).
RESOLVED_MAX_LINK_DOMAINS = 256
# Address families as org.freedesktop.resolve1 wants them (Linux values of AF_INET/AF_INET6).
AF_INET = 2
AF_INET6 = 10
# The addresses systemd-resolved listens on for glibc (stub-resolv.conf).
RESOLVED_STUB_ADDRESSES = frozenset({"127.0.0.53", "127.0.0.54"})
DEFAULT_LINK = "portal0"
# The line that starts the block portal puts into resolv.conf. The helper removes exactly this
# line and the nameserver line after it, and nothing else, so what is left is the file as its
# owner wrote it. Its words tell a person reading resolv.conf what the extra line is.
STUB_MARK = "# portal: the override stub first while it has work (removed when it has none)"
# The unit whose helper edits resolv.conf (systemd/portal-wire.path), named in status lines.
HELPER_UNIT = "portal-wire.path"


class WiringMode(enum.StrEnum):
    """How the stub is wired into name resolution (one name across config, module and status)."""

    AUTO = "auto"  # detect at start
    RESOLVED = "resolved"  # systemd-resolved: per-override route-only domains on a link
    RESOLVCONF = "resolvconf"  # openresolv writes resolv.conf; the stub is its first server
    FILE = "file"  # a plain resolv.conf nobody regenerates for us
    NONE = "none"  # leave name resolution alone


@dataclass(frozen=True, slots=True)
class LinkPlan:
    """What to set on the dedicated systemd-resolved link."""

    dns: tuple[tuple[int, bytes], ...]  # (family, packed address), as SetLinkDNS takes them
    port: int  # 53 unless the stub listens elsewhere (then SetLinkDNSEx is needed)
    domains: tuple[tuple[str, bool], ...]  # (name, route_only) for SetLinkDomains
    default_route: bool  # always False: the link must never catch names it was not given
    dropped: tuple[str, ...] = ()  # names beyond resolved's per-link limit
    # The link's own modes (SetLinkDNSOverTLS / SetLinkDNSSEC): always "no", so the global
    # strict DNS-over-TLS or DNSSEC=yes never applies to the stub (it speaks neither).
    dns_over_tls: str = "no"
    dnssec: str = "no"


@dataclass(frozen=True, slots=True)
class ResolvedLink:
    """What systemd-resolved reports for the dedicated link (read back by the edge)."""

    name: str
    exists: bool
    dns: tuple[str, ...] = ()  # "ADDR" or "ADDR:PORT" / "[ADDR]:PORT"
    domains: tuple[tuple[str, bool], ...] = ()
    default_route: bool | None = None
    # The link's own DNS-over-TLS and DNSSEC settings ("" = none of its own: the global ones)
    dns_over_tls: str = ""
    dnssec: str = ""


def _valid_server(text: str) -> str:
    """Normalise one nameserver address (an IPv6 zone such as %wlan0 is kept). Raise ValueError."""
    addr, sep, zone = text.strip().partition("%")
    parsed = ipaddress.ip_address(addr)
    if sep and (parsed.version != 6 or not zone):
        raise ValueError(f"invalid nameserver {text!r}")
    return str(parsed) + (f"%{zone}" if sep else "")


def render_resolv_conf(
    stub: str,
    servers: Sequence[str],
    *,
    search: Sequence[str] = (),
    options: Sequence[str] = (),
    generator: str = "portal",
) -> str:
    """The resolv.conf text with the stub first and the network's servers after it.

    The stub is never left alone: with no other server this raises ValueError rather than
    produce a file whose DNS dies with the daemon. Only GLIBC_MAXNS servers are written (the
    stub and two more); later ones would be ignored by glibc, so they are named in a comment.
    """
    stub_n = _valid_server(stub)
    others: list[str] = []
    for server in servers:
        norm = _valid_server(server)
        if norm != stub_n and norm not in others:
            others.append(norm)
    if not others:
        raise ValueError("refusing to make the stub the only nameserver: no network server known")
    kept, dropped = others[: GLIBC_MAXNS - 1], others[GLIBC_MAXNS - 1 :]
    lines = [
        f"# Generated by {generator}: the override stub first, the network's servers after it,",
        "# so name resolution keeps working when the stub is stopped.",
        f"nameserver {stub_n}",
    ]
    lines += [f"nameserver {server}" for server in kept]
    if dropped:
        lines.append(f"# not listed (glibc reads {GLIBC_MAXNS} nameservers): {' '.join(dropped)}")
    if search:
        lines.append("search " + " ".join(search))
    if options:
        lines.append("options " + " ".join(options))
    return "\n".join(lines) + "\n"


def points_at_resolved(conf: ResolvConf, *, link_target: str = "") -> bool:
    """True when glibc's resolv.conf sends queries to systemd-resolved."""
    if link_target.startswith("/run/systemd/resolve/"):
        return True
    if conf.generated_by == "systemd-resolved":
        return True
    return bool(conf.nameservers) and set(conf.nameservers) <= RESOLVED_STUB_ADDRESSES


def choose_mode(
    requested: WiringMode | str,
    *,
    resolved_running: bool,
    resolv_conf: ResolvConf | None,
    link_target: str = "",
    nss_resolve: bool = False,
) -> WiringMode:
    """Pick the wiring mode. An explicit request wins; `auto` follows what glibc really uses.

    systemd-resolved counts only when queries reach it (its stub in resolv.conf, or nss-resolve
    in nsswitch.conf): a resolved that runs beside a foreign resolv.conf would get the link
    domains and nobody would ask it.
    """
    mode = WiringMode(requested)
    if mode is not WiringMode.AUTO:
        return mode
    if resolved_running and (
        nss_resolve
        or (resolv_conf is not None and points_at_resolved(resolv_conf, link_target=link_target))
    ):
        return WiringMode.RESOLVED
    if resolv_conf is None:
        return WiringMode.NONE
    if resolv_conf.generated_by == "resolvconf":
        return WiringMode.RESOLVCONF
    return WiringMode.FILE


def resolv_conf_owner(conf: ResolvConf, *, link_target: str = "") -> str:
    """Who writes resolv.conf, as `portal status` names it, or "" when the file does not say.

    From its header, or from where /etc/resolv.conf links to. Debian's resolvconf and
    openresolv write the same "generated by resolvconf" header; Debian's only ever writes
    /run/resolvconf/resolv.conf (its update.d/libc updates nothing unless /etc/resolv.conf
    links there), while openresolv writes /etc/resolv.conf itself. dhclient-script and a
    person write no header: their file cannot be told from the other.
    """
    if link_target.startswith("/run/resolvconf/"):
        return "resolvconf"
    if link_target.startswith("/run/NetworkManager/"):
        return "NetworkManager"
    if conf.generated_by == "resolvconf":
        return "openresolv"
    if conf.generated_by in ("NetworkManager", "dhcpcd"):
        return conf.generated_by
    return ""


def nsswitch_uses_resolve(text: str) -> bool:
    """True when the `hosts:` line of nsswitch.conf names the nss-resolve module."""
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.startswith("hosts:"):
            return "resolve" in line[len("hosts:") :].split()
    return False


def _route_name(name: str) -> str:
    return name.strip().rstrip(".").lower()


def plan_resolved_link(names: Iterable[str], *, stub: str, port: int = 53) -> LinkPlan:
    """One route-only domain per overridden name, the stub as the link's only server.

    Route-only (`~name`) domains are used for routing, never appended to single-label lookups,
    and `default_route` is False, so the link answers exactly those names (and their
    sub-names) and nothing else: a stopped stub can only affect them.
    """
    addr = ipaddress.ip_address(stub)
    family = AF_INET if addr.version == 4 else AF_INET6
    unique = sorted({_route_name(n) for n in names} - {""})
    kept = unique[:RESOLVED_MAX_LINK_DOMAINS]
    return LinkPlan(
        dns=((family, addr.packed),),
        port=port,
        domains=tuple((name, True) for name in kept),
        default_route=False,
        dropped=tuple(unique[RESOLVED_MAX_LINK_DOMAINS:]),
    )


def format_server(stub: str, port: int = 53) -> str:
    """The stub as systemd-resolved and people write it: ADDR, ADDR:PORT or [ADDR]:PORT."""
    if port == 53:
        return stub
    return f"[{stub}]:{port}" if ":" in stub else f"{stub}:{port}"


def describe_resolv_conf(conf: ResolvConf | None, *, stub: str, port: int = 53) -> str:
    """The health line for resolv.conf modes, e.g. "resolv.conf: stub first"."""
    if conf is None:
        return "not wired: no resolv.conf"
    if port != 53:
        return f"not wired: glibc cannot use port {port} from resolv.conf"
    servers = list(conf.nameservers)
    if stub not in servers:
        return f"not wired: resolv.conf does not list {stub}"
    where = servers.index(stub)
    if where >= GLIBC_MAXNS:
        return f"not wired: resolv.conf lists {stub} after {GLIBC_MAXNS} servers; glibc ignores it"
    if len(servers) == 1:
        return "resolv.conf: stub is the only nameserver (DNS stops when portal stops)"
    if where == 0:
        return "resolv.conf: stub first"
    return f"resolv.conf: stub is server {where + 1} (overrides answer only when the first fails)"


def describe_resolved_link(
    state: ResolvedLink, *, stub: str, port: int = 53, wanted: bool = True
) -> str:
    """The health line for resolved mode, e.g. "resolved link portal0: 3 domains".

    `wanted` is False while the stub has no work: the link is then meant to be empty.
    """
    if not state.exists:
        return f"not wired: no link {state.name}"
    if not wanted and not state.dns:
        return f"resolved link {state.name}: standby (no override on this network, no portal)"
    if format_server(stub, port) not in state.dns:
        return f"not wired: resolved link {state.name} does not use {format_server(stub, port)}"
    if state.default_route:
        return f"resolved link {state.name}: default route on (stopped stub would lose DNS)"
    routed = [name for name, route_only in state.domains if route_only]
    noun = "domain" if len(routed) == 1 else "domains"
    line = f"resolved link {state.name}: {len(routed)} {noun}"
    # resolved reports the mode in force on the link: its own, else the global one. Strict
    # DNS-over-TLS would speak TLS to the stub (nothing answers), DNSSEC=yes would reject its
    # answers (they cannot validate): overridden names would not resolve at all. The
    # "opportunistic" and "allow-downgrade" modes fall back by themselves.
    wrong = [
        f"{what} yes"
        for what, value in (("DNS-over-TLS", state.dns_over_tls), ("DNSSEC", state.dnssec))
        if value == "yes"
    ]
    if wanted and routed and wrong:
        return f"{line}, but {' and '.join(wrong)} on it: overridden names cannot resolve"
    return line


def describe_none() -> str:
    return "not wired: dns integration is off"


# --- when the stub is in the path -------------------------------------------------------------


def wants_stub(names: Iterable[str], *, episode: bool) -> bool:
    """The stub belongs in the path while an override answers here or a portal is being signed
    in to; otherwise resolution is exactly the system's own."""
    return episode or any(True for _ in names)


# --- the stub request and the resolv.conf edit (the root helper) ----------------------------


def parse_stub_request(text: str) -> str | None:
    """The stub address in the daemon's request file, or None when it asks for none.

    The helper runs as root on a file an unprivileged daemon writes, so it accepts exactly one
    loopback address (the stub can only ever be on this machine) and nothing else. Raise
    ValueError for anything else.
    """
    words = text.split()
    if not words:
        return None
    if len(words) != 1:
        raise ValueError("the request holds more than one word")
    addr = ipaddress.ip_address(words[0])
    if not addr.is_loopback:
        raise ValueError(f"{words[0]} is not a loopback address")
    return str(addr)


def format_stub_request(stub: str | None) -> str:
    """The request file's text: the stub's address, or nothing."""
    return "" if stub is None else str(ipaddress.ip_address(stub)) + "\n"


def _first_word(line: str) -> str:
    words = line.split(None, 1)
    return words[0] if words else ""


def strip_stub(text: str) -> str:
    """resolv.conf without portal's block: every STUB_MARK line and the nameserver line after it.

    Nothing else is touched, so a file portal edited comes back byte for byte as its owner
    wrote it; a file its owner rewrote since has no block and comes back unchanged.
    """
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    skip_next = False
    for line in lines:
        if skip_next:
            skip_next = False
            if _first_word(line) == "nameserver":
                continue
        if line.rstrip("\r\n") == STUB_MARK:
            skip_next = True
            continue
        out.append(line)
    return "".join(out)


@dataclass(frozen=True, slots=True)
class ResolvConfPlan:
    """What the helper should leave in resolv.conf."""

    text: str  # the whole file
    wired: bool  # the stub is its first nameserver
    reason: str = ""  # why the stub is not first although asked for ("" otherwise)


def plan_resolv_conf(current: str, stub: str | None) -> ResolvConfPlan:
    """resolv.conf with the stub first (when `stub` is given) or without portal's block.

    The block goes right before the first nameserver line, so comments, `search` and `options`
    stay where the owner put them and every server stays in its order. Refused (the file left
    as its owner wrote it, with the reason) when no other nameserver is listed: glibc would ask
    the stub alone. A stub that the owner already lists (by hand, or a static configuration)
    is not listed twice.
    """
    base = strip_stub(current)
    if stub is None:
        return ResolvConfPlan(base, wired=False)
    stub = str(ipaddress.ip_address(stub))
    servers = list(parse_resolv_conf(base).nameservers)
    if stub in servers:
        where = servers.index(stub)
        if where == 0:
            return ResolvConfPlan(base, wired=True)
        return ResolvConfPlan(
            base, wired=False, reason=f"resolv.conf itself lists {stub} as server {where + 1}"
        )
    if not servers:
        return ResolvConfPlan(
            base,
            wired=False,
            reason="resolv.conf lists no nameserver, and the stub is never made the only one",
        )
    lines = base.splitlines(keepends=True)
    at = next(i for i, line in enumerate(lines) if _first_word(line) == "nameserver")
    block = [f"{STUB_MARK}\n", f"nameserver {stub}\n"]
    return ResolvConfPlan("".join(lines[:at] + block + lines[at:]), wired=True)


def system_servers(text: str, *, own: Iterable[str] = ()) -> tuple[str, ...]:
    """The system's own nameservers: resolv.conf without portal's block and without `own`
    (the stub's addresses), in order. What the stub forwards to when it is wired this way."""
    skip = set(own)
    return tuple(
        ns
        for ns in parse_resolv_conf(strip_stub(text)).nameservers
        if ns.split("%", 1)[0] not in skip
    )


def describe_resolv_wiring(
    text: str | None,
    *,
    stub: str,
    port: int = 53,
    wanted: bool,
    helper: bool = True,
    link_target: str = "",
) -> str:
    """The health line for resolv.conf modes: how lookups reach the stub, or why they do not.

    `wanted`: the daemon asks for the stub now. `helper`: something may edit resolv.conf for
    it (portal-wire.path under systemd); without it, the one thing left is a hand edit.
    `link_target`: where /etc/resolv.conf links to; with the file's header it names who writes
    the file (resolv_conf_owner), after the servers when wired.
    """
    if text is None:
        return "not wired: no /etc/resolv.conf"
    conf = parse_resolv_conf(text)
    servers = conf.nameservers
    ours = strip_stub(text) != text
    if not wanted:
        if stub in servers and not ours:
            return describe_resolv_conf(conf, stub=stub, port=port)
        if ours:
            return f"resolv.conf: stub still listed, {HELPER_UNIT} takes it out"
        return "resolv.conf: the system's own (no override on this network, no portal)"
    if port != 53:
        return f"not wired: glibc cannot use port {port} from resolv.conf; listen on port 53"
    if servers[:1] == (stub,):
        others = [ns for ns in servers[1:GLIBC_MAXNS] if ns != stub]
        line = "resolv.conf: stub first" + (f", then {', '.join(others)}" if others else "")
        owner = resolv_conf_owner(conf, link_target=link_target)
        return f"{line} ({owner})" if owner else line
    plan = plan_resolv_conf(text, stub)
    if plan.reason:
        return f"not wired: {plan.reason}"
    if not helper:
        return (
            "not wired: nothing here may edit resolv.conf (no systemd): "
            f"put 'nameserver {stub}' above its nameserver lines"
        )
    return f"not wired: resolv.conf does not list {stub} yet (systemctl status {HELPER_UNIT})"
