"""Record real rtnetlink dumps for tests/core/test_rtnetlink.py (run as root, by hand).

    sudo python3 tests/data/netlink/record.py tests/data/netlink/namespace.json

Builds a network namespace of its own with the shapes a laptop meets (veth, bridge, tap,
point-to-point addresses, IPv4 and IPv6 default routes, a multipath default, defaults in other
tables, a blackhole, an IPv4 route through an IPv6 next hop, hundreds of addresses so that a
dump spans several datagrams), asks the kernel for the link, address and route tables and saves
every datagram of each reply exactly as received (hex), beside what iproute2 (`ip -j`) says of
the same tables at the same moment: the tests compare the two. The namespace is deleted at the
end, also on failure. Netlink is in the host's byte order: the file says which.
"""

from __future__ import annotations

import json
import platform
import secrets
import socket
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from portal.core import rtnetlink as rtnl  # noqa: E402

SETUP = [
    "link set lo up",
    "link add v0 type veth peer name v0p",
    "link add v1 type veth peer name v1p",
    "link set v0 up",
    "link set v0p up",
    "link set v1 up",
    "link set v1p up",
    "link add d0 type veth peer name d0p",
    "link set d0 up",
    "link set d0p up",
    "link add br0 type bridge",  # stays down
    "link add wü0 type veth peer name wü0p",  # a name that is not ASCII
    "tuntap add tap0 mode tap",  # no carrier: operstate DOWN while IFF_UP
    "link set tap0 up",
    "addr add 10.10.0.2/24 dev v0",
    "addr add 2001:db8:10::2/64 dev v0 nodad",
    "addr add 10.20.0.2/24 dev v1",
    "addr add 192.0.2.5 peer 192.0.2.6 dev d0",  # point to point: IFA_LOCAL is ours
    "route add default via 10.10.0.1 dev v0 metric 100",
    "-6 route add default via 2001:db8:10::1 dev v0 metric 1024",
    "route add default metric 300 nexthop via 10.20.0.1 dev v1 nexthop via 10.10.0.1 dev v0",
    "route add default via 10.20.0.1 dev v1 table 100",
    "route add default via 10.20.0.1 dev v1 table 1000",  # RTA_TABLE above 255
    "route add blackhole default metric 500",
    "route add 10.30.0.0/16 via 10.20.0.1 dev v1",
    "-4 route add default via inet6 2001:db8:10::1 dev v0 metric 600",  # RTA_VIA (RFC 5549)
]
MANY_ADDRESSES = 100  # on d0: several datagrams of RTM_NEWADDR


def ip(ns: str, command: str, *, check: bool = True) -> str:
    argv = ["ip", "-n", ns, *command.split()]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if check and out.returncode != 0:
        raise RuntimeError(f"ip {command}: {out.stderr}")
    return out.stdout


def dump(kind: int) -> dict[str, object]:
    """Every datagram of the reply to one dump request, in hex, up to and with NLMSG_DONE,
    with the request's sequence number and the socket's port id."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    sock.settimeout(5)
    sock.bind((0, 0))
    seq = secrets.randbits(31)
    sock.send(rtnl.dump_request(kind, seq=seq))
    datagrams = []
    port = sock.getsockname()[0]
    try:
        while True:
            data = sock.recv(1 << 20)
            datagrams.append(data.hex())
            messages, _ = rtnl.split_messages(data)
            if any(m.type in (rtnl.NLMSG_DONE, rtnl.NLMSG_ERROR) for m in messages):
                return {"seq": seq, "port": port, "datagrams": datagrams}
    finally:
        sock.close()


def record(out: Path) -> None:
    ns = f"prec{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", ns], check=True, timeout=30)
    try:
        for command in SETUP:
            ip(ns, command)
        for i in range(MANY_ADDRESSES):
            ip(ns, f"addr add 10.40.{i // 250}.{i % 250 + 1}/32 dev d0")
        # The dumps must be made inside the namespace: by a child started there.
        inside = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, __file__, "--dump"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        data = {
            "recorded_with": f"Linux {platform.release()}, {ip(ns, '-V').strip()}",
            "byteorder": sys.byteorder,
            **json.loads(inside.stdout),
            "ip_link": json.loads(ip(ns, "-j -d link show")),
            "ip_addr": json.loads(ip(ns, "-j addr show")),
            "ip_route4": json.loads(ip(ns, "-j -4 route show table all")),
            "ip_route6": json.loads(ip(ns, "-j -6 route show table all")),
        }
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False, timeout=30)
    out.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__" and sys.argv[1:] == ["--dump"]:
    tables = {"link": rtnl.RTM_GETLINK, "addr": rtnl.RTM_GETADDR, "route": rtnl.RTM_GETROUTE}
    print(json.dumps({name: dump(kind) for name, kind in tables.items()}))
elif __name__ == "__main__":
    record(Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).with_name("namespace.json")))
