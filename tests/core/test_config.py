"""Config parsing: every key, every bad value named."""

from __future__ import annotations

import pytest

from portal.config import Config, apply, load, parse
from portal.core.model import Upstream
from portal.errors import ConfigError


def test_defaults() -> None:
    c = Config()
    assert c.listen == ("127.0.0.153:53",) and c.default_ttl_s == 12 * 3600
    assert c.state_dir == "/var/lib/portal" and c.bus == "system"


def test_full_file() -> None:
    c = parse("""
listen = ["127.0.0.153:53", "[::1]:5353"]
upstreams = ["9.9.9.9", "[2620:fe::fe]:53", "127.0.0.1:5300"]
state_dir = "/tmp/x"
default_ttl = "2h"
max_overrides = 50
admin_group = "wheel"
wiring = "resolved"
probe_urls = ["http://example.test/204"]
""")
    assert c.listen == ("127.0.0.153:53", "[::1]:5353")
    assert c.upstreams == (
        Upstream("9.9.9.9"),
        Upstream("2620:fe::fe"),
        Upstream("127.0.0.1", 5300),
    )
    assert (c.state_dir, c.default_ttl_s, c.max_overrides) == ("/tmp/x", 7200, 50)
    assert c.admin_group == "wheel" and c.wiring == "resolved"


def test_default_ttl_never() -> None:
    assert parse('default_ttl = "never"').default_ttl_s is None


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("listen = [", "invalid config"),
        ('listen = ["nonsense"]', "invalid listen"),
        ('listen = ["127.0.0.1:99999"]', "invalid listen"),
        ('upstreams = ["dns.example"]', "invalid upstream"),
        ('upstreams = ["1.1.1.1:x"]', "invalid port"),
        ('default_ttl = "forty"', "default_ttl"),
        ("max_overrides = 0", "max_overrides"),
        ('wiring = "magic"', "wiring"),
        ('sign_in_notification = "sometimes"', "sign_in_notification: auto, always or never"),
        ("state_dir = 5", "expected text"),
        ('colour = "blue"', "unknown config key"),
        ("listen = 5", "expected a list"),
    ],
)
def test_bad_values_are_named(text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse(text)


def test_flags_override_the_file() -> None:
    c = apply(parse('state_dir = "/a"'), {"state_dir": "/b", "listen": ["127.0.0.1:53"]})
    assert c.state_dir == "/b" and c.listen == ("127.0.0.1:53",)


def test_load(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="does not exist"):
        load(str(tmp_path / "missing.toml"))
    f = tmp_path / "p.toml"
    f.write_text('bus = "session"\n')
    assert load(str(f)).bus == "session"


def test_config_imports_no_edge() -> None:
    # The config is read by the CLI, the agent and the daemon alike: checking a value must never
    # load an edge (sockets, D-Bus), so every check uses portal.core's parsers.
    import ast
    from pathlib import Path

    import portal.config

    tree = ast.parse(Path(portal.config.__file__).read_text())
    imported = [
        (node.module or "") if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    ]
    assert imported and not [m for m in imported if m.startswith("portal.edges")]


def test_listen_and_upstreams_share_one_address_parser() -> None:
    c = parse('listen = ["[fe80::1%lo]:5353"]\nupstreams = ["[FE80::53%lo]", "10.0.0.1:5300"]')
    assert c.listen == ("[fe80::1%lo]:5353",)
    assert c.upstreams == (Upstream("fe80::53%lo"), Upstream("10.0.0.1", 5300))
    with pytest.raises(ConfigError, match="invalid listen address '10.0.0.1%lo'"):
        parse('listen = ["10.0.0.1%lo"]')


def test_sign_in_browser() -> None:
    assert Config().sign_in_browser == ""
    c = parse('sign_in_browser = "firefox --kiosk"\nbrowser = "firefox --private-window %s"')
    assert c.sign_in_browser == "firefox --kiosk" and c.browser.endswith("%s")
    with pytest.raises(ConfigError, match="expected text"):
        parse("sign_in_browser = false")


def test_sign_in_notification() -> None:
    assert Config().sign_in_notification == "auto"
    assert parse('sign_in_notification = "never"').sign_in_notification == "never"


def test_the_sample_config_parses() -> None:
    from pathlib import Path

    sample = Path(__file__).resolve().parents[2] / "portal.toml.example"
    assert parse(sample.read_text()) == Config()
