"""What a study trains: its grid of runs, the families that share a chosen rate, and the
shared config it records (``study.json``) so that a resumed study stays one study.

A study is a set of runs, one folder each, ``OUT/<variant>/lr<lr>-seed<seed>``:
1. the grid: every grid method at every learning rate and seed;
2. at the chosen rates (``results.choose_rates``, the paper's rule): the methods of a family
   (``FAMILY``) and the exploration-heuristics variants, at every seed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wsram.atomic import atomic_write_json
from wsram.classification.config import ClassificationConfig
from wsram.config import replace
from wsram.errors import WsramError
from wsram.methods import METHODS

# The exploration heuristics of METHOD.md 4.5, all three on, for the Figure 4 study.
EXPLORE = {"temperature": 1.5, "coverage": 0.1, "entropy": 0.01}
# Methods trained only at the rate chosen for the head of their family: the variant without
# control variates takes its "+c" sibling's rate; VIMCO, a score-function estimator with
# (leave-one-out) baselines, takes VAR+c's.
FAMILY = {"var": "var+c", "wsram": "wsram+c", "wsram+q": "wsram+q+c", "vimco": "var+c"}
EXPLORED = ("var+c", "wsram+q+c")  # the Figure 4 study: these with the heuristics on
STUDY_FILE = "study.json"


@dataclass(frozen=True)
class Run:
    """One run of a study: a variant (a method, with "+explore" when the heuristics are
    on), its learning rate and seed."""

    variant: str
    lr: float
    seed: int
    overrides: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def method(self) -> str:
        return self.variant.removesuffix("+explore")

    @property
    def folder(self) -> str:
        return f"{self.variant}/lr{self.lr:g}-seed{self.seed}"

    def config(self, base: ClassificationConfig) -> ClassificationConfig:
        return replace(base, method=self.method, lr=self.lr, seed=self.seed, **self.overrides)


@dataclass
class Plan:
    """What a study trains: ``grid`` methods at every rate in ``lrs``; ``chosen`` methods
    at their family's chosen rate; the explore variants (if ``explore``) at theirs."""

    grid: list[str]
    lrs: list[float]
    seeds: list[int]
    chosen: list[str] = field(default_factory=list)
    explore: bool = False

    def grid_runs(self) -> list[Run]:
        return [Run(m, lr, s) for m in self.grid for lr in self.lrs for s in self.seeds]

    def chosen_runs(self, rates: dict[str, float], default_lr: float) -> list[Run]:
        runs = [Run(m, rates.get(FAMILY.get(m, m), default_lr), s)
                for m in self.chosen for s in self.seeds]
        if self.explore:
            runs += [Run(f"{m}+explore", rates.get(m, default_lr), s, EXPLORE)
                     for m in EXPLORED for s in self.seeds]
        return runs


    def counts(self) -> dict[str, int]:
        """How many runs each phase trains."""
        return {"grid": len(self.grid) * len(self.lrs) * len(self.seeds),
                "chosen": len(self.chosen) * len(self.seeds),
                "explore": len(EXPLORED) * len(self.seeds) if self.explore else 0}

    def lines(self, base: ClassificationConfig) -> list[str]:
        """The plan in words: each phase's runs and the diagnostics they will log."""
        n = self.counts()
        lrs, seeds = " ".join(f"{x:g}" for x in self.lrs), " ".join(map(str, self.seeds))
        out = [f"  grid: {', '.join(self.grid)} at lr {lrs}, seed{'s' * (len(self.seeds) > 1)}"
               f" {seeds} ({n['grid']} runs)"]
        if self.chosen:
            out.append(f"  at the rate chosen for their family: {', '.join(self.chosen)} "
                       f"({n['chosen']} runs)")
        out.append(f"  exploration heuristics: {', '.join(EXPLORED)} with them on "
                   f"({n['explore']} runs)" if self.explore else
                   "  exploration heuristics: not trained (--explore adds them)")
        if not base.diag_every or base.diag_every > base.steps:
            out.append(f"  diagnostics: none (--diag-every {base.diag_every} with --steps "
                       f"{base.steps}): the gradient-variance, ESS and scale panels will be "
                       "empty; lower --diag-every to fill them")
        else:
            out.append(f"  diagnostics: every {base.diag_every} updates")
        return out


def default_plan(base: ClassificationConfig, seeds: list[int] | None = None,
                 lrs: list[float] | None = None, methods: list[str] | None = None,
                 chosen: list[str] | None = None, explore: bool = False) -> Plan:
    """Without seeds or rates: every attention method once, at the config's seed and rate,
    as the paper's figures compare them."""
    attending = [m for m in METHODS if METHODS[m].attends]
    grid = methods or attending
    return Plan(grid=grid, lrs=lrs or [base.lr], seeds=seeds if seeds is not None else [base.seed],
                chosen=[m for m in (chosen or []) if m not in grid], explore=explore)


def check_study(base: ClassificationConfig, out_dir: Path) -> None:
    """Record the study's shared config in ``study.json``, or refuse one that differs from
    the recorded one (learning rate and seed are the study's axes and may differ; so may
    how long and where it runs)."""
    mine = {k: v for k, v in base.to_dict().items()
            if k not in ("method", "lr", "seed", *base.RESUMABLE_KEYS)}
    path = out_dir / STUDY_FILE
    if path.is_file():
        try:
            saved = json.loads(path.read_text())["config"]
        except (ValueError, KeyError, TypeError):
            raise WsramError(f"{path}: not a study file written by wsram compare") from None
        diff = [f"{k} {saved.get(k)!r} -> {v!r}" for k, v in mine.items() if saved.get(k) != v]
        if diff:
            raise WsramError(f"{out_dir}: cannot resume with a different config "
                             f"({'; '.join(diff)}); compare into a new folder instead")
    atomic_write_json(path, {"config": mine})
