"""The command line builds only the sub-command it runs: a light one starts without the heavy
imports (Faust, scipy) of the worker and the replay."""

from __future__ import annotations

import subprocess
import sys

import pytest

from streamproc.cli import COMMAND_MODULES, build_parser, command_of

HEAVY = ("faust", "scipy", "river")


def _imported_after(argv: list[str]) -> set[str]:
    """Top-level packages of ``HEAVY`` imported once ``streamproc.cli`` parsed ``argv``, in a
    fresh interpreter."""
    code = (
        "import sys\n"
        "from streamproc.cli import build_parser, command_of\n"
        f"argv = {argv!r}\n"
        "build_parser(command_of(argv)).parse_args(argv)\n"
        f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    return set(out.stdout.split())


@pytest.mark.parametrize(
    "argv",
    [
        ["status"],
        ["alerts", "tail"],
        ["--config", "c.yaml", "stack", "status"],
        ["baseline", "show", "--model", "m"],
    ],
)
def test_a_light_command_starts_without_faust_scipy_or_river(argv: list[str]) -> None:
    assert _imported_after(argv) == set()


def test_the_worker_command_still_brings_its_imports() -> None:
    # the check above can fail: the same probe sees Faust once the worker's module is built
    assert "faust" in _imported_after(["worker"])


def test_the_full_parser_knows_every_command_and_a_partial_one_only_its_own() -> None:
    every = set(build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    assert set(COMMAND_MODULES) | {"stack", "topics", "schemas", "config"} == every
    only = build_parser("status")._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert set(only) == {"stack", "topics", "schemas", "config", "alerts", "status"}


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["worker", "--loglevel", "INFO"], "worker"),
        (["--config", "status", "replay"], "replay"),  # a config file named "status"
        (["--config=c.yaml", "status"], "status"),
        (["--help", "worker"], None),
        (["-h"], None),
        ([], None),
    ],
)
def test_command_of_finds_the_sub_command_after_the_global_options(
    argv: list[str], command: str | None
) -> None:
    assert command_of(argv) == command
