"""`wsram compare`: train the paper's variants on equal terms and tabulate and plot them
(paper Figures 2, 3 and 4)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..checkpoint import atomic_write_bytes
from ..config import load_yaml, replace
from ..errors import WsramError
from ..methods import METHODS
from ..run_dir import check_resume, read_metrics
from ..train import train
from .config import ClassificationConfig
from .evaluate import evaluate_run

# The exploration heuristics of METHOD.md 4.5, all three on, for the Figure 4 study.
EXPLORE = {"temperature": 1.5, "coverage": 0.1, "entropy": 0.01}
ERROR_LEVELS = (0.5, 0.3, 0.2, 0.15, 0.1)


@dataclass(frozen=True)
class Variant:
    name: str  # run folder name and legend
    method: str
    overrides: dict[str, Any] = field(default_factory=dict)


def default_variants(explore: bool = True) -> list[Variant]:
    """The six variants of paper Figure 3, VIMCO, and the Figure 4 heuristics study."""
    out = [Variant(m, m) for m in METHODS if METHODS[m].attends]
    if explore:
        out += [Variant("var+c+explore", "var+c", EXPLORE),
                Variant("wsram+q+c+explore", "wsram+q+c", EXPLORE)]
    return out


def _resumable(cfg: ClassificationConfig, run_dir: Path) -> bool:
    """Whether run_dir holds an earlier run of this variant to continue; refuse one made
    with another config (a longer budget or another machine may differ)."""
    if not (run_dir / "last.pt").is_file():
        return False
    check_resume(cfg, run_dir)
    return True


def _run_one(cfg: ClassificationConfig, run_dir: Path, progress: bool) -> None:
    """Train one variant, resuming it if an earlier compare was interrupted."""
    train(cfg, run_dir, resume=_resumable(cfg, run_dir), progress=progress)


def compare(base: ClassificationConfig, out_dir: str | Path, variants: list[Variant] | None = None,
            jobs: int = 1, progress: bool = True) -> dict[str, Any]:
    """Train every variant into ``out_dir/<name>`` (resumable), evaluate, write results."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    variants = variants or default_variants()
    cfgs = {v.name: replace(base, method=v.method, **v.overrides) for v in variants}
    if jobs <= 1:
        for v in variants:
            print(f"== {v.name}", file=sys.stderr, flush=True)
            _run_one(cfgs[v.name], out_dir / v.name, progress)
    else:
        _run_parallel(cfgs, out_dir, jobs)
    for v in variants:
        evaluate_run(out_dir / v.name)
    meta = {"variants": [{"name": v.name, "method": v.method, "overrides": v.overrides}
                         for v in variants]}
    atomic_write_bytes(out_dir / "variants.json", lambda f: f.write(json.dumps(meta).encode()))
    shared = variance_at_shared_parameters(out_dir, [v.name for v in variants])
    atomic_write_bytes(out_dir / "variance_at_shared.json",
                       lambda f: f.write((json.dumps(shared, indent=2) + "\n").encode()))
    return write_results(out_dir)


SHARED_SOURCES = ("var+c", "wsram+q+c")  # runs whose final parameters every estimator is tried at


def variance_at_shared_parameters(out_dir: Path, names: list[str],
                                  repeats: int = 20) -> list[dict[str, Any]]:
    """Gradient variance of every method's estimator at the same parameters and minibatch.

    Curves against updates compare models in different states (a policy that has
    collapsed has little variance left); this compares the estimators themselves, at the
    final parameters of each run in SHARED_SOURCES, on the diagnostics' fixed minibatch.
    """
    import torch

    from ..diagnostics import gradient_estimates, variance_stats
    from ..tasks import load_run
    from .task import diag_batch

    out = []
    for source in (s for s in SHARED_SOURCES if s in names):
        cfg, task, model, state = load_run(out_dir / source, task="classification")
        x, y = diag_batch(cfg, task.train_digits)
        table = {}
        for name, method in METHODS.items():
            if not method.attends or (name == "vimco" and cfg.samples < 2):
                continue
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.seed)
                g = gradient_estimates(model, method, x, y, cfg.samples, repeats)
            table[name] = variance_stats(g)
        out.append({"parameters_of": source, "step": int(state["step"]), "repeats": repeats,
                    "batch": cfg.diag_batch, "samples": cfg.samples, "variance": table})
    return out


def _run_parallel(cfgs: dict[str, ClassificationConfig], out_dir: Path, jobs: int) -> None:
    """Run variants as separate processes, ``jobs`` at a time, sharing the CPU threads:
    each gets its share of the cores this process may use (OpenMP workers sleep when idle,
    see ``wsram/__init__.py``, so more jobs than cores slow down in proportion)."""
    cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
             else os.cpu_count() or 1)
    threads = max(1, cores // jobs)
    pending = list(cfgs.items())
    running: list[tuple[str, subprocess.Popen]] = []
    failed = []
    while pending or running:
        while pending and len(running) < jobs:
            name, cfg = pending.pop(0)
            run_dir = out_dir / name
            run_dir.mkdir(parents=True, exist_ok=True)
            cfg_file = out_dir / f".{name}.yaml"
            cfg_file.write_text(yaml.safe_dump(
                replace(cfg, threads=cfg.threads or threads).to_dict(), sort_keys=False))
            cmd = [sys.executable, "-m", "wsram", "train", "--run-dir", str(run_dir),
                   "--config", str(cfg_file), "--no-progress"]
            if _resumable(cfg, run_dir):
                cmd.append("--resume")
            log = open(out_dir / f"{name}.log", "a")
            running.append((name, subprocess.Popen(cmd, stdout=log, stderr=log)))
            print(f"== {name} started (log: {out_dir / (name + '.log')})", file=sys.stderr)
        name, proc = running[0]
        proc.wait()
        running.pop(0)
        if proc.returncode != 0:
            failed.append(name)
    if failed:
        raise WsramError(f"variants failed: {', '.join(failed)} (see their .log files in "
                         f"{out_dir})")


def _smoothed_error(rows: list[dict[str, Any]], window: int = 5) -> list[tuple[int, float]]:
    pts = [(r["step"], r["train/error"]) for r in rows if "train/error" in r]
    out = []
    for i in range(len(pts)):
        chunk = [e for _, e in pts[max(0, i - window + 1):i + 1]]
        out.append((pts[i][0], sum(chunk) / len(chunk)))
    return out


def updates_to_reach(rows: list[dict[str, Any]], level: float) -> int | None:
    """First update at which the smoothed training error is at or below ``level``."""
    return next((s for s, e in _smoothed_error(rows) if e <= level), None)


def _tail_mean(rows: list[dict[str, Any]], key: str, n: int = 3) -> float | None:
    vals = [r[key] for r in rows if key in r][-n:]
    return sum(vals) / len(vals) if vals else None


def summarise(run_dir: Path) -> dict[str, Any]:
    rows = read_metrics(run_dir)
    train_rows = [r for r in rows if "train/error" in r]
    diag_rows = [r for r in rows if "diag/grad_var" in r]
    ev = json.loads((run_dir / "eval.json").read_text()) if (run_dir / "eval.json").is_file() \
        else {}
    smooth = _smoothed_error(rows)
    out: dict[str, Any] = {
        "updates": train_rows[-1]["step"] if train_rows else 0,
        "train_time_s": train_rows[-1]["time"] if train_rows else None,
        "final_train_error": smooth[-1][1] if smooth else None,
        "final_ess": train_rows[-1].get("train/ess") if train_rows else None,
        # On the diagnostics' fixed batch, mean of the last 3 diagnostics: the prior's error
        # with one trajectory and with class probabilities averaged over K trajectories.
        "final_diag_error_sampled": _tail_mean(diag_rows, "diag/error_sampled"),
        "final_diag_error_mc": _tail_mean(diag_rows, "diag/error_mc"),
        "final_grad_var": diag_rows[-1]["diag/grad_var"] if diag_rows else None,
        "median_grad_var": (sorted(r["diag/grad_var"] for r in diag_rows)[len(diag_rows) // 2]
                            if diag_rows else None),
        "updates_to_error": {str(lv): updates_to_reach(rows, lv) for lv in ERROR_LEVELS},
    }
    out.update({k: ev.get(k) for k in ("test_error_sampled", "test_error_mc",
                                       "test_error_deterministic")})
    return out


def write_results(out_dir: str | Path) -> dict[str, Any]:
    """Tables (results.json, results.md) and figures from the run folders' files alone."""
    from .plots import plot_comparison

    out_dir = Path(out_dir)
    names = _variant_names(out_dir)
    if not names:
        raise WsramError(f"{out_dir}: no runs to compare")
    summary = {n: summarise(out_dir / n) for n in names}
    speedup = None
    if "var+c" in summary and "wsram+q+c" in summary:
        target = summary["var+c"]["final_train_error"]
        reach = updates_to_reach(read_metrics(out_dir / "wsram+q+c"), target)
        speedup = {"var+c_final_train_error": target, "var+c_updates": summary["var+c"]["updates"],
                   "wsram+q+c_updates_to_reach_it": reach,
                   "ratio": summary["var+c"]["updates"] / reach if reach else None}
    cfg = load_yaml(out_dir / names[0] / "config.yaml")
    shared_path = out_dir / "variance_at_shared.json"
    shared = json.loads(shared_path.read_text()) if shared_path.is_file() else []
    results = {"runs": summary, "speedup": speedup, "variance_at_shared": shared,
               "setup": {k: cfg.get(k) for k in ("samples", "steps", "batch_size", "lr",
                                                  "canvas_size", "glimpses", "seed")}}
    atomic_write_bytes(out_dir / "results.json",
                       lambda f: f.write((json.dumps(results, indent=2) + "\n").encode()))
    atomic_write_bytes(out_dir / "results.md", lambda f: f.write(_markdown(results).encode()))
    plot_comparison(out_dir, names)
    return results


def _variant_names(out_dir: Path) -> list[str]:
    meta = out_dir / "variants.json"
    if meta.is_file():
        try:
            names = [str(v["name"]) for v in json.loads(meta.read_text())["variants"]]
        except (ValueError, KeyError, TypeError):
            raise WsramError(f"{meta}: not a list of variants written by wsram compare") \
                from None
    else:
        names = [v.name for v in default_variants()]
    return [n for n in names if (out_dir / n / "metrics.jsonl").is_file()]


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _num(v: float | None, fmt: str = "{:.3g}") -> str:
    return "-" if v is None else fmt.format(v)


def _markdown(res: dict[str, Any]) -> str:
    runs, setup = res["runs"], res["setup"]
    lines = ["# Comparison of training methods", "",
             f"Setup: K = {setup['samples']} samples, {setup['steps']} updates of batch "
             f"{setup['batch_size']}, Adam lr {setup['lr']}, {setup['canvas_size']}x"
             f"{setup['canvas_size']} canvases, {setup['glimpses']} glimpses, seed "
             f"{setup['seed']}. Test error with M-sample averaging (paper Figure 3):", "",
             "| | without control variates | with control variates (+c) |", "|---|---|---|"]
    for label, a, b in (("VAR", "var", "var+c"), ("WS-RAM", "wsram", "wsram+c"),
                        ("WS-RAM+q", "wsram+q", "wsram+q+c")):
        lines.append(f"| {label} | {_pct(runs.get(a, {}).get('test_error_mc'))} | "
                     f"{_pct(runs.get(b, {}).get('test_error_mc'))} |")
    if "vimco" in runs:
        lines.append(f"| VIMCO | {_pct(runs['vimco'].get('test_error_mc'))} | |")
    lines += ["", "## Every run", "",
              "| run | test error (1 sample / mean of M / deterministic) | final train error "
              "(1 sample / mean of K) | updates | time (s) | final ESS "
              "| grad. variance (last / median) |",
              "|---|---|---|---|---|---|---|"]
    for n, r in runs.items():
        lines.append(
            f"| {n} | {_pct(r['test_error_sampled'])} / {_pct(r['test_error_mc'])} / "
            f"{_pct(r['test_error_deterministic'])} | {_pct(r['final_train_error'])} / "
            f"{_pct(r['final_diag_error_mc'])} | "
            f"{r['updates']} | {_num(r['train_time_s'], '{:.0f}')} | {_num(r['final_ess'])} | "
            f"{_num(r['final_grad_var'])} / {_num(r['median_grad_var'])} |")
    lines += ["", "## Updates to reach a training error", "",
              "| run | " + " | ".join(_pct(lv) for lv in ERROR_LEVELS) + " |",
              "|---|" + "---|" * len(ERROR_LEVELS)]
    for n, r in runs.items():
        lines.append(f"| {n} | " + " | ".join(
            _num(r["updates_to_error"][str(lv)], "{}") for lv in ERROR_LEVELS) + " |")
    sp = res.get("speedup")
    if sp:
        lines += ["", "## Speed-up", "",
                  f"VAR+c ended at a training error of {_pct(sp['var+c_final_train_error'])} "
                  f"after {sp['var+c_updates']} updates; WS-RAM+q+c first reached it after "
                  f"{_num(sp['wsram+q+c_updates_to_reach_it'], '{}')} updates"
                  + (f": {sp['ratio']:.1f}x fewer." if sp["ratio"] else " (never).")]
    for block in res.get("variance_at_shared") or []:
        lines += ["", f"## Gradient variance at the same parameters: those of "
                  f"{block['parameters_of']} after {block['step']} updates", "",
                  f"R = {block['repeats']} independent estimates of the prediction network's "
                  f"gradient on one fixed batch of {block['batch']} images, K = "
                  f"{block['samples']}, every estimator at the same parameters.", "",
                  "| estimator | trace of covariance | relative to squared norm of mean |",
                  "|---|---|---|"]
        for n, v in block["variance"].items():
            lines.append(f"| {n} | {_num(v['grad_var'])} | {_num(v['grad_var_rel'])} |")
    lines += ["", "Training error: one trajectory of the prediction network's own policy per "
              "training image, smoothed over 5 log steps; 'mean of K': class probabilities "
              "averaged over K trajectories of that policy, on the diagnostics' fixed batch "
              "(last 3 diagnostics). Gradient variance: trace of the "
              "covariance of R independent estimates of the prediction network's gradient on "
              "one fixed minibatch. Figures: figure2.png, figure4_exploration.png.", ""]
    return "\n".join(lines)
