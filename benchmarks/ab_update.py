"""Interleaved A/B timing of the training update: a git revision's code against this tree's.

    python benchmarks/ab_update.py [--old main] [--setup default|classic] [--threads 1]
        [--rounds 15] [--updates 8]

Extracts ``src/wsram`` of ``--old`` (``git archive``) into a temporary folder as the
package ``wsram_old``, builds the same setup with both (same seeds), and alternates: in each
round, ``--updates`` updates of the old code, then as many of the new, each update being
what ``wsram train`` does per step (draw the canvases, ``Engine.update``). Prints the
updates/s of each and the ratio: per round (median, min, max) and over all rounds. Both run
in one process, a few seconds apart, so a change of background load hits both alike: the
ratio is what to read on a shared machine, not the absolute figures.
"""

from __future__ import annotations  # noqa: I001 - wsram before torch, see below

import argparse
import importlib
import io
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import wsram  # noqa: F401 - before torch, as the wsram command: its OpenMP settings
import torch

from throughput import SETUPS

ROOT = Path(__file__).resolve().parent.parent


def extract_old(rev: str, dest: Path) -> None:
    """src/wsram of ``rev`` as the package ``dest/wsram_old`` (absolute imports renamed)."""
    tar = subprocess.run(["git", "archive", rev, "src/wsram"], cwd=ROOT, check=True,
                         capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        t.extractall(dest, filter="data")
    pkg = dest / "wsram_old"
    (dest / "src" / "wsram").rename(pkg)
    for f in pkg.rglob("*.py"):
        text = f.read_text()
        f.write_text(re.sub(r"\b(from|import) wsram\b", r"\1 wsram_old", text))


def build(pkg: str, setup: str) -> tuple:
    """(engine, canvas generator, config) of ``pkg`` for a setup of throughput.py."""
    mod = {m: importlib.import_module(f"{pkg}.{m}") for m in (
        "config", "classification.task", "classification.data", "engine", "distributed",
        "methods")}
    data = mod["classification.data"]
    # the classification config's make_config: its own since the task layout, else the core's
    make = getattr(importlib.import_module(f"{pkg}.classification.config"), "make_config",
                   mod["config"].make_config)
    cfg = make(device="cpu", **SETUPS[setup])
    gen = data.CanvasGenerator(data.load_digits("train"), data.CanvasSpec(
        cfg.canvas_size, cfg.digit_min, cfg.digit_max), seed=1)
    torch.manual_seed(0)
    model = mod["classification.task"].build_model(cfg)
    method_of = getattr(mod["classification.task"], "method_of",  # the CNN left METHODS
                        mod["methods"].METHODS.__getitem__)
    engine = mod["engine"].Engine(model, method_of(cfg.method), cfg,
                                  mod["distributed"].Dist(),
                                  mod["classification.task"].classification_metrics)
    return engine, gen, cfg


def timed(run: tuple, n: int) -> float:
    engine, gen, cfg = run
    t0 = time.perf_counter()
    for _ in range(n):
        engine.update(*gen.sample(cfg.batch_size), False)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--old", default="main", help="git revision to compare against")
    p.add_argument("--setup", default="default", choices=["default", "classic"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--updates", type=int, default=8, help="updates per round and version")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        extract_old(a.old, Path(tmp))
        sys.path.insert(0, tmp)
        old, new = build("wsram_old", a.setup), build("wsram", a.setup)
        for run in (old, new):
            timed(run, 3)
        t_old = t_new = 0.0
        ratios = []
        for _ in range(a.rounds):
            o, n = timed(old, a.updates), timed(new, a.updates)
            t_old, t_new = t_old + o, t_new + n
            ratios.append(o / n)
    ratios.sort()
    total = a.rounds * a.updates
    print(f"# {a.setup} setup, {a.threads} thread(s), {a.rounds} rounds of {a.updates} "
          f"updates each, old = {a.old}")
    print(f"old {total / t_old:.2f} updates/s, new {total / t_new:.2f} updates/s; new/old "
          f"speed {t_old / t_new:.3f} over all rounds, per round median "
          f"{ratios[len(ratios) // 2]:.3f} (min {ratios[0]:.3f}, max {ratios[-1]:.3f})")


if __name__ == "__main__":
    main()
