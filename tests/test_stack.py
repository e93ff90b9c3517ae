"""Stacked runs (``wsram.stack``, ``wsram.stack_train``): a run of a stack is the single run
with its config (the same actions, losses within float rounding), a NaN in one run leaves
the others as they were, an interrupted stack resumes exactly, and each run's folder is a
single run's."""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import pytest
import torch
from conftest import TINY

from wsram.classification import make_config
from wsram.distributed import Dist
from wsram.errors import WsramError
from wsram.run_dir import STACK_FILE, RunDir, read_metrics
from wsram.stack import StackedAdam, StackEngine, _group_norms, stack_problem
from wsram.stack_train import train_stack
from wsram.train import build_state

FAST = dict(TINY, log_every=2, eval_every=4, checkpoint_every=4, diag_every=0)


def test_stacked_adam_is_torch_adam_per_run_bit_for_bit() -> None:
    """Each run's own rate and step count, runs left out of a step untouched; the same
    arithmetic as torch.optim.Adam (foreach), and the norms of clip_grad_norm_."""
    torch.manual_seed(0)
    R, shapes = 3, [(4, 5), (7,)]
    params = {f"p{i}": torch.randn(R, *s).requires_grad_() for i, s in enumerate(shapes)}
    single = [[params[n][r].detach().clone().requires_grad_() for n in params]
              for r in range(R)]
    lrs = [1e-3, 3e-2, 1e-3]
    opts = [torch.optim.Adam(ps, lr=lr, foreach=True) for ps, lr in zip(single, lrs,
                                                                        strict=True)]
    adam = StackedAdam(list(params), R)
    for t in range(6):
        applied = torch.tensor([True, t % 2 == 0, True])
        grads = {n: torch.randn_like(p) for n, p in params.items()}
        for n, p in params.items():
            p.grad = grads[n].clone()
        adam.step(params, lrs, applied)
        for r in range(R):
            for (n, _), q in zip(params.items(), single[r], strict=True):
                q.grad = grads[n][r].clone()
            if applied[r]:
                opts[r].step()
    for r in range(R):
        for (n, p), q in zip(params.items(), single[r], strict=True):
            assert torch.equal(p[r], q), (r, n)
    assert adam.steps == [6, 3, 6]
    grads = [torch.randn(R, 30, 20), torch.randn(R, 20)]
    want = [torch.nn.utils.get_total_norm([g[r] for g in grads]) for r in range(R)]
    assert torch.equal(_group_norms(grads, R, torch.device("cpu")), torch.stack(want))


def test_only_scalar_settings_may_differ_within_a_stack() -> None:
    a = make_config(TINY, method="var+c")
    assert stack_problem([a, make_config(TINY, method="var+c", seed=3, lr=0.01)]) is None
    assert "method" in stack_problem([a, make_config(TINY, method="wsram+c")])
    assert "hidden" in stack_problem([a, make_config(TINY, method="var+c", hidden=8)])
    assert "baseline" in stack_problem([make_config(TINY, method="cnn")] * 2)
    from wsram.captioning import CaptionConfig

    assert "captioning task are not stacked" in stack_problem([CaptionConfig()] * 2)


def _pair(method: str, runs: list[dict]) -> tuple[list, list, StackEngine]:
    cfgs = [make_config(TINY, method=method, **kw) for kw in runs]
    single = [build_state(c, Path("unused"), False, False, Dist()) for c in cfgs]
    stacked = [build_state(c, Path("unused"), False, False, Dist()) for c in cfgs]
    engine = StackEngine([s.model for s in stacked], [s.engine for s in stacked])
    return single, stacked, engine


def _spy_actions(state, seen: list) -> None:
    real = state.model.rollout

    def spy(*args, **kw):
        r = real(*args, **kw)
        seen.append((r.locs.detach(), r.scales))
        return r

    state.engine.rollout_fn = spy


@pytest.mark.slow
@pytest.mark.parametrize("method", ["wsram+q+c", "var+c"])
def test_a_stacked_run_is_the_single_run_with_its_config(method: str) -> None:
    """Run r of a stack and the single run with r's config draw the same actions (the
    same scales, locations within float rounding) for 50 updates, and their losses agree
    within 1e-5 relative (vmap's batched matrix multiplies round differently from one
    run's, so not bit for bit)."""
    runs = [dict(seed=0), dict(seed=1, lr=3e-3, cv_gamma=0.5), dict(seed=2, baseline_lr=3e-3)]
    single, stacked, engine = _pair(method, runs)
    engine.step_module.keep_actions = True
    seen: list = []
    for s in single:
        _spy_actions(s, seen)
    for t in range(50):
        seen.clear()
        rows = [s.engine.update(*s.stream.sample(s.cfg.batch_size), False, t) for s in single]
        batches = [s.stream.sample(s.cfg.batch_size) for s in stacked]
        applied, values = engine.update([b[0] for b in batches], [b[1] for b in batches],
                                        [t] * len(runs))
        assert all(applied) and all(r.applied for r in rows)
        for r, row in enumerate(rows):
            locs, scales = seen[r]
            assert torch.equal(scales, engine.actions[1][r]), (t, r)
            assert torch.allclose(locs, engine.actions[0][r], atol=1e-4, rtol=0), (t, r)
            want, got = row.values["loss"].item(), values[r]["loss"].item()
            assert abs(want - got) <= 1e-5 * max(abs(want), 1e-3), (t, r, want, got)


def _cfgs(n: int, **kw) -> list:
    return [make_config(FAST, method="var+c", seed=s, lr=1e-3 * (1 + s), **kw)
            for s in range(n)]


def _same_run(a: Path, b: Path) -> None:
    def rows(p: Path) -> list:
        return [{k: v for k, v in r.items() if k != "time"} for r in read_metrics(p)]

    assert rows(a) == rows(b)
    ma = torch.load(RunDir(a).last, weights_only=True)
    mb = torch.load(RunDir(b).last, weights_only=True)
    assert ma["step"] == mb["step"]
    assert all(torch.equal(ma["model"][k], mb["model"][k]) for k in ma["model"])
    for key in ("exp_avg", "exp_avg_sq"):
        for i, s in ma["optimizer"]["state"].items():
            assert torch.equal(s[key], mb["optimizer"]["state"][i][key])


@pytest.mark.slow
def test_a_nan_in_one_run_stops_it_and_leaves_the_others_as_they_were(
        tmp_path: Path, monkeypatch, capsys) -> None:
    cfgs = _cfgs(3, steps=10, max_nonfinite=2)
    clean = train_stack(cfgs, [tmp_path / "clean" / n for n in "abc"], progress=False)
    assert [r["stopped_by"] for r in clean] == ["finished"] * 3
    real, calls = StackEngine.update, [0]

    def poisoned(self, xs, ys, steps):
        calls[0] += 1
        if calls[0] in (4, 5):  # two updates in a row of run b (seed 1) see a NaN
            j = [e.cfg.seed for e in self.engines].index(1)
            xs = [x * math.nan if i == j else x for i, x in enumerate(xs)]
        return real(self, xs, ys, steps)

    monkeypatch.setattr(StackEngine, "update", poisoned)
    rows = train_stack(cfgs, [tmp_path / "nan" / n for n in "abc"], progress=False)
    assert [r["stopped_by"] for r in rows] == ["finished", "non-finite", "finished"]
    assert "stopped at update 3: 2 non-finite losses" in rows[1]["error"]
    assert "stopped at update 3" in capsys.readouterr().err
    b = torch.load(RunDir(tmp_path / "nan" / "b").last, weights_only=True)
    assert b["step"] == 3 and all(torch.isfinite(v).all() for v in b["model"].values())
    for n in "ac":
        _same_run(tmp_path / "clean" / n, tmp_path / "nan" / n)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_an_interrupted_stack_resumes_to_the_same_numbers(sig: signal.Signals,
                                                          tmp_path: Path, monkeypatch,
                                                          cli) -> None:
    """Stopped by a signal a single run handles, every run of the stack checkpoints the
    update in progress; resumed as a stack, each ends bit for bit as in a stack never
    stopped."""
    cfgs = _cfgs(2, steps=12)
    whole = tmp_path / "whole"
    train_stack(cfgs, [whole / "a", whole / "b"], progress=False, parent=whole)
    real, calls = StackEngine.update, [0]

    def interrupted(self, xs, ys, steps):
        calls[0] += 1
        if calls[0] == 6:
            os.kill(os.getpid(), sig)  # the loop's handler: stop after this one
        return real(self, xs, ys, steps)

    monkeypatch.setattr(StackEngine, "update", interrupted)
    parts = tmp_path / "parts"
    rows = train_stack(cfgs, [parts / "a", parts / "b"], progress=False, parent=parts)
    assert [r["stopped_by"] for r in rows] == [sig.name] * 2
    assert [r["last_step"] for r in rows] == [6, 6]
    monkeypatch.setattr(StackEngine, "update", real)
    with pytest.raises(WsramError, match="already holds a run"):
        train_stack(cfgs, [parts / "a", parts / "b"], progress=False)
    train_stack(cfgs, [parts / "a", parts / "b"], resume=True, progress=False)
    for n in "ab":
        _same_run(whole / n, parts / n)
    assert json.loads((parts / STACK_FILE).read_text())["runs"] == ["a", "b"]
    # Each run is a single run's folder: it evaluates and resumes alone.
    code, out, err = cli("evaluate", str(parts / "a"))
    assert code == 0, err
    code, _, err = cli("train", "--run-dir", str(parts / "b"), "--resume", "--steps", "14",
                       "--no-progress")
    assert code == 0, err
    assert torch.load(RunDir(parts / "b").last, weights_only=True)["step"] == 14


def test_train_takes_several_seeds_and_rates_as_one_stack(cli, tmp_path: Path) -> None:
    """``wsram train --seeds --lrs``: every pair, a folder each under --run-dir (marked as
    a stack's), a JSON line each; --resume continues them all."""
    from conftest import flags

    parent = tmp_path / "grid"
    args = ["train", "--run-dir", str(parent), "--method", "var+c", "--seeds", "0", "1",
            "--lrs", "0.001", "0.003", *flags(dict(FAST, steps=3)), "--no-progress", "--json"]
    code, out, err = cli(*args)
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    names = ["lr0.001-seed0", "lr0.001-seed1", "lr0.003-seed0", "lr0.003-seed1"]
    assert [Path(r["run_dir"]).name for r in rows] == names
    assert all(r["stopped_by"] == "finished" and r["step"] == 3 for r in rows)
    assert json.loads((parent / STACK_FILE).read_text())["runs"] == names
    cfg = RunDir(parent / "lr0.003-seed1").read_config()
    assert cfg["lr"] == 0.003 and cfg["seed"] == 1
    assert err.count("wsram: finished 3 updates") == 4
    # A stacked run's checkpoint is a single run's: the same keys, the same optimiser state
    single = tmp_path / "single"
    code, _, err = cli("train", "--run-dir", str(single), "--method", "var+c", "--seed", "1",
                       "--lr", "0.003", *flags(dict(FAST, steps=3)), "--no-progress")
    assert code == 0, err
    a = torch.load(RunDir(parent / "lr0.003-seed1").last, weights_only=True)
    b = torch.load(RunDir(single).last, weights_only=True)
    assert set(a) == set(b) and a["config"] == b["config"] and a["step"] == b["step"]
    for opt in ("optimizer", "baseline_optimizer"):
        assert a[opt]["param_groups"] == b[opt]["param_groups"]
        assert {i: set(s) for i, s in a[opt]["state"].items()} == \
            {i: set(s) for i, s in b[opt]["state"].items()}
        assert all(a[opt]["state"][i]["step"] == s["step"] for i, s in b[opt]["state"].items())
    code, out, err = cli("train", "--run-dir", str(parent), "--resume", "--seeds", "0", "1",
                         "--lrs", "0.001", "0.003", "--steps", "5", "--no-progress", "--json")
    assert code == 0, err
    assert [json.loads(line)["step"] for line in out.splitlines()] == [5] * 4


@pytest.mark.slow
def test_compare_trains_each_variants_runs_in_stacks(tmp_path: Path) -> None:
    from wsram.study.commands import compare
    from wsram.study.executor import LocalStacks
    from wsram.study.plan import Plan

    base = make_config(dict(TINY, log_every=2, eval_every=0, checkpoint_every=4,
                            diag_every=0, steps=4))
    out = tmp_path / "study"
    plan = Plan(grid=["var+c"], lrs=[0.001, 0.003], seeds=[0, 1], explore=False)
    res = compare(base, out, plan, progress=False, executor=LocalStacks(2))
    names = [f"lr{lr}-seed{s}" for lr in ("0.001", "0.003") for s in (0, 1)]
    assert set(res["runs"]) == {f"var+c/{n}" for n in names}
    assert json.loads((out / "var+c" / STACK_FILE).read_text())["runs"] == names
    for n in names:
        assert RunDir(out / "var+c" / n).read_metrics()[-1]["step"] == 4
        assert RunDir(out / "var+c" / n).eval_file().is_file()
    before = {p: p.read_text() for p in out.glob("*/*/metrics.jsonl")}
    compare(base, out, plan, progress=False, executor=LocalStacks(2))  # finished: left as they are
    assert before == {p: p.read_text() for p in out.glob("*/*/metrics.jsonl")}


def test_a_stack_that_fails_to_start_leaves_no_half_folders(tmp_path: Path,
                                                            monkeypatch) -> None:
    def broken(self, models, engines):
        raise WsramError("broken on purpose")

    monkeypatch.setattr(StackEngine, "__init__", broken)
    dirs = [tmp_path / "p" / n for n in "ab"]
    with pytest.raises(WsramError, match="broken on purpose"):
        train_stack(_cfgs(2, steps=3), dirs, progress=False)
    assert not any(d.exists() for d in dirs)


def test_compare_refuses_a_stack_size_below_one(cli, tmp_path: Path) -> None:
    code, _, err = cli("compare", "--out", str(tmp_path / "s"), "--stack-size", "0")
    assert code == 2 and "--stack-size: must be at least 1" in err
    from wsram.stack import default_stack_size

    assert default_stack_size("cpu") == 1 and default_stack_size("cuda:1") >= 1
