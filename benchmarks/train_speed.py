"""Training speed: updates per second (and trajectories per second) of the full update.

    python benchmarks/train_speed.py [--methods wsram+q+c var+c] [--batch-size 64]
        [--samples 5] [--steps 50] [--threads 0] [--device cpu]

Times the same work as one update of `wsram train` (canvas sampling, rollout, estimator,
backward, clip, Adam step) after a warm-up, and prints one line per method.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from wsram.config import make_config
from wsram.data import CanvasGenerator, CanvasSpec, load_digits
from wsram.methods import METHODS
from wsram.runs import build_model


def bench(method: str, batch_size: int, samples: int, steps: int, device: str) -> float:
    cfg = make_config(method=method, batch_size=batch_size, samples=samples, device=device)
    torch.manual_seed(0)
    dev = torch.device(device)
    model = build_model(cfg).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    gen = CanvasGenerator(load_digits("train"), CanvasSpec(cfg.canvas_size, cfg.digit_min,
                                                           cfg.digit_max), seed=1, device=dev)
    m = METHODS[method]

    def update() -> None:
        x, y = gen.sample(cfg.batch_size)
        r = model.rollout(x, y, cfg.samples, proposal=m.proposal)
        loss = m.objective(r).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()

    for _ in range(5):
        update()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        update()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", default=["wsram+q+c", "var+c"])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--samples", type=int, default=5)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    print(f"# torch {torch.__version__}, {a.device}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}, B={a.batch_size}, K={a.samples}")
    for method in a.methods:
        ups = bench(method, a.batch_size, a.samples, a.steps, a.device)
        print(f"{method:10s} {ups:8.1f} updates/s {ups * a.batch_size * a.samples:10.0f} "
              f"trajectories/s")


if __name__ == "__main__":
    main()
