"""The results of a study, from its run folders' files alone: one record per run
(:class:`StudyRun`), a summary of each, each method's learning rate chosen by stated rules
on training data, means with 95% intervals across seeds, and differences between methods.
No formatting here: ``report`` turns these into tables and figures.

The rules, applied to training data only (never the test set):
- a run *converged* when its final training error (one trajectory of the model's own
  policy, mean of the last ``FINAL_POINTS`` logged values) is below ``CONVERGED_BELOW`` and
  at most ``MAX_RISE`` above the lowest smoothed value it reached (no late collapse);
- (a) the paper's rule: the highest learning rate at which every seed's run converged;
- (b) the learning rate with the lowest mean final training error over seeds.
A method's chosen rate is (a)'s, or (b)'s where no rate satisfies (a).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from wsram.classification.task import diag_batch
from wsram.diagnostics import gradient_estimates, variance_stats
from wsram.errors import WsramError
from wsram.methods import METHODS
from wsram.registry import load_run
from wsram.run_dir import RunDir
from wsram.stats import (
    Interval,
    difference_interval,
    first_reach,
    fisher_exact,
    mean_interval,
    ratio_interval,
)
from wsram.stats import smoothed as smooth
from wsram.study.plan import EXPLORED, FAMILY

CONVERGED_BELOW = 0.5
MAX_RISE = 0.10
FINAL_POINTS = 5  # logged training errors averaged into the final one
SMOOTH = 5  # logged training errors in the running mean that updates-to-target reads
ERROR_LEVELS = (0.5, 0.3, 0.2)
TEST_KEYS = ("test_error_sampled", "test_error_mc", "test_error_deterministic")
# Pairs (A, B) whose differences A - B are tabulated: the methods, and each explored
# method with and without the exploration heuristics (paper Figure 4).
PAIRS = (("wsram+q+c", "var+c"), ("wsram+c", "var+c"), ("wsram+q+c", "wsram+c"),
         ("var+c+explore", "var+c"), ("wsram+q+c+explore", "wsram+q+c"))
SHARED_FILE = "variance_at_shared.json"


@dataclass(frozen=True)
class StudyRun:
    """A run folder of a study, read once: what its config says it is, the config itself
    and its metrics rows."""

    variant: str
    lr: float
    seed: int
    dir: Path
    folder: str  # its path below the study folder
    device: str = "cpu"  # where it trained: seconds compare only between runs on one kind
    config: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    rows: list[dict[str, Any]] = field(default_factory=list, repr=False, compare=False)

    @property
    def method(self) -> str:
        return self.variant.removesuffix("+explore")


def read_run(run_dir: Path, out_dir: Path) -> StudyRun:
    """One run folder of the study in ``out_dir``; a run with any exploration heuristic on
    is its method's "+explore" variant."""
    run = RunDir(run_dir)
    raw = run.read_config()
    explore = (float(raw.get("temperature", 1.0)) != 1.0 or float(raw.get("coverage", 0))
               or float(raw.get("entropy", 0)))
    variant = str(raw.get("method", run.path.name)) + ("+explore" if explore else "")
    return StudyRun(variant, float(raw.get("lr", 1e-3)), int(raw.get("seed", 0)), run.path,
                    run.path.relative_to(out_dir).as_posix(),
                    str(raw.get("device", "cpu")).split(":")[0], raw, run.read_metrics())


def discover_runs(out_dir: Path) -> list[StudyRun]:
    """Every run folder (a config and a metrics file) one or two levels below ``out_dir``."""
    name = RunDir(out_dir).config.name
    found = sorted([*out_dir.glob(f"*/{name}"), *out_dir.glob(f"*/*/{name}")])
    return [read_run(p.parent, out_dir) for p in found if RunDir(p.parent).metrics.is_file()]


def _values(rows: list[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    return [(int(r["step"]), float(r[key])) for r in rows if key in r]


def _tail(points: list[tuple[int, float]], n: int) -> float | None:
    vals = [v for _, v in points[-n:]]
    return sum(vals) / len(vals) if vals else None


def summarise(run: StudyRun, max_step: int | None = None) -> dict[str, Any]:
    """One run's figures from its metrics (up to update ``max_step``: a common budget for
    runs that went different lengths) and its test evaluation."""
    rows = [r for r in run.rows if max_step is None or r.get("step", 0) <= max_step]
    err = _values(rows, "train/error")
    sm = smooth(err, SMOOTH)
    seconds = {int(r["step"]): float(r["time"]) for r in rows if "time" in r}
    final = _tail(err, FINAL_POINTS)
    lowest = min((v for _, v in sm), default=None)
    out: dict[str, Any] = {
        "variant": run.variant, "lr": run.lr, "seed": run.seed,
        "updates": err[-1][0] if err else 0,
        # where its seconds were spent: each logged row's device (older files: the config's)
        "devices": sorted({str(r["device"]) for r in rows if "device" in r} or {run.device}),
        "train_time_s": seconds.get(err[-1][0]) if err else None,
        "final_train_error": final,
        "final_train_error_mc": _tail(_values(rows, "diag/error_mc"), 3),
        "final_bound": _tail(_values(rows, "train/bound"), FINAL_POINTS),
        "final_ess": _tail(_values(rows, "train/ess"), FINAL_POINTS),
        "final_grad_var": _tail(_values(rows, "diag/grad_var"), 3),
        "nonfinite": int(rows[-1].get("train/nonfinite_total", 0)) if rows else 0,
        "converged": (final is not None and final < CONVERGED_BELOW
                      and final <= lowest + MAX_RISE),
        "updates_to": {str(lv): first_reach(sm, lv) for lv in ERROR_LEVELS},
    }
    out["final_scales"] = final_scales(run, rows)
    out["seconds_per_update"] = (out["train_time_s"] / out["updates"]
                                 if out["train_time_s"] is not None and out["updates"] else None)
    out["seconds_to"] = {k: (seconds.get(v) if v is not None else None)
                         for k, v in out["updates_to"].items()}
    ev_path = RunDir(run.dir).eval_file("last")
    ev = json.loads(ev_path.read_text()) if ev_path.is_file() else {}
    out.update({k: ev.get(k) for k in TEST_KEYS})
    return out


def final_scales(run: StudyRun, rows: list[dict[str, Any]], n: int = 3) -> dict[str, float]:
    """The fraction of glimpses at each scale of the sensor (config ``scales``) in the
    last ``n`` diagnostics: where the policy settled."""
    scales = run.config.get("scales") or []
    diag = [r for r in rows if "diag/scale0" in r][-n:]
    if not diag:
        return {}
    return {f"{sc:g}": sum(float(r.get(f"diag/scale{i}", 0.0)) for r in diag) / len(diag)
            for i, sc in enumerate(scales)}


def settled(summaries: list[dict[str, Any]]) -> dict[str, int]:
    """How many runs of a group settled on each glimpse scale (the one most of their
    glimpses use at the end)."""
    out: dict[str, int] = {}
    for s in summaries:
        if s.get("final_scales"):
            top = max(s["final_scales"], key=s["final_scales"].get)
            out[top] = out.get(top, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: float(kv[0])))


def _candidates(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """How the runs of one method at one rate did: converged seeds, mean final error."""
    finals = [s["final_train_error"] for s in summaries if s["final_train_error"] is not None]
    return {"seeds": len(summaries), "converged": sum(bool(s["converged"]) for s in summaries),
            "all_converged": all(s["converged"] for s in summaries),
            "mean_final_train_error": sum(finals) / len(finals) if finals else None}


def choose_rates(runs: list[StudyRun], max_step: int | None = None,
                 ) -> dict[str, dict[str, Any]]:
    """Each method's learning rate by rules (a) and (b) (module docstring), from its runs
    without exploration heuristics (up to update ``max_step``); methods tried at one rate
    keep it."""
    summaries: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in runs:
        if not r.variant.endswith("+explore"):
            summaries.setdefault((r.variant, r.lr), []).append(summarise(r, max_step))
    out: dict[str, dict[str, Any]] = {}
    for method in sorted({m for m, _ in summaries}):
        cands = {lr: _candidates(ss) for (m, lr), ss in sorted(summaries.items())
                 if m == method}
        paper = max((lr for lr, c in cands.items() if c["all_converged"]), default=None)
        scored = [(c["mean_final_train_error"], lr) for lr, c in cands.items()
                  if c["mean_final_train_error"] is not None]
        lowest = min(scored)[1] if scored else None
        chosen = paper if paper is not None else lowest
        if chosen is None:
            continue
        out[method] = {"lr": chosen, "rule": "a" if paper is not None else "b",
                       "paper_rule_lr": paper, "lowest_error_lr": lowest, "candidates":
                       {f"{lr:g}": c for lr, c in cands.items()}}
    return out


def table_rate(variant: str, lrs: list[float], chosen: dict[str, dict[str, Any]]) -> float:
    """The rate a variant is tabulated at: its own chosen rate, else its method's, else its
    family head's (where it has runs there), else the rate it has most runs at."""
    method = variant.removesuffix("+explore")
    for name in (variant, method, FAMILY.get(method)):
        if name in chosen and chosen[name]["lr"] in lrs:
            return chosen[name]["lr"]
    return max(sorted(set(lrs)), key=lrs.count)


def _interval(values: list[float | None]) -> dict[str, Any] | None:
    vals = [v for v in values if v is not None]
    return {**mean_interval(vals).to_dict(), "of": len(values)} if vals else None


def aggregate(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and 95% t-interval over seeds of every figure of a group of runs; targets that
    some seed never reached say how many did (``of``: the runs in the group)."""
    keys = ("final_train_error", "final_train_error_mc", "final_bound", "final_ess",
            "final_grad_var", "train_time_s", "seconds_per_update", *TEST_KEYS)
    out: dict[str, Any] = {k: _interval([s[k] for s in summaries]) for k in keys}
    out["devices"] = sorted({d for s in summaries for d in s["devices"]})
    mixed = len(out["devices"]) > 1  # seconds on different devices do not average
    if mixed:
        out["train_time_s"] = out["seconds_per_update"] = None
    out["seeds"] = sorted(s["seed"] for s in summaries)
    out["updates"] = sorted({s["updates"] for s in summaries})
    out["converged"] = sum(bool(s["converged"]) for s in summaries)
    out["settled_scale"] = settled(summaries)
    for what in ("updates_to", "seconds_to"):
        out[what] = {lv: None if what == "seconds_to" and mixed else
                     _interval([s[what][lv] for s in summaries])
                     for lv in map(str, ERROR_LEVELS)}
    return out


def _reached(group: list[dict[str, Any]], what: str, lv: str) -> list[float] | None:
    vals = [s[what][lv] for s in group]
    return None if any(v is None for v in vals) else vals


def _target_ratio(a: list[dict[str, Any]], b: list[dict[str, Any]], what: str,
                  lv: str) -> dict[str, Any]:
    """B / A of the updates (or seconds) to level ``lv`` where every run reached it; else
    how many did, and Fisher's exact test of the two counts."""
    ra, rb = _reached(a, what, lv), _reached(b, what, lv)
    if ra and rb:
        return _diff(ratio_interval(ra, rb))
    hits_a = sum(s[what][lv] is not None for s in a)
    hits_b = sum(s[what][lv] is not None for s in b)
    return {"reached_a": hits_a, "reached_b": hits_b, "of_a": len(a), "of_b": len(b),
            "fisher_p": fisher_exact(hits_a, len(a), hits_b, len(b))}


def differences(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> dict[str, Any]:
    """A - B for the final errors (Welch's interval) and B / A for updates and seconds to
    each training-error level (how many times fewer A needs), where every run reached it;
    seconds only where both groups trained on one kind of device."""
    out: dict[str, Any] = {}
    for k in ("final_train_error", "final_train_error_mc", "final_bound", "test_error_mc"):
        va = [s[k] for s in a if s[k] is not None]
        vb = [s[k] for s in b if s[k] is not None]
        out[k] = _diff(difference_interval(va, vb)) if va and vb else None
    devices = sorted({d for s in (*a, *b) for d in s["devices"]})
    for what in ("updates_to", "seconds_to"):
        if what == "seconds_to" and len(devices) > 1:
            out[what] = {lv: {"devices": devices} for lv in map(str, ERROR_LEVELS)}
            continue
        out[what] = {lv: _target_ratio(a, b, what, lv) for lv in map(str, ERROR_LEVELS)}
    return out


def _diff(iv: Interval) -> dict[str, Any]:
    return iv.to_dict()


def paired_differences(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> dict[str, Any]:
    """The same comparisons paired by seed (a seed's runs share their data stream and
    initial parameters across methods): the mean of the per-seed differences A - B with
    its Student-t interval, and the geometric mean of the per-seed ratios B / A of updates
    to each level (seeds where both reached it). ``seeds``: the seeds both groups have."""
    by_b = {s["seed"]: s for s in b}
    both = [(s, by_b[s["seed"]]) for s in a if s["seed"] in by_b]
    out: dict[str, Any] = {"seeds": [sa["seed"] for sa, _ in both]}
    for k in ("final_train_error", "test_error_mc"):
        d = [sa[k] - sb[k] for sa, sb in both if sa[k] is not None and sb[k] is not None]
        out[k] = _diff(mean_interval(d)) if d else None
    out["updates_to"] = {}
    for lv in map(str, ERROR_LEVELS):
        logs = [math.log(sb["updates_to"][lv] / sa["updates_to"][lv]) for sa, sb in both
                if sa["updates_to"][lv] and sb["updates_to"][lv]]
        if not logs:
            out["updates_to"][lv] = None
            continue
        iv = mean_interval(logs)
        out["updates_to"][lv] = {"mean": math.exp(iv.mean), "lo": math.exp(iv.lo),
                                 "hi": math.exp(iv.hi), "n": iv.n, "of": len(both),
                                 "excludes_null": iv.excludes_zero}
    return out


def _pair_differences(groups: dict[str, dict[str, list[dict[str, Any]]]],
                      at: dict[str, float]) -> list[dict[str, Any]]:
    """The differences of every pair in ``PAIRS`` that the study holds: each at its chosen
    rate, then both at every rate they share."""
    diffs = []
    for a, b in PAIRS:
        if a in groups and b in groups:
            diffs.append({"a": a, "b": b, "condition": "each at its chosen rate",
                          "lr_a": at[a], "lr_b": at[b],
                          **differences(groups[a][f"{at[a]:g}"], groups[b][f"{at[b]:g}"])})
            for lr in sorted(set(groups[a]) & set(groups[b]), key=float):
                diffs.append({"a": a, "b": b, "condition": f"both at lr {lr}",
                              "lr_a": float(lr), "lr_b": float(lr),
                              **differences(groups[a][lr], groups[b][lr]),
                              "paired": paired_differences(groups[a][lr], groups[b][lr])})
    return diffs


def results(out_dir: Path, max_step: int | None = None) -> dict[str, Any]:
    """Everything the tables and figures show, from the files (training curves up to update
    ``max_step`` when given)."""
    runs = discover_runs(out_dir)
    if not runs:
        raise WsramError(f"{out_dir}: no runs to compare")
    summaries = {r.folder: summarise(r, max_step) for r in runs}
    chosen = choose_rates(runs, max_step)
    groups: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for r in runs:
        groups.setdefault(r.variant, {}).setdefault(f"{r.lr:g}", []).append(summaries[r.folder])
    at: dict[str, float] = {v: table_rate(v, [r.lr for r in runs if r.variant == v], chosen)
                            for v in groups}
    table = {v: {"lr": at[v], **aggregate(groups[v][f"{at[v]:g}"])} for v in groups}
    by_lr = {v: {lr: aggregate(g) for lr, g in sorted(gs.items(), key=lambda x: float(x[0]))}
             for v, gs in groups.items()}
    cfg = runs[0].config
    shared_path = out_dir / SHARED_FILE
    return {
        "setup": {k: cfg.get(k) for k in ("samples", "steps", "batch_size", "canvas_size",
                                          "glimpses", "holdout_every", "device", "data_dir",
                                          "scales")},
        "max_step": max_step,
        "rules": {"converged_below": CONVERGED_BELOW, "max_rise": MAX_RISE,
                  "final_points": FINAL_POINTS, "smooth": SMOOTH,
                  "interval": "95% Student-t across seeds; differences: Welch; ratios: "
                              "Welch on log values"},
        "chosen": chosen, "table": table, "by_lr": by_lr,
        "differences": _pair_differences(groups, at), "runs": summaries,
        "variance_at_shared": json.loads(shared_path.read_text()) if shared_path.is_file()
        else [],
    }


def variance_at_shared_parameters(out_dir: Path, rates: dict[str, float],
                                  repeats: int = 20) -> list[dict[str, Any]]:
    """Gradient variance of every method's estimator at the same parameters and minibatch.

    Curves against updates compare models in different states (a policy that has
    collapsed has little variance left); this compares the estimators themselves, at the
    final parameters of the first seed's run of each of var+c and wsram+q+c at their
    chosen rates, on the diagnostics' fixed minibatch.
    """
    runs = discover_runs(out_dir)
    out = []
    for source in EXPLORED:
        found = sorted((r for r in runs if r.variant == source and r.lr == rates.get(source)
                        and RunDir(r.dir).last.is_file()), key=lambda r: r.seed)
        if not found:
            continue
        cfg, task, model, state = load_run(found[0].dir, task="classification")
        x, y = diag_batch(cfg, task.train_digits)
        table = {}
        for name, method in METHODS.items():
            if not method.attends or (name == "vimco" and cfg.samples < 2):
                continue
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.seed)
                g = gradient_estimates(model, method, x, y, cfg.samples, repeats)
            table[name] = variance_stats(g)
        out.append({"parameters_of": source, "run": found[0].folder, "step": int(state["step"]),
                    "repeats": repeats, "batch": cfg.diag_batch, "samples": cfg.samples,
                    "variance": table})
    return out
