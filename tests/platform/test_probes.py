"""The capability probes of tests/conftest.py: inside a container (read-only /proc/sys) the
namespace, lab, end-to-end and nspawn tests skip with a reason instead of failing.

A private mount namespace with /proc/sys bound read-only stands in for a container: pytest runs
there on a few such tests and must report skips naming the cause. Needs root (mounts)."""

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
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (a private mount namespace)"),
    pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (util-linux)"),
]


def in_a_container(*command: str) -> subprocess.CompletedProcess[str]:
    """`command` in a private mount namespace whose /proc/sys is read-only, as in a container."""
    script = (
        "mount --make-rprivate / && mount --bind /proc/sys /proc/sys && "
        'mount -o remount,bind,ro /proc/sys && exec "$@"'
    )
    return subprocess.run(
        ["unshare", "--mount", "--fork", "--", "sh", "-c", script, "sh", *command],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        check=False,
    )


def test_the_probes_name_a_read_only_proc_sys() -> None:
    out = in_a_container(
        sys.executable,
        "-c",
        "from tests.conftest import namespaces_missing, nspawn_missing; "
        "print(namespaces_missing()); print(nspawn_missing())",
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 2 and all("/proc/sys is read-only" in line for line in lines), out.stdout


def test_namespace_and_nspawn_tests_skip_there_with_the_reason() -> None:
    tests = [
        "tests/e2e/test_glibc.py",
        "tests/e2e/test_detection.py",
        "tests/platform/test_nspawn.py",
        "tests/platform/test_fresh_debian.py",
    ]
    # A test elsewhere that boots a container through test_nspawn's launch() skips too.
    nested = "tests/platform/test_resolved_link.py::test_installer_sets_up_the_link_under_systemd"
    out = in_a_container(
        sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-rs", *tests, nested
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    summary = out.stdout.strip().splitlines()[-1]
    assert "skipped" in summary and "passed" not in summary and "failed" not in summary, summary
    for test in tests:
        assert f"SKIPPED [1] {test}" in out.stdout or f"] {test}:" in out.stdout, test
    assert f"{nested} SKIPPED" in out.stdout
    assert "/proc/sys is read-only" in out.stdout


def test_here_the_probes_find_nothing_missing() -> None:
    # The other side: on this machine (root, writable /proc/sys) nothing is skipped for it.
    from tests.conftest import namespaces_missing

    if os.statvfs("/proc/sys").f_flag & os.ST_RDONLY:
        pytest.skip("this machine's /proc/sys is read-only itself")
    assert namespaces_missing() is None
