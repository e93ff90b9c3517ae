"""Data-parallel training: two CPU processes (gloo) against a single-process emulation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY as TINY_BASE

from wsram.classification import make_config
from wsram.classification.data import CanvasGenerator, CanvasSpec, load_digits
from wsram.classification.task import build_model
from wsram.distributed import rank_seed
from wsram.engine import action_seed
from wsram.methods import METHODS
from wsram.policy import ActionNoise, drawing_from
from wsram.run_dir import read_metrics

TINY = dict(TINY_BASE, log_every=1, eval_every=0, checkpoint_every=3, diag_every=0, method="var+c",
            steps=6)


def torchrun(run: Path, nproc: int, *extra: str) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", "-m", "wsram", "train", "--run-dir", str(run),
           "--no-progress", *extra]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]


def emulate(world: int) -> dict[str, torch.Tensor]:
    """What `world` ranks compute, done in one process: each rank's own canvases and
    actions, the loss averaged over ranks, one update."""
    cfg = make_config(TINY)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg)
    noises = [ActionNoise(torch.Generator().manual_seed(action_seed(cfg.seed, r)))
              for r in range(world)]
    spec = CanvasSpec(cfg.canvas_size, cfg.digit_min, cfg.digit_max)
    digits = load_digits("train", holdout_every=cfg.holdout_every)  # validation digits held out
    gens = [CanvasGenerator(digits, spec, seed=rank_seed(cfg.seed, r, 1)) for r in range(world)]
    opt = torch.optim.Adam([{"params": model.theta()}, {"params": model.eta()}], lr=cfg.lr)
    opt_b = torch.optim.Adam(model.baseline_params(), lr=cfg.baseline_lr)
    method = METHODS[cfg.method]
    for _ in range(cfg.steps):
        opt.zero_grad()
        opt_b.zero_grad()
        for r in range(world):
            x, y = gens[r].sample(cfg.batch_size)
            with drawing_from(noises[r]):
                loss = method.objective(model.rollout(x, y, cfg.samples)).loss / world
            loss.backward()
        for group in (model.theta(), model.eta(), model.baseline_params()):
            torch.nn.utils.clip_grad_norm_(group, cfg.grad_clip)
        opt.step()
        opt_b.step()
    return model.state_dict()


@pytest.mark.slow
def test_two_gloo_ranks_match_the_single_process_emulation(tmp_path: Path) -> None:
    run = tmp_path / "ddp"
    args = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
    torchrun(run, 2, *args)
    got = torch.load(run / "last.pt", weights_only=True)
    assert got["step"] == 6 and got["world"] == 2
    want = emulate(2)
    for k, v in want.items():
        assert torch.allclose(got["model"][k], v, atol=1e-5), k
    # One rank alone would have learned something else: the check discriminates.
    alone = emulate(1)
    assert any(not torch.allclose(alone[k], want[k], atol=1e-5) for k in want)
    # Only rank 0 writes: each update is logged once.
    steps = [r["step"] for r in read_metrics(run) if "train/error" in r]
    assert steps == [1, 2, 3, 4, 5, 6]

    # The checkpoint resumes on another number of ranks.
    torchrun(run, 1, "--resume", "--steps=9")
    assert torch.load(run / "last.pt", weights_only=True)["step"] == 9


@pytest.mark.slow
def test_caption_training_under_torchrun(tmp_path: Path) -> None:
    """Two ranks: rank 0 pretrains and writes the encoder, the other waits and reads it;
    both train; only rank 0 writes the run folder and prints the result."""
    run = tmp_path / "cap"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "wsram", "caption", "train", "--run-dir", str(run), "--no-progress", "--json",
           "--encoder-steps", "2", "--steps", "4", "--num-train", "40", "--num-val", "10",
           "--num-test", "10", "--hidden", "16", "--embed", "8", "--batch-size", "4",
           "--samples", "2", "--eval-size", "5", "--log-every", "2", "--eval-every", "0",
           "--diag-every", "0", "--threads", "1"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    results = [line for line in p.stdout.splitlines() if line.startswith("{")]
    assert len(results) == 1 and '"step": 4' in results[0]
    assert (run / "encoder.pt").is_file() and (run / "last.pt").is_file()
    assert [r["step"] for r in read_metrics(run) if "train/nll" in r] == [2, 4]
