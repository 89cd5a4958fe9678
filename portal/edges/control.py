"""The control API on D-Bus (docs/dbus-api.md): method calls in, replies and signals out.

Handles messages at the low level so that every call sees its sender, which polkit needs
(`CheckAuthorization` on the caller's unique bus name). Reads are open; mutating calls are
authorised per call. Where polkit is not on the bus, the caller's credentials decide (root, the
daemon's own user, or a member of `admin_group`), and the log says so once.
Decides nothing about overrides: it translates, authorises and calls the `Service`.
"""

from __future__ import annotations

import asyncio
import grp
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, Protocol

from dbus_next import Message, MessageFlag, MessageType, NameFlag, RequestNameReply, Variant
from dbus_next.aio import MessageBus

from portal.core.report import TTL_DEFAULT, TTL_FOREVER, OverrideView, StatusReport
from portal.edges.bus import CallFailed, call, call_bus_daemon, to_variants
from portal.edges.control_api import BUS_NAME, ERROR_PREFIX, INTERFACE, OBJECT_PATH, error_name
from portal.errors import (
    DaemonUnreachable,
    InvalidAddress,
    InvalidDomain,
    NotAuthorized,
    PortalError,
    TooManyOverrides,
)

log = logging.getLogger("portal.control")

ACTION_MANAGE = "org.portalhelper.portal.manage-overrides"
ACTION_CHECK = "org.portalhelper.portal.check"
ACTION_CHOOSE = "org.portalhelper.portal.network-choices"
# what each action lets a caller do, for the refusal's one line
_DOES = {ACTION_CHOOSE: "change portal's choices about networks"}
POLKIT_NAME = "org.freedesktop.PolicyKit1"
MAX_STRING = 1024  # longest string argument accepted (a name is at most 253)
MAX_IMPORT = 1024

INTROSPECTION = f"""<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">
<node>
 <interface name="{INTERFACE}">
  <method name="AddOverride">
   <arg name="name" type="s" direction="in"/><arg name="addresses" type="as" direction="in"/>
   <arg name="ttl_s" type="t" direction="in"/><arg name="any_network" type="b" direction="in"/>
   <arg name="override" type="a{{sv}}" direction="out"/>
  </method>
  <method name="RemoveOverride"><arg name="name" type="s" direction="in"/></method>
  <method name="ImportOverrides">
   <arg name="entries" type="a(sas)" direction="in"/><arg name="ttl_s" type="t" direction="in"/>
   <arg name="any_network" type="b" direction="in"/><arg name="count" type="u" direction="out"/>
  </method>
  <method name="ListOverrides"><arg name="overrides" type="aa{{sv}}" direction="out"/></method>
  <method name="GetStatus"><arg name="status" type="a{{sv}}" direction="out"/></method>
  <method name="Check"/>
  <method name="DontAskAgain">
   <arg name="network" type="s" direction="in"/><arg name="name" type="s" direction="out"/>
  </method>
  <method name="AskAgain">
   <arg name="network" type="s" direction="in"/><arg name="networks" type="as" direction="out"/>
  </method>
  <signal name="OverridesChanged"/>
  <signal name="StateChanged"><arg name="status" type="a{{sv}}"/></signal>
 </interface>
 <interface name="org.freedesktop.DBus.Introspectable">
  <method name="Introspect"><arg name="xml" type="s" direction="out"/></method>
 </interface>
 <interface name="org.freedesktop.DBus.Peer">
  <method name="Ping"/>
 </interface>
</node>
"""


class Service(Protocol):
    """What the daemon offers; control.py only translates to and from D-Bus."""

    async def add(
        self, name: str, addresses: list[str], ttl_s: float | None, any_network: bool, caller: str
    ) -> OverrideView: ...
    async def remove(self, name: str, caller: str) -> None: ...
    async def import_entries(
        self,
        entries: list[tuple[str, list[str]]],
        ttl_s: float | None,
        any_network: bool,
        caller: str,
    ) -> int: ...
    def overrides(self) -> list[OverrideView]: ...
    def status(self) -> StatusReport: ...
    async def check(self, caller: str) -> None: ...
    async def dont_ask(self, network: str, caller: str) -> str: ...
    async def ask_again(self, network: str, caller: str) -> list[str]: ...


class ControlServer:
    def __init__(self, bus: MessageBus, service: Service, *, admin_group: str = "") -> None:
        self.bus = bus
        self.service = service
        self.admin_group = admin_group
        self._tasks: set[asyncio.Task[None]] = set()
        self._warned_no_polkit = False
        self.auth_mode = "unknown"

    async def start(self) -> None:
        self.bus.add_message_handler(self._on_message)
        reply = await self.bus.request_name(BUS_NAME, NameFlag.DO_NOT_QUEUE)
        if reply not in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
            self.bus.remove_message_handler(self._on_message)
            raise DaemonUnreachable(
                f"cannot own {BUS_NAME}: another portal daemon runs on this bus"
            )
        self.auth_mode = "polkit" if await self._polkit_available() else "credentials"

    def stop(self) -> None:
        self.bus.remove_message_handler(self._on_message)
        for t in list(self._tasks):
            t.cancel()

    # -- signals -----------------------------------------------------------------------------

    def emit_overrides_changed(self) -> None:
        self._send(Message.new_signal(OBJECT_PATH, INTERFACE, "OverridesChanged"))

    def emit_state_changed(self, status: StatusReport) -> None:
        self._send(
            Message.new_signal(
                OBJECT_PATH, INTERFACE, "StateChanged", "a{sv}", [self._status_variants(status)]
            )
        )

    def _status_variants(self, status: StatusReport) -> dict[str, Variant]:
        return to_variants(replace(status, auth=self.auth_mode))

    def _send(self, msg: Message) -> None:
        try:
            self.bus.send(msg)
        except Exception as exc:
            log.warning("cannot send %s on the bus: %s, ignoring", msg.member, exc)

    # -- calls -------------------------------------------------------------------------------

    def _on_message(self, msg: Message) -> Message | bool | None:
        if msg.message_type != MessageType.METHOD_CALL:
            return None
        if msg.interface == "org.freedesktop.DBus.Introspectable" and msg.member == "Introspect":
            return self._introspect(msg)
        if msg.path != OBJECT_PATH or msg.interface not in (INTERFACE, None):
            return None
        handler = self._handlers().get(msg.member)
        if handler is None:
            if msg.interface == INTERFACE:
                return Message.new_error(
                    msg,
                    "org.freedesktop.DBus.Error.UnknownMethod",
                    f"no method {msg.member} in {INTERFACE}",
                )
            return None
        task = asyncio.get_running_loop().create_task(self._run(msg, handler))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    def _introspect(self, msg: Message) -> Message | None:
        if msg.path == OBJECT_PATH:
            return Message.new_method_return(msg, "s", [INTROSPECTION])
        if OBJECT_PATH.startswith(msg.path.rstrip("/") + "/"):
            child = OBJECT_PATH[len(msg.path.rstrip("/")) + 1 :].split("/")[0]
            xml = f'<node><node name="{child}"/></node>'
            return Message.new_method_return(msg, "s", [xml])
        return None

    def _handlers(self) -> dict[str, Callable[[Message], Awaitable[Message]]]:
        return {
            "AddOverride": self._add,
            "RemoveOverride": self._remove,
            "ImportOverrides": self._import,
            "ListOverrides": self._list,
            "GetStatus": self._status,
            "Check": self._check,
            "DontAskAgain": self._dont_ask,
            "AskAgain": self._ask_again,
        }

    async def _run(self, msg: Message, handler: Callable[[Message], Awaitable[Message]]) -> None:
        try:
            reply = await handler(msg)
        except PortalError as exc:
            reply = Message.new_error(msg, error_name(exc), str(exc))
        except _BadArgs as exc:
            reply = Message.new_error(msg, "org.freedesktop.DBus.Error.InvalidArgs", str(exc))
        except Exception as exc:
            log.exception("%s failed", msg.member)
            reply = Message.new_error(msg, ERROR_PREFIX + "Failed", f"internal error: {exc}")
        if not msg.flags & MessageFlag.NO_REPLY_EXPECTED:
            self._send(reply)

    async def _add(self, msg: Message) -> Message:
        _expect(msg, "sastb")
        name, addresses, ttl, any_network = msg.body
        _check_strings([name, *addresses])
        if len(addresses) > 64:
            raise InvalidAddress("too many addresses")
        caller = await self.authorize(msg, ACTION_MANAGE)
        view = await self.service.add(name, list(addresses), _ttl(ttl), bool(any_network), caller)
        return Message.new_method_return(msg, "a{sv}", [to_variants(view)])

    async def _remove(self, msg: Message) -> Message:
        _expect(msg, "s")
        _check_strings(msg.body)
        caller = await self.authorize(msg, ACTION_MANAGE)
        await self.service.remove(msg.body[0], caller)
        return Message.new_method_return(msg)

    async def _import(self, msg: Message) -> Message:
        _expect(msg, "a(sas)tb")
        entries, ttl, any_network = msg.body
        if len(entries) > MAX_IMPORT:
            raise TooManyOverrides(
                f"too many entries to import: {len(entries)} (at most {MAX_IMPORT})"
            )
        for name, addrs in entries:
            _check_strings([name, *addrs])
        caller = await self.authorize(msg, ACTION_MANAGE)
        count = await self.service.import_entries(
            [(n, list(a)) for n, a in entries], _ttl(ttl), bool(any_network), caller
        )
        return Message.new_method_return(msg, "u", [count])

    async def _list(self, msg: Message) -> Message:
        _expect(msg, "")
        items = [to_variants(view) for view in self.service.overrides()]
        return Message.new_method_return(msg, "aa{sv}", [items])

    async def _status(self, msg: Message) -> Message:
        _expect(msg, "")
        status = self._status_variants(self.service.status())
        return Message.new_method_return(msg, "a{sv}", [status])

    async def _check(self, msg: Message) -> Message:
        _expect(msg, "")
        caller = await self.authorize(msg, ACTION_CHECK)
        await self.service.check(caller)
        return Message.new_method_return(msg)

    async def _dont_ask(self, msg: Message) -> Message:
        _expect(msg, "s")
        _check_strings(msg.body)
        caller = await self.authorize(msg, ACTION_CHOOSE)
        label = await self.service.dont_ask(msg.body[0], caller)
        return Message.new_method_return(msg, "s", [label])

    async def _ask_again(self, msg: Message) -> Message:
        _expect(msg, "s")
        _check_strings(msg.body)
        caller = await self.authorize(msg, ACTION_CHOOSE)
        labels = await self.service.ask_again(msg.body[0], caller)
        return Message.new_method_return(msg, "as", [labels])

    # -- authorisation -----------------------------------------------------------------------

    async def _credentials(self, sender: str) -> dict[str, Any]:
        try:
            reply = await call_bus_daemon(self.bus, "GetConnectionCredentials", "s", [sender])
        except CallFailed:
            raise NotAuthorized("cannot identify the caller") from None
        return {k: v.value for k, v in reply.body[0].items()}

    async def _polkit_available(self) -> bool:
        try:
            reply = await call_bus_daemon(self.bus, "NameHasOwner", "s", [POLKIT_NAME])
            if reply.body[0]:
                return True
            reply = await call_bus_daemon(self.bus, "ListActivatableNames")
        except CallFailed:
            return False
        return POLKIT_NAME in reply.body[0]

    async def authorize(self, msg: Message, action: str) -> str:
        """Return a description of the caller ('uid 1000') or raise NotAuthorized."""
        assert msg.sender is not None
        creds = await self._credentials(msg.sender)
        uid = int(creds.get("UnixUserID", -1))
        caller = f"uid {uid}" + (f" pid {creds['ProcessID']}" if "ProcessID" in creds else "")
        if await self._polkit_available():
            self.auth_mode = "polkit"
            interactive = bool(msg.flags & MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION)
            subject = ["system-bus-name", {"name": Variant("s", msg.sender)}]
            try:
                reply = await call(
                    self.bus,
                    POLKIT_NAME,
                    "/org/freedesktop/PolicyKit1/Authority",
                    "org.freedesktop.PolicyKit1.Authority",
                    "CheckAuthorization",
                    "(sa{sv})sa{ss}us",
                    [subject, action, {}, 1 if interactive else 0, ""],
                    flags=MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION
                    if interactive
                    else MessageFlag.NONE,
                )
            except CallFailed as exc:
                detail = exc.text or exc.name
                log.warning("polkit check for %s failed: %s", caller, detail)
                raise NotAuthorized(f"not authorised: polkit check failed ({detail})") from None
            authorized, challenge, _details = reply.body[0]
            if not authorized:
                log.info("refused %s for %s (polkit)", action, caller)
                hint = (
                    "authentication is required: run it from a desktop session with a polkit "
                    "agent, or as root"
                    if challenge
                    else "ask an administrator"
                )
                raise NotAuthorized(
                    f"not authorised to {_DOES.get(action, 'change overrides')}; {hint}"
                )
            return caller
        self.auth_mode = "credentials"
        if not self._warned_no_polkit:
            self._warned_no_polkit = True
            log.warning(
                "polkit is not on the bus; authorising by caller credentials (root, "
                "uid %d, or group %r)",
                os.getuid(),
                self.admin_group,
            )
        if uid == 0 or uid == os.getuid():
            return caller
        if self.admin_group:
            try:
                gid = grp.getgrnam(self.admin_group).gr_gid
            except KeyError:
                gid = None
            if gid is not None and gid in (creds.get("UnixGroupIDs") or []):
                return caller
        log.info("refused %s for %s (credentials)", action, caller)
        raise NotAuthorized(
            f"not authorised to {_DOES.get(action, 'change overrides')}: run as root"
            + (f" or join group {self.admin_group!r}" if self.admin_group else "")
        )


class _BadArgs(Exception):
    pass


def _expect(msg: Message, signature: str) -> None:
    if msg.signature != signature:
        raise _BadArgs(f"{msg.member} takes ({signature}), got ({msg.signature})")


def _check_strings(values: list[Any]) -> None:
    for v in values:
        if len(v) > MAX_STRING:
            raise InvalidDomain(f"argument too long ({len(v)} characters)")


def _ttl(ttl: int) -> float | None:
    """D-Bus ttl_s → Service ttl: -1.0 asks for the daemon's default, None for until removed."""
    if ttl == TTL_DEFAULT:
        return -1.0
    return None if ttl == TTL_FOREVER else float(ttl)


BUS_RETRY_MAX_S = 60.0


async def keep_bus(
    choice: str,
    service: Service,
    *,
    admin_group: str,
    emit: Callable[[object], None],
    connected: Callable[[ControlServer | None], None],
    first_attempt: asyncio.Event,
) -> None:
    """The daemon's connection to its bus, kept: connect, export the control API, follow logind
    (portal/edges/logind.py, events to `emit`), and reconnect with backoff when the bus goes.

    `connected(server)` is told whenever the API comes up, `connected(None)` when it goes;
    `first_attempt` is set once the first try is over, whether it worked or not. DNS never
    waits on any of this. Runs until cancelled; closes the connection then.
    """
    from portal.edges.bus import close, connect
    from portal.edges.control_api import describe
    from portal.edges.logind import watch_resume

    delay = 1.0
    while True:
        try:
            bus = await connect(choice)
        except PortalError as exc:
            first_attempt.set()
            log.error("%s; DNS keeps working, retrying in %.0f s", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, BUS_RETRY_MAX_S)
            continue
        try:
            try:
                control = ControlServer(bus, service, admin_group=admin_group)
                await control.start()
            except Exception as exc:  # PortalError, or a D-Bus error while claiming the name
                first_attempt.set()
                log.error("%s; DNS keeps working, retrying in %.0f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, BUS_RETRY_MAX_S)
                continue
            connected(control)
            first_attempt.set()
            await watch_resume(bus, emit)
            delay = 1.0
            log.info(
                "control API on %s as %s (authorisation: %s)",
                describe(choice),
                BUS_NAME,
                control.auth_mode,
            )
            try:
                # shielded: cancelling a wait_for_disconnect() would cancel dbus-next's own future
                await asyncio.shield(bus.wait_for_disconnect())
            except Exception as exc:
                # dbus-next ends the wait with its reader's error (EOFError when the bus daemon
                # dies): a lost bus like any other, or this task would end and never reconnect
                log.debug("bus connection ended: %r", exc)
            connected(None)
            control.stop()
            log.warning("lost %s; reconnecting", describe(choice))
        finally:
            await close(bus)
        await asyncio.sleep(1.0)
