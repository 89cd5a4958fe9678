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


@pytest.mark.parametrize("path", modules(), ids=lambda p: p.name)
def test_core_module_is_pure(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    bad: list[str] = []
    for node in ast.walk(tree):
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
    assert not bad, f"{path.name} is not pure: " + "; ".join(bad)


def test_the_check_can_fail(tmp_path: Path) -> None:
    sample = tmp_path / "impure.py"
    sample.write_text("import socket\nprint('x')\n")
    tree = ast.parse(sample.read_text())
    imports = [n for n in ast.walk(tree) if isinstance(n, ast.Import)]
    assert imports and imports[0].names[0].name in FORBIDDEN
