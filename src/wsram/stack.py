"""Stacked runs: the updates of R runs of one method as one program (issue #20).

R runs that differ only in scalar settings (``STACK_KEYS``: seed, rates, cv_gamma, the
heuristic weights, the schedule, how long and how often they log) keep their parameters
in tensors with a leading run axis, ``(R, ...)``, and one update of all of them is one
``torch.func.vmap`` of the single run's forward (:func:`wsram.engine.forward_step`, run
with each run's parameters through ``functional_call``): R small operators become one
large one. What makes each run its own stays per run:

- its data (each run's stream draws its own batch) and its actions (its own generator,
  :class:`BankNoise`: the numbers the single run would draw, in the same order);
- its clipping (each network's gradient norm per run, never over the stack), its
  non-finite guard (a run whose loss or gradient is not finite is left unchanged, the
  others step), its Adam state, step count and rate (:class:`StackedAdam`).

On a CPU the stacked update is no faster than R updates one after another (the matrix
multiplies are the same work; docs/performance.md, Stacked runs); it is meant for GPUs.
"""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from .config import TrainConfig
from .engine import Engine, forward_step, logs_rate, update_values
from .errors import WsramError
from .graphs import GraphedStep
from .methods import METHODS
from .policy import drawing_from
from .registry import spec_for
from .schedule import lr_factor

#: config keys in which the runs of one stack may differ; every other key is shared
STACK_KEYS = ("seed", "lr", "baseline_lr", "grad_clip", "cv_gamma", "entropy", "coverage",
              "lr_schedule", "warmup", "lr_min", "schedule_steps", "steps", "time_limit",
              "eval_every", "log_every", "diag_every", "checkpoint_every", "max_nonfinite")


#: runs per stack that ``wsram compare`` trains by default, per device type: measured
#: with ``benchmarks/stacked.py`` (docs/performance.md, Stacked runs). On the CPU a stack
#: is slower than one process per run, so none; on CUDA not measured yet, so none until
#: ``benchmarks/stacked.py --device cuda`` says otherwise.
DEFAULT_STACK_SIZE = {"cpu": 1, "cuda": 1}


def default_stack_size(device: str) -> int:
    return DEFAULT_STACK_SIZE.get(device.split(":")[0], 1)


def stack_problem(cfgs: list[TrainConfig]) -> str | None:
    """Why these configs cannot train as one stack (None: they can)."""
    first = cfgs[0]
    if len({type(c) for c in cfgs}) > 1:
        return "the runs are of different tasks"
    spec = spec_for(first)
    if not spec.stackable:
        return f"runs of the {spec.name} task are not stacked (train them one by one)"
    if first.method not in METHODS:
        return f"{first.method} is a baseline of the task's own, not stacked"
    for f in fields(first):
        if f.name not in STACK_KEYS and any(getattr(c, f.name) != getattr(first, f.name)
                                            for c in cfgs):
            return f"the runs differ in {f.name}, which a stack shares"
    if first.compile:
        return "compile: a stack is not compiled"
    return None


class BankNoise:
    """A run's action noise inside the vmapped update: the uniforms its generator would
    give, drawn beforehand as one bank per run (``bank``, logically ``(n,)``) and handed
    out in order. Asked for more than the bank holds, it hands out 1/2 and records the
    demand, so that the update is run again with a bank large enough."""

    def __init__(self, bank: Tensor):
        self.bank, self.pos = bank, 0

    def uniform(self, shape: tuple[int, ...], device: torch.device) -> Tensor:
        n = math.prod(shape)
        start, self.pos = self.pos, self.pos + n
        if self.pos > self.bank.shape[-1]:
            return torch.full(shape, 0.5, device=device)
        return self.bank[start:self.pos].view(shape)


class _Step(nn.Module):
    """The single run's forward as a module, so that ``functional_call`` swaps in one
    run's parameters for everything it calls (the rollout, the task's metrics)."""

    def __init__(self, model: nn.Module, engine: Engine):
        super().__init__()
        self.model = model
        self.method, self.cfg, self.metrics = engine.method, engine.cfg, engine.metrics
        self.keep_actions = False  # also return the actions (tests compare them)

    def forward(self, x: Any, y: Tensor, weights: Any) -> dict[str, Tensor]:
        loss, est, rollout, extra = forward_step(self.model, self.method, self.cfg, x, y,
                                                 None, self.metrics, weights)
        out = update_values(loss, est, rollout, extra) | {"_loss": loss}
        if self.keep_actions:
            out |= {"_locs": rollout.locs.detach(), "_scales": rollout.scales}
        return out


def _stacked(values: list[Any], device: torch.device) -> Any:
    """Per-run numbers as a float64 tensor (R,) when they differ, else the one number
    (the single run's own arithmetic, exactly)."""
    if all(v == values[0] for v in values):
        return values[0]
    return torch.tensor(values, dtype=torch.float64, device=device)


class StackedAdam:
    """Adam (``torch.optim.Adam``'s arithmetic, foreach path, default betas and eps) on
    stacked parameters, with each run's own step count and rate, stepping only the runs
    ``applied`` says. ``names``: the parameters of one optimiser of the single run.

    A step is three parts, so that the middle one reads no number back to the host and can
    be captured in a CUDA graph (``graphs.py``): :meth:`scalars` (each run's step size and
    bias correction, from its step count, on the host), :meth:`apply` (the update on the
    device, masked by ``applied``), :meth:`advance` (the step counts, once ``applied`` is
    known on the host)."""

    def __init__(self, names: list[str], runs: int):
        self.names = names
        self.betas, self.eps = (0.9, 0.999), 1e-8
        self.steps = [0] * runs  # Adam's step count, per run
        self.exp_avg: dict[str, Tensor] = {}  # (R, ...) per parameter that has state
        self.exp_avg_sq: dict[str, Tensor] = {}
        self.live = False  # whether the last apply had a gradient to step with

    def step(self, params: dict[str, Tensor], lrs: list[float], applied: Tensor) -> None:
        """One step of every parameter with a gradient, for the runs where ``applied``."""
        size, bc2 = self.scalars(lrs, applied.device)
        self.apply(params, size, bc2, applied)
        self.advance(applied.tolist())

    def scalars(self, lrs: list[float], device: torch.device) -> tuple[Tensor, Tensor]:
        """Each run's step size and second-moment bias correction for its next step, as
        float32 ``(R,)`` (as torch's Adam: python floats per run, one rounding to float32);
        a run whose step is not applied leaves them unused."""
        beta1, beta2 = self.betas
        nxt = [s + 1 for s in self.steps]
        size = [-(lr / (1 - beta1 ** s)) for lr, s in zip(lrs, nxt, strict=True)]
        bc2 = [(1 - beta2 ** s) ** 0.5 for s in nxt]
        return torch.tensor(size, device=device), torch.tensor(bc2, device=device)

    def apply(self, params: dict[str, Tensor], size: Tensor, bc2: Tensor,
              applied: Tensor) -> None:
        """The step on the device (no number read back): parameters and moments of the
        runs not ``applied`` stay as they were. The moments of a parameter are made on its
        first step (outside a graph: a captured update is warmed up first)."""
        beta1, beta2 = self.betas
        self.live = False
        for n in self.names:
            p, g = params[n], params[n].grad
            if g is None:
                continue
            self.live = True
            shape = (-1,) + (1,) * (p.dim() - 1)
            keep = applied.view(shape)
            m = self.exp_avg.setdefault(n, torch.zeros_like(p))
            v = self.exp_avg_sq.setdefault(n, torch.zeros_like(p))
            m_new = m.lerp(g, 1 - beta1)
            v_new = (v * beta2).addcmul_(g, g, value=1 - beta2)
            denom = v_new.sqrt().div_(bc2.view(shape)).add_(self.eps)
            delta = (m_new * size.view(shape)).div_(denom)
            with torch.no_grad():
                p.copy_(torch.where(keep, p + delta, p))
            m.copy_(torch.where(keep, m_new, m))
            v.copy_(torch.where(keep, v_new, v))

    def advance(self, applied: list[bool]) -> None:
        """Count the step for the runs it was applied to (none if no parameter of this
        optimiser had a gradient: as torch's Adam, which then does not step)."""
        if self.live:
            self.steps = [s + int(a) for s, a in zip(self.steps, applied, strict=True)]

    def keep(self, idx: Tensor) -> None:
        self.steps = [self.steps[i] for i in idx.tolist()]
        self.exp_avg = {n: t[idx] for n, t in self.exp_avg.items()}
        self.exp_avg_sq = {n: t[idx] for n, t in self.exp_avg_sq.items()}


def _group_norms(grads: list[Tensor], runs: int, device: torch.device) -> Tensor:
    """Each run's gradient norm over one network's tensors, ``(R,)``, computed as
    ``clip_grad_norm_`` does (the norm of the per-tensor norms)."""
    if not grads:
        return torch.zeros(runs, device=device)
    per = torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1) for g in grads], 1)
    return torch.linalg.vector_norm(per, dim=1)


class StackEngine:
    """The optimisers and one update of R runs (:class:`~wsram.engine.Engine`'s update,
    per run), their parameters stacked. Built from each run's own model and engine (fresh
    or restored from its checkpoint); :meth:`write_back` puts a run's parameters and Adam
    state back into them, for its evaluations and checkpoints."""

    def __init__(self, models: list[nn.Module], engines: list[Engine]):
        problem = stack_problem([e.cfg for e in engines])
        if problem:
            raise WsramError(f"cannot stack these runs: {problem}")
        self.models, self.engines = list(models), list(engines)
        self.cfg = engines[0].cfg
        self.step_module = _Step(models[0], engines[0])
        names = {id(p): n for n, p in models[0].named_parameters()}
        m0 = models[0]
        self.groups = [[names[id(p)] for p in g] for g in (m0.theta(), m0.eta(),
                                                           m0.baseline_params()) if g]
        self.adams = [StackedAdam([names[id(p)] for p in m0.theta() + m0.eta()], len(models)),
                      StackedAdam([names[id(p)] for p in m0.baseline_params()], len(models))]
        self.params = {n: torch.stack([dict(m.named_parameters())[n].detach() for m in models])
                       .requires_grad_() for n in names.values()}
        self._load_adam()
        for r in range(len(models)):  # the stack's copy is the one that moves on
            self.release(r)
        self.bank_size: int | None = None  # uniforms an update draws per run (probed)
        self.used = 0  # what the last forward drew per run
        #: runs :meth:`device_step`: as a CUDA graph where the runs ask for one
        self.step_fn: Any = GraphedStep(self.device_step) if self.cfg.cuda_graphs else \
            self.device_step

    def _opts(self, engine: Engine) -> list[torch.optim.Optimizer]:
        return [engine.opt, engine.opt_b]

    def _load_adam(self) -> None:
        """Each run's Adam state (a restored run's, or none yet) into the stacked one."""
        for k, adam in enumerate(self.adams):
            for n in adam.names:
                states = [self._opts(e)[k].state.get(dict(m.named_parameters())[n], {})
                          for m, e in zip(self.models, self.engines, strict=True)]
                if not any(states):
                    continue
                if not all(states):
                    raise WsramError(f"cannot stack these runs: some have Adam state for {n}, "
                                     "others not")
                adam.exp_avg[n] = torch.stack([s["exp_avg"] for s in states])
                adam.exp_avg_sq[n] = torch.stack([s["exp_avg_sq"] for s in states])
                adam.steps = [int(s["step"]) for s in states]

    def write_back(self, r: int) -> None:
        """Run r's parameters and Adam state into its own model and engine (copies)."""
        model, engine = self.models[r], self.engines[r]
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(self.params[n][r])
        named = dict(model.named_parameters())
        for adam, opt in zip(self.adams, self._opts(engine), strict=True):
            for n in adam.names:
                if n in adam.exp_avg:
                    opt.state[named[n]] = {
                        "step": torch.tensor(float(adam.steps[r])),
                        "exp_avg": adam.exp_avg[n][r].clone(),
                        "exp_avg_sq": adam.exp_avg_sq[n][r].clone()}

    def release(self, r: int) -> None:
        """Drop the copy of run r's Adam state that :meth:`write_back` made (once saved)."""
        for opt in self._opts(self.engines[r]):
            opt.state.clear()

    def keep(self, runs: list[int]) -> None:
        """Go on with these runs only (the others finished or stopped)."""
        idx = torch.tensor(runs, dtype=torch.long)
        self.models = [self.models[i] for i in runs]
        self.engines = [self.engines[i] for i in runs]
        self.params = {n: p.detach()[idx.to(p.device)].requires_grad_()
                       for n, p in self.params.items()}
        for adam in self.adams:
            adam.keep(idx)
        if hasattr(self.step_fn, "reset"):  # a graph holds the old tensors: capture anew
            self.step_fn.reset()

    def _banks(self, size: int, device: torch.device) -> Tensor:
        return torch.stack([torch.rand(size, generator=e.noise.generator)
                            for e in self.engines]).to(device)

    def _forward(self, xs: Any, ys: Tensor, banks: Tensor, weights: Any) -> tuple[Any, int]:
        """The vmapped forward of every run; returns its values and the uniforms each run
        asked for."""
        used = [0]
        w_dims = tuple(0 if isinstance(w, Tensor) else None for w in weights)

        def one(params: dict[str, Tensor], x: Any, y: Tensor, bank: Tensor,
                w: Any) -> dict[str, Tensor]:
            noise = BankNoise(bank)
            with drawing_from(noise):
                out = functional_call(self.step_module, params, (x, y, w))
            used[0] = noise.pos
            return out

        prefixed = {f"model.{n}": p for n, p in self.params.items()}
        out = vmap(one, in_dims=(0, 0, 0, 0, w_dims), randomness="error")(
            prefixed, xs, ys, banks, weights)
        return out, used[0]

    def _probe(self, x: Any, y: Tensor, weights: Any) -> int:
        """How many uniforms one update draws per run (the shapes decide it, not the
        numbers): one forward without gradients from empty banks, drawing nothing."""
        with torch.no_grad():
            _, used = self._forward(x, y, torch.empty(len(self.engines), 0, device=y.device),
                                    weights)
        return used

    def weights(self, device: torch.device) -> tuple[Any, Any, Any]:
        cfgs = [e.cfg for e in self.engines]
        return tuple(_stacked([getattr(c, k) for c in cfgs], device)
                     for k in ("cv_gamma", "entropy", "coverage"))

    def device_step(self, x: Any, y: Tensor, banks: Tensor, weights: Any,
                    scalars: tuple[Tensor, ...]) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        """The part of an update that reads no number back to the host, so that it can be
        one CUDA graph (``graphs.py``): forward, backward, each run's clipping and
        non-finite guard, the Adam steps of the runs whose loss and gradient norms are
        finite. ``scalars``: each optimiser's step sizes and bias corrections
        (:meth:`StackedAdam.scalars`) and each run's clipping norm. Returns the forward's
        values, whether each run's step was applied, and the prediction network's norms."""
        size, bc2, size_b, bc2_b, max_norm = scalars
        for p in self.params.values():
            p.grad = None
        out, self.used = self._forward(x, y, banks, weights)
        losses = out.pop("_loss")
        losses.sum().backward()  # runs share no parameter: each gets its own gradient
        norms = []
        for names in self.groups:
            grads = [self.params[n].grad for n in names if self.params[n].grad is not None]
            total = _group_norms(grads, len(max_norm), max_norm.device)
            coef = ((total + 1e-6).reciprocal() * max_norm).clamp(max=1.0)  # as clip_grad_norm_
            for g in grads:
                g.mul_(coef.view((-1,) + (1,) * (g.dim() - 1)))
            norms.append(total)
        finite = torch.isfinite(torch.stack([*norms, losses.detach()])).all(0)
        self.adams[0].apply(self.params, size, bc2, finite)
        self.adams[1].apply(self.params, size_b, bc2_b, finite)
        return out, finite, norms[0]

    def update(self, xs: list[Any], ys: list[Tensor], steps: list[int],
               ) -> tuple[list[bool], list[dict[str, Tensor]]]:
        """One update of every run (each its own batch ``xs[r], ys[r]``; ``steps[r]``
        updates done, for its scheduled rates): each run's actions drawn from its
        generator, then :meth:`device_step` (through ``step_fn``: a CUDA graph where
        one was asked for). Returns whether each run's update was applied (False: its loss
        or a gradient norm was not finite, it is left as it was) and its figures for the
        log."""
        cfgs = [e.cfg for e in self.engines]
        x, y = stack_batches(xs), stack_batches(ys)
        device = y.device
        factors = [lr_factor(c.lr_schedule, s, c.warmup, c.lr_min, c.horizon())
                   for c, s in zip(cfgs, steps, strict=True)]
        weights = self.weights(device)
        if self.bank_size is None:
            self.bank_size = self._probe(x, y, weights)
        scalars = (*self.adams[0].scalars([c.lr * f for c, f in zip(cfgs, factors, strict=True)],
                                          device),
                   *self.adams[1].scalars([c.baseline_lr * f for c, f in
                                           zip(cfgs, factors, strict=True)], device),
                   torch.tensor([c.grad_clip or math.inf for c in cfgs], device=device))
        out, finite, norm = self.step_fn(x, y, self._banks(self.bank_size, device), weights,
                                         scalars)
        if self.used != self.bank_size:  # the forward drew other shapes than the probe's
            raise RuntimeError(f"an update drew {self.used} uniforms per run where its probe "
                               f"drew {self.bank_size}")
        applied = finite.tolist()
        for adam in self.adams:
            adam.advance(applied)
        self.actions = (out.pop("_locs"), out.pop("_scales")) if "_locs" in out else None
        values = []
        for r, c in enumerate(cfgs):
            row = {k: v[r] for k, v in out.items()}
            row["grad_norm"] = norm[r]
            if logs_rate(c):
                row["lr"] = torch.tensor(c.lr * factors[r], device=device)
            values.append(row)
        return applied, values


def stack_batches(parts: list[Any]) -> Any:
    """Runs' batches (tensors, or lists of tensors) stacked on a leading run axis; a
    WsramError when their shapes differ (a task whose batches vary cannot be stacked)."""
    try:
        if isinstance(parts[0], (list, tuple)):
            return [torch.stack(list(p)) for p in zip(*parts, strict=True)]
        return torch.stack(parts)
    except RuntimeError as e:
        raise WsramError(f"cannot stack these runs: their batches differ in shape "
                         f"({str(e).splitlines()[0]}); train them one by one") from None
