"""The task protocol is enough: a toy task, defined here in a few dozen lines, registers
itself and trains, resumes and reports through the ``wsram`` command, with no change to
the core.

The toy: an input of 4 numbers; the label is the sign of the third. The model takes one
"glimpse": its action's discrete part picks the number it reads (the location is drawn
and ignored), and it predicts the label from that number alone. The inference network
sees the label; the baseline sees the input.
"""

from __future__ import annotations

import json
import typing
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wsram import registry
from wsram.cli import add_train_parser
from wsram.config import TrainConfig
from wsram.methods import METHODS
from wsram.policy import ActionDist
from wsram.rollout import ActionTrace, ParameterGroups
from wsram.task import TaskSpec


@dataclass
class ToyConfig(TrainConfig):
    cells: int = 4  # numbers in an input; the third one's sign is the label

    TASK: typing.ClassVar[str] = "toy"
    MODEL_KEYS: typing.ClassVar[tuple[str, ...]] = ("cells",)


class ToyModel(ParameterGroups, nn.Module):
    def __init__(self, cells: int):
        super().__init__()
        self.prior = nn.Linear(cells, 2 + cells)  # emission: location (unused), which cell
        self.head = nn.Linear(1, 2)
        self.inference = nn.Linear(2, 2 + cells)
        self.baseline = nn.Linear(cells, 1)

    def rollout(self, x, y=None, num_samples=1, proposal="prior", temperature=1.0,
                deterministic=False, **_):
        B, K = len(x), num_samples
        xs = x.repeat_interleave(K, 0)
        out = self.prior(xs)
        q = None if y is None else ActionDist.from_emission(
            out + self.inference(F.one_hot(y, 2).float().repeat_interleave(K, 0)), 0.2)
        trace = ActionTrace((B * K,), x.device, proposal, temperature, deterministic)
        _, cell = trace.step(ActionDist.from_emission(out, 0.2), q)
        logp = torch.log_softmax(self.head(xs.gather(1, cell[:, None])), -1).view(B, K, 2)
        lik = None if y is None else logp.gather(2, y.view(B, 1, 1).expand(B, K, 1))[..., 0]
        base = None if y is None else self.baseline(x)[:, 0]
        return trace.rollout(B, K, logp, lik, base)


class ToyStream:
    def __init__(self, cells: int, seed: int):
        self.cells, self.gen = cells, torch.Generator().manual_seed(seed)

    def sample(self, n: int):
        x = torch.randn(n, self.cells, generator=self.gen)
        return x, (x[:, 2] > 0).long()

    def state_dict(self):
        return {"generator": self.gen.get_state()}

    def load_state_dict(self, state):
        self.gen.set_state(state["generator"])


class ToyTask:
    select_key, select_higher = "error", False

    def __init__(self, cfg: ToyConfig, progress: bool = False):
        self.cfg = cfg

    def prepare(self, run_dir, device, main, resume): ...
    def restore(self, run_dir, path, state): ...
    def method(self): return METHODS[self.cfg.method]
    def build_model(self): return ToyModel(self.cfg.cells)
    def stream(self, device, seed): return ToyStream(self.cfg.cells, seed)
    def diagnose(self, model, method, step): return {}
    def extra_state(self): return {}

    def prepare_eval(self, device):
        self.x, self.y = ToyStream(self.cfg.cells, 12345).sample(500)

    @torch.no_grad()
    def evaluate(self, model):
        p = model.rollout(self.x, num_samples=5).class_log_probs.exp().mean(1)
        return {"error": (p.argmax(-1) != self.y).float().mean().item()}

    def train_metrics(self, model, rollout, x, y, bf16):
        return {"error": (rollout.class_log_probs[:, 0].argmax(-1) != y).float().mean()}


SPEC = TaskSpec(
    name="toy", noun="toy", command="wsram toy", config_class=ToyConfig, task_class=ToyTask,
    add_commands=lambda sub: add_train_parser(sub, "train the toy", ToyConfig),
    summary_lines=lambda row, cfg, command: [f"  toy error {row['eval/error']:.1%}"],
    help="a toy task of the tests")


@pytest.fixture
def toy():
    registry.register(SPEC)  # what a task package does when it is imported
    yield
    del registry.tasks()["toy"]


@pytest.mark.slow
def test_a_toy_task_trains_resumes_and_reports_through_the_cli(toy, cli, tmp_path: Path):
    run = str(tmp_path / "toy")
    common = ["--method", "wsram+q+c", "--batch-size", "32", "--eval-every", "100",
              "--lr", "0.03", "--threads", "1", "--no-progress"]
    code, out, err = cli("toy", "train", "--run-dir", run, "--steps", "150", *common)
    assert code == 0, err
    assert "toy error" in err and "wsram toy train --run-dir" in err
    code, out, err = cli("toy", "train", "--run-dir", run, "--resume", "--steps", "300",
                         "--no-progress", "--json")
    assert code == 0, err
    row = json.loads(out.strip().splitlines()[-1])
    assert row["step"] == 300 and row["eval/error"] < 0.25  # it learnt where to look
    code, _, err = cli("train", "--run-dir", run, "--resume")  # classification's train
    assert code == 2 and "a toy run, not a classification run" in err
    state = torch.load(tmp_path / "toy" / "last.pt", weights_only=True)
    assert state["step"] == 300 and state["config"] == {"cells": 4}
