"""Two trainings at once on the same cores: each one's speed against its speed alone.

    python benchmarks/shared_machine.py [--jobs 2] [--seconds 4] [--rounds 3] [--threads 0]
        [--env KEY=VALUE ...] [--setup default|classic]

Each training is a fresh ``python`` process that imports ``wsram`` first (as the ``wsram``
command does, so its OpenMP settings apply), sets the threads as ``wsram train`` does
(``--threads 0``: its default), and times the update ``wsram train`` runs
(``Engine.update`` plus sampling the canvases). First one process runs alone, then
``--jobs`` run together, started at the same moment; then the lone one again, so that a
change of background load shows as a difference between the two solo figures. Prints
updates/s alone and together, and each concurrent one's speed as a share of the solo
speed (the mean of the two solo runs). ``--env`` sets variables for the children, e.g.
``--env GOMP_SPINCOUNT=300000`` for libgomp's own default of spinning about 3 ms before a
worker sleeps, or ``--env OMP_NUM_THREADS=1``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def child(setup: str, threads: int) -> None:
    """Warm up, say "ready"; then for each line "SECONDS" on stdin, train that long and
    print the updates/s as JSON."""
    import wsram  # noqa: F401, I001 - before torch: the package's OpenMP defaults
    import torch

    from throughput import setup_config
    from wsram.classification.data import CanvasGenerator, CanvasSpec, load_digits
    from wsram.classification.task import method_of, build_model, classification_metrics
    from wsram.distributed import Dist
    from wsram.engine import Engine
    from wsram.train import setup_device

    cfg = setup_config(setup, "cpu")
    cfg.threads = threads
    setup_device(cfg, Dist())
    gen = CanvasGenerator(load_digits("train"), CanvasSpec(cfg.canvas_size, cfg.digit_min,
                                                           cfg.digit_max), seed=1)
    torch.manual_seed(0)
    model = build_model(cfg)
    engine = Engine(model, method_of(cfg.method), cfg, Dist(), classification_metrics)
    for _ in range(5):
        engine.update(*gen.sample(cfg.batch_size), False)
    print("ready", flush=True)
    for line in sys.stdin:
        seconds = float(line)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            engine.update(*gen.sample(cfg.batch_size), False)
            n += 1
        print(json.dumps({"updates_s": n / (time.perf_counter() - t0),
                          "threads": torch.get_num_threads()}), flush=True)


class Children:
    """``jobs`` warmed-up training processes that train on request."""

    def __init__(self, jobs: int, args: argparse.Namespace, env: dict[str, str]):
        here = os.path.dirname(os.path.abspath(__file__))
        cmd = [sys.executable, os.path.abspath(__file__), "--child", "--setup", args.setup,
               "--threads", str(args.threads)]
        self.procs = [subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       text=True, env=env, cwd=here) for _ in range(jobs)]
        for p in self.procs:
            if p.stdout.readline().strip() != "ready":
                self.close()
                raise SystemExit("a training process failed to start")

    def run(self, n: int, seconds: float) -> list[dict]:
        """The first ``n`` children train ``seconds`` at the same time; their results."""
        for p in self.procs[:n]:
            p.stdin.write(f"{seconds}\n")
            p.stdin.flush()
        return [json.loads(p.stdout.readline()) for p in self.procs[:n]]

    def close(self) -> None:
        for p in self.procs:
            p.stdin.close()
            p.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--seconds", type=float, default=4.0, help="per phase")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="as wsram train; 0 = its default")
    p.add_argument("--setup", default="default", choices=["default", "classic"])
    p.add_argument("--env", nargs="*", default=[], metavar="KEY=VALUE")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        child(a.setup, a.threads)
        return
    env = dict(os.environ)
    env.update(kv.split("=", 1) for kv in a.env)
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.path.abspath(src),
                                                      env.get("PYTHONPATH")]))
    print(f"# {os.cpu_count()} cores visible; setup {a.setup}; threads "
          f"{a.threads or 'default'}; env {' '.join(a.env) or '(as is)'}; "
          f"{a.rounds} rounds of {a.seconds:g} s alone, {a.seconds:g} s together", flush=True)
    kids = Children(a.jobs, a, env)
    try:
        ratios: list[list[float]] = [[] for _ in range(a.jobs)]
        for r in range(a.rounds):
            solo = kids.run(1, a.seconds)[0]["updates_s"]
            together = kids.run(a.jobs, a.seconds)
            # Each concurrent training against the lone one timed just before.
            for i, t in enumerate(together):
                ratios[i].append(t["updates_s"] / solo)
            print(f"round {r + 1}: alone {solo:.2f} updates/s; together "
                  + ", ".join(f"{t['updates_s']:.2f}" for t in together)
                  + f" updates/s ({together[0]['threads']} threads each)", flush=True)
    finally:
        kids.close()
    for i, rs in enumerate(ratios):
        print(f"training {i + 1} of {a.jobs}: together at {statistics.median(rs):.0%} of its "
              f"speed alone (median of {a.rounds} rounds; "
              + ", ".join(f"{x:.0%}" for x in rs) + ")")


if __name__ == "__main__":
    main()
