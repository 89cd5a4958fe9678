"""The per-network portal state machine: `step(session, event, now) -> (session, actions)`.

    unknown ──network──▶ probing ──probe──▶ captive ⇄ limited ──▶ online
                                  └──────▶ online / offline

Events in: NetworkChanged (appeared, changed, gone), ConnectivityReported (NM's own verdict),
ProbeFinished, CheckRequested, Resumed; any other event leaves the session as it is. Actions
out: see core/actions.py.

Rules worth knowing:
- portal's own probe decides; NetworkManager's word only prompts it. Where NM runs no
  connectivity check of its own (no check URI: Debian's default, minimal installs, privacy),
  it reports FULL on any network, captive or not, within milliseconds of connecting: such a
  report is ignored. Where NM does check, PORTAL or LIMITED start a probe now, and a FULL that
  contradicts portal's own verdict is settled by probing again, never by taking the first word:
  a captive verdict stands against NM's FULL (the portal may let NM's check host through), a
  probe that got no answer at all gives way to it (NM reached the internet; portal saw no
  portal).
- A failed probe round (the probe process could not start, crashed, hung, answered garbage) is
  a round with no answer: limited, re-probed with backoff, and its reason is published.
- After a restart the daemon assumes the network it was last on (`restore`), so overrides
  scoped to it answer from the first query; the first report of the network watcher replaces
  that assumption (and probes, even when it names the same network).
- One probe at a time. Every StartProbe carries a new `probe_id`; a ProbeFinished for another
  network or an older probe is ignored, so a slow probe can never overwrite a newer answer.
- While captive or limited, re-probe with backoff: 1 s, doubling, capped at 60 s. Offline
  schedules nothing, and neither does online on a network that was never captive: no periodic
  work there (NM's own check, a link change, a resume or `portal check` start the next probe).
- Online on a network that was captive in this connection: re-probe on core/expiry.py's
  schedule (under 50 s apart, sooner when the portal's announced session ends) and keep the
  stub's DNS alarm armed (WatchDns); its DnsTroubleSeen re-probes at once. A captive verdict
  after that is the portal taking the network back: `expired` until online again. An alarm
  that the probe contradicts mutes the alarm on that network for a while.
- A captive verdict pins the portal's names (overrides scoped to the network, source "auto")
  and routes them to the venue's DNS; going online or leaving the network undoes both.
- RFC 8910's `urn:ietf:params:capport:unrestricted` as the network's API URI means no portal:
  the session goes online without probing.

Pure: time comes in as `now` (monotonic seconds). No I/O, no logging, no asyncio.

The daemon feeds every event to `step()` and carries out the actions it returns
(core/actions.py says what each one asks for); ProbeFinished lives in core/probe_model.py.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from portal.core import expiry
from portal.core.actions import (
    Action,
    AskNMToRecheck,
    CancelProbe,
    PinPortalHosts,
    PublishStatus,
    RouteToVenue,
    StartProbe,
    StopRouting,
    StopWatchingDns,
    UnpinPortalHosts,
    WatchDns,
)
from portal.core.detect import (
    KNOWN_PUBLIC_PROBE_HOSTS,
    api_uri_to_fetch,
    classify_all,
    is_unrestricted,
    routing_names,
)
from portal.core.events import (
    CheckRequested,
    ConnectivityReported,
    DnsTroubleSeen,
    NetworkChanged,
    Resumed,
)
from portal.core.model import Connectivity, Network, PortalStatus
from portal.core.probe_model import ProbeFinished

BACKOFF_START_S = 1.0
BACKOFF_CAP_S = 60.0
# A probe round ends within its timeout (seconds); one started longer ago than this lost its
# answer somewhere (a crashed task) and must not hold back the next one.
PROBE_RUN_LIMIT_S = 30.0

Event = (
    NetworkChanged
    | ConnectivityReported
    | ProbeFinished
    | CheckRequested
    | Resumed
    | DnsTroubleSeen
)

_NOT_ONLINE = (Connectivity.CAPTIVE, Connectivity.LIMITED)


@dataclass(frozen=True, slots=True)
class Session:
    """Everything the state machine knows about the current network."""

    network: Network | None = None
    state: Connectivity = Connectivity.UNKNOWN
    portal_url: str = ""
    portal_hosts: tuple[str, ...] = ()
    seconds_remaining: int = -1
    probe_id: int = 0  # id of the latest probe asked for
    probe_due: float | None = None  # when that probe starts (monotonic); None: none outstanding
    retries: int = 0  # re-probes in a row while captive or limited (the backoff exponent)
    pinned: tuple[str, ...] = ()  # names pinned on this network
    routed: tuple[str, ...] = ()  # names currently routed to the venue's DNS
    nm: Connectivity = Connectivity.UNKNOWN  # NetworkManager's last report (checked ones only)
    nm_checks: bool = True  # NetworkManager runs a connectivity check of its own
    # a portal episode: from a captive verdict until the network is online or gone (the
    # resolver wiring and the agent's notification follow it)
    episode: bool = False
    assumed: bool = False  # `network` is the one before a restart, not reported in this run
    probe_error: str = ""  # why the last probe round failed as a whole, "" when it ran
    # -- expiry (core/expiry.py): all of it is about this connection to the network
    was_captive: bool = False  # a captive verdict came
    signed_in: bool = False  # online after that
    expired: bool = False  # captive again after being signed in: the portal took it back
    watch_round: int = 0  # re-probes since the network went online (the schedule's step)
    portal_addresses: tuple[str, ...] = ()  # where the venue's DNS pointed hijacked names
    dns_watch: bool = False  # the stub's DNS alarm is armed
    alarm_probe: int = 0  # probe_id of the probe the DNS alarm started
    alarm_muted_until: float = 0.0  # after a false alarm (monotonic)


def restore(network: Network | None, pinned: tuple[str, ...] = ()) -> Session:
    """The session a restarted daemon starts with: the network it was last on, assumed until
    the network watcher reports (overrides scoped to it keep answering meanwhile), with the
    names pinned on it before the restart (so that they are unpinned once it is online)."""
    if network is None:
        return Session()
    return Session(network=network, pinned=pinned, assumed=True)


def status(session: Session) -> PortalStatus:
    """The status to publish for `session`."""
    return PortalStatus(
        network=session.network,
        state=session.state,
        portal_url=session.portal_url,
        seconds_remaining=session.seconds_remaining,
        portal_hosts=session.portal_hosts,
        probe_error=session.probe_error,
        expired=session.expired,
        expiry_watch=session.state is Connectivity.ONLINE and session.was_captive,
    )


def backoff_s(retries: int) -> float:
    """Delay before re-probe number `retries` + 1 while captive or limited."""
    return min(BACKOFF_START_S * (1 << min(retries, 16)), BACKOFF_CAP_S)


def step(session: Session, event: object, now: float) -> tuple[Session, tuple[Action, ...]]:
    """Advance the session by one event; return the new session and what to do."""
    actions: list[Action] = []
    new = _step(session, event, now, actions)
    new = _expiry(session, new, event, now, actions)
    if status(new) != status(session):
        actions.append(PublishStatus(status(new)))
    return new, tuple(actions)


def _step(s: Session, event: object, now: float, out: list[Action]) -> Session:
    match event:
        case NetworkChanged(network=None):
            if s.network is not None:
                s = _clear_portal(s, out)
            return Session(
                state=Connectivity.OFFLINE, probe_id=s.probe_id, nm=s.nm, nm_checks=s.nm_checks
            )
        case NetworkChanged(network=Network() as network):
            return _network(s, network, now, out)
        case ConnectivityReported(connectivity=connectivity, checked=False):
            # NetworkManager runs no check: its FULL is said of every network, captive or not.
            return replace(s, nm=Connectivity.UNKNOWN, nm_checks=False)
        case ConnectivityReported(connectivity=connectivity):
            return _reported(replace(s, nm=connectivity, nm_checks=True), now, out)
        case CheckRequested() | Resumed():
            if s.network is None:
                return s
            state = s.state
            if isinstance(event, Resumed) or state in (Connectivity.UNKNOWN, Connectivity.OFFLINE):
                # After a suspend the old answer is stale; say so until the probe answers.
                state = Connectivity.PROBING
            return _probe(replace(s, state=state, retries=0), now, 0.0, out)
        case ProbeFinished():
            return _finished(s, event, now, out)
        case DnsTroubleSeen():
            return _dns_alarm(s, now, out)
    return s


def _network(s: Session, network: Network, now: float, out: list[Action]) -> Session:
    if s.assumed and s.network is not None and s.network.id == network.id:
        # The watcher's first word after a restart names the network we assumed: what was
        # pinned on it stays pinned until a verdict says otherwise, but nothing else is known.
        fresh = Session(
            network=network, probe_id=s.probe_id, nm=s.nm, nm_checks=s.nm_checks, pinned=s.pinned
        )
        return _probe(replace(fresh, state=Connectivity.PROBING), now, 0.0, out)
    if s.network is not None and s.network.id == network.id:
        if not _probe_relevant(s.network, network):
            return replace(s, network=network)  # e.g. only the name changed
        s = replace(s, network=network, retries=0)
        if s.routed and network.venue_dns:
            out.append(RouteToVenue(s.routed, network.venue_dns))
        elif s.routed:
            # The venue's DNS servers went away: routing the portal's names nowhere would only
            # make them fail; the next captive verdict routes them again.
            out.append(StopRouting())
            s = replace(s, routed=())
        return _probe(s, now, 0.0, out)
    if s.network is not None:
        s = _clear_portal(s, out)
    fresh = Session(network=network, probe_id=s.probe_id, nm=s.nm, nm_checks=s.nm_checks)
    if is_unrestricted(network.api_uri):
        # RFC 8910 §2: the network says there is no portal; clients may skip probing.
        return replace(fresh, state=Connectivity.ONLINE)
    return _probe(replace(fresh, state=Connectivity.PROBING), now, 0.0, out)


def _probe_relevant(old: Network, new: Network) -> bool:
    """Did something change that can change the probe's answer?"""
    return (old.interface, old.addresses, old.venue_dns, old.api_uri, old.check_uri) != (
        new.interface,
        new.addresses,
        new.venue_dns,
        new.api_uri,
        new.check_uri,
    )


def _reported(s: Session, now: float, out: list[Action]) -> Session:
    if s.network is None:
        return s
    if s.nm in _NOT_ONLINE:
        if s.probe_due is not None and s.probe_due <= now < s.probe_due + PROBE_RUN_LIMIT_S:
            return s  # a probe is running; its answer is as fresh as a new one would be
        return _probe(replace(s, retries=0), now, 0.0, out)
    if s.nm is Connectivity.ONLINE and s.state is not Connectivity.ONLINE:
        # NM's own check got through (after a sign-in, typically), which contradicts portal's
        # own verdict: probe again now, and let that answer decide (see _finished).
        if s.probe_due is not None and s.probe_due <= now < s.probe_due + PROBE_RUN_LIMIT_S:
            return s  # a probe is running: its answer is as fresh as a new one would be
        return _probe(replace(s, retries=0), now, 0.0, out)
    return s


def _finished(s: Session, event: ProbeFinished, now: float, out: list[Action]) -> Session:
    network = s.network
    if (
        network is None
        or event.network_id != network.id
        or event.probe_id != s.probe_id
        or s.probe_due is None
    ):
        return s  # for a network we left or a probe superseded since: ignored
    api_uri = event.api_uri or api_uri_to_fetch(network.api_uri)
    verdict = classify_all(event.results, api=event.api, api_uri=api_uri)
    s = replace(s, probe_due=None, probe_error=event.error)
    if (
        verdict.connectivity is Connectivity.LIMITED
        and s.nm is Connectivity.ONLINE
        and s.nm_checks
        and not event.error
    ):
        # No answer at all here, but NetworkManager's own check got through: it reached the
        # internet and portal saw no portal. (A failed round is no evidence either way.)
        return _online(s, verdict.seconds_remaining, out)
    match verdict.connectivity:
        case Connectivity.CAPTIVE:
            s = replace(
                s,
                state=Connectivity.CAPTIVE,
                portal_url=verdict.portal_url,
                portal_hosts=verdict.portal_hosts,
                seconds_remaining=verdict.seconds_remaining,
                episode=True,
            )
            new_hosts = tuple(h for h in verdict.portal_hosts if h not in s.pinned)
            if new_hosts:
                out.append(PinPortalHosts(network.id, new_hosts))
                s = replace(s, pinned=s.pinned + new_hosts)
            names = routing_names(s.pinned)
            if names and network.venue_dns and names != s.routed:
                out.append(RouteToVenue(names, network.venue_dns))
                s = replace(s, routed=names)
            return _retry(s, now, out)
        case Connectivity.LIMITED:
            # Keep the sign-in URL and pins from an earlier captive verdict: a portal that
            # stops answering for a moment is still the same portal.
            s = replace(s, state=Connectivity.LIMITED, seconds_remaining=verdict.seconds_remaining)
            return _retry(s, now, out)
        case Connectivity.ONLINE:
            # Only a NetworkManager that checks, and does not say so already, is asked to see
            # it too.
            ask_nm = (
                s.nm_checks
                and s.nm is not Connectivity.ONLINE
                and (s.state in _NOT_ONLINE or s.nm in _NOT_ONLINE)
            )
            s = _online(s, verdict.seconds_remaining, out)
            if ask_nm:
                # NM rechecks a portal only every few seconds (then every `interval`): ask now
                # so desktops stop showing "sign in" as soon as we know.
                out.append(AskNMToRecheck())
            return s
    # OFFLINE (this machine cannot send) or UNKNOWN (nothing to probe): wait for an event.
    return replace(s, state=verdict.connectivity, retries=0)


def _probe(s: Session, now: float, delay_s: float, out: list[Action]) -> Session:
    assert s.network is not None
    probe_id = s.probe_id + 1
    out.append(StartProbe(s.network, delay_s, probe_id))
    return replace(s, probe_id=probe_id, probe_due=now + delay_s)


def _retry(s: Session, now: float, out: list[Action]) -> Session:
    delay = backoff_s(s.retries)
    return _probe(replace(s, retries=s.retries + 1), now, delay, out)


def _online(s: Session, seconds_remaining: int, out: list[Action]) -> Session:
    s = _clear_portal(s, out)
    return replace(
        s,
        state=Connectivity.ONLINE,
        portal_url="",
        portal_hosts=(),
        seconds_remaining=seconds_remaining,
        retries=0,
    )


def _clear_portal(s: Session, out: list[Action]) -> Session:
    """Cancel probing and undo pins and routing (the portal cleared or the network went)."""
    if s.probe_due is not None:
        out.append(CancelProbe())
        # A new id so that the cancelled probe's answer, should it still come, is ignored.
        s = replace(s, probe_id=s.probe_id + 1, probe_due=None)
    if s.routed:
        out.append(StopRouting())
    if s.pinned and s.network is not None:
        out.append(UnpinPortalHosts(s.network.id))
    return replace(s, routed=(), pinned=(), episode=False)


# --- expiry: noticing that the portal took the network back (core/expiry.py) -------------------
#
# One pass after every step, so that it holds whichever way the state was reached (a probe, NM's
# word, a resume): online on a network that was captive in this connection, with no probe
# outstanding, means the next re-probe is scheduled and the stub's DNS alarm armed; anywhere
# else the alarm is off.


def _expiry(before: Session, s: Session, event: object, now: float, out: list[Action]) -> Session:
    if s.network is None:
        return _alarm_off(before, s, event, out)
    if s.state is Connectivity.CAPTIVE and isinstance(event, ProbeFinished):
        s = _captive_seen(s, event)
    elif s.state is Connectivity.ONLINE and s.was_captive:
        first = not s.signed_in
        s = replace(s, signed_in=True, expired=False, watch_round=0 if first else s.watch_round)
        if (
            isinstance(event, ProbeFinished)
            and event.probe_id == before.probe_id == s.alarm_probe
            and before.probe_due is not None
        ):
            # The alarm's probe found the network online: this resolver fails, or answers
            # like the portal, for reasons of its own. The schedule goes on; the alarm rests.
            s = replace(s, alarm_probe=0, alarm_muted_until=now + expiry.FALSE_ALARM_MUTE_S)
        if s.probe_due is None:
            s = _schedule_watch(s, now, out)
    return _alarm_off(before, s, event, out)


def _captive_seen(s: Session, event: ProbeFinished) -> Session:
    """Captive: remember it for this connection (and whether it follows a sign-in), and where
    the venue's DNS pointed well-known probe hosts (a hijacking portal's address, which the
    stub's alarm looks for)."""
    hijacked = [
        address
        for spec, response in event.results
        if _host(spec.url) in KNOWN_PUBLIC_PROBE_HOSTS
        for address in response.addresses
    ]
    return replace(
        s,
        was_captive=True,
        expired=s.expired or s.signed_in,
        signed_in=False,
        portal_addresses=tuple(dict.fromkeys((*s.portal_addresses, *hijacked))),
    )


def _host(url: str) -> str:
    rest = url.partition("://")[2]
    return rest.split("/", 1)[0].rsplit("@", 1)[-1].split(":", 1)[0].lower()


def _schedule_watch(s: Session, now: float, out: list[Action]) -> Session:
    """The next re-probe on the expiry schedule, and the DNS alarm armed afresh (unless it
    rests after a false alarm)."""
    assert s.network is not None
    left = float(s.seconds_remaining) if s.seconds_remaining >= 0 else None
    delay = expiry.watch_delay_s(s.watch_round, key=s.network.id, seconds_left=left)
    s = _probe(replace(s, watch_round=s.watch_round + 1), now, delay, out)
    if now >= s.alarm_muted_until:
        out.append(WatchDns(s.portal_addresses))
        s = replace(s, dns_watch=True)
    return s


def _alarm_off(before: Session, s: Session, event: object, out: list[Action]) -> Session:
    """The alarm is armed only while online on the network it was armed for."""
    if s.dns_watch and s.state is not Connectivity.ONLINE:
        out.append(StopWatchingDns())
        return replace(s, dns_watch=False)
    if before.dns_watch and not s.dns_watch and not isinstance(event, DnsTroubleSeen):
        out.append(StopWatchingDns())  # a fresh session: the network changed or went away
    return s


def _dns_alarm(s: Session, now: float, out: list[Action]) -> Session:
    """The stub saw a burst of failing or hijacked answers: probe now, if we were watching."""
    if (
        s.network is None
        or not s.dns_watch
        or s.state is not Connectivity.ONLINE
        or now < s.alarm_muted_until
    ):
        return s
    # the stub disarmed itself when it fired
    s = _probe(replace(s, dns_watch=False), now, 0.0, out)
    return replace(s, alarm_probe=s.probe_id)
