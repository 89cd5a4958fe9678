"""Staying signed in, end to end in the lab: real NetworkManager (with its connectivity check
off, as Debian ships it, and on but slow, as NM's own default interval of 300 s is), the hotel
portal taking the network back (on demand, and when the session it granted runs out), the real
daemon noticing by itself within a minute (no `portal check`), and a network that never was
captive, where the daemon does nothing at all while idle.

Prints how long each return took to be noticed (docs/benchmarks.md); bounds only a hang.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.e2e.test_detection import POLICY, Portal
from tests.lab.lab import INTERNET_IP, Lab
from tests.lab.marks import LabFactory, requires_dhclient, requires_lab

pytest_plugins = ["tests.lab.fixtures"]
pytestmark = [pytest.mark.root, pytest.mark.lab]

NOTICE_S = 60.0  # the promise: the portal's return is noticed within a minute
# NetworkManager's own connectivity check: none (the lab's default, as Debian ships NM), on
# every 10 s, and on at NM's default interval of 300 s (slower than the promise)
CHECK_OFF: dict[str, object] = {}
CHECK_ON: dict[str, object] = {"nm_check": True}
CHECK_SLOW: dict[str, object] = {"nm_check": True, "nm_check_interval_s": 300}


def signed_in(lab_factory: LabFactory, **options: object) -> tuple[Portal, dict[str, object]]:
    lab = lab_factory(dns_mode="hijack", bus_policy_files=[POLICY], **options)
    p = Portal(lab)
    p.wait_state("captive")
    lab.login()
    # its own re-probe (with backoff while captive) sees the sign-in: no `portal check`
    s = p.wait_state("online", 40)
    assert s["expiry_watch"] is True and s["expired"] is False, s
    return p, s


@requires_lab
def test_logout_is_noticed_within_a_minute(lab_factory: LabFactory) -> None:
    # NetworkManager checks, but every 300 s as it does by default: it says "full" all along,
    # and the daemon's own re-probe must notice (with no check at all, the session test below)
    nm = CHECK_SLOW
    p, _ = signed_in(lab_factory, **nm)
    started = time.monotonic()
    p.lab.logout()  # the portal takes the network back, now
    s = p.wait_state("captive", NOTICE_S)
    took = time.monotonic() - started
    assert s["expired"] is True and s["portal_url"].startswith("http://login.hotel.test/")
    assert s["network"] == "hotel-wifi"
    print(f"\nlogout noticed in {took:.1f} s (NetworkManager's check: {nm or 'none'})")
    # noticed by the daemon's own re-probe (NetworkManager says nothing new meanwhile)
    assert "for the portal's return" in p.log()


@requires_lab
def test_a_session_running_out_is_noticed_within_a_minute(lab_factory: LabFactory) -> None:
    lab = lab_factory(dns_mode="hijack", bus_policy_files=[POLICY], **CHECK_OFF)
    p = Portal(lab)
    p.wait_state("captive")
    session_s = 10  # ends before the schedule's first re-probe (15 s less 10 %) comes
    lab.login(session_s=session_s)
    ends = time.monotonic() + session_s
    p.wait_state("online", 40)
    s = p.wait_state("captive", session_s + NOTICE_S)
    print(f"\nsession end noticed {time.monotonic() - ends:.1f} s after it ran out")
    assert s["expired"] is True


@requires_dhclient
def test_the_announced_session_end_is_probed_right_after(lab_factory: LabFactory) -> None:
    """With the RFC 8908 API known (DHCP option 114 through dhclient), the re-probe comes just
    after the `seconds-remaining` the portal announced, not on the schedule."""
    lab = lab_factory(
        dns_mode="hijack",
        https=True,
        dhcp_client="dhclient",
        bus_policy_files=[POLICY],
        **CHECK_OFF,
    )
    p = Portal(lab)
    p.wait_state("captive")
    session_s = 8  # under the schedule's first step (15 s less 10 %): only the API can say
    lab.login(session_s=session_s)
    ends = time.monotonic() + session_s
    s = p.wait(lambda s: s["state"] == "online" and s["seconds_remaining"] >= 0, 40)
    assert s is not None, p.log()[-3000:]
    s = p.wait_state("captive", session_s + NOTICE_S)
    late = time.monotonic() - ends
    print(f"\nannounced session end noticed {late:.1f} s after it ran out")
    assert s["expired"] is True


@requires_lab
def test_failing_dns_after_the_portal_came_back_probes_at_once(lab_factory: LabFactory) -> None:
    """A hotel that blocks the user's resolver until sign-in blocks it again when it takes the
    network back: the programs' lookups through the stub fail, and that alone (ahead of the
    schedule) makes the daemon look."""
    lab = lab_factory(
        dns_mode="blocked",
        dns_after_login=True,
        bus_policy_files=[POLICY],
        **CHECK_SLOW,
    )
    p = Portal(lab)
    p.wait_state("captive")
    lab.login()
    p.wait_state("online", 40)
    assert p.dig("www.example.org") == [INTERNET_IP]  # the user's resolver, open now
    lab.logout()
    with ThreadPoolExecutor(6) as pool:  # programs keep looking names up, and get SERVFAIL
        answers = list(pool.map(p.dig, [f"n{i}.example.org" for i in range(6)]))
    assert answers == [[]] * 6
    s = p.wait_state("captive", NOTICE_S)
    assert s["expired"] is True
    log = p.log()
    assert "the DNS stub saw a burst of failing answers" in log
    # the alarm's probe, not the schedule's, found the portal back
    assert log.index("saw a burst") < log.rindex("state captive")


def context_switches(pid: int) -> int:
    """Voluntary and involuntary context switches of every thread of `pid` (each wakeup)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "status").read_text()
        except OSError:
            continue  # a thread that just ended
        for line in text.splitlines():
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                total += int(line.split()[1])
    return total


@requires_lab
def test_a_network_never_captive_costs_no_wakeups(lab_factory: LabFactory) -> None:
    # NetworkManager's check on, every 10 s: its verdicts must not wake the daemon either
    lab = lab_factory(captive=False, bus_policy_files=[POLICY], **CHECK_ON)
    p = Portal(lab)
    s = p.wait_state("online")
    assert s["expiry_watch"] is False and s["expired"] is False
    requests = probes(lab)
    time.sleep(2.0)  # the probe's child process has exited, the last replies are read
    before = context_switches(p.proc.pid)
    time.sleep(6.0)  # no CLI call meanwhile: a status read would wake the daemon
    woke = context_switches(p.proc.pid) - before
    print(f"\nnever captive: {woke} wakeups of the daemon in 6 s")
    assert woke == 0
    # and no probe went out after the first round (NetworkManager's own check may)
    assert probes(lab) == requests >= 1


def probes(lab: Lab) -> int:
    """Requests of portal's probes that reached the hotel (by their User-Agent)."""
    return sum(1 for r in lab.state()["requests"] if r.get("agent", "").startswith("portal"))
