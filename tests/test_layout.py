"""What must keep working across the layout: the README's Python snippets, the former
import paths, and run folders written before config.yaml named its task."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
OLD_RUNS = Path(__file__).resolve().parent / "data" / "runs_before_tasks"


def readme_snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def test_the_readme_has_python_snippets() -> None:
    assert len(readme_snippets()) >= 3


@pytest.mark.parametrize("index", range(len(readme_snippets())))
def test_readme_python_snippet_runs(index: int, capsys) -> None:
    code = readme_snippets()[index]
    scope: dict = {"__name__": "snippet"}
    exec(compile(code, f"README.md python snippet {index + 1}", "exec"), scope)
    if "loss" in scope:  # the estimator and model snippets: a finite loss
        assert torch.isfinite(scope["loss"]).all()
    if "out" in scope and hasattr(scope["out"], "ess"):
        assert ((scope["out"].ess >= 1) & (scope["out"].ess <= 5 + 1e-5)).all()
    if "print(" in code:  # training from Python: its figures, errors in [0, 1]
        values = [float(v) for v in capsys.readouterr().out.split()]
        assert values and all(0 <= v <= 1 for v in values)


def test_former_import_paths_still_work() -> None:
    from wsram.classification import build_model as new_build
    from wsram.classification.evaluate import evaluate_run as new_eval
    from wsram.evaluate import evaluate_run
    from wsram.run_dir import read_metrics as new_read
    from wsram.runs import build_model, read_metrics

    assert build_model is new_build and evaluate_run is new_eval and read_metrics is new_read


def test_new_runs_record_their_task(cli, tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = yaml.safe_load((OLD_RUNS / "classification" / "config.yaml").read_text())
    code, _, err = cli("train", "--run-dir", str(run), "--config",
                       str(OLD_RUNS / "classification" / "config.yaml"), "--no-progress")
    assert code == 0, err
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["task"] == "classification" and saved["method"] == cfg["method"]
    # a config file naming another task is refused in one line
    other = tmp_path / "other.yaml"
    other.write_text("task: captioning\n")
    code, _, err = cli("train", "--run-dir", str(tmp_path / "r2"), "--config", str(other))
    assert code == 2 and "for the 'captioning' task" in err


@pytest.mark.parametrize("task", ["classification", "captioning"])
def test_a_run_folder_made_before_the_task_registry_resumes_and_evaluates(
        cli, tmp_path: Path, task: str) -> None:
    run = tmp_path / task
    shutil.copytree(OLD_RUNS / task, run)
    assert "task" not in yaml.safe_load((run / "config.yaml").read_text())
    prefix = ["caption"] if task == "captioning" else []
    code, out, err = cli(*prefix, "train", "--run-dir", str(run), "--resume", "--steps", "6",
                         "--no-progress")
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["step"] == 6
    code, out, err = cli(*prefix, "evaluate", str(run))
    assert code == 0, err
    ev = json.loads((run / "eval.json").read_text())
    assert ev["step"] == 6 and ev["checkpoint"] == "last.pt"
    # the resumed run now names its task; the other task's commands refuse it
    assert yaml.safe_load((run / "config.yaml").read_text())["task"] == task
    other = [] if task == "captioning" else ["caption"]
    code, _, err = cli(*other, "evaluate", str(run))
    assert code == 2 and "not a" in err and len(err.strip().splitlines()) == 1
