"""Polkit-denied cases that tests/platform/test_polkit.py does not make: importing, checking and
replacing an existing name as a user outside the NetworkManager group, under the real polkitd
with the shipped action and rule (that module's `stack` fixture: private bus, private polkitd,
the daemon as user portal). Each refusal is one clear line, changes nothing and is logged.
"""

from __future__ import annotations

import json
import pwd
import re

from tests.platform.test_polkit import Stack
from tests.platform.test_polkit import pytestmark as pytestmark  # noqa: F401 - its skips, reused
from tests.platform.test_polkit import stack as stack  # noqa: F401 - the fixture, reused


def daemon_log(s: Stack) -> str:
    """Everything the stack's programs logged (the daemon's lines among them)."""
    return "".join((s.tmp / name).read_text(errors="replace") for name in s.logs.values())


def test_outsider_may_not_import_check_or_replace(stack: Stack) -> None:  # noqa: F811
    s = stack
    added = s.portal(None, "add", "kept.denied.test", "10.3.3.3", "--any-network")
    assert added.returncode == 0, added.stderr
    hosts = s.tmp / "denied-hosts"
    hosts.write_text("10.6.6.6 imported.denied.test\n")
    hosts.chmod(0o644)
    before = s.portal(None, "list", "--json").stdout
    for args in (
        ("import", str(hosts)),
        ("check",),
        ("add", "kept.denied.test", "10.6.6.6", "--any-network"),
    ):
        out = s.portal(s.outsider, *args)
        assert out.returncode == 1, (args, out.stdout, out.stderr)
        assert out.stderr.startswith("portal: error: not authorised"), out.stderr
        assert len(out.stderr.strip().splitlines()) == 1
    assert s.portal(None, "list", "--json").stdout == before
    uid = pwd.getpwnam(s.outsider).pw_uid
    refused = re.findall(rf"refused (\S+) for uid {uid} pid \d+ \(polkit\)", daemon_log(s))
    assert refused.count("org.portalhelper.portal.manage-overrides") >= 2
    assert "org.portalhelper.portal.check" in refused
    # the same import by a member of the NetworkManager group goes through
    out = s.portal(s.member, "import", str(hosts), "--any-network")
    assert out.returncode == 0, out.stderr
    names = [i["name"] for i in json.loads(s.portal(None, "list", "--json").stdout)]
    assert "imported.denied.test" in names
