"""Figures drawn from run folders (they read files, never train)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

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
    for n in range(boxes.shape[0]):
        x0, y0, x1, y1 = boxes[n].tolist()
        c = GLIMPSE_COLOURS[n % len(GLIMPSE_COLOURS)]
        ax.add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False,
                                   edgecolor=c, linewidth=1.5, clip_on=True))
        tx, ty = min(max(x0, 0), H - 12), min(max(y0 + 1, 0), H - 6)
        ax.text(tx, ty, f"{n + 1}:{scales[int(scale_idx[n])]:.2g}", color=c, fontsize=7,
                va="top", fontweight="bold", clip_on=True)
    ax.set_xlim(-0.5, H - 0.5)
    ax.set_ylim(H - 0.5, -0.5)


def class_label(c: int, classes: list[str] | None) -> str:
    return classes[c] if classes and 0 <= c < len(classes) else str(c)


def show_glimpses(run_dir: str | Path, out: str | Path | None = None, num: int = 12,
                  deterministic: bool = True, which: str = "last") -> Path:
    """Write a PNG of test canvases with each glimpse's box, order and scale drawn on them."""
    from ..checkpoint import atomic_write_bytes, writable_output
    from ..errors import WsramError
    from ..tasks import load_run
    from .task import test_set

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
    fig.suptitle(f"{cfg.method}, update {state['step']}: glimpses ({policy}); "
                 "box label = order:scale", fontsize=9)
    out = Path(out) if out is not None else Path(run_dir) / "glimpses.png"

    def write(f):
        fig.savefig(f, dpi=110, format="png")

    atomic_write_bytes(out, write)
    plt.close(fig)
    return out


def _style(name: str) -> dict:
    """The method's own colour; "+explore" variants dashed."""
    from ..methods import METHODS

    base = name.replace("+explore", "")
    return {"color": METHODS[base].colour if base in METHODS else "#444444",
            "linestyle": "--" if name.endswith("+explore") else "-", "linewidth": 1.6,
            "label": name}


def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], r[key]) for r in rows if key in r]
    return [p[0] for p in pts], [p[1] for p in pts]


def _smooth(v: list[float], w: int = 5) -> list[float]:
    return [sum(v[max(0, i - w + 1):i + 1]) / len(v[max(0, i - w + 1):i + 1])
            for i in range(len(v))]


def _save(fig, path: Path) -> None:
    from ..checkpoint import atomic_write_bytes

    fig.tight_layout()
    atomic_write_bytes(path, lambda f: fig.savefig(f, dpi=120, format="png"))
    plt.close(fig)


def plot_comparison(out_dir: str | Path, names: list[str]) -> list[Path]:
    """figure2.png (training error, gradient variance, ESS against updates) and
    figure4_exploration.png (heuristics on/off, and glimpse-scale usage)."""
    from ..run_dir import read_metrics

    out_dir = Path(out_dir)
    rows = {n: read_metrics(out_dir / n) for n in names}
    main = [n for n in names if not n.endswith("+explore")]
    written = []

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    for n in main:
        s, e = _series(rows[n], "train/error")
        axes[0].plot([x / 1000 for x in s], _smooth(e), **_style(n))
        s, v = _series(rows[n], "diag/grad_var")
        axes[1].plot([x / 1000 for x in s], v, marker="o", markersize=3, **_style(n))
        s, v = _series(rows[n], "diag/ess")
        axes[2].plot([x / 1000 for x in s], v, marker="o", markersize=3, **_style(n))
    k = next((r.get("samples") for r in [_config(out_dir / n) for n in names] if r), None)
    axes[0].set(title="Training error", xlabel="updates (thousands)",
                ylabel="error (one sampled trajectory)")
    axes[1].set(title="Variance of the gradient estimate", xlabel="updates (thousands)",
                ylabel="trace of covariance", yscale="log")
    axes[2].set(title="Effective sample size", xlabel="updates (thousands)",
                ylabel=f"ESS (max K = {k})" if k else "ESS")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    _save(fig, out_dir / "figure2.png")
    written.append(out_dir / "figure2.png")

    pairs = [n for n in names if n.endswith("+explore")]
    if pairs:
        study = [p.replace("+explore", "") for p in pairs] + pairs
        study = [n for n in study if n in rows]
        fig, axes = plt.subplots(1, 1 + len(study), figsize=(4.4 * (1 + len(study)), 4.2),
                                 squeeze=False)
        axes = axes[0]
        for n in study:
            s, e = _series(rows[n], "train/error")
            axes[0].plot([x / 1000 for x in s], _smooth(e), **_style(n))
        axes[0].set(title="Exploration heuristics", xlabel="updates (thousands)",
                    ylabel="training error")
        axes[0].legend(fontsize=8)
        axes[0].grid(alpha=0.3)
        for ax, n in zip(axes[1:], study, strict=True):
            scales = (_config(out_dir / n) or {}).get("scales", [])
            for i, sc in enumerate(scales):
                s, v = _series(rows[n], f"diag/scale{i}")
                ax.plot([x / 1000 for x in s], v, marker="o", markersize=3,
                        label=f"scale {sc:g}")
            ax.set(title=f"{n}: glimpse scales used", xlabel="updates (thousands)",
                   ylabel="fraction of glimpses", ylim=(-0.02, 1.02))
            ax.legend(fontsize=8)
            ax.grid(alpha=0.3)
        _save(fig, out_dir / "figure4_exploration.png")
        written.append(out_dir / "figure4_exploration.png")
    return written


def _config(run_dir: Path) -> dict | None:
    import yaml

    p = run_dir / "config.yaml"
    return yaml.safe_load(p.read_text()) if p.is_file() else None
