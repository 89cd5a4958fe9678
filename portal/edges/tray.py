"""The agent's tray icon: a StatusNotifierItem with a com.canonical.dbusmenu menu (session bus).

Exports what `portal/core/agent_logic.py` decided (`TrayView`) and turns clicks into
`MenuClicked` events; it must not decide anything itself. It registers with
org.kde.StatusNotifierWatcher when one exists, again whenever a watcher (re)appears, and stays
quiet when there is none: many desktops have no tray, and that is not an error.

Specs: StatusNotifierItem (freedesktop.org, as implemented by KDE Plasma, waybar, the GNOME
AppIndicator extension) and libdbusmenu's com.canonical.dbusmenu (protocol version 3).
"""

# Messages are handled at the low level (as in edges/control.py) rather than with dbus-next's
# ServiceInterface: its D-Bus signatures in string annotations are not Python types, and both
# mypy and ruff would have to be told to look away on every method.

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import Any

from dbus_next import Message, MessageFlag, MessageType, Variant
from dbus_next.aio import MessageBus

from portal.core.agent_logic import (
    MENU_OPEN,
    AgentEvent,
    MenuClicked,
    MenuItem,
    TrayStatus,
    TrayView,
)
from portal.edges.bus import (
    PROPERTIES,
    CallFailed,
    add_match,
    call,
    name_owner_changed,
    name_owner_rule,
)

log = logging.getLogger(__name__)

WATCHER_NAME = "org.kde.StatusNotifierWatcher"
WATCHER_PATH = "/StatusNotifierWatcher"
ITEM_PATH = "/StatusNotifierItem"
ITEM_INTERFACE = "org.kde.StatusNotifierItem"
MENU_PATH = "/MenuBar"
MENU_INTERFACE = "com.canonical.dbusmenu"
INTROSPECTABLE = "org.freedesktop.DBus.Introspectable"

_ITEM_XML = """ <interface name="org.kde.StatusNotifierItem">
  <property name="Category" type="s" access="read"/>
  <property name="Id" type="s" access="read"/>
  <property name="Title" type="s" access="read"/>
  <property name="Status" type="s" access="read"/>
  <property name="WindowId" type="i" access="read"/>
  <property name="IconName" type="s" access="read"/>
  <property name="IconPixmap" type="a(iiay)" access="read"/>
  <property name="AttentionIconName" type="s" access="read"/>
  <property name="OverlayIconName" type="s" access="read"/>
  <property name="ToolTip" type="(sa(iiay)ss)" access="read"/>
  <property name="ItemIsMenu" type="b" access="read"/>
  <property name="Menu" type="o" access="read"/>
  <method name="Activate"><arg type="i" direction="in"/><arg type="i" direction="in"/></method>
  <method name="SecondaryActivate"><arg type="i" direction="in"/><arg type="i" direction="in"/>
  </method>
  <method name="ContextMenu"><arg type="i" direction="in"/><arg type="i" direction="in"/></method>
  <method name="Scroll"><arg type="i" direction="in"/><arg type="s" direction="in"/></method>
  <signal name="NewTitle"/>
  <signal name="NewIcon"/>
  <signal name="NewAttentionIcon"/>
  <signal name="NewOverlayIcon"/>
  <signal name="NewToolTip"/>
  <signal name="NewStatus"><arg type="s"/></signal>
 </interface>
"""

_MENU_XML = """ <interface name="com.canonical.dbusmenu">
  <property name="Version" type="u" access="read"/>
  <property name="TextDirection" type="s" access="read"/>
  <property name="Status" type="s" access="read"/>
  <property name="IconThemePath" type="as" access="read"/>
  <method name="GetLayout">
   <arg type="i" name="parentId" direction="in"/>
   <arg type="i" name="recursionDepth" direction="in"/>
   <arg type="as" name="propertyNames" direction="in"/>
   <arg type="u" name="revision" direction="out"/>
   <arg type="(ia{sv}av)" name="layout" direction="out"/>
  </method>
  <method name="GetGroupProperties">
   <arg type="ai" name="ids" direction="in"/>
   <arg type="as" name="propertyNames" direction="in"/>
   <arg type="a(ia{sv})" name="properties" direction="out"/>
  </method>
  <method name="GetProperty">
   <arg type="i" name="id" direction="in"/>
   <arg type="s" name="name" direction="in"/>
   <arg type="v" name="value" direction="out"/>
  </method>
  <method name="Event">
   <arg type="i" name="id" direction="in"/>
   <arg type="s" name="eventId" direction="in"/>
   <arg type="v" name="data" direction="in"/>
   <arg type="u" name="timestamp" direction="in"/>
  </method>
  <method name="EventGroup">
   <arg type="a(isvu)" name="events" direction="in"/>
   <arg type="ai" name="idErrors" direction="out"/>
  </method>
  <method name="AboutToShow">
   <arg type="i" name="id" direction="in"/>
   <arg type="b" name="needUpdate" direction="out"/>
  </method>
  <method name="AboutToShowGroup">
   <arg type="ai" name="ids" direction="in"/>
   <arg type="ai" name="updatesNeeded" direction="out"/>
   <arg type="ai" name="idErrors" direction="out"/>
  </method>
  <signal name="ItemsPropertiesUpdated">
   <arg type="a(ia{sv})" name="updatedProps"/>
   <arg type="a(ias)" name="removedProps"/>
  </signal>
  <signal name="LayoutUpdated"><arg type="u" name="revision"/><arg type="i" name="parent"/></signal>
  <signal name="ItemActivationRequested"><arg type="i" name="id"/><arg type="u" name="timestamp"/>
  </signal>
 </interface>
"""

_COMMON_XML = """ <interface name="org.freedesktop.DBus.Introspectable">
  <method name="Introspect"><arg name="xml" type="s" direction="out"/></method>
 </interface>
 <interface name="org.freedesktop.DBus.Properties">
  <method name="Get"><arg type="s" direction="in"/><arg type="s" direction="in"/>
   <arg type="v" direction="out"/></method>
  <method name="GetAll"><arg type="s" direction="in"/><arg type="a{sv}" direction="out"/></method>
 </interface>
"""


def _introspection(interface_xml: str) -> str:
    return (
        '<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN"\n'
        ' "http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">\n'
        f"<node>\n{interface_xml}{_COMMON_XML}</node>\n"
    )


def _find(item: MenuItem, item_id: int) -> MenuItem | None:
    if item.id == item_id:
        return item
    for child in item.children:
        found = _find(child, item_id)
        if found is not None:
            return found
    return None


def _props(item: MenuItem, names: list[str]) -> dict[str, Variant]:
    """dbusmenu properties of one item; defaults are left out, as the protocol allows."""
    props: dict[str, Variant] = {}
    if item.separator:
        props["type"] = Variant("s", "separator")
    elif item.label:
        props["label"] = Variant("s", item.label)
    if not item.enabled:
        props["enabled"] = Variant("b", False)
    if item.children and item.id != 0:
        props["children-display"] = Variant("s", "submenu")
    if names:
        props = {k: v for k, v in props.items() if k in names}
    return props


def _layout(item: MenuItem, depth: int, names: list[str]) -> list[Any]:
    """One (ia{sv}av) node; depth -1 is the whole subtree, 0 the node alone."""
    children: list[Variant] = []
    if depth != 0:
        children = [
            Variant("(ia{sv}av)", _layout(child, depth - 1, names)) for child in item.children
        ]
    return [item.id, _props(item, names), children]


def _item_properties(view: TrayView) -> dict[str, Variant]:
    return {
        "Category": Variant("s", "SystemServices"),
        "Id": Variant("s", "portal"),
        "Title": Variant("s", view.title),
        "Status": Variant("s", view.status.value),
        "WindowId": Variant("i", 0),
        "IconName": Variant("s", view.icon),
        "IconPixmap": Variant("a(iiay)", []),
        "AttentionIconName": Variant("s", view.icon),
        "OverlayIconName": Variant("s", ""),
        "ToolTip": Variant("(sa(iiay)ss)", [view.icon, [], view.title, view.tooltip]),
        # Hosts show the menu on a click; Activate covers the hosts that do not.
        "ItemIsMenu": Variant("b", True),
        "Menu": Variant("o", MENU_PATH),
    }


_MENU_PROPERTIES = {
    "Version": Variant("u", 3),
    "TextDirection": Variant("s", "ltr"),
    "Status": Variant("s", "normal"),
    "IconThemePath": Variant("as", []),
}


class Tray:
    """The exported item and menu, and their registration with the watcher."""

    def __init__(self, bus: MessageBus, emit: Callable[[AgentEvent], None]) -> None:
        self._bus = bus
        self._emit = emit
        self.view = TrayView(
            status=TrayStatus.PASSIVE, icon="network-offline", title="portal", tooltip="Starting"
        )
        self.revision = 1  # dbusmenu layout revision, bumped on every menu change
        # The spec's well-known name form: org.kde.StatusNotifierItem-<pid>-<instance>.
        self.name = f"org.kde.StatusNotifierItem-{os.getpid()}-1"
        self.registered = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._bus.add_message_handler(self._on_message)
        await self._bus.request_name(self.name)
        await add_match(self._bus, name_owner_rule(WATCHER_NAME))
        await self._register()

    def stop(self) -> None:
        self._bus.remove_message_handler(self._on_message)
        for task in self._tasks:
            task.cancel()

    def update(self, view: TrayView) -> None:
        """Publish a new view: change signals for what changed, a new layout revision."""
        old, self.view = self.view, view
        if view.status != old.status:
            self._signal(ITEM_PATH, ITEM_INTERFACE, "NewStatus", "s", [view.status.value])
        if view.icon != old.icon:
            self._signal(ITEM_PATH, ITEM_INTERFACE, "NewIcon")
            self._signal(ITEM_PATH, ITEM_INTERFACE, "NewAttentionIcon")
        if view.title != old.title:
            self._signal(ITEM_PATH, ITEM_INTERFACE, "NewTitle")
        if (view.tooltip, view.icon, view.title) != (old.tooltip, old.icon, old.title):
            self._signal(ITEM_PATH, ITEM_INTERFACE, "NewToolTip")
        if view.menu != old.menu:
            self.revision += 1
            self._signal(MENU_PATH, MENU_INTERFACE, "LayoutUpdated", "ui", [self.revision, 0])

    def _signal(
        self,
        path: str,
        interface: str,
        member: str,
        signature: str = "",
        body: list[Any] | None = None,
    ) -> None:
        if self._bus.connected:
            self._bus.send(Message.new_signal(path, interface, member, signature, body or []))

    async def _register(self) -> None:
        try:
            await call(
                self._bus,
                WATCHER_NAME,
                WATCHER_PATH,
                WATCHER_NAME,
                "RegisterStatusNotifierItem",
                "s",
                [self.name],
                # No auto-start: a tray is the desktop's to provide, not ours to launch.
                flags=MessageFlag.NO_AUTOSTART,
            )
        except CallFailed as exc:
            log.debug("no StatusNotifierWatcher (%s); no tray icon until one appears", exc.name)
            return
        self.registered = True
        log.info("tray icon registered as %s", self.name)

    def _on_message(self, msg: Message) -> Message | bool | None:
        if msg.message_type == MessageType.SIGNAL:
            if name_owner_changed(msg, WATCHER_NAME):
                # A (new) watcher: register again, it knows nothing of us.
                task = asyncio.get_running_loop().create_task(self._register())
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            return None
        if msg.message_type != MessageType.METHOD_CALL or msg.path not in (ITEM_PATH, MENU_PATH):
            return None
        try:
            return self._call(msg)
        except (ValueError, TypeError, IndexError) as exc:
            return Message.new_error(
                msg, "org.freedesktop.DBus.Error.InvalidArgs", f"{msg.member}: {exc}"
            )

    def _call(self, msg: Message) -> Message:
        is_item = msg.path == ITEM_PATH
        if msg.interface == INTROSPECTABLE and msg.member == "Introspect":
            xml = _introspection(_ITEM_XML if is_item else _MENU_XML)
            return Message.new_method_return(msg, "s", [xml])
        if msg.interface == PROPERTIES and msg.member in ("Get", "GetAll"):
            interface = msg.body[0]
            own = ITEM_INTERFACE if is_item else MENU_INTERFACE
            props = _item_properties(self.view) if is_item else _MENU_PROPERTIES
            if interface not in (own, ""):
                return Message.new_error(
                    msg, "org.freedesktop.DBus.Error.UnknownInterface", f"no {interface} here"
                )
            if msg.member == "GetAll":
                return Message.new_method_return(msg, "a{sv}", [props])
            if msg.body[1] not in props:
                return Message.new_error(
                    msg, "org.freedesktop.DBus.Error.UnknownProperty", f"no {msg.body[1]}"
                )
            return Message.new_method_return(msg, "v", [props[msg.body[1]]])
        if is_item and msg.interface in (ITEM_INTERFACE, None):
            if msg.member == "Activate":
                self._emit(MenuClicked(MENU_OPEN))
            if msg.member in ("Activate", "SecondaryActivate", "ContextMenu", "Scroll"):
                return Message.new_method_return(msg)
        if not is_item and msg.interface in (MENU_INTERFACE, None):
            return self._menu_call(msg)
        return Message.new_error(
            msg, "org.freedesktop.DBus.Error.UnknownMethod", f"no method {msg.member} here"
        )

    def _menu_call(self, msg: Message) -> Message:
        root = self.view.menu
        match msg.member, msg.signature:
            case "GetLayout", "iias":
                parent_id, depth, names = msg.body
                item = _find(root, parent_id) or MenuItem(parent_id)
                layout = _layout(item, depth, names)
                return Message.new_method_return(msg, "u(ia{sv}av)", [self.revision, layout])
            case "GetGroupProperties", "aias":
                ids, names = msg.body
                found = [_find(root, i) for i in ids] if ids else [root]
                rows = [[it.id, _props(it, names)] for it in found if it is not None]
                return Message.new_method_return(msg, "a(ia{sv})", [rows])
            case "GetProperty", "is":
                found_item = _find(root, msg.body[0])
                props = _props(found_item, [msg.body[1]]) if found_item is not None else {}
                value = props.get(msg.body[1], Variant("s", ""))
                return Message.new_method_return(msg, "v", [value])
            case "Event", "isvu":
                if msg.body[1] == "clicked":
                    self._emit(MenuClicked(msg.body[0]))
                return Message.new_method_return(msg)
            case "EventGroup", "a(isvu)":
                for item_id, event_id, _data, _timestamp in msg.body[0]:
                    if event_id == "clicked":
                        self._emit(MenuClicked(item_id))
                return Message.new_method_return(msg, "ai", [[]])
            case "AboutToShow", "i":
                return Message.new_method_return(msg, "b", [False])
            case "AboutToShowGroup", "ai":
                return Message.new_method_return(msg, "aiai", [[], []])
        return Message.new_error(
            msg,
            "org.freedesktop.DBus.Error.UnknownMethod",
            f"no method {msg.member}({msg.signature})",
        )
