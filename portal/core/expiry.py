"""Noticing that a portal took the network back: when to re-probe, and the stub's DNS alarm.

    watch_delay_s(round_, *, key, seconds_left)   the next re-probe of a network once captive
    AnswerWatch(portal_addresses, now=...)        counts the stub's failing or hijacked answers

A portal lets a client out for a while (an hour, a day, a data cap), then takes the network back:
every page then stops loading, and nothing on the machine says why (NetworkManager re-checks
only where a check URI is configured, and Debian ships none by default). So on a network that
was captive in this connection, and only there, portal re-probes while online:

- on a schedule that notices within a minute: 15 s after the sign-in, then 30 s, then every
  45 s, each stretched or shrunk by up to 10 % (jitter, so that laptops signed in at the same
  moment do not probe in step); at most 49.5 s between probes, so with a probe's own few
  seconds the portal's return is seen within 60 s;
- sooner when something known says so: the end of the session the portal announced (RFC 8908
  `seconds-remaining`; probed just after it runs out), a resume from suspend (a re-probe of its
  own), or a burst of failing or hijacked answers that the DNS stub saw (`AnswerWatch`).

Networks that were never captive get no periodic work at all.

`AnswerWatch` runs in the DNS thread, on answers the stub forwarded to the user's resolvers (not
the portal's own names, which the venue's DNS answers). It is cheap on purpose: the rcode byte,
and a byte search of the answer for the portal's packed addresses. It keeps the last
`WINDOW` answers as bits and fires once, when at least `BAD_IN_WINDOW` of them were bad and the
latest one was; answers further apart than `QUIET_GAP_S` start a new window (a few failures
spread over an hour are no portal). After firing it stays quiet: the daemon arms a new one.

Pure: no clock (times come in), no randomness (the jitter is a hash of the network and the
round), no I/O.
"""

from __future__ import annotations

import ipaddress
import zlib
from collections.abc import Iterable

# Re-probe schedule while online on a network that was captive (seconds; the last repeats).
WATCH_INTERVALS_S = (15.0, 30.0, 45.0)
JITTER = 0.10  # ± this fraction of each interval
# Probe this long after the session the portal announced should have ended: its clock and ours
# differ by a little, and a probe a moment early only sees the old session.
SESSION_END_SLACK_S = 2.0
# Never sooner than this (a session announced as ending in 0 s, a clock that jumped).
MIN_DELAY_S = 1.0
# After the DNS alarm fired and the probe found the network online anyway, the alarm is muted
# this long on that network: its resolver fails or answers like the portal for other reasons.
FALSE_ALARM_MUTE_S = 300.0

# AnswerWatch
WINDOW = 8
BAD_IN_WINDOW = 4
QUIET_GAP_S = 30.0

RCODE_SERVFAIL = 2
RCODE_REFUSED = 5
_HEADER_LEN = 12


def jitter_factor(key: str, round_: int) -> float:
    """A factor in [1 - JITTER, 1 + JITTER], fixed for (key, round_), spread across keys."""
    digest = zlib.crc32(f"{key}/{round_}".encode())
    return 1.0 - JITTER + 2.0 * JITTER * (digest / 0xFFFFFFFF)


def watch_delay_s(round_: int, *, key: str, seconds_left: float | None = None) -> float:
    """Seconds until re-probe number `round_` (0 for the first after going online).

    `key` makes the jitter (the network's id); `seconds_left` is what remains of the session the
    portal announced (RFC 8908), None when it said nothing: the probe then comes just after the
    session ends, when that is sooner than the schedule.
    """
    base = WATCH_INTERVALS_S[min(max(round_, 0), len(WATCH_INTERVALS_S) - 1)]
    delay = base * jitter_factor(key, round_)
    if seconds_left is not None and seconds_left >= 0:
        delay = min(delay, seconds_left + SESSION_END_SLACK_S)
    return max(delay, MIN_DELAY_S)


def packed_addresses(addresses: Iterable[str]) -> tuple[bytes, ...]:
    """The addresses as they appear in A/AAAA record data (4 or 16 bytes); bad ones skipped."""
    out: list[bytes] = []
    for text in addresses:
        try:
            packed = ipaddress.ip_address(text.partition("%")[0]).packed
        except ValueError:
            continue
        if packed not in out:
            out.append(packed)
    return tuple(out)


class AnswerWatch:
    """Counts the stub's bad answers; `note()` is True once, when they come in a burst.

    Made by the asyncio loop and handed to the DNS thread whole; after that only the DNS
    thread calls `note()` (its counters are that thread's alone).
    """

    __slots__ = ("portal", "bits", "last_at", "fired", "reason")

    def __init__(self, portal_addresses: Iterable[str] = ()) -> None:
        self.portal = packed_addresses(portal_addresses)
        self.bits = 0  # the last WINDOW answers, newest in bit 0; 1 = bad
        self.last_at = 0.0
        self.fired = False
        self.reason = ""  # what the burst was: "failing" or "hijacked"

    def classify(self, answer: bytes | None, question_len: int = 0) -> str:
        """The kind of one forwarded answer: "failing", "hijacked" or "" (good). `answer` None:
        no upstream answered in time, the client got SERVFAIL. `question_len`: the length of
        the question section, skipped (a name's bytes are not an address)."""
        if answer is None or len(answer) < _HEADER_LEN:
            return "failing"
        rcode = answer[3] & 0xF
        if rcode in (RCODE_SERVFAIL, RCODE_REFUSED):
            return "failing"
        if self.portal and answer[7] | answer[6]:  # ANCOUNT > 0
            # A byte search of the records rather than a parse: the address of a record that
            # is not A/AAAA would need four (sixteen) matching bytes by chance.
            body = answer[_HEADER_LEN + question_len :]
            for packed in self.portal:
                if packed in body:
                    return "hijacked"
        return ""

    def note(self, answer: bytes | None, now: float, question_len: int = 0) -> bool:
        """Count one answer; True exactly once, when the burst is there."""
        if self.fired:
            return False
        kind = self.classify(answer, question_len)
        if now - self.last_at > QUIET_GAP_S:
            self.bits = 0
        self.last_at = now
        self.bits = ((self.bits << 1) | (1 if kind else 0)) & ((1 << WINDOW) - 1)
        if kind and self.bits.bit_count() >= BAD_IN_WINDOW:
            self.fired = True
            self.reason = kind
            return True
        return False
