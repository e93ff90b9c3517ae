"""The convergence driver (benchmarks/convergence.py) on a fresh machine: a run whose
committed record is finished is not trained again, and ``collect`` never replaces a
committed record with a restarted copy that has not caught up with it."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def driver():
    spec = importlib.util.spec_from_file_location(
        "convergence_driver", HERE.parent / "benchmarks" / "convergence.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def fake_run(folder: Path, steps: int, loss: float, evaluated: bool = False) -> None:
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("task: classification\nmethod: var+c\nseed: 0\n")
    rows = [{"step": s, "train/loss": loss + s, "time": 0.1 * s} for s in range(50, steps + 1, 50)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if evaluated:
        for f in ("eval.json", "eval_best.json"):
            (folder / f).write_text("{}\n")


def test_a_finished_record_is_not_trained_again(driver, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(driver, "DOCS_RUNS", tmp_path / "docs")
    done, longer = driver.Spec("default/var+c-seed0", 200), driver.Spec("default/x-seed0", 400)
    fake_run(tmp_path / "docs" / done.name, 200, 1.0, evaluated=True)
    fake_run(tmp_path / "docs" / longer.name, 200, 1.0, evaluated=True)  # short of 400
    assert driver.is_recorded(done) and not driver.is_recorded(longer)
    pool = driver.Pool([done, longer], tmp_path / "root", "wsram", 2, 0.0)
    assert [s.name for s in pool.queue] == [longer.name]


def test_collect_keeps_a_longer_record_and_compares_the_overlap(driver, tmp_path,
                                                                capsys) -> None:
    name = "default/var+c-seed1"  # a long run (100,000 updates) of the driver's list
    fake_run(tmp_path / "docs" / name, 400, 1.0)  # the record: 400 updates
    fake_run(tmp_path / "root" / name, 200, 1.5)  # restarted elsewhere: 200, other numbers
    before = (tmp_path / "docs" / name / "metrics.jsonl").read_text()
    driver.cmd_collect(argparse.Namespace(root=str(tmp_path / "root"),
                                          out=str(tmp_path / "docs")))
    out = capsys.readouterr().out
    assert (tmp_path / "docs" / name / "metrics.jsonl").read_text() == before
    assert "kept the committed record (update 400; this copy is at 200)" in out
    assert "4 logged values up to update 200 in common, 4 differ (first at update 50)" in out
    # once the copy has gone further, it replaces the record
    fake_run(tmp_path / "root2" / name, 600, 1.0)
    driver.cmd_collect(argparse.Namespace(root=str(tmp_path / "root2"),
                                          out=str(tmp_path / "docs")))
    after = (tmp_path / "docs" / name / "metrics.jsonl").read_text()
    assert after == (tmp_path / "root2" / name / "metrics.jsonl").read_text()
