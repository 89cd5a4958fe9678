"""A connection with a random MAC address of its own, end to end in the lab: NetworkManager
clones a random MAC onto the laptop's link at each activation (the profile's
`ethernet.cloned-mac-address=random`, a real change of the veth's address), and the daemon's
status says that this is why the portal asks again and how to keep one MAC on this network
only; the command it names, run as it is, makes the note go away.
"""

from __future__ import annotations

import json
import shlex
import subprocess

import pytest

from tests.e2e.test_detection import CONNECTION, POLICY, Portal
from tests.lab.lab import LAPTOP_IF, Lab
from tests.lab.marks import LabFactory, requires_lab

pytest_plugins = ["tests.lab.fixtures"]
pytestmark = [pytest.mark.root, pytest.mark.lab]

COMMAND = f"nmcli connection modify {CONNECTION} ethernet.cloned-mac-address stable"


def link_mac(lab: Lab) -> str:
    out = subprocess.run(
        ["ip", "-n", lab.laptop_ns, "-j", "link", "show", LAPTOP_IF],
        capture_output=True,
        text=True,
        check=True,
    )
    return str(json.loads(out.stdout)[0]["address"])


def reconnect(p: Portal) -> None:
    p.lab.nmcli("connection", "down", CONNECTION)
    p.wait(lambda s: s["network"] == "", 15)
    p.lab.nmcli("connection", "up", CONNECTION)


@requires_lab
def test_a_random_mac_is_explained_and_the_fix_works(lab_factory: LabFactory) -> None:
    lab = lab_factory(cloned_mac="random", bus_policy_files=[POLICY])
    p = Portal(lab)
    s = p.wait_state("captive")
    assert s["random_mac"] is True and s["stable_mac_command"] == COMMAND, s
    text = p.cli("status").stdout
    assert "MAC:" in text and "asks again every time" in text and COMMAND in text, text
    # the lab's MAC really is new at each connection
    first = link_mac(lab)
    reconnect(p)
    s = p.wait(lambda s: s["network"] == CONNECTION and s["state"] == "captive", 20)
    assert s is not None and s["random_mac"] is True
    assert link_mac(lab) != first
    # the fix, as status words it; it takes effect at the next connection
    lab.nmcli(*shlex.split(COMMAND)[1:])
    reconnect(p)
    s = p.wait(lambda s: s["network"] == CONNECTION and s["state"] == "captive", 20)
    assert s is not None and s["random_mac"] is False and s["stable_mac_command"] == "", s
    stable = link_mac(lab)
    reconnect(p)
    assert p.wait(lambda s: s["network"] == CONNECTION, 20) is not None
    assert link_mac(lab) == stable
    assert "MAC:" not in p.cli("status").stdout


@requires_lab
def test_the_profiles_own_mac_says_nothing(lab_factory: LabFactory) -> None:
    lab = lab_factory(bus_policy_files=[POLICY])
    p = Portal(lab)
    s = p.wait_state("captive")
    assert s["random_mac"] is False and s["stable_mac_command"] == "", s
