"""rtnetlink messages: build dump requests, read the kernel's replies (RFC 3549, rtnetlink(7)).

Pure: bytes in, `Link`/`Address`/`Route` values out. The netlink edge owns the sockets; this
module never touches one, and never raises on what the kernel (or anything pretending to be it)
sends: a message it cannot read is skipped, a datagram it cannot frame ends the dump as failed.

Only what portal needs is read:
- RTM_NEWLINK: ifinfomsg (index, ARPHRD type, flags), IFLA_IFNAME, IFLA_OPERSTATE and the
  nested IFLA_LINKINFO/IFLA_INFO_KIND ("veth", "bridge", "wireguard"...);
- RTM_NEWADDR: ifaddrmsg (family, scope, index), IFA_LOCAL or IFA_ADDRESS;
- RTM_NEWROUTE: rtmsg, of default routes of the main table only: RTA_OIF, RTA_GATEWAY (or
  RTA_VIA), RTA_PRIORITY, RTA_TABLE, and the first hop of RTA_MULTIPATH;
- where one address goes (`route_request`, as `ip route get fibmatch ADDR` asks): the route the
  kernel's policy routing picks, read by `parse_route` (any route: its prefix, table, type,
  outgoing interface and gateway); the same reader serves route dumps;
- RTM_NEWRULE: fib_rule_hdr and the FRA_* attributes that say what a policy rule does (its
  priority, table, fwmark and mask, inversion, suppress_prefixlength, interfaces).

Netlink's own headers and attributes are in the host's byte order (netlink(7)); addresses in
attributes are in network order, as on the wire.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from dataclasses import dataclass

from portal.core.netstate import Address, Link, Route

# linux/netlink.h
NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_OVERRUN = 4
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_DUMP_INTR = 0x10  # the table changed while it was dumped: the dump is inconsistent
NLM_F_DUMP = 0x300  # NLM_F_ROOT | NLM_F_MATCH

# linux/rtnetlink.h
RTM_NEWLINK = 16
RTM_GETLINK = 18
RTM_NEWADDR = 20
RTM_GETADDR = 22
RTM_NEWROUTE = 24
RTM_GETROUTE = 26
RTM_NEWRULE = 32
RTM_GETRULE = 34

# Multicast groups, in the legacy bitmask form that bind() accepts (rtnetlink(7)).
RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV4_ROUTE = 0x40
RTMGRP_IPV6_IFADDR = 0x100
RTMGRP_IPV6_ROUTE = 0x400
RTMGRP_IPV4_RULE = 0x80  # group 8
RTMGRP_IPV6_RULE = 0x40000  # group 19
GROUPS = (
    RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_IFADDR | RTMGRP_IPV6_ROUTE
)

AF_UNSPEC = 0
AF_INET = 2
AF_INET6 = 10

IFF_UP = 0x1
IFF_LOOPBACK = 0x8
ARPHRD_ETHER = 1
ARPHRD_PPP = 512  # PPTP, L2TP and other PPP-based VPNs (no IFLA_INFO_KIND)

IFLA_IFNAME = 3
IFLA_OPERSTATE = 16
IFLA_LINKINFO = 18
IFLA_INFO_KIND = 1
# RFC 2863 operational states (linux/if.h IF_OPER_*); UNKNOWN is what drivers without carrier
# reporting say (tun, some veth setups), so it counts as up.
IF_OPER_UNKNOWN = 0
IF_OPER_UP = 6

IFA_ADDRESS = 1
IFA_LOCAL = 2
RT_SCOPE_LINK = 253
IFA_F_DADFAILED = 0x08
IFA_F_TENTATIVE = 0x40

RTA_DST = 1
RTA_OIF = 4
RTA_GATEWAY = 5
RTA_PRIORITY = 6
RTA_PREFSRC = 7
RTA_MULTIPATH = 9
RTA_TABLE = 15
RTA_MARK = 16
RTA_VIA = 18
RT_TABLE_MAIN = 254
RTN_UNICAST = 1
RTN_LOCAL = 2
# rtm_flags of a route query: report the table the route came from, and describe the route that
# matched (its prefix) rather than the cached result for the one address (rtnetlink.h)
RTM_F_LOOKUP_TABLE = 0x1000
RTM_F_FIB_MATCH = 0x2000

# fib_rules.h
FRA_IIFNAME = 3
FRA_PRIORITY = 6
FRA_FWMARK = 10
FRA_SUPPRESS_PREFIXLEN = 14
FRA_TABLE = 15
FRA_FWMASK = 16
FRA_OIFNAME = 17
FIB_RULE_INVERT = 0x2
FR_ACT_TO_TBL = 1

NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED and NLA_F_NET_BYTEORDER

# "=" is the host's order and standard sizes, with no padding: netlink(7) headers as they are.
_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_RTATTR = struct.Struct("=HH")  # len, type
_IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
# rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags
_RTMSG = struct.Struct("=BBBBBBBBI")
_RTNEXTHOP = struct.Struct("=HBBi")  # len, flags, hops, ifindex
# fib_rule_hdr: family, dst_len, src_len, tos, table, res1, res2, action, flags
_FIB_RULE_HDR = struct.Struct("=BBBBBBBBI")
_ERRNO = struct.Struct("=i")
_U32 = struct.Struct("=I")
_U16 = struct.Struct("=H")

# The fixed header each request carries after nlmsghdr (all zero but the family): the kernel
# reads a full ifinfomsg/ifaddrmsg/rtmsg when it checks dump requests strictly.
_REQUEST_BODY = {
    RTM_GETLINK: _IFINFOMSG.size,
    RTM_GETADDR: _IFADDRMSG.size,
    RTM_GETROUTE: _RTMSG.size,
    RTM_GETRULE: _FIB_RULE_HDR.size,
}

# A dump of a laptop's tables is a few kilobytes; a reply that claims more than this is not one.
MAX_DUMP_BYTES = 16 * 1024 * 1024
MAX_MESSAGES = 100_000


def _align(n: int) -> int:
    return (n + 3) & ~3


def dump_request(kind: int, *, seq: int, family: int = AF_UNSPEC) -> bytes:
    """An RTM_GETLINK/GETADDR/GETROUTE dump request with sequence number `seq`."""
    body = bytes([family]) + bytes(_REQUEST_BODY[kind] - 1)
    header = _NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind, NLM_F_REQUEST | NLM_F_DUMP, seq, 0)
    return header + body


@dataclass(frozen=True, slots=True)
class Message:
    """One netlink message: its header fields and the bytes after the header."""

    type: int
    flags: int
    seq: int
    port: int  # nlmsg_pid: in a dump reply, the port id of the socket that asked
    payload: bytes


def split_messages(data: bytes) -> tuple[list[Message], bool]:
    """The messages of one datagram, and whether all of it framed cleanly.

    False when a header is cut short or claims more (or fewer) bytes than are there: what came
    before is returned, nothing after it is trusted.
    """
    out: list[Message] = []
    pos = 0
    while pos < len(data):
        if len(data) - pos < _NLMSGHDR.size:
            return out, False
        length, mtype, flags, seq, port = _NLMSGHDR.unpack_from(data, pos)
        if length < _NLMSGHDR.size or pos + length > len(data):
            return out, False
        out.append(
            Message(mtype, flags, seq, port, bytes(data[pos + _NLMSGHDR.size : pos + length]))
        )
        pos += _align(length)
    return out, True


def parse_attrs(data: bytes) -> dict[int, bytes]:
    """rtattrs → {type: value}; the first of a repeated type wins; stops at a malformed one."""
    attrs: dict[int, bytes] = {}
    pos = 0
    while len(data) - pos >= _RTATTR.size:
        length, atype = _RTATTR.unpack_from(data, pos)
        if length < _RTATTR.size or pos + length > len(data):
            break
        attrs.setdefault(atype & NLA_TYPE_MASK, bytes(data[pos + _RTATTR.size : pos + length]))
        pos += _align(length)
    return attrs


def _text(value: bytes | None) -> str:
    """A NUL-terminated attribute string (interface names are bytes; never fail on them)."""
    if value is None:
        return ""
    return value.split(b"\0", 1)[0].decode("utf-8", "replace")


def _u32(value: bytes | None) -> int | None:
    return _U32.unpack(value[:4])[0] if value is not None and len(value) >= 4 else None


def _ip(family: int, value: bytes | None) -> str:
    """The textual address of an attribute of `family`, "" when it is not one."""
    if value is not None and family == AF_INET and len(value) == 4:
        return str(ipaddress.IPv4Address(value))
    if value is not None and family == AF_INET6 and len(value) == 16:
        return str(ipaddress.IPv6Address(value))
    return ""


class DumpState(enum.Enum):
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"  # an error reply, an unreadable datagram, or too much
    INTERRUPTED = "interrupted"  # NLM_F_DUMP_INTR: the table changed meanwhile; dump again


class Dump:
    """The replies to one dump request, fed datagram by datagram.

    Only messages with this dump's sequence number and addressed to this socket's port id
    count: a late reply to an earlier, abandoned dump must not mix into this one. (That the
    datagram came from the kernel, sender port 0, is the edge's to check: it sees the address.)
    """

    def __init__(self, *, seq: int, port: int, kind: int) -> None:
        self.seq = seq
        self.port = port
        self.kind = kind  # the RTM_NEW* type this dump answers with
        self.payloads: list[bytes] = []
        self.state = DumpState.RUNNING
        self.error = ""
        self._bytes = 0
        self._interrupted = False

    def feed(self, datagram: bytes) -> DumpState:
        if self.state is not DumpState.RUNNING:
            return self.state
        messages, clean = split_messages(datagram)
        self._bytes += len(datagram)
        for msg in messages:
            if msg.seq != self.seq or msg.port != self.port:
                continue
            if msg.flags & NLM_F_DUMP_INTR:
                self._interrupted = True
            if msg.type == NLMSG_DONE:
                # The DONE message carries the dump's own result: 0, or a negative errno.
                code = _ERRNO.unpack_from(msg.payload)[0] if len(msg.payload) >= 4 else 0
                if code < 0:
                    return self._fail(f"the kernel ended the dump with errno {-code}")
                self.state = DumpState.INTERRUPTED if self._interrupted else DumpState.DONE
                return self.state
            if msg.type == NLMSG_ERROR:
                code = _ERRNO.unpack_from(msg.payload)[0] if len(msg.payload) >= 4 else -1
                return self._fail(f"the kernel refused the dump (errno {-code})")
            if msg.type == NLMSG_OVERRUN:
                return self._fail("the kernel reported an overrun")
            if msg.type == self.kind:
                self.payloads.append(msg.payload)
        if not clean:
            return self._fail("a reply was cut short or malformed")
        if self._bytes > MAX_DUMP_BYTES or len(self.payloads) > MAX_MESSAGES:
            return self._fail("the dump is larger than any real table")
        return self.state

    def _fail(self, reason: str) -> DumpState:
        self.state = DumpState.FAILED
        self.error = reason
        return self.state


@dataclass(frozen=True, slots=True)
class LinkMessage:
    """What RTM_NEWLINK says about one interface, before it becomes a `Link`."""

    index: int
    name: str
    flags: int
    arphrd: int  # ifi_type: ARPHRD_ETHER for Ethernet and Wi-Fi alike
    operstate: int  # IF_OPER_*, IF_OPER_UNKNOWN when absent
    info_kind: str  # IFLA_INFO_KIND ("veth", "bridge"...), "" for physical devices


def parse_link(payload: bytes) -> LinkMessage | None:
    """An RTM_NEWLINK payload; None when it is not a readable one."""
    if len(payload) < _IFINFOMSG.size:
        return None
    _family, arphrd, index, flags, _change = _IFINFOMSG.unpack_from(payload)
    attrs = parse_attrs(payload[_IFINFOMSG.size :])
    name = _text(attrs.get(IFLA_IFNAME))
    if index <= 0 or not name:
        return None
    oper = attrs.get(IFLA_OPERSTATE)
    kind = _text(parse_attrs(attrs.get(IFLA_LINKINFO, b"")).get(IFLA_INFO_KIND))
    return LinkMessage(
        index=index,
        name=name,
        flags=flags,
        arphrd=arphrd,
        operstate=oper[0] if oper else IF_OPER_UNKNOWN,
        info_kind=kind,
    )


def to_link(msg: LinkMessage, *, wireless: bool) -> Link:
    """The `Link` core/netstate.py works with; `wireless` is what sysfs says of the device
    (a Wi-Fi card has no IFLA_INFO_KIND and reports ARPHRD_ETHER)."""
    kind = msg.info_kind
    if not kind:
        if wireless:
            kind = "wifi"
        elif msg.arphrd == ARPHRD_ETHER:
            kind = "ethernet"
        elif msg.arphrd == ARPHRD_PPP:
            kind = "ppp"
    return Link(
        index=msg.index,
        name=msg.name,
        kind=kind,
        up=bool(msg.flags & IFF_UP) and msg.operstate in (IF_OPER_UP, IF_OPER_UNKNOWN),
        loopback=bool(msg.flags & IFF_LOOPBACK),
    )


def parse_address(payload: bytes) -> Address | None:
    """An RTM_NEWADDR payload; None when it is not a readable IPv4/IPv6 one."""
    if len(payload) < _IFADDRMSG.size:
        return None
    family, _prefixlen, flags, scope, index = _IFADDRMSG.unpack_from(payload)
    if flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED):
        # Not ours yet (duplicate address detection runs, about a second for a new IPv6
        # address) or never: binding to it fails with EADDRNOTAVAIL. Its RTM_NEWADDR when DAD
        # ends brings a fresh dump.
        return None
    attrs = parse_attrs(payload[_IFADDRMSG.size :])
    # IFA_LOCAL is our address on point-to-point links, where IFA_ADDRESS is the peer's.
    text = _ip(family, attrs.get(IFA_LOCAL)) or _ip(family, attrs.get(IFA_ADDRESS))
    if not text or index <= 0:
        return None
    link_local = ipaddress.ip_address(text).is_link_local or scope == RT_SCOPE_LINK
    return Address(index=index, address=text, link_local=link_local)


def _gateway(family: int, attrs: dict[int, bytes]) -> str:
    gateway = _ip(family, attrs.get(RTA_GATEWAY))
    via = attrs.get(RTA_VIA)
    if not gateway and via is not None and len(via) >= 2:
        # struct rtvia: a u16 family (host order), then the address: an IPv4 route through an
        # IPv6 next hop (RFC 5549).
        via_family = _U16.unpack_from(via)[0]
        gateway = _ip(via_family, via[2:])
    return gateway


def parse_default_route(payload: bytes) -> Route | None:
    """An RTM_NEWROUTE payload when it is a unicast default route of the main table; else None.

    A multipath default route (RTA_MULTIPATH) is stood for by its first next hop.
    """
    if len(payload) < _RTMSG.size:
        return None
    family, dst_len, _src_len, _tos, table, _proto, _scope, rtype, _flags = _RTMSG.unpack_from(
        payload
    )
    if family not in (AF_INET, AF_INET6) or dst_len != 0 or rtype != RTN_UNICAST:
        return None
    attrs = parse_attrs(payload[_RTMSG.size :])
    # RTA_TABLE carries table ids above 255 (rtm_table then says RT_TABLE_COMPAT).
    table_id = _u32(attrs.get(RTA_TABLE))
    if (table_id if table_id is not None else table) != RT_TABLE_MAIN:
        return None
    oif = _u32(attrs.get(RTA_OIF))
    gateway = _gateway(family, attrs)
    if oif is None:
        hops = attrs.get(RTA_MULTIPATH, b"")
        if len(hops) < _RTNEXTHOP.size:
            return None
        length, _hflags, _hops, oif = _RTNEXTHOP.unpack_from(hops)
        if length < _RTNEXTHOP.size or length > len(hops):
            return None
        gateway = _gateway(family, parse_attrs(hops[_RTNEXTHOP.size : length]))
    if oif <= 0:
        return None
    return Route(
        index=oif,
        gateway=gateway,
        metric=_u32(attrs.get(RTA_PRIORITY)) or 0,
        family=6 if family == AF_INET6 else 4,
    )


# --- where one address goes, and what the policy rules say ----------------------------------


def _attr(atype: int, value: bytes) -> bytes:
    length = _RTATTR.size + len(value)
    return _RTATTR.pack(length, atype) + value + bytes(_align(length) - length)


def route_request(address: str, *, seq: int, oif: int = 0, mark: int | None = None) -> bytes:
    """An RTM_GETROUTE request for one address, as `ip route get fibmatch ADDR` sends it: the
    kernel answers with the route its policy routing picks (RTM_NEWROUTE, read by
    `parse_route`) or an error (no route). `oif` asks as a socket bound to that interface
    would (SO_BINDTODEVICE), `mark` as one with that fwmark. ValueError for a bad address."""
    ip = ipaddress.ip_address(address.partition("%")[0])
    family = AF_INET6 if ip.version == 6 else AF_INET
    body = _RTMSG.pack(
        family, ip.max_prefixlen, 0, 0, 0, 0, 0, 0, RTM_F_LOOKUP_TABLE | RTM_F_FIB_MATCH
    )
    body += _attr(RTA_DST, ip.packed)
    if oif:
        body += _attr(RTA_OIF, _U32.pack(oif))
    if mark is not None:
        body += _attr(RTA_MARK, _U32.pack(mark))
    header = _NLMSGHDR.pack(_NLMSGHDR.size + len(body), RTM_GETROUTE, NLM_F_REQUEST, seq, 0)
    return header + body


@dataclass(frozen=True, slots=True)
class RouteEntry:
    """One route, as a dump lists it or a route query answers."""

    family: int  # 4 or 6
    destination: str  # the prefix's address ("" for a default route)
    prefix_len: int
    table: int
    type: int  # RTN_UNICAST, RTN_LOCAL, RTN_UNREACHABLE, ...
    oif: int  # 0 when the route names no interface (unreachable, blackhole)
    gateway: str = ""
    metric: int = 0
    source: str = ""  # RTA_PREFSRC: the address a socket would send from


def parse_route(payload: bytes) -> RouteEntry | None:
    """An RTM_NEWROUTE payload of any table and type; None when it is not a readable one.
    A multipath route is stood for by its first next hop."""
    if len(payload) < _RTMSG.size:
        return None
    family, dst_len, _src_len, _tos, table, _proto, _scope, rtype, _flags = _RTMSG.unpack_from(
        payload
    )
    if family not in (AF_INET, AF_INET6):
        return None
    attrs = parse_attrs(payload[_RTMSG.size :])
    table_id = _u32(attrs.get(RTA_TABLE))
    oif = _u32(attrs.get(RTA_OIF)) or 0
    gateway = _gateway(family, attrs)
    hops = attrs.get(RTA_MULTIPATH, b"")
    if not oif and len(hops) >= _RTNEXTHOP.size:
        length, _hflags, _hops, first = _RTNEXTHOP.unpack_from(hops)
        if _RTNEXTHOP.size <= length <= len(hops):
            oif = max(first, 0)
            gateway = _gateway(family, parse_attrs(hops[_RTNEXTHOP.size : length]))
    return RouteEntry(
        family=6 if family == AF_INET6 else 4,
        destination=_ip(family, attrs.get(RTA_DST)),
        prefix_len=dst_len,
        table=table_id if table_id is not None else table,
        type=rtype,
        oif=oif,
        gateway=gateway,
        metric=_u32(attrs.get(RTA_PRIORITY)) or 0,
        source=_ip(family, attrs.get(RTA_PREFSRC)),
    )


def route_reply(datagram: bytes, *, seq: int) -> RouteEntry | int | None:
    """The answer to `route_request(seq=seq)` in one datagram: the route, or the errno the
    kernel refused with (ENETUNREACH: no route), or None when the datagram holds neither."""
    messages, _clean = split_messages(datagram)
    for msg in messages:
        if msg.seq != seq:
            continue
        if msg.type == NLMSG_ERROR:
            code = _ERRNO.unpack_from(msg.payload)[0] if len(msg.payload) >= 4 else -1
            return -code if code else None
        if msg.type == RTM_NEWROUTE:
            return parse_route(msg.payload)
    return None


@dataclass(frozen=True, slots=True)
class Rule:
    """One policy routing rule (`ip rule`), as far as portal reads it."""

    family: int  # 4 or 6
    priority: int
    table: int
    action: int  # FR_ACT_TO_TBL (1) for "lookup TABLE"
    invert: bool = False  # "not ..."
    fwmark: int | None = None
    fwmask: int | None = None
    suppress_prefix_len: int = -1  # -1: none; 0: wg-quick's "suppress_prefixlength 0"
    iif: str = ""
    oif: str = ""


def parse_rule(payload: bytes) -> Rule | None:
    """An RTM_NEWRULE payload; None when it is not a readable IPv4/IPv6 one."""
    if len(payload) < _FIB_RULE_HDR.size:
        return None
    family, _dst, _src, _tos, table, _r1, _r2, action, flags = _FIB_RULE_HDR.unpack_from(payload)
    if family not in (AF_INET, AF_INET6):
        return None
    attrs = parse_attrs(payload[_FIB_RULE_HDR.size :])
    suppress = _u32(attrs.get(FRA_SUPPRESS_PREFIXLEN))
    table_id = _u32(attrs.get(FRA_TABLE))
    return Rule(
        family=6 if family == AF_INET6 else 4,
        priority=_u32(attrs.get(FRA_PRIORITY)) or 0,
        table=table_id if table_id is not None else table,
        action=action,
        invert=bool(flags & FIB_RULE_INVERT),
        fwmark=_u32(attrs.get(FRA_FWMARK)),
        fwmask=_u32(attrs.get(FRA_FWMASK)),
        # the kernel stores "none" as -1 (0xffffffff)
        suppress_prefix_len=-1 if suppress is None or suppress == 0xFFFFFFFF else suppress,
        iif=_text(attrs.get(FRA_IIFNAME)),
        oif=_text(attrs.get(FRA_OIFNAME)),
    )


# --- router advertisement options the kernel passes on (RTM_NEWNDUSEROPT) ----------------------

# linux/rtnetlink.h, linux/icmpv6.h
RTM_NEWNDUSEROPT = 68
RTNLGRP_ND_USEROPT = 20  # joined with setsockopt(NETLINK_ADD_MEMBERSHIP): past the old bitmask
ND_ROUTER_ADVERT = 134
# struct nduseroptmsg: family, pad, opts_len, ifindex, icmp_type, icmp_code, pad, pad
_NDUSEROPTMSG = struct.Struct("=BxHiBBHI")
_ND_OPT = struct.Struct("=BB")  # type, length in units of 8 octets (RFC 4861 §4.6)


@dataclass(frozen=True, slots=True)
class NdUserOptions:
    """The options of one router advertisement that the kernel handed to userspace: it passes
    prefix information (3), RDNSS (25), DNSSL (31), captive portal (37) and PREF64 (38)
    (net/ipv6/ndisc.c, ndisc_is_useropt), one RTM_NEWNDUSEROPT per option."""

    index: int  # the interface it came in on
    options: tuple[tuple[int, bytes], ...]  # (type, the option's bytes after type and length)


def parse_nduseropt(payload: bytes) -> NdUserOptions | None:
    """An RTM_NEWNDUSEROPT's payload → its RA options; None when it is not one of an RA."""
    if len(payload) < _NDUSEROPTMSG.size:
        return None
    family, opts_len, index, icmp_type, _code, _, _ = _NDUSEROPTMSG.unpack_from(payload)
    if family != AF_INET6 or icmp_type != ND_ROUTER_ADVERT:
        return None
    data = payload[_NDUSEROPTMSG.size : _NDUSEROPTMSG.size + opts_len]
    options: list[tuple[int, bytes]] = []
    pos = 0
    while len(data) - pos >= _ND_OPT.size:
        otype, units = _ND_OPT.unpack_from(data, pos)
        if units == 0 or pos + units * 8 > len(data):
            break  # RFC 4861 §4.6: a zero length is invalid; a short one is cut off
        options.append((otype, bytes(data[pos + 2 : pos + units * 8])))
        pos += units * 8
    return NdUserOptions(index, tuple(options))
