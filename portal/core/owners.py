"""Who made a local interface (Docker, libvirt, Podman, ...), by its name, and the usual fix
when its addresses clash with a venue's. Read by the path report (core/paths.py) and the
status notes (core/notes.py), which must not import the route logic to print a line.

Pure: names in, text out.
"""

from __future__ import annotations

# Who makes local bridges, by interface name: (name prefix, owner, the usual fix)
LOCAL_OWNERS: tuple[tuple[str, str, str], ...] = (
    (
        "docker",
        "Docker",
        'give Docker address ranges the venue does not use ("bip" and '
        '"default-address-pools" in /etc/docker/daemon.json), or remove unused networks '
        "(docker network prune)",
    ),
    (
        "br-",
        "Docker",
        "remove unused Docker networks (docker network prune), or give Docker address ranges "
        'the venue does not use ("default-address-pools" in /etc/docker/daemon.json)',
    ),
    ("virbr", "libvirt", "move libvirt's network elsewhere (virsh net-edit default)"),
    (
        "podman",
        "Podman",
        'move Podman\'s network elsewhere ("default_subnet" in containers.conf, or '
        "podman network rm)",
    ),
    ("cni", "CNI", "move the container network's subnet elsewhere (its CNI configuration)"),
    ("lxcbr", "LXC", "move LXC's bridge elsewhere (LXC_ADDR/LXC_NETWORK in lxc-net)"),
    ("lxdbr", "LXD", "move LXD's bridge elsewhere (lxc network set lxdbr0 ipv4.address)"),
    ("vboxnet", "VirtualBox", "move the host-only network elsewhere (VirtualBox's settings)"),
)


def owner_of(interface: str) -> tuple[str, str]:
    """(who made a local interface, the usual fix) by its name; ("", "") when unknown."""
    for prefix, owner, fix in LOCAL_OWNERS:
        if interface.startswith(prefix):
            return owner, fix
    return "", ""
