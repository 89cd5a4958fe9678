"""scripts/test-venv and scripts/install refuse an interpreter other users cannot run.

The tests start the suite's interpreter as users portal and nobody, and the installed daemon
runs as portal: a Python under a directory closed to them (a per-user build under /root) would
fail later with "Permission denied". Both scripts must say so in one line and change nothing.
A copy of the distribution's interpreter in a 0700 directory stands in for such a build.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (the check runs it as nobody)"),
    pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)"),
]


@pytest.fixture
def closed_python(tmp_path: Path) -> Path:
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    base = Path(os.path.realpath(getattr(sys, "_base_executable", sys.executable)))
    python = closed / "python3"
    shutil.copy2(base, python)
    # It runs for root (it finds its standard library through the build's prefix)...
    assert subprocess.run([python, "-c", ""], timeout=30).returncode == 0
    return python


def test_the_test_environment_refuses_it(closed_python: Path, tmp_path: Path) -> None:
    # A tree of its own: the suite's real .venv is never at stake.
    tree = tmp_path / "tree"
    (tree / "scripts").mkdir(parents=True)
    shutil.copy2(ROOT / "scripts" / "test-venv", tree / "scripts")
    shutil.copy2(ROOT / "pyproject.toml", tree)
    result = subprocess.run(
        [tree / "scripts" / "test-venv"],
        env=dict(os.environ, PORTAL_TEST_PYTHON=str(closed_python)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"test: error: {closed_python} cannot be run by other users")
    assert not (tree / ".venv").exists()


def test_the_installer_refuses_it(closed_python: Path, tmp_path: Path) -> None:
    prefix = tmp_path / "prefix"
    result = subprocess.run(
        [ROOT / "scripts" / "install", f"--python={closed_python}", f"--prefix={prefix}",
         "--no-start"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stdout + result.stderr
    assert lines[0].startswith(f"install: error: {closed_python} cannot be run by other users")
    assert not prefix.exists()
