"""Helpers shared by the test files: the tiny configs every end-to-end test trains, and
the ``wsram`` command run in-process.

``pytest -m "not slow"`` is the quick subset (under a minute on 2 cores): estimators,
configs, CLI errors, the layout and one tiny end-to-end run; the README's test command
runs everything.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from wsram.cli import main

#: the tiny classification setup of the end-to-end tests (seconds per run on a CPU);
#: files add the intervals they need: ``{**TINY, "log_every": 1}``
TINY: dict[str, Any] = dict(
    canvas_size=32, digit_min=10, digit_max=20, hidden=16, patch=6, context_size=8,
    glimpses=2, batch_size=8, samples=3, eval_size=20, test_size=30, eval_samples=2,
    threads=1)

#: the tiny captioning setup, as ``wsram caption train`` flags
CAPTION_TINY = ["--num-train", "40", "--num-val", "12", "--num-test", "10", "--hidden", "16",
                "--embed", "8", "--batch-size", "6", "--samples", "3", "--eval-size", "8",
                "--log-every", "4", "--eval-every", "8", "--checkpoint-every", "8",
                "--diag-every", "8", "--diag-batch", "4", "--diag-repeats", "2", "--no-progress"]


def flags(config: dict[str, Any]) -> list[str]:
    """A config mapping as ``--key=value`` flags."""
    return [f"--{k.replace('_', '-')}={v}" for k, v in config.items()]


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
