"""The daemon's configuration: a TOML file, overridden by flags.

`parse(text)` is pure; `load(path)` is the only read. Every key is also a `portal daemon` flag.
It imports no edge: values are checked with the core's parsers.
See portal.toml.example for every key with a comment.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from portal.core.inet import parse_host_port
from portal.core.model import Upstream
from portal.core.overrides import DEFAULT_TTL_S, MAX_OVERRIDES, parse_duration
from portal.errors import ConfigError, InvalidAddress, PortalError

DEFAULT_CONFIG_PATH = "/etc/portal/portal.toml"
DEFAULT_LISTEN = ("127.0.0.153:53",)
DEFAULT_STATE_DIR = "/var/lib/portal"


@dataclass(frozen=True, slots=True)
class Config:
    """The daemon's settings: /etc/portal/portal.toml over these defaults (see `load`)."""

    listen: tuple[str, ...] = DEFAULT_LISTEN
    upstreams: tuple[Upstream, ...] = ()  # static; when empty, learned from NetworkManager
    state_dir: str = DEFAULT_STATE_DIR
    bus: str = "system"
    admin_group: str = "netdev"  # credentials fallback when polkit is not on the bus
    default_ttl_s: float | None = DEFAULT_TTL_S
    max_overrides: int = MAX_OVERRIDES
    probe_urls: tuple[str, ...] = ()  # empty: NM's check URI plus built-in ones
    portal_api_uri: str = ""  # RFC 8908 API URI when the network does not announce one
    resolv_conf: str = (
        "/etc/resolv.conf"  # upstream fallback when there is no NM and no static list
    )
    wiring: str = "auto"  # auto | resolvconf | resolved | none
    browser: str = ""  # the everyday browser, when no sign-in window can be made
    sign_in_browser: str = ""  # the sign-in window's browser: "" = search, "none" = no window
    # the agent's own sign-in notification: "auto" (when the desktop's prompt will not come or
    # not work), "always", "never" (the tray alone)
    sign_in_notification: str = "auto"
    ca_file: str = ""  # extra CA bundle for the portal's RFC 8908 API (default: system store)
    network_source: str = (
        "auto"  # auto (NetworkManager if on the bus, else netlink) | nm | netlink | none
    )
    log_level: str = "info"


def parse_upstream(text: str) -> Upstream:
    try:
        host, port = parse_host_port(text)
    except InvalidAddress as exc:
        raise ConfigError(f"invalid upstream {text!r}: {exc}") from None
    return Upstream(host, port)


def check_listen(text: str) -> str:
    try:
        parse_host_port(text)
    except InvalidAddress as exc:
        raise ConfigError(f"invalid listen address {text!r}: {exc}") from None
    return text


def parse(text: str, *, base: Config = Config()) -> Config:
    if not _has_content(text):
        return base  # no key set: the TOML parser (a few milliseconds at every start) stays out
    import tomllib

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid config: {exc}") from exc
    return apply(base, data)


def _has_content(text: str) -> bool:
    """Whether the text has a line that is neither blank nor a comment (TOML's `#`)."""
    return any(line.strip() and not line.lstrip().startswith("#") for line in text.splitlines())


def apply(base: Config, data: dict[str, Any]) -> Config:
    """Merge a mapping of config keys (from the file or from flags) into a Config."""
    known = {f.name for f in fields(Config)}
    changes: dict[str, Any] = {}
    for key, value in data.items():
        key = key.replace("-", "_")
        if key == "default_ttl":
            try:
                changes["default_ttl_s"] = parse_duration(str(value))
            except PortalError as exc:
                raise ConfigError(f"invalid default_ttl: {exc}") from exc
        elif key == "listen":
            changes["listen"] = tuple(check_listen(str(v)) for v in _as_list(value, key))
        elif key == "upstreams":
            changes["upstreams"] = tuple(parse_upstream(str(v)) for v in _as_list(value, key))
        elif key == "probe_urls":
            changes["probe_urls"] = tuple(str(v) for v in _as_list(value, key))
        elif key == "max_overrides":
            if not isinstance(value, int) or not 1 <= value <= 100_000:
                raise ConfigError("invalid max_overrides: a whole number from 1 to 100000")
            changes[key] = value
        elif key == "network_source":
            if value not in ("auto", "nm", "netlink", "none"):
                raise ConfigError("invalid network_source: auto, nm, netlink or none")
            changes[key] = value
        elif key == "sign_in_notification":
            if value not in ("auto", "always", "never"):
                raise ConfigError("invalid sign_in_notification: auto, always or never")
            changes[key] = value
        elif key == "wiring":
            if value not in ("auto", "resolvconf", "resolved", "none"):
                raise ConfigError("invalid wiring: auto, resolvconf, resolved or none")
            changes[key] = value
        elif key in known and key != "default_ttl_s":
            if not isinstance(value, str):
                raise ConfigError(f"invalid {key}: expected text")
            changes[key] = value
        else:
            raise ConfigError(f"unknown config key {key!r}")
    return replace(base, **changes)


def _as_list(value: Any, key: str) -> list[Any]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return value
    raise ConfigError(f"invalid {key}: expected a list")


def load(path: str | None) -> Config:
    """Read the config file. A missing default file is fine; a missing named file is not."""
    target = path or DEFAULT_CONFIG_PATH
    try:
        with open(target, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        if path is None:
            return Config()
        raise ConfigError(f"config file {target} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {target}: {exc.strerror}") from exc
    return parse(text)
