"""Caption decoder with hard attention over (layer, location) of fixed CNN features.

At word t the attention policy reads the decoder's state and the preceding word and
chooses an action a_t = (l_t, s_t): a location l_t in [-1, 1]^2 (Gaussian) and a
feature layer s_t (categorical), the same :class:`wsram.policy.ActionDist` as the
classifier's. The glimpse is the n x n block of layer s_t's feature cells centred at
l_t (bilinear), embedded together with the action (what x where, as in RAM); the LSTM
reads it with the preceding word and emits word t. The inference network q(a_t | ...)
also sees a word of the target caption: the current one, the word the glimpse must
explain (``q_word="current"``), or the preceding one (``"preceding"``, the paper's
wording). Like the classifier's, q is the prior's outputs (gradient stopped) plus a
label-aware correction that starts at zero.

With a caption y = (y_1..y_T) and actions a = (a_1..a_T),
    log p(y | a, x) = sum_t log p(y_t | y_<t, a_<=t, x)     (``Rollout.log_lik``)
    log p(a | x)    = sum_t log p(a_t | y_<t, a_<t, x)       (``Rollout.log_prior``)
are the quantities of METHOD.md M1..M12, so every method and estimator of the
classifier applies unchanged, with the whole caption as the label.

Parameter groups as in :mod:`wsram.classification.model`: theta (everything but), eta
(``inference``), the VAR baseline (``baseline``, reading detached features and words).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..policy import ActionDist
from ..rollout import ActionTrace, ParameterGroups, Rollout, inference_network
from .vocab import BOS_ID, EOS_ID, PAD_ID


@dataclass
class State:
    """Decoder state for R rows (R = B x K, or B x beam): LSTM (h, c), (R, H) each."""

    h: Tensor
    c: Tensor


class CaptionModel(ParameterGroups, nn.Module):
    """The hard-attention caption decoder (METHOD.md, Captioning): an LSTM that, for each
    word, chooses a feature layer (the scale) and a location in it from its state (the
    prior), reads a neighbourhood of feature cells there, and emits the word. Also holds
    the inference network q(a|x,y), which sees the word to be explained (eta), and the
    VAR baseline (``predict_baseline``). ``rollout`` is teacher-forced and returns
    log-probabilities (:class:`wsram.rollout.Rollout`); ``decode`` captions images.
    """

    def __init__(self, vocab_size: int, channels: list[int] | tuple[int, ...],
                 hidden: int = 256, embed: int = 64, neighbourhood: int = 3,
                 loc_std: float = 0.1, q_word: str = "current"):
        super().__init__()
        if q_word not in ("current", "preceding"):
            raise ValueError(f"q_word must be 'current' or 'preceding', got {q_word!r}")
        self.vocab_size = vocab_size
        self.channels = tuple(int(c) for c in channels)
        self.num_scales = len(self.channels)
        self.hidden = hidden
        self.n = neighbourhood
        self.loc_std = float(loc_std)
        self.q_word = q_word
        S, H, n = self.num_scales, hidden, neighbourhood

        # --- theta: prediction network ---
        self.word_emb = nn.Embedding(vocab_size, embed)
        self.init_state = nn.Linear(sum(self.channels), 2 * H)  # mean features -> (h0, c0)
        self.what = nn.ModuleList(nn.Linear(c * n * n, H) for c in self.channels)
        self.where = nn.Linear(2 + S, H)
        self.lstm = nn.LSTMCell(embed + H, H)
        self.top = nn.Linear(H + embed, H)  # the state the policy reads: (h, preceding word)
        self.emission = nn.Linear(H, 2 + S)
        self.out = nn.Linear(2 * H, vocab_size)  # word from (h, glimpse)
        # --- eta: inference network q(a_t | state, target word) ---
        self.inference = inference_network({"state": nn.Linear(H, H),
                                            "word": nn.Embedding(vocab_size, H)}, H, 2 + S)
        # --- the VAR baseline b(x, y): reads features and caption, never the actions ---
        self.baseline = nn.Sequential(nn.Linear(sum(self.channels) + embed + 1, H), nn.ReLU(),
                                      nn.Linear(H, 1))

        offsets = torch.arange(n, dtype=torch.float32) - (n - 1) / 2
        gy, gx = torch.meshgrid(offsets, offsets, indexing="ij")
        self.register_buffer("cell_offsets", torch.stack([gx, gy], -1).reshape(n * n, 2),
                             persistent=False)  # (n*n, 2) in cells

    # --- pieces ---
    def initial_state(self, feats: list[Tensor], rows: int) -> State:
        """(h0, c0) from the mean of every layer's features, repeated ``rows`` times per image."""
        pooled = torch.cat([f.mean((-2, -1)) for f in feats], -1)  # (B, sum C)
        h, c = torch.tanh(self.init_state(pooled)).chunk(2, -1)
        return State(h.repeat_interleave(rows, 0), c.repeat_interleave(rows, 0))

    def glimpse(self, feats: list[Tensor], loc: Tensor, scale: Tensor) -> Tensor:
        """Embedded glimpses of R = B x J rows: loc (B, J, 2), scale (B, J) -> (B, J, H).

        Each layer is read at all rows with one ``grid_sample`` (rows along the grid's
        height, no copy of the features); each row's chosen layer is then embedded."""
        B, J = scale.shape
        n2 = self.n * self.n
        out = loc.new_zeros(B, J, self.hidden)
        for s, f in enumerate(self.channels):
            rows = scale == s  # (B, J)
            if not bool(rows.any()):
                continue
            fmap = feats[s]
            h, w = fmap.shape[-2:]
            step = loc.new_tensor([2.0 / w, 2.0 / h])  # one cell in normalised units
            grid = loc.unsqueeze(2) + self.cell_offsets.to(loc.dtype) * step  # (B, J, n2, 2)
            patch = F.grid_sample(fmap.to(loc.dtype), grid, mode="bilinear",
                                  padding_mode="zeros", align_corners=False)  # (B, C, J, n2)
            patch = patch.permute(0, 2, 1, 3).reshape(B, J, f * n2)
            emb = self.what[s](patch[rows].to(self.what[s].weight.dtype))
            out = out.index_put((rows.nonzero(as_tuple=True)), emb.to(out.dtype))
        where = torch.cat([loc, F.one_hot(scale, self.num_scales).to(loc.dtype)], -1)
        return F.relu(out) * F.relu(self.where(where))

    def policy_state(self, state: State, prev_word: Tensor) -> Tensor:
        """What the policy and q read at this word: (R, H)."""
        return F.relu(self.top(torch.cat([state.h, self.word_emb(prev_word)], -1)))

    def prior_step(self, top: Tensor) -> tuple[ActionDist, Tensor]:
        out = self.emission(top)
        return ActionDist.from_emission(out, self.loc_std), out

    def proposal_step(self, top: Tensor, prior_out: Tensor, word: Tensor) -> ActionDist:
        q = self.inference
        hq = F.relu(q["state"](top.detach()) + q["word"](word))
        return ActionDist.from_emission(prior_out.detach() + q["out"](hq), self.loc_std)

    def read_and_emit(self, feats: list[Tensor], state: State, prev_word: Tensor, loc: Tensor,
                      scale: Tensor, J: int) -> tuple[State, Tensor]:
        """Glimpse at (loc, scale), update the LSTM, and score the next word.

        Rows R = B x J; loc (R, 2), scale (R,), prev_word (R,). Returns the new state and
        word log-probabilities (R, V)."""
        B = feats[0].shape[0]
        g = self.glimpse(feats, loc.view(B, J, 2), scale.view(B, J)).reshape(B * J, -1)
        h, c = self.lstm(torch.cat([self.word_emb(prev_word), g], -1), (state.h, state.c))
        logits = self.out(torch.cat([h, g], -1)).float()
        return State(h, c), torch.log_softmax(logits, -1)

    def predict_baseline(self, feats: list[Tensor], y: Tensor) -> Tensor:
        """b(x, y), (B,): from pooled features and the caption's words (gradients stopped
        into theta); it never sees the actions, so it is a valid control variate (M3)."""
        pooled = torch.cat([f.mean((-2, -1)) for f in feats], -1).detach()
        words = y[:, 1:]
        mask = (words != PAD_ID).to(pooled.dtype)
        emb = (self.word_emb(words).detach() * mask.unsqueeze(-1)).sum(1)
        length = mask.sum(1, keepdim=True)
        x = torch.cat([pooled, emb / length.clamp_min(1), length / 10], -1)
        return self.baseline(x).squeeze(-1)

    # --- training: K trajectories per caption, teacher forced ---
    def rollout(self, x: list[Tensor], y: Tensor | None = None, num_samples: int = 1,
                proposal: str = "prior", temperature: float = 1.0,
                deterministic: bool = False) -> Rollout:
        """K = num_samples attention trajectories per (features, caption) pair.

        x: per layer (B, C_s, h_s, w_s); y: (B, L) token ids ``<bos> w_1 .. w_T <eos>``
        padded with ``<pad>``. The decoder is teacher-forced on y; sums over words skip
        padding. ``class_log_probs`` holds the word log-probabilities (B, K, L-1, V).
        """
        if y is None:
            raise ValueError("the caption model's rollout needs the captions y "
                             "(use decode() to caption images)")
        feats = list(x)
        B, K = y.shape[0], num_samples
        R = B * K
        T = y.shape[1] - 1
        yk = y.repeat_interleave(K, 0)  # (R, L)
        mask = (yk[:, 1:] != PAD_ID).float()  # (R, T)
        state = self.initial_state(feats, K)
        trace = ActionTrace((R,), feats[0].device, proposal, temperature, deterministic)
        log_lik = feats[0].new_zeros(R, dtype=torch.float32)
        word_lp = []
        for t in range(T):
            prev, target = yk[:, t], yk[:, t + 1]
            top = self.policy_state(state, prev)
            prior, prior_out = self.prior_step(top)
            q = None
            if proposal == "q":
                q = self.proposal_step(top, prior_out,
                                       target if self.q_word == "current" else prev)
            loc, scale = trace.step(prior, q, mask[:, t])
            state, lp = self.read_and_emit(feats, state, prev, loc, scale, K)
            log_lik = log_lik + mask[:, t] * lp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
            word_lp.append(lp)
        return trace.rollout(B, K, torch.stack(word_lp, 1).view(B, K, T, -1),
                             log_lik.view(B, K), self.predict_baseline(feats, y))

    # --- captioning: no teacher forcing ---
    @torch.no_grad()
    def decode(self, x: list[Tensor], max_len: int, beam_size: int = 1,
               sample_attention: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """Caption each image: words (B, T) ids ending in ``<eos>``/``<pad>``, with each
        word's attention locs (B, T, 2) and layers (B, T).

        The attention takes the policy's most likely action (location mean, likeliest
        layer) unless ``sample_attention``; words are chosen greedily (``beam_size`` 1)
        or by beam search over the sum of word log-probabilities."""
        feats = list(x)
        B, W = feats[0].shape[0], beam_size
        state = self.initial_state(feats, W)  # (B*W, H)
        device = feats[0].device
        prev = torch.full((B * W,), BOS_ID, dtype=torch.long, device=device)
        score = torch.zeros(B, W, device=device)
        score[:, 1:] = -torch.inf  # all beams start identical: keep one
        done = torch.zeros(B * W, dtype=torch.bool, device=device)
        words, locs, scales = [], [], []
        for _ in range(max_len - 1):
            prior, _ = self.prior_step(self.policy_state(state, prev))
            loc, scale = prior.sample() if sample_attention else prior.mode()
            state, lp = self.read_and_emit(feats, state, prev, loc, scale, W)  # (B*W, V)
            V = lp.shape[-1]
            # a finished caption continues with <pad> at no cost
            lp = torch.where(done.unsqueeze(-1), torch.full_like(lp, -torch.inf), lp)
            lp[:, PAD_ID] = torch.where(done, 0.0, -torch.inf)
            lp[:, BOS_ID] = -torch.inf  # a caption never restarts
            if W == 1:
                word = lp.argmax(-1)
                back = torch.arange(B, device=device)
                score = score + lp.gather(-1, word.unsqueeze(-1)).view(B, 1)
            else:
                total = (score.view(B * W, 1) + lp).view(B, W * V)
                score, idx = total.topk(W, -1)  # (B, W)
                beam, word = idx // V, (idx % V).view(-1)
                back = (beam + torch.arange(B, device=device).unsqueeze(-1) * W).view(-1)
            # reorder the history and state to the surviving beams
            state = State(state.h[back], state.c[back])
            words = [w[back] for w in words] + [word]
            locs = [v[back] for v in locs] + [loc[back]]
            scales = [v[back] for v in scales] + [scale[back]]
            done = done[back] | (word == EOS_ID) | (word == PAD_ID)
            prev = word
            if bool(done.all()):
                break
        best = score.argmax(-1) + torch.arange(B, device=device) * W  # (B,)
        return (torch.stack(words, 1)[best], torch.stack(locs, 1)[best],
                torch.stack(scales, 1)[best])
