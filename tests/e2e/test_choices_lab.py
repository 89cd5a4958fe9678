""" "Don't ask again" end to end in the lab: the real CLI as a user types it, the real daemon
remembering the network across a restart, and undoing it by name."""

from __future__ import annotations

import pytest

from tests.e2e.test_detection import CONNECTION, POLICY, Portal
from tests.lab.marks import LabFactory, requires_lab

pytest_plugins = ["tests.lab.fixtures"]
pytestmark = [pytest.mark.root, pytest.mark.lab, requires_lab]


def test_dont_ask_again_survives_a_restart(lab_factory: LabFactory) -> None:
    lab = lab_factory(dns_mode="hijack", bus_policy_files=[POLICY])
    p = Portal(lab)
    p.wait_state("captive")
    said = p.cli("dont-ask")
    assert said.returncode == 0, said.stderr
    assert f"will not ask you to sign in on {CONNECTION} again" in said.stdout
    s = p.status()
    assert s is not None and s["quiet"] is True and s["quiet_networks"] == [CONNECTION]
    text = p.cli("status").stdout
    assert f"don't ask:  {CONNECTION}" in text and "asking:" in text

    assert p.proc.stop() == 0
    p = Portal(lab)  # the same state directory
    s = p.wait_state("captive")
    assert s["quiet"] is True and s["quiet_networks"] == [CONNECTION]

    both = p.cli("ask-again", CONNECTION, "--all")
    assert both.returncode == 2 and both.stderr.startswith("portal: error:")
    again = p.cli("ask-again", CONNECTION)
    assert again.returncode == 0, again.stderr
    assert f"asks you to sign in again on {CONNECTION}" in again.stdout
    s = p.status()
    assert s is not None and s["quiet"] is False and s["quiet_networks"] == []
    twice = p.cli("ask-again")
    assert twice.returncode == 1 and len(twice.stderr.strip().splitlines()) == 1, twice.stderr
