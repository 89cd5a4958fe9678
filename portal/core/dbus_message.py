"""D-Bus messages as bytes: the marshalling of the D-Bus specification, for one-shot calls.

Pure: values in, bytes out, and back. It holds what the CLI's light client needs to call the
daemon without dbus-next and asyncio (which cost more to import than the whole call): type
signatures, the marshalling of every basic and container type but Unix file descriptors, the
message header and its fields, and the SASL lines of the authentication. The client edge
(portal/edges/sync_client.py) owns the socket.

Values are the ones dbus-next uses, so that either side can stand in for the other: integers,
bool, float, str (also for `o` and `g`), bytes for `ay`, lists for other arrays and for structs,
dicts for `a{..}`, and `Variant(signature, value)` for `v`.

It never trusts what it reads: every length is checked against the data, nesting and sizes are
bounded as the specification says, and anything wrong raises `DBusWireError` (a ValueError),
never an IndexError or struct.error.

Specification: https://dbus.freedesktop.org/doc/dbus-specification.html ("Message Protocol",
"Authentication Protocol").
"""

from __future__ import annotations

import collections
import struct
from collections.abc import Mapping, Sequence

# typing.TYPE_CHECKING without importing typing (about 5 ms of a one-shot command): the named
# tuples below are collections' with their fields' types declared for the type checker
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class DBusWireError(ValueError):
    """Bytes that are not a D-Bus message, or a value that does not fit its signature."""


class Variant(collections.namedtuple("Variant", "signature value")):
    """A value of type `v`: its own signature (one complete type) and the value."""

    __slots__ = ()
    signature: str
    value: Any


# Message types and flags ("Message Format").
METHOD_CALL = 1
METHOD_RETURN = 2
ERROR = 3
SIGNAL = 4
NO_REPLY_EXPECTED = 0x1
NO_AUTO_START = 0x2
ALLOW_INTERACTIVE_AUTHORIZATION = 0x4  # lets polkit ask for a password during the call

PROTOCOL_VERSION = 1

# Header fields: code → the one type it must have.
PATH, INTERFACE, MEMBER, ERROR_NAME, REPLY_SERIAL, DESTINATION, SENDER, SIGNATURE, UNIX_FDS = range(
    1, 10
)
_FIELD_TYPES = {
    PATH: "o",
    INTERFACE: "s",
    MEMBER: "s",
    ERROR_NAME: "s",
    REPLY_SERIAL: "u",
    DESTINATION: "s",
    SENDER: "s",
    SIGNATURE: "g",
    UNIX_FDS: "u",
}

# Limits of the specification ("Valid Signatures", "Message Format").
MAX_SIGNATURE = 255
MAX_ARRAY_BYTES = 1 << 26  # 64 MiB
MAX_MESSAGE_BYTES = 1 << 27  # 128 MiB
MAX_STRUCT_DEPTH = 32
MAX_ARRAY_DEPTH = 32
MAX_DEPTH = 64  # variants included: a nesting bound that hostile input cannot exceed either
FIXED_HEADER_BYTES = 16  # up to and with the length of the header fields array

_BASIC = "ybnqiuxtdsogh"
_ALIGN = {
    "y": 1, "b": 4, "n": 2, "q": 2, "i": 4, "u": 4, "x": 8, "t": 8, "d": 8, "h": 4,
    "s": 4, "o": 4, "g": 1, "a": 4, "(": 8, "{": 8, "v": 1,
}  # fmt: skip
_FIXED = {"y": "B", "n": "h", "q": "H", "i": "i", "u": "I", "x": "q", "t": "Q", "d": "d", "h": "I"}
_INT_RANGE = {
    "y": (0, 0xFF),
    "n": (-(1 << 15), (1 << 15) - 1),
    "q": (0, 0xFFFF),
    "i": (-(1 << 31), (1 << 31) - 1),
    "u": (0, 0xFFFFFFFF),
    "h": (0, 0xFFFFFFFF),
    "x": (-(1 << 63), (1 << 63) - 1),
    "t": (0, (1 << 64) - 1),
}


# -- signatures ----------------------------------------------------------------------------------


def _complete_end(sig: str, pos: int, structs: int, arrays: int) -> int:
    """The end of the single complete type starting at sig[pos]."""
    if pos >= len(sig):
        raise DBusWireError(f"signature {sig!r} ends inside a type")
    c = sig[pos]
    if c in _BASIC or c == "v":
        return pos + 1
    if c == "a":
        if arrays >= MAX_ARRAY_DEPTH:
            raise DBusWireError(f"signature {sig!r} nests arrays too deeply")
        if pos + 1 < len(sig) and sig[pos + 1] == "{":
            key = pos + 2
            if key >= len(sig) or sig[key] not in _BASIC:
                raise DBusWireError(f"signature {sig!r}: a dict key must be a basic type")
            end = _complete_end(sig, key + 1, structs + 1, arrays + 1)
            if end >= len(sig) or sig[end] != "}":
                raise DBusWireError(f"signature {sig!r}: a dict entry has two types")
            return end + 1
        return _complete_end(sig, pos + 1, structs, arrays + 1)
    if c == "(":
        if structs >= MAX_STRUCT_DEPTH:
            raise DBusWireError(f"signature {sig!r} nests structs too deeply")
        pos += 1
        if pos < len(sig) and sig[pos] == ")":
            raise DBusWireError(f"signature {sig!r} has an empty struct")
        while pos < len(sig) and sig[pos] != ")":
            pos = _complete_end(sig, pos, structs + 1, arrays)
        if pos >= len(sig):
            raise DBusWireError(f"signature {sig!r} does not close a struct")
        return pos + 1
    raise DBusWireError(f"signature {sig!r} has {c!r} where a type should start")


def split_signature(sig: str) -> list[str]:
    """The complete types of a signature, in order; DBusWireError when it is not valid."""
    if len(sig) > MAX_SIGNATURE:
        raise DBusWireError("a signature is longer than 255 characters")
    types = []
    pos = 0
    while pos < len(sig):
        end = _complete_end(sig, pos, 0, 0)
        types.append(sig[pos:end])
        pos = end
    return types


def _struct_members(sig: str) -> list[str]:
    """ "(sas)" → ["s", "as"]; "{sv}" → ["s", "v"]."""
    return split_signature(sig[1:-1])


# -- writing -------------------------------------------------------------------------------------


class _Writer:
    def __init__(self, order: str) -> None:
        self.order = order  # "<" or ">"
        self.buf = bytearray()

    def pad(self, align: int) -> None:
        self.buf += bytes(-len(self.buf) % align)

    def fixed(self, code: str, value: Any) -> None:
        self.pad(_ALIGN[code])
        self.buf += struct.pack(self.order + _FIXED[code], value)

    def string(self, text: str) -> None:
        data = text.encode("utf-8")
        if b"\0" in data:
            raise DBusWireError("a D-Bus string cannot hold a NUL character")
        self.fixed("u", len(data))
        self.buf += data + b"\0"

    def signature(self, text: str) -> None:
        split_signature(text)
        data = text.encode("ascii")
        self.buf += bytes([len(data)]) + data + b"\0"

    def value(self, sig: str, value: Any, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise DBusWireError("values nest too deeply")
        c = sig[0]
        if c in _INT_RANGE:
            if isinstance(value, bool) or not isinstance(value, int):
                raise DBusWireError(f"type {c!r} needs an integer, not {type(value).__name__}")
            low, high = _INT_RANGE[c]
            if not low <= value <= high:
                raise DBusWireError(f"{value} does not fit type {c!r}")
            if c == "h":
                raise DBusWireError("Unix file descriptors are not supported")
            self.fixed(c, value)
        elif c == "b":
            if not isinstance(value, bool):
                raise DBusWireError(f"type 'b' needs a bool, not {type(value).__name__}")
            self.fixed("u", int(value))
        elif c == "d":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise DBusWireError(f"type 'd' needs a number, not {type(value).__name__}")
            self.fixed("d", float(value))
        elif c in "so":
            if not isinstance(value, str):
                raise DBusWireError(f"type {c!r} needs a string, not {type(value).__name__}")
            if c == "o" and not is_object_path(value):
                raise DBusWireError(f"{value!r} is not an object path")
            self.string(value)
        elif c == "g":
            if not isinstance(value, str):
                raise DBusWireError(f"type 'g' needs a string, not {type(value).__name__}")
            self.signature(value)
        elif c == "v":
            if not isinstance(value, Variant):
                raise DBusWireError(f"type 'v' needs a Variant, not {type(value).__name__}")
            if len(split_signature(value.signature)) != 1:
                raise DBusWireError(f"a variant holds one complete type, not {value.signature!r}")
            self.signature(value.signature)
            self.value(value.signature, value.value, depth + 1)
        elif c == "(":
            members = _struct_members(sig)
            if not isinstance(value, (list, tuple)) or len(value) != len(members):
                raise DBusWireError(f"struct {sig} needs {len(members)} values")
            self.pad(8)
            for member, item in zip(members, value, strict=True):
                self.value(member, item, depth + 1)
        else:  # "a"
            self.array(sig[1:], value, depth)

    def array(self, element: str, value: Any, depth: int) -> None:
        self.fixed("u", 0)
        length_at = len(self.buf) - 4
        self.pad(_ALIGN[element[0]])
        start = len(self.buf)
        if element[0] == "{":
            if not isinstance(value, Mapping):
                raise DBusWireError(f"a{element} needs a dict, not {type(value).__name__}")
            key_sig, value_sig = _struct_members(element)
            for key, item in value.items():
                self.pad(8)
                self.value(key_sig, key, depth + 1)
                self.value(value_sig, item, depth + 1)
        elif element == "y" and isinstance(value, (bytes, bytearray)):
            self.buf += value
        else:
            if isinstance(value, (str, bytes, bytearray, Mapping)) or not isinstance(
                value, Sequence
            ):
                raise DBusWireError(f"a{element} needs a list, not {type(value).__name__}")
            for item in value:
                self.value(element, item, depth + 1)
        length = len(self.buf) - start
        if length > MAX_ARRAY_BYTES:
            raise DBusWireError("an array is longer than 64 MiB")
        struct.pack_into(self.order + "I", self.buf, length_at, length)


def marshal(signature: str, body: Sequence[Any], *, big_endian: bool = False) -> bytes:
    """The body bytes of `body` (one value per complete type of `signature`), as they follow
    a header (whose end is 8-aligned, so alignment counts from the body's start)."""
    types = split_signature(signature)
    if len(types) != len(body):
        raise DBusWireError(f"signature {signature!r} needs {len(types)} values, not {len(body)}")
    w = _Writer(">" if big_endian else "<")
    for sig, value in zip(types, body, strict=True):
        w.value(sig, value, 0)
    return bytes(w.buf)


# -- reading -------------------------------------------------------------------------------------


class _Reader:
    def __init__(self, data: bytes | memoryview, order: str, pos: int = 0) -> None:
        self.data = data
        self.order = order
        self.pos = pos

    def align(self, n: int) -> None:
        pos = self.pos + (-self.pos % n)
        if pos > len(self.data):
            raise DBusWireError("the data ends inside padding")
        self.pos = pos

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise DBusWireError("the data ends inside a value")
        chunk = bytes(self.data[self.pos : end])
        self.pos = end
        return chunk

    def fixed(self, code: str) -> Any:
        self.align(_ALIGN[code])
        size = struct.calcsize(_FIXED[code])
        return struct.unpack(self.order + _FIXED[code], self.take(size))[0]

    def text(self, length: int) -> str:
        data = self.take(length + 1)
        if data[-1] != 0 or b"\0" in data[:-1]:
            raise DBusWireError("a string is not NUL-terminated")
        try:
            return data[:-1].decode("utf-8")
        except UnicodeDecodeError:
            raise DBusWireError("a string is not UTF-8") from None

    def signature(self) -> str:
        length = self.take(1)[0]
        text = self.text(length)
        if not text.isascii():
            raise DBusWireError("a signature is not ASCII")
        split_signature(text)
        return text

    def value(self, sig: str, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise DBusWireError("values nest too deeply")
        c = sig[0]
        if c in _FIXED:
            if c == "h":
                raise DBusWireError("Unix file descriptors are not supported")
            return self.fixed(c)
        if c == "b":
            raw = self.fixed("u")
            if raw not in (0, 1):
                raise DBusWireError(f"a boolean is {raw}")
            return raw == 1
        if c in "so":
            text = self.text(self.fixed("u"))
            if c == "o" and not is_object_path(text):
                raise DBusWireError(f"{text!r} is not an object path")
            return text
        if c == "g":
            return self.signature()
        if c == "v":
            inner = self.signature()
            if len(split_signature(inner)) != 1:
                raise DBusWireError(f"a variant holds one complete type, not {inner!r}")
            return Variant(inner, self.value(inner, depth + 1))
        if c == "(":
            self.align(8)
            return [self.value(member, depth + 1) for member in _struct_members(sig)]
        return self.array(sig[1:], depth)

    def array(self, element: str, depth: int) -> Any:
        length = self.fixed("u")
        if length > MAX_ARRAY_BYTES:
            raise DBusWireError("an array is longer than 64 MiB")
        self.align(_ALIGN[element[0]])
        end = self.pos + length
        if end > len(self.data):
            raise DBusWireError("the data ends inside an array")
        if element == "y":
            return self.take(length)
        if element[0] == "{":
            key_sig, value_sig = _struct_members(element)
            entries: dict[Any, Any] = {}
            while self.pos < end:
                self.align(8)
                key = self.value(key_sig, depth + 1)
                entries[key] = self.value(value_sig, depth + 1)
            items: Any = entries
        else:
            items = []
            while self.pos < end:
                items.append(self.value(element, depth + 1))
        if self.pos != end:
            raise DBusWireError("an array's elements overrun its length")
        return items


def unmarshal(signature: str, data: bytes, *, big_endian: bool = False) -> list[Any]:
    """The values of a body (the inverse of marshal()); all of `data` must be used."""
    r = _Reader(data, ">" if big_endian else "<")
    values = [r.value(sig, 0) for sig in split_signature(signature)]
    if r.pos != len(data):
        raise DBusWireError("bytes are left after the body's values")
    return values


def is_object_path(text: str) -> bool:
    """'/' or '/a/b_c/D1': elements of [A-Za-z0-9_], no empty one, no trailing '/'."""
    if text == "/":
        return True
    if not text.startswith("/") or text.endswith("/"):
        return False
    return all(
        part and all(ch.isascii() and (ch.isalnum() or ch == "_") for ch in part)
        for part in text[1:].split("/")
    )


# -- messages ------------------------------------------------------------------------------------


class Message(
    collections.namedtuple(
        "Message",
        [
            "type",
            "serial",
            "flags",
            "path",
            "interface",
            "member",
            "error_name",
            "reply_serial",
            "destination",
            "sender",
            "signature",
            "body",
        ],
        defaults=(0, "", "", "", "", 0, "", "", "", ()),
    )  # fmt: skip
):
    """One D-Bus message; `body` holds one value per complete type of `signature`. Only
    `type` and `serial` are required; the rest default to 0, "" and () (no values assigned
    here: a class attribute would hide the tuple's field).

    (A named tuple, not a dataclass: making a dataclass costs a millisecond at every start.)
    """

    __slots__ = ()
    type: int
    serial: int
    flags: int
    path: str
    interface: str
    member: str
    error_name: str
    reply_serial: int
    destination: str
    sender: str
    signature: str
    body: Sequence[Any]


def method_call(
    *,
    serial: int,
    destination: str,
    path: str,
    interface: str,
    member: str,
    signature: str = "",
    body: Sequence[Any] = (),
    flags: int = 0,
) -> Message:
    return Message(
        type=METHOD_CALL,
        serial=serial,
        flags=flags,
        path=path,
        interface=interface,
        member=member,
        destination=destination,
        signature=signature,
        body=list(body),
    )


def encode_message(msg: Message, *, big_endian: bool = False) -> bytes:
    """The whole message: fixed header, header fields, padding, body."""
    if not 0 < msg.serial <= 0xFFFFFFFF:
        raise DBusWireError("a message's serial is 1 to 2**32-1")
    body = marshal(msg.signature, msg.body, big_endian=big_endian)
    fields: list[list[Any]] = []
    for code, value in (
        (PATH, msg.path),
        (INTERFACE, msg.interface),
        (MEMBER, msg.member),
        (ERROR_NAME, msg.error_name),
        (REPLY_SERIAL, msg.reply_serial),
        (DESTINATION, msg.destination),
        (SENDER, msg.sender),
        (SIGNATURE, msg.signature),
    ):
        if value:
            fields.append([code, Variant(_FIELD_TYPES[code], value)])
    order = ">" if big_endian else "<"
    head = struct.pack(
        order + "cBBBII",
        b"B" if big_endian else b"l",
        msg.type,
        msg.flags,
        PROTOCOL_VERSION,
        len(body),
        msg.serial,
    )
    w = _Writer(order)
    w.buf += head
    w.array("(yv)", fields, 0)
    w.pad(8)
    return bytes(w.buf) + body


def message_length(prefix: bytes) -> int:
    """The whole length of the message that starts with these 16 (or more) bytes."""
    if len(prefix) < FIXED_HEADER_BYTES:
        raise DBusWireError("a message header is 16 bytes at least")
    order = _byte_order(prefix[0])
    body_len, _serial, fields_len = struct.unpack_from(order + "III", prefix, 4)
    if fields_len > MAX_ARRAY_BYTES:
        raise DBusWireError("the header fields are longer than 64 MiB")
    total: int = FIXED_HEADER_BYTES + fields_len
    total += -total % 8
    total += body_len
    if total > MAX_MESSAGE_BYTES:
        raise DBusWireError("a message is longer than 128 MiB")
    return total


def _byte_order(mark: int) -> str:
    if mark == ord("l"):
        return "<"
    if mark == ord("B"):
        return ">"
    raise DBusWireError(f"{bytes([mark])!r} is not a byte order mark")


def decode_message(data: bytes) -> Message:
    """One whole message (exactly message_length() bytes)."""
    total = message_length(data)
    if total != len(data):
        raise DBusWireError(f"the message is {total} bytes, not {len(data)}")
    order = _byte_order(data[0])
    mtype, flags, version, _body_len, serial = struct.unpack_from(order + "BBBII", data, 1)
    if version != PROTOCOL_VERSION:
        raise DBusWireError(f"protocol version {version}")
    if not METHOD_CALL <= mtype <= SIGNAL:
        raise DBusWireError(f"unknown message type {mtype}")
    if serial == 0:
        raise DBusWireError("a message's serial is 0")
    r = _Reader(data, order, 12)
    header: dict[int, Any] = {}
    for code, variant in r.array("(yv)", 0):
        if code in _FIELD_TYPES:  # unknown fields are ignored, as the specification says
            if variant.signature != _FIELD_TYPES[code]:
                raise DBusWireError(f"header field {code} has type {variant.signature!r}")
            header[code] = variant.value
    r.align(8)  # the body starts here: message_length() counted this far, then body_len
    signature = header.get(SIGNATURE, "")
    if header.get(UNIX_FDS):
        raise DBusWireError("the message carries Unix file descriptors")
    body = _Reader(data, order, r.pos)
    values = [body.value(sig, 0) for sig in split_signature(signature)]
    if body.pos != len(data):
        raise DBusWireError("bytes are left after the body's values")
    return Message(
        type=mtype,
        serial=serial,
        flags=flags,
        path=header.get(PATH, ""),
        interface=header.get(INTERFACE, ""),
        member=header.get(MEMBER, ""),
        error_name=header.get(ERROR_NAME, ""),
        reply_serial=header.get(REPLY_SERIAL, 0),
        destination=header.get(DESTINATION, ""),
        sender=header.get(SENDER, ""),
        signature=signature,
        body=values,
    )


# -- authentication ("Authentication Protocol") --------------------------------------------------


def auth_external(uid: int) -> bytes:
    """What a client sends first: the NUL byte, then AUTH EXTERNAL with its uid in hex ASCII
    (the bus checks it against the socket's peer credentials)."""
    return b"\0AUTH EXTERNAL " + str(uid).encode().hex().encode() + b"\r\n"


BEGIN = b"BEGIN\r\n"


def auth_reply(line: bytes) -> tuple[bool, str]:
    """The server's answer to AUTH: (True, guid) for OK; (False, what it said) otherwise."""
    words = line.decode("ascii", "replace").strip().split(" ")
    if words[0] == "OK" and len(words) >= 2:
        return True, words[1]
    return False, f"{words[0]}: {words[1:]}"
