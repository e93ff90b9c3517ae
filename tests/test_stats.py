"""Statistics across seeds and the rules that choose a learning rate (stats, study.results)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from wsram.stats import (
    difference_interval,
    first_reach,
    mean_interval,
    ratio_interval,
    smoothed,
    t975,
)
from wsram.study.report import markdown
from wsram.study.results import choose_rates, discover_runs, results, summarise


def test_mean_interval_of_known_samples() -> None:
    iv = mean_interval([1.0, 2.0, 3.0])  # mean 2, s = 1, t_{0.975,2} = 4.303
    h = 4.303 / math.sqrt(3)
    assert iv.mean == 2 and iv.lo == pytest.approx(2 - h) and iv.hi == pytest.approx(2 + h)
    assert iv.n == 3 and not iv.excludes_zero  # 3 seeds this spread: [-0.48, 4.48]
    assert mean_interval([1.0, 1.1, 0.9]).excludes_zero
    one = mean_interval([0.25])
    assert (one.mean, one.lo, one.hi, one.n) == (0.25, 0.25, 0.25, 1) and not one.excludes_zero
    ten = mean_interval([0.0, 1.0] * 5)  # s = 0.527, t_{0.975,9} = 2.262
    assert ten.hi - ten.mean == pytest.approx(2.262 * math.sqrt(10 / 36) / math.sqrt(10))
    with pytest.raises(ValueError):
        mean_interval([])


def test_t_quantiles() -> None:
    assert t975(1) == 12.706 and t975(2.7) == 4.303 and t975(30) == 2.042 and t975(500) == 1.96
    assert t975(31) == 2.042 and t975(45) == 2.021 and t975(60) == 2.000 and t975(121) == 1.96
    with pytest.raises(ValueError):
        t975(0.5)


def test_welch_difference_of_known_samples() -> None:
    a, b = [1.0, 2.0, 3.0], [4.0, 6.0, 8.0]  # variances of the means 1/3 and 4/3
    d = difference_interval(a, b)
    se = math.sqrt(1 / 3 + 4 / 3)
    df = (5 / 3) ** 2 / ((1 / 3) ** 2 / 2 + (4 / 3) ** 2 / 2)  # 2.94 -> t with 2 df
    assert df == pytest.approx(2.941, abs=1e-3)
    assert d.mean == -4 and d.hi == pytest.approx(-4 + 4.303 * se) and d.hi > 0
    assert not d.excludes_zero  # 3 seeds each cannot separate these
    far = difference_interval([1.0, 1.1, 0.9], [5.0, 5.1, 4.9])
    assert far.excludes_zero and far.hi < 0
    assert difference_interval([1.0], [2.0]).n == 1  # no interval from one value a side
    same = difference_interval([1.0, 1.0, 1.0], [2.0, 2.0, 2.0])  # no spread: no interval
    assert same.mean == -1 and same.n == 1 and not same.excludes_null


def test_ratio_of_updates_is_geometric_with_a_log_interval() -> None:
    r = ratio_interval([100.0, 100.0, 100.0], [300.0, 310.0, 290.0])  # A 3x faster
    assert r.mean == pytest.approx(3.0, rel=0.01) and r.lo > 1 and r.excludes_null
    wide = ratio_interval([100.0, 300.0, 200.0], [150.0, 250.0, 400.0])
    assert wide.lo < 1 < wide.hi and not wide.excludes_null and wide.to_dict()["null"] == 1
    with pytest.raises(ValueError):
        ratio_interval([0.0], [1.0])


def test_updates_to_target_on_synthetic_curves() -> None:
    curve = [(10 * i, e) for i, e in enumerate([0.9, 0.2, 0.9, 0.9, 0.5, 0.4, 0.3, 0.2, 0.1])]
    sm = smoothed(curve, 5)
    # a single lucky batch (0.2 at step 10) does not count; the running mean of 5 does
    assert first_reach(sm, 0.5) == 70
    assert first_reach(sm, 0.05) is None  # a curve that never reaches the target
    assert first_reach([(0, 0.3)], 0.3) == 0
    assert smoothed([(0, 1.0), (5, 0.0)], 5) == [(0, 1.0), (5, 0.5)]


def fake_run(root: Path, method: str, lr: float, seed: int, errors: list[float],
             explore: bool = False) -> None:
    """A run folder as a study holds it: config.yaml and metrics.jsonl."""
    d = root / (method + ("+explore" if explore else "")) / f"lr{lr:g}-seed{seed}"
    d.mkdir(parents=True)
    cfg = {"task": "classification", "method": method, "lr": lr, "seed": seed,
           "temperature": 1.5 if explore else 1.0, "coverage": 0.0, "entropy": 0.0}
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    rows = [{"step": 10 * (i + 1), "train/error": e, "time": float(i + 1)}
            for i, e in enumerate(errors)]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_best_rate_rules(tmp_path: Path) -> None:
    good = [0.8, 0.6, 0.4, 0.3, 0.3, 0.3, 0.3, 0.3]
    better = [0.8, 0.4, 0.2, 0.1, 0.1, 0.1, 0.1, 0.1]
    collapse = [0.8, 0.3, 0.1, 0.1, 0.1, 0.4, 0.45, 0.45, 0.45, 0.45]  # up 0.3 from its best
    never = [0.9] * 8
    for s in (0, 1, 2):
        fake_run(tmp_path, "var+c", 0.001, s, good)
        fake_run(tmp_path, "var+c", 0.003, s, better)
        # at the highest rate one seed collapses late: (a) must not pick it
        fake_run(tmp_path, "var+c", 0.01, s, collapse if s == 1 else better)
        fake_run(tmp_path, "wsram+q+c", 0.001, s, never)
        fake_run(tmp_path, "wsram+q+c", 0.003, s, never if s else [0.95] * 8)
    fake_run(tmp_path, "var+c", 0.01, 0, never, explore=True)  # explore runs never vote
    runs = discover_runs(tmp_path)
    assert len(runs) == 16
    collapsed = next(r for r in runs if r.lr == 0.01 and r.seed == 1 and r.variant == "var+c")
    assert not summarise(collapsed)["converged"]
    rates = choose_rates(runs)
    assert rates["var+c"]["paper_rule_lr"] == 0.003 and rates["var+c"]["rule"] == "a"
    # (b): mean final errors 0.3 (0.001), 0.1 (0.003), 0.21 (0.01: one seed at 0.44)
    assert rates["var+c"]["lowest_error_lr"] == 0.003
    assert rates["var+c"]["candidates"]["0.01"]["converged"] == 2
    # nothing converges: the lowest mean final error decides, and says so
    assert rates["wsram+q+c"]["paper_rule_lr"] is None and rates["wsram+q+c"]["rule"] == "b"
    assert rates["wsram+q+c"]["lr"] == 0.001  # mean 0.9 at 0.001 beats 0.917 at 0.003
    assert "var+c+explore" not in rates


def test_seconds_compare_only_on_one_kind_of_device(tmp_path: Path) -> None:
    curve = [0.8, 0.6, 0.4, 0.25, 0.15, 0.1, 0.1, 0.1, 0.1, 0.1]
    for s in (0, 1, 2):
        fake_run(tmp_path, "var+c", 0.003, s, curve)
        fake_run(tmp_path, "wsram+q+c", 0.003, s, curve)
    d = next(d for d in results(tmp_path)["differences"]
             if d["condition"] == "each at its chosen rate")
    assert d["seconds_to"]["0.3"]["mean"] == pytest.approx(1.0)  # all on cpu: they compare
    cfg_path = tmp_path / "wsram+q+c" / "lr0.003-seed0" / "config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg_path.write_text(yaml.safe_dump({**cfg, "device": "cuda:1"}))
    res = results(tmp_path)
    d = next(d for d in res["differences"] if d["condition"] == "each at its chosen rate")
    # same curves: updates compare (ratio 1), seconds do not (one run trained on a GPU)
    assert d["updates_to"]["0.3"]["mean"] == pytest.approx(1.0)
    assert d["seconds_to"]["0.3"] == {"devices": ["cpu", "cuda"]}
    assert res["table"]["wsram+q+c"]["devices"] == ["cpu", "cuda"]
    assert res["table"]["var+c"]["seconds_per_update"]["mean"] == pytest.approx(0.1)
    assert res["table"]["wsram+q+c"]["seconds_per_update"] is None  # not averaged
    md = markdown(res)
    assert "trained on cpu and cuda" in md and "mixed devices" in md
    # a run resumed on another device: its rows say so, whatever its config says now
    rows = (tmp_path / "var+c" / "lr0.003-seed1" / "metrics.jsonl").read_text().splitlines()
    rows = [json.dumps({**json.loads(r), "device": "cuda" if i < 3 else "cpu"})
            for i, r in enumerate(rows)]
    (tmp_path / "var+c" / "lr0.003-seed1" / "metrics.jsonl").write_text("\n".join(rows) + "\n")
    assert results(tmp_path)["table"]["var+c"]["devices"] == ["cpu", "cuda"]


def test_band_of_a_log_figure_is_geometric(tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from wsram.plots import band

    for i, v in enumerate((1.0, 100.0)):
        d = tmp_path / f"r{i}"
        d.mkdir()
        (d / "metrics.jsonl").write_text(
            "".join(json.dumps({"step": s, "diag/grad_var": v}) + "\n" for s in (10, 20)))
    dirs = [tmp_path / "r0", tmp_path / "r1"]
    fig, ax = plt.subplots()
    assert band(ax, dirs, "diag/grad_var", "g", log=True) == 2
    assert band(ax, dirs, "diag/grad_var", "a") == 2
    (geo, arith) = (line.get_ydata() for line in ax.get_lines())
    assert list(geo) == pytest.approx([10.0, 10.0]) and list(arith) == pytest.approx([50.5] * 2)
    lo = ax.collections[0].get_paths()[0].vertices[:, 1]
    assert lo.min() > 0  # the band of the log values stays on a log axis
    plt.close(fig)


def test_the_scale_each_run_settled_on(tmp_path: Path) -> None:
    for seed, fractions in enumerate(([0.0, 1.0, 0.0], [0.0, 0.9, 0.1], [0.1, 0.2, 0.7])):
        fake_run(tmp_path, "var+c", 0.003, seed, [0.8, 0.5, 0.3])
        d = tmp_path / "var+c" / f"lr0.003-seed{seed}"
        cfg = yaml.safe_load((d / "config.yaml").read_text())
        (d / "config.yaml").write_text(yaml.safe_dump({**cfg, "scales": [0.2, 0.4, 0.8]}))
        early = {"step": 5, **{f"diag/scale{i}": f for i, f in enumerate((0.4, 0.3, 0.3))}}
        late = {"step": 30, **{f"diag/scale{i}": f for i, f in enumerate(fractions)}}
        with open(d / "metrics.jsonl", "a") as f:
            f.write(json.dumps(early) + "\n" + json.dumps(late) + "\n")
    res = results(tmp_path)
    run = res["runs"]["var+c/lr0.003-seed2"]
    # the mean of the last 3 diagnostics: (0.4, 0.3, 0.3) and (0.1, 0.2, 0.7)
    assert run["final_scales"] == pytest.approx({"0.2": 0.25, "0.4": 0.25, "0.8": 0.5})
    assert res["table"]["var+c"]["settled_scale"] == {"0.4": 2, "0.8": 1}
    assert "0.4: 2, 0.8: 1 (error" in markdown(res)


def test_fisher_exact_of_known_tables() -> None:
    from wsram.stats import fisher_exact

    assert fisher_exact(3, 4, 1, 4) == pytest.approx(34 / 70)  # the tea-tasting table
    assert fisher_exact(4, 4, 0, 4) == pytest.approx(2 / 70)
    assert fisher_exact(4, 5, 0, 5) == pytest.approx(12 / 252)
    assert fisher_exact(0, 5, 4, 5) == fisher_exact(4, 5, 0, 5)  # symmetric
    assert fisher_exact(0, 3, 0, 3) == 1.0 and fisher_exact(2, 3, 2, 3) == 1.0
    assert fisher_exact(2, 5, 0, 5) == pytest.approx(112 / 252)


def test_mcnemar_exact_of_known_counts() -> None:
    from wsram.stats import mcnemar_exact

    assert mcnemar_exact(0, 0) == 1.0 and mcnemar_exact(3, 3) == 1.0
    # 0 of 6 discordant pairs on one side: 2 x 0.5^6
    assert math.isclose(mcnemar_exact(0, 6), 2 / 64)
    # 2 against 10: 2 x P(X <= 2), X ~ Bin(12, 1/2) = 2 x 79 / 4096
    assert math.isclose(mcnemar_exact(10, 2), 2 * 79 / 4096)
    assert mcnemar_exact(2, 10) == mcnemar_exact(10, 2)


def test_wilson_interval_of_known_proportions() -> None:
    from wsram.stats import wilson_interval

    lo, hi = wilson_interval(50, 1000)  # 5.0%: the standard table gives [3.8%, 6.5%]
    assert math.isclose(lo, 0.0381, abs_tol=5e-4) and math.isclose(hi, 0.0653, abs_tol=5e-4)
    lo, hi = wilson_interval(0, 100)
    assert lo == 0.0 and math.isclose(hi, 0.0370, abs_tol=5e-4)


def test_plateau_rule_on_synthetic_curves() -> None:
    from wsram.stats import plateau

    flat = [(s, 0.05 + 0.3 * math.exp(-s / 500)) for s in range(1000, 20001, 1000)]
    p = plateau(flat)
    assert p.converged and p.gain_last_quarter < 0.005 and p.reached_at <= 5000
    falling = [(s, 0.4 - 0.015 * s / 1000) for s in range(1000, 20001, 1000)]
    p = plateau(falling)
    assert not p.converged and math.isclose(p.gain_last_quarter, 0.015 * 5, rel_tol=1e-6)
    assert p.reached_at == 20000 and math.isclose(p.level, 0.4 - 0.015 * 19)
