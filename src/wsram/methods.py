"""The training methods, named as in the paper's figures, as a registry.

A method says where the samples come from and which estimator turns their
log-probabilities into a loss. Adding a method is adding an entry here. Baselines that
take no glimpses (the classification CNN) belong to their task, not to this registry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .estimators import EstimatorOutput, variational, vimco, wake_sleep
from .rollout import Rollout


def _var(r: Rollout, cv: bool, gamma: float) -> EstimatorOutput:
    # REINFORCE on the distribution actually sampled (the prior, tempered if asked).
    return variational(r.log_lik, r.log_sampler, baseline=r.baseline if cv else None)


def _wake_sleep(r: Rollout, cv: bool, gamma: float) -> EstimatorOutput:
    if r.from_prior:
        # Prior proposal: only a temperature makes the sampler differ from the prior, and
        # then its density is a fixed proposal density, not a parameter to train (M9).
        log_proposal = None if r.sampled_from_prior else r.log_sampler.detach()
    else:
        log_proposal = r.log_sampler
    return wake_sleep(r.log_lik, r.log_prior, log_proposal, control_variate=cv, gamma=gamma)


def _vimco(r: Rollout, cv: bool, gamma: float) -> EstimatorOutput:
    return vimco(r.log_lik, r.log_sampler)


@dataclass(frozen=True)
class Method:
    """A training method: where its K samples come from (the prior p(a|x) or the inference
    network q(a|x,y)), whether it uses control variates, and the estimator that turns a
    :class:`~wsram.rollout.Rollout`'s log-probabilities into a loss (``objective``). The
    loss's gradient is minus the method's gradient estimate (METHOD.md M3-M12)."""

    name: str
    proposal: str  # "prior" or "q": where the K samples are drawn from
    control_variate: bool
    estimator: Callable[[Rollout, bool, float], EstimatorOutput]
    label: str  # for figures and tables
    colour: str = "#444444"  # the same in every figure
    #: False for a task's baseline that takes no glimpses (e.g. the classification CNN,
    #: trained by maximum likelihood): not a gradient estimator, so not in METHODS
    attends: bool = True

    def objective(self, rollout: Rollout, gamma: float = 1.0) -> EstimatorOutput:
        return self.estimator(rollout, self.control_variate, gamma)


METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        Method("var", "prior", False, _var, "VAR", "#9ecae1"),
        Method("var+c", "prior", True, _var, "VAR+c", "#08519c"),
        Method("wsram", "prior", False, _wake_sleep, "WS-RAM", "#fdae6b"),
        Method("wsram+c", "prior", True, _wake_sleep, "WS-RAM+c", "#d94801"),
        Method("wsram+q", "q", False, _wake_sleep, "WS-RAM+q", "#a1d99b"),
        Method("wsram+q+c", "q", True, _wake_sleep, "WS-RAM+q+c", "#006d2c"),
        Method("vimco", "prior", False, _vimco, "VIMCO", "#756bb1"),
    ]
}
