"""Figures drawn from run folders (they read files, never train)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

GLIMPSE_COLOURS = ["#e41a1c", "#ff7f00", "#4daf4a", "#377eb8", "#984ea3", "#a65628",
                   "#f781bf", "#999999"]


def show_glimpses(run_dir: str | Path, out: str | Path | None = None, num: int = 12,
                  deterministic: bool = True, which: str = "last") -> Path:
    """Write a PNG of test canvases with each glimpse's box, order and scale drawn on them."""
    from .checkpoint import atomic_write_bytes
    from .runs import load_run, test_set

    cfg, model, state = load_run(run_dir, which)
    x, y = test_set(cfg, num)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        r = model.rollout(x, num_samples=1, deterministic=deterministic)
    pred = r.class_log_probs[:, 0].argmax(-1)
    boxes = model.sensor.boxes(r.locs[:, 0], r.scales[:, 0])  # (n, N, 4)

    cols = min(6, len(x))
    rows = (len(x) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.6 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= len(x):
            continue
        ax.imshow(x[i, 0].numpy(), cmap="gray", vmin=0, vmax=1)
        for n in range(boxes.shape[1]):
            x0, y0, x1, y1 = boxes[i, n].tolist()
            c = GLIMPSE_COLOURS[n % len(GLIMPSE_COLOURS)]
            ax.add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False,
                                       edgecolor=c, linewidth=1.5))
            scale = cfg.scales[int(r.scales[i, 0, n])]
            ax.text(x0, y0 - 1, f"{n + 1}:{scale:g}", color=c, fontsize=7, va="bottom")
        ok = "ok" if pred[i] == y[i] else "wrong"
        ax.set_title(f"label {int(y[i])}, predicted {int(pred[i])} ({ok})", fontsize=8)
        ax.set_xlim(-0.5, cfg.canvas_size - 0.5)
        ax.set_ylim(cfg.canvas_size - 0.5, -0.5)
    policy = "deterministic policy" if deterministic else "one sampled trajectory"
    fig.suptitle(f"{cfg.method}, update {state['step']}: glimpses ({policy}); "
                 "box label = order:scale", fontsize=9)
    fig.tight_layout()
    out = Path(out) if out is not None else Path(run_dir) / "glimpses.png"

    def write(f):
        fig.savefig(f, dpi=110, format="png")

    atomic_write_bytes(out, write)
    plt.close(fig)
    return out
