"""`portal add --ttl 0` is refused: 0 is not a lifetime (`--until-removed` and `--ttl never`
say "no expiry"). The real CLI against the real daemon: exit 2, one line, nothing added."""

from __future__ import annotations

import json

import pytest

from tests.support.daemon import Daemon, run_cli


@pytest.mark.parametrize("ttl", ["0", "0s", "0m", "0.0h"])
def test_a_zero_ttl_is_refused_and_changes_nothing(daemon: Daemon, ttl: str) -> None:
    out = daemon.cli("add", "x.example", "192.0.2.1", "--ttl", ttl)
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stdout == ""
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("portal: error: invalid ttl"), out.stderr
    assert "--until-removed" in lines[0] or "at least 1 second" in lines[0]
    assert json.loads(daemon.cli("list", "--json").stdout) == []


def test_zero_is_refused_before_any_connection() -> None:
    out = run_cli("add", "x.example", "192.0.2.1", "--ttl", "0", bus="unix:path=/nonexistent")
    assert out.returncode == 2
    assert out.stderr == (
        "portal: error: invalid ttl '0': 0 is not a lifetime (--until-removed or --ttl never "
        "mean no expiry)\n"
    )


def test_import_refuses_a_zero_ttl_too() -> None:
    out = run_cli("import", "--ttl", "0", "-", bus="unix:path=/nonexistent", input="10.0.0.1 a.b\n")
    assert out.returncode == 2 and "0 is not a lifetime" in out.stderr


def test_never_still_means_no_expiry(daemon: Daemon) -> None:
    for name, flags in (("a.example", ["--ttl", "never"]), ("b.example", ["--until-removed"])):
        out = daemon.cli("add", name, "192.0.2.1", *flags)
        assert out.returncode == 0 and "until removed" in out.stdout, out.stderr
    listed = json.loads(daemon.cli("list", "--json").stdout)
    assert [o["expires_at"] for o in listed] == [None, None]
