"""Helpers shared by the test files."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from wsram.cli import main


@pytest.fixture
def cli(capsys) -> Callable[..., tuple[int, str, str]]:
    """Run the ``wsram`` command in-process: ``cli("train", ...)`` -> (exit code, stdout,
    stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as e:
            main(list(args))
        out = capsys.readouterr()
        return e.value.code, out.out, out.err

    return run
