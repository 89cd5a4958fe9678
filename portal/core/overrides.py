"""The override table: validation, normalisation, scoping, expiry and limits.

Pure: every function that depends on time takes `now` (wall-clock seconds). Persistence lives in
edges/store.py; this module only turns the table into text and back (`format_state`,
`parse_state`).
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

from portal.core.model import Override, Source
from portal.core.timefmt import format_duration as format_duration  # re-exported
from portal.errors import (
    InvalidAddress,
    InvalidDomain,
    InvalidTTL,
    NoSuchOverride,
    StateError,
    TooManyOverrides,
)

DEFAULT_TTL_S = 12 * 3600
MAX_TTL_S = 366 * 86400
MAX_OVERRIDES = 1024
MAX_ADDRESSES = 16
MAX_NAME_LENGTH = 253  # RFC 1035 §2.3.4: 255 octets on the wire, 253 as text
MAX_LABEL_LENGTH = 63

STATE_VERSION = 1

_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?$")
# A name as parse_domain() returns it: labels of 1 to 63 as _LABEL, 253 characters at most.
_NORMAL_NAME = re.compile(
    r"(?=.{1,253}\Z)(?:[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\.)*"
    r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\Z"
)
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_NORMAL_V4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}\Z")  # as ipaddress writes IPv4
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw]?)$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_FOREVER = {"never", "forever", "permanent", "until-removed"}


def parse_domain(text: str) -> str:
    """Normalise a domain name: IDNA, lower case, no trailing dot. Raise InvalidDomain."""
    if isinstance(text, str) and _NORMAL_NAME.match(text) and not text.rpartition(".")[2].isdigit():
        return text  # already normal (every name of the state file): one match, not a dozen
    return _parse_domain(text)


def _parse_domain(text: str) -> str:
    if not isinstance(text, str):
        raise InvalidDomain(f"invalid domain {text!r}: not text")
    shown = text if len(text) <= 80 else text[:77] + "..."
    name = text.strip()
    if name.endswith("."):
        name = name[:-1]
    if not name:
        raise InvalidDomain(f"invalid domain {shown!r}: empty")
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise InvalidDomain(
                f"invalid domain {shown!r}: not a valid internationalised name"
            ) from exc
    name = name.lower()
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidDomain(f"invalid domain {shown!r}: longer than {MAX_NAME_LENGTH} characters")
    labels = name.split(".")
    for label in labels:
        if not label:
            raise InvalidDomain(f"invalid domain {shown!r}: empty label")
        if len(label) > MAX_LABEL_LENGTH:
            raise InvalidDomain(f"invalid domain {shown!r}: a label is longer than 63 characters")
        if not _LABEL.match(label):
            raise InvalidDomain(f"invalid domain {shown!r}: bad character or hyphen in {label!r}")
    if labels[-1].isdigit():
        # "10.0.0.1" is an address, not a name; an all-numeric TLD is never valid (RFC 3696 §2)
        raise InvalidDomain(f"invalid domain {shown!r}: looks like an address, not a name")
    return name


def parse_address(text: str) -> str:
    """Normalise an IPv4 or IPv6 address to its compressed text form. Raise InvalidAddress."""
    if isinstance(text, str) and _NORMAL_V4.match(text):
        # already a dotted quad in normal form: only the checks below are left to make
        # (ipaddress costs ten times this, for each override the daemon reads at its start)
        first = int(text.partition(".")[0])
        if text != "0.0.0.0" and not 224 <= first <= 239:
            return text
    return _parse_address(text)


def _parse_address(text: str) -> str:
    if not isinstance(text, str):
        raise InvalidAddress(f"invalid address {text!r}: not text")
    try:
        addr = ipaddress.ip_address(text.strip())
    except ValueError as exc:
        shown = text if len(text) <= 60 else text[:57] + "..."
        raise InvalidAddress(f"invalid address {shown!r}: not an IPv4 or IPv6 address") from exc
    if isinstance(addr, ipaddress.IPv6Address) and addr.scope_id:
        raise InvalidAddress(f"invalid address {text!r}: zone ids cannot be served over DNS")
    mapped = addr.ipv4_mapped if isinstance(addr, ipaddress.IPv6Address) else None
    if addr.is_unspecified or addr.is_multicast or (mapped and mapped.is_unspecified):
        raise InvalidAddress(f"invalid address {text!r}: unspecified or multicast")
    if mapped is not None:
        # RFC 5952 §5: IPv4-mapped addresses are written with the IPv4 part in dotted quad,
        # as dig and dnspython print them
        return f"::ffff:{mapped}"
    return addr.compressed


def parse_addresses(texts: Iterable[str]) -> tuple[str, ...]:
    """Normalise, de-duplicate (keeping order) and bound a list of addresses."""
    out: list[str] = []
    for text in texts:
        addr = parse_address(text)
        if addr not in out:
            out.append(addr)
    if len(out) > MAX_ADDRESSES:
        raise InvalidAddress(f"too many addresses: {len(out)} (at most {MAX_ADDRESSES})")
    return tuple(out)


def parse_duration(text: str) -> float | None:
    """Parse '90s', '30m', '2h', '1d', '1w' or a plain number of seconds.

    'never' (or 'forever', 'permanent', 'until-removed') means until removed and gives None.
    """
    value = text.strip().lower()
    if value in _FOREVER:
        return None
    match = _DURATION.match(value)
    if not match:
        raise InvalidTTL(
            f"invalid ttl {text!r}: use a number with s, m, h, d or w (e.g. 30m), or 'never'"
        )
    seconds = float(match.group(1)) * _UNIT_S[match.group(2)]
    return check_ttl(seconds, shown=text)


def check_ttl(seconds: float, *, shown: str | None = None) -> float:
    shown = shown if shown is not None else f"{seconds:g}s"
    if seconds == 0:
        # Not a synonym of "forever": a zero lifetime is a slip, and a forgotten override would
        # redirect the name for good.
        raise InvalidTTL(
            f"invalid ttl {shown!r}: 0 is not a lifetime (--until-removed or --ttl never "
            "mean no expiry)"
        )
    if not seconds >= 1:  # also rejects NaN
        raise InvalidTTL(f"invalid ttl {shown!r}: must be at least 1 second")
    if seconds > MAX_TTL_S:
        raise InvalidTTL(f"invalid ttl {shown!r}: at most {MAX_TTL_S // 86400} days")
    return seconds


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on the override table: how many names it may hold."""

    max_overrides: int = MAX_OVERRIDES


class OverrideTable:
    """All overrides, keyed by normalised name (one override per name)."""

    def __init__(self, overrides: Iterable[Override] = (), *, limits: Limits = Limits()) -> None:
        self.limits = limits
        self._by_name: dict[str, Override] = {o.name: o for o in overrides}

    def __len__(self) -> int:
        return len(self._by_name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def entries(self) -> list[Override]:
        return sorted(self._by_name.values(), key=lambda o: o.name)

    def get(self, name: str) -> Override | None:
        return self._by_name.get(name)

    def prepare(
        self,
        name: str,
        addresses: Iterable[str],
        *,
        ttl_s: float | None,
        now: float,
        scope: str | None = None,
        scope_name: str = "",
        source: Source = Source.USER,
        created_by: str = "",
    ) -> Override:
        """Validate and build an override without changing the table."""
        norm = parse_domain(name)
        addrs = parse_addresses(addresses)
        if not addrs:
            raise InvalidAddress(f"no address given for {norm}")
        if ttl_s is not None:
            ttl_s = check_ttl(ttl_s)
        if norm not in self._by_name and len(self._by_name) >= self.limits.max_overrides:
            raise TooManyOverrides(
                f"cannot add {norm}: already {len(self._by_name)} overrides "
                f"(the limit is {self.limits.max_overrides}); remove some first"
            )
        return Override(
            name=norm,
            addresses=addrs,
            expires_at=None if ttl_s is None else now + ttl_s,
            scope=scope,
            scope_name=scope_name if scope is not None else "",
            source=source,
            created_at=now,
            created_by=created_by,
        )

    def put(self, override: Override) -> Override | None:
        """Insert or replace; returns the override it replaced."""
        if override.name not in self._by_name and len(self._by_name) >= self.limits.max_overrides:
            raise TooManyOverrides(f"cannot add {override.name}: the table is full")
        old = self._by_name.get(override.name)
        self._by_name[override.name] = override
        return old

    def add(self, name: str, addresses: Iterable[str], **kwargs: object) -> Override:
        override = self.prepare(name, addresses, **kwargs)  # type: ignore[arg-type]
        self.put(override)
        return override

    def add_many(self, overrides: list[Override]) -> None:
        """All or nothing: check the limit for the whole batch first."""
        new_names = {o.name for o in overrides} - self._by_name.keys()
        if len(self._by_name) + len(new_names) > self.limits.max_overrides:
            raise TooManyOverrides(
                f"cannot import {len(overrides)} overrides: "
                f"the limit is {self.limits.max_overrides}"
            )
        for o in overrides:
            self._by_name[o.name] = o

    def pin(
        self,
        found: dict[str, list[str]],
        *,
        network_id: str,
        network_name: str,
        ttl_s: float | None,
        now: float,
    ) -> tuple[list[Override], list[tuple[str, str]]]:
        """Pin a portal's names: overrides scoped to its network, source AUTO.

        Portals often intercept IPv4 only: the IPv4 answers are pinned when there are any, so
        clients never try an IPv6 path the portal black-holes (the stub then answers AAAA with
        NODATA). A name a person overrode is never replaced. Returns what was pinned and, for
        names that could not be, (name, reason).
        """
        made: list[Override] = []
        refused: list[tuple[str, str]] = []
        for name, addrs in found.items():
            existing = self._by_name.get(name)
            if existing is not None and existing.source is Source.USER:
                continue
            v4 = [a for a in addrs if ":" not in a]
            try:
                o = self.prepare(
                    name,
                    v4 or addrs,
                    ttl_s=ttl_s,
                    now=now,
                    scope=network_id,
                    scope_name=network_name,
                    source=Source.AUTO,
                    created_by="portal detection",
                )
                self.put(o)
            except (InvalidDomain, InvalidAddress, InvalidTTL, TooManyOverrides) as exc:
                refused.append((name, str(exc)))
                continue
            made.append(o)
        return made, refused

    def remove(self, name: str) -> Override:
        try:
            norm = parse_domain(name)
        except InvalidDomain:
            raise
        try:
            return self._by_name.pop(norm)
        except KeyError:
            raise NoSuchOverride(f"no override for {norm}") from None

    def lookup(self, name: str, *, network_id: str | None, now: float) -> Override | None:
        """The override that answers `name` (already normalised) right now, if any."""
        o = self._by_name.get(name)
        if o is None or o.is_expired(now) or not o.applies_to(network_id):
            return None
        return o

    def active(self, *, network_id: str | None, now: float) -> dict[str, Override]:
        """name → override for everything that answers right now (the stub's view)."""
        return {
            n: o
            for n, o in self._by_name.items()
            if not o.is_expired(now) and o.applies_to(network_id)
        }

    def expire(self, now: float) -> list[Override]:
        gone = [o for o in self._by_name.values() if o.is_expired(now)]
        for o in gone:
            del self._by_name[o.name]
        return gone

    def unpin(self, network_id: str | None = None) -> list[Override]:
        """Drop the pins (overrides made by detection) of one network, or all when None."""
        gone = [
            o
            for o in self._by_name.values()
            if o.source is Source.AUTO and (network_id is None or o.scope == network_id)
        ]
        for o in gone:
            del self._by_name[o.name]
        return gone

    def next_expiry(self) -> float | None:
        times = [o.expires_at for o in self._by_name.values() if o.expires_at is not None]
        return min(times) if times else None


def format_state(table: OverrideTable) -> str:
    """The state file's text: versioned JSON, one override per entry."""
    items = []
    for o in table.entries():
        items.append(
            {
                "name": o.name,
                "addresses": list(o.addresses),
                "expires_at": o.expires_at,
                "scope": o.scope,
                "scope_name": o.scope_name,
                "source": o.source.value,
                "created_at": o.created_at,
                "created_by": o.created_by,
            }
        )
    return json.dumps({"version": STATE_VERSION, "overrides": items}, indent=1) + "\n"


def parse_state(text: str, *, limits: Limits = Limits()) -> OverrideTable:
    """Parse the state file. Any inconsistency raises StateError (the caller moves it aside)."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise StateError(f"state file is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
        raise StateError("state file has an unknown format or version")
    raw = data.get("overrides")
    if not isinstance(raw, list):
        raise StateError("state file has no list of overrides")
    if len(raw) > limits.max_overrides:
        raise StateError(f"state file holds {len(raw)} overrides, more than the limit")
    out: list[Override] = []
    for i, item in enumerate(raw):
        try:
            if not isinstance(item, dict):
                raise TypeError("not an object")
            expires_at = item["expires_at"]
            if expires_at is not None and not isinstance(expires_at, int | float):
                raise TypeError("expires_at")
            scope = item.get("scope")
            if scope is not None and not isinstance(scope, str):
                raise TypeError("scope")
            o = Override(
                name=parse_domain(item["name"]),
                addresses=parse_addresses(item["addresses"]),
                expires_at=None if expires_at is None else float(expires_at),
                scope=scope,
                scope_name=str(item.get("scope_name", "")),
                source=Source(item.get("source", "user")),
                created_at=float(item.get("created_at", 0.0)),
                created_by=str(item.get("created_by", "")),
            )
            if not o.addresses:
                raise ValueError("no addresses")
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(f"state file entry {i} is invalid: {exc}") from exc
        out.append(o)
    return OverrideTable(out, limits=limits)


def parse_hosts(text: str) -> list[tuple[str, list[str]]]:
    """hosts(5) lines → [(name, [addresses])], names in first-seen order, addresses merged.

    Blank lines and comments are skipped. Any bad line raises with its line number, so an
    import is all or nothing.
    """
    by_name: dict[str, list[str]] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) < 2:
            raise InvalidDomain(
                f"line {number}: expected 'ADDRESS NAME [NAME...]', got {raw.strip()!r}"
            )
        try:
            addr = parse_address(fields[0])
            names = [parse_domain(f) for f in fields[1:]]
        except (InvalidAddress, InvalidDomain) as exc:
            raise type(exc)(f"line {number}: {exc}") from exc
        for name in names:
            addrs = by_name.setdefault(name, [])
            if addr not in addrs:
                addrs.append(addr)
    return list(by_name.items())
