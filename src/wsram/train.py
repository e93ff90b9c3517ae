"""One training loop for every method (METHOD.md; methods in methods.py)."""

from __future__ import annotations

import json
import math
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from . import checkpoint
from .config import Config
from .data import CanvasGenerator, CanvasSpec, load_digits
from .diagnostics import diagnose
from .errors import WsramError
from .evaluate import test_errors
from .methods import METHODS
from .runs import RunLock, build_model, save_config, test_set

RUN_FILES = ("config.yaml", "metrics.jsonl", "last.pt", "best.pt", "eval.json", "glimpses.png")


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Create the run folder, refusing to clobber a previous run; fail early if unwritable."""
    existing = [f for f in RUN_FILES if (run_dir / f).exists()] if run_dir.is_dir() else []
    if resume:
        if not (run_dir / "last.pt").is_file():
            raise WsramError(f"{run_dir}: nothing to resume (no last.pt)")
    elif existing and not overwrite:
        raise WsramError(f"{run_dir}: already holds a run ({', '.join(existing)}); "
                         "use --resume to continue it or --overwrite to replace it")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise WsramError(f"{run_dir}: cannot write to the run folder ({e.strerror})") from None


class _Stop:
    """Turns SIGINT/SIGTERM into a request to checkpoint and stop after the current update."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _Stop:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def train(cfg: Config, run_dir: str | Path, resume: bool = False, overwrite: bool = False,
          progress: bool = True) -> dict[str, Any]:
    """Train ``cfg.method`` into ``run_dir``; return the last logged metrics."""
    cfg.validate()
    run_dir = Path(run_dir)
    prepare_run_dir(run_dir, resume, overwrite)
    with RunLock(run_dir):
        if overwrite and not resume:
            for f in RUN_FILES:
                (run_dir / f).unlink(missing_ok=True)
            shutil.rmtree(run_dir / "tb", ignore_errors=True)
        return _train(cfg, run_dir, resume, progress)


def _train(cfg: Config, run_dir: Path, resume: bool, progress: bool) -> dict[str, Any]:
    # --- setup: seeds, data, model, optimisers ---
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise WsramError(f"device {cfg.device}: CUDA is not available on this machine")
    torch.manual_seed(cfg.seed)
    method = METHODS[cfg.method]
    spec = CanvasSpec(cfg.canvas_size, cfg.digit_min, cfg.digit_max)
    train_digits = load_digits("train", cfg.data_dir)
    canvases = CanvasGenerator(train_digits, spec, seed=cfg.seed + 1, device=device)
    x_eval, y_eval = test_set(cfg, cfg.eval_size)
    # The diagnostics' fixed minibatch: a stream of its own, so training's is untouched.
    x_diag, y_diag = CanvasGenerator(train_digits, spec, seed=cfg.seed + 2,
                                     device=device).sample(cfg.diag_batch)
    model = build_model(cfg).to(device)
    opt = torch.optim.Adam([{"params": model.theta()}, {"params": model.eta()}], lr=cfg.lr)
    opt_b = torch.optim.Adam(model.baseline_params(), lr=cfg.baseline_lr)

    step, best, nonfinite_run, nonfinite_total, elapsed = 0, math.inf, 0, 0, 0.0
    if resume:
        state = checkpoint.load(run_dir / "last.pt", map_location=device)
        checkpoint.check_model_config(run_dir / "last.pt", state["config"], cfg.model_dict())
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        opt_b.load_state_dict(state["baseline_optimizer"])
        canvases.load_state_dict(state["canvas_rng"])
        torch.set_rng_state(state["torch_rng"])
        if device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        step, best = int(state["step"]), float(state["best"])
        elapsed = float(state.get("elapsed", 0.0))
        nonfinite_total = int(state.get("nonfinite_total", 0))
        _truncate_metrics(run_dir / "metrics.jsonl", step)
    save_config(cfg, run_dir)

    def save_checkpoint(name: str = "last.pt") -> None:
        state = {
            "step": step, "best": best, "config": cfg.model_dict(), "method": cfg.method,
            "model": model.state_dict(), "optimizer": opt.state_dict(),
            "baseline_optimizer": opt_b.state_dict(), "canvas_rng": canvases.state_dict(),
            "torch_rng": torch.get_rng_state(), "nonfinite_total": nonfinite_total,
            "elapsed": elapsed + time.perf_counter() - t_start,
        }
        if device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(device)
        checkpoint.save(run_dir / name, state)

    tb = _tensorboard(run_dir / "tb")
    metrics_file = open(run_dir / "metrics.jsonl", "a")

    def log(row: dict[str, Any]) -> None:
        metrics_file.write(json.dumps(row) + "\n")
        metrics_file.flush()
        if tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    tb.add_scalar(k, v, row["step"])

    def evaluate() -> dict[str, float]:
        nonlocal best
        errs = test_errors(model, x_eval, y_eval, samples=cfg.eval_samples)
        log({"step": step, **{f"eval/{k}": v for k, v in errs.items()}})
        if errs["test_error_mc"] < best:
            best = errs["test_error_mc"]
            save_checkpoint("best.pt")
        return errs

    sums: dict[str, float] = {}
    count, ema_err, last_row = 0, None, {}
    t_start = time.perf_counter()
    bar = tqdm(total=cfg.steps, initial=step, disable=not progress, dynamic_ncols=True,
               desc=cfg.method, unit="upd")
    with _Stop() as stop:
        deadline = t_start + cfg.time_limit * 60 if cfg.time_limit else math.inf
        while step < cfg.steps and not stop.requested and time.perf_counter() < deadline:
            # --- step: sample a batch, K trajectories per image, estimator -> loss ---
            x, y = canvases.sample(cfg.batch_size)
            rollout = model.rollout(x, y, cfg.samples, proposal=method.proposal,
                                    temperature=cfg.temperature)
            est = method.objective(rollout, cfg.cv_gamma)
            loss = est.loss
            if cfg.entropy:
                loss = loss - cfg.entropy * rollout.entropy.mean()
            if cfg.coverage:
                loss = loss + cfg.coverage * sum(
                    d.coverage_penalty() for d in rollout.prior_dists) / len(rollout.prior_dists)

            # --- training error: one trajectory of the (untempered) prior per image ---
            if rollout.sampled_from_prior:
                pred = rollout.class_log_probs[:, 0].detach().argmax(-1)
            else:
                with torch.no_grad():
                    pred = model.rollout(x, num_samples=1).class_log_probs[:, 0].argmax(-1)
            train_err = (pred != y).float().mean()

            # --- backward, non-finite guard, clip, update ---
            opt.zero_grad(set_to_none=True)
            opt_b.zero_grad(set_to_none=True)
            loss.backward()
            params = [p for g in opt.param_groups for p in g["params"]]
            norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip or math.inf)
            if not (torch.isfinite(loss) and torch.isfinite(norm)):
                nonfinite_run += 1
                nonfinite_total += 1
                if nonfinite_run >= cfg.max_nonfinite:
                    bar.close()
                    raise WsramError(
                        f"stopped at update {step}: {nonfinite_run} non-finite losses or "
                        f"gradients in a row; {run_dir / 'last.pt'} holds the last good state")
                continue
            nonfinite_run = 0
            opt.step()
            opt_b.step()
            step += 1

            # --- log ---
            vals = {"loss": loss.item(), "error": train_err.item(), "ess": est.ess.mean().item(),
                    "bound": est.bound.mean().item(), "entropy": rollout.entropy.mean().item(),
                    "grad_norm": norm.item()}
            for k, v in est.terms.items():
                vals[k] = v.item()
            for k, v in vals.items():
                sums[k] = sums.get(k, 0.0) + v
            count += 1
            ema_err = vals["error"] if ema_err is None else 0.98 * ema_err + 0.02 * vals["error"]
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.steps:
                last_row = {"step": step, **{f"train/{k}": v / count for k, v in sums.items()},
                            "train/nonfinite_total": nonfinite_total,
                            "time": elapsed + time.perf_counter() - t_start}
                log(last_row)
                sums, count = {}, 0
                bar.set_postfix(err=f"{ema_err:.3f}", ess=f"{vals['ess']:.2f}")

            # --- diagnostics, eval and checkpoint ---
            if cfg.diag_every and step % cfg.diag_every == 0:
                diag = diagnose(model, method, x_diag, y_diag, cfg.samples, cfg.diag_repeats,
                                seed=cfg.seed * 1_000_003 + step, temperature=cfg.temperature,
                                gamma=cfg.cv_gamma)
                log({"step": step, **{f"diag/{k}": v for k, v in diag.items()}})
            if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps:
                evaluate()
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                save_checkpoint()
    bar.close()
    if step >= cfg.steps:
        last_row.update({f"eval/{k}": v for k, v in evaluate().items()})
    save_checkpoint()
    metrics_file.close()
    if tb is not None:
        tb.close()
    last_row["stopped_early"] = step < cfg.steps
    return last_row


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop lines logged after the checkpoint being resumed, so no step appears twice."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except json.JSONDecodeError:
            pass
    checkpoint.atomic_write_bytes(path, lambda f: f.write("".join(k + "\n" for k in keep).encode()))


def _tensorboard(path: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(path))
