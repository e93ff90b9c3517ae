"""The attention model: sensor geometry, policy densities, and which parameters each loss
trains (METHOD.md, Architecture)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from wsram.classification.glimpse import GlimpseSensor, area_resize
from wsram.classification.model import AttentionModel
from wsram.methods import METHODS
from wsram.policy import ActionDist

H = 60


def ramp(n: int = H) -> torch.Tensor:
    """Canvas whose pixel value is the normalised x coordinate of its centre: (1, 1, n, n)."""
    u = (torch.arange(n, dtype=torch.float32) * 2 + 1) / n - 1
    return u.expand(n, n).reshape(1, 1, n, n).clone()


def read(sensor: GlimpseSensor, x: torch.Tensor, loc, scale) -> torch.Tensor:
    loc = torch.as_tensor(loc, dtype=torch.float32).reshape(x.shape[0], -1, 2)
    scale = torch.as_tensor(scale).reshape(x.shape[0], -1)
    return sensor(sensor.pyramid(x), loc, scale)


SCALES = [0.2, 0.4, 0.8]


@pytest.mark.parametrize("scale_idx, lx", [  # patches that stay inside the canvas
    (i, lx) for i in range(3) for lx in (-0.5, 0.0, 0.3) if abs(lx) + SCALES[i] <= 1])
def test_sensor_reads_where_and_how_wide_it_is_told(scale_idx: int, lx: float) -> None:
    scales = SCALES
    sensor = GlimpseSensor(H, 8, scales)
    s = scales[scale_idx]
    p = read(sensor, ramp(), [lx, 0.1], [scale_idx])[0, 0, 0]  # (G, G)
    # On a linear ramp, the patch mean is the ramp at the patch centre...
    assert p.mean().item() == pytest.approx(lx, abs=0.02)
    # ...and the patch spans `s` of the canvas: left-to-right rise of about 2 s (G-1)/G.
    rise = (p[:, -1] - p[:, 0]).mean().item()
    assert rise == pytest.approx(2 * s * 7 / 8, rel=0.1)
    # Rows are identical: the ramp is horizontal, so the sensor does not swap the axes.
    assert torch.allclose(p, p[:1].expand_as(p), atol=1e-5)


def test_sensor_sees_a_square_only_when_looking_at_it() -> None:
    x = torch.zeros(1, 1, H, H)
    x[..., 10:20, 40:50] = 1.0  # rows 10..19 (top), columns 40..49 (right)
    sensor = GlimpseSensor(H, 6, [0.1, 0.5])
    cy, cx = (15 * 2) / H - 1, (45 * 2) / H - 1  # the square's centre, normalised
    inside = read(sensor, x, [cx, cy], [0])
    assert inside.min().item() > 0.99
    elsewhere = read(sensor, x, [-cx, -cy], [0])
    assert elsewhere.abs().max().item() == 0
    off_canvas = read(sensor, x, [3.0, 3.0], [1])
    assert off_canvas.abs().max().item() == 0
    # A wide glimpse around the square sees it, diluted by the black around it.
    wide = read(sensor, x, [cx, cy], [1])
    assert 0 < wide.mean().item() < 0.5


def test_sensor_batches_without_crosstalk() -> None:
    torch.manual_seed(0)
    sensor = GlimpseSensor(H, 5, [0.2, 0.5, 1.0])
    x = torch.rand(3, 2, H, H)
    loc = torch.rand(3, 4, 2) * 2 - 1
    scale = torch.randint(0, 3, (3, 4))
    batched = sensor(sensor.pyramid(x), loc, scale)  # (3, 4, 2, 5, 5)
    for b in range(3):
        for k in range(4):
            one = read(sensor, x[b:b + 1], loc[b, k], scale[b, k])[0, 0]
            assert torch.allclose(batched[b, k], one, atol=1e-6)


def reference_patch(x: torch.Tensor, loc: torch.Tensor, scale: float, size: int,
                    patch: int) -> torch.Tensor:
    """The sensor written plainly for one image and one glimpse: the canvas area-resampled
    by F.interpolate, then bilinear samples at the pixel centres of the patch grid."""
    level = x if size >= x.shape[-1] else F.interpolate(x, size=(size, size), mode="area")
    axis = (torch.arange(patch, dtype=torch.float32) * 2 + 1) / patch - 1
    gy, gx = torch.meshgrid(axis, axis, indexing="ij")
    grid = torch.stack([gx * scale + loc[0], gy * scale + loc[1]], -1)[None]
    return F.grid_sample(level, grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False)[0]  # (C, G, G)


@pytest.mark.parametrize("canvas, patch, scales", [(100, 12, [0.2, 0.4, 0.8]),
                                                   (28, 8, [8 / 28]), (37, 5, [0.3, 1.0])])
def test_sensor_matches_a_plain_reference(canvas: int, patch: int, scales: list[float]) -> None:
    # The sensor's batched pyramid (channels-last pooling) and its one-scale-at-a-time
    # grids give the patches of the plain per-glimpse computation, to float rounding.
    torch.manual_seed(3)
    sensor = GlimpseSensor(canvas, patch, scales)
    B, K = 3, 4
    x = torch.rand(B, 2, canvas, canvas)
    loc = torch.randn(B, K, 2) * 0.7  # some glimpses partly or wholly off the canvas
    scale = torch.randint(0, len(scales), (B, K))
    levels = sensor.pyramid(x, also=(12,))
    assert torch.allclose(levels[-1], F.interpolate(x, size=(12, 12), mode="area"), atol=1e-6)
    got = sensor(levels[:-1], loc, scale)
    for b in range(B):
        for k in range(K):
            s = int(scale[b, k])
            want = reference_patch(x[b:b + 1], loc[b, k], scales[s], sensor.level_sizes[s],
                                   patch)
            assert torch.allclose(got[b, k], want, atol=1e-5, rtol=0)


def test_area_resize_is_area_interpolation() -> None:
    torch.manual_seed(4)
    for shape in [(64, 1, 100, 100), (1, 1, 30, 30), (2, 3, 17, 17)]:
        x = torch.rand(shape)
        for size, got in zip((15, 12, 7), area_resize(x, [15, 12, 7]), strict=True):
            want = F.interpolate(x, size=(size, size), mode="area")
            assert got.shape == want.shape and got.is_contiguous()
            assert torch.allclose(got, want, atol=1e-6, rtol=0)


def test_policy_log_prob_and_entropy_match_torch_distributions() -> None:
    torch.manual_seed(1)
    mean = torch.tanh(torch.randn(4, 3, 2))
    logits = torch.randn(4, 3, 5)
    for t in (1.0, 2.5):
        d = ActionDist(mean, 0.2, logits).tempered(t)
        loc, scale = d.sample()
        normal = torch.distributions.Normal(mean, 0.2 * t)
        cat = torch.distributions.Categorical(logits=logits / t)
        expected = normal.log_prob(loc).sum(-1) + cat.log_prob(scale)
        assert torch.allclose(d.log_prob(loc, scale), expected, atol=1e-5)
        assert torch.allclose(d.entropy(), normal.entropy().sum(-1) + cat.entropy(), atol=1e-5)


def test_actions_from_a_runs_own_noise_follow_the_policy_and_ignore_the_global_stream(
        ) -> None:
    """Inside ``drawing_from``, actions come from the run's generator (inverse CDFs of its
    uniforms): the right distribution, the same numbers whatever the global generator
    does, and drawn in two calls the same as in one."""
    from wsram.policy import ActionNoise, drawing_from

    mean = torch.tensor([[0.3, -0.5]]).expand(20000, 2)
    logits = torch.tensor([[0.0, 1.0, -30.0, 2.0]]).expand(20000, 4)
    d = ActionDist(mean, 0.2, logits)
    with drawing_from(ActionNoise(torch.Generator().manual_seed(5))):
        torch.manual_seed(0)
        loc, scale = d.sample()
        torch.manual_seed(1)
        loc2, scale2 = d.sample()
    assert torch.allclose(loc.mean(0), mean[0], atol=0.01)
    assert torch.allclose(loc.std(0), torch.full((2,), 0.2), atol=0.01)
    freq = torch.bincount(scale, minlength=4).float() / len(scale)
    assert torch.allclose(freq, torch.softmax(logits[0], -1), atol=0.015)
    assert freq[2] == 0  # a scale of (nearly) zero probability is never drawn
    g = torch.Generator().manual_seed(5)
    with drawing_from(ActionNoise(g)):
        torch.manual_seed(7)
        both = ActionDist(torch.cat([mean, mean]), 0.2, torch.cat([logits, logits])).sample()
    assert torch.equal(both[0], torch.cat([loc, loc2])) and torch.equal(both[1],
                                                                        torch.cat([scale, scale2]))


def test_coverage_penalty_is_zero_for_uniform_and_large_for_collapsed_locations() -> None:
    g = torch.linspace(-0.75, 0.75, 4)
    centres = torch.stack(torch.meshgrid(g, g, indexing="xy"), -1).reshape(-1, 2)
    spread = ActionDist(centres, 0.01, torch.zeros(16, 3)).coverage_penalty(cells=4)
    assert spread.item() == pytest.approx(0.0, abs=1e-4)
    collapsed = ActionDist(torch.zeros(16, 2) + 0.25, 0.01, torch.zeros(16, 3)).coverage_penalty(4)
    assert collapsed.item() == pytest.approx(math.log(16), rel=1e-3)


def tiny_model() -> AttentionModel:
    torch.manual_seed(0)
    return AttentionModel(canvas_size=32, glimpses=2, patch=4, scales=[0.25, 0.5], hidden=16,
                          context_size=8, loc_std=0.2, num_classes=3)


def grad_owners(model: AttentionModel, loss: torch.Tensor) -> set[str]:
    """Top-level modules whose parameters get a non-zero gradient from ``loss``."""
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n.split(".")[0] for n, p in model.named_parameters()
            if p.grad is not None and p.grad.abs().sum() > 0}


THETA = {"context", "glimpse_what", "glimpse_where", "core1", "core2", "emission", "classifier"}


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(2)
    return torch.rand(6, 1, 32, 32), torch.randint(0, 3, (6,))


@pytest.mark.parametrize("name, owners", [
    ("var", THETA),
    ("var+c", THETA | {"baseline"}),
    ("wsram", THETA),
    ("wsram+c", THETA),
    ("wsram+q", THETA | {"inference"}),
    ("wsram+q+c", THETA | {"inference"}),
    ("vimco", THETA),
])
def test_each_method_trains_exactly_its_parameter_groups(name: str, owners: set[str]) -> None:
    model, (x, y) = tiny_model(), batch()
    method = METHODS[name]
    r = model.rollout(x, y, 4, proposal=method.proposal)
    assert grad_owners(model, method.objective(r).loss) == owners


def test_which_log_probability_reaches_which_parameters() -> None:
    model, (x, y) = tiny_model(), batch()
    r = model.rollout(x, y, 3, proposal="q")
    # Classifier likelihood: actions are samples, so no gradient reaches the policy (emission).
    assert "emission" not in grad_owners(model, r.log_lik.sum())
    assert "classifier" in grad_owners(model, model.rollout(x, y, 3).log_lik.sum())
    # The prior's log-density trains the policy and the recurrent state, never the classifier.
    r = model.rollout(x, y, 3, proposal="q")
    owners = grad_owners(model, r.log_prior.sum())
    assert {"emission", "core2"} <= owners and "classifier" not in owners
    # q reads the top layer with gradient stopped: its density trains eta alone.
    r = model.rollout(x, y, 3, proposal="q")
    assert grad_owners(model, r.log_sampler.sum()) == {"inference"}
    # The baseline reads stopped context features: its fit trains the baseline alone.
    r = model.rollout(x, y, 3)
    assert grad_owners(model, (r.baseline ** 2).sum()) == {"baseline"}


def test_parameter_groups_partition_the_model() -> None:
    model = tiny_model()
    groups = [model.theta(), model.eta(), model.baseline_params()]
    ids = [id(p) for g in groups for p in g]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))


def test_rollout_shapes_and_temperature_densities() -> None:
    model, (x, y) = tiny_model(), batch()
    r = model.rollout(x, y, 5, proposal="prior", temperature=2.0)
    assert r.class_log_probs.shape == (6, 5, 3)
    assert r.locs.shape == (6, 5, 2, 2) and r.scales.shape == (6, 5, 2)
    # Tempered sampling: the sampler's density differs from the untempered prior's.
    assert not torch.allclose(r.log_sampler, r.log_prior)
    r1 = model.rollout(x, y, 5)
    assert r1.sampled_from_prior and r1.log_sampler is r1.log_prior
    det = model.rollout(x, None, 2, deterministic=True)
    assert torch.equal(det.locs[:, 0], det.locs[:, 1]) and det.log_lik is None


@pytest.mark.parametrize("name, temperature", [("wsram+q+c", 1.0), ("var+c", 2.0),
                                               ("wsram", 1.0)])
def test_training_error_comes_from_the_models_own_untempered_policy(
        name: str, temperature: float, monkeypatch) -> None:
    from wsram.classification import make_config
    from wsram.classification.task import classification_metrics
    from wsram.engine import forward_step

    model, (x, y) = tiny_model(), batch()
    cfg = make_config(canvas_size=32, digit_min=10, digit_max=20, glimpses=2, patch=4,
                      scales=[0.25, 0.5], hidden=16, context_size=8, loc_std=0.2,
                      num_classes=3, samples=4, method=name, temperature=temperature)
    calls = []
    real = model.rollout

    def spy(*args, **kw):
        r = real(*args, **kw)
        calls.append((kw.get("proposal", "prior"), kw.get("temperature", 1.0), r))
        return r

    monkeypatch.setattr(model, "rollout", spy)
    _, _, rollout, extra = forward_step(model, METHODS[name], cfg, x, y,
                                        metrics=classification_metrics)
    err = extra["error"]
    if name == "wsram":  # samples of the prior itself: the first trajectory is reused
        assert len(calls) == 1
    else:  # q's or tempered samples: one more trajectory of the untempered prior
        assert len(calls) == 2 and calls[1][:2] == ("prior", 1.0)
    own = calls[-1][2].class_log_probs[:, 0].argmax(-1)
    assert err.item() == (own != y).float().mean().item()


def test_rollout_reusing_another_rollouts_inputs_is_the_same() -> None:
    # The training error's own-policy rollout reuses the pyramid and context features of
    # the update's rollout: the same trajectories as computing them afresh.
    torch.manual_seed(6)
    model = AttentionModel(canvas_size=40, glimpses=2, patch=6, hidden=16)
    x, y = torch.rand(5, 1, 40, 40), torch.randint(0, 10, (5,))
    first = model.rollout(x, y, 3, proposal="q")
    torch.manual_seed(7)
    fresh = model.rollout(x, y, 1)
    torch.manual_seed(7)
    reused = model.rollout(x, y, 1, inputs=first.inputs)
    assert torch.equal(fresh.class_log_probs, reused.class_log_probs)
    assert torch.equal(fresh.log_prior, reused.log_prior)
    assert torch.equal(fresh.locs, reused.locs)
