"""Interleaved timing of one training update of each method, on one setup and one machine:
what turns "A needs R times fewer updates than B" into seconds.

    PYTHONPATH=src python benchmarks/method_cost.py [--config configs/study.yaml]
        [--methods var+c wsram+c wsram+q+c] [--threads 1] [--rounds 10] [--updates 8]
        [--out docs/convergence/cost.json --setup default]

Builds each method's model with the same seed on the config's setup, then alternates: in
each round ``--updates`` updates of every method in turn (canvases drawn as ``wsram
train`` draws them; what ``wsram train`` does per step besides logging). A change of
background load hits every method alike, so the ratios are what to read on a shared
machine. Prints updates/s per method and its seconds per update relative to the first.
"""

from __future__ import annotations  # noqa: I001 - wsram before torch, see below

import argparse
import json
import platform
import statistics
from pathlib import Path

import wsram  # noqa: F401 - before torch, as the wsram command: its OpenMP settings
import torch

from wsram.classification import data
from wsram.classification.config import ClassificationConfig
from wsram.classification.task import method_of, build_model, classification_metrics
from wsram.classification import make_config
from wsram.config import load_yaml, replace
from wsram.distributed import Dist
from wsram.engine import Engine

from ab_update import timed  # the same timed loop of updates


def build(cfg: ClassificationConfig) -> tuple:
    gen = data.CanvasGenerator(data.load_digits("train"), data.CanvasSpec(
        cfg.canvas_size, cfg.digit_min, cfg.digit_max), seed=1)
    torch.manual_seed(0)
    engine = Engine(build_model(cfg), method_of(cfg.method), cfg, Dist(), classification_metrics)
    return engine, gen, cfg


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/study.yaml")
    p.add_argument("--methods", nargs="+", default=["var+c", "wsram+c", "wsram+q+c"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--updates", type=int, default=8, help="updates per round and method")
    p.add_argument("--out", help="a JSON file to keep the seconds per update in")
    p.add_argument("--setup", help="its key in --out (default: the config file's name)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    base = make_config(**{**load_yaml(a.config), "device": "cpu"})
    runs = {m: build(replace(base, method=m)) for m in a.methods}
    for run in runs.values():
        timed(run, 3)  # warm-up
    per_round: dict[str, list[float]] = {m: [] for m in a.methods}
    for _ in range(a.rounds):
        for m, run in runs.items():
            per_round[m].append(timed(run, a.updates) / a.updates)
    first = a.methods[0]
    print(f"# {a.config}, {a.threads} thread(s), {a.rounds} rounds of {a.updates} updates "
          "per method, interleaved")
    print(f"{'method':<12} {'updates/s':>10} {'s/update':>10} {'x ' + first:>14}")
    for m, ts in per_round.items():
        ratio = statistics.median(t / f for t, f in zip(ts, per_round[first], strict=True))
        print(f"{m:<12} {1 / statistics.mean(ts):>10.2f} {statistics.mean(ts):>10.4f} "
              f"{ratio:>14.2f}")
    if a.out:
        out = Path(a.out)
        kept = json.loads(out.read_text()) if out.is_file() else {}
        kept[a.setup or Path(a.config).stem] = {
            "config": a.config, "threads": a.threads, "rounds": a.rounds,
            "updates_per_round": a.updates, "cpu": _cpu(), "torch": torch.__version__,
            "seconds_per_update": {m: statistics.median(ts) for m, ts in per_round.items()}}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(kept, indent=2, sort_keys=True) + "\n")
        print(f"kept in {out}")


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
