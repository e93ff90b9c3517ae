"""The fixed image encoder of the captioning model: multi-scale feature maps.

- ``digits``: a small CNN for the digit scenes, pretrained here on the digit task (which
  digits, large or small, are in a scene) and then frozen. Its three feature layers have
  strides 4, 8 and 16; each has a 3 x 3 convolutional head scoring 20 classes (digit x
  size) at every cell, trained with a spatial max over cells (multiple-instance style),
  so each layer's cells learn to say which digit lies under them.
- ``resnet18/34/50``: a torchvision ResNet (the optional extra ``wsram[vision]``) with
  weights from the user's file; its ``layer2``, ``layer3`` and ``layer4`` outputs
  (strides 8, 16, 32) are the feature layers.

Features of a whole split are computed once (the encoder is fixed) and may be cached on
disk (:func:`cached_features`), keyed by the encoder's weights and the data's identity.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from .. import checkpoint
from ..errors import CheckpointError, ConfigError, DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DigitEncoder(nn.Module):
    """Four 3 x 3 conv + ReLU + 2 x 2 max-pool blocks; features after blocks 2, 3, 4."""

    channels = (32, 64, 64)
    strides = (4, 8, 16)
    num_labels = 20  # digit d, size s -> d + 10 s

    def __init__(self, in_channels: int = 1):
        super().__init__()
        widths = (32, 32, 64, 64)
        blocks, c = [], in_channels
        for w in widths:
            blocks.append(nn.Sequential(nn.Conv2d(c, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)))
            c = w
        self.blocks = nn.ModuleList(blocks)
        self.heads = nn.ModuleList(nn.Conv2d(ch, self.num_labels, 3, padding=1)
                                   for ch in self.channels)

    def forward(self, x: Tensor) -> list[Tensor]:
        """(B, 1, H, W) -> feature maps [(B, 32, H/4, W/4), (B, 64, H/8, ..), (B, 64, H/16, ..)]."""
        feats = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i >= 1:
                feats.append(x)
        return feats

    def label_scores(self, feats: list[Tensor]) -> list[Tensor]:
        """Per layer, the 20 label scores maxed over cells: list of (B, 20)."""
        return [head(f).amax((-2, -1)) for head, f in zip(self.heads, feats, strict=True)]


def scene_labels(objects: Sequence[Sequence[tuple[int, str, str]]]) -> Tensor:
    """Multi-hot (N, 20) targets: digit d of size s present -> label d + 10 s."""
    out = torch.zeros(len(objects), DigitEncoder.num_labels)
    for n, objs in enumerate(objects):
        for digit, size, _ in objs:
            out[n, digit + 10 * (size == "large")] = 1.0
    return out


def pretrain_digit_encoder(make_batch: Callable[[int], tuple[Tensor, Tensor]], steps: int,
                           batch_size: int = 64, lr: float = 2e-3, seed: int = 0,
                           progress: bool = True) -> tuple[DigitEncoder, dict[str, float]]:
    """Train a :class:`DigitEncoder` on scenes drawn by ``make_batch(i) -> (images, multi-hot
    labels)``: binary cross-entropy of every layer's label scores. Returns the frozen
    encoder and the last 50 updates' mean loss."""
    torch.manual_seed(seed)
    enc = DigitEncoder()
    opt = torch.optim.Adam(enc.parameters(), lr=lr)
    losses: list[float] = []
    x_all, y_all = make_batch(0)
    pos = 0
    bar = tqdm(range(steps), desc="pretraining encoder", unit="upd", disable=not progress,
               dynamic_ncols=True)
    for i in bar:
        if pos + batch_size > len(x_all):
            x_all, y_all = make_batch(i + 1)
            pos = 0
        x, y = x_all[pos:pos + batch_size], y_all[pos:pos + batch_size]
        pos += batch_size
        scores = enc.label_scores(enc(x))
        loss = sum(F.binary_cross_entropy_with_logits(s, y) for s in scores) / len(scores)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if i % 20 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.3f}")
    bar.close()
    enc.eval().requires_grad_(False)
    tail = losses[-50:]
    return enc, {"encoder_loss": sum(tail) / len(tail) if tail else math.nan}


@torch.no_grad()
def label_accuracy(enc: DigitEncoder, x: Tensor, y: Tensor, batch_size: int = 250) -> float:
    """Fraction of scenes whose predicted label set (labels whose score, averaged over the
    layers, is > 0) is exactly the true set: how well the encoder knows what a scene holds."""
    right = 0
    for i in range(0, len(x), batch_size):
        scores = enc.label_scores(enc(x[i:i + batch_size]))
        pred = torch.stack(scores).mean(0) > 0
        right += (pred == (y[i:i + batch_size] > 0.5)).all(-1).sum().item()
    return right / max(1, len(x))


# --------------------------------------------------------------------------------------
# torchvision backbones


class ResNetEncoder(nn.Module):
    """A torchvision ResNet's ``layer2..layer4`` outputs, inputs normalised as ImageNet's."""

    strides = (8, 16, 32)

    def __init__(self, name: str, weights_path: str | Path):
        super().__init__()
        try:
            import torchvision  # an optional extra, for the ResNet encoders only
        except Exception as err:  # ImportError, or a torchvision built for another torch
            raise ConfigError(f"encoder {name} needs torchvision: pip install 'wsram[vision]' "
                              f"({type(err).__name__}: {str(err).splitlines()[0][:100]})"
                              ) from None
        net = getattr(torchvision.models, name)(weights=None)
        state = checkpoint.load_weights(weights_path)
        checkpoint.load_into(net, state, weights_path, f"not {name} weights")
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1)
        self.layers = nn.ModuleList([net.layer2, net.layer3, net.layer4])
        self.channels = tuple(_out_channels(layer) for layer in self.layers)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.eval().requires_grad_(False)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.stem((x - self.mean) / self.std)
        feats = []
        for layer in self.layers:
            x = layer(x)
            feats.append(x)
        return feats


def _out_channels(layer: nn.Module) -> int:
    convs = [m for m in layer.modules() if isinstance(m, nn.Conv2d)]
    bns = [m for m in layer.modules() if isinstance(m, nn.BatchNorm2d)]
    return bns[-1].num_features if bns else convs[-1].out_channels


# --------------------------------------------------------------------------------------
# Features


@torch.no_grad()
def compute_features(encoder: nn.Module, images: Callable[[int, int], Tensor], count: int,
                     batch_size: int = 250, desc: str = "features",
                     progress: bool = True) -> list[Tensor]:
    """Run the fixed encoder over ``count`` images (``images(start, stop)`` gives a batch):
    per layer, (count, C, h, w) float32 on the CPU."""
    encoder.eval()
    device = next(encoder.parameters()).device
    out: list[list[Tensor]] = []
    for start in tqdm(range(0, count, batch_size), desc=desc, unit="batch",
                      disable=not progress or count <= batch_size, dynamic_ncols=True):
        feats = encoder(images(start, min(count, start + batch_size)).to(device))
        if not out:
            out = [[] for _ in feats]
        for acc, f in zip(out, feats, strict=True):
            acc.append(f.float().cpu())
    return [torch.cat(acc) for acc in out]


def weights_digest(module: nn.Module) -> str:
    """A short hash of a module's parameters and buffers: names a feature cache."""
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().float().numpy().tobytes())
    return h.hexdigest()[:16]


def cached_features(cache_dir: str | Path | None, key: dict[str, Any],
                    compute: Callable[[], list[Tensor]]) -> list[Tensor]:
    """``compute()``'s features, read from ``cache_dir`` when a file made with the same
    ``key`` (encoder digest, data identity, split) is there, else computed and saved."""
    if cache_dir is None:
        return compute()
    cache_dir = Path(cache_dir)
    name = hashlib.sha256(repr(sorted(key.items())).encode()).hexdigest()[:20]
    path = cache_dir / f"features-{key.get('split', 'x')}-{name}.pt"
    if path.is_file():
        try:
            state = checkpoint.load(path)
        except CheckpointError as e:
            raise DataError(f"unreadable feature cache: {e}; delete the file to recompute "
                            "it") from None
        if state.get("key") != {k: str(v) for k, v in key.items()} or not isinstance(
                state.get("layers"), list):
            raise DataError(f"{path}: a feature cache made for other data or another encoder; "
                            "delete it or choose another --feature-cache folder")
        return state["layers"]
    layers = compute()
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{cache_dir}: cannot create the feature cache ({e.strerror})") from None
    checkpoint.save(path, {"key": {k: str(v) for k, v in key.items()}, "layers": layers})
    return layers
