"""core/ stays pure: no I/O, no event loop, no logging, no third-party edges."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[2] / "portal" / "core"
FORBIDDEN = {
    "asyncio",
    "socket",
    "logging",
    "httpx",
    "dbus_next",
    "dbus_fast",
    "pyroute2",
    "subprocess",
    "os",
    "pathlib",
    "shutil",
    "select",
    "selectors",
    "threading",
    "time",
    "dns",
    "urllib.request",
    "http.client",
}
FORBIDDEN_CALLS = {"open", "print", "input"}


def modules() -> list[Path]:
    return sorted(CORE.glob("*.py"))


def impurities(source: str) -> list[str]:
    """What in `source` breaks the rule: forbidden imports (also inside functions) and calls."""
    bad: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id in FORBIDDEN_CALLS:
                bad.append(f"line {node.lineno}: calls {node.func.id}()")
            continue
        else:
            continue
        for name in names:
            if name in FORBIDDEN or name.split(".")[0] in FORBIDDEN:
                bad.append(f"line {node.lineno}: imports {name}")
    return bad


@pytest.mark.parametrize("path", modules(), ids=lambda p: p.name)
def test_core_module_is_pure(path: Path) -> None:
    bad = impurities(path.read_text())
    assert not bad, f"{path.name} is not pure: " + "; ".join(bad)


def test_the_check_can_fail() -> None:
    sample = (
        "import socket\n"
        "from os import path\n"
        "import dns.message\n"
        "def f():\n"
        "    import asyncio\n"
        "    print(open('x'))\n"
        "from portal.core.model import Network\n"
        "import ipaddress\n"
    )
    assert impurities(sample) == [
        "line 1: imports socket",
        "line 2: imports os",
        "line 3: imports dns.message",
        "line 5: imports asyncio",
        "line 6: calls print()",
        "line 6: calls open()",
    ]


def test_every_core_module_is_checked() -> None:
    names = {p.name for p in modules()}
    assert {"answer.py", "packet.py", "session.py", "inet.py", "report.py"} <= names
