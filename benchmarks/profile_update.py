"""Per-operator profile of one training update (``wsram.engine.Engine.update``).

    python benchmarks/profile_update.py [--setup default|classic] [--threads 1]
        [--updates 20] [--rows 25] [--sort self_cpu_time_total]

Runs a few warm-up updates, then profiles ``--updates`` updates with ``torch.profiler``
and prints the per-operator table (self CPU time, share and calls per update). On a
shared machine the absolute times move with the load; the shares and the call counts
are what to read.
"""

from __future__ import annotations  # noqa: I001 - wsram before torch, see below

import argparse

import wsram  # noqa: F401 - before torch: the package's OpenMP defaults
import torch
from torch.profiler import ProfilerActivity, profile

from throughput import SETUPS, setup_config
from wsram.classification.data import CanvasGenerator, CanvasSpec, load_digits
from wsram.classification.task import method_of, build_model, classification_metrics
from wsram.distributed import Dist
from wsram.engine import Engine


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--setup", default="default", choices=list(SETUPS))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--updates", type=int, default=20)
    p.add_argument("--rows", type=int, default=25)
    p.add_argument("--sort", default="self_cpu_time_total")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    cfg = setup_config(a.setup, "cpu")
    gen = CanvasGenerator(load_digits("train"), CanvasSpec(cfg.canvas_size, cfg.digit_min,
                                                           cfg.digit_max), seed=1)
    torch.manual_seed(0)
    model = build_model(cfg)
    engine = Engine(model, method_of(cfg.method), cfg, Dist(), classification_metrics)
    batches = [gen.sample(cfg.batch_size) for _ in range(a.updates + 5)]
    for x, y in batches[:5]:
        engine.update(x, y, False)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for x, y in batches[5:]:
            engine.update(x, y, False)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    calls = sum(e.count for e in events)
    print(f"# setup {a.setup} ({cfg.method}, B={cfg.batch_size}, K={cfg.samples}), "
          f"{a.threads} thread(s), {a.updates} updates profiled; per update: "
          f"{total / a.updates / 1e3:.2f} ms self CPU, {calls / a.updates:.0f} operator calls")
    rows = sorted(events, key=lambda e: getattr(e, a.sort), reverse=True)[:a.rows]
    print("| operator | share of self CPU | calls per update | self CPU us per update |")
    print("|---|---|---|---|")
    for e in rows:
        print(f"| {e.key} | {e.self_cpu_time_total / total:.1%} | {e.count / a.updates:.0f} | "
              f"{e.self_cpu_time_total / a.updates:.0f} |")


if __name__ == "__main__":
    main()
