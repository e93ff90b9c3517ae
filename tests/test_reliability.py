"""Crash safety, non-finite losses, run-folder locks, determinism, and fuzzed configs."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY as TINY_BASE
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wsram import methods
from wsram.classification import make_config
from wsram.classification.config import ClassificationConfig
from wsram.config import field_names, load_yaml
from wsram.errors import ConfigError, WsramError
from wsram.estimators import variational
from wsram.run_dir import RunLock, read_metrics
from wsram.train import train

TINY = dict(TINY_BASE, log_every=3, eval_every=10, checkpoint_every=4, diag_every=5, diag_batch=8,
            diag_repeats=3, method="wsram+q+c")


def tiny(**kw) -> ClassificationConfig:
    return make_config({**TINY, **kw})


def without_time(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "time"} for r in rows]


def final_state(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "last.pt", weights_only=True)["model"]


@pytest.mark.slow
def test_same_seed_same_metrics(tmp_path: Path) -> None:
    train(tiny(steps=12), tmp_path / "a", progress=False)
    train(tiny(steps=12), tmp_path / "b", progress=False)
    train(tiny(steps=12, seed=1), tmp_path / "c", progress=False)
    a, b, c = (without_time(read_metrics(tmp_path / n)) for n in "abc")
    assert a == b and a != c


# Signals, closed pipes and SIGKILL, each followed by a bit-exact resume: test_interrupts.py


def _nan_on(bad_steps: set[int] | None, from_step: int | None = None):
    calls = {"n": 0}

    def estimator(r, cv, gamma):
        calls["n"] += 1
        out = variational(r.log_lik, r.log_sampler)
        if (bad_steps and calls["n"] in bad_steps) or (from_step and calls["n"] >= from_step):
            out.loss = out.loss * math.nan
        return out

    return methods.Method("var", "prior", False, estimator, "VAR")


def test_nonfinite_losses_are_skipped_and_counted(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(methods.METHODS, "var", _nan_on({3, 4, 9}))
    row = train(tiny(method="var", steps=10, diag_every=0), tmp_path, progress=False)
    assert row["step"] == 10 and row["train/nonfinite_total"] == 3
    assert all(torch.isfinite(v).all() for v in final_state(tmp_path).values())


def test_nonfinite_in_a_row_stops_with_the_last_good_checkpoint(tmp_path: Path,
                                                                monkeypatch) -> None:
    monkeypatch.setitem(methods.METHODS, "var", _nan_on(None, from_step=7))
    with pytest.raises(WsramError, match="5 non-finite losses or gradients in a row"):
        train(tiny(method="var", steps=50, diag_every=0, max_nonfinite=5), tmp_path / "a",
              progress=False)
    state = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    assert state["step"] == 6  # the last good update, although checkpoints fall every 4
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    # Non-finite from the first update: the untouched initial state is still saved.
    monkeypatch.setitem(methods.METHODS, "var", _nan_on(None, from_step=1))
    with pytest.raises(WsramError, match="holds the last good state"):
        train(tiny(method="var", steps=50, diag_every=0, max_nonfinite=3), tmp_path / "b",
              progress=False)
    assert torch.load(tmp_path / "b" / "last.pt", weights_only=True)["step"] == 0


def test_a_run_folder_in_use_is_refused(tmp_path: Path) -> None:
    tmp_path.mkdir(exist_ok=True)
    with RunLock(tmp_path), pytest.raises(WsramError, match="in use by another wsram process"):
        train(tiny(steps=2), tmp_path, progress=False)


def test_a_folder_in_use_before_its_first_checkpoint_says_only_that(cli, tmp_path: Path
                                                                     ) -> None:
    """A second train into a folder whose training holds it but has no checkpoint yet:
    one line, that it is in use and by which pid; with --resume too (no "afresh")."""
    run = tmp_path / "r"
    run.mkdir()
    (run / "config.yaml").write_text("task: classification\nmethod: var\n")
    with RunLock(run):
        for extra in ([], ["--resume"]):
            code, _, err = cli("train", "--run-dir", str(run), "--no-progress", *extra)
            assert code == 2, err
            assert err.strip() == (f"wsram: error: {run}: in use by another wsram process "
                                   f"(pid {os.getpid()})"), err
    assert sorted(p.name for p in run.iterdir()) == [".lock", "config.yaml"]


def test_an_unwritable_run_folder_fails_at_start(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    t = time.time()
    with pytest.raises(WsramError, match="cannot write to the run folder"):
        train(tiny(steps=10**6), blocker / "run", progress=False)
    assert time.time() - t < 30


KEYS = field_names(ClassificationConfig)
VALUES = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                   st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
                   st.lists(st.floats(-2, 2), max_size=4), st.dictionaries(st.text(max_size=3),
                                                                            st.integers(),
                                                                            max_size=2))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=10)), VALUES,
                       max_size=6))
@pytest.mark.slow
def test_config_fuzz_gives_a_config_or_a_clear_error(values: dict) -> None:
    try:
        cfg = make_config(values)
    except ConfigError as e:
        assert str(e) and "\n" not in str(e)
        return
    assert isinstance(cfg, ClassificationConfig)
    assert cfg.samples >= 1 and all(0 < s <= 1 for s in cfg.scales)
    assert cfg.digit_max <= cfg.canvas_size and cfg.loc_std > 0


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=200))
def test_config_file_fuzz(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "fuzz.yaml"
    path.write_bytes(data)
    try:
        values = load_yaml(path)
        make_config(values)
    except ConfigError as e:
        assert str(e) and "\n" not in str(e)


def test_checkpoint_file_is_never_torn(tmp_path: Path, monkeypatch) -> None:
    """A crash while writing leaves the previous checkpoint intact and no stray file."""
    from wsram import checkpoint

    checkpoint.save(tmp_path / "last.pt", {"step": 1})

    def crash(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError):
        checkpoint.save(tmp_path / "last.pt", {"step": 2})
    assert checkpoint.load(tmp_path / "last.pt")["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_compile_failure_falls_back_to_eager(tmp_path: Path, monkeypatch, capsys) -> None:
    def broken_compile(fn):
        def run(*args, **kwargs):
            raise RuntimeError("no compiler here")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    row = train(tiny(steps=5, compile=True, diag_every=0), tmp_path / "a", progress=False)
    assert row["step"] == 5
    assert "torch.compile failed (RuntimeError: no compiler here); running eagerly" \
        in capsys.readouterr().err
    # Falling back changes nothing: the same run as without the switch.
    train(tiny(steps=5, diag_every=0), tmp_path / "b", progress=False)
    a, b = final_state(tmp_path / "a"), final_state(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_openmp_workers_spin_briefly_unless_the_user_says_otherwise() -> None:
    # Long-spinning OpenMP workers stall training when other processes share the cores: the
    # package asks for a short spin before torch loads, and keeps a user's own choice.
    code = "import os, wsram; print(os.environ.get('GOMP_SPINCOUNT'))"
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}

    def spin(**extra: str) -> str:
        out = subprocess.run([sys.executable, "-c", code], env={**env, **extra},
                             capture_output=True, text=True)
        return out.stdout.strip()

    assert spin() == "1000"
    assert spin(GOMP_SPINCOUNT="300000") == "300000"
    assert spin(OMP_WAIT_POLICY="ACTIVE") == "None"  # the user's policy decides
