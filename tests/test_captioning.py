"""The captioning model, its task on the shared loop, decoding, and the ``wsram caption``
commands end to end (data and metrics are in test_captioning_data.py)."""

from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path

import pytest
import torch
from conftest import CAPTION_TINY
from torch import nn

from wsram import checkpoint
from wsram.captioning.config import CaptionConfig
from wsram.captioning.encoder import DigitEncoder, cached_features
from wsram.captioning.model import CaptionModel
from wsram.captioning.task import CaptionStream, encode_references
from wsram.captioning.vocab import BOS_ID, EOS_ID, PAD_ID, Vocabulary
from wsram.cli import main
from wsram.config import make_config
from wsram.errors import ConfigError, WsramError
from wsram.methods import METHODS

pytest.importorskip("pycocoevalcap")

V, CH = 12, (4, 6)


def feats(B: int = 3, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(B, CH[0], 8, 8, generator=g), torch.rand(B, CH[1], 4, 4, generator=g)]


def captions(B: int = 3, pad: int = 0) -> torch.Tensor:
    """<bos> w.. <eos> of different lengths, right-padded (plus ``pad`` extra columns)."""
    rows = [[BOS_ID, 5, 6, 7, EOS_ID], [BOS_ID, 8, EOS_ID], [BOS_ID, 9, 4, EOS_ID]][:B]
    L = max(map(len, rows)) + pad
    return torch.tensor([r + [PAD_ID] * (L - len(r)) for r in rows])


def model(q_word: str = "current", seed: int = 0) -> CaptionModel:
    torch.manual_seed(seed)
    return CaptionModel(V, CH, hidden=16, embed=8, neighbourhood=3, loc_std=0.2, q_word=q_word)


def roll(m: CaptionModel, y: torch.Tensor, seed: int = 1, **kw):
    torch.manual_seed(seed)
    return m.rollout(feats(len(y)), y, **kw)


# --------------------------------------------------------------------------------------
# The model


@pytest.mark.slow
def test_log_likelihood_sums_the_words_and_ignores_padding() -> None:
    m = model()
    y = captions()
    r = roll(m, y, num_samples=4)
    assert r.log_lik.shape == r.log_prior.shape == (3, 4)
    # log p(y|a,x) is the sum of the teacher-forced word log-probabilities, padding skipped
    lp = r.class_log_probs.gather(-1, y[:, 1:].unsqueeze(1).expand(-1, 4, -1).unsqueeze(-1))
    mask = (y[:, 1:] != PAD_ID).unsqueeze(1)
    torch.testing.assert_close(r.log_lik, (lp.squeeze(-1) * mask).sum(-1))
    # extra padding columns change nothing (same random draws for the real words)
    r2 = roll(m, captions(pad=3), num_samples=4)
    torch.testing.assert_close(r2.log_lik, r.log_lik)
    torch.testing.assert_close(r2.log_prior, r.log_prior)
    assert r.sampled_from_prior and torch.equal(r.log_sampler, r.log_prior)


@pytest.mark.parametrize("q_word", ["current", "preceding"])
def test_q_starts_as_the_prior_and_only_trains_eta(q_word: str) -> None:
    m = model(q_word)
    y = captions()
    rq, rp = roll(m, y, num_samples=2, proposal="q"), roll(m, y, num_samples=2)
    # zero-initialised correction: q's samples and densities are the prior's
    torch.testing.assert_close(rq.log_sampler, rq.log_prior)
    torch.testing.assert_close(rq.locs, rp.locs)
    rq.log_sampler.sum().backward()
    assert all(p.grad is None for p in m.theta())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.eta())


@pytest.mark.parametrize("q_word, offset", [("current", 1), ("preceding", 0)])
def test_q_reads_the_target_word_the_switch_names(q_word: str, offset: int) -> None:
    """At step t (which emits word t+1) q reads word t+1 (current) or word t (preceding)."""
    m = model(q_word)
    seen = []
    m.inference["word"].register_forward_hook(lambda mod, inp, out: seen.append(inp[0].clone()))
    y = captions()
    roll(m, y, num_samples=2, proposal="q")
    T = y.shape[1] - 1
    assert len(seen) == T
    for t, ids in enumerate(seen):
        assert torch.equal(ids, y[:, t + offset].repeat_interleave(2))
    seen.clear()
    roll(m, y, num_samples=2)  # the prior proposal never consults q
    assert seen == []


def test_baseline_never_trains_theta_and_ignores_actions() -> None:
    m = model()
    y = captions()
    r1, r2 = roll(m, y, seed=1), roll(m, y, seed=2)
    assert not torch.equal(r1.locs, r2.locs)
    torch.testing.assert_close(r1.baseline, r2.baseline)
    r1.baseline.sum().backward()
    assert all(p.grad is None for p in m.theta())


@pytest.mark.parametrize("name", ["var", "var+c", "wsram", "wsram+c", "wsram+q", "wsram+q+c",
                                  "vimco"])
def test_every_method_gives_a_finite_loss_and_gradient(name: str) -> None:
    m = model()
    meth = METHODS[name]
    r = roll(m, captions(), num_samples=3, proposal=meth.proposal)
    est = meth.objective(r)
    assert torch.isfinite(est.loss)
    est.loss.backward()
    g = torch.cat([p.grad.reshape(-1) for p in m.theta() if p.grad is not None])
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    assert ((1 <= est.ess) & (est.ess <= 3 + 1e-5)).all()


def test_glimpse_reads_the_chosen_layer_at_the_chosen_place() -> None:
    m = model()
    dark = [torch.zeros(1, CH[0], 8, 8), torch.zeros(1, CH[1], 4, 4)]
    lit = [dark[0].clone(), dark[1].clone()]
    lit[1][0, :, 0, 3] = 1.0  # one lit cell of layer 2, top right
    at = torch.tensor([[[0.75, -0.75]]])  # that cell's centre
    away = torch.tensor([[[-0.75, 0.75]]])  # bottom left: 3 cells off, outside the 3 x 3
    layer2 = torch.ones(1, 1, dtype=torch.long)
    assert not torch.allclose(m.glimpse(lit, at, layer2), m.glimpse(dark, at, layer2))
    torch.testing.assert_close(m.glimpse(lit, away, layer2), m.glimpse(dark, away, layer2))
    # layer 1 chosen: layer 2's cells are not read
    torch.testing.assert_close(m.glimpse(lit, at, 0 * layer2), m.glimpse(dark, at, 0 * layer2))
    other = [torch.rand(1, CH[0], 8, 8), dark[1]]
    assert not torch.allclose(m.glimpse(other, at, 0 * layer2), m.glimpse(dark, at, 0 * layer2))


def test_greedy_decoding_is_the_rollout_without_teacher_forcing() -> None:
    """Feeding the greedy caption back teacher-forced, with the policy's mode, reproduces
    the same attention and picks the same word at every step."""
    m = model()
    x = feats(4)
    words, locs, scales = m.decode(x, max_len=6)
    y = torch.cat([torch.full((4, 1), BOS_ID), words], 1)
    r = m.rollout(x, y, deterministic=True)
    for b in range(4):
        n = int((words[b] != PAD_ID).sum())  # the words up to and with <eos>
        assert torch.equal(r.class_log_probs[b, 0, :n].argmax(-1), words[b, :n])
        torch.testing.assert_close(r.locs[b, 0, :n], locs[b, :n])
        assert torch.equal(r.scales[b, 0, :n], scales[b, :n])


def test_beam_search_finds_the_best_caption_by_exhaustive_search() -> None:
    """With a beam as wide as every candidate, beam search returns the caption of highest
    log-likelihood (attention at the policy's mode) among all captions of up to 3 steps;
    its width-1 search is greedy decoding."""
    import itertools

    torch.manual_seed(3)
    m = CaptionModel(7, CH, hidden=16, embed=8, loc_std=0.2)
    nn.init.normal_(m.out.weight, std=0.5)  # sharper word distributions than at init
    x = feats(2, seed=4)
    tokens = [t for t in range(7) if t not in (PAD_ID, BOS_ID)]  # <eos>, <unk>, 4, 5, 6
    words = [t for t in tokens if t != EOS_ID]
    cands = [list(w) + [EOS_ID] for k in range(3) for w in itertools.product(words, repeat=k)]
    cands += [list(w) for w in itertools.product(words, repeat=3)]  # cut at max_len

    def loglik(seqs: list[list[int]], b: int) -> torch.Tensor:
        y = torch.full((len(seqs), 4), PAD_ID)
        y[:, 0] = BOS_ID
        for i, sq in enumerate(seqs):
            y[i, 1:1 + len(sq)] = torch.tensor(sq)
        xb = [f[b:b + 1].expand(len(seqs), *f.shape[1:]) for f in x]
        return m.rollout(xb, y, deterministic=True).log_lik[:, 0]

    for width in (1, 2, 64):
        got = m.decode(x, max_len=4, beam_size=width)[0]
        for b in range(2):
            seq = [t for t in got[b].tolist() if t != PAD_ID]
            score = loglik([seq], b)
            assert seq in cands  # a well-formed caption: words, then <eos> (or cut)
            assert score <= loglik(cands, b).max() + 1e-5
            if width == 64:
                torch.testing.assert_close(score, loglik(cands, b).max().view(1))
            if width == 1:  # greedy: each word the likeliest after its prefix
                y = torch.tensor([[BOS_ID, *seq]])
                lp = m.rollout([f[b:b + 1] for f in x], y, deterministic=True).class_log_probs
                masked = lp[0, 0].clone()
                masked[:, [PAD_ID, BOS_ID]] = -torch.inf
                assert masked.argmax(-1).tolist() == seq


# --------------------------------------------------------------------------------------
# Task pieces


def test_stream_is_seeded_resumable_and_draws_real_references() -> None:
    vocab = Vocabulary(["a", "b", "c"])
    refs = [[["a", "b"], ["c"]], [["b", "b", "b"]], [["c", "a"]]]
    caps, lengths = encode_references(vocab, refs, max_len=10)
    assert caps.shape == (3, 2, 5) and lengths.tolist() == [[4, 3], [5, 0], [4, 0]]
    f = [torch.arange(3.0).view(3, 1, 1, 1)]
    s1 = CaptionStream(f, caps, lengths, torch.device("cpu"), seed=5)
    s1.sample(4)
    state = s1.state_dict()
    x1, y1 = s1.sample(6)
    s2 = CaptionStream(f, caps, lengths, torch.device("cpu"), seed=99)
    s2.load_state_dict(state)
    x2, y2 = s2.sample(6)
    assert torch.equal(y1, y2) and torch.equal(x1[0], x2[0])
    for _ in range(20):
        x, y = s1.sample(4)
        for img, row in zip(x[0].view(-1).long().tolist(), y, strict=True):
            words = vocab.decode(row)
            assert words in refs[img]  # a reference of that very image
        assert (y[:, -1] != PAD_ID).any()  # trimmed to the batch's longest caption


def test_feature_cache_is_reused_and_keyed(tmp_path: Path) -> None:
    calls = []

    def compute():
        calls.append(1)
        return [torch.ones(2, 3, 4, 4)]

    key = {"encoder": "digits", "weights": "abc", "data": "x", "split": "train"}
    a = cached_features(tmp_path, key, compute)
    b = cached_features(tmp_path, key, compute)
    assert len(calls) == 1 and torch.equal(a[0], b[0])
    cached_features(tmp_path, {**key, "weights": "def"}, compute)
    assert len(calls) == 2  # another encoder: computed again, not read
    for f in tmp_path.glob("features-*.pt"):
        f.write_bytes(b"garbage")
    with pytest.raises(WsramError, match="unreadable feature cache: .*delete the file"):
        cached_features(tmp_path, key, compute)


def test_digit_encoder_layers_and_strides() -> None:
    enc = DigitEncoder()
    out = enc(torch.zeros(2, 1, 64, 64))
    assert [tuple(f.shape[1:]) for f in out] == [(32, 16, 16), (64, 8, 8), (64, 4, 4)]
    assert tuple(enc.channels) == (32, 64, 64) and enc.strides == (4, 8, 16)
    assert [tuple(s.shape) for s in enc.label_scores(out)] == [(2, 20)] * 3


def test_caption_config_checks() -> None:
    make_config({}, CaptionConfig)
    for bad, msg in [({"method": "cnn"}, "captioning needs attention"),
                     ({"q_word": "next"}, "q_word"),
                     ({"encoder": "resnet18"}, "encoder-weights"),
                     ({"dataset": "karpathy"}, "karpathy-json"),
                     ({"dataset": "coco"}, "dataset"),
                     ({"canvas_size": 3}, "unknown config key"),
                     ({"max_len": 2}, "max_len")]:
        with pytest.raises(ConfigError, match=msg):
            make_config(bad, CaptionConfig)


# --------------------------------------------------------------------------------------
# End to end


TINY = CAPTION_TINY



@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory) -> Path:
    """A barely pretrained digit encoder, shared by the end-to-end tests; its run says what
    the minutes before the first update are for, and how to reuse the encoder."""
    run = tmp_path_factory.mktemp("enc") / "run"
    err = tmp_path_factory.mktemp("err") / "e"
    with open(err, "w") as f, pytest.raises(SystemExit) as e:
        sys.stderr = f
        try:
            main(["caption", "train", "--run-dir", str(run), "--steps", "0",
                  "--encoder-steps", "3", *TINY])
        finally:
            sys.stderr = sys.__stderr__
    assert e.value.code == 0
    said = " ".join(err.read_text().split())
    assert "pretraining the digit encoder first: 3 updates" in said
    assert f"--encoder-weights {run / 'encoder.pt'} reuses" in said
    return run / "encoder.pt"


@pytest.mark.slow
def test_caption_train_evaluate_show_plot(cli, tmp_path: Path, encoder_file: Path,
                                          monkeypatch) -> None:
    run = tmp_path / "run"
    code, out, err = cli("caption", "train", "--run-dir", str(run), "--steps", "16",
                         "--encoder-weights", str(encoder_file),
                         "--feature-cache", str(tmp_path / "cache"), *TINY)
    assert code == 0, err
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "train/nll" in r]
    assert [r["step"] for r in train_rows] == [4, 8, 12, 16]
    assert all(r["train/nll"] > 0 and 0 <= r["train/error"] <= 1 for r in train_rows)
    assert any("diag/grad_var" in r for r in rows)
    evals = [r for r in rows if "eval/bleu4" in r]
    assert [r["step"] for r in evals] == [8, 16]
    assert (run / "best.pt").is_file() and list((tmp_path / "cache").glob("features-*.pt"))

    code, out, err = cli("caption", "evaluate", str(run), "--beam-size", "2")
    assert code == 0, err
    assert "test split" in out and "no teacher forcing" in out and "BLEU-4" in out
    res = json.loads((run / "eval.json").read_text())
    for k in ("bleu1", "bleu2", "bleu3", "bleu4"):
        assert 0 <= res[k] <= 1 and 0 <= res["greedy"][k] <= 1
    assert res["split"] == "test" and res["images"] == 10 and res["teacher_forcing"] is False
    assert res["bleu4"] == res["beam"]["bleu4"] and res["beam_size"] == 2
    caps = json.loads((run / "captions.json").read_text())
    assert caps["split"] == "test" and len(caps["captions"]) == 10
    # A folder it cannot write to is reported after the scores, not instead of them.
    from wsram.captioning import commands as cap_commands

    def refuse(*a):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(cap_commands, "write_caption_result", refuse)
    code, out, err = cli("caption", "evaluate", str(run), "--size", "2")
    assert code == 2 and "BLEU-4" in out and "cannot write eval.json" in err
    monkeypatch.undo()

    from wsram.plots import pyplot

    plt = pyplot()
    texts: list[str] = []
    close = plt.close

    def read_then_close(fig):  # every text a figure shows, before it goes
        texts.extend(t.get_text() for t in fig.findobj(plt.Text))
        close(fig)

    monkeypatch.setattr(plt, "close", read_then_close)
    code, out, err = cli("caption", "show", str(run), "--num", "2")
    assert code == 0, err
    refs = caps["captions"][0]["references"]
    assert any(t.startswith("references:") and refs[0] in t for t in texts)
    assert any(re.search(r"layer \d \(\d+x\d+\)", t) for t in texts)
    from wsram.captioning import plots as cap_plots

    assert cap_plots.is_clipped(2, 2, 8, 64, 64) and not cap_plots.is_clipped(32, 32, 8, 64, 64)
    pngs = sorted((run / "show").glob("*.png"))
    assert [p.name for p in pngs] == ["test-0000.png", "test-0001.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs)

    fig = tmp_path / "nll.png"
    code, out, err = cli("caption", "plot", str(run), str(run), "--out", str(fig))
    assert code == 0, err
    assert fig.read_bytes()[:4] == b"\x89PNG"

    # resuming at the end trains nothing and adds no rows
    code, out, err = cli("caption", "train", "--run-dir", str(run), "--resume",
                         "--steps", "16", "--no-progress")
    assert code == 0 and "already at 16 updates" in out
    assert len((run / "metrics.jsonl").read_text().splitlines()) == len(rows)
    # resuming to more updates continues from the checkpoint
    code, out, err = cli("caption", "train", "--run-dir", str(run), "--resume",
                         "--steps", "20", "--no-progress", "--json")
    assert code == 0, err
    assert json.loads(out.splitlines()[-1])["step"] == 20


@pytest.mark.slow
def test_caption_run_keeps_its_own_encoder_and_resumes_identically(cli,
        tmp_path: Path, encoder_file: Path) -> None:
    copy = tmp_path / "encoder-copy.pt"
    copy.write_bytes(encoder_file.read_bytes())
    args = ["--encoder-weights", str(copy), *TINY, "--eval-every", "0", "--diag-every", "0"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert cli("caption", "train", "--run-dir", str(a), "--steps", "12", *args)[0] == 0
    assert cli("caption", "train", "--run-dir", str(b), "--steps", "8", *args)[0] == 0
    assert (b / "encoder.pt").read_bytes() == (a / "encoder.pt").read_bytes()
    copy.unlink()  # the run folder holds its own copy of the encoder
    assert cli("caption", "train", "--run-dir", str(b), "--resume", "--steps", "12",
               "--no-progress")[0] == 0
    sa = checkpoint.load(a / "last.pt")["model"]
    sb = checkpoint.load(b / "last.pt")["model"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.slow
def test_caption_commands_on_bad_input(cli, tmp_path: Path, encoder_file: Path) -> None:
    def fails(*args: str, match: str) -> None:
        code, out, err = cli(*args)
        assert code == 2, (args, err)
        assert match in err and len(err.strip().splitlines()) == 1, err

    fails("caption", "evaluate", str(tmp_path / "nope"), match="no such run folder")
    fails("caption", "train", "--run-dir", str(tmp_path / "r"), "--encoder", "resnet18",
          match="--encoder-weights")
    fails("caption", "train", "--run-dir", str(tmp_path / "r"), "--dataset", "karpathy",
          match="--karpathy-json")
    fails("caption", "train", "--run-dir", str(tmp_path / "r"), "--encoder-weights",
          str(tmp_path / "missing.pt"), *TINY, match="no such encoder file")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(encoder_file.read_bytes()[:300])  # a truncated copy
    fails("caption", "train", "--run-dir", str(tmp_path / "r2"), "--encoder-weights", str(junk),
          *TINY, match="truncated or not a checkpoint")
    fails("caption", "train", "--run-dir", str(tmp_path / "r3"), "--canvas-size", "50",
          match="unrecognized arguments")
    # a classification run is not a caption run, and the other way round
    cls_run = tmp_path / "cls"
    cls_run.mkdir()
    (cls_run / "config.yaml").write_text("task: classification\nmethod: var\n")
    fails("caption", "evaluate", str(cls_run), match="not a caption run")
    fails("caption", "show", str(cls_run), match="not a caption run")
    fails("caption", "train", "--run-dir", str(cls_run), "--resume",
          match="not a caption run; resume it with wsram train")
    cap_run = tmp_path / "cap"
    assert cli("caption", "train", "--run-dir", str(cap_run), "--steps", "2",
               "--encoder-weights", str(encoder_file), *TINY)[0] == 0
    fails("evaluate", str(cap_run),
          match="a caption run, not a classification run; use wsram caption")
    fails("show", str(cap_run),
          match="a caption run, not a classification run; use wsram caption")
    fails("train", "--run-dir", str(cap_run), "--resume", match="resume it with wsram caption")
    fails("caption", "plot", str(cap_run), "--out", str(tmp_path / ("a" * 300 + ".png")),
          match="File name too long")
    # --overwrite never deletes a file the new run would read
    fails("caption", "train", "--run-dir", str(cap_run), "--overwrite", "--encoder-weights",
          str(cap_run / "encoder.pt"), *TINY, match="--overwrite would delete")
    assert (cap_run / "encoder.pt").is_file()
    fails("caption", "evaluate", str(cap_run), "--beam-size", "0", match="at least 1")
    fails("caption", "plot", str(tmp_path / "nope"), "--out", str(tmp_path / "x.png"),
          match="not a run folder")
    fails("caption", "plot", str(cap_run), "--out", str(tmp_path / "x.txt"), match=".png")
    # a run refuses an encoder other than the one it was trained with
    saved_encoder = (cap_run / "encoder.pt").read_bytes()
    torch.manual_seed(123)
    checkpoint.save(cap_run / "encoder.pt", {"kind": "digits",
                                             "encoder": DigitEncoder().state_dict()})
    fails("caption", "evaluate", str(cap_run), match="trained with another encoder")
    fails("caption", "train", "--run-dir", str(cap_run), "--resume", "--steps", "4",
          match="trained with another encoder")
    (cap_run / "encoder.pt").write_bytes(saved_encoder)
    # a run is never overwritten without --overwrite
    before = (cap_run / "last.pt").read_bytes()
    fails("caption", "train", "--run-dir", str(cap_run), "--steps", "2", *TINY,
          match="already holds a run")
    assert (cap_run / "last.pt").read_bytes() == before


# --------------------------------------------------------------------------------------
# Photographs: Karpathy split file + a torchvision backbone (a stand-in module here)


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


class _FakeResNet(nn.Module):
    """The attributes of torchvision's ResNet the encoder uses, at toy size."""

    def __init__(self, weights=None):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(2)
        self.layer1 = _Block(4, 4)
        self.layer2 = _Block(4, 6)
        self.layer3 = _Block(6, 8)
        self.layer4 = _Block(8, 8)


@pytest.fixture
def fake_torchvision(monkeypatch):
    tv = types.ModuleType("torchvision")
    tv.models = types.SimpleNamespace(resnet18=_FakeResNet)
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    return tv


def test_karpathy_photographs_with_a_torchvision_backbone(cli, tmp_path: Path,
                                                          fake_torchvision) -> None:
    pytest.importorskip("PIL")
    from PIL import Image

    sentences = ["a dog runs on the grass", "a brown dog is running", "two children play",
                 "a man rides a bike", "someone is cycling", "a cat sleeps on a bed"]
    images = []
    for i in range(9):
        split = "train" if i < 5 else "val" if i < 7 else "test"
        name = f"im{i}.jpg"
        Image.new("RGB", (40, 30), (30 * i, 100, 200 - 20 * i)).save(tmp_path / name)
        caps = [sentences[i % 6], sentences[(i + 1) % 6]]
        images.append({"filename": name, "split": split,
                       "sentences": [{"tokens": c.split(), "raw": c} for c in caps]})
    js = tmp_path / "dataset_flickr8k.json"
    js.write_text(json.dumps({"images": images}))
    weights = tmp_path / "resnet18.pth"
    torch.save(_FakeResNet().state_dict(), weights)
    run = tmp_path / "run"
    code, out, err = cli("caption", "train", "--run-dir", str(run), "--dataset",
                         "karpathy", "--karpathy-json", str(js), "--image-dir", str(tmp_path),
                         "--image-size", "64", "--encoder", "resnet18", "--encoder-weights",
                         str(weights), "--steps", "4", "--hidden", "16", "--embed", "8",
                         "--batch-size", "3", "--samples", "2", "--log-every", "2",
                         "--diag-every", "0", "--eval-every", "0", "--no-progress")
    assert code == 0, err
    code, out, err = cli("caption", "evaluate", str(run))
    assert code == 0, err
    res = json.loads((run / "eval.json").read_text())
    assert res["split"] == "test" and res["images"] == 2
    # weights of another network are refused in one line
    torch.save({"fc.weight": torch.zeros(2, 2)}, weights)
    code, out, err = cli("caption", "train", "--run-dir", str(tmp_path / "r2"),
                         "--dataset", "karpathy", "--karpathy-json", str(js), "--image-dir",
                         str(tmp_path), "--encoder", "resnet18", "--encoder-weights",
                         str(weights), "--no-progress")
    assert code == 2 and "not resnet18 weights" in err


def test_torchvision_missing_is_one_clear_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import fails
    from wsram.captioning.encoder import ResNetEncoder

    with pytest.raises(ConfigError, match=r"needs torchvision: pip install 'wsram\[vision\]'"):
        ResNetEncoder("resnet18", tmp_path / "w.pth")


@pytest.mark.parametrize("path, cls_name", [("configs/default.yaml", "ClassificationConfig"),
                                             ("configs/caption.yaml", "CaptionConfig")])
def test_shipped_default_configs_hold_the_defaults(path: str, cls_name: str) -> None:
    from wsram.classification.config import ClassificationConfig
    from wsram.config import load_yaml

    cls = CaptionConfig if cls_name == "CaptionConfig" else ClassificationConfig
    root = Path(__file__).resolve().parent.parent
    assert make_config(load_yaml(root / path), cls).to_dict() == make_config({}, cls).to_dict()
