"""The CNN baseline (method cnn) and `wsram cost`: MAC counts by hand, training, the table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY as TINY_BASE
from torch import nn

from wsram.classification import make_config
from wsram.classification.cnn import CNN, ConvClassifier
from wsram.classification.cost import area_macs, count_macs, inference_macs, sensor_macs
from wsram.classification.evaluate import evaluate_run
from wsram.classification.model import AttentionModel
from wsram.errors import ConfigError
from wsram.run_dir import read_metrics
from wsram.train import train

TINY = dict(TINY_BASE, log_every=2, eval_every=0, checkpoint_every=4, diag_every=3, diag_batch=8,
            diag_repeats=3)



@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for method, steps in (("wsram+q+c", 4), ("cnn", 6)):
        out[method] = root / method
        train(make_config(TINY, method=method, steps=steps), out[method], progress=False)
    return out


# --- counting ---------------------------------------------------------------------------
def test_mac_counter_on_a_network_counted_by_hand() -> None:
    net = nn.Sequential(
        nn.Conv2d(2, 3, 3, stride=2, padding=1),  # 8x8 -> 4x4: 3*4*4 outputs x 2*3*3 = 864
        nn.ReLU(),
        nn.Conv2d(3, 4, 1, groups=1),  # 4*4*4 outputs x 3 = 192
        nn.Conv2d(4, 4, 3, groups=2),  # 4x4 -> 2x2: 4*2*2 outputs x (4/2)*3*3 = 288
        nn.Flatten(),
        nn.Linear(16, 5),  # 5 x 16 = 80
    )
    counts = count_macs(net, lambda: net(torch.zeros(1, 2, 8, 8)))
    assert counts == {"0": 864, "2": 192, "3": 288, "5": 80}
    # Per example and per call: a batch of 3 counts 3 times, a second call twice as much.
    lin = nn.Linear(3, 4)
    assert count_macs(lin, lambda: lin(torch.zeros(3, 5, 3))) == {"": 3 * 5 * 4 * 3}
    assert count_macs(lin, lambda: (lin(torch.zeros(1, 3)), lin(torch.zeros(1, 3)))) == {"": 24}
    # The hooks are gone afterwards.
    assert not lin._forward_hooks and not any(m._forward_hooks for m in net.modules())


def test_area_downsampling_windows() -> None:
    assert area_macs(4, 2) == 16  # four disjoint 2x2 windows
    # 10 -> 3: windows [0, 4), [3, 7), [6, 10) per axis (adaptive pooling overlaps them)
    assert area_macs(10, 3) == 12 * 12
    assert area_macs(12, 12) == area_macs(12, 20) == 0


def test_attention_inference_macs_by_hand() -> None:
    torch.manual_seed(0)
    model = AttentionModel(canvas_size=32, glimpses=2, patch=4, scales=[0.25, 0.5], hidden=16,
                           context_size=8, num_classes=3)
    macs = inference_macs(model, 32)
    D = 16
    assert macs["context"] == 8 * 8 * D + D * D
    per_glimpse = 4 * 4 * D + (2 + 2) * D + 2 * (2 * D * D) + D * (2 + 2)
    assert macs["glimpse_what"] + macs["glimpse_where"] + macs["core1"] + macs["core2"] \
        + macs["emission"] == 2 * per_glimpse
    assert macs["classifier"] == D * 3
    # Inference reads neither the inference network nor the baseline.
    assert "inference" not in macs and "baseline" not in macs
    # Sensor: 32 -> 8 context copy and 32 -> 16, 32 -> 8 pyramid levels read every pixel once;
    # 2 glimpses x 16 pixels (at the chosen scale only) x 4 MACs.
    assert sensor_macs(model, 32) == {"context downsampling": 1024, "glimpse pyramid": 2048,
                                      "glimpse resampling": 2 * 16 * 4}


def test_cnn_macs_and_interface() -> None:
    torch.manual_seed(0)
    model = ConvClassifier(num_classes=10, widths=(4, 8))  # 5x5/2 then 3x3/1
    macs = inference_macs(model, 20)
    assert macs == {"features": 10 * 10 * 4 * 25 + 10 * 10 * 8 * 4 * 9, "head": 8 * 10}
    x, y = torch.rand(5, 1, 20, 20), torch.randint(0, 10, (5,))
    r = model.rollout(x, y, num_samples=3)
    assert r.class_log_probs.shape == (5, 3, 10) and r.log_lik.shape == (5, 3)
    assert torch.equal(r.class_log_probs[:, 0], r.class_log_probs[:, 2])
    assert r.locs.shape == (5, 3, 0, 2) and r.scales.shape == (5, 3, 0) and not r.prior_dists
    assert r.log_prior.requires_grad and float(r.log_prior.detach().abs().sum()) == 0
    assert r.sampled_from_prior and r.baseline is None
    # Maximum likelihood: the gradient is that of -mean log p(y|x), whatever K.
    loss = CNN.objective(r).loss
    g = torch.autograd.grad(loss, model.theta())
    ref = -torch.log_softmax(model(x), -1).gather(1, y[:, None]).mean()
    g_ref = torch.autograd.grad(ref, model.theta())
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g, g_ref, strict=True))
    assert model.eta() == [] and model.baseline_params() == []


# --- the cnn method through the training loop ----------------------------------------------
def test_cnn_trains_evaluates_and_diagnoses(runs: dict[str, Path]) -> None:
    run = runs["cnn"]
    rows = read_metrics(run)
    assert [r["step"] for r in rows if "train/loss" in r] == [2, 4, 6]
    diag = [r for r in rows if "diag/grad_var" in r]
    assert diag and all(r["diag/grad_var"] == 0 for r in diag)  # a deterministic gradient
    assert not any(k.startswith("diag/scale") for r in diag for k in r)
    res = evaluate_run(run)
    assert res["step"] == 6
    assert res["test_error_sampled"] == res["test_error_mc"] == res["test_error_deterministic"]
    assert 0 <= res["test_error_mc"] <= 1
    with pytest.raises(ConfigError, match="cnn method takes no glimpses"):
        make_config(TINY, method="cnn", coverage=0.1)


def test_compare_leaves_the_cnn_out() -> None:
    from wsram.classification import make_config
    from wsram.study.plan import default_plan

    plan = default_plan(make_config())
    assert "cnn" not in {r.method for r in plan.grid_runs() + plan.chosen_runs({}, 1e-3)}


# --- the command line ---------------------------------------------------------------------
@pytest.mark.slow
def test_cost_end_to_end(cli, runs: dict[str, Path], tmp_path: Path) -> None:
    att, cnn = runs["wsram+q+c"], runs["cnn"]
    (att / "eval.json").unlink(missing_ok=True)  # computed when missing...
    evaluate_run(cnn, test_size=10)  # ...and when of another test set it is read as it is
    md = tmp_path / "cost.md"
    code, out, err = cli("cost", str(att), str(cnn), "--json", "--threads", "1",
                         "--seconds", "0.05", "--out", str(md))
    assert code == 0, err
    a, c = json.loads(out)
    assert (a["method"], c["method"]) == ("wsram+q+c", "cnn")
    assert (att / "eval.json").is_file() and a["test_images"] == 30 and c["test_images"] == 10
    assert a["macs"] == sum(a["macs_by_part"].values()) > a["macs_sensor"] > 0
    assert c["macs_sensor"] == 0 and c["macs"] > a["macs"]
    assert a["glimpses"] == 2 and c["glimpses"] == 0
    assert a["input_values"] == 2 * 6 * 6 + 8 * 8 and c["input_values"] == 32 * 32
    assert 0 < a["pixels_glimpses"] <= 32 * 32 == c["pixels_glimpses"] == a["pixels_with_context"]
    assert a["images_per_s"] > 0 and c["images_per_s"] > 0 and a["threads"] == 1
    text = md.read_text()
    assert text.startswith("# Inference cost") and "| MACs per image |" in text
    assert "| method | WS-RAM+q+c | CNN |" in text
    # The plain table: one column per run, the rows labelled.
    code, out, err = cli("cost", str(att), str(cnn), "--seconds", "0.05",
                         "--threads", "1")
    assert code == 0, err
    lines = out.splitlines()
    assert str(att) in lines[0] and str(cnn) in lines[0]
    assert lines[1].split()[-2:] == ["WS-RAM+q+c", "CNN"]
    assert any(line.startswith("MACs per image") for line in lines)


@pytest.mark.parametrize("args, message", [
    (["nothing-here"], "no such run folder"),
    (["."], "not a run folder"),
    (["RUN", "--out", "/nonexistent/dir/x.md"], "no such folder"),
    (["RUN", "--seconds", "0"], "--seconds > 0"),
])
def test_cost_bad_input_one_line(cli, runs: dict[str, Path], tmp_path: Path,
                                 args: list[str], message: str) -> None:
    args = [str(runs["cnn"]) if a == "RUN" else a for a in args]
    if args[0] == ".":
        args[0] = str(tmp_path)
    code, _, err = cli("cost", *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_show_refuses_a_cnn_run_in_one_line(cli, runs: dict[str, Path]) -> None:
    code, _, err = cli("show", str(runs["cnn"]))
    assert code == 2 and "takes no glimpses" in err and len(err.strip().splitlines()) == 1


def test_a_checkpoint_of_the_other_network_is_refused_in_one_line(cli, runs) -> None:
    for run, other in ((runs["cnn"], "wsram"), (runs["wsram+q+c"], "cnn")):
        before = (run / "last.pt").read_bytes()
        code, _, err = cli("train", "--run-dir", str(run), "--resume", "--method", other,
                           "--steps", "20", "--no-progress")
        assert code == 2 and "cannot resume with a different config (method" in err, err
        assert len(err.strip().splitlines()) == 1 and (run / "last.pt").read_bytes() == before
        # A config that names the other network is caught by the checkpoint itself.
        fake = run.parent / f"{run.name}-edited"
        fake.mkdir()
        (fake / "last.pt").write_bytes(before)
        cfg = (run / "config.yaml").read_text()
        (fake / "config.yaml").write_text(
            "\n".join(f"method: {other}" if line.startswith("method:") else line
                      for line in cfg.splitlines()))
        code, _, err = cli("evaluate", str(fake))
        assert code == 2 and "made with a different model: model=" in err, err
