"""Reading who owns a TCP socket: the inet_diag request and answer (sock_diag(7)), and
/proc/net/tcp{,6} (proc(5)), from bytes and text laid out as the kernel lays them out. The edge
test (tests/edges/test_sign_in_proxy.py) asks the real kernel."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from portal.core.peer_uid import (
    AF_INET,
    AF_INET6,
    DIAG_MSG_SIZE,
    NLMSG_DONE,
    NLMSG_ERROR,
    SOCK_DIAG_BY_FAMILY,
    TCP_LISTEN,
    Lookup,
    inet_diag_request,
    match_proc_net_tcp,
    parse_inet_diag_reply,
)

CLIENT = ("127.0.0.1", 51234)
SERVER = ("127.0.0.1", 40001)
TCP_ESTABLISHED = 1
TCP_TIME_WAIT = 6


def nlmsg(kind: int, payload: bytes, seq: int = 1) -> bytes:
    length = 16 + len(payload)
    padded = payload + b"\0" * (((length + 3) & ~3) - length)
    return struct.pack("=IHHII", length, kind, 0, seq, 0) + padded


def diag_msg(
    local: tuple[str, int] = CLIENT,
    remote: tuple[str, int] = SERVER,
    *,
    uid: int = 1000,
    state: int = TCP_ESTABLISHED,
    family: int | None = None,
    inode: int = 4242,
) -> bytes:
    src = ipaddress.ip_address(local[0])
    dst = ipaddress.ip_address(remote[0])
    fam = family or (AF_INET if src.version == 4 else AF_INET6)
    sockid = struct.pack(
        "!HH16s16s", local[1], remote[1], src.packed.ljust(16, b"\0"), dst.packed.ljust(16, b"\0")
    ) + struct.pack("=III", 0, 7, 7)
    return bytes((fam, state, 0, 0)) + sockid + struct.pack("=IIIII", 0, 0, 0, uid, inode)


def test_request_layout() -> None:
    req = inet_diag_request(CLIENT, SERVER, seq=9)
    assert len(req) == 16 + 56
    length, kind, flags, seq, pid = struct.unpack_from("=IHHII", req)
    assert (length, kind, flags, seq, pid) == (72, SOCK_DIAG_BY_FAMILY, 1, 9, 0)
    family, protocol, ext, _pad, states = struct.unpack_from("=BBBBI", req, 16)
    assert (family, protocol, ext, states) == (AF_INET, 6, 0, 0xFFFFFFFF)
    sport, dport, src, dst = struct.unpack_from("!HH16s16s", req, 24)
    assert (sport, dport) == (51234, 40001)
    assert src[:4] == bytes((127, 0, 0, 1)) and src[4:] == bytes(12) and dst == src
    interface, cookie0, cookie1 = struct.unpack_from("=III", req, 60)
    assert (interface, cookie0, cookie1) == (0, 0xFFFFFFFF, 0xFFFFFFFF)


def test_request_for_ipv6() -> None:
    req = inet_diag_request(("::1", 1), ("::1", 2))
    assert req[16] == AF_INET6
    assert req[28:44] == ipaddress.IPv6Address("::1").packed


def test_request_refuses_mixed_families() -> None:
    with pytest.raises(ValueError):
        inet_diag_request(("127.0.0.1", 1), ("::1", 2))


def test_reply_gives_the_uid() -> None:
    assert len(diag_msg()) == DIAG_MSG_SIZE
    assert parse_inet_diag_reply(nlmsg(SOCK_DIAG_BY_FAMILY, diag_msg()), CLIENT, SERVER) == (
        Lookup(1000)
    )


def test_a_socket_its_owner_closed_has_no_owner_to_name() -> None:
    """What is left of a closed socket (time-wait) is reported with uid 0 and inode 0: that 0
    is nobody's uid, least of all root's."""
    closed = diag_msg(uid=0, state=TCP_TIME_WAIT, inode=0)
    found = parse_inet_diag_reply(nlmsg(SOCK_DIAG_BY_FAMILY, closed), CLIENT, SERVER)
    assert found.uid is None and found.closed and "closed" in found.error
    assert found.known  # an answer: not to be looked for elsewhere, as a missing socket is
    assert not Lookup(None, "no such socket").known
    root = parse_inet_diag_reply(nlmsg(SOCK_DIAG_BY_FAMILY, diag_msg(uid=0)), CLIENT, SERVER)
    assert root == Lookup(0) and not root.closed
    text = HEADER + proc_line("0100007F:C822", "0100007F:9C41", "06", "0", inode="0")
    assert match_proc_net_tcp(text, CLIENT, SERVER, byteorder="little").closed


def test_reply_with_attributes_after_the_message() -> None:
    payload = diag_msg(uid=65534) + b"\x08\x00\x01\x00\x00\x00\x00\x00"
    assert parse_inet_diag_reply(nlmsg(SOCK_DIAG_BY_FAMILY, payload), CLIENT, SERVER).uid == 65534


def test_dual_stack_client_is_reported_v4_mapped() -> None:
    mapped = diag_msg(
        ("::ffff:127.0.0.1", CLIENT[1]), ("::ffff:127.0.0.1", SERVER[1]), family=AF_INET6
    )
    assert parse_inet_diag_reply(nlmsg(SOCK_DIAG_BY_FAMILY, mapped), CLIENT, SERVER).uid == 1000


@pytest.mark.parametrize(
    "payload",
    [
        diag_msg(("127.0.0.1", 9), SERVER),  # another port
        diag_msg(CLIENT, ("127.0.0.2", SERVER[1])),  # another peer
        diag_msg(("127.0.0.3", CLIENT[1]), SERVER),  # another address
        diag_msg(state=TCP_LISTEN),  # a listening socket is nobody's connection
        diag_msg(family=99),
        diag_msg()[:40],  # short
    ],
)
def test_a_reply_about_another_socket_is_no_answer(payload: bytes) -> None:
    found = parse_inet_diag_reply(nlmsg(SOCK_DIAG_BY_FAMILY, payload), CLIENT, SERVER)
    assert found.uid is None and found.error


def test_errors_and_done() -> None:
    enoent = nlmsg(NLMSG_ERROR, struct.pack("=i", -2) + bytes(16))
    found = parse_inet_diag_reply(enoent, CLIENT, SERVER)
    assert found.uid is None and "errno 2" in found.error
    assert parse_inet_diag_reply(nlmsg(NLMSG_ERROR, b"\0\0"), CLIENT, SERVER).uid is None
    ack = parse_inet_diag_reply(nlmsg(NLMSG_ERROR, bytes(20)), CLIENT, SERVER)
    assert ack == Lookup(None, "no answer")
    assert parse_inet_diag_reply(nlmsg(NLMSG_DONE, bytes(4)), CLIENT, SERVER).uid is None


def test_other_sequence_numbers_and_garbage() -> None:
    stale = nlmsg(SOCK_DIAG_BY_FAMILY, diag_msg(uid=1), seq=5)
    fresh = nlmsg(SOCK_DIAG_BY_FAMILY, diag_msg(uid=2), seq=1)
    assert parse_inet_diag_reply(stale + fresh, CLIENT, SERVER).uid == 2
    assert parse_inet_diag_reply(b"", CLIENT, SERVER).uid is None
    assert parse_inet_diag_reply(b"\x01" * 10, CLIENT, SERVER).uid is None
    lying = struct.pack("=IHHII", 4000, SOCK_DIAG_BY_FAMILY, 0, 1, 0) + diag_msg()
    assert "truncated" in parse_inet_diag_reply(lying, CLIENT, SERVER).error
    tiny = struct.pack("=IHHII", 3, SOCK_DIAG_BY_FAMILY, 0, 1, 0)
    assert parse_inet_diag_reply(tiny, CLIENT, SERVER).uid is None


# --- /proc/net/tcp ----------------------------------------------------------------------------

HEADER = (
    "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt"
    "   uid  timeout inode\n"
)


def proc_line(local: str, remote: str, state: str, uid: str, inode: str = "12345") -> str:
    return (
        f"   0: {local} {remote} {state} 00000000:00000000 00:00000000 00000000 "
        f"{uid:>5}        0 {inode} 1 0000000000000000 20 4 30 10 -1\n"
    )


def test_proc_net_tcp_little_endian() -> None:
    text = (
        HEADER
        + proc_line("0100007F:9C41", "00000000:0000", "0A", "0")  # our listener, 40001
        + proc_line("0100007F:C822", "0100007F:9C41", "01", "1000")  # the client, 51234
        + proc_line("0100007F:9C41", "0100007F:C822", "01", "0")  # our accepted end
    )
    assert match_proc_net_tcp(text, CLIENT, SERVER, byteorder="little") == Lookup(1000)
    assert match_proc_net_tcp(text, SERVER, CLIENT, byteorder="little") == Lookup(0)


def test_proc_net_tcp_big_endian() -> None:
    text = HEADER + proc_line("7F000001:C822", "7F000001:9C41", "01", "33")
    assert match_proc_net_tcp(text, CLIENT, SERVER, byteorder="big").uid == 33
    assert match_proc_net_tcp(text, CLIENT, SERVER, byteorder="little").uid is None


def test_proc_net_tcp6_with_a_v4_mapped_client() -> None:
    mapped = "0000000000000000FFFF00000100007F"
    text = HEADER + proc_line(f"{mapped}:C822", f"{mapped}:9C41", "01", "1000")
    assert match_proc_net_tcp(text, CLIENT, SERVER, byteorder="little").uid == 1000


def test_proc_net_tcp6_plain() -> None:
    loop6 = "00000000000000000000000001000000"  # ::1, four native-order words
    text = HEADER + proc_line(f"{loop6}:0001", f"{loop6}:0002", "01", "7")
    assert match_proc_net_tcp(text, ("::1", 1), ("::1", 2), byteorder="little").uid == 7


@pytest.mark.parametrize(
    "line",
    [
        proc_line("0100007F:C822", "0100007F:9C41", "0A", "1000"),  # listening
        proc_line("0100007F:C822", "0100007F:9C41", "01", "x"),  # no uid
        proc_line("0100007F", "0100007F:9C41", "01", "1000"),  # no port
        proc_line("ZZ00007F:C822", "0100007F:9C41", "01", "1000"),
        proc_line("0100007F:C8", "0100007F:9C41", "01", "1000"),
        "   0: 0100007F:C822 0100007F:9C41 01\n",  # cut short
    ],
)
def test_proc_lines_that_do_not_count(line: str) -> None:
    found = match_proc_net_tcp(HEADER + line, CLIENT, SERVER, byteorder="little")
    assert found.uid is None and found.error
