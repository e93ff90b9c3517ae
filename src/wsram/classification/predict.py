"""Class predictions of a trained run on new images: ``wsram predict RUN IMAGE...``.

An image file is read as a whole canvas: converted to the run's channels (grey or RGB)
and, unless it already is ``canvas_size`` square, brought to it by the run's ``fit`` rule
(pad: shrink to fit keeping the aspect, centre on black; resize: stretch). A tensor is
taken as canvases already: (B, C, H, W) or (C, H, W), float in [0, 1] or uint8, H = W =
canvas_size. The model runs on the CPU whatever device trained it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..atomic import atomic_write_bytes
from ..errors import WsramError
from ..plots import pyplot
from ..registry import LoadedRun, load_run
from .data.own import fit_image, read_image
from .evaluate import EVAL_SEED
from .plots import class_label, draw_glimpse_boxes, image_for_plot


@dataclass
class Prediction:
    """One image's prediction: the class of the mean over M trajectories, the top-k of that
    mean and of the deterministic policy as (class name, probability), and the PNG drawn."""

    source: str  # the file, or "tensor[i]"
    predicted: str
    top_mc: list[tuple[str, float]]
    top_deterministic: list[tuple[str, float]]
    samples: int
    png: Path | None = None
    locations: list[list[float]] = field(default_factory=list)  # deterministic, in [-1, 1]
    attends: bool = True  # False for the CNN: no glimpses, one pass (top_mc is its output)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "predicted": self.predicted,
                "top_mc": [[n, p] for n, p in self.top_mc],
                "top_deterministic": [[n, p] for n, p in self.top_deterministic],
                "samples": self.samples, "png": str(self.png) if self.png else None,
                "locations": self.locations, "attends": self.attends}


def read_canvases(paths: list[str | Path], cfg: Any) -> Tensor:
    """Image files as the run's canvases: (B, C, H, W) float32 in [0, 1]."""
    out = []
    for p in paths:
        img = read_image(Path(p), cfg.channels)  # (C, h, w) uint8
        if img.shape[1:] != (cfg.canvas_size, cfg.canvas_size):
            img = fit_image(img, cfg.canvas_size, cfg.fit)
        out.append(img.float() / 255.0)
    return torch.stack(out)


def _as_canvases(images: Tensor, cfg: Any) -> Tensor:
    x = images.unsqueeze(0) if images.dim() == 3 else images
    H = cfg.canvas_size
    if x.dim() != 4 or tuple(x.shape[1:]) != (cfg.channels, H, H):
        raise WsramError(f"predict: expected canvases of shape (B, {cfg.channels}, {H}, {H}), "
                         f"got {tuple(images.shape)}")
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    if not torch.isfinite(x).all():
        raise WsramError("predict: the images hold NaN or infinite pixels")
    return x.cpu()


def _top(probs: Tensor, k: int, classes: list[str] | None) -> list[tuple[str, float]]:
    p, i = probs.topk(min(k, probs.shape[-1]))
    return [(class_label(int(c), classes), float(v)) for v, c in zip(p, i, strict=True)]


def predict(run: Any, images: Tensor | list[str | Path], top_k: int = 3,
            samples: int | None = None, out_dir: str | Path | None = None,
            which: str = "last") -> list[Prediction]:
    """Predict the class of each image with a run (a folder, or ``wsram.registry.load_run``'s
    result); with ``out_dir``, also write one PNG per image with the deterministic policy's
    glimpses drawn. ``samples``: M, trajectories averaged (default: the run's)."""
    if not isinstance(run, LoadedRun):
        run = load_run(run, which, task="classification")
    cfg, model, state = run.cfg, run.model.cpu().eval(), run.state
    classes = state.get("classes")
    if isinstance(images, Tensor):
        x = _as_canvases(images, cfg)
        names = [f"tensor[{i}]" for i in range(len(x))]
    else:
        if not images:
            raise WsramError("predict: no images given")
        x, names = read_canvases(list(images), cfg), [str(p) for p in images]
    m = samples if samples is not None else cfg.eval_samples
    if m < 1 or top_k < 1:
        raise WsramError(f"predict: samples and top_k must be at least 1, got {m}, {top_k}")
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(EVAL_SEED)
        mc = model.rollout(x, num_samples=m).class_log_probs.exp().mean(1)  # (B, C)
        det = model.rollout(x, deterministic=True)
    det_probs = det.class_log_probs[:, 0].exp()  # (B, C)
    out = []
    for i, name in enumerate(names):
        top_mc = _top(mc[i], top_k, classes)
        out.append(Prediction(name, top_mc[0][0], top_mc, _top(det_probs[i], top_k, classes),
                              m if cfg.attends else 1, locations=det.locs[i, 0].tolist(),
                              attends=cfg.attends))
    if out_dir is not None:
        _draw(model, cfg, x, det, out, Path(out_dir), classes)
    return out


def _draw(model: Any, cfg: Any, x: Tensor, det: Any, preds: list[Prediction], out_dir: Path,
          classes: list[str] | None) -> None:
    """One PNG per image: the canvas, the deterministic glimpses, the top classes."""
    out_dir.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    for i, p in enumerate(preds):
        stem = Path(p.source).stem if not p.source.startswith("tensor[") else f"tensor{i}"
        name, n = f"{stem}.png", 2
        while name in used:
            name, n = f"{stem}-{n}.png", n + 1
        used.add(name)
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(3.2, 3.6), layout="constrained")
        img, style = image_for_plot(x[i])
        ax.imshow(img.numpy(), **style)
        if model.glimpses:
            boxes = model.sensor.boxes(det.locs[i, 0], det.scales[i, 0])  # (N, 4)
            draw_glimpse_boxes(ax, boxes, cfg.scales, det.scales[i, 0], cfg.canvas_size)
        ax.axis("off")
        tops = ", ".join(f"{c} {v:.0%}" for c, v in p.top_mc)
        where = "/".join(Path(p.source).parts[-2:])  # two 001.png of two folders differ
        ax.set_title(f"{where}\npredicted {p.predicted} ({tops})", fontsize=7)
        path = out_dir / name
        atomic_write_bytes(path, lambda f, fig=fig: fig.savefig(f, dpi=110, format="png"))
        plt.close(fig)
        p.png = path


def format_predictions(preds: list[Prediction]) -> str:
    """``wsram predict``'s report: per image the class, then both top-k lists."""
    lines = []
    for p in preds:
        lines.append(f"{p.source}: {p.predicted}")
        if p.attends:
            lines.append(f"  mean of {p.samples} trajectories: "
                         + "  ".join(f"{c} {v:.1%}" for c, v in p.top_mc))
            lines.append("  deterministic policy: "
                         + "  ".join(f"{c} {v:.1%}" for c, v in p.top_deterministic))
        else:  # the CNN: one pass, one set of probabilities
            lines.append("  CNN: " + "  ".join(f"{c} {v:.1%}" for c, v in p.top_mc))
        if p.png:
            lines.append(f"  {'glimpses' if p.attends else 'figure'}: {p.png}")
    return "\n".join(lines)
