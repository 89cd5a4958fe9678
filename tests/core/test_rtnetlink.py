"""Tests for portal.core.rtnetlink: dump requests, framing, and reading links, addresses and
default routes.

Real replies first: tests/data/netlink/namespace.json holds every datagram the kernel sent for
link, address and route dumps of a namespace built for the purpose (record.py there), beside
what iproute2 said of the same tables; the parser must agree with iproute2. Then hand-made
messages, table-driven, for each rule and each way a message can be broken; then hypothesis
feeds garbage and fuzzed messages, which must never raise.
"""

from __future__ import annotations

import ipaddress
import json
import struct
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from portal.core import rtnetlink as rtnl
from portal.core.netstate import Address, Link, Route

DATA = Path(__file__).resolve().parents[1] / "data" / "netlink" / "namespace.json"
RECORDED: dict[str, Any] = json.loads(DATA.read_text())

needs_recorded_order = pytest.mark.skipif(
    sys.byteorder != RECORDED["byteorder"],
    reason=f"the dumps were recorded on a {RECORDED['byteorder']}-endian host (netlink is in "
    "the host's byte order)",
)

PORT = 4242
SEQ = 77


# -- building messages ---------------------------------------------------------------------------


def attr(atype: int, value: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(value), atype) + value
    return raw + bytes(-len(raw) % 4)


def nlmsg(
    mtype: int, payload: bytes, *, flags: int = rtnl.NLM_F_MULTI, seq: int = SEQ, port: int = PORT
) -> bytes:
    raw = struct.pack("=IHHII", 16 + len(payload), mtype, flags, seq, port) + payload
    return raw + bytes(-len(raw) % 4)


def done(code: int = 0, **kw: Any) -> bytes:
    return nlmsg(rtnl.NLMSG_DONE, struct.pack("=i", code), **kw)


def link_payload(
    index: int = 3,
    name: bytes | None = b"wlan0",
    *,
    flags: int = rtnl.IFF_UP,
    arphrd: int = rtnl.ARPHRD_ETHER,
    oper: int | None = rtnl.IF_OPER_UP,
    kind: bytes | None = None,
) -> bytes:
    body = struct.pack("=BxHiII", 0, arphrd, index, flags, 0)
    if name is not None:
        body += attr(rtnl.IFLA_IFNAME, name + b"\0")
    if oper is not None:
        body += attr(rtnl.IFLA_OPERSTATE, bytes([oper]))
    if kind is not None:
        body += attr(rtnl.IFLA_LINKINFO | 0x8000, attr(rtnl.IFLA_INFO_KIND, kind + b"\0"))
    return body


def addr_payload(
    family: int = rtnl.AF_INET,
    *,
    index: int = 3,
    scope: int = 0,
    local: bytes | None = None,
    address: bytes | None = None,
    flags: int = 0,
) -> bytes:
    body = struct.pack("=BBBBI", family, 24, flags, scope, index)
    if address is not None:
        body += attr(rtnl.IFA_ADDRESS, address)
    if local is not None:
        body += attr(rtnl.IFA_LOCAL, local)
    return body


def v4(text: str) -> bytes:
    return ipaddress.IPv4Address(text).packed


def v6(text: str) -> bytes:
    return ipaddress.IPv6Address(text).packed


def route_payload(
    family: int = rtnl.AF_INET,
    *,
    dst_len: int = 0,
    table: int = rtnl.RT_TABLE_MAIN,
    rtype: int = rtnl.RTN_UNICAST,
    attrs: bytes = b"",
) -> bytes:
    return struct.pack("=BBBBBBBBI", family, dst_len, 0, 0, table, 3, 0, rtype, 0) + attrs


def u32(value: int) -> bytes:
    return struct.pack("=I", value)


def nexthop(ifindex: int, attrs: bytes = b"", *, length: int | None = None) -> bytes:
    size = 8 + len(attrs) if length is None else length
    return struct.pack("=HBBi", size, 0, 0, ifindex) + attrs


# -- recorded dumps ------------------------------------------------------------------------------


def recorded_payloads(table: str, kind: int) -> list[bytes]:
    rec = RECORDED[table]
    dump = rtnl.Dump(seq=rec["seq"], port=rec["port"], kind=kind)
    for datagram in rec["datagrams"]:
        dump.feed(bytes.fromhex(datagram))
    assert dump.state is rtnl.DumpState.DONE, dump.error
    return dump.payloads


def recorded_links() -> dict[int, rtnl.LinkMessage]:
    msgs = [rtnl.parse_link(p) for p in recorded_payloads("link", rtnl.RTM_NEWLINK)]
    return {m.index: m for m in msgs if m is not None}


@needs_recorded_order
def test_recorded_dumps_span_several_datagrams() -> None:
    # multipart replies across datagrams are what the framing must get right
    for table in ("link", "addr", "route"):
        assert len(RECORDED[table]["datagrams"]) >= 3, table


@needs_recorded_order
def test_recorded_links_agree_with_iproute2() -> None:
    links = recorded_links()
    assert len(links) == len(RECORDED["ip_link"])
    for want in RECORDED["ip_link"]:
        got = links[want["ifindex"]]
        assert got.name == want["ifname"]
        assert got.info_kind == want.get("linkinfo", {}).get("info_kind", "")
        assert bool(got.flags & rtnl.IFF_UP) == ("UP" in want["flags"])
        assert bool(got.flags & rtnl.IFF_LOOPBACK) == ("LOOPBACK" in want["flags"])
        assert (got.arphrd == rtnl.ARPHRD_ETHER) == (want["link_type"] == "ether")
        link = rtnl.to_link(got, wireless=False)
        assert link.up == ("UP" in want["flags"] and want["operstate"] in ("UP", "UNKNOWN"))


@needs_recorded_order
def test_recorded_links_by_name() -> None:
    by_name = {m.name: rtnl.to_link(m, wireless=False) for m in recorded_links().values()}
    assert by_name["lo"] == Link(index=1, name="lo", kind="", up=True, loopback=True)
    assert by_name["v0"].kind == "veth" and by_name["v0"].up
    assert by_name["br0"].kind == "bridge" and not by_name["br0"].up  # never set up
    assert by_name["tap0"].kind == "tun" and not by_name["tap0"].up  # up, but no carrier
    assert by_name["wü0"].kind == "veth"  # a UTF-8 name survives


@needs_recorded_order
def test_recorded_addresses_agree_with_iproute2() -> None:
    got = {rtnl.parse_address(p) for p in recorded_payloads("addr", rtnl.RTM_NEWADDR)} - {None}
    want = set()
    for link in RECORDED["ip_addr"]:
        for info in link["addr_info"]:
            if info.get("tentative") or info.get("dadfailed"):
                continue  # not usable (yet): left out, as iproute2 marks them
            text = info["local"]
            link_local = info["scope"] == "link" or ipaddress.ip_address(text).is_link_local
            want.add(Address(index=link["ifindex"], address=text, link_local=link_local))
    assert got == want
    d0 = next(link["ifindex"] for link in RECORDED["ip_addr"] if link["ifname"] == "d0")
    # point to point: our side is IFA_LOCAL, not the peer in IFA_ADDRESS
    assert Address(index=d0, address="192.0.2.5") in got
    assert not any(a.address == "192.0.2.6" for a in got)


def ip_default_routes() -> set[Route]:
    index = {link["ifname"]: link["ifindex"] for link in RECORDED["ip_link"]}
    want = set()
    for family, routes in ((4, RECORDED["ip_route4"]), (6, RECORDED["ip_route6"])):
        for r in routes:
            if r["dst"] != "default" or "type" in r or "table" in r:
                continue  # iproute2 names the type and table unless unicast in main
            hop = r["nexthops"][0] if "nexthops" in r else r
            gateway = hop.get("gateway") or hop.get("via", {}).get("host", "")
            want.add(Route(index[hop["dev"]], gateway, r.get("metric", 0), family))
    return want


@needs_recorded_order
def test_recorded_default_routes_agree_with_iproute2() -> None:
    payloads = recorded_payloads("route", rtnl.RTM_NEWROUTE)
    got = {r for p in payloads if (r := rtnl.parse_default_route(p)) is not None}
    assert got == ip_default_routes()
    index = {m.name: m.index for m in recorded_links().values()}
    v0, v1 = index["v0"], index["v1"]
    assert got == {
        Route(v0, "10.10.0.1", 100, 4),
        Route(v1, "10.20.0.1", 300, 4),  # multipath: its first next hop
        Route(v0, "2001:db8:10::1", 600, 4),  # IPv4 through an IPv6 next hop (RTA_VIA)
        Route(v0, "2001:db8:10::1", 1024, 6),
    }  # not: table 100, table 1000 (RTA_TABLE), the blackhole, non-default routes


@needs_recorded_order
def test_a_recorded_dump_read_by_another_socket_or_request_is_ignored() -> None:
    rec = RECORDED["link"]
    for seq, port in ((rec["seq"] + 1, rec["port"]), (rec["seq"], rec["port"] + 1)):
        dump = rtnl.Dump(seq=seq, port=port, kind=rtnl.RTM_NEWLINK)
        for datagram in rec["datagrams"]:
            dump.feed(bytes.fromhex(datagram))
        assert dump.state is rtnl.DumpState.RUNNING and dump.payloads == []


# -- requests and framing ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "body_len"),
    [(rtnl.RTM_GETLINK, 16), (rtnl.RTM_GETADDR, 8), (rtnl.RTM_GETROUTE, 12)],
)
def test_dump_request(kind: int, body_len: int) -> None:
    raw = rtnl.dump_request(kind, seq=99, family=rtnl.AF_INET6)
    messages, clean = rtnl.split_messages(raw)
    assert clean and len(raw) == 16 + body_len
    (msg,) = messages
    assert (msg.type, msg.flags, msg.seq, msg.port) == (
        kind,
        rtnl.NLM_F_REQUEST | rtnl.NLM_F_DUMP,
        99,
        0,
    )
    assert msg.payload == bytes([rtnl.AF_INET6]) + bytes(body_len - 1)


def test_split_messages_aligns_to_four_bytes() -> None:
    # a 17-byte message is followed by 3 bytes of padding before the next header
    first = struct.pack("=IHHII", 17, 99, 0, 1, 0) + b"x" + bytes(3)
    messages, clean = rtnl.split_messages(first + done())
    assert clean and [m.type for m in messages] == [99, rtnl.NLMSG_DONE]
    assert messages[0].payload == b"x"


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\x10\x00\x00", id="shorter-than-a-header"),
        pytest.param(struct.pack("=IHHII", 8, 3, 0, 0, 0), id="length-below-header"),
        pytest.param(struct.pack("=IHHII", 64, 3, 0, 0, 0), id="length-beyond-data"),
        pytest.param(done() + b"\x01\x02", id="trailing-bytes"),
    ],
)
def test_split_messages_refuses_broken_framing(data: bytes) -> None:
    messages, clean = rtnl.split_messages(data)
    assert not clean
    assert all(m.type == rtnl.NLMSG_DONE for m in messages)


def test_parse_attrs() -> None:
    data = attr(1, b"one") + attr(2 | 0x8000, b"nested") + attr(1, b"again")
    assert rtnl.parse_attrs(data) == {1: b"one", 2: b"nested"}  # flags masked, first wins
    # a length below the header or beyond the data ends the list; what came before stays
    assert rtnl.parse_attrs(attr(1, b"a") + struct.pack("=HH", 2, 5)) == {1: b"a"}
    assert rtnl.parse_attrs(attr(1, b"a") + struct.pack("=HH", 40, 5) + b"xx") == {1: b"a"}
    assert rtnl.parse_attrs(b"\x01") == {}


# -- the dump state machine ----------------------------------------------------------------------


def feed_all(*datagrams: bytes, kind: int = rtnl.RTM_NEWLINK) -> rtnl.Dump:
    dump = rtnl.Dump(seq=SEQ, port=PORT, kind=kind)
    for datagram in datagrams:
        dump.feed(datagram)
    return dump


CASES = [
    # (id, datagrams, state, payload count, error contains)
    ("done", [nlmsg(16, b"a"), nlmsg(16, b"b") + done()], rtnl.DumpState.DONE, 2, ""),
    ("done-without-code", [nlmsg(rtnl.NLMSG_DONE, b"")], rtnl.DumpState.DONE, 0, ""),
    ("other-types-skipped", [nlmsg(20, b"x") + nlmsg(1, b"") + done()], rtnl.DumpState.DONE, 0, ""),
    (
        "foreign-seq",
        [nlmsg(16, b"a", seq=SEQ + 1) + done(seq=SEQ + 1)],
        rtnl.DumpState.RUNNING,
        0,
        "",
    ),
    ("foreign-port", [nlmsg(16, b"a", port=1) + done(port=1)], rtnl.DumpState.RUNNING, 0, ""),
    (
        "interrupted",
        [nlmsg(16, b"a", flags=rtnl.NLM_F_MULTI | rtnl.NLM_F_DUMP_INTR) + done()],
        rtnl.DumpState.INTERRUPTED,
        1,
        "",
    ),
    ("done-with-errno", [nlmsg(16, b"a") + done(-16)], rtnl.DumpState.FAILED, 1, "errno 16"),
    (
        "error",
        [nlmsg(rtnl.NLMSG_ERROR, struct.pack("=i", -1))],
        rtnl.DumpState.FAILED,
        0,
        "errno 1",
    ),
    ("short-error", [nlmsg(rtnl.NLMSG_ERROR, b"")], rtnl.DumpState.FAILED, 0, "refused"),
    ("overrun", [nlmsg(rtnl.NLMSG_OVERRUN, b"")], rtnl.DumpState.FAILED, 0, "overrun"),
    ("cut-short", [nlmsg(16, b"abcdefgh")[:-3]], rtnl.DumpState.FAILED, 0, "cut short"),
    ("done-then-more", [done(), nlmsg(16, b"late")], rtnl.DumpState.DONE, 0, ""),
]


@pytest.mark.parametrize(
    ("datagrams", "state", "count", "error"),
    [pytest.param(d, s, n, e, id=i) for i, d, s, n, e in CASES],
)
def test_dump(datagrams: list[bytes], state: rtnl.DumpState, count: int, error: str) -> None:
    dump = feed_all(*datagrams)
    assert dump.state is state
    assert len(dump.payloads) == count
    assert error in dump.error and bool(error) == bool(dump.error)


def test_dump_stays_failed() -> None:
    dump = feed_all(nlmsg(rtnl.NLMSG_OVERRUN, b""), nlmsg(16, b"a") + done())
    assert dump.state is rtnl.DumpState.FAILED and dump.payloads == []


def test_dump_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rtnl, "MAX_MESSAGES", 3)
    dump = feed_all(nlmsg(16, b"a") * 2, nlmsg(16, b"a") * 2)
    assert dump.state is rtnl.DumpState.FAILED and "larger" in dump.error
    monkeypatch.setattr(rtnl, "MAX_DUMP_BYTES", 40)
    dump = feed_all(nlmsg(16, bytes(32)))
    assert dump.state is rtnl.DumpState.FAILED and "larger" in dump.error


# -- links ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "want"),
    [
        (link_payload(), rtnl.LinkMessage(3, "wlan0", rtnl.IFF_UP, 1, rtnl.IF_OPER_UP, "")),
        (
            link_payload(kind=b"wireguard", arphrd=65534, oper=None),
            rtnl.LinkMessage(3, "wlan0", rtnl.IFF_UP, 65534, rtnl.IF_OPER_UNKNOWN, "wireguard"),
        ),
        (link_payload(name=b"bad\xffname"), "bad\ufffdname"),
        (link_payload(name=None), None),  # no IFLA_IFNAME
        (link_payload(name=b""), None),
        (link_payload(index=0), None),
        (link_payload(index=-2), None),
        (link_payload()[:15], None),  # shorter than ifinfomsg
    ],
)
def test_parse_link(payload: bytes, want: object) -> None:
    got = rtnl.parse_link(payload)
    if isinstance(want, str):
        assert got is not None and got.name == want
    else:
        assert got == want


@pytest.mark.parametrize(
    ("msg", "wireless", "want"),
    [
        (dict(info_kind="veth"), True, dict(kind="veth")),  # the kernel's kind wins
        (dict(), True, dict(kind="wifi")),
        (dict(), False, dict(kind="ethernet")),
        (dict(arphrd=65534), False, dict(kind="")),  # ARPHRD_NONE (a tun, a WireGuard link)
        (dict(operstate=rtnl.IF_OPER_UNKNOWN), False, dict(up=True)),
        (dict(operstate=2), False, dict(up=False)),  # IF_OPER_DOWN: no carrier
        (dict(flags=0), False, dict(up=False)),  # administratively down
        (dict(flags=rtnl.IFF_UP | rtnl.IFF_LOOPBACK), False, dict(loopback=True, up=True)),
    ],
)
def test_to_link(msg: dict[str, Any], wireless: bool, want: dict[str, Any]) -> None:
    base = dict(
        index=3,
        name="wlan0",
        flags=rtnl.IFF_UP,
        arphrd=rtnl.ARPHRD_ETHER,
        operstate=rtnl.IF_OPER_UP,
        info_kind="",
    )
    link = rtnl.to_link(rtnl.LinkMessage(**(base | msg)), wireless=wireless)
    expected = {"index": 3, "name": "wlan0", "kind": "ethernet", "up": True, "loopback": False}
    assert link == Link(**(expected | want))


# -- addresses -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "want"),
    [
        (addr_payload(address=v4("10.0.0.5")), Address(3, "10.0.0.5")),
        (addr_payload(local=v4("10.0.0.5"), address=v4("10.0.0.6")), Address(3, "10.0.0.5")),
        (addr_payload(rtnl.AF_INET6, address=v6("2001:db8::5")), Address(3, "2001:db8::5")),
        (addr_payload(rtnl.AF_INET6, address=v6("fe80::5")), Address(3, "fe80::5", True)),
        (addr_payload(address=v4("169.254.1.1")), Address(3, "169.254.1.1", True)),
        (
            addr_payload(address=v4("10.0.0.5"), scope=rtnl.RT_SCOPE_LINK),
            Address(3, "10.0.0.5", True),
        ),
        (addr_payload(address=v6("2001:db8::5")), None),  # length does not fit the family
        (addr_payload(rtnl.AF_INET6, address=v4("10.0.0.5")), None),
        (addr_payload(7, address=b"\x01\x02"), None),  # not an IP family
        (addr_payload(), None),  # no address at all
        (addr_payload(index=0, address=v4("10.0.0.5")), None),
        (addr_payload(address=v4("10.0.0.5"))[:7], None),  # shorter than ifaddrmsg
        # not usable: duplicate address detection still runs, or failed
        (addr_payload(rtnl.AF_INET6, address=v6("2001:db8::5"), flags=rtnl.IFA_F_TENTATIVE), None),
        (addr_payload(rtnl.AF_INET6, address=v6("2001:db8::5"), flags=rtnl.IFA_F_DADFAILED), None),
        (addr_payload(rtnl.AF_INET6, address=v6("2001:db8::5"), flags=0x80), Address(3, "2001:db8::5")),  # noqa: E501
    ],
)  # fmt: skip
def test_parse_address(payload: bytes, want: Address | None) -> None:
    assert rtnl.parse_address(payload) == want


# -- routes --------------------------------------------------------------------------------------


GW = attr(rtnl.RTA_GATEWAY, v4("10.0.0.1"))
OIF = attr(rtnl.RTA_OIF, u32(3))


@pytest.mark.parametrize(
    ("payload", "want"),
    [
        (route_payload(attrs=OIF + GW), Route(3, "10.0.0.1", 0, 4)),
        (
            route_payload(attrs=OIF + GW + attr(rtnl.RTA_PRIORITY, u32(600))),
            Route(3, "10.0.0.1", 600, 4),
        ),
        (route_payload(attrs=OIF), Route(3, "", 0, 4)),  # a device route (PPP, WireGuard)
        (
            route_payload(rtnl.AF_INET6, attrs=OIF + attr(rtnl.RTA_GATEWAY, v6("fe80::1"))),
            Route(3, "fe80::1", 0, 6),
        ),
        # RTA_TABLE wins over rtm_table (252, RT_TABLE_COMPAT, for ids above 255)
        (route_payload(table=252, attrs=OIF + attr(rtnl.RTA_TABLE, u32(254))), Route(3, "", 0, 4)),
        (route_payload(attrs=OIF + attr(rtnl.RTA_TABLE, u32(1000))), None),
        (route_payload(table=100, attrs=OIF), None),
        (route_payload(dst_len=8, attrs=OIF), None),
        (route_payload(rtype=6, attrs=OIF), None),  # RTN_BLACKHOLE
        (route_payload(28, attrs=OIF), None),  # AF_MPLS
        (route_payload(attrs=GW), None),  # no interface at all
        (route_payload(attrs=attr(rtnl.RTA_OIF, u32(0))), None),
        (route_payload(attrs=OIF)[:11], None),  # shorter than rtmsg
        # RTA_VIA: a u16 family, then the address
        (
            route_payload(attrs=OIF + attr(rtnl.RTA_VIA, struct.pack("=H", 10) + v6("fe80::1"))),
            Route(3, "fe80::1", 0, 4),
        ),
        (route_payload(attrs=OIF + attr(rtnl.RTA_VIA, b"\x0a")), Route(3, "", 0, 4)),
        # multipath: the first next hop stands for the route
        (
            route_payload(
                attrs=attr(rtnl.RTA_MULTIPATH, nexthop(5, GW) + nexthop(6, GW))
                + attr(rtnl.RTA_PRIORITY, u32(300))
            ),
            Route(5, "10.0.0.1", 300, 4),
        ),
        (route_payload(attrs=attr(rtnl.RTA_MULTIPATH, b"\x01\x02")), None),
        (route_payload(attrs=attr(rtnl.RTA_MULTIPATH, nexthop(5, length=4))), None),
        (route_payload(attrs=attr(rtnl.RTA_MULTIPATH, nexthop(5, length=90))), None),
        (route_payload(attrs=attr(rtnl.RTA_MULTIPATH, nexthop(0))), None),
    ],
)  # fmt: skip
def test_parse_default_route(payload: bytes, want: Route | None) -> None:
    assert rtnl.parse_default_route(payload) == want


# -- garbage -------------------------------------------------------------------------------------


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=512))
def test_garbage_never_raises(data: bytes) -> None:
    rtnl.split_messages(data)
    rtnl.parse_attrs(data)
    for parse in (rtnl.parse_link, rtnl.parse_address, rtnl.parse_default_route):
        parse(data)
    dump = rtnl.Dump(seq=SEQ, port=PORT, kind=rtnl.RTM_NEWLINK)
    dump.feed(data)
    assert dump.state in rtnl.DumpState


attrs_strategy = st.lists(
    st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=24)), max_size=8
).map(lambda items: b"".join(attr(t, v) for t, v in items))


@settings(max_examples=500, deadline=None)
@given(
    st.sampled_from([rtnl.RTM_NEWLINK, rtnl.RTM_NEWADDR, rtnl.RTM_NEWROUTE]),
    st.binary(min_size=0, max_size=16),
    attrs_strategy,
    st.booleans(),
)
def test_framed_messages_with_fuzzed_attributes_never_raise(
    kind: int, header: bytes, attrs: bytes, nested_route: bool
) -> None:
    # well-framed messages whose fixed header and attributes are random: every parser reads
    # them through, each returns its value or None
    if nested_route:
        attrs = attr(rtnl.RTA_MULTIPATH, nexthop(3, attrs))
    payload = header + attrs
    dump = feed_all(nlmsg(kind, payload) + done(), kind=kind)
    assert dump.state is rtnl.DumpState.DONE and dump.payloads == [payload]
    link = rtnl.parse_link(payload)
    if link is not None:
        assert link.index > 0 and link.name
        rtnl.to_link(link, wireless=False)
    address = rtnl.parse_address(payload)
    if address is not None:
        ipaddress.ip_address(address.address)
    route = rtnl.parse_default_route(payload)
    if route is not None:
        assert route.index > 0 and route.family in (4, 6)


# -- router advertisement options (RTM_NEWNDUSEROPT) ----------------------------------------------


def nduseropt(options: bytes, *, family: int = rtnl.AF_INET6, icmp_type: int = 134) -> bytes:
    return struct.pack("=BxHiBBHI", family, len(options), 2, icmp_type, 0, 0, 0) + options


RDNSS = bytes([25, 3, 0, 0]) + struct.pack("!I", 1800) + v6("fd77::1")
PORTAL_OPT = bytes([37, 2]) + b"https://a/\0\0\0\0"


@pytest.mark.parametrize(
    ("payload", "want"),
    [
        # as this kernel sent them in the lab: one option per message (RDNSS, then option 37)
        (nduseropt(RDNSS), ((25, RDNSS[2:]),)),
        (nduseropt(PORTAL_OPT), ((37, PORTAL_OPT[2:]),)),
        (nduseropt(RDNSS + PORTAL_OPT), ((25, RDNSS[2:]), (37, PORTAL_OPT[2:]))),
        (nduseropt(bytes([25, 0]) + RDNSS), ()),  # a zero length ends the options
        (nduseropt(RDNSS[:20]), ()),  # cut short
        (nduseropt(RDNSS, family=rtnl.AF_INET), None),
        (nduseropt(RDNSS, icmp_type=135), None),  # not a router advertisement
        (nduseropt(RDNSS)[:10], None),
    ],
)  # fmt: skip
def test_parse_nduseropt(payload: bytes, want: object) -> None:
    got = rtnl.parse_nduseropt(payload)
    assert (got.options if got is not None else None) == want
    if got is not None:
        assert got.index == 2


@given(st.binary(max_size=200))
def test_parse_nduseropt_never_raises(data: bytes) -> None:
    rtnl.parse_nduseropt(data)
    rtnl.parse_nduseropt(nduseropt(data))
