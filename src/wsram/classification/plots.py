"""Figures drawn from run folders (they read files, never train)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ..atomic import atomic_write_bytes
from ..checkpoint import writable_output
from ..errors import WsramError
from ..plots import pyplot
from ..registry import load_run
from ..run_dir import RunDir
from .data.splits import test_set

GLIMPSES = "glimpses.png"  # wsram show's figure in a run folder
GLIMPSE_COLOURS = ["#e41a1c", "#ff7f00", "#4daf4a", "#377eb8", "#984ea3", "#a65628",
                   "#f781bf", "#999999"]


def image_for_plot(x: Tensor) -> tuple[Tensor, dict]:
    """A (C, H, W) canvas as what ``imshow`` draws: (H, W) grey, or (H, W, 3) colour."""
    if x.shape[0] == 1:
        return x[0], {"cmap": "gray", "vmin": 0, "vmax": 1}
    if x.shape[0] != 3:  # other channel counts: their mean, in grey
        return x.mean(0), {"cmap": "gray", "vmin": 0, "vmax": 1}
    return x.permute(1, 2, 0).clamp(0, 1), {}


def draw_glimpse_boxes(ax, boxes: Tensor, scales: list[float], scale_idx: Tensor,
                       canvas_size: int) -> None:
    """Each glimpse's box, numbered in order, with its scale: boxes (N, 4), scale_idx (N,)."""
    H = canvas_size
    labels = [str(n + 1) if len(scales) == 1 else f"{n + 1}:{scales[int(scale_idx[n])]:.2g}"
              for n in range(boxes.shape[0])]  # one scale: the order alone
    chars = max(len(t) for t in labels)
    spots = label_spots([(min(max(b[0], 0), H - 0.025 * H * chars), min(max(b[1] + 1, 0), H))
                         for b in boxes.tolist()], H, chars)
    for n in range(boxes.shape[0]):
        x0, y0, x1, y1 = boxes[n].tolist()
        c = GLIMPSE_COLOURS[n % len(GLIMPSE_COLOURS)]
        ax.add_patch(pyplot().Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False,
                                   edgecolor=c, linewidth=1.5, clip_on=True))
        tx, ty = spots[n]
        ax.text(tx, ty, labels[n], color=c, fontsize=7, va="top", fontweight="bold",
                clip_on=True, bbox={"facecolor": "black", "alpha": 0.55, "pad": 0.6,
                                    "edgecolor": "none"})  # legible on any colour
    ax.set_xlim(-0.5, H - 0.5)
    ax.set_ylim(H - 0.5, -0.5)


def class_label(c: int, classes: list[str] | None) -> str:
    return classes[c] if classes and 0 <= c < len(classes) else str(c)


def show_glimpses(run_dir: str | Path, out: str | Path | None = None, num: int = 12,
                  deterministic: bool = True, which: str = "last") -> Path:
    """Write a PNG of test canvases with each glimpse's box, order and scale drawn on them."""
    if out is not None:
        writable_output(out, (".png",))
    cfg, _, model, state = load_run(run_dir, which, task="classification")
    if model.glimpses == 0:
        raise WsramError(f"{run_dir}: a {cfg.method} run takes no glimpses; nothing to show")
    x, y = test_set(cfg, num)
    classes = state.get("classes")
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        r = model.rollout(x, num_samples=1, deterministic=deterministic)
    pred = r.class_log_probs[:, 0].argmax(-1)
    boxes = model.sensor.boxes(r.locs[:, 0], r.scales[:, 0])  # (n, N, 4)

    cols = min(6, len(x))
    rows = (len(x) + cols - 1) // cols
    plt = pyplot()
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.8 * rows), squeeze=False,
                             layout="constrained")
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= len(x):
            continue
        img, style = image_for_plot(x[i])
        ax.imshow(img.numpy(), **style)
        draw_glimpse_boxes(ax, boxes[i], cfg.scales, r.scales[i, 0], cfg.canvas_size)
        ok = "ok" if pred[i] == y[i] else "wrong"
        ax.set_title(f"label {class_label(int(y[i]), classes)}, predicted "
                     f"{class_label(int(pred[i]), classes)} ({ok})", fontsize=8)
    policy = "deterministic policy" if deterministic else "one sampled trajectory"
    legend = "box label = order" + (":scale" if len(cfg.scales) > 1 else
                                    f" (one scale, {cfg.scales[0]:.2g})")
    fig.suptitle(f"{cfg.method}, update {state['step']}: glimpses ({policy}); {legend}",
                 fontsize=9)
    out = Path(out) if out is not None else RunDir(run_dir) / GLIMPSES

    def write(f):
        fig.savefig(f, dpi=110, format="png")

    atomic_write_bytes(out, write)
    plt.close(fig)
    return out


def label_spots(anchors: list[tuple[float, float]], size: float, chars: int = 6,
                ) -> list[tuple[float, float]]:
    """Where to write each glimpse's label (``chars`` characters at 7 points) on a canvas of
    side ``size``: at its box's corner or, while that would cover an earlier label, the
    nearest free line below it, then above it, then in the next column, so that glimpses
    on one spot stay readable."""
    line, width = 0.07 * size, 0.025 * size * (chars + 0.6)  # canvas pixels
    placed: list[tuple[float, float]] = []

    def free(x: float, y: float) -> bool:
        return all(abs(x - px) >= width or abs(y - py) >= line for px, py in placed)

    for x, y in anchors:
        y = min(max(y, 0.0), size - line)
        n = len(anchors) + 1
        lines = [y + k * line for k in range(n) if y + k * line <= size - line] + \
            [y - k * line for k in range(1, n) if y - k * line >= 0]
        columns = [x, x + width if x + 2 * width <= size else x - width]
        spot = next(((cx, cy) for cx in columns for cy in lines if free(cx, cy)), (x, y))
        placed.append(spot)
    return placed
