"""Study throughput of stacked runs against one process per run (issue #20).

    python benchmarks/stacked.py [--device cpu|cuda] [--threads 1] [--seconds 3]
        [--sizes 1 2 4 8 16 32] [--methods var+c wsram+q+c] [--jobs 2] [--setup default]
        [--graph-sizes 1 16 256]     # CUDA only: the same stacks with the update graphed
    python benchmarks/stacked.py --ab [--rounds 5] ...     # robust to background load

For each method at a setup of ``throughput.py`` (default: 100x100 canvases, B = 64, K = 5):

- ``jobs``: ``--jobs`` processes at once, each training one run with ``--threads`` threads
  (the update ``wsram train`` runs: its canvases, then ``Engine.update``), as ``wsram
  compare --jobs 2 --threads 1`` does; started together, timed over the same window;
- ``stack R``: one process with ``--threads`` threads training a stack of R runs (seeds
  0..R-1; each run's canvases, then ``StackEngine.update``), for each R of ``--sizes``;
- ``graphed stack R``: the same with ``cuda_graphs`` (the update captured as one CUDA
  graph and replayed), for each R of ``--graph-sizes``; a row whose capture fell back to
  eager code says "failed", and the script ends with exit status 1.

Each figure is taken in a fresh process after two (stack) or three (single) updates of
warm-up. Printed: run-updates/s summed over runs (R x the stack's updates/s; the sum over
the processes), the same per run, and peak memory: on a CPU the growth of the peak
resident set size of each process over its size after imports and data (summed over the
processes); on CUDA ``torch.cuda.max_memory_allocated`` over what was allocated before.
On a machine shared with other work, compare only figures of one run of this script.

``--ab``: instead, in one process with ``--threads`` threads, R runs' updates one after
another (each run its own ``Engine``) and one update of a stack of the same R runs, timed
alternately for ``--rounds`` rounds (a change of background load hits both alike); prints
the median time per run-update of each and the stack's speed-up (> 1: the stack is faster).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def _setup(setup: str, method: str, device: str, threads: int, seed: int = 0) -> Any:
    import torch
    from throughput import setup_config

    if threads:
        torch.set_num_threads(threads)
    cfg = setup_config(setup, device)
    from wsram.config import replace

    return replace(cfg, method=method, seed=seed, threads=threads)


def _run(cfg: Any) -> tuple[Any, Any, Any]:
    """A run's canvas stream, model and engine, as ``wsram train`` builds them."""
    import torch

    from wsram.classification.data import CanvasGenerator, CanvasSpec, load_digits
    from wsram.classification.task import build_model, classification_metrics, method_of
    from wsram.distributed import Dist
    from wsram.engine import Engine

    dev = torch.device(cfg.device)
    gen = CanvasGenerator(load_digits("train"), CanvasSpec(cfg.canvas_size, cfg.digit_min,
                                                           cfg.digit_max),
                          seed=cfg.seed + 1, device=dev)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg).to(dev)
    return gen, model, Engine(model, method_of(cfg.method), cfg, Dist(), classification_metrics)


def _memory_start(device: str) -> tuple[int, bool]:
    import torch
    from throughput import reset_peak_rss, rss_bytes

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated(), True
    return rss_bytes(), reset_peak_rss()


def _memory_peak(device: str, base: int) -> int:
    import torch
    from throughput import peak_rss_bytes

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() - base
    return peak_rss_bytes() - base


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def child_stack(args: argparse.Namespace) -> dict[str, Any]:
    """A stack of ``args.size`` runs in this process: run-updates/s and peak memory."""
    import wsram  # noqa: F401 - before torch: the package's OpenMP defaults
    from wsram.stack import StackEngine

    cfgs = [_setup(args.setup, args.method, args.device, args.threads, s)
            for s in range(args.size)]
    if args.graphs:
        from wsram.config import replace

        cfgs = [replace(c, cuda_graphs=True) for c in cfgs]
    from wsram.classification.data import load_digits

    load_digits("train")  # data in memory before the base is taken
    base, exact = _memory_start(args.device)
    runs = [_run(c) for c in cfgs]
    engine = StackEngine([r[1] for r in runs], [r[2] for r in runs])
    B = cfgs[0].batch_size

    def update(step: int) -> None:
        batches = [r[0].sample(B) for r in runs]
        engine.update([b[0] for b in batches], [b[1] for b in batches], [step] * len(runs))

    warm = 5 if args.graphs else 2  # a graph: 3 eager updates, its capture, a replay
    for t in range(warm):
        update(t)
    _sync(args.device)
    n, t0 = 0, time.perf_counter()
    while n < 2 or time.perf_counter() - t0 < args.seconds:
        update(warm + n)
        n += 1
    _sync(args.device)
    ups = n / (time.perf_counter() - t0)
    if args.graphs and (engine.step_fn.failed or not engine.step_fn.replays):
        sys.exit(f"capture fell back to eager code: {engine.step_fn.failed}")
    return {"run_updates_s": ups * args.size, "peak_mem": _memory_peak(args.device, base),
            "mem_exact": exact}


def child_single(args: argparse.Namespace) -> None:
    """One run: warm up, say "ready", wait for a line, train ``args.seconds``, report."""
    import wsram  # noqa: F401 - before torch: the package's OpenMP defaults

    cfg = _setup(args.setup, args.method, args.device, args.threads, args.seed)
    from wsram.classification.data import load_digits

    load_digits("train")
    base, exact = _memory_start(args.device)
    gen, _, engine = _run(cfg)
    for _ in range(3):
        engine.update(*gen.sample(cfg.batch_size), False)
    print("ready", flush=True)
    sys.stdin.readline()
    n, t0 = 0, time.perf_counter()
    while n < 3 or time.perf_counter() - t0 < args.seconds:
        engine.update(*gen.sample(cfg.batch_size), False)
        n += 1
    _sync(args.device)
    print(json.dumps({"run_updates_s": n / (time.perf_counter() - t0),
                      "peak_mem": _memory_peak(args.device, base), "mem_exact": exact}),
          flush=True)


def ab_row(args: argparse.Namespace, size: int) -> dict[str, float]:
    """R single updates one after another against one stacked update of R, alternately."""
    import statistics

    from wsram.stack import StackEngine

    cfgs = [_setup(args.setup, args.method, args.device, args.threads, s) for s in range(size)]
    singles = [_run(c) for c in cfgs]
    stacked = [_run(c) for c in cfgs]
    engine = StackEngine([r[1] for r in stacked], [r[2] for r in stacked])
    B, step = cfgs[0].batch_size, [0]

    def one_by_one() -> None:
        for gen, _, eng in singles:
            eng.update(*gen.sample(B), False)

    def as_stack() -> None:
        batches = [r[0].sample(B) for r in stacked]
        engine.update([b[0] for b in batches], [b[1] for b in batches], [step[0]] * size)
        step[0] += 1

    def timed(fn: Any) -> float:
        _sync(args.device)
        t0 = time.perf_counter()
        fn()
        _sync(args.device)
        return (time.perf_counter() - t0) / size

    one_by_one(), as_stack()  # warm-up
    a, b = [], []
    for _ in range(args.rounds):
        a.append(timed(one_by_one))
        b.append(timed(as_stack))
    ma, mb = statistics.median(a), statistics.median(b)
    return {"single_ms": ma * 1e3, "stack_ms": mb * 1e3, "speedup": ma / mb}


def _child_cmd(args: argparse.Namespace, kind: str, graphs: bool = False,
               **extra: Any) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind,
           "--setup", args.setup, "--device", args.device, "--threads", str(args.threads),
           "--seconds", str(args.seconds), "--method", args.method]
    if graphs:
        cmd.append("--graphs")
    for k, v in extra.items():
        cmd += [f"--{k}", str(v)]
    return cmd


def jobs_row(args: argparse.Namespace) -> dict[str, Any]:
    """``--jobs`` single-run processes started together; their figures summed."""
    procs = [subprocess.Popen(_child_cmd(args, "single", seed=j), stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd=HERE)
             for j in range(args.jobs)]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    outs = [json.loads(p.stdout.readline()) for p in procs]
    for p in procs:
        p.wait()
    return {"run_updates_s": sum(o["run_updates_s"] for o in outs),
            "peak_mem": sum(o["peak_mem"] for o in outs), "runs": args.jobs}


def stack_row(args: argparse.Namespace, size: int, graphs: bool = False) -> dict[str, Any]:
    p = subprocess.run(_child_cmd(args, "stack", graphs, size=size), capture_output=True,
                       text=True, cwd=HERE)
    if p.returncode != 0:
        return {"error": p.stderr.strip().splitlines()[-1] if p.stderr.strip() else "failed"}
    return {**json.loads(p.stdout.strip().splitlines()[-1]), "runs": size}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    ap.add_argument("--methods", nargs="+", default=["var+c", "wsram+q+c"])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--setup", default="default")
    ap.add_argument("--child", choices=["single", "stack"])
    ap.add_argument("--method", default="var+c")
    ap.add_argument("--size", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ab", action="store_true",
                    help="one by one against a stack, alternately in one process")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--graph-sizes", type=int, nargs="*", default=[],
                    help="stack sizes to time with the update as a CUDA graph (CUDA only)")
    ap.add_argument("--graphs", action="store_true", help=argparse.SUPPRESS)  # a child's
    args = ap.parse_args()
    if args.graph_sizes and not args.device.startswith("cuda"):
        ap.error("--graph-sizes: CUDA graphs need --device cuda")
    sys.path.insert(0, str(HERE))
    if args.child == "single":
        child_single(args)
        return
    if args.child == "stack":
        print(json.dumps(child_stack(args)))
        return
    import torch

    if args.ab:
        import wsram  # noqa: F401 - before the first update: the package's OpenMP defaults

        print(f"# torch {torch.__version__}, device {args.device}, {args.threads} thread(s), "
              f"setup {args.setup}, median of {args.rounds} alternating rounds")
        print("| method | R | one by one, ms per run-update | stack, ms per run-update | "
              "stack speed-up |")
        print("|---|---|---|---|---|")
        for method in args.methods:
            args.method = method
            for size in args.sizes:
                r = ab_row(args, size)
                print(f"| {method} | {size} | {r['single_ms']:.1f} | {r['stack_ms']:.1f} | "
                      f"{r['speedup']:.2f} |", flush=True)
        return
    print(f"# torch {torch.__version__}, device {args.device}, {args.threads} thread(s) per "
          f"process, setup {args.setup}, {args.seconds:g} s per figure")
    print("| method | layout | runs | run-updates/s (sum) | per run | peak memory |")
    print("|---|---|---|---|---|---|")
    failed, summary = False, []
    for method in args.methods:
        args.method = method
        rows = [(f"--jobs {args.jobs}, one process per run", jobs_row(args))]
        rows += [(f"stack of {size}", stack_row(args, size)) for size in args.sizes]
        rows += [(f"graphed stack of {size}", stack_row(args, size, graphs=True))
                 for size in args.graph_sizes]
        for layout, row in rows:
            if "error" in row:
                failed = True
                print(f"| {method} | {layout} | | failed: {row['error'][:80]} | | |")
                continue
            print(f"| {method} | {layout} | {row['runs']} | {row['run_updates_s']:.2f} | "
                  f"{row['run_updates_s'] / row['runs']:.2f} | "
                  f"{row['peak_mem'] / 2**20:.0f} MiB |", flush=True)
        ok = {layout: row["run_updates_s"] for layout, row in rows if "error" not in row}
        best = max(((k, v) for k, v in ok.items() if "stack of" in k), key=lambda kv: kv[1],
                   default=None)
        if best:
            summary.append(f"{method}: most run-updates/s in one process: {best[1]:.0f} "
                           f"({best[0]})")
        if "stack of 1" in ok and "graphed stack of 1" in ok:
            summary.append(f"{method}: one run graphed against eager: "
                           f"{ok['graphed stack of 1'] / ok['stack of 1']:.2f}x")
    for line in summary:
        print(line)
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
