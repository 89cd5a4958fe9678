"""What `portal` does to start faster: dataclasses without inspect (cli.import_dataclasses),
and in the daemon logging without traceback (cli.import_logging). Each case runs in a fresh
interpreter, as `portal` starts."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run(code: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def test_dataclasses_work_as_always_and_inspect_comes_when_asked() -> None:
    lines = run(
        """
        import sys
        from portal.cli import import_dataclasses
        import_dataclasses()
        import dataclasses
        print("inspect" in sys.modules)

        @dataclasses.dataclass(frozen=True, slots=True)
        class Documented:
            "Has its own docstring."
            a: int = 1

        print("inspect" in sys.modules)

        @dataclasses.dataclass(frozen=True)
        class Plain:
            a: int
            b: str = "x"

        # the one use: a docstring made from the signature, through the real inspect
        print(Plain.__doc__)
        print(type(sys.modules["inspect"].signature).__name__)
        import inspect
        print(inspect is sys.modules["inspect"] and hasattr(inspect, "getsource"))
        print(dataclasses.replace(Documented(), a=2), dataclasses.fields(Plain)[1].default)
        """
    )
    assert lines == [
        "False",
        "False",
        "Plain(a: int, b: str = 'x')",
        "function",
        "True",
        "Documented(a=2) x",
    ]


def test_nothing_to_do_when_either_is_already_there() -> None:
    lines = run(
        """
        import sys, inspect
        from portal.cli import import_dataclasses
        import_dataclasses()
        import dataclasses
        print(dataclasses.inspect is inspect)
        """
    )
    assert lines == ["True"]


def test_logging_works_as_always_and_traceback_comes_with_the_first_exception() -> None:
    lines = run(
        """
        import io, sys
        from portal.cli import import_logging
        import_logging()
        import logging
        print("traceback" in sys.modules)
        out = io.StringIO()
        log = logging.getLogger("t")
        log.addHandler(logging.StreamHandler(out))
        log.warning("plain %d", 1)
        print("traceback" in sys.modules)
        try:
            {}["missing"]
        except KeyError:
            log.exception("failed")
        print("traceback" in sys.modules)
        text = out.getvalue()
        print(text.splitlines()[0], text.splitlines()[-1])
        print("Traceback (most recent call last):" in text)
        import traceback
        print(traceback is sys.modules["traceback"] and hasattr(traceback, "format_exc"))
        """
    )
    assert lines == ["False", "False", "True", "plain 1 KeyError: 'missing'", "True", "True"]


def test_a_module_that_asks_while_it_is_imported_gets_the_real_one(tmp_path: Path) -> None:
    """The stand-in hands out the real module even when asked before `name` has finished."""
    (tmp_path / "eager.py").write_text("import textwrap\nWIDTH = textwrap.dedent('  x')\n")
    lines = run(
        f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        from portal.cli import import_deferring
        import_deferring("eager", "textwrap")
        import eager, textwrap
        print(eager.WIDTH, textwrap is sys.modules["textwrap"], hasattr(textwrap, "wrap"))
        """
    )
    assert lines == ["x True True"]
