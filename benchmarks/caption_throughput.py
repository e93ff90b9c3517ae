"""Captioning throughput: training updates/s and decoding images/s.

    python benchmarks/caption_throughput.py [--device cpu] [--threads 1] [--seconds 5]
        [--method wsram+q+c] [--batch-size 32] [--samples 5] [--hidden 128] [--run RUN]

Uses the caption defaults on the embedded digit scenes, with a randomly initialised model
and frozen digit encoder (their weights do not change the cost of a training update), or
the model, encoder and config of a trained caption run (``--run``; decoding speed depends
on how long the captions it writes are, so time decoding with a trained model). Prints:

decode  images/s of greedy decoding and of beam search (width 3), no teacher forcing, and
        the mean length of the captions decoded (timed first, on the model as loaded).
train   updates/s of `wsram caption train`'s step (sample a batch of features and
        captions, K teacher-forced trajectories, the estimator, the training metrics,
        backward, per-network clipping, Adam), captions/s (B x updates/s), trajectories/s
        (B x K x updates/s), and the mean caption length in the batches.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from wsram.captioning.config import CaptionConfig
from wsram.captioning.encoder import DigitEncoder
from wsram.captioning.task import CaptionTask
from wsram.config import make_config, replace
from wsram.engine import forward_step
from wsram.methods import METHODS
from wsram.registry import load_run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--method", default="wsram+q+c")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--samples", type=int, default=5)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--run", help="a trained caption run folder (its model, encoder, config)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.run:
        cfg, task, model, _ = load_run(args.run, task="captioning")
        cfg = replace(cfg, batch_size=args.batch_size, samples=args.samples)
        task.cfg = cfg
        task.prepare(None, device, vocab=task.vocab, encoder=task.encoder)
        model.train().to(device)
    else:
        cfg = make_config({"method": args.method, "batch_size": args.batch_size,
                           "samples": args.samples, "hidden": args.hidden}, CaptionConfig)
        task = CaptionTask(cfg, progress=False)
        task.prepare(None, device, encoder=DigitEncoder().eval().requires_grad_(False))
        model = task.build_model().to(device)
    method = METHODS[cfg.method]
    opt = torch.optim.Adam([{"params": model.theta()}, {"params": model.eta()}], lr=cfg.lr)
    opt_b = torch.optim.Adam([{"params": model.baseline_params()}], lr=cfg.baseline_lr)
    groups = [model.theta(), model.eta(), model.baseline_params()]
    stream = task.stream(device, 0)
    words = []

    def update() -> None:
        x, y = stream.sample(cfg.batch_size)
        words.append(float((y[:, 1:] != 0).sum(1).float().mean()))
        loss = forward_step(model, method, cfg, x, y, None, task.train_metrics)[0]
        opt.zero_grad(set_to_none=True)
        opt_b.zero_grad(set_to_none=True)
        loss.backward()
        for g in groups:
            torch.nn.utils.clip_grad_norm_(g, cfg.grad_clip or math.inf)
        opt.step()
        opt_b.step()

    def timed(fn, seconds: float) -> float:
        for _ in range(3):  # warm-up
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            fn()
            n += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        return n / (time.perf_counter() - t0)

    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
          f"{cfg.method}, B = {cfg.batch_size}, K = {cfg.samples}, hidden {cfg.hidden}")
    feats = [f[:100].to(device) for f in task.split_features("val")]
    n = feats[0].shape[0]
    model.eval()  # decode the model as loaded, before the timed updates change it
    for beam in (1, 3):
        rate = timed(lambda b=beam: model.decode(feats, cfg.max_len, b), args.seconds / 2) * n
        length = (model.decode(feats, cfg.max_len, beam)[0] != 0).sum(1).float().mean()
        print(f"decode  {'greedy' if beam == 1 else f'beam {beam}':<7} {rate:.0f} images/s "
              f"(batch {n}, mean caption length {length:.1f} tokens with <eos>)")
    model.train()
    ups = timed(update, args.seconds)
    print(f"train   {ups:.2f} updates/s, {ups * cfg.batch_size:.0f} captions/s, "
          f"{ups * cfg.batch_size * cfg.samples:.0f} trajectories/s "
          f"(mean caption length {sum(words) / len(words):.1f} tokens with <eos>)")


if __name__ == "__main__":
    main()
