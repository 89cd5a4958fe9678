"""core/expiry.py: the re-probe schedule of a network that was captive, and the DNS alarm."""

from __future__ import annotations

import dns.message
import dns.rcode
import dns.rrset
import pytest

from portal.core.expiry import (
    BAD_IN_WINDOW,
    JITTER,
    QUIET_GAP_S,
    SESSION_END_SLACK_S,
    WATCH_INTERVALS_S,
    AnswerWatch,
    jitter_factor,
    packed_addresses,
    watch_delay_s,
)

KEYS = [f"uuid-{i}" for i in range(200)]


@pytest.mark.parametrize("round_", range(8))
def test_every_delay_stays_under_fifty_seconds_and_near_its_step(round_: int) -> None:
    base = WATCH_INTERVALS_S[min(round_, len(WATCH_INTERVALS_S) - 1)]
    delays = [watch_delay_s(round_, key=key) for key in KEYS]
    assert all(base * (1 - JITTER) <= d <= base * (1 + JITTER) for d in delays)
    assert max(delays) < 50.0
    # jitter: laptops on the same schedule do not probe in step
    assert len({round(d, 3) for d in delays}) > 150


def test_the_schedule_backs_off_and_is_fixed_per_network() -> None:
    steps = [watch_delay_s(r, key="uuid-hotel") for r in range(5)]
    assert steps[0] < steps[1] < steps[2]
    assert steps == [watch_delay_s(r, key="uuid-hotel") for r in range(5)]
    assert jitter_factor("a", 1) != jitter_factor("b", 1)


@pytest.mark.parametrize(
    ("left", "expected"),
    [
        (5.0, 5.0 + SESSION_END_SLACK_S),  # the announced session ends first
        (0.0, SESSION_END_SLACK_S),
        (-1.0, None),  # unknown: the schedule
        (None, None),
        (3600.0, None),  # ends long after the next scheduled probe
    ],
)
def test_the_announced_session_end_comes_first(left: float | None, expected: float | None) -> None:
    got = watch_delay_s(0, key="k", seconds_left=left)
    assert got == (expected if expected is not None else watch_delay_s(0, key="k"))


def answer(name: str, rdtype: str = "A", *records: str, rcode: int = dns.rcode.NOERROR) -> bytes:
    query = dns.message.make_query(name, rdtype)
    reply = dns.message.make_response(query)
    reply.set_rcode(rcode)
    if records:
        reply.answer.append(dns.rrset.from_text(name, 30, "IN", rdtype, *records))
    return reply.to_wire()


def question_len(name: str, rdtype: str = "A") -> int:
    return len(dns.message.make_query(name, rdtype).to_wire()) - 12


GOOD = answer("example.org.", "A", "93.184.216.34")
SERVFAIL = answer("example.org.", "A", rcode=dns.rcode.SERVFAIL)
REFUSED = answer("example.org.", "A", rcode=dns.rcode.REFUSED)
HIJACKED = answer("example.org.", "A", "10.77.0.1")
HIJACKED6 = answer("example.org.", "AAAA", "fd77::1")


@pytest.mark.parametrize(
    ("reply", "kind"),
    [
        (GOOD, ""),
        (SERVFAIL, "failing"),
        (REFUSED, "failing"),
        (None, "failing"),  # no upstream answered: the client got SERVFAIL
        (b"\x00\x01", "failing"),
        (HIJACKED, "hijacked"),
        (HIJACKED6, "hijacked"),
        (answer("example.org.", "A"), ""),  # NODATA
        (answer("example.org.", rcode=dns.rcode.NXDOMAIN), ""),  # a real "no such name"
    ],
)
def test_classify(reply: bytes | None, kind: str) -> None:
    watch = AnswerWatch(["10.77.0.1", "fd77::1", "not an address"])
    assert watch.classify(reply, question_len("example.org.")) == kind


def test_a_name_that_spells_the_address_is_not_hijacked() -> None:
    # the question's bytes hold 10.77.0.1 (0a 4d 00 01): only the records count
    name = r"\010M\000\001.example.org."
    reply = answer(name, "A", "93.184.216.34")
    assert bytes([10, 77, 0, 1]) in reply
    watch = AnswerWatch(["10.77.0.1"])
    assert watch.classify(reply) == "hijacked"  # without skipping the question
    assert watch.classify(reply, question_len(name)) == ""


def test_without_portal_addresses_only_failures_count() -> None:
    assert AnswerWatch().classify(HIJACKED) == ""
    assert packed_addresses(["10.77.0.1", "10.77.0.1", "fe80::1%wlan0", "x"]) == (
        bytes([10, 77, 0, 1]),
        bytes.fromhex("fe800000000000000000000000000001"),
    )


def test_a_burst_fires_once() -> None:
    watch = AnswerWatch(["10.77.0.1"])
    now = 100.0
    fired = []
    for reply in [GOOD, SERVFAIL, GOOD, None, HIJACKED, SERVFAIL, SERVFAIL, SERVFAIL, None]:
        now += 0.5
        fired.append(watch.note(reply, now))
    # the fourth bad answer among the last eight fires; nothing after that
    assert fired == [False, False, False, False, False, True, False, False, False]
    assert watch.reason == "failing"


def test_good_answers_in_between_keep_it_quiet() -> None:
    watch = AnswerWatch(["10.77.0.1"])
    now = 0.0
    for i in range(200):
        now += 1.0
        assert not watch.note(SERVFAIL if i % 3 == 0 else GOOD, now)


def test_failures_far_apart_are_no_burst() -> None:
    watch = AnswerWatch()
    now = 0.0
    for _ in range(20):
        now += QUIET_GAP_S + 1
        assert not watch.note(None, now)


def test_hijacked_burst_says_so() -> None:
    watch = AnswerWatch(["10.77.0.1"])
    results = [watch.note(HIJACKED, 10.0 + i) for i in range(BAD_IN_WINDOW)]
    assert results == [False] * (BAD_IN_WINDOW - 1) + [True]
    assert watch.reason == "hijacked"
