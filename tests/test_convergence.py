"""The convergence study's tables from synthetic run records: the pilot's rule, the
plateau and reach columns, and McNemar's test paired on the same test images."""

from __future__ import annotations

from wsram.study.convergence import (
    ConvRun,
    minutes_table,
    paired_tests,
    pilot_table,
    published_table,
    run_table,
)


def run(name: str, method: str, seed: int, level: float, wrong: list[int] | None = None,
        steps: int = 20000) -> ConvRun:
    curve = [(s, max(level, 0.5 * 1000 / s)) for s in range(1000, steps + 1, 1000)]
    evals = {} if wrong is None else {"last": {
        "test_images": 1000, "test_error_mc": len(wrong) / 1000, "test_error_sampled": 0.1,
        "test_error_deterministic": 0.05, "step": steps, "wrong": {"mc": wrong}}}
    return ConvRun("default", name, method, seed, steps, curve, evals)


def pilot(levels: dict[tuple[str, int], tuple[float, float]]) -> str:
    runs = []
    for (m, s), (const, cos) in levels.items():
        runs += [run(f"{m}-seed{s}", m, s, const), run(f"{m}-seed{s}-cosine20k", m, s, cos)]
    return pilot_table(runs)[-1]


def test_the_pilot_rule() -> None:
    keys = [("var+c", 0), ("var+c", 1), ("wsram+q+c", 0), ("wsram+q+c", 1)]
    assert "earns its extra runs" in pilot({k: (0.04, 0.03) for k in keys})
    one_worse = {k: (0.04, 0.03) for k in keys} | {keys[3]: (0.035, 0.0375)}
    assert "not lower in 1 of the 4" in pilot(one_worse)
    assert "not lower in 1 of the 2" in pilot({k: one_worse[k] for k in keys[2:]})
    assert "no verdict yet" in pilot({keys[0]: (0.04, 0.03)})
    assert "not lower" in pilot({keys[0]: (0.04, 0.04)})  # a tie does not lower it


def test_run_table_and_paired_tests() -> None:
    a = run("var+c-seed0", "var+c", 0, 0.02, wrong=list(range(30)))
    b = run("wsram+q+c-seed0", "wsram+q+c", 0, 0.02, wrong=list(range(10, 70)))
    table = "\n".join(run_table([a]))
    assert "| 5,000 / 10,000 / 17,000 |" in table  # the curve is 500 / update, floor 2%
    lines = paired_tests([a, b])
    row = next(x for x in lines if x.startswith("| var+c | wsram+q+c | 0 |"))
    # 10 images only A gets wrong, 40 only B: McNemar's p far below 0.05, A lower
    assert "| 10 | 40 |" in row and row.rstrip(" |").endswith("var+c")
    assert lines[-1].endswith("none.")  # one seed: no ranking claimed


def test_minutes_come_from_the_quiet_cost_of_an_update() -> None:
    a = run("var+c-seed0", "var+c", 0, 0.02)  # reaches 10% at 5,000 updates, 3% at 17,000
    cost = {"threads": 1, "cpu": "a CPU", "rounds": 10,
            "seconds_per_update": {"var+c": 0.03}}
    row = next(x for x in minutes_table([a], cost) if x.startswith("| var+c-seed0 |"))
    # 5,000 x 0.03 s = 2.5 min; 10,000 -> 5.0; 17,000 -> 8.5; all 20,000 -> 10
    assert row == "| var+c-seed0 | 0.0300 | 2.5 / 5.0 / 8.5 | 10 |"
    assert "not turned into minutes" in minutes_table([a], None)[0]


def test_published_figures_stand_beside_finished_runs_only() -> None:
    done = run("var+c-seed0", "var+c", 0, 0.02, wrong=list(range(26)))
    short = run("wsram+q+c-seed0", "wsram+q+c", 0, 0.02, wrong=list(range(10)))
    short = ConvRun(**{**short.__dict__, "steps": 100000})  # asked for more than it did
    rows = {x.split(" | ")[0].lstrip("| "): x for x in published_table([done, short])}
    assert "| 2.60% (var+c-seed0, 20,000) | not yet |" in rows["default"]
    assert "1.29%" in rows["mnist28"] and "not yet" in rows["mnist28"]
