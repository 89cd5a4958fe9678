"""The Nix files: every one parses, and the NixOS module evaluates as intended with the real
nixpkgs module system.

`nix-instantiate --parse` needs only Nix (Debian's nix-bin). The module evaluation needs a
nixpkgs lib, which this project never carries: it runs when the environment provides one —
`NIXPKGS_LIB` (a nixpkgs `lib` directory) or `<nixpkgs>` on the Nix search path — and skips
with that reason otherwise. It evaluates the module with the real `lib.evalModules` beside stub
declarations of the NixOS options the module touches (real names, simplified types), so it
proves the module's own logic and types, not that the option paths exist in a given NixOS
release or that the package builds: nixos-module/test.nix (a VM test) does that for users with
Nix and KVM.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
NIX_FILES = sorted(
    p for p in REPO.rglob("*.nix") if ".git" not in p.parts and "result" not in p.parts
)
EXPECTED_NIX_FILES = {
    "default.nix",
    "flake.nix",
    "package.nix",
    "nixos-module/default.nix",
    "nixos-module/test.nix",
}

needs_nix = pytest.mark.skipif(
    shutil.which("nix-instantiate") is None,
    reason="needs nix-instantiate (Debian package nix-bin)",
)


def _nix_env(tmp: Path) -> dict[str, str]:
    # Keep Nix's state, cache and config out of the machine's (and /nix): evaluation here
    # never touches a store.
    env = dict(os.environ)
    env.update(
        NIX_STATE_DIR=str(tmp / "state"),
        NIX_STORE_DIR=str(tmp / "store"),
        NIX_LOG_DIR=str(tmp / "log"),
        XDG_CACHE_HOME=str(tmp / "cache"),
        NIX_CONF_DIR=str(tmp / "conf"),
        NIX_REMOTE="",
    )
    (tmp / "conf").mkdir(exist_ok=True)
    (tmp / "conf" / "nix.conf").write_text("build-users-group =\nsandbox = false\n")
    return env


def _instantiate(args: list[str], tmp: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["nix-instantiate", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=_nix_env(tmp),
        check=False,
    )


def test_the_nix_files_exist() -> None:
    found = {str(p.relative_to(REPO)) for p in NIX_FILES}
    assert EXPECTED_NIX_FILES <= found


@needs_nix
@pytest.mark.parametrize("path", NIX_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_parses(path: Path, tmp_path: Path) -> None:
    res = _instantiate(["--parse", str(path)], tmp_path)
    assert res.returncode == 0, res.stderr


@needs_nix
def test_parse_check_can_fail(tmp_path: Path) -> None:
    broken = tmp_path / "broken.nix"
    broken.write_text("{ a = ; }\n")
    assert _instantiate(["--parse", str(broken)], tmp_path).returncode != 0


# --- module evaluation with the real nixpkgs lib ------------------------------------------------


def _nixpkgs_lib() -> Path | None:
    env_lib = os.environ.get("NIXPKGS_LIB")
    if env_lib:
        return Path(env_lib)
    if shutil.which("nix-instantiate") is None:
        return None
    if not os.environ.get("NIX_PATH") and not Path("/nix/var/nix/profiles").is_dir():
        return None  # Debian's nix-bin alone: no channels, nothing to find
    # the user's own Nix setup (channels, nix.conf) decides where <nixpkgs> is
    res = subprocess.run(
        ["nix-instantiate", "--find-file", "nixpkgs"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if res.returncode == 0 and res.stdout.strip():
        lib = Path(res.stdout.strip()) / "lib"
        if (lib / "default.nix").exists():
            return lib
    return None


@pytest.fixture
def nixpkgs_lib() -> Path:
    if shutil.which("nix-instantiate") is None:
        pytest.skip("needs nix-instantiate (Debian package nix-bin)")
    lib = _nixpkgs_lib()
    if lib is None:
        pytest.skip(
            "no nixpkgs lib: set NIXPKGS_LIB to a nixpkgs lib directory or put nixpkgs on "
            "NIX_PATH (this project never carries nixpkgs code)"
        )
    if not (lib / "default.nix").exists():
        pytest.fail(f"NIXPKGS_LIB={lib} has no default.nix")
    return lib


# Stub declarations of the NixOS options the module touches, with their real names and
# simplified types, a fake pkgs, and the values the tests look at.
HARNESS = r"""
{ libPath, modulePath, userModule }:
let
  lib = import (/. + libPath);
  inherit (lib) mkOption types;
  fakePkg = name: {
    type = "derivation";
    inherit name;
    outPath = "/nix/store/00000000000000000000000000000000-${name}";
  };
  pkgs = {
    callPackage = _fn: _args: fakePkg "portal-from-package-nix";
    iproute2 = fakePkg "iproute2";
    formats.toml = _: {
      type = types.attrsOf types.anything;
      generate = name: value: "toml:${name}:" + builtins.toJSON value;
    };
  };
  list = t: mkOption { type = types.listOf t; default = [ ]; };
  str = mkOption { type = types.str; default = ""; };
  unit = types.submodule {
    options = {
      description = str;
      wantedBy = list types.str;
      requiredBy = list types.str;
      before = list types.str;
      after = list types.str;
      path = list types.package;
      restartTriggers = list types.unspecified;
      script = mkOption { type = types.lines; default = ""; };
      postStop = mkOption { type = types.lines; default = ""; };
      serviceConfig = mkOption { type = types.attrsOf types.anything; default = { }; };
    };
  };
  pathUnit = types.submodule { options.wantedBy = list types.str; };
  socket = types.submodule {
    options = {
      wantedBy = list types.str;
      listenStreams = list types.str;
      listenDatagrams = list types.str;
    };
  };
  user = types.submodule {
    options = {
      isSystemUser = mkOption { type = types.bool; default = false; };
      isNormalUser = mkOption { type = types.bool; default = false; };
      group = str;
      description = str;
      home = str;
      extraGroups = list types.str;
    };
  };
  stubs = { config, ... }: {
    options = {
      assertions = list types.unspecified;
      environment.systemPackages = list types.package;
      environment.etc = mkOption {
        type = types.attrsOf (types.submodule { options.source = str; });
        default = { };
      };
      services.dbus.packages = list types.package;
      services.resolved.enable = mkOption { type = types.bool; default = false; };
      systemd.package = mkOption { type = types.package; default = fakePkg "systemd"; };
      systemd.packages = list types.package;
      systemd.services = mkOption { type = types.attrsOf unit; default = { }; };
      systemd.sockets = mkOption { type = types.attrsOf socket; default = { }; };
      systemd.paths = mkOption { type = types.attrsOf pathUnit; default = { }; };
      systemd.user.services = mkOption { type = types.attrsOf unit; default = { }; };
      users.users = mkOption { type = types.attrsOf user; default = { }; };
      users.groups = mkOption { type = types.attrsOf (types.submodule { }); default = { }; };
      security.polkit.extraConfig = mkOption { type = types.lines; default = ""; };
      networking.nameservers = list types.str;
      # NixOS: on unless something else owns /etc/resolv.conf (resolved does)
      networking.resolvconf.enable = mkOption {
        type = types.bool;
        default = !config.services.resolved.enable;
      };
      networking.resolvconf.extraConfig = mkOption { type = types.lines; default = ""; };
      networking.networkmanager.unmanaged = list types.str;
      networking.networkmanager.enable = mkOption { type = types.bool; default = false; };
      # NixOS: "default" (NM writes the servers; through openresolv when it is on)
      networking.networkmanager.dns = mkOption { type = types.str; default = "default"; };
      networking.networkmanager.settings = mkOption {
        type = types.attrsOf (types.attrsOf types.anything);
        default = { };
      };
    };
  };
  # the arguments arrive as strings (--argstr); modules are best given as paths
  eval = lib.evalModules {
    modules = [
      stubs
      (/. + modulePath)
      { _module.args.pkgs = pkgs; }
      (/. + userModule)
    ];
  };
  c = eval.config;
  svc = c.systemd.services;
  # only plain values leave the evaluation (a submodule's config also carries _module)
  pick = names: set: lib.genAttrs names (n: set.${n});
  etc = c.environment.etc;
  userUnits = c.systemd.user.services;
in
{
  failedAssertions = map (a: a.message) (builtins.filter (a: !a.assertion) c.assertions);
  nameservers = c.networking.nameservers;
  resolvconfExtra = c.networking.resolvconf.extraConfig;
  sockets = lib.mapAttrs (
    _: pick [ "wantedBy" "listenStreams" "listenDatagrams" ]
  ) c.systemd.sockets;
  services = builtins.attrNames svc;
  serviceWantedBy = if svc ? portal then svc.portal.wantedBy else null;
  execStopPost = if svc ? portal then svc.portal.serviceConfig.ExecStopPost or null else null;
  link =
    if svc ? portal-link then
      pick [ "script" "postStop" "requiredBy" "before" "wantedBy" ] svc.portal-link
      // { type = svc.portal-link.serviceConfig.Type; }
    else
      null;
  users = lib.mapAttrs (_: pick [ "isSystemUser" "group" "home" ]) c.users.users;
  groups = builtins.attrNames c.users.groups;
  polkit = c.security.polkit.extraConfig;
  config = if etc ? "portal/portal.toml" then etc."portal/portal.toml".source else null;
  agentWantedBy = if userUnits ? portal-agent then userUnits.portal-agent.wantedBy else null;
  unmanaged = c.networking.networkmanager.unmanaged;
  networkmanager = {
    inherit (c.networking.networkmanager) enable dns settings;
  };
  paths = lib.mapAttrs (_: pick [ "wantedBy" ]) c.systemd.paths;
  wire = if svc ? portal-wire then pick [ "wantedBy" "after" ] svc.portal-wire else null;
  resolvconfTriggers = if svc ? resolvconf then svc.resolvconf.restartTriggers else null;
  systemPackages = map (p: p.name) c.environment.systemPackages;
  dbusPackages = map (p: p.name) c.services.dbus.packages;
  systemdPackages = map (p: p.name) c.systemd.packages;
}
"""


def _evaluate(lib: Path, tmp: Path, module_text: str) -> subprocess.CompletedProcess[str]:
    harness = tmp / "harness.nix"
    harness.write_text(HARNESS)
    user = tmp / "user.nix"
    user.write_text(module_text)
    return _instantiate(
        [
            "--eval",
            "--strict",
            "--json",
            str(harness),
            "--argstr",
            "libPath",
            str(lib),
            "--argstr",
            "modulePath",
            str(REPO / "nixos-module"),
            "--argstr",
            "userModule",
            str(user),
        ],  # fmt: skip
        tmp,
    )


def evaluate(lib: Path, tmp: Path, module_text: str) -> dict[str, Any]:
    res = _evaluate(lib, tmp, module_text)
    assert res.returncode == 0, res.stderr
    result: dict[str, Any] = json.loads(res.stdout)
    return result


def toml_settings(result: dict[str, Any]) -> dict[str, Any]:
    prefix = "toml:portal.toml:"
    text = result["config"]
    assert isinstance(text, str) and text.startswith(prefix), text
    settings: dict[str, Any] = json.loads(text[len(prefix) :])
    return settings


def test_defaults_wire_openresolv(nixpkgs_lib: Path, tmp_path: Path) -> None:
    r = evaluate(
        nixpkgs_lib,
        tmp_path,
        '{ networking.nameservers = [ "9.9.9.9" ]; services.portal.enable = true; }',
    )
    assert r["failedAssertions"] == []
    # Nothing static: the helper puts the stub first at run time, only while it has work.
    assert r["nameservers"] == ["9.9.9.9"]
    assert r["resolvconfExtra"] == ""
    assert r["paths"] == {"portal-wire": {"wantedBy": ["paths.target"]}}
    assert r["wire"] == {"wantedBy": ["multi-user.target"], "after": ["resolvconf.service"]}
    assert r["resolvconfTriggers"] == ["portal-wire"]
    assert r["sockets"]["portal"] == {
        "wantedBy": ["sockets.target"],
        "listenStreams": ["", "127.0.0.153:53"],
        "listenDatagrams": ["", "127.0.0.153:53"],
    }
    assert r["serviceWantedBy"] == ["multi-user.target"]
    assert r["link"] is None and r["execStopPost"] is None
    assert r["users"]["portal"] == {
        "isSystemUser": True,
        "group": "portal",
        "home": "/var/lib/portal",
    }
    assert "portal" in r["groups"]
    assert 'subject.isInGroup("networkmanager")' in r["polkit"]
    assert "org.portalhelper.portal.manage-overrides" in r["polkit"]
    assert "resolve1" not in r["polkit"]
    assert r["agentWantedBy"] == ["graphical-session.target"]
    assert r["unmanaged"] == []
    pkg = "portal-from-package-nix"
    assert r["systemPackages"] == r["dbusPackages"] == r["systemdPackages"] == [pkg]
    assert toml_settings(r) == {
        "listen": ["127.0.0.153:53"],
        "admin_group": "networkmanager",
        "wiring": "resolvconf",
    }


def test_the_seeds_setup_keeps_the_pinned_resolver(nixpkgs_lib: Path, tmp_path: Path) -> None:
    # NetworkManager with the user's public resolver pinned in networking.nameservers: the pinned
    # server and NetworkManager's settings stay exactly as the user wrote them (openresolv
    # lists the pinned server, the helper puts the stub before it while it has work; the lab
    # test test_openresolv_as_on_nixos_keeps_the_pinned_server runs that with real openresolv).
    without = evaluate(
        nixpkgs_lib,
        tmp_path,
        '{ networking.networkmanager.enable = true; networking.nameservers = [ "1.1.1.1" ]; }',
    )
    r = evaluate(
        nixpkgs_lib,
        tmp_path,
        """{
          networking.networkmanager.enable = true;
          networking.nameservers = [ "1.1.1.1" ];
          services.portal.enable = true;
        }""",
    )
    assert r["failedAssertions"] == []
    assert r["nameservers"] == without["nameservers"] == ["1.1.1.1"]
    assert (
        r["networkmanager"]
        == without["networkmanager"]
        == {
            "enable": True,
            "dns": "default",
            "settings": {},
        }
    )
    assert r["resolvconfExtra"] == without["resolvconfExtra"] == ""
    assert toml_settings(r)["wiring"] == "resolvconf"
    assert r["paths"]["portal-wire"]["wantedBy"] == ["paths.target"]
    # Disabled again (the switch away from it): resolvconf.service's unit changes, so the
    # switch restarts it and openresolv writes resolv.conf afresh, nothing of portal's left.
    assert without["resolvconfTriggers"] is None and r["resolvconfTriggers"] == ["portal-wire"]


def test_resolved_gets_the_dedicated_link(nixpkgs_lib: Path, tmp_path: Path) -> None:
    r = evaluate(
        nixpkgs_lib,
        tmp_path,
        "{ services.resolved.enable = true; services.portal.enable = true; }",
    )
    assert r["failedAssertions"] == []
    # nothing global: no nameserver line, which resolved would turn into a racing global DNS=
    assert r["nameservers"] == []
    assert "resolv_conf_local_only" not in r["resolvconfExtra"]
    link = r["link"]
    assert link is not None
    assert "ip link add portal0 type dummy" in link["script"]
    assert "169.254.53.53/32" in link["script"]
    assert link["requiredBy"] == ["portal.service"] and link["before"] == ["portal.service"]
    assert link["type"] == "oneshot" and link["wantedBy"] == ["multi-user.target"]
    assert "ip link del portal0" in link["postStop"]
    assert r["unmanaged"] == ["interface-name:portal0"]
    assert r["execStopPost"] == [
        "-+/nix/store/00000000000000000000000000000000-systemd/bin/resolvectl revert portal0"
    ]
    for action in (
        "set-dns-servers",
        "set-domains",
        "set-default-route",
        "set-dns-over-tls",
        "set-dnssec",
        "revert",
    ):
        assert f'"org.freedesktop.resolve1.{action}"' in r["polkit"]
    assert r["paths"] == {} and r["wire"] is None
    assert 'subject.user == "portal"' in r["polkit"]
    assert toml_settings(r)["wiring"] == "resolved"


def test_options_change_what_they_say(nixpkgs_lib: Path, tmp_path: Path) -> None:
    r = evaluate(
        nixpkgs_lib,
        tmp_path,
        """{
          services.portal = {
            enable = true;
            listenAddress = "127.0.0.154";
            group = "wheel";
            agent.enable = false;
            dnsIntegration = "none";
            settings.default_ttl = "4h";
            settings.upstreams = [ "192.0.2.1" ];
          };
        }""",
    )
    assert r["failedAssertions"] == []
    assert r["sockets"]["portal"]["listenStreams"] == ["", "127.0.0.154:53"]
    assert r["nameservers"] == [] and r["link"] is None
    assert 'subject.isInGroup("wheel")' in r["polkit"]
    assert r["agentWantedBy"] is None
    assert toml_settings(r) == {
        "listen": ["127.0.0.154:53"],
        "admin_group": "wheel",
        "wiring": "none",
        "default_ttl": "4h",
        "upstreams": ["192.0.2.1"],
    }


def test_disabled_changes_nothing(nixpkgs_lib: Path, tmp_path: Path) -> None:
    r = evaluate(nixpkgs_lib, tmp_path, '{ services.portal.listenAddress = "127.0.0.154"; }')
    assert r["nameservers"] == [] and r["sockets"] == {} and r["services"] == []
    assert r["users"] == {} and r["polkit"] == "" and r["config"] is None


def test_resolved_mode_needs_resolved(nixpkgs_lib: Path, tmp_path: Path) -> None:
    r = evaluate(
        nixpkgs_lib,
        tmp_path,
        '{ services.portal = { enable = true; dnsIntegration = "resolved"; }; }',
    )
    assert r["failedAssertions"] == [
        'services.portal.dnsIntegration = "resolved" needs services.resolved.enable = true.'
    ]


@pytest.mark.parametrize(
    ("module", "message"),
    [
        ('{ services.portal = { enable = true; listenAddress = "10.0.0.1"; }; }', "listenAddress"),
        ('{ services.portal = { enable = true; listenAddress = "127.0.0.1; rm"; }; }', "listen"),
        ('{ services.portal = { enable = true; dnsIntegration = "dnsmasq"; }; }', "dnsIntegration"),
        ('{ services.portal = { enable = true; listenAdress = "127.0.0.2"; }; }', "listenAdress"),
        ('{ services.portal = { enable = true; settings.wiring = "magic"; }; }', "wiring"),
    ],
)
def test_mistakes_are_rejected(
    nixpkgs_lib: Path, tmp_path: Path, module: str, message: str
) -> None:
    res = _evaluate(nixpkgs_lib, tmp_path, module)
    assert res.returncode != 0, res.stdout
    assert message in res.stderr


# --- the package and module agree with the files they install ----------------------------------


def _shipped_files() -> list[str]:
    dirs = ("systemd", "dbus", "polkit", "completions", "man")
    files = [p for d in dirs for p in (REPO / d).glob("*") if p.is_file()]
    return sorted(str(p.relative_to(REPO)) for p in files)


# The systemd-resolved link outside NixOS (scripts/install ships these); on NixOS the module
# makes its own portal-link unit and resolve1 rule, so the package must not ship a second one.
NOT_FOR_NIXOS = {
    "systemd/portal-link.service",
    "systemd/portal.service.d/link.conf",
    "polkit/51-portal-resolved.rules",
}


def test_package_installs_every_shipped_file() -> None:
    text = (REPO / "package.nix").read_text()
    shipped = _shipped_files()
    assert "systemd/portal.service" in shipped and "systemd/portal.socket" in shipped
    assert "man/portal.1" in shipped and "completions/portal.bash" in shipped
    missing = [f for f in shipped if f not in text and f not in NOT_FOR_NIXOS]
    assert missing == [], f"package.nix does not install {missing}"


def test_units_name_the_path_the_package_rewrites() -> None:
    # package.nix replaces /usr/bin/portal with its own bin/portal and fails the build if a
    # unit still names /usr/bin/portal afterwards; any other path would go unnoticed.
    for unit in sorted((REPO / "systemd").glob("*.service")):
        if f"systemd/{unit.name}" in NOT_FOR_NIXOS:
            continue
        execs = [
            line.split("=", 1)[1].strip()
            for line in unit.read_text().splitlines()
            if line.startswith(("ExecStart=", "ExecStartPre=", "ExecStop=", "ExecReload="))
        ]
        assert execs, f"{unit.name} has no ExecStart"
        for cmd in execs:
            program = cmd.lstrip("-+!@:").split()[0]
            assert program == "/usr/bin/portal", f"{unit.name}: {cmd}"


def test_socket_lists_what_the_module_resets() -> None:
    # The module writes ListenDatagram=/ListenStream= with an empty first entry, which only
    # means something if the packaged socket lists both.
    lines = (REPO / "systemd" / "portal.socket").read_text().splitlines()
    assert "ListenDatagram=127.0.0.153:53" in lines
    assert "ListenStream=127.0.0.153:53" in lines


def test_module_rule_names_the_shipped_actions() -> None:
    policy = (REPO / "polkit" / "org.portalhelper.portal.policy").read_text()
    module = (REPO / "nixos-module" / "default.nix").read_text()
    for action in (
        "org.portalhelper.portal.manage-overrides",
        "org.portalhelper.portal.check",
        "org.portalhelper.portal.network-choices",
    ):
        assert f'id="{action}"' in policy
        assert f'"{action}"' in module
