"""CUDA graphs of the update (``wsram.graphs``): the warm-up, capture and replay bookkeeping,
the eager fallback, and a graphed stack giving the eager stack's numbers bit for bit.

No GPU here: a backend stands in for ``torch.cuda.CUDAGraph`` as a capture behaves, running
the function once to learn its outputs and undoing what it did to the state (a capture
launches nothing), then rerunning it on the static input buffers at every replay and
writing the results into the static outputs. The real capture is checked by
``benchmarks/gpu_stack_check.sh`` on a GPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import TINY
from torch.utils._pytree import tree_flatten

from wsram.classification import make_config
from wsram.distributed import Dist
from wsram.errors import ConfigError
from wsram.graphs import FALLBACK_LINE, GraphedStep
from wsram.run_dir import RunDir, read_metrics
from wsram.stack import StackEngine
from wsram.train import build_state


class ReplayBackend:
    """A capture that launches nothing (the state it touched is restored) and replays that
    run the function on the static inputs, writing into the static outputs."""

    def __init__(self, state: callable):
        self.state = state  # the tensors the function changes in place
        self.warmed = self.captured = self.replayed = 0

    def warm(self, fn, args):
        self.warmed += 1
        return fn(*args)

    def capture(self, fn, args):
        self.captured += 1
        before = [t.detach().clone() for t in self.state()]
        out = fn(*args)
        with torch.no_grad():
            for t, b in zip(self.state(), before, strict=True):
                t.copy_(b)
        return (fn, args), out

    def replay(self, graph) -> None:
        self.replayed += 1
        fn, args = graph
        fresh = fn(*args)
        with torch.no_grad():
            for dst, src in zip(tree_flatten(self.graph_out)[0], tree_flatten(fresh)[0],
                                strict=True):
                if isinstance(dst, torch.Tensor):
                    dst.copy_(src)


def graphed(fn, state, warmup: int = 2) -> tuple[GraphedStep, ReplayBackend]:
    backend = ReplayBackend(state)
    step = GraphedStep(fn, warmup=warmup, backend=backend)
    real_capture = backend.capture

    def capture(f, args):  # the backend writes into the step's static outputs
        graph, out = real_capture(f, args)
        backend.graph_out = out
        return graph, out

    backend.capture = capture
    return step, backend


def test_warm_up_then_one_capture_then_replays_from_the_inputs_given() -> None:
    acc = torch.zeros(())

    def fn(x, scale):
        acc.add_(x.sum() * scale)
        return {"acc": acc.clone(), "sum": x.sum()}

    step, backend = graphed(fn, lambda: [acc], warmup=2)
    outs = [step(torch.full((3,), float(i)), 2.0) for i in range(5)]
    assert (backend.warmed, backend.captured, backend.replayed) == (2, 1, 3)
    assert step.captures == 1 and step.replays == 3
    # every call's own input reached the function once: acc = 2 * 3 * (0 + 1 + 2 + 3 + 4)
    assert acc.item() == 60.0
    assert [o["sum"].item() for o in outs] == [0.0, 3.0, 6.0, 9.0, 12.0]
    assert outs[3]["acc"] is not outs[4]["acc"]  # copies, not the static outputs
    assert outs[3]["acc"].item() == 36.0
    # a new shape or another plain value: warmed up and captured anew
    step(torch.ones(4), 2.0)
    assert backend.warmed == 3 and backend.captured == 1
    step(torch.ones(3), 1.0)
    assert backend.warmed == 4
    step.reset()
    for _ in range(3):
        step(torch.ones(3), 1.0)
    assert backend.captured == 2


def test_a_failed_capture_runs_eagerly_for_good_with_one_line(capsys) -> None:
    class Refuses(ReplayBackend):
        def capture(self, fn, args):
            raise RuntimeError("operation not permitted when stream is capturing\nmore")

    calls = []
    step = GraphedStep(lambda x: calls.append(x) or x * 2, warmup=1, backend=Refuses(list))
    assert [step(torch.tensor(float(i))).item() for i in range(4)] == [0.0, 2.0, 4.0, 6.0]
    assert len(calls) == 4 and step.failed.startswith("RuntimeError: operation not")
    err = capsys.readouterr().err
    assert err.count(FALLBACK_LINE) == 1 and "runs eagerly" in err


def _stack(method: str, graphs: bool) -> tuple[list, StackEngine, ReplayBackend | None]:
    runs = [dict(seed=0), dict(seed=1, lr=3e-3, cv_gamma=0.5), dict(seed=2, baseline_lr=3e-3)]
    cfgs = [make_config(TINY, method=method, **kw) for kw in runs]
    states = [build_state(c, Path("unused"), False, False, Dist()) for c in cfgs]
    engine = StackEngine([s.model for s in states], [s.engine for s in states])
    backend = None
    if graphs:
        def state():
            return [*engine.params.values(), *(t for a in engine.adams for d in
                                               (a.exp_avg, a.exp_avg_sq) for t in d.values())]
        engine.step_fn, backend = graphed(engine.device_step, state, warmup=2)
    return states, engine, backend


@pytest.mark.parametrize("method", ["wsram+q+c", "var+c"])
def test_a_graphed_stack_gives_the_eager_stacks_numbers(method: str) -> None:
    """The same updates through the graph's static buffers, a NaN in one run's batch
    (its step not applied) and a run leaving the stack (captured anew) included."""
    (s_eager, eager, _), (s_graph, graph, backend) = _stack(method, False), _stack(method, True)
    for t in range(10):
        rows = []
        for states, engine in ((s_eager, eager), (s_graph, graph)):
            b = [s.stream.sample(s.cfg.batch_size) for s in states]
            if t == 4:
                b[1] = (b[1][0] * float("nan"), b[1][1])
            rows.append(engine.update([x[0] for x in b], [x[1] for x in b],
                                      [t] * len(states)))
        (ap_e, val_e), (ap_g, val_g) = rows
        assert ap_e == ap_g
        assert ap_e == ([True, False, True] if t == 4 else [True] * len(ap_e))
        for re, rg in zip(val_e, val_g, strict=True):
            assert re.keys() == rg.keys()
            for k in re:
                assert torch.equal(re[k], rg[k]) or (re[k].isnan() & rg[k].isnan()).all(), \
                    (t, k)
        if t == 6:  # run 1 leaves both stacks
            for states, engine in ((s_eager, eager), (s_graph, graph)):
                engine.keep([0, 2])
                del states[1]
    assert backend.captured == 2 and backend.replayed == 10 - 2 * 2
    for n, p in eager.params.items():
        assert torch.equal(p, graph.params[n]), n
    assert [a.steps for a in eager.adams] == [a.steps for a in graph.adams]


def test_cuda_graphs_are_asked_for_on_a_cuda_device_only(cli, tmp_path) -> None:
    with pytest.raises(ConfigError, match="need a CUDA device"):
        make_config(TINY, cuda_graphs=True).validate()
    with pytest.raises(ConfigError, match="choose one"):
        make_config(TINY, cuda_graphs=True, compile=True, device="cuda").validate()
    code, _, err = cli("train", "--run-dir", str(tmp_path / "r"), "--cuda-graphs", "true")
    assert code == 2 and "CUDA graphs need a CUDA device (--device cuda)" in err
    assert not (tmp_path / "r").exists()
    code, _, err = cli("caption", "train", "--run-dir", str(tmp_path / "c"),
                       "--cuda-graphs", "true")
    assert code == 2 and "unrecognized arguments: --cuda-graphs" in err


def test_a_graphed_run_trains_through_the_command_as_the_eager_stack(
        cli, tmp_path, monkeypatch) -> None:
    """``wsram train --cuda-graphs true`` (here on the CPU, the capture played by the
    backend above): one run in its own folder, trained as a stack of one whose update is
    replayed from a graph; its log is the eager stack's number for number, it says how many
    updates were replayed, and it resumes."""
    from conftest import flags

    import wsram.stack
    from wsram.config import TrainConfig

    real = TrainConfig.validate

    def cpu_allowed(self):  # the CUDA-only rule, lifted for this test
        if not self.cuda_graphs:
            return real(self)
        object.__setattr__(self, "cuda_graphs", False)
        try:
            return real(self)
        finally:
            object.__setattr__(self, "cuda_graphs", True)

    def fake_graph(fn):
        engine = fn.__self__
        return graphed(fn, lambda: [*engine.params.values(), *(
            t for a in engine.adams for d in (a.exp_avg, a.exp_avg_sq) for t in d.values())],
            warmup=3)[0]

    monkeypatch.setattr(TrainConfig, "validate", cpu_allowed)
    monkeypatch.setattr(wsram.stack, "GraphedStep", fake_graph)
    common = ["--method", "wsram+q+c", *flags(dict(TINY, steps=10, log_every=1, eval_every=5,
                                                    checkpoint_every=5, diag_every=0)),
              "--no-progress"]
    code, _, err = cli("train", "--run-dir", str(tmp_path / "graphed"), "--cuda-graphs",
                       "true", *common)
    assert code == 0, err
    # 3 eager updates to warm up; the 4th is captured, then replayed as every later one
    assert "wsram: CUDA graphs: 7 updates replayed from 1 capture\n" in err
    code, _, err = cli("train", "--run-dir", str(tmp_path / "stack"), "--seeds", "0", *common)
    assert code == 0, err

    def rows(run):
        return [{k: v for k, v in r.items() if k != "time"} for r in read_metrics(run)]

    eager = tmp_path / "stack" / "lr0.001-seed0"
    assert rows(tmp_path / "graphed") == rows(eager) and len(rows(eager)) >= 10
    assert RunDir(tmp_path / "graphed").read_config()["cuda_graphs"] is True
    code, _, err = cli("train", "--run-dir", str(tmp_path / "graphed"), "--resume",
                       "--steps", "14", "--no-progress")
    assert code == 0 and "CUDA graphs: 1 update replayed from 1 capture" in err, err
    assert max(r["step"] for r in read_metrics(tmp_path / "graphed")) == 14
