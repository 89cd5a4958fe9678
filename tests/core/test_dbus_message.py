"""Tests for portal.core.dbus_message: D-Bus marshalling, held against dbus-next's own.

dbus-next is the oracle: hypothesis draws type signatures and values of every type the module
speaks (containers nested, variants of variants), and each must come out of the other side
unchanged, both ways, in both byte orders; the body bytes must be the very bytes dbus-next
writes. Then hostile input: garbage and mutated messages only ever raise DBusWireError, and
each rule of the specification the reader enforces has a case that breaks it.
"""

from __future__ import annotations

import io
import struct
from typing import Any

import pytest
from dbus_next import Message as NextMessage
from dbus_next import MessageFlag, MessageType
from dbus_next import Variant as NextVariant
from dbus_next._private.marshaller import Marshaller
from dbus_next._private.unmarshaller import Unmarshaller
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from portal.core import dbus_message as dm
from portal.core.dbus_message import DBusWireError, Variant

# -- strategies ----------------------------------------------------------------------------------

BASIC = "ybnqiuxtdsog"
INT_BOUNDS = {
    "y": (0, 255),
    "n": (-(2**15), 2**15 - 1),
    "q": (0, 2**16 - 1),
    "i": (-(2**31), 2**31 - 1),
    "u": (0, 2**32 - 1),
    "x": (-(2**63), 2**63 - 1),
    "t": (0, 2**64 - 1),
}
text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=20)
object_paths = st.lists(st.from_regex(r"[A-Za-z0-9_]{1,8}", fullmatch=True), max_size=4).map(
    lambda parts: "/" + "/".join(parts)
)


def _types(max_leaves: int) -> st.SearchStrategy[str]:
    return st.recursive(
        st.sampled_from(list(BASIC) + ["v"]),
        lambda inner: st.one_of(
            inner.map(lambda t: "a" + t),
            st.tuples(st.sampled_from(BASIC), inner).map(lambda kv: "a{" + kv[0] + kv[1] + "}"),
            st.lists(inner, min_size=1, max_size=4).map(lambda ts: "(" + "".join(ts) + ")"),
        ),
        max_leaves=max_leaves,
    )


types = _types(6)
signatures = st.lists(types, max_size=4).map("".join).filter(lambda s: len(s) <= 255)


def values(sig: str, depth: int = 0) -> st.SearchStrategy[Any]:
    c = sig[0]
    if c in INT_BOUNDS:
        return st.integers(*INT_BOUNDS[c])
    if c == "b":
        return st.booleans()
    if c == "d":
        return st.floats(allow_nan=False)
    if c == "s":
        return text
    if c == "o":
        return object_paths
    if c == "g":
        return signatures
    if c == "v":
        inner = st.sampled_from(list(BASIC)) if depth > 2 else _types(3)
        return inner.flatmap(
            lambda t: values(t, depth + 1).map(lambda v, t=t: Variant(t, v))  # type: ignore[misc]
        )
    if c == "(":
        members = dm.split_signature(sig[1:-1])
        return st.tuples(*(values(m, depth + 1) for m in members)).map(list)
    element = sig[1:]
    if element == "y":
        return st.binary(max_size=16)
    if element[0] == "{":
        key, value = dm.split_signature(element[1:-1])
        return st.dictionaries(values(key, depth + 1), values(value, depth + 1), max_size=3)
    return st.lists(values(element, depth + 1), max_size=3)


@st.composite
def bodies(draw: st.DrawFn) -> tuple[str, list[Any]]:
    sig = draw(signatures)
    return sig, [draw(values(t)) for t in dm.split_signature(sig)]


# -- dbus-next's side ----------------------------------------------------------------------------


def to_next(value: Any) -> Any:
    if isinstance(value, Variant):
        return NextVariant(value.signature, to_next(value.value))
    if isinstance(value, list):
        return [to_next(v) for v in value]
    if isinstance(value, dict):
        return {k: to_next(v) for k, v in value.items()}
    return value


def from_next(value: Any) -> Any:
    if isinstance(value, NextVariant):
        return Variant(value.signature, from_next(value.value))
    if isinstance(value, list):
        return [from_next(v) for v in value]
    if isinstance(value, dict):
        return {k: from_next(v) for k, v in value.items()}
    return value


def next_read(data: bytes) -> NextMessage:
    unmarshaller = Unmarshaller(io.BytesIO(data))
    msg = unmarshaller.unmarshall()
    assert msg is not None, "dbus-next read no message"
    return msg


def our_call(sig: str, body: list[Any], *, serial: int = 7) -> dm.Message:
    return dm.method_call(
        serial=serial,
        destination="org.portalhelper.Portal1",
        path="/org/portalhelper/Portal1",
        interface="org.portalhelper.Portal1",
        member="AddOverride",
        signature=sig,
        body=body,
        flags=dm.ALLOW_INTERACTIVE_AUTHORIZATION,
    )


# -- round trips against dbus-next ---------------------------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies())
def test_body_bytes_are_dbus_nexts(case: tuple[str, list[Any]]) -> None:
    sig, body = case
    ours = dm.marshal(sig, body)
    assert ours == bytes(Marshaller(sig, to_next(body)).marshall())
    assert dm.unmarshal(sig, ours) == body


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies(), st.booleans())
def test_our_messages_read_by_dbus_next(case: tuple[str, list[Any]], big_endian: bool) -> None:
    sig, body = case
    data = dm.encode_message(our_call(sig, body), big_endian=big_endian)
    assert dm.decode_message(data) == our_call(sig, body)  # and we read our own, either order
    msg = next_read(data)
    assert msg.message_type == MessageType.METHOD_CALL
    assert msg.flags == MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION
    assert (msg.serial, msg.destination, msg.path, msg.interface, msg.member) == (
        7,
        "org.portalhelper.Portal1",
        "/org/portalhelper/Portal1",
        "org.portalhelper.Portal1",
        "AddOverride",
    )
    assert msg.signature == sig
    assert from_next(msg.body) == body


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies(), st.sampled_from(["return", "error", "signal"]))
def test_dbus_nexts_messages_read_by_us(case: tuple[str, list[Any]], kind: str) -> None:
    sig, body = case
    if kind == "return":
        msg = NextMessage(
            message_type=MessageType.METHOD_RETURN,
            reply_serial=9,
            destination=":1.5",  # (dbus-next never writes SENDER: the bus does)
            signature=sig,
            body=to_next(body),
            serial=3,
        )
    elif kind == "error":
        msg = NextMessage(
            message_type=MessageType.ERROR,
            reply_serial=9,
            error_name="org.portalhelper.Portal1.Error.InvalidDomain",
            signature=sig,
            body=to_next(body),
            serial=3,
        )
    else:
        msg = NextMessage(
            message_type=MessageType.SIGNAL,
            path="/org/portalhelper/Portal1",
            interface="org.portalhelper.Portal1",
            member="StateChanged",
            signature=sig,
            body=to_next(body),
            serial=3,
        )
    data = bytes(msg._marshall())
    assert dm.message_length(data[:16]) == len(data)
    ours = dm.decode_message(data)
    assert ours.body == body and ours.signature == sig and ours.serial == 3
    assert (ours.reply_serial, ours.error_name, ours.member, ours.destination) == (
        msg.reply_serial or 0,
        msg.error_name or "",
        msg.member or "",
        msg.destination or "",
    )
    # and what we write from it is what dbus-next wrote
    assert dm.encode_message(ours) == data


def test_the_control_apis_own_shapes() -> None:
    # the signatures the CLI sends and the replies it reads, as the daemon builds them
    override = {
        "name": Variant("s", "login.hotel.example"),
        "addresses": Variant("as", ["10.0.0.1", "fd00::1"]),
        "expires_at": Variant("x", 1_900_000_000),
        "active": Variant("b", True),
    }
    cases: list[tuple[str, list[Any]]] = [
        ("sastb", ["a.example", ["10.0.0.1"], 2**64 - 1, False]),
        ("a(sas)tb", [[["a.example", ["10.0.0.1"]], ["b.example", []]], 0, True]),
        ("s", ["a.example"]),
        ("a{sv}", [override]),
        ("aa{sv}", [[override, {}]]),
        ("u", [3]),
        ("", []),
    ]
    for sig, body in cases:
        data = dm.encode_message(our_call(sig, body))
        assert from_next(next_read(data).body) == body
        assert dm.decode_message(data).body == body


# -- signatures ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sig", "types"),
    [
        ("", []),
        ("sastb", ["s", "as", "t", "b"]),
        ("a(sas)tb", ["a(sas)", "t", "b"]),
        ("aa{sv}", ["aa{sv}"]),
        ("a{s(ia{yv})}v", ["a{s(ia{yv})}", "v"]),
        ("a" * 32 + "y", ["a" * 32 + "y"]),
        ("(" * 32 + "y" + ")" * 32, ["(" * 32 + "y" + ")" * 32]),
    ],
)
def test_split_signature(sig: str, types: list[str]) -> None:
    assert dm.split_signature(sig) == types


@pytest.mark.parametrize(
    "sig",
    [
        "a",  # an array of nothing
        "a" * 33 + "y",  # arrays nested deeper than 32
        "(" * 33 + "y" + ")" * 33,  # structs nested deeper than 32
        "()",  # an empty struct
        "(s",  # not closed
        "s)",
        "{sv}",  # a dict entry outside an array
        "a{vs}",  # a key that is not basic
        "a{s}",  # one type in an entry
        "a{svs}",  # three
        "a{",
        "z",  # not a type code
        "h" * 256,  # longer than 255
    ],
)
def test_invalid_signatures(sig: str) -> None:
    with pytest.raises(DBusWireError):
        dm.split_signature(sig)


# -- marshalling refuses what does not fit -------------------------------------------------------


@pytest.mark.parametrize(
    ("sig", "body"),
    [
        ("y", [256]),
        ("n", [2**15]),
        ("u", [-1]),
        ("t", [2**64]),
        ("i", [True]),  # a bool is not an integer here
        ("i", ["1"]),
        ("b", [1]),
        ("d", ["1.0"]),
        ("d", [False]),
        ("s", ["a\0b"]),
        ("s", [b"bytes"]),
        ("o", ["not/a/path"]),
        ("o", [3]),
        ("g", ["a{"]),
        ("g", [5]),
        ("v", ["not a variant"]),
        ("v", [Variant("ss", ["a", "b"])]),
        ("h", [3]),
        ("(ss)", [["one"]]),
        ("(ss)", ["ab"]),
        ("as", ["abc"]),  # a str is not a list of strings
        ("as", [{"a": 1}]),
        ("as", [5]),
        ("a{sv}", [[("a", Variant("s", "b"))]]),
        ("ss", ["only one"]),
    ],
)
def test_marshal_refuses(sig: str, body: list[Any]) -> None:
    with pytest.raises(DBusWireError):
        dm.marshal(sig, body)


def test_marshal_accepts_ints_as_doubles_and_tuples_as_structs() -> None:
    assert dm.unmarshal("d(si)", dm.marshal("d(si)", [2, ("a", 1)])) == [2.0, ["a", 1]]
    assert dm.unmarshal("ay", dm.marshal("ay", [[1, 2]])) == [b"\x01\x02"]


def test_marshal_bounds_nesting_and_sizes(monkeypatch: pytest.MonkeyPatch) -> None:
    deep: Any = Variant("s", "x")
    for _ in range(dm.MAX_DEPTH + 1):
        deep = Variant("v", deep)
    with pytest.raises(DBusWireError, match="nest"):
        dm.marshal("v", [deep])
    monkeypatch.setattr(dm, "MAX_ARRAY_BYTES", 8)
    with pytest.raises(DBusWireError, match="64 MiB"):
        dm.marshal("ay", [bytes(9)])


def test_encode_message_needs_a_serial() -> None:
    with pytest.raises(DBusWireError):
        dm.encode_message(our_call("", [], serial=0))


# -- reading refuses what is broken --------------------------------------------------------------


def good_reply(sig: str = "s", body: list[Any] | None = None) -> bytes:
    msg = dm.Message(
        type=dm.METHOD_RETURN, serial=5, reply_serial=2, signature=sig, body=body or ["ok"]
    )
    return dm.encode_message(msg)


def with_fields(fields: list[list[Any]], body: bytes = b"", *, serial: int = 5) -> bytes:
    """A METHOD_RETURN with exactly these header fields (code, Variant) and body bytes."""
    w = dm._Writer("<")
    w.buf += struct.pack("<cBBBII", b"l", dm.METHOD_RETURN, 0, 1, len(body), serial)
    w.array("(yv)", fields, 0)
    w.pad(8)
    return bytes(w.buf) + body


def patched(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value) :]


BROKEN = [
    ("byte-order", lambda: patched(good_reply(), 0, b"X"), "byte order"),
    ("version", lambda: patched(good_reply(), 3, b"\x02"), "version"),
    ("type-0", lambda: patched(good_reply(), 1, b"\x00"), "message type"),
    ("type-5", lambda: patched(good_reply(), 1, b"\x05"), "message type"),
    ("serial-0", lambda: with_fields([], serial=0), "serial"),
    ("length-mismatch", lambda: good_reply()[:-1], "bytes, not"),
    ("field-type", lambda: with_fields([[dm.REPLY_SERIAL, Variant("s", "2")]]), "type 's'"),
    ("unix-fds", lambda: with_fields([[dm.UNIX_FDS, Variant("u", 1)]]), "file descriptors"),
    (
        "body-without-signature",
        lambda: with_fields([[dm.REPLY_SERIAL, Variant("u", 2)]], bytes(8)),
        "left after",
    ),
    (
        "body-shorter-than-signature",
        lambda: with_fields([[dm.SIGNATURE, Variant("g", "ss")]], dm.marshal("s", ["a"])),
        "ends inside",
    ),
    (
        "no-nul",
        lambda: with_fields([[dm.SIGNATURE, Variant("g", "s")]], b"\x01\x00\x00\x00ab"),
        "NUL",
    ),
    (
        "nul-inside",
        lambda: with_fields([[dm.SIGNATURE, Variant("g", "s")]], b"\x03\x00\x00\x00a\0b\0"),
        "NUL",
    ),
    (
        "not-utf8",
        lambda: with_fields([[dm.SIGNATURE, Variant("g", "s")]], b"\x01\x00\x00\x00\xff\0"),
        "UTF-8",
    ),
    (
        "bad-path",
        lambda: with_fields([[dm.SIGNATURE, Variant("g", "o")]], b"\x01\x00\x00\x00x\0"),
        "object path",
    ),
    (
        "boolean-2",
        lambda: with_fields([[dm.SIGNATURE, Variant("g", "b")]], struct.pack("<I", 2)),
        "boolean",
    ),
    (
        "array-over-64MiB",
        lambda: with_fields([[dm.SIGNATURE, Variant("g", "ay")]], struct.pack("<I", 2**26 + 1)),
        "64 MiB",
    ),
    (
        "array-beyond-data",
        lambda: with_fields([[dm.SIGNATURE, Variant("g", "ay")]], struct.pack("<I", 9)),
        "inside an array",
    ),
    (
        "element-overruns-array",
        lambda: with_fields(
            [[dm.SIGNATURE, Variant("g", "ai")]], struct.pack("<IH", 2, 0) + bytes(2)
        ),
        "overrun",
    ),
    (
        "variant-of-two",
        lambda: with_fields([[dm.SIGNATURE, Variant("g", "v")]], b"\x02yy\x00\x01\x02"),
        "one complete type",
    ),
    (
        "signature-not-ascii",
        lambda: with_fields([[dm.SIGNATURE, Variant("g", "g")]], b"\x02\xc3\xa9\x00"),
        "ASCII",
    ),
    (
        "fd-in-body",
        lambda: with_fields([[dm.SIGNATURE, Variant("g", "h")]], struct.pack("<I", 0)),
        "file descriptors",
    ),
    (
        "padding-beyond-data",
        lambda: with_fields([[dm.SIGNATURE, Variant("g", "yt")]], b"\x01"),
        "padding",
    ),
    (
        "variants-too-deep",
        lambda: with_fields(
            [[dm.SIGNATURE, Variant("g", "v")]],
            b"\x01v\x00" * (dm.MAX_DEPTH + 2) + b"\x01y\x00\x07",
        ),
        "nest",
    ),
]


@pytest.mark.parametrize(("make", "error"), [pytest.param(m, e, id=i) for i, m, e in BROKEN])
def test_broken_messages(make: Any, error: str) -> None:
    data = make()
    with pytest.raises(DBusWireError, match=error):
        dm.decode_message(data)


def test_header_lengths_are_bounded() -> None:
    with pytest.raises(DBusWireError, match="16 bytes"):
        dm.message_length(b"l\x02\x00\x01")
    head = struct.pack("<cBBBIII", b"l", 2, 0, 1, 0, 1, 2**26 + 1)
    with pytest.raises(DBusWireError, match="64 MiB"):
        dm.message_length(head)
    head = struct.pack("<cBBBIII", b"l", 2, 0, 1, 2**27, 1, 8)
    with pytest.raises(DBusWireError, match="128 MiB"):
        dm.message_length(head)


def test_unknown_header_fields_are_skipped() -> None:
    data = with_fields(
        [[200, Variant("as", ["from the future"])], [dm.REPLY_SERIAL, Variant("u", 2)]]
    )
    msg = dm.decode_message(data)
    assert msg.reply_serial == 2 and msg.body == []


def test_unmarshal_uses_every_byte() -> None:
    with pytest.raises(DBusWireError, match="left after"):
        dm.unmarshal("y", b"\x01\x02")


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=256))
def test_garbage_raises_only_dbus_wire_error(data: bytes) -> None:
    for read in (dm.decode_message, dm.message_length):
        try:
            read(data)
        except DBusWireError:
            pass


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies(), st.data())
def test_mutated_messages_raise_only_dbus_wire_error(
    case: tuple[str, list[Any]], data: st.DataObject
) -> None:
    raw = bytearray(good_reply(*case) if case[0] else good_reply())
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    for sample in (bytes(raw), bytes(raw[:cut])):
        try:
            dm.decode_message(sample)
        except DBusWireError:
            pass


# -- authentication ------------------------------------------------------------------------------


def test_auth_lines() -> None:
    assert dm.auth_external(0) == b"\0AUTH EXTERNAL 30\r\n"
    assert dm.auth_external(1000) == b"\0AUTH EXTERNAL 31303030\r\n"
    assert dm.auth_reply(b"OK 1234deadbeef") == (True, "1234deadbeef")
    # dbus-next's words for a refusal, so both clients say the same
    assert dm.auth_reply(b"REJECTED EXTERNAL ANONYMOUS") == (
        False,
        "REJECTED: ['EXTERNAL', 'ANONYMOUS']",
    )
    assert dm.auth_reply(b"OK") == (False, "OK: []")
    assert dm.auth_reply(b"\xff") == (False, "\ufffd: []")


def test_object_paths() -> None:
    for good in ("/", "/a", "/org/portalhelper/Portal1", "/_/9"):
        assert dm.is_object_path(good)
    for bad in ("", "a", "/a/", "//", "/a//b", "/a-b", "/é"):
        assert not dm.is_object_path(bad)
