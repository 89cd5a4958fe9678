"""Who owns a TCP socket on this machine: the bytes of the kernel's answer, read.

The sign-in proxy serves only the uid that started it. A loopback TCP peer carries no
credentials (SO_PEERCRED is for Unix sockets), so the proxy asks the kernel who owns the
client's end of the connection, matched on the exact 4-tuple:

- NETLINK_SOCK_DIAG with an inet_diag request for one socket (linux/inet_diag.h,
  sock_diag(7)): `inet_diag_request()` builds it, `parse_inet_diag_reply()` reads the answer;
- /proc/net/tcp and /proc/net/tcp6 (proc(5)), where sock_diag is not allowed:
  `match_proc_net_tcp()`.

Pure: bytes and text in, a uid (or why there is none) out. Sending the request and reading
the files is the edge's job (portal/edges/sign_in_proxy.py). Native byte order appears where
the kernel uses it (netlink headers, /proc's hex words); the caller says which order that is.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Final, Literal

ByteOrder = Literal["little", "big"]

AF_INET: Final = 2
AF_INET6: Final = 10
IPPROTO_TCP: Final = 6
SOCK_DIAG_BY_FAMILY: Final = 20
NLMSG_ERROR: Final = 2
NLMSG_DONE: Final = 3
NLM_F_REQUEST: Final = 0x1
TCP_LISTEN: Final = 10
ALL_STATES: Final = 0xFFFFFFFF
NO_COOKIE: Final = 0xFFFFFFFF  # INET_DIAG_NOCOOKIE: "any socket", no cookie check

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_SOCKID = struct.Struct("!HH16s16s")  # sport, dport, src, dst (network order)
_SOCKID_TAIL = struct.Struct("=III")  # if, cookie[2] (native)
_MSG_TAIL = struct.Struct("=IIIII")  # expires, rqueue, wqueue, uid, inode
_REQ_HEAD = struct.Struct("=BBBBI")  # family, protocol, ext, pad, states
SOCKID_SIZE: Final = _SOCKID.size + _SOCKID_TAIL.size  # 48
DIAG_MSG_SIZE: Final = 4 + SOCKID_SIZE + _MSG_TAIL.size  # 72


@dataclass(frozen=True, slots=True)
class Lookup:
    """The answer: `uid`, or None with `error` saying why ("" never with None). `closed`: the
    socket is there but no longer open (its owner closed it, and the kernel keeps only its
    time-wait remains, which it reports with uid 0 and inode 0): there is no owner to name."""

    uid: int | None
    error: str = ""
    closed: bool = False

    @property
    def known(self) -> bool:
        """The kernel knows the socket: its owner's uid, or that it is closed. Only an unknown
        socket is worth looking for elsewhere."""
        return self.uid is not None or self.closed


CLOSED: Final = Lookup(None, "closed by its owner before it was checked", closed=True)


def _packed(address: str) -> tuple[int, bytes]:
    ip = ipaddress.ip_address(address)
    family = AF_INET if ip.version == 4 else AF_INET6
    return family, ip.packed.ljust(16, b"\0")


def inet_diag_request(local: tuple[str, int], remote: tuple[str, int], *, seq: int = 1) -> bytes:
    """A SOCK_DIAG_BY_FAMILY request for the one TCP socket whose own end is `local` and
    whose peer is `remote` (for the proxy: the client's end, so `local` is the client)."""
    family, src = _packed(local[0])
    other, dst = _packed(remote[0])
    if family != other:
        raise ValueError("local and remote addresses of different families")
    body = (
        _REQ_HEAD.pack(family, IPPROTO_TCP, 0, 0, ALL_STATES)
        + _SOCKID.pack(local[1], remote[1], src, dst)
        + _SOCKID_TAIL.pack(0, NO_COOKIE, NO_COOKIE)
    )
    return (
        _NLMSGHDR.pack(_NLMSGHDR.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, seq, 0)
        + body
    )


def parse_inet_diag_reply(
    data: bytes, local: tuple[str, int], remote: tuple[str, int], *, seq: int = 1
) -> Lookup:
    """The uid in the kernel's answer to `inet_diag_request(local, remote, seq=seq)`.

    Only a message about exactly that socket counts (same ports and addresses, a v4-mapped
    address counting as its IPv4 one, and not a listening socket): anything else in the
    buffer is no answer.
    """
    want_src = _plain(local[0])
    want_dst = _plain(remote[0])
    pos = 0
    while pos + _NLMSGHDR.size <= len(data):
        length, kind, _flags, msg_seq, _pid = _NLMSGHDR.unpack_from(data, pos)
        if length < _NLMSGHDR.size or pos + length > len(data):
            return Lookup(None, "a truncated netlink message")
        payload = data[pos + _NLMSGHDR.size : pos + length]
        pos += (length + 3) & ~3  # NLMSG_ALIGN
        if msg_seq != seq:
            continue
        if kind == NLMSG_ERROR:
            if len(payload) < 4:
                return Lookup(None, "a truncated netlink error")
            (code,) = struct.unpack_from("=i", payload)
            return Lookup(None, f"no such socket (errno {-code})" if code else "no answer")
        if kind == NLMSG_DONE:
            return Lookup(None, "no such socket")
        if kind != SOCK_DIAG_BY_FAMILY or len(payload) < DIAG_MSG_SIZE:
            continue
        msg_family, state = payload[0], payload[1]
        sport, dport, msg_src, msg_dst = _SOCKID.unpack_from(payload, 4)
        if (sport, dport) != (local[1], remote[1]) or state == TCP_LISTEN:
            continue
        # A dual-stack AF_INET6 client socket talking IPv4 is found by an AF_INET lookup
        # and reported as AF_INET6 with v4-mapped addresses (::ffff:127.0.0.1).
        if _unpacked(msg_src, msg_family) != want_src:
            continue
        if _unpacked(msg_dst, msg_family) != want_dst:
            continue
        *_, uid, inode = _MSG_TAIL.unpack_from(payload, 4 + SOCKID_SIZE)
        return Lookup(uid) if inode else CLOSED
    return Lookup(None, "no answer about that socket")


def _plain(address: str) -> str:
    """The address in its usual form, IPv4 for a v4-mapped IPv6 address."""
    ip = ipaddress.ip_address(address)
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def _unpacked(packed: bytes, family: int) -> str | None:
    if family == AF_INET:
        return _plain(str(ipaddress.IPv4Address(packed[:4])))
    if family == AF_INET6:
        return _plain(str(ipaddress.IPv6Address(packed[:16])))
    return None


def _proc_address(text: str, *, byteorder: ByteOrder) -> tuple[str, int] | None:
    """`0100007F:1F90` (proc(5): the address as the kernel's 32-bit words in hex, each in
    native order; the port in hex) → ("127.0.0.1", 8080)."""
    address, sep, port = text.partition(":")
    if not sep or len(address) not in (8, 32) or len(port) != 4:
        return None
    try:
        words = [int(address[i : i + 8], 16) for i in range(0, len(address), 8)]
        raw = b"".join(w.to_bytes(4, byteorder) for w in words)
        return _plain(str(ipaddress.ip_address(raw))), int(port, 16)
    except ValueError:
        return None


def match_proc_net_tcp(
    text: str, local: tuple[str, int], remote: tuple[str, int], *, byteorder: ByteOrder
) -> Lookup:
    """The uid of the socket with own end `local` and peer `remote` in /proc/net/tcp{,6}."""
    want_local = (_plain(local[0]), local[1])
    want_remote = (_plain(remote[0]), remote[1])
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        own = _proc_address(fields[1], byteorder=byteorder)
        peer = _proc_address(fields[2], byteorder=byteorder)
        if own != want_local or peer != want_remote:
            continue
        if fields[3] == f"{TCP_LISTEN:02X}" or not fields[7].isdigit():
            continue
        if len(fields) > 9 and fields[9] == "0":
            return CLOSED
        return Lookup(int(fields[7]))
    return Lookup(None, "no such socket in the table")
