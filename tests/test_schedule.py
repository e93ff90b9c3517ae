"""The learning-rate schedule: its shape, its fixed horizon, and an exact resume."""

from __future__ import annotations

import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY as TINY_BASE
from conftest import flags

from wsram.classification import make_config
from wsram.errors import ConfigError
from wsram.run_dir import read_metrics
from wsram.schedule import lr_factor
from wsram.train import train

TINY = dict(TINY_BASE, log_every=1, eval_every=15, checkpoint_every=10, diag_every=0,
            method="var+c", lr_schedule="cosine", warmup=5, lr_min=0.1)


def without_time(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "time"} for r in rows]


def test_cosine_shape() -> None:
    f = [lr_factor("cosine", s, 4, 0.1, 24) for s in range(30)]
    assert f[:4] == [0.25, 0.5, 0.75, 1.0]  # linear warm-up, then the top
    assert f[4] == 1.0 and math.isclose(f[14], 0.1 + 0.9 * 0.5)  # half-way: the middle
    assert all(a >= b for a, b in zip(f[4:], f[5:], strict=False))  # never rises after it
    assert f[24:] == [pytest.approx(0.1)] * 6  # past the horizon: stays at lr_min
    assert [lr_factor("constant", s, 3, 0.5, 10) for s in (0, 2, 3, 50)] == [1 / 3, 1, 1, 1]
    assert lr_factor("constant", 7, 0, 0.0, 10) == 1.0


def test_bad_schedule_keys_are_one_line() -> None:
    for bad in ({"lr_schedule": "step"}, {"lr_min": 1.5}, {"warmup": -1},
                {"schedule_steps": -2}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            make_config(bad)


def test_each_network_follows_the_schedule(tmp_path: Path) -> None:
    """The logged rate is lr x factor, and the baseline network's rate scales too."""
    cfg = make_config({**TINY, "steps": 12, "baseline_lr": 0.01})
    train(cfg, tmp_path / "r", progress=False)
    rows = [r for r in read_metrics(tmp_path / "r") if "train/lr" in r]
    assert [r["step"] for r in rows] == list(range(1, 13))
    for r in rows:
        assert r["train/lr"] == pytest.approx(1e-3 * lr_factor("cosine", r["step"] - 1, 5,
                                                               0.1, 12))
    state = torch.load(tmp_path / "r" / "last.pt", weights_only=True)
    last = lr_factor("cosine", 11, 5, 0.1, 12)
    assert state["baseline_optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.01 * last)
    assert state["schedule_steps"] == 12


@pytest.mark.slow
def test_raising_steps_on_resume_keeps_the_horizon(cli, tmp_path: Path) -> None:
    run = tmp_path / "r"
    assert cli("train", "--run-dir", str(run), "--steps", "10", *flags(TINY),
               "--no-progress")[0] == 0
    code, _, err = cli("train", "--run-dir", str(run), "--resume", "--steps", "16",
                       "--no-progress")
    assert code == 0, err
    lrs = {r["step"]: r["train/lr"] for r in read_metrics(run) if "train/lr" in r}
    assert lrs[16] == pytest.approx(1e-3 * 0.1) == lrs[11]  # past the horizon of 10
    assert "schedule_steps: 10" in (run / "config.yaml").read_text()
    code, _, err = cli("train", "--run-dir", str(run), "--resume", "--steps", "20",
                       "--schedule-steps", "20", "--no-progress")
    assert code == 2 and "schedule_steps 10 -> 20" in err


@pytest.mark.slow
def test_interrupted_cosine_run_resumes_bit_exact(tmp_path: Path) -> None:
    """A cosine run stopped by SIGINT mid-warm-up-or-decay and resumed equals one never
    stopped: the same weights, optimiser state and metrics.jsonl."""
    steps = 40
    ref = tmp_path / "ref"
    train(make_config({**TINY, "steps": steps}), ref, progress=False)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "wsram", "train", "--run-dir", str(run), "--steps",
           str(steps), "--no-progress", *flags(TINY)]
    for target in (4, 23):  # once in the warm-up, once in the decay
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 120
        while proc.poll() is None and time.time() < deadline and max(
                (r["step"] for r in read_metrics(run)), default=0) < target:
            time.sleep(0.005)
        assert proc.poll() is None, proc.stderr.read().decode()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 130
        cmd = [sys.executable, "-m", "wsram", "train", "--run-dir", str(run), "--resume",
               "--no-progress"]
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    a = torch.load(ref / "last.pt", weights_only=True)
    b = torch.load(run / "last.pt", weights_only=True)
    assert b["step"] == steps
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert all(torch.equal(sa[i]["exp_avg"], sb[i]["exp_avg"]) for i in sa)
    assert without_time(read_metrics(ref)) == without_time(read_metrics(run))
