"""What a study shows: ``results.md`` (tables of the results with their intervals),
``results.json`` and the figures, all from ``results.results()``; :func:`write_results`
writes them."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from wsram.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from wsram.classification.task import method_of
from wsram.plots import band, method_style, pyplot
from wsram.run_dir import RunDir
from wsram.study.results import (
    CONVERGED_BELOW,
    ERROR_LEVELS,
    FINAL_POINTS,
    MAX_RISE,
    SMOOTH,
    results,
)

LAST = RunDir(".").last.name  # the checkpoint whose test errors the tables show


def write_results(out_dir: str | Path, max_step: int | None = None) -> dict[str, Any]:
    """results.json, results.md and the figures, from the run folders' files alone (training
    curves cut at update ``max_step`` when given)."""
    out_dir = Path(out_dir)
    res = results(out_dir, max_step)
    atomic_write_json(out_dir / "results.json", res)
    with warnings.catch_warnings():  # e.g. an empty panel's legend: the tables say why
        warnings.simplefilter("ignore")
        figures = plot_comparison(out_dir, res)
    atomic_write_text(out_dir / "results.md", markdown(res, [f.name for f in figures]))
    return res

def _pct(iv: dict[str, Any] | None) -> str:
    """A proportion's mean [lo, hi] in percent (the interval of a mean of proportions,
    clipped to [0, 100]); ``-`` when missing."""
    if not iv:
        return "-"
    if iv["n"] < 2:
        return f"{100 * iv['mean']:.1f}%"
    lo, hi = max(0.0, iv["lo"]), min(1.0, iv["hi"])
    return f"{100 * iv['mean']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"


def _num(iv: dict[str, Any] | None, fmt: str = "{:.3g}") -> str:
    if not iv:
        return "-"
    if iv["n"] < 2:
        return fmt.format(iv["mean"])
    return f"{fmt.format(iv['mean'])} [{fmt.format(iv['lo'])}, {fmt.format(iv['hi'])}]"


def _target(iv: dict[str, Any] | None, fmt: str = "{:.0f}") -> str:
    """Updates (or seconds) to a level: the interval when every run reached it, else how
    many did."""
    if not iv:
        return "never"
    if iv["n"] < iv["of"]:
        return f"{iv['n']}/{iv['of']} reached"
    return _num(iv, fmt)


def _ratio(d: dict[str, Any] | None) -> str:
    if not d:
        return "-"
    if "devices" in d:
        return "trained on " + " and ".join(d["devices"])
    if "mean" not in d:
        p = d.get("fisher_p")
        counts = f"reached {d['reached_a']}/{d['of_a']} vs {d['reached_b']}/{d['of_b']}"
        if p is None or d["reached_a"] + d["reached_b"] == 0:
            return counts
        return counts + f" (p = {p:.2g}{' *' if p < 0.05 else ''})"
    star = " *" if d["excludes_null"] else ""
    if d["n"] < 2:
        return f"{d['mean']:.2f}x"
    return f"{d['mean']:.2f}x [{d['lo']:.2f}, {d['hi']:.2f}]{star}"


def _label(variant: str) -> str:
    """A variant's name in tables: its method's label, "+ heuristics" for "+explore"."""
    method = variant.removesuffix("+explore")
    return method_of(method).label + (" + heuristics" if variant != method else "")


def _seconds(group: dict[str, Any], cell: str) -> str:
    """A group's seconds, unless its runs trained on more than one kind of device."""
    return "mixed devices" if len(group["devices"]) > 1 else cell


def _diff_pct(d: dict[str, Any] | None) -> str:
    if not d:
        return "-"
    if d["n"] < 2:
        return f"{100 * d['mean']:+.1f}"
    star = " *" if d["excludes_null"] else ""
    return f"{100 * d['mean']:+.1f} [{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}]{star}"


def markdown(res: dict[str, Any], figures: list[str] | None = None) -> str:
    """The whole results.md (``figures``: the figure files written beside it)."""
    return "\n".join([*_header(res), *_rates(res), *_figure3(res), *_variants(res),
                      *_targets(res), *_by_lr(res), *_scales(res), *_differences(res),
                      *_paired(res), *_shared(res),
                      *_notes(figures or [])]) + "\n"


def _header(res: dict[str, Any]) -> list[str]:
    s, t = res["setup"], res["table"]
    seeds = sorted({x for v in t.values() for x in v["seeds"]})
    cut = (f" Training curves compared up to update {res['max_step']} (a common budget: runs "
           f"went different lengths); test errors are of each run's {LAST}."
           if res.get("max_step") else "")
    return ["# Comparison of training methods", "",
            f"Setup: K = {s['samples']} samples, up to {s['steps']} updates of batch "
            f"{s['batch_size']}, {s['canvas_size']}x{s['canvas_size']} canvases, "
            f"{s['glimpses']} glimpses, seeds {', '.join(map(str, seeds))}; "
            f"{_validation(s)}.{cut}"
            " Figures are means over seeds with 95% Student-t intervals [lo, hi]; "
            "differences use Welch's interval, ratios Welch's on the log scale; * marks a "
            "difference whose interval does not contain zero (a difference detected).", ""]


def _validation(setup: dict[str, Any]) -> str:
    n = setup.get("holdout_every")
    return f"validation: every {n}th training digit" if n else "no validation set"


def _rates(res: dict[str, Any]) -> list[str]:
    lines = ["## Learning rates chosen on training data", "",
             f"A run converged when its final training error (mean of the last {FINAL_POINTS} "
             f"logged values) is below {CONVERGED_BELOW:.0%} and at most "
             f"{MAX_RISE * 100:.0f} points above the lowest it reached. (a) the paper's rule: "
             "the highest rate at which every seed converged; (b) the rate with the lowest "
             "mean final training error. Chosen: (a), or (b) where no rate satisfies (a).", "",
             "| method | rates tried (seeds converged) | (a) | (b) | chosen |",
             "|---|---|---|---|---|"]
    for m, c in res["chosen"].items():
        tried = ", ".join(f"{lr} ({v['converged']}/{v['seeds']})"
                          for lr, v in c["candidates"].items())
        paper = "none" if c["paper_rule_lr"] is None else f"{c['paper_rule_lr']:g}"
        lines.append(f"| {m} | {tried} | {paper} | {c['lowest_error_lr']:g} | "
                     f"{c['lr']:g} ({c['rule']}) |")
    return lines + [""]


def _figure3(res: dict[str, Any]) -> list[str]:
    t = res["table"]

    def cell(v: str) -> str:
        return _pct(t[v]["test_error_mc"]) + f" (lr {t[v]['lr']:g})" if v in t else "-"

    lines = ["## Test error, mean of M trajectories (paper Figure 3)", "",
             "Each method at its chosen rate (the family's for methods trained only there); "
             f"{LAST} after the whole budget.", "",
             "| | without control variates | with control variates (+c) |", "|---|---|---|"]
    for label, a, b in (("VAR", "var", "var+c"), ("WS-RAM", "wsram", "wsram+c"),
                        ("WS-RAM+q", "wsram+q", "wsram+q+c")):
        lines.append(f"| {label} | {cell(a)} | {cell(b)} |")
    if "vimco" in t:
        lines.append(f"| VIMCO | {cell('vimco')} | |")
    return lines + [""]


def _variants(res: dict[str, Any]) -> list[str]:
    lines = ["## Every variant at its rate", "",
             "| variant | lr | seeds | updates | final training error: 1 trajectory / mean of K "
             "| test error: 1 / mean of M / deterministic | final bound L_K | final ESS "
             "| gradient variance | training time (s) | seconds per update | device |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for v, g in res["table"].items():
        lines.append(
            f"| {v} | {g['lr']:g} | {len(g['seeds'])} | {'/'.join(map(str, g['updates']))} | "
            f"{_pct(g['final_train_error'])} / {_pct(g['final_train_error_mc'])} | "
            f"{_pct(g['test_error_sampled'])} / {_pct(g['test_error_mc'])} / "
            f"{_pct(g['test_error_deterministic'])} | {_num(g['final_bound'])} | "
            f"{_num(g['final_ess'])} | {_num(g['final_grad_var'])} | "
            f"{_seconds(g, _num(g['train_time_s'], '{:.0f}'))} | "
            f"{_seconds(g, _num(g['seconds_per_update'], '{:.3f}'))} | "
            f"{', '.join(g['devices'])} |")
    return lines + ["", "Seconds compare only between runs on one kind of device under the "
                    "same load (the study's files record the device, not the load).", ""]


def _targets(res: dict[str, Any]) -> list[str]:
    lvs = [str(lv) for lv in ERROR_LEVELS]
    lines = ["## Updates and seconds to reach a training error", "",
             f"First update at which the running mean of {SMOOTH} logged training errors is "
             "at or below the level; training seconds at that update.", "",
             "| variant | lr | " + " | ".join(f"updates to {float(lv):.0%}" for lv in lvs)
             + " | " + " | ".join(f"seconds to {float(lv):.0%}" for lv in lvs) + " | device |",
             "|---|---|" + "---|" * (2 * len(lvs) + 1)]
    for v, g in res["table"].items():
        lines.append(f"| {v} | {g['lr']:g} | "
                     + " | ".join(_target(g["updates_to"][lv]) for lv in lvs) + " | "
                     + " | ".join(_seconds(g, _target(g["seconds_to"][lv])) for lv in lvs)
                     + " | "
                     + ", ".join(g["devices"]) + " |")
    return lines + [""]


def _lr_table(res: dict[str, Any], head: list[str],
              cell: Callable[[dict[str, Any]], str]) -> list[str]:
    """A table of every variant (rows) at every learning rate of the study (columns)."""
    lrs = sorted({float(lr) for g in res["by_lr"].values() for lr in g})
    lines = [*head, "| variant | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " |",
             "|---|" + "---|" * len(lrs)]
    for v, g in res["by_lr"].items():
        cells = ["-" if g.get(f"{lr:g}") is None else cell(g[f"{lr:g}"]) for lr in lrs]
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    return lines + [""]


def _by_lr(res: dict[str, Any]) -> list[str]:
    if len({lr for g in res["by_lr"].values() for lr in g}) < 2:
        return []
    return _lr_table(res, ["## Final training error and updates to 30% at each learning rate",
                           ""],
                     lambda a: f"{_pct(a['final_train_error'])}; "
                               f"{_target(a['updates_to']['0.3'])} upd.; "
                               f"{a['converged']}/{len(a['seeds'])} conv.")


def _scales(res: dict[str, Any]) -> list[str]:
    if not any(a.get("settled_scale") for g in res["by_lr"].values() for a in g.values()):
        return []
    return _lr_table(
        res, ["## The glimpse scale each run settled on", "",
              "The scale most of a run's glimpses use in its last 3 diagnostics, and how many "
              "runs settled there; the final training error of each group beside it.", ""],
        lambda a: "-" if not a.get("settled_scale") else
        ", ".join(f"{sc}: {n}" for sc, n in a["settled_scale"].items())
        + f" (error {_pct(a['final_train_error'])})")


def _levels_head(what: str) -> str:
    """The header cells of one column per training-error level: '{what} to 50%: B/A' ..."""
    return " | ".join(f"{what} to {float(lv):.0%}: B/A" for lv in ERROR_LEVELS)


def _differences(res: dict[str, Any]) -> list[str]:
    if not res["differences"]:
        return []
    lvs = [str(lv) for lv in ERROR_LEVELS]
    lines = ["## Differences between methods", "",
             "A - B in percentage points (final training error of one trajectory, test "
             "error of the mean of M); for updates to a training error, how many times fewer "
             "A needs than B (B / A; > 1: A is faster); the same for seconds, where both "
             "trained on one kind of device. Where some runs never reached a level: how "
             "many did, and p of Fisher's exact test (two-sided) that both groups share "
             "one chance of reaching it.", "",
             "| A vs B | condition | final training error | test error (M) | "
             f"{_levels_head('updates')} | {_levels_head('seconds')} |",
             "|---|---|---|---|" + "---|" * (2 * len(lvs))]
    for d in res["differences"]:
        lines.append(f"| {_label(d['a'])} vs {_label(d['b'])} | "
                     f"{d['condition']} | {_diff_pct(d['final_train_error'])} | "
                     f"{_diff_pct(d['test_error_mc'])} | "
                     + " | ".join(_ratio(d["updates_to"][lv]) for lv in lvs) + " | "
                     + " | ".join(_ratio(d["seconds_to"][lv]) for lv in lvs) + " |")
    return lines + [""]


def _paired_ratio(r: dict[str, Any] | None) -> str:
    if not r:
        return "-"
    if r["n"] < 2:
        return f"{r['mean']:.2f}x ({r['n']} of {r['of']} seeds)"
    text = f"{r['mean']:.2f}x [{r['lo']:.2f}, {r['hi']:.2f}] ({r['n']} of {r['of']} seeds)"
    return f"**{text} ***" if r["excludes_null"] else text


def _paired(res: dict[str, Any]) -> list[str]:
    """The differences at one rate again, paired by seed."""
    rows = [d for d in res["differences"] if "paired" in d]
    if not rows:
        return []
    lvs = [str(lv) for lv in ERROR_LEVELS]
    lines = ["## The same differences, paired by seed", "",
             "A seed's runs share their data stream and initial parameters across methods, "
             "so each seed gives one difference: A - B averaged over the seeds both have, "
             "with its Student-t interval, and the geometric mean of the per-seed B / A of "
             "updates to a level (over the seeds where both reached it). * the interval does "
             "not contain zero (a difference detected).", "",
             "| A vs B | condition | seeds | final training error | test error (M) | "
             f"{_levels_head('updates')} |",
             "|---|---|---|---|---|" + "---|" * len(lvs)]
    for d in rows:
        p = d["paired"]
        lines.append(f"| {_label(d['a'])} vs {_label(d['b'])} | {d['condition']} | "
                     f"{len(p['seeds'])} | {_diff_pct(p['final_train_error'])} | "
                     f"{_diff_pct(p['test_error_mc'])} | "
                     + " | ".join(_paired_ratio(p["updates_to"][lv]) for lv in lvs) + " |")
    return lines + [""]


def _shared(res: dict[str, Any]) -> list[str]:
    lines = []
    for block in res.get("variance_at_shared") or []:
        lines += [f"## Gradient variance at the same parameters: those of "
                  f"{block['parameters_of']} ({block.get('run', '')}) after {block['step']} "
                  "updates", "",
                  f"R = {block['repeats']} independent estimates of the prediction network's "
                  f"gradient on one fixed batch of {block['batch']} training images, K = "
                  f"{block['samples']}, every estimator at the same parameters.", "",
                  "| estimator | trace of covariance | relative to squared norm of mean |",
                  "|---|---|---|"]
        untrained_q = not _trains_q(block["parameters_of"])
        for n, v in block["variance"].items():
            if untrained_q and "+q" in n:
                continue
            lines.append(f"| {n} | {v['grad_var']:.3g} | {v['grad_var_rel']:.3g} |")
        if untrained_q:
            lines += ["", f"No WS-RAM+q rows: {block['parameters_of']} trains no inference "
                      "network, so at its parameters q is still its initial copy of the prior "
                      "(a zero correction) and WS-RAM+q's estimates equal WS-RAM's."]
        lines.append("")
    return lines


def _trains_q(method: str) -> bool:
    """Whether a method trains the inference network q (its proposal)."""
    return "+q" in method


#: what each figure shows
FIGURES = {"figure2.png": "mean curves with 95% bands",
           "figure_lr.png": "final training error against the learning rate",
           "figure4_exploration.png": "the exploration heuristics on and off"}


def _notes(figures: list[str]) -> list[str]:
    drawn = ", ".join(f"{f} ({FIGURES.get(f, '')})" for f in figures) or "none"
    return ["Training error: one trajectory of the prediction network's own policy per "
            "training image; 'mean of K': class probabilities averaged over K trajectories "
            "of that policy, on the diagnostics' fixed training batch (last 3 diagnostics). "
            "Gradient variance: trace of the covariance of R independent estimates of the "
            "prediction network's gradient on that batch (last 3 diagnostics). Figures: "
            f"{drawn}.", ""]


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    atomic_write_bytes(path, lambda f: fig.savefig(f, dpi=120, format="png"))
    pyplot().close(fig)


def _group_dirs(out_dir: Path, res: dict, variant: str, lr: float) -> list[Path]:
    return [out_dir / f for f, r in res["runs"].items()
            if r["variant"] == variant and r["lr"] == lr]


def plot_comparison(out_dir: str | Path, res: dict) -> list[Path]:
    """figure2.png (training error, gradient variance, ESS against updates: means over
    seeds with 95% bands, each variant at its rate), figure_lr.png (final training error
    against the learning rate) and figure4_exploration.png (heuristics on/off)."""
    out_dir = Path(out_dir)
    table, cut = res["table"], res.get("max_step")
    main = [v for v in table if not v.endswith("+explore")]
    fig, axes = pyplot().subplots(1, 3, figsize=(16, 4.6))
    for v in main:
        dirs = _group_dirs(out_dir, res, v, table[v]["lr"])
        label = f"{v}, lr {table[v]['lr']:g}"
        band(axes[0], dirs, "train/error", label, smooth=5, scale=1e-3, max_step=cut,
             **method_style(v))
        band(axes[1], dirs, "diag/grad_var", label, scale=1e-3, max_step=cut, log=True,
             **method_style(v))
        band(axes[2], dirs, "diag/ess", label, scale=1e-3, max_step=cut, **method_style(v))
    axes[0].set(title="Training error (running mean of 5 log steps)", ylim=(0, 1),
                xlabel="updates (thousands)", ylabel="error (one sampled trajectory)")
    axes[1].set(title="Variance of the gradient estimate (geometric mean)",
                xlabel="updates (thousands)", ylabel="trace of covariance", yscale="log")
    axes[2].set(title="Effective sample size", xlabel="updates (thousands)",
                ylabel=f"ESS (max K = {res['setup']['samples']})")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    _save(fig, out_dir / "figure2.png")
    written = [out_dir / "figure2.png"]
    if any(len(g) > 1 for g in res["by_lr"].values()):
        written.append(_plot_rates(out_dir, res))
    explored = [v for v in table if v.endswith("+explore")]
    if explored:
        written.append(_plot_exploration(out_dir, res, explored))
    return written


def _plot_rates(out_dir: Path, res: dict) -> Path:
    """Final training error against the learning rate, mean and 95% interval per method."""
    fig, ax = pyplot().subplots(figsize=(6.4, 4.4))
    for v, g in res["by_lr"].items():
        if v.endswith("+explore") or len(g) < 2:
            continue
        lrs = [float(lr) for lr in g if g[lr]["final_train_error"]]
        ivs = [g[f"{lr:g}"]["final_train_error"] for lr in lrs]
        st = method_style(v)
        ax.errorbar(lrs, [i["mean"] for i in ivs],
                    yerr=[[i["mean"] - i["lo"] for i in ivs], [i["hi"] - i["mean"] for i in ivs]],
                    marker="o", capsize=3, label=v, color=st["color"])
    ax.set(xscale="log", xlabel="Adam learning rate", ylabel="final training error",
           title="Learning rate against final training error (95% intervals)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, out_dir / "figure_lr.png")
    return out_dir / "figure_lr.png"


def _plot_exploration(out_dir: Path, res: dict, explored: list[str]) -> Path:
    """Training error with and without the heuristics, and glimpse-scale usage."""
    table = res["table"]
    study = [v.removesuffix("+explore") for v in explored if v.removesuffix("+explore")
             in table] + explored
    fig, axes = pyplot().subplots(1, 1 + len(study), figsize=(4.4 * (1 + len(study)), 4.2),
                             squeeze=False)
    axes = axes[0]
    for v in study:
        dirs = _group_dirs(out_dir, res, v, table[v]["lr"])
        band(axes[0], dirs, "train/error", f"{v}, lr {table[v]['lr']:g}", smooth=5, scale=1e-3,
             max_step=res.get("max_step"), **method_style(v))
    axes[0].set(title="Exploration heuristics", xlabel="updates (thousands)",
                ylabel="training error")
    axes[0].legend(fontsize=7)
    axes[0].grid(alpha=0.3)
    for ax, v in zip(axes[1:], study, strict=True):
        dirs = _group_dirs(out_dir, res, v, table[v]["lr"])
        scales = res["setup"].get("scales") or []
        for i, sc in enumerate(scales):
            band(ax, dirs, f"diag/scale{i}", f"scale {sc:g}", scale=1e-3,
                 max_step=res.get("max_step"), color=f"C{i}", linewidth=1.4)
        ax.set(title=f"{v}: glimpse scales used", xlabel="updates (thousands)",
               ylabel="fraction of glimpses", ylim=(-0.02, 1.02))
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    _save(fig, out_dir / "figure4_exploration.png")
    return out_dir / "figure4_exploration.png"



