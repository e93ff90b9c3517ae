"""The convergence study's tables and figures (docs/convergence.md), from the run folders'
files alone: ``config.yaml``, ``metrics.jsonl``, and the test evaluations of ``last.pt``
and ``best.pt``. Runs sit in ``ROOT/<setup>/<method>-seed<S>[<suffix>]``.

- the pilot: constant rate against a cosine schedule, paired by method and seed, at the
  update the cosine horizon ends, and the verdict of the rule written before it ran;
- per setup: a figure of validation curves (log-scaled updates, seeds as separate lines)
  and a table per run (updates to 10%, 5%, 3% validation error, the plateau rule, the final
  test errors with the 95% interval of the test-set error);
- per setup and seed: each pair of methods on the same test canvases (McNemar's exact
  test), and a ranking only where every seed agrees and every test says so;
- per setup, updates turned into minutes with the quiet one-thread cost of an update of
  each method (``cost.json``, written by ``benchmarks/method_cost.py --out``), never with
  the wall clock of a machine shared with other runs;
- our best test errors beside the published figures of docs/benchmarks.md, with what
  differs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

from wsram.atomic import atomic_write_bytes, atomic_write_text
from wsram.plots import method_style, pyplot
from wsram.run_dir import RunDir
from wsram.stats import first_reach, mcnemar_exact, plateau, wilson_interval

KEY = "eval/val_error_mc"  # the validation error with the mean of 10 trajectories
LEVELS = (0.10, 0.05, 0.03)
COSINE = "-cosine"  # the suffix of the pilot's cosine runs
ALPHA = 0.05
COST_FILE = "cost.json"  # beside the report: seconds per update per setup and method

#: the published figures of docs/benchmarks.md for the setups of this study, as quoted
#: there (sources and caveats in that file), and what differs from our runs
PUBLISHED = {
    "mnist28": ("RAM (Mnih et al. 2014), 6 glimpses: 1.29% [D, B]",
                "RAM: 60,000 training digits, REINFORCE with a 0/1 reward; ours: 3,600 "
                "bundled digits, a context network"),
    "cluttered60": ("RAM, 8 glimpses: 5.23% [B]; tfRAM (its own runs), 6 glimpses: 3.33%",
                    "theirs: 60,000 training digits, 3 scales at every glimpse; ours: 3,600 "
                    "bundled digits, 6 glimpses of one scale each, a context network"),
    "default": ("WS-RAM paper (Ba et al. 2015), Figure 3: a plot; its numbers are lost in "
                "our copy of the paper and are not quoted",
                "the paper: 60,000 training digits, 10 million updates; ours: 3,600 bundled "
                "digits, at most 100,000 updates"),
}


@dataclass(frozen=True)
class ConvRun:
    """One run folder of the study, read once."""

    setup: str
    name: str  # <method>-seed<S>[suffix]
    method: str
    seed: int
    steps: int  # the updates it was asked for
    curve: list[tuple[int, float]]  # (update, validation error) at every evaluation
    evals: dict[str, dict[str, Any]]  # "last" / "best" -> its test evaluation
    #: the update of test evaluations left from before the run went on (not shown, not
    #: paired: they describe an earlier model), None when they are current or absent
    stale_at: int | None = None

    @property
    def done(self) -> int:
        return self.curve[-1][0] if self.curve else 0

    @property
    def cosine(self) -> bool:
        return COSINE in self.name


def read_runs(root: Path) -> list[ConvRun]:
    out = []
    for cfg_dir in sorted(p for p in root.glob("*/*") if RunDir(p).has_config()):
        run = RunDir(cfg_dir)
        cfg = run.read_config()
        curve = [(int(r["step"]), float(r[KEY])) for r in run.read_metrics() if KEY in r]
        evals = {w: run.read_json(run.eval_file(w).name) for w in ("last", "best")
                 if run.eval_file(w).is_file()}
        at = evals.get("last", {}).get("step")
        stale = at is not None and curve and at != curve[-1][0]
        out.append(ConvRun(cfg_dir.parent.name, cfg_dir.name, cfg["method"], int(cfg["seed"]),
                           int(cfg["steps"]), curve, {} if stale else evals,
                           at if stale else None))
    return out


def _at(run: ConvRun, step: int) -> float | None:
    return next((v for s, v in run.curve if s == step), None)


def pilot_table(runs: list[ConvRun], horizon: int = 20000) -> list[str]:
    """Constant against cosine at update ``horizon``, and the rule's verdict."""
    rows, wins, pairs = [], 0, 0
    for cos in sorted((r for r in runs if r.cosine), key=lambda r: (r.method, r.seed)):
        const = next((r for r in runs if r.setup == cos.setup and not r.cosine
                      and r.method == cos.method and r.seed == cos.seed), None)
        a = _at(const, horizon) if const else None
        b = _at(cos, horizon)
        if a is None or b is None:
            rows.append(f"| {cos.method} | {cos.seed} | {_pct(a)} | {_pct(b)} | not yet "
                        f"(cosine at update {cos.done}) |")
            continue
        pairs += 1
        wins += b < a
        rows.append(f"| {cos.method} | {cos.seed} | {_pct(a)} | {_pct(b)} | "
                    f"{100 * (b - a):+.2f} |")
    if pairs > wins:  # one pair where cosine did not lower the error decides the rule
        verdict = (f"cosine was not lower in {pairs - wins} of the {pairs} pairs finished: "
                   "it earns no extra runs; the long study stays at the constant rate.")
    elif pairs < 4:
        verdict = f"{pairs} of 4 pairs finished, cosine lower in each: no verdict yet."
    else:
        verdict = "cosine lower in 4 of 4 pairs: it earns its extra runs."
    return ["| method | seed | constant | cosine | cosine - constant (points) |",
            "|---|---|---|---|---|", *rows, "", f"Rule (section 1): {verdict}"]


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def _test_cell(ev: dict[str, Any] | None) -> str:
    if not ev:
        return "-"
    n, mc = ev["test_images"], ev["test_error_mc"]
    lo, hi = wilson_interval(round(mc * n), n)
    return (f"{_pct(ev['test_error_sampled'])} / **{_pct(mc)}** [{100 * lo:.1f}, "
            f"{100 * hi:.1f}] / {_pct(ev['test_error_deterministic'])}")


def _plateau_cell(run: ConvRun) -> str:
    if len(run.curve) < 6:
        return "-"
    p = plateau(run.curve)
    state = ("converged" if p.converged else "still improving") + (
        "" if run.done >= run.steps else f", at {run.done:,} of {run.steps:,}")
    return (f"{state} ({100 * p.gain_last_quarter:+.2f} pts in the last quarter; level "
            f"{_pct(p.level)} from update {p.reached_at:,})")


def run_table(runs: list[ConvRun]) -> list[str]:
    names = RunDir(".")
    head = [f"| run | updates | to 10% / 5% / 3% | plateau | test, {names.last.name}: 1 / mean "
            f"of 10 [95%] / det. | test, {names.best.name} (update) |",
            "|---|---|---|---|---|---|"]
    rows = []
    for r in runs:
        reach = " / ".join(f"{s:,}" if (s := first_reach(r.curve, lv)) is not None else "-"
                           for lv in LEVELS)
        best = r.evals.get("best")
        best_cell = f"{_test_cell(best)} ({best['step']:,})" if best else "-"
        last_cell = _test_cell(r.evals.get("last")) if r.stale_at is None else \
            f"not yet (last tested at update {r.stale_at:,})"
        rows.append(f"| {r.name} | {r.done:,} | {reach} | {_plateau_cell(r)} | "
                    f"{last_cell} | {best_cell} |")
    return head + rows


def paired_tests(runs: list[ConvRun]) -> list[str]:
    """McNemar per seed between every two methods with final evaluations on one setup."""
    done = [r for r in runs if "last" in r.evals and not r.cosine]
    lines = ["| A | B | seed | A wrong only | B wrong only | p (McNemar) | lower error |",
             "|---|---|---|---|---|---|---|"]
    verdicts: dict[tuple[str, str], list[str]] = {}
    for a, b in combinations(sorted({r.method for r in done}), 2):
        for seed in sorted({r.seed for r in done}):
            ra = next((r for r in done if r.method == a and r.seed == seed), None)
            rb = next((r for r in done if r.method == b and r.seed == seed), None)
            if ra is None or rb is None or \
                    ra.evals["last"]["step"] != rb.evals["last"]["step"]:  # one budget only
                continue
            wa = set(ra.evals["last"]["wrong"]["mc"])
            wb = set(rb.evals["last"]["wrong"]["mc"])
            p = mcnemar_exact(len(wa - wb), len(wb - wa))
            better = "-" if p >= ALPHA else (a if len(wa) < len(wb) else b)
            verdicts.setdefault((a, b), []).append(better)
            lines.append(f"| {a} | {b} | {seed} | {len(wa - wb)} | {len(wb - wa)} | "
                         f"{p:.3g} | {better} |")
    claims = [f"{v[0]} has the lower error than {b if v[0] == a else a} (every seed, "
              f"p < {ALPHA} each)" for (a, b), v in verdicts.items()
              if len(v) >= 2 and v[0] != "-" and all(x == v[0] for x in v)]
    return lines + ["", "Rankings claimed (every seed agrees, every test below "
                    f"{ALPHA}): " + ("; ".join(claims) if claims else "none.")]


def read_costs(path: Path) -> dict[str, dict[str, Any]]:
    """``cost.json``: per setup, the seconds one update of each method takes (empty when
    the file is absent)."""
    return json.loads(path.read_text()) if path.is_file() else {}


def minutes_table(runs: list[ConvRun], cost: dict[str, Any] | None) -> list[str]:
    """Updates to each level and the whole run, in minutes at the quiet per-update cost."""
    if not cost:
        return ["No quiet per-update cost for this setup (`benchmarks/method_cost.py --out`):"
                " updates are not turned into minutes."]
    per = cost["seconds_per_update"]
    lines = [f"Minutes at the quiet cost of one update ({cost['threads']} thread, "
             f"`benchmarks/method_cost.py` on {cost['cpu']}, median of {cost['rounds']} "
             "rounds), not the wall clock of the shared machine the runs trained on:", "",
             "| run | seconds per update | minutes to 10% / 5% / 3% | minutes for its updates |",
             "|---|---|---|---|"]
    for r in runs:
        if r.method not in per:
            continue
        sec = per[r.method]
        reach = " / ".join(f"{s * sec / 60:.1f}" if (s := first_reach(r.curve, lv))
                           is not None else "-" for lv in LEVELS)
        lines.append(f"| {r.name} | {sec:.4f} | {reach} | {r.done * sec / 60:.0f} |")
    return lines


def published_table(runs: list[ConvRun]) -> list[str]:
    """Per setup, our lowest finished test error (``last.pt``, mean of 10) beside the
    published figures."""
    lines = ["| setup | ours: lowest test error, mean of 10 (run, updates) | the CNN | "
             "published | what differs |", "|---|---|---|---|---|"]
    for setup in sorted({r.setup for r in runs} | set(PUBLISHED)):
        done = [r for r in runs if r.setup == setup and not r.cosine and "last" in r.evals
                and r.done >= r.steps]
        att = [r for r in done if r.method != "cnn"]
        cnn = [r for r in done if r.method == "cnn"]
        pub, diff = PUBLISHED.get(setup, ("-", "-"))
        lines.append(f"| {setup} | {_lowest(att)} | {_lowest(cnn)} | {pub} | {diff} |")
    return lines


def _lowest(runs: list[ConvRun]) -> str:
    if not runs:
        return "not yet"
    b = min(runs, key=lambda x: x.evals["last"]["test_error_mc"])
    return f"{_pct(b.evals['last']['test_error_mc'])} ({b.name}, {b.done:,})"


def figure(runs: list[ConvRun], path: Path, title: str) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2), layout="constrained")
    for r in runs:
        if not r.curve:
            continue
        dash = (":", "-.") if r.cosine else ("-", "--")
        style = {**method_style(r.method), "linestyle": dash[r.seed % 2]}
        ax.plot([s for s, _ in r.curve], [100 * v for _, v in r.curve],
                label=f"{r.name} ({r.done:,})", **style)
    ax.set_xscale("log")
    ax.set_yscale("log")
    plain = plt.FuncFormatter(lambda v, _: f"{v:g}")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(plain)
        axis.set_minor_formatter(plt.FuncFormatter(
            lambda v, _: f"{v:g}" if f"{v:g}"[0] in "235" else ""))
    ax.set_xlabel("updates")
    ax.set_ylabel("validation error, mean of 10 trajectories (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    atomic_write_bytes(path, lambda f: fig.savefig(f, dpi=110, format="png"))
    plt.close(fig)


def write_report(root: str | Path, out_dir: str | Path) -> Path:
    """``tables.md`` and one figure per setup into ``out_dir``; returns the tables' path."""
    root, out_dir = Path(root), Path(out_dir)
    runs = read_runs(root)
    costs = read_costs(out_dir / COST_FILE)
    lines = ["<!-- written by: python benchmarks/convergence.py report -->", "",
             "## The pilot", "", *pilot_table(runs)]
    for setup in sorted({r.setup for r in runs}):
        mine = [r for r in runs if r.setup == setup]
        long = [r for r in mine if not r.cosine]
        figure(mine, out_dir / f"{setup}.png", f"{setup}: validation error (seed 0 solid, "
               "seed 1 dashed; cosine runs dotted)")
        lines += ["", f"## {setup}", "", f"![{setup}]({setup}.png)", "",
                  *run_table(mine), "", *minutes_table(mine, costs.get(setup)), "",
                  "Paired on the same test canvases "
                  f"({RunDir('.').last.name}, mean of 10):", "", *paired_tests(long)]
    lines += ["", "## Beside the published figures", "", *published_table(runs), "",
              "Sources [D] and [B] and their caveats: docs/benchmarks.md. A finished run "
              f"only (all its updates, `{RunDir('.').last.name}` tested); the errors are not "
              "comparable one to one (the last column)."]
    path = out_dir / "tables.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


__all__ = ["ConvRun", "read_runs", "write_report"]
