"""The numbers do not move: short runs at a fixed seed give the loss sequences and final
evaluations stored in ``golden/losses.json`` (written by ``golden/make_losses.py``),
whenever the torch build is the one that wrote them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent / "golden"
sys.path.insert(0, str(HERE))
import make_losses  # noqa: E402

GOLDEN = json.loads((HERE / "losses.json").read_text())


@pytest.mark.slow
def test_short_runs_give_the_golden_losses() -> None:
    if make_losses.torch_build() != GOLDEN["torch"]:
        pytest.skip(f"golden numbers are from torch {GOLDEN['torch']}, this is "
                    f"{make_losses.torch_build()}")
    now = make_losses.losses()
    assert set(now) == set(GOLDEN["runs"])
    for name, seq in GOLDEN["runs"].items():
        assert len(seq["loss"]) > 0 and seq["eval"], name
        assert now[name] == seq, f"{name}: the numbers moved"
