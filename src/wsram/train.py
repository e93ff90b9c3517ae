"""One training loop for every method (METHOD.md; methods in methods.py)."""

from __future__ import annotations

import json
import math
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from . import checkpoint, distributed
from .config import TrainConfig, load_yaml, make_config
from .errors import WsramError
from .estimators import EstimatorOutput
from .methods import METHODS, Method
from .models import Rollout
from .runs import RunLock, save_config
from .task import Task, classification_metrics, device_of, task_for

RUN_FILES = ("config.yaml", "metrics.jsonl", "last.pt", "best.pt", "eval.json", "glimpses.png",
             "encoder.pt", "captions.json", "show", "tb")


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool,
                    inputs: list[str] | None = None) -> None:
    """Create the run folder, refusing to clobber a previous run (or, with ``overwrite``,
    to delete a file this run reads: ``inputs``); fail early if unwritable."""
    existing = [f for f in RUN_FILES if (run_dir / f).exists()] if run_dir.is_dir() else []
    if overwrite and not resume:
        doomed = [(run_dir / f).resolve() for f in existing]
        for p in inputs or []:
            src = Path(p).resolve()
            if any(src == d or d in src.parents for d in doomed):
                raise WsramError(f"{run_dir}: --overwrite would delete {p}, which this run "
                                 "reads; copy it elsewhere first")
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


def check_resume(cfg: TrainConfig, run_dir: Path) -> None:
    """Refuse to continue a run with a config that would make it another run: only how
    long, where and how verbosely it runs may change (TrainConfig.RESUMABLE_KEYS)."""
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        raise WsramError(f"{run_dir}: nothing to resume (no config.yaml)")
    try:
        saved = make_config(load_yaml(saved_path), type(cfg)).to_dict()
    except WsramError as e:
        raise WsramError(f"{run_dir}: cannot resume: its config.yaml is not a "
                         f"{type(cfg).__name__} ({e})") from None
    diff = [f"{k} {saved[k]!r} -> {v!r}" for k, v in cfg.to_dict().items()
            if saved.get(k) != v and k not in cfg.RESUMABLE_KEYS]
    if diff:
        raise WsramError(f"{run_dir}: cannot resume with a different config ({'; '.join(diff)}"
                         "); train into a new folder instead")


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


def train(cfg: TrainConfig, run_dir: str | Path, resume: bool = False, overwrite: bool = False,
          progress: bool = True) -> dict[str, Any]:
    """Train ``cfg.method`` on the task ``cfg`` describes into ``run_dir``; return the last
    logged metrics.

    Under ``torchrun`` every rank calls this; rank 0 alone checks, locks and writes the
    run folder, and ``batch_size`` is per rank.
    """
    cfg.validate()
    run_dir = Path(run_dir)
    ddp = distributed.from_env(cfg.device)
    try:
        if not ddp.is_main:
            return _train(cfg, run_dir, resume, False, ddp)
        try:
            return _train_main(cfg, run_dir, resume, overwrite, progress, ddp)
        except BaseException:
            ddp.announce(False)  # if rank 0 failed before training began, the others stop too
            raise
    finally:
        ddp.close()


def _train_main(cfg: TrainConfig, run_dir: Path, resume: bool, overwrite: bool,
                progress: bool, ddp: distributed.Dist) -> dict[str, Any]:
    """Rank 0 (or the only process): check, lock and clean the run folder, then train."""
    prepare_run_dir(run_dir, resume, overwrite, cfg.input_paths())
    if resume:
        check_resume(cfg, run_dir)
    with RunLock(run_dir):
        # A process killed while writing (SIGKILL, power loss) leaves its temporary
        # file behind; the file it was replacing is intact. Holding the lock, sweep.
        for stale in run_dir.glob(".*.tmp"):
            stale.unlink(missing_ok=True)
        if overwrite and not resume:
            for f in RUN_FILES:
                if (run_dir / f).is_dir():
                    shutil.rmtree(run_dir / f, ignore_errors=True)
                else:
                    (run_dir / f).unlink(missing_ok=True)
        return _train(cfg, run_dir, resume, progress, ddp)


def _train(cfg: TrainConfig, run_dir: Path, resume: bool, progress: bool,
           ddp: distributed.Dist) -> dict[str, Any]:
    # --- setup: seeds, data, model, optimisers ---
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise WsramError(f"device {cfg.device}: CUDA is not available on this machine")
        if ddp.world > 1:
            device = torch.device("cuda", ddp.local_rank)
        torch.cuda.set_device(device)
    main = ddp.is_main
    torch.manual_seed(cfg.seed)  # the same initial parameters on every rank
    method = METHODS[cfg.method]
    task: Task = task_for(cfg, progress)
    # Rank 0 prepares first (e.g. pretrains an encoder, computes features) and writes what
    # the other ranks then read (encoder.pt); they wait for its word, and stop if it failed.
    if main:
        if hasattr(task, "prepare"):
            task.prepare(run_dir, device, main, resume)
        ddp.announce(True)
    else:
        if not ddp.await_setup():
            raise WsramError(f"rank {ddp.rank}: stopping, rank 0 stopped before training "
                             "began (its error says why)")
        if hasattr(task, "prepare"):
            task.prepare(run_dir, device, main, True)
    stream = task.stream(device, distributed.rank_seed(cfg.seed, ddp.rank, 1))
    if main:
        task.prepare_eval(device)
    torch.manual_seed(cfg.seed)  # whatever the preparation drew, the same initial parameters
    model = task.build_model().to(device)
    opt = torch.optim.Adam([{"params": model.theta()}, {"params": model.eta()}], lr=cfg.lr)
    # A parameter group, not a list, so that a model without a baseline (cnn) gets an empty one.
    opt_b = torch.optim.Adam([{"params": model.baseline_params()}], lr=cfg.baseline_lr)
    # Each network's gradient is clipped on its own, so that a large step of the inference
    # network (or the baseline) never shrinks the prediction network's.
    groups = [g for g in (model.theta(), model.eta(), model.baseline_params()) if g]
    params = [p for g in groups for p in g]
    rollout_fn = CompiledOrEager(model.rollout) if cfg.compile else model.rollout
    if not main:  # other ranks sample other actions
        torch.manual_seed(distributed.rank_seed(cfg.seed, ddp.rank, 3))

    step, best, nonfinite_run, nonfinite_total, elapsed = 0, math.inf, 0, 0, 0.0
    sums: dict[str, torch.Tensor] = {}  # running sums of the open log window, on the device
    count = 0
    if resume:
        state = checkpoint.load(run_dir / "last.pt", map_location=device)
        checkpoint.check_model_config(run_dir / "last.pt", state["config"], cfg.model_dict())
        checkpoint.load_into(model, state["model"], run_dir / "last.pt")
        opt.load_state_dict(state["optimizer"])
        opt_b.load_state_dict(state["baseline_optimizer"])
        step, best = int(state["step"]), float(state["best"])
        elapsed = float(state.get("elapsed", 0.0))
        nonfinite_total = int(state.get("nonfinite_total", 0))
        # The log window open at the checkpoint, so that the next line averages the same
        # updates as it would have without the interruption.
        sums = {k: torch.tensor(v, device=device) for k, v in state.get("log_sums", {}).items()}
        count = int(state.get("log_count", 0))
        if main:  # rank 0 continues its streams exactly; others start fresh ones
            # "canvas_rng": the key before tasks other than classification existed
            stream.load_state_dict(state.get("data_rng", state.get("canvas_rng")))
            torch.set_rng_state(state["torch_rng"].cpu())  # RNG states are CPU byte tensors
            if device.type == "cuda" and "cuda_rng" in state:
                torch.cuda.set_rng_state(state["cuda_rng"].cpu(), device)
            _truncate_metrics(run_dir / "metrics.jsonl", step)
        else:
            torch.manual_seed(distributed.rank_seed(cfg.seed, ddp.rank, 3) + step)
            stream = task.stream(device, distributed.rank_seed(cfg.seed, ddp.rank, 1) + step)
    if main:
        save_config(cfg, run_dir)

    def save_checkpoint(name: str = "last.pt") -> None:
        state = {
            "step": step, "best": best, "config": cfg.model_dict(), "method": cfg.method,
            "model": model.state_dict(), "optimizer": opt.state_dict(),
            "baseline_optimizer": opt_b.state_dict(), "data_rng": stream.state_dict(),
            "torch_rng": torch.get_rng_state(), "nonfinite_total": nonfinite_total,
            "elapsed": elapsed + time.perf_counter() - t_start, "world": ddp.world,
            "log_sums": {k: v.item() for k, v in sums.items()}, "log_count": count,
            **task.extra_state(),
        }
        if device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(device)
        checkpoint.save(run_dir / name, state)

    tb = _tensorboard(run_dir / "tb", step) if main else None
    metrics_file = open(run_dir / "metrics.jsonl", "a") if main else None

    def log(row: dict[str, Any]) -> None:
        metrics_file.write(json.dumps(row) + "\n")
        metrics_file.flush()
        if tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    tb.add_scalar(k, v, row["step"])

    def evaluate() -> dict[str, float]:
        nonlocal best
        errs = task.evaluate(model)
        log({"step": step, **{f"eval/{k}": v for k, v in errs.items()}})
        # best holds a value where lower is better, whichever way the task's key points
        score = -errs[task.select_key] if task.select_higher else errs[task.select_key]
        if score < best:
            best = score
            save_checkpoint("best.pt")
        return errs

    # Running sums stay on the device and are read once per log step: no per-update sync.
    last_row: dict[str, Any] = {}
    start_step = step
    t_start = time.perf_counter()
    deadline = t_start + cfg.time_limit * 60 if cfg.time_limit else math.inf
    bar = tqdm(total=cfg.steps, initial=step, disable=not progress, dynamic_ncols=True,
               desc=cfg.method, unit="upd")
    with _Stop() as stop:
        while step < cfg.steps:
            # --- step: sample a batch, K trajectories per image, estimator -> loss ---
            x, y = stream.sample(cfg.batch_size)
            loss, est, rollout, extra = forward_step(model, method, cfg, x, y, rollout_fn,
                                                     task.train_metrics)

            # --- backward, average over ranks, non-finite guard, clip, update ---
            opt.zero_grad(set_to_none=True)
            opt_b.zero_grad(set_to_none=True)
            loss.backward()
            want_stop = stop.requested or time.perf_counter() >= deadline
            stop_votes = ddp.sync(params, [float(want_stop)])[0]
            norms = [torch.nn.utils.clip_grad_norm_(g, cfg.grad_clip or math.inf)
                     for g in groups]
            norm = norms[0]  # the prediction network's, for the log
            # Synced gradients give every rank the same verdict; the loss is per rank.
            finite = bool(torch.isfinite(torch.stack(norms)).all())
            if ddp.world == 1:
                finite = finite and bool(torch.isfinite(loss))
            if not finite:
                nonfinite_run += 1
                nonfinite_total += 1
                if nonfinite_run >= cfg.max_nonfinite:
                    bar.close()
                    if main:  # skipped updates left the parameters as they last were good
                        save_checkpoint()
                    raise WsramError(
                        f"stopped at update {step}: {nonfinite_run} non-finite losses or "
                        f"gradients in a row; {run_dir / 'last.pt'} holds the last good state")
                if stop_votes:
                    break
                continue
            nonfinite_run = 0
            opt.step()
            opt_b.step()
            step += 1

            # --- log (rank 0) ---
            vals = {"loss": loss, **extra, "ess": est.ess.mean(),
                    "bound": est.bound.mean(), "entropy": rollout.entropy.mean(),
                    "grad_norm": norm, **est.terms}
            for k, v in vals.items():
                v = v.detach()
                sums[k] = sums[k] + v if k in sums else v
            count += 1
            bar.update(1)
            if main and (step % cfg.log_every == 0 or step == cfg.steps):
                last_row = {"step": step,
                            **{f"train/{k}": v.item() / count for k, v in sums.items()},
                            "train/nonfinite_total": nonfinite_total,
                            "time": elapsed + time.perf_counter() - t_start}
                log(last_row)
                sums, count = {}, 0
                bar.set_postfix(err=f"{last_row['train/error']:.3f}",
                                ess=f"{last_row['train/ess']:.2f}")

            # --- diagnostics, eval and checkpoint (rank 0) ---
            if main and cfg.diag_every and step % cfg.diag_every == 0:
                diag = task.diagnose(model, method, step)
                if diag:
                    log({"step": step, **{f"diag/{k}": v for k, v in diag.items()}})
            if main and cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps:
                evaluate()
            if main and cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                save_checkpoint()
            if stop_votes:
                break
    bar.close()
    if main:
        if step >= cfg.steps and step > start_step:  # not again on a no-op resume
            last_row.update({f"eval/{k}": v for k, v in evaluate().items()})
        save_checkpoint()
        metrics_file.close()
        if tb is not None:
            tb.close()
    last_row["stopped_early"] = step < cfg.steps
    return last_row


class CompiledOrEager:
    """``torch.compile(fn)``, falling back to ``fn`` for good (with one line on stderr) if
    compiling or running the compiled code fails."""

    def __init__(self, fn: Any):
        self.eager = fn
        self.compiled: Any = torch.compile(fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.compiled is not None:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - any compiler failure means: run eagerly
                self.compiled = None
                print(f"wsram: torch.compile failed ({type(e).__name__}: "
                      f"{str(e).splitlines()[0][:120] if str(e) else ''}); running eagerly",
                      file=sys.stderr)
        return self.eager(*args, **kwargs)


def forward_step(model: torch.nn.Module, method: Method, cfg: TrainConfig, x: Any,
                 y: torch.Tensor, rollout_fn: Any = None, metrics: Any = classification_metrics,
                 ) -> tuple[torch.Tensor, EstimatorOutput, Rollout, dict[str, torch.Tensor]]:
    """One update's forward work: K trajectories per image, the method's estimator, the
    exploration heuristics, and the task's training metrics. Returns (loss, estimator
    output, rollout, metrics such as ``{"error": ...}``). ``rollout_fn`` (default
    ``model.rollout``) runs the K trajectories, e.g. a compiled version of it; ``metrics``
    is the task's ``train_metrics``."""
    bf16 = cfg.precision == "bf16"
    with torch.autocast(device_of(x).type, torch.bfloat16, enabled=bf16):
        rollout = (rollout_fn or model.rollout)(x, y, cfg.samples, proposal=method.proposal,
                                                temperature=cfg.temperature)
    est = method.objective(rollout, cfg.cv_gamma)
    loss = est.loss
    if cfg.entropy:
        loss = loss - cfg.entropy * rollout.entropy.mean()
    if cfg.coverage:
        loss = loss + cfg.coverage * sum(
            d.coverage_penalty() for d in rollout.prior_dists) / len(rollout.prior_dists)

    return loss, est, rollout, metrics(model, rollout, x, y, bf16)


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


def _tensorboard(path: Path, step: int):
    """A TensorBoard writer, or None without TensorBoard; on resume, events logged after
    the checkpoint's step are purged, as metrics.jsonl's lines are."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(path), purge_step=step + 1 if step else None)
