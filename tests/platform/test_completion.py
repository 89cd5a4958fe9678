"""Shell completions (bash, zsh, fish) and the manual page portal(1), checked by the real tools.

bash completion is driven as bash drives it (COMP_WORDS/COMP_CWORD, then the function that
`complete -p portal` names), fish's with `complete -C`; zsh's is parsed and loaded by compinit.
The man page is rendered by man-db with groff's warnings on. The commands, flags and choices
come from portal's own argument parser, so a command or flag added there and not here fails.
Override names for `portal remove` come from a real daemon on a private bus.

Nothing here needs root or touches the machine: the shells run with no user configuration.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from portal.cli import build_parser
from tests.support.daemon import Daemon

ROOT = Path(__file__).resolve().parents[2]
BASH = ROOT / "completions" / "portal.bash"
ZSH = ROOT / "completions" / "_portal"
FISH = ROOT / "completions" / "portal.fish"
MAN = ROOT / "man" / "portal.1"


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("portal has no subcommands")


def flags(parser: argparse.ArgumentParser) -> set[str]:
    """Every long option of a parser that --help shows."""
    return {
        option
        for action in parser._actions
        if action.help != argparse.SUPPRESS
        for option in action.option_strings
        if option.startswith("--")
    }


def choices(parser: argparse.ArgumentParser) -> dict[str, list[str]]:
    return {
        action.option_strings[-1]: [str(c) for c in action.choices]
        for action in parser._actions
        if action.option_strings and action.choices
    }


COMMANDS = subcommands()


def portal_on_path(tmp_path: Path) -> dict[str, str]:
    """An environment whose `portal` is this checkout's CLI, as an installed one would be."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    shim = bin_dir / "portal"
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m portal "$@"\n')
    shim.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "PORTAL_BUS"}
    env.update(PATH=f"{bin_dir}:{os.environ['PATH']}", PYTHONPATH=str(ROOT), HOME=str(tmp_path))
    return env


# --- bash -------------------------------------------------------------------------------------

needs_bash = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")

BASH_DRIVER = r"""
source "$1"
shift
spec=$(complete -p portal) || exit 3
function=$(printf '%s\n' "$spec" | sed -n 's/.*-F \([^ ]*\).*/\1/p')
COMP_WORDS=("$@")
COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
COMP_LINE="$*"
COMP_POINT=${#COMP_LINE}
COMPREPLY=()
"$function" portal "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD - 1]}"
printf '%s\n' "${COMPREPLY[@]}"
"""


def bash_complete(*words: str, env: dict[str, str] | None = None) -> list[str]:
    """What bash offers for the last word of `words` (a command line up to the cursor)."""
    result = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", BASH_DRIVER, "driver", str(BASH), *words],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return sorted(w for w in result.stdout.splitlines() if w)


@needs_bash
def test_bash_registers_the_completion() -> None:
    result = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", f"source {BASH}; complete -p portal"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.stdout.strip() == "complete -F _portal portal"


@needs_bash
def test_bash_offers_every_command() -> None:
    assert bash_complete("portal", "") == sorted(COMMANDS)
    assert bash_complete("portal", "st") == ["status"]
    assert bash_complete("portal", "--") == sorted(flags(build_parser()))


@needs_bash
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_bash_offers_every_flag_of_every_command(command: str) -> None:
    assert bash_complete("portal", command, "--") == sorted(flags(COMMANDS[command]))


@needs_bash
@pytest.mark.parametrize(
    ("command", "option", "values"),
    [(c, o, v) for c in sorted(COMMANDS) for o, v in choices(COMMANDS[c]).items()],
)
def test_bash_offers_the_choices_of_an_option(command: str, option: str, values: list[str]) -> None:
    assert bash_complete("portal", command, option, "") == sorted(values)


@needs_bash
def test_bash_completes_values_and_files(tmp_path: Path) -> None:
    assert bash_complete("portal", "add", "x.example", "--bus", "s") == ["session", "system"]
    assert "never" in bash_complete("portal", "add", "x.example", "--ttl", "")
    hosts = tmp_path / "hosts-portal"
    hosts.write_text("10.0.0.1 a.example\n")
    assert bash_complete("portal", "import", str(tmp_path / "hosts-")) == [str(hosts)]
    # A value already given is not taken for the command's first argument.
    assert bash_complete("portal", "import", "--ttl", "1h", str(tmp_path / "hosts-")) == [
        str(hosts)
    ]


@needs_bash
def test_bash_completes_remove_with_the_daemons_override_names(
    daemon: Daemon, tmp_path: Path
) -> None:
    for name in ("login.hotel.example", "lounge.hotel.example", "other.example"):
        assert daemon.cli("add", name, "192.0.2.1", "--any-network").returncode == 0
    env = portal_on_path(tmp_path)
    env["PORTAL_BUS"] = daemon.bus
    assert bash_complete("portal", "remove", "", env=env) == [
        "login.hotel.example",
        "lounge.hotel.example",
        "other.example",
    ]
    assert bash_complete("portal", "remove", "lo", env=env) == [
        "login.hotel.example",
        "lounge.hotel.example",
    ]
    # --bus on the command line wins over the environment.
    del env["PORTAL_BUS"]
    assert bash_complete("portal", "remove", "--bus", daemon.bus, "o", env=env) == ["other.example"]
    # One name only: nothing after it.
    assert bash_complete("portal", "remove", "other.example", "", env=env) == []


@needs_bash
def test_bash_offers_nothing_for_remove_without_a_daemon(tmp_path: Path) -> None:
    env = portal_on_path(tmp_path)
    env["PORTAL_BUS"] = f"unix:path={tmp_path}/no-bus"
    assert bash_complete("portal", "remove", "", env=env) == []


# --- fish -------------------------------------------------------------------------------------

needs_fish = pytest.mark.skipif(
    shutil.which("fish") is None, reason="fish not installed (apt: fish)"
)


def fish_complete(line: str, env: dict[str, str] | None = None) -> list[str]:
    result = subprocess.run(
        ["fish", "--no-config", "-c", f"source {FISH}; complete -C{line!r}"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return sorted(line.split("\t")[0] for line in result.stdout.splitlines())


@needs_fish
def test_fish_parses_the_completion() -> None:
    result = subprocess.run(
        ["fish", "--no-execute", str(FISH)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr


@needs_fish
def test_fish_offers_every_command_and_flag() -> None:
    assert fish_complete("portal ") == sorted(COMMANDS)
    for command, parser in COMMANDS.items():
        assert fish_complete(f"portal {command} --") == sorted(flags(parser)), command
        for option, values in choices(parser).items():
            assert fish_complete(f"portal {command} {option} ") == sorted(values), option


@needs_fish
def test_fish_completes_remove_with_the_daemons_override_names(
    daemon: Daemon, tmp_path: Path
) -> None:
    for name in ("login.hotel.example", "other.example"):
        assert daemon.cli("add", name, "192.0.2.1", "--any-network").returncode == 0
    env = portal_on_path(tmp_path)
    env["PORTAL_BUS"] = daemon.bus
    assert fish_complete("portal remove ", env) == ["login.hotel.example", "other.example"]
    del env["PORTAL_BUS"]
    assert fish_complete(f"portal remove --bus {daemon.bus} ", env) == [
        "login.hotel.example",
        "other.example",
    ]


# --- zsh --------------------------------------------------------------------------------------

needs_zsh = pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh not installed (apt: zsh)")


@needs_zsh
def test_zsh_parses_and_compinit_loads_the_completion(tmp_path: Path) -> None:
    parsed = subprocess.run(["zsh", "-n", str(ZSH)], capture_output=True, text=True, timeout=30)
    assert parsed.returncode == 0, parsed.stderr
    script = (
        f"fpath=({ZSH.parent} $fpath); autoload -Uz compinit && compinit -u -d {tmp_path}/zcd; "
        "print -r -- $_comps[portal]; autoload +X _portal && print -r -- ${+functions[_portal]}"
    )
    result = subprocess.run(
        ["zsh", "-f", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, HOME=str(tmp_path)),
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["_portal", "1"], result.stdout + result.stderr


def test_zsh_completion_names_every_command_and_flag() -> None:
    text = ZSH.read_text()
    for command, parser in COMMANDS.items():
        assert f"'{command}:" in text, command
        block = re.search(rf"\n\s+{command}\)\n(.*?);;", text, re.S)
        assert block, f"no case for {command}"
        body = block[1] + (text if "$common" in block[1] else "")
        for flag in flags(parser):
            # '--flag[help]', '--flag=[help]:value:...' or '{-h,--help}'[help]'
            assert any(f"{flag}{end}" in body for end in ("[", "=[", "}")), (command, flag)
        for option, values in choices(parser).items():
            assert f"({' '.join(values)})" in body, (command, option)


# --- the manual page --------------------------------------------------------------------------


def render_man(env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    if shutil.which("man") is None:
        pytest.skip("man not installed (apt: man-db)")
    return subprocess.run(
        ["man", "--warnings", "-l", str(MAN)],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, MANWIDTH="80", MAN_DISABLE_SECCOMP="1", **(env_extra or {})),
        check=False,
    )


def test_man_page_renders_without_warnings() -> None:
    result = render_man()
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.startswith("PORTAL(1)")
    assert max(len(line) for line in result.stdout.splitlines()) <= 80


def test_man_warnings_would_be_seen(tmp_path: Path) -> None:
    # The check above can fail: a request groff does not know is reported on stderr.
    broken = tmp_path / "broken.1"
    broken.write_text(MAN.read_text().replace(".SH NAME", ".SH NAME\n.XYZ nonsense", 1))
    if shutil.which("man") is None:
        pytest.skip("man not installed (apt: man-db)")
    result = subprocess.run(
        ["man", "--warnings", "-l", str(broken)],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, MANWIDTH="80", MAN_DISABLE_SECCOMP="1"),
        check=False,
    )
    assert "XYZ" in result.stderr


def test_man_page_documents_every_command_and_flag() -> None:
    text = render_man().stdout
    sections = re.split(r"\n(?=[A-Z][A-Z ]+\n)", text)
    commands = next(s for s in sections if s.startswith("COMMANDS"))
    options = next(s for s in sections if s.startswith("OPTIONS"))
    for flag in flags(build_parser()):
        assert re.search(rf"^\s+(-\w, )?{re.escape(flag)}\b", options, re.M), flag
    # Each command's entry starts at the command's indentation and lists its own flags.
    entries = dict(re.findall(r"\n {7}(\w[\w-]*)(.*?)(?=\n {7}\w|\Z)", commands, re.S))
    assert sorted(entries) == sorted(COMMANDS)
    for command, parser in COMMANDS.items():
        for flag in flags(parser) - {"--help", "--bus"}:
            assert re.search(rf"^\s+{re.escape(flag)}\b", entries[command], re.M), (command, flag)
        for values in choices(parser).values():
            assert "|".join(values) in entries[command], (command, values)
    assert "--bus" in options and "--help" in options


def test_sync_checks_would_catch_a_new_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    # The tests above read the parser: a flag added there is missing everywhere else.
    original: Callable[[], argparse.ArgumentParser] = build_parser

    def with_extra() -> argparse.ArgumentParser:
        parser = original()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                action.choices["list"].add_argument("--brand-new", action="store_true")
        return parser

    monkeypatch.setattr(sys.modules[__name__], "build_parser", with_extra)
    assert "--brand-new" in flags(subcommands()["list"])
    assert "--brand-new" not in BASH.read_text() + ZSH.read_text() + FISH.read_text()
    assert "brand" not in MAN.read_text()


def test_main_builds_only_the_given_command_and_parses_it_the_same() -> None:
    from portal import cli

    assert set(cli.COMMAND_NAMES) == set(subcommands())
    calls = [
        ["add", "login.hotel.test", "10.0.0.1", "--ttl", "30m", "--any-network"],
        ["add", "--bus", "session", "x.test"],
        ["list", "--json"],
        ["status", "--watch", "--bus", "unix:path=/x"],
        ["ask-again", "--all"],
        ["open", "--print", "--max-time", "5m"],
        ["import", "-", "--ttl", "1h"],
        ["daemon", "--listen", "127.0.0.1:5353", "--wiring", "none"],
        ["agent", "--sign-in-notification", "never"],
        ["wire", "--stopped"],
    ]
    for argv in calls:
        alone = cli.build_parser(argv[0])
        names = next(a.choices for a in alone._actions if isinstance(a, argparse._SubParsersAction))
        assert list(names) == [argv[0]]
        assert alone.parse_args(argv) == build_parser().parse_args(argv), argv


def test_help_and_mistakes_get_the_whole_parser(capsys: pytest.CaptureFixture[str]) -> None:
    from portal import cli

    for argv, code in ((["--help"], 0), (["lst"], 2), ([], 2), (["--bus", "x", "list"], 2)):
        with pytest.raises(SystemExit) as exit_:
            cli.main(argv)
        assert exit_.value.code == code, argv
    out = capsys.readouterr()
    assert all(name in out.out for name in cli.COMMAND_NAMES)  # --help lists every command
    assert "invalid choice: 'lst'" in out.err
