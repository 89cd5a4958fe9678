"""The `portal` command: argument parsing and printing only.

Every command but `daemon` and `agent` talks to the daemon over D-Bus. Input is validated here
first (exit 2 before any connection); the daemon validates again. Imports are lazy: the one-shot
commands (add, remove, import, list, status, check) go through the light synchronous client
(portal/edges/sync_client.py) and never load asyncio or dbus-next; `status --watch` and `open`
use the dbus-next client.

Exit codes: 0 ok, 1 runtime error (daemon unreachable, not authorised, state not saved),
2 usage or invalid input.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

from portal import __version__
from portal.errors import (
    ConfigError,
    InvalidAddress,
    InvalidDomain,
    InvalidTTL,
    PortalError,
)

# typing.TYPE_CHECKING without importing typing (about 5 ms of a one-shot command)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from portal.core.report import OverrideView, StatusReport

USAGE_ERRORS = (InvalidDomain, InvalidAddress, InvalidTTL, ConfigError)
COMMAND_NAMES = (
    "add", "remove", "list", "status", "check", "dont-ask", "ask-again", "open", "import",
    "daemon", "agent", "wire",
)  # fmt: skip


def _columns() -> int:
    """The terminal's width as argparse would take it (shutil.get_terminal_size)."""
    try:
        return int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        pass
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns or 80  # type: ignore[union-attr]
    except (AttributeError, ValueError, OSError):  # no stdout, closed, or not a terminal
        return 80


class _Formatter(argparse.HelpFormatter):
    """argparse's help formatter, sized without importing shutil: the default one imports it
    (and with it bz2 and lzma) for the terminal's width, about 4 ms of every call."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=_columns() - 2)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose help formatter, and its subcommands', is _Formatter."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The command line's parser; with `command`, only that command's part (what `main` needs
    to parse one call: building all twelve costs more than the D-Bus call itself)."""

    def wanted(name: str) -> bool:
        return command is None or command == name

    p = _Parser(
        prog="portal",
        description="Captive-portal helper: temporary DNS overrides and sign-in detection.",
    )
    p.add_argument("--version", action="version", version=f"portal {__version__}")
    bus_help = "D-Bus to use: system (default), session, or an address; also $PORTAL_BUS"
    common = _Parser(add_help=False)
    common.add_argument("--bus", help=bus_help)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    if wanted("add"):
        a = sub.add_parser(
            "add",
            parents=[common],
            help="answer DOMAIN with IP (or its venue address)",
            description="Make DOMAIN resolve to IP. Without IP, look DOMAIN up through "
            "the current network's own DNS and pin the answer.",
        )
        a.add_argument("domain")
        a.add_argument("ip", nargs="*")
        a.add_argument("--ttl", help="lifetime: 90s, 30m, 12h, 2d, or 'never' (default: 12h)")
        a.add_argument("--until-removed", action="store_true", help="never expire")
        a.add_argument(
            "--any-network",
            action="store_true",
            help="answer on every network, not only the current one",
        )

    if wanted("remove"):
        r = sub.add_parser("remove", parents=[common], help="remove the override for DOMAIN")
        r.add_argument("domain")

    if wanted("list"):
        ls = sub.add_parser("list", parents=[common], help="list overrides")
        ls.add_argument("--json", action="store_true", help="machine-readable output")

    if wanted("status"):
        st = sub.add_parser(
            "status", parents=[common], help="network, portal state, DNS, overrides"
        )
        st.add_argument("--json", action="store_true", help="machine-readable output")
        st.add_argument("--watch", action="store_true", help="keep printing changes")

    if wanted("check"):
        sub.add_parser("check", parents=[common], help="probe the current network now")
    if wanted("dont-ask"):
        sub.add_parser(
            "dont-ask",
            parents=[common],
            help="don't ask to sign in on the current network again",
            description="Remember the current network (by its identity: NetworkManager's "
            "connection, or the interface and gateway) as one where portal no longer asks you "
            "to sign in. Detection goes on; `portal status` lists these networks; "
            "`portal ask-again` undoes it.",
        )
    if wanted("ask-again"):
        again = sub.add_parser(
            "ask-again",
            parents=[common],
            help="ask to sign in on NETWORK again (undo dont-ask)",
            description="Forget 'don't ask again' for NETWORK (its name or id, as `portal status` "
            "lists it; default: the current network), or for every network with --all.",
        )
        again.add_argument("network", nargs="?", default="", help="name or id (default: this one)")
        again.add_argument("--all", action="store_true", help="every network")
    if wanted("open"):
        o = sub.add_parser(
            "open",
            parents=[common],
            help="open the sign-in page in a private sign-in window",
            description="Open the sign-in page in a browser with a throwaway profile whose traffic "
            "goes through a proxy of this process: names resolved by the network's own DNS, "
            "connections out of its interface (past your DNS settings and a VPN's routes). Ends "
            "when the network is online or changes, at --max-time, or on Ctrl-C.",
        )
        o.add_argument("--print", action="store_true", help="only print the sign-in URL")
        o.add_argument(
            "--proxy",
            action="store_true",
            help="only run the proxy: print socks5://127.0.0.1:PORT first, run until online or "
            "Ctrl-C",
        )
        o.add_argument("--url", default="", help="the page to open (default: the sign-in URL)")
        o.add_argument("--max-time", metavar="DURATION", help="end after this long (default: 15m)")
        o.add_argument(
            "--browser",
            default="",
            help="everyday browser for when no sign-in window can be made (default: config, "
            "$BROWSER, xdg-open)",
        )
        o.add_argument("--config", metavar="FILE", help="config file (/etc/portal/portal.toml)")
        o.add_argument("--log-level", choices=["debug", "info"])

    if wanted("import"):
        im = sub.add_parser(
            "import", parents=[common], help="add overrides from hosts-file lines (all or nothing)"
        )
        im.add_argument(
            "file", nargs="?", default="-", help="file with 'IP NAME...' lines, - for stdin"
        )
        im.add_argument("--ttl", help="lifetime of every entry (default: 12h)")
        im.add_argument("--any-network", action="store_true")

    if wanted("daemon"):
        d = sub.add_parser("daemon", parents=[common], help="run the daemon (system service)")
        d.add_argument(
            "--listen",
            action="append",
            metavar="ADDR[:PORT]",
            help="DNS listen address (repeatable; default 127.0.0.153:53)",
        )
        d.add_argument(
            "--upstream",
            action="append",
            metavar="ADDR[:PORT]",
            help="static upstream DNS server (repeatable; default: NetworkManager's)",
        )
        d.add_argument(
            "--state-dir", metavar="DIR", help="where overrides are kept (/var/lib/portal)"
        )
        d.add_argument("--config", metavar="FILE", help="config file (/etc/portal/portal.toml)")
        d.add_argument("--log-level", choices=["debug", "info"])
        d.add_argument(
            "--network-source",
            choices=["auto", "nm", "netlink", "none"],
            help="where network changes come from (default: auto)",
        )
        d.add_argument(
            "--wiring",
            choices=["auto", "resolvconf", "resolved", "none"],
            help="how the stub is wired into name resolution (default: auto)",
        )
        d.add_argument(
            "--resolv-conf",
            metavar="FILE",
            help="resolv.conf to read upstreams from without NetworkManager",
        )
        d.add_argument(
            "--ca-file", metavar="FILE", help="extra CA bundle for the portal's RFC 8908 API"
        )

    if wanted("agent"):
        ag = sub.add_parser("agent", parents=[common], help="run the per-user desktop agent")
        ag.add_argument("--browser", help="command that opens the sign-in page")
        ag.add_argument(
            "--sign-in-notification",
            choices=["auto", "always", "never"],
            help="when to show portal's own sign-in notification (default: config, auto: only "
            "when the desktop's own prompt will not come or will not work)",
        )
        ag.add_argument("--config", metavar="FILE", help="config file (/etc/portal/portal.toml)")
        ag.add_argument("--log-level", choices=["debug", "info"])

    if wanted("wire"):
        w = sub.add_parser(
            "wire",
            help="put the stub into resolv.conf or take it out, as the daemon asks (root)",
            description="Put the stub's nameserver line first in resolv.conf while the daemon "
            "asks for it, and take exactly that line out when it does not. Run as root by "
            "portal-wire.path whenever the daemon's request or resolv.conf changes.",
        )
        w.add_argument("--resolv-conf", metavar="FILE", help="the file to edit (/etc/resolv.conf)")
        w.add_argument(
            "--request", metavar="FILE", help="the daemon's request (/run/portal/resolv-stub)"
        )
        w.add_argument(
            "--stopped",
            action="store_true",
            help="the daemon has stopped (portal.service runs this): withdraw its request and "
            "take the stub out",
        )
    return p


def import_asyncio() -> None:
    """Import asyncio without its TLS. Neither the daemon nor the CLI uses asyncio's TLS (probes
    carry their own through httpx, which imports ssl itself): keeping asyncio from loading it
    spares OpenSSL's libssl, 4.7 MiB resident in the daemon and a few milliseconds at every
    start. Called before anything that imports asyncio."""
    if "asyncio" in sys.modules:
        return
    sys.modules["ssl"] = None  # type: ignore[assignment]
    try:
        import asyncio  # noqa: F401
    finally:
        del sys.modules["ssl"]


def import_dataclasses() -> None:
    """Import dataclasses without inspect, as CPython does from 3.15 on (gh-137855).

    dataclasses imports inspect (with ast, dis and tokenize: about a fifth of `portal list`,
    and of the daemon's start to its first answer) for one use, a signature in the docstring
    of a dataclass that has none (every one of portal's has its own). Called before anything
    that imports dataclasses."""
    import_deferring("dataclasses", "inspect")


def import_logging() -> None:
    """Import logging without traceback, which it needs only to format an exception or a
    stack: traceback brings linecache, tokenize and textwrap, about 4 ms of the daemon's start
    to its first answer. The first log record with an exception imports the real module.
    Called by the daemon before anything that imports logging."""
    import_deferring("logging", "traceback")


def import_deferring(name: str, deferred: str) -> None:
    """Import module `name` while `deferred` is a stand-in that imports the real module on
    its first attribute lookup: what `name` asks of it still works, and any later `import
    deferred` gets the real one. Nothing is done when either is already imported."""
    if name in sys.modules or deferred in sys.modules:
        return
    import importlib
    import types

    def __getattr__(attr: str) -> Any:
        if sys.modules.get(deferred) is stand_in:  # asked while `name` is still importing
            del sys.modules[deferred]
        return getattr(importlib.import_module(deferred), attr)

    stand_in = types.ModuleType(deferred)
    stand_in.__getattr__ = __getattr__  # type: ignore[method-assign]
    sys.modules[deferred] = stand_in
    try:
        __import__(name)  # an import statement's path: -X importtime reports it, as it should
    finally:
        if sys.modules.get(deferred) is stand_in:
            del sys.modules[deferred]


def main(argv: Sequence[str] | None = None) -> int:
    import_dataclasses()
    words = sys.argv[1:] if argv is None else list(argv)
    # The command is the first word that is not an option (the top level has no option that
    # takes a value); anything else (help, a typo) gets the whole parser and its messages.
    first = next((w for w in words if not w.startswith("-")), None)
    args = build_parser(first if first in COMMAND_NAMES else None).parse_args(words)
    try:
        if args.command == "daemon":
            return run_daemon(args)
        if args.command == "agent":
            import_asyncio()
            from portal import agent

            agent_argv = []
            if args.bus:
                agent_argv += ["--bus", args.bus]
            for flag in ("browser", "sign_in_notification", "config", "log_level"):
                if getattr(args, flag):
                    agent_argv += ["--" + flag.replace("_", "-"), getattr(args, flag)]
            return int(agent.main(agent_argv))
        if args.command == "wire":
            return run_wire(args)
        if args.command == "open":
            return run_open(args)
        request = prepare(args)
        if args.command in ONE_SHOT and not getattr(args, "watch", False):
            return run_one_shot(args, request)
        import_asyncio()
        import asyncio

        return asyncio.run(run_client(args, request))
    except USAGE_ERRORS as exc:
        return fail(str(exc), 2)
    except PortalError as exc:
        return fail(str(exc), 1)
    except KeyboardInterrupt:
        return 130


def fail(message: str, code: int) -> int:
    print(f"portal: error: {message}", file=sys.stderr)
    return code


def prepare(args: argparse.Namespace) -> dict[str, Any]:
    """Validate input before connecting anywhere."""
    req: dict[str, Any] = {}
    if args.command == "ask-again":
        if args.all and args.network:
            raise InvalidDomain("give a network or --all, not both")
        req["network"] = "*" if args.all else args.network
        return req
    if args.command not in ("add", "remove", "import"):
        return req  # read-only commands: nothing to validate, nothing more to import
    from portal.core import overrides as ov

    if args.command in ("add", "remove"):
        req["domain"] = ov.parse_domain(args.domain)
    if args.command == "add":
        req["ips"] = list(ov.parse_addresses(args.ip))
        req["ttl"] = ttl_arg(args.ttl, args.until_removed)
    if args.command == "import":
        text = sys.stdin.read() if args.file == "-" else read_file(args.file)
        req["entries"] = ov.parse_hosts(text)
        if not req["entries"]:
            raise InvalidDomain("nothing to import: no 'ADDRESS NAME' lines")
        req["ttl"] = ttl_arg(args.ttl, False)
    return req


def read_file(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise PortalError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from exc


def ttl_arg(text: str | None, until_removed: bool) -> int:
    from portal.core.overrides import parse_duration
    from portal.core.report import TTL_DEFAULT, TTL_FOREVER

    if until_removed:
        return TTL_FOREVER
    if text is None:
        return TTL_DEFAULT
    seconds = parse_duration(text)
    return TTL_FOREVER if seconds is None else int(round(seconds))


def run_one_shot(args: argparse.Namespace, req: dict[str, Any]) -> int:
    from portal.edges.control_api import resolve_bus
    from portal.edges.sync_client import open_client

    client = open_client(resolve_bus(args.bus))
    try:
        return ONE_SHOT[args.command](client, args, req)
    finally:
        client.close()


async def run_client(args: argparse.Namespace, req: dict[str, Any]) -> int:
    # portal never uses GLib: keep dbus-next from importing it on desktops with PyGObject
    sys.modules.setdefault("gi", None)  # type: ignore[arg-type]
    from portal.edges.client import Client
    from portal.edges.control_api import resolve_bus

    client = await Client.open(resolve_bus(args.bus))
    try:
        return await COMMANDS[args.command](client, args, req)
    finally:
        await client.aclose()


def cmd_add(client: Any, args: argparse.Namespace, req: dict[str, Any]) -> int:
    from portal.core.report import OverrideView, from_plain

    (raw,) = client.call(
        "AddOverride", "sastb", [req["domain"], req["ips"], req["ttl"], args.any_network]
    )
    o = from_plain(OverrideView, raw)
    where = f"on {o.scope_name or 'this network'}" if o.scope else "on any network"
    print(f"{o.name} -> {', '.join(o.addresses)} ({expiry_text(o.expires_at)}, {where})")
    return 0


def cmd_remove(client: Any, args: argparse.Namespace, req: dict[str, Any]) -> int:
    client.call("RemoveOverride", "s", [req["domain"]])
    print(f"removed {req['domain']}")
    return 0


def cmd_import(client: Any, args: argparse.Namespace, req: dict[str, Any]) -> int:
    (count,) = client.call(
        "ImportOverrides",
        "a(sas)tb",
        [[list(e) for e in req["entries"]], req["ttl"], args.any_network],
    )
    print(f"imported {count} override(s)")
    return 0


def override_json(o: OverrideView) -> dict[str, Any]:
    """The JSON of one override: `expires_at` and `scope` are null when unset."""
    from portal.core.report import to_plain

    out = to_plain(o)
    out["expires_at"] = o.expires_at or None
    out["scope"] = o.scope or None
    return out


def expiry_text(expires_at: int, now: float | None = None) -> str:
    if not expires_at:
        return "until removed"
    from portal.core.timefmt import format_duration

    left = expires_at - (now if now is not None else time.time())
    return "expired" if left <= 0 else f"expires in {format_duration(left)}"


def format_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def format_overrides(items: list[OverrideView]) -> str:
    if not items:
        return "no overrides"
    rows = [["NAME", "ADDRESSES", "EXPIRES", "NETWORK", "SOURCE", "ACTIVE"]]
    for o in items:
        rows.append(
            [
                o.name,
                ",".join(o.addresses),
                expiry_text(o.expires_at).replace("expires in ", "in "),
                (o.scope_name or o.scope) if o.scope else "any",
                o.source,
                "yes" if o.active else "no",
            ]
        )
    return format_table(rows)


def cmd_list(client: Any, args: argparse.Namespace, req: dict[str, Any]) -> int:
    from portal.core.report import OverrideView, from_plain

    (rows,) = client.call("ListOverrides")
    items = [from_plain(OverrideView, row) for row in rows]
    if args.json:
        import json

        print(json.dumps([override_json(o) for o in items], indent=2))
    else:
        print(format_overrides(items))
    return 0


def status_json(s: StatusReport, overrides: list[OverrideView]) -> dict[str, Any]:
    """The status with the overrides themselves in place of their count."""
    from portal.core.report import to_plain

    out = to_plain(s)
    out["overrides"] = [override_json(o) for o in overrides]
    return out


def format_status(s: StatusReport, overrides: list[OverrideView]) -> str:
    lines = [
        f"network:    {s.network or '(none)'}" + (f" on {s.interface}" if s.interface else ""),
        f"state:      {s.state.value}",
    ]
    if s.portal_url:
        lines.append(f"sign-in:    {s.portal_url}")
        lines.append("            ('portal open' shows it in a private sign-in window)")
    if s.nm_connectivity.value != "unknown":
        # what GNOME Shell and KDE Plasma act on: they prompt by themselves when it is captive
        lines.append(f"NM check:   {s.nm_connectivity.value}")
    if s.user_dns:
        your_dns = {
            "resolves": "resolves the portal's name",
            "fails": "cannot resolve the portal's name (a desktop's own sign-in window fails)",
            "checking": "being asked about the portal's name",
        }
        lines.append(f"your DNS:   {your_dns.get(s.user_dns, s.user_dns)}")
    if s.seconds_remaining >= 0:
        from portal.core.timefmt import format_duration

        lines.append(f"session:    {format_duration(s.seconds_remaining)} left")
    if s.probe_error:
        lines.append(f"probe:      failed ({s.probe_error}); retrying")
    lines += [
        f"venue DNS:  {', '.join(s.venue_dns) or '(unknown)'}",
        f"DNS stub:   {', '.join(s.listen)}",
        f"upstreams:  {', '.join(s.upstreams) or '(none)'}",
        f"wiring:     {s.wiring or 'none'}",
        f"overrides:  {s.overrides} active",
    ]
    lines += network_lines(s)
    if overrides:
        lines += ["", format_overrides(overrides)]
    return "\n".join(lines)


def network_lines(s: StatusReport) -> list[str]:
    """What portal says about this network beyond its state (core/notes.py), and the networks
    it does not ask about."""
    from portal.core.notes import network_notes

    lines = [f"{note.topic + ':':<11} {note.text}" for note in network_notes(s)]
    if s.quiet_networks:
        lines.append(f"don't ask:  {', '.join(s.quiet_networks)}")
    return lines


def print_status(args: argparse.Namespace, status: StatusReport, items: list[OverrideView]) -> None:
    if args.json:
        import json

        print(json.dumps(status_json(status, items), indent=None if args.watch else 2), flush=True)
    else:
        print(format_status(status, items), flush=True)


def cmd_status(client: Any, args: argparse.Namespace, req: dict[str, Any]) -> int:
    from portal.core.report import OverrideView, StatusReport, from_plain

    (status,) = client.call("GetStatus")
    (rows,) = client.call("ListOverrides")
    print_status(
        args, from_plain(StatusReport, status), [from_plain(OverrideView, r) for r in rows]
    )
    return 0


async def watch_status(client: Any, args: argparse.Namespace, req: dict[str, Any]) -> int:
    """`status --watch`: print the status, then again at every signal of the daemon."""
    import asyncio

    async def show() -> None:
        print_status(args, await client.status(), await client.overrides())

    await show()
    loop = asyncio.get_running_loop()
    pending: list[asyncio.Task[None]] = []

    def on_signal(member: str, body: list[Any]) -> None:
        if not args.json:
            print(f"\n-- {time.strftime('%H:%M:%S')} {member}", flush=True)
        pending.append(loop.create_task(show()))

    await client.watch(on_signal)
    return 0


def cmd_check(client: Any, args: argparse.Namespace, req: dict[str, Any]) -> int:
    from portal.core.report import StatusReport, from_plain

    client.call("Check")
    (raw,) = client.call("GetStatus")
    status = from_plain(StatusReport, raw)
    print(
        f"state: {status.state.value}"
        + (f", sign in at {status.portal_url}" if status.portal_url else "")
    )
    return 0


def cmd_dont_ask(client: Any, args: argparse.Namespace, req: dict[str, Any]) -> int:
    (label,) = client.call("DontAskAgain", "s", [""])
    print(f"portal will not ask you to sign in on {label} again ('portal ask-again' undoes it)")
    return 0


def cmd_ask_again(client: Any, args: argparse.Namespace, req: dict[str, Any]) -> int:
    (labels,) = client.call("AskAgain", "s", [req["network"]])
    print(f"portal asks you to sign in again on {', '.join(labels)}")
    return 0


def run_open(args: argparse.Namespace) -> int:
    """`portal open`: the sign-in window (portal/sign_in.py), or only its proxy."""
    from portal.core.overrides import parse_duration
    from portal.errors import InvalidTTL

    max_time_s = None
    if args.max_time is not None:
        max_time_s = parse_duration(args.max_time)
        if max_time_s is None or max_time_s <= 0:
            raise InvalidTTL(f"invalid --max-time {args.max_time!r}: a duration such as 15m")
    import logging

    from portal import sign_in
    from portal.core.sign_in import DEFAULT_MAX_TIME_S
    from portal.logsetup import setup_logging

    setup_logging(args.log_level or "info", "portal-open")
    if args.log_level is None:
        logging.getLogger().setLevel(logging.WARNING)
    # portal never uses GLib: keep dbus-next from importing it on desktops with PyGObject
    sys.modules.setdefault("gi", None)  # type: ignore[arg-type]
    options = sign_in.OpenOptions(
        bus=args.bus,
        url=args.url,
        proxy_only=args.proxy,
        print_only=args.print,
        max_time_s=max_time_s if max_time_s is not None else DEFAULT_MAX_TIME_S,
        config_path=args.config,
        browser=args.browser,
    )
    import_asyncio()
    import asyncio

    return asyncio.run(sign_in.run(options))


#: One-shot commands: the light synchronous client (status without --watch).
ONE_SHOT = {
    "add": cmd_add,
    "remove": cmd_remove,
    "import": cmd_import,
    "list": cmd_list,
    "status": cmd_status,
    "check": cmd_check,
    "dont-ask": cmd_dont_ask,
    "ask-again": cmd_ask_again,
}

#: Commands on the dbus-next client.
COMMANDS = {
    "status": watch_status,
}


def run_daemon(args: argparse.Namespace) -> int:
    """The stub answers first (portal/early.py), then asyncio and the daemon are imported."""
    from portal import config as cfg

    conf = cfg.load(args.config)
    flags: dict[str, Any] = {}
    if args.listen:
        flags["listen"] = args.listen
    if args.upstream:
        flags["upstreams"] = args.upstream
    if args.state_dir:
        flags["state_dir"] = args.state_dir
    for key in ("log_level", "network_source", "wiring", "resolv_conf", "ca_file"):
        if getattr(args, key):
            flags[key] = getattr(args, key)
    bus = args.bus or os.environ.get("PORTAL_BUS")
    if bus:
        flags["bus"] = bus
    conf = cfg.apply(conf, flags)
    import_logging()
    from portal import early
    from portal.logsetup import setup_logging

    setup_logging(conf.log_level, "portal")
    try:
        started = early.serve(conf)
    except PortalError as exc:
        import logging

        logging.getLogger("portal").error("%s", exc)
        return 1
    import_asyncio()
    from portal import daemon

    return daemon.run(conf, started)


def run_wire(args: argparse.Namespace) -> int:
    """`portal wire`: one pass of the resolv.conf helper; says what it found in one line."""
    from portal.edges import resolv_conf

    result = resolv_conf.sync(
        args.resolv_conf or resolv_conf.DEFAULT_RESOLV_CONF,
        args.request or resolv_conf.DEFAULT_REQUEST,
        stopped=args.stopped,
    )
    if result.request_error:
        print(f"portal: {result.request_error}", file=sys.stderr)
    done = "rewrote" if result.changed else "left"
    if result.plan.wired:
        print(f"{done} {result.path}: the stub first")
    elif result.plan.reason:
        print(f"{done} {result.path} as its owner wrote it: {result.plan.reason}")
    else:
        print(f"{done} {result.path} as its owner wrote it")
    return 0
