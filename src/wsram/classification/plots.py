"""Figures drawn from run folders (they read files, never train)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from ..figures import band, method_style  # noqa: E402

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
    spots = label_spots([(min(max(b[0], 0), H - 12 * H / 100), min(max(b[1] + 1, 0), H))
                         for b in boxes.tolist()], H)
    for n in range(boxes.shape[0]):
        x0, y0, x1, y1 = boxes[n].tolist()
        c = GLIMPSE_COLOURS[n % len(GLIMPSE_COLOURS)]
        ax.add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False,
                                   edgecolor=c, linewidth=1.5, clip_on=True))
        tx, ty = spots[n]
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


def label_spots(anchors: list[tuple[float, float]], size: float) -> list[tuple[float, float]]:
    """Where to write each glimpse's label on a canvas of side ``size``: at its box's
    corner, moved down a line (up, at the bottom) while it would cover an earlier label,
    so that glimpses on one spot stay readable."""
    line, width = 0.07 * size, 0.14 * size  # a 7-point label, in canvas pixels
    placed: list[tuple[float, float]] = []
    for x, y in anchors:
        y = min(y, size - line)
        step = line
        for _ in range(len(anchors) + 1):
            if all(abs(x - px) >= width or abs(y - py) >= line for px, py in placed):
                break
            if y + step > size - line:
                step = -line
            y += step
        placed.append((x, y))
    return placed


def _save(fig, path: Path) -> None:
    from ..checkpoint import atomic_write_bytes

    fig.tight_layout()
    atomic_write_bytes(path, lambda f: fig.savefig(f, dpi=120, format="png"))
    plt.close(fig)


def _group_dirs(out_dir: Path, res: dict, variant: str, lr: float) -> list[Path]:
    return [out_dir / f for f, r in res["runs"].items()
            if r["variant"] == variant and r["lr"] == lr]


def plot_comparison(out_dir: str | Path, res: dict) -> list[Path]:
    """figure2.png (training error, gradient variance, ESS against updates: means over
    seeds with 95% bands, each variant at its rate), figure_lr.png (final training error
    against the learning rate) and figure4_exploration.png (heuristics on/off)."""
    out_dir = Path(out_dir)
    table, cut = res["table"], res.get("max_step")
    main = [v for v in table if not v.endswith("+explore")]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    for v in main:
        dirs = _group_dirs(out_dir, res, v, table[v]["lr"])
        label = f"{v}, lr {table[v]['lr']:g}"
        band(axes[0], dirs, "train/error", label, smooth=5, scale=1e-3, max_step=cut,
             **method_style(v))
        band(axes[1], dirs, "diag/grad_var", label, scale=1e-3, max_step=cut, log=True,
             **method_style(v))
        band(axes[2], dirs, "diag/ess", label, scale=1e-3, max_step=cut, **method_style(v))
    axes[0].set(title="Training error (running mean of 5 log steps)", ylim=(0, 1),
                xlabel="updates (thousands)", ylabel="error (one sampled trajectory)")
    axes[1].set(title="Variance of the gradient estimate (geometric mean)",
                xlabel="updates (thousands)", ylabel="trace of covariance", yscale="log")
    axes[2].set(title="Effective sample size", xlabel="updates (thousands)",
                ylabel=f"ESS (max K = {res['setup']['samples']})")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    _save(fig, out_dir / "figure2.png")
    written = [out_dir / "figure2.png"]
    if any(len(g) > 1 for g in res["by_lr"].values()):
        written.append(_plot_rates(out_dir, res))
    explored = [v for v in table if v.endswith("+explore")]
    if explored:
        written.append(_plot_exploration(out_dir, res, explored))
    return written


def _plot_rates(out_dir: Path, res: dict) -> Path:
    """Final training error against the learning rate, mean and 95% interval per method."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for v, g in res["by_lr"].items():
        if v.endswith("+explore") or len(g) < 2:
            continue
        lrs = [float(lr) for lr in g if g[lr]["final_train_error"]]
        ivs = [g[f"{lr:g}"]["final_train_error"] for lr in lrs]
        st = method_style(v)
        ax.errorbar(lrs, [i["mean"] for i in ivs],
                    yerr=[[i["mean"] - i["lo"] for i in ivs], [i["hi"] - i["mean"] for i in ivs]],
                    marker="o", capsize=3, label=v, color=st["color"])
    ax.set(xscale="log", xlabel="Adam learning rate", ylabel="final training error",
           title="Learning rate against final training error (95% intervals)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, out_dir / "figure_lr.png")
    return out_dir / "figure_lr.png"


def _plot_exploration(out_dir: Path, res: dict, explored: list[str]) -> Path:
    """Training error with and without the heuristics, and glimpse-scale usage."""
    table = res["table"]
    study = [v.removesuffix("+explore") for v in explored if v.removesuffix("+explore")
             in table] + explored
    fig, axes = plt.subplots(1, 1 + len(study), figsize=(4.4 * (1 + len(study)), 4.2),
                             squeeze=False)
    axes = axes[0]
    for v in study:
        dirs = _group_dirs(out_dir, res, v, table[v]["lr"])
        band(axes[0], dirs, "train/error", f"{v}, lr {table[v]['lr']:g}", smooth=5, scale=1e-3,
             max_step=res.get("max_step"), **method_style(v))
    axes[0].set(title="Exploration heuristics", xlabel="updates (thousands)",
                ylabel="training error")
    axes[0].legend(fontsize=7)
    axes[0].grid(alpha=0.3)
    for ax, v in zip(axes[1:], study, strict=True):
        dirs = _group_dirs(out_dir, res, v, table[v]["lr"])
        scales = (_config(dirs[0]) or {}).get("scales", []) if dirs else []
        for i, sc in enumerate(scales):
            band(ax, dirs, f"diag/scale{i}", f"scale {sc:g}", scale=1e-3,
                 max_step=res.get("max_step"), color=f"C{i}", linewidth=1.4)
        ax.set(title=f"{v}: glimpse scales used", xlabel="updates (thousands)",
               ylabel="fraction of glimpses", ylim=(-0.02, 1.02))
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    _save(fig, out_dir / "figure4_exploration.png")
    return out_dir / "figure4_exploration.png"


def _config(run_dir: Path) -> dict | None:
    import yaml

    p = run_dir / "config.yaml"
    return yaml.safe_load(p.read_text()) if p.is_file() else None
