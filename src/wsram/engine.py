"""One training update, the same for every task and method: forward (K trajectories per
example, the method's estimator, the exploration heuristics), backward, gradient average
over processes, per-network clipping, the non-finite guard, and the Adam steps.

The loop around it (``train.py``) samples batches, logs, evaluates and checkpoints.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .checkpoint import restore_generator
from .config import TrainConfig
from .distributed import Dist, rank_seed
from .estimators import EstimatorOutput
from .methods import Method
from .policy import ActionNoise, drawing_from
from .rollout import Rollout, device_of
from .schedule import lr_factor

#: a task's training metrics: (model, rollout, x, y, bf16) -> {"error": ..., ...}
Metrics = Callable[[nn.Module, Rollout, Any, Tensor, bool], dict[str, Tensor]]


def own_policy_rollout(model: nn.Module, rollout: Rollout, x: Any, y: Tensor,
                       bf16: bool) -> Rollout:
    """A rollout whose first trajectory is one of the prediction network's own untempered
    policy: ``rollout`` itself when its samples came from that policy, else one fresh
    trajectory per example (no gradient). Training errors are measured on it, never on the
    label-aware proposal's samples."""
    if rollout.sampled_from_prior:
        return rollout
    # The model's work per input (e.g. the sensor's pyramid, the context features) is the
    # same as in ``rollout``: passed on when the model kept it (``rollout.inputs``).
    kw = {} if rollout.inputs is None else {"inputs": rollout.inputs}
    with torch.no_grad(), torch.autocast(device_of(x).type, torch.bfloat16, enabled=bf16):
        return model.rollout(x, y, num_samples=1, **kw)


#: the scalar weights of an update's loss: (cv_gamma, entropy, coverage), each a number or
#: (in a stack of runs, ``stack.py``) each run's own as a tensor
Weights = tuple[Any, Any, Any]


def _weighs(w: Any) -> bool:
    return isinstance(w, Tensor) or w != 0


def forward_step(model: nn.Module, method: Method, cfg: TrainConfig, x: Any, y: Tensor,
                 rollout_fn: Any = None, metrics: Metrics | None = None,
                 weights: Weights | None = None,
                 ) -> tuple[Tensor, EstimatorOutput, Rollout, dict[str, Tensor]]:
    """One update's forward work: K trajectories per example, the method's estimator, the
    exploration heuristics, and the task's training metrics. Returns (loss, estimator
    output, rollout, metrics such as ``{"error": ...}``). ``rollout_fn`` (default
    ``model.rollout``) runs the K trajectories, e.g. a compiled version of it; ``metrics``
    is the task's ``train_metrics`` (default: none); ``weights`` replace the config's
    (cv_gamma, entropy, coverage); a heuristic of weight 0 is left out."""
    bf16 = cfg.precision == "bf16"
    gamma, entropy, coverage = weights or (cfg.cv_gamma, cfg.entropy, cfg.coverage)
    with torch.autocast(device_of(x).type, torch.bfloat16, enabled=bf16):
        rollout = (rollout_fn or model.rollout)(x, y, cfg.samples, proposal=method.proposal,
                                                temperature=cfg.temperature)
    est = method.objective(rollout, gamma)
    loss = est.loss
    if _weighs(entropy):
        loss = loss - entropy * rollout.entropy.mean()
    if _weighs(coverage):
        loss = loss + coverage * sum(
            d.coverage_penalty() for d in rollout.prior_dists) / len(rollout.prior_dists)
    return loss, est, rollout, (metrics(model, rollout, x, y, bf16) if metrics else {})


def update_values(loss: Tensor, est: EstimatorOutput, rollout: Rollout,
                  extra: dict[str, Tensor]) -> dict[str, Tensor]:
    """One update's figures for the log (before the gradient norm and the rate), detached."""
    values = {"loss": loss, **extra, "ess": est.ess.mean(), "bound": est.bound.mean(),
              "entropy": rollout.entropy.mean(), **est.terms}
    return {k: v.detach() for k, v in values.items()}


@dataclass
class Update:
    """What one call of :meth:`Engine.update` did."""

    applied: bool  # False: a non-finite loss or gradient, the parameters left unchanged
    stop_votes: float  # processes that asked to stop (signal or time limit) this update
    values: dict[str, Tensor]  # per-update figures for the log, on the device


class Engine:
    """The optimisers and one update of ``model`` by ``method`` (METHOD.md M3-M12).

    Each network (theta, eta, baseline) has its gradient clipped on its own, so that a
    large step of the inference network or the baseline never shrinks the prediction
    network's; the baseline has its own Adam and learning rate. The actions of an update
    are drawn from the engine's own generator (``noise``), seeded from the config's seed
    and this process's rank, and saved with the optimisers.
    """

    def __init__(self, model: nn.Module, method: Method, cfg: TrainConfig, ddp: Dist,
                 metrics: Metrics | None = None):
        self.model, self.method, self.cfg, self.ddp, self.metrics = model, method, cfg, ddp, metrics
        # foreach: one call per step for all parameters instead of a loop over them in
        # Python; the same arithmetic, bit for bit (``fused`` would round differently).
        self.opt = torch.optim.Adam([{"params": model.theta()}, {"params": model.eta()}],
                                    lr=cfg.lr, foreach=True)
        # A parameter group, not a list, so that a model without a baseline (cnn) gets one.
        self.opt_b = torch.optim.Adam([{"params": model.baseline_params()}],
                                      lr=cfg.baseline_lr, foreach=True)
        self.groups = [g for g in (model.theta(), model.eta(), model.baseline_params()) if g]
        self.params = [p for g in self.groups for p in g]
        self.rollout_fn = CompiledOrEager(model.rollout) if cfg.compile else model.rollout
        self.noise = ActionNoise(torch.Generator().manual_seed(action_seed(cfg.seed, ddp.rank)))

    def set_rates(self, step: int) -> float:
        """Set each network's rate for the update after ``step`` updates (the schedule,
        ``schedule.py``); return the factor on the starting rates."""
        cfg = self.cfg
        factor = lr_factor(cfg.lr_schedule, step, cfg.warmup, cfg.lr_min, cfg.horizon())
        for opt, lr in ((self.opt, cfg.lr), (self.opt_b, cfg.baseline_lr)):
            for group in opt.param_groups:
                group["lr"] = lr * factor
        return factor

    def update(self, x: Any, y: Tensor, want_stop: bool, step: int | None = None) -> Update:
        """Forward, backward, sync (with the stop vote), clip, guard, step. ``step``, the
        updates done so far, sets the scheduled rates first (None: the rates stay)."""
        cfg = self.cfg
        lr_now = cfg.lr * self.set_rates(step) if step is not None else None
        with drawing_from(self.noise):
            loss, est, rollout, extra = forward_step(self.model, self.method, cfg, x, y,
                                                     self.rollout_fn, self.metrics)
        self.opt.zero_grad(set_to_none=True)
        self.opt_b.zero_grad(set_to_none=True)
        loss.backward()
        stop_votes = self.ddp.sync(self.params, [float(want_stop)])[0]
        norms = [torch.nn.utils.clip_grad_norm_(g, cfg.grad_clip or math.inf, foreach=True)
                 for g in self.groups]
        # Synced gradients give every rank the same verdict; the loss is per rank. (A group
        # without gradients, e.g. q under VAR, reports a CPU zero: move it to the others.)
        finite = bool(torch.isfinite(torch.stack([n.to(loss.device) for n in norms])).all())
        if self.ddp.world == 1:
            finite = finite and bool(torch.isfinite(loss))
        if not finite:
            return Update(False, stop_votes, {})
        self.opt.step()
        self.opt_b.step()
        values = update_values(loss, est, rollout, extra)
        values["grad_norm"] = norms[0].detach()
        if lr_now is not None and logs_rate(cfg):
            values["lr"] = torch.tensor(lr_now, device=loss.device)
        return Update(True, stop_votes, values)

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.opt.state_dict(),
                "baseline_optimizer": self.opt_b.state_dict(),
                "action_rng": self.noise.generator.get_state()}

    def restore_noise(self, rng: Any, what: str) -> None:
        """Continue the action stream saved as ``action_rng``."""
        restore_generator(self.noise.generator, rng, what)

    def restart_noise(self, seed: int) -> None:
        """Start a fresh action stream (a rank other than 0 on resume; a checkpoint written
        before runs had their own)."""
        self.noise.generator.manual_seed(seed)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.opt.load_state_dict(state["optimizer"])
        self.opt_b.load_state_dict(state["baseline_optimizer"])
        # Checkpoints saved before foreach was set carry foreach=None in their groups.
        for g in self.opt.param_groups + self.opt_b.param_groups:
            g["foreach"] = True


def logs_rate(cfg: TrainConfig) -> bool:
    """Whether the log carries the rate (a schedule or a warm-up moves it)."""
    return cfg.lr_schedule != "constant" or bool(cfg.warmup)


def action_seed(seed: int, rank: int = 0) -> int:
    """Seed of a run's action stream (the stream the global generator's seed was before)."""
    return rank_seed(seed, rank, 3)


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
