"""What must keep working across the layout: the README's Python snippets, runs that name
their task, and run folders written before config.yaml named its task (``wsram
migrate``)."""

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
    assert code == 2 and "other.yaml: a caption config, not a classification one" in err


@pytest.mark.slow
@pytest.mark.parametrize("task", ["classification", "captioning"])
def test_a_run_folder_made_before_the_task_registry_is_migrated(
        cli, tmp_path: Path, task: str) -> None:
    """Used as it is, an old folder gets one line naming ``wsram migrate``; migrated, it
    resumes and evaluates, and the other task's commands refuse it."""
    run = tmp_path / task
    shutil.copytree(OLD_RUNS / task, run)
    assert "task" not in yaml.safe_load((run / "config.yaml").read_text())
    # the oldest checkpoints kept the data stream's state under "canvas_rng"
    state = torch.load(run / "last.pt", weights_only=True)
    state["canvas_rng"] = state.pop("data_rng")
    torch.save(state, run / "last.pt")
    old_last = (run / "last.pt").read_bytes()
    prefix = ["caption"] if task == "captioning" else []
    code, _, err = cli(*prefix, "train", "--run-dir", str(run), "--resume", "--steps", "6",
                       "--no-progress")
    assert code == 2 and f"wsram migrate {run}" in err and len(err.strip().splitlines()) == 1
    assert (run / "last.pt").read_bytes() == old_last  # nothing touched
    code, out, err = cli("migrate", str(run))
    assert code == 0 and "migrated config.yaml" in out and "last.pt" in out, out + err
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["task"] == task
    assert task == "captioning" or saved["holdout_every"] == 0  # what the old run did
    state = torch.load(run / "last.pt", weights_only=True)
    assert "data_rng" in state and "canvas_rng" not in state
    code, out, _ = cli("migrate", str(run))
    assert code == 0 and "nothing to do" in out
    code, out, err = cli(*prefix, "train", "--run-dir", str(run), "--resume", "--steps", "6",
                         "--no-progress", "--json")
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["step"] == 6
    code, out, err = cli(*prefix, "evaluate", str(run))
    assert code == 0, err
    ev = json.loads((run / "eval.json").read_text())
    assert ev["step"] == 6 and ev["checkpoint"] == "last.pt"
    other = [] if task == "captioning" else ["caption"]
    code, _, err = cli(*other, "evaluate", str(run))
    assert code == 2 and "not a" in err and len(err.strip().splitlines()) == 1


def test_migrate_refuses_what_is_not_a_run_folder(cli, tmp_path: Path) -> None:
    code, _, err = cli("migrate", str(tmp_path / "none"))
    assert code == 2 and "no such run folder" in err
    code, _, err = cli("migrate", str(tmp_path))
    assert code == 2 and "not a run folder" in err
    for text, says in [("", "no task recognises it"), ("foo: 1\n", "no task recognises it"),
                       ("task: foo\n", "unknown task 'foo'"),
                       ("glimpses: 2\ncanvas_size: 32\nsamples: 0\n", "does not convert")]:
        (tmp_path / "config.yaml").write_text(text)
        code, _, err = cli("migrate", str(tmp_path))
        assert code == 2 and says in err and str(tmp_path) in err, (text, err)
        assert len(err.strip().splitlines()) == 1


def test_an_old_folder_resumed_from_python_names_migrate(tmp_path: Path) -> None:
    from wsram.classification import make_config
    from wsram.errors import WsramError
    from wsram.train import train

    run = tmp_path / "old"
    shutil.copytree(OLD_RUNS / "classification", run)
    cfg = make_config(yaml.safe_load((run / "config.yaml").read_text()), steps=6)
    with pytest.raises(WsramError, match=f"wsram migrate {run}"):
        train(cfg, run, resume=True, progress=False)
