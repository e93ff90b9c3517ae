"""Figures of caption runs: each word of a caption with the region it attended, and
training curves of several runs (the paper's Figure 6). They read files, never train."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_write_bytes
from ..checkpoint import writable_output
from ..errors import ConfigError, WsramError
from ..plots import band, curve, method_style, pyplot
from ..registry import load_run
from ..run_dir import RunDir
from .evaluate import SPLITS

SHOW = "show"  # the folder of ``wsram caption show``'s PNGs in a run folder


def show_captions(run_dir: str | Path, out_dir: str | Path | None = None, num: int = 8,
                  split: str = "test", which: str = "last", beam_size: int = 1) -> list[Path]:
    """One PNG per image: the generated caption, and for each word the feature cells it
    attended (a box n cells wide in the chosen layer, drawn on the image)."""
    if split not in SPLITS:
        raise WsramError(f"--split: expected val or test, got {split!r}")
    cfg, task, model, state = load_run(run_dir, which, task="captioning")
    out_dir = Path(out_dir) if out_dir is not None else RunDir(run_dir) / SHOW
    if out_dir.exists() and not out_dir.is_dir():
        raise WsramError(f"{out_dir}: exists and is not a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WsramError(f"{out_dir}: cannot create ({e.strerror})") from None
    n = min(num, len(task.split(split)))
    hyps, attn = task.captions(model, split, n, beam_size, with_attention=True)
    images = task.split(split).images(0, n)
    references = task.split(split).references[:n]
    strides = task.encoder.strides
    grids = [tuple(int(d) for d in f.shape[-2:]) for f in task.split_features(split)]
    paths = []
    for i in range(n):
        img = images[i]
        H, W = img.shape[-2:]
        locs, layers = attn[i]
        words = (hyps[i] + ["<eos>"])[:len(layers)]  # no <eos> when max_len cut it
        cols = max(4, min(8, len(words)))
        rows = 1 + (len(words) + cols - 1) // cols
        plt = pyplot()
        fig = plt.figure(figsize=(1.6 * cols, 1.8 * rows + 1.2), layout="constrained")
        grid = fig.add_gridspec(rows, cols)
        ax = fig.add_subplot(grid[0, :])
        _imshow(ax, img)
        ax.set_title("generated: " + (" ".join(hyps[i]) or "(empty caption)"), fontsize=9,
                     wrap=True)
        ax.text(0.5, -0.04, reference_text(references[i]), transform=ax.transAxes,
                ha="center", va="top", fontsize=7, wrap=True)
        clipped_any = False
        for t, word in enumerate(words):
            ax = fig.add_subplot(grid[1 + t // cols, t % cols])
            s = int(layers[t])
            side = cfg.neighbourhood * strides[s] * W / img.shape[-1]
            clipped_any |= _word_panel(ax, img, word, locs[t], side,
                                       layer_name(s, grids[s]))
        fig.suptitle(f"{cfg.method}, update {state['step']}, {split} image {i}: each word "
                     "with the region it attended (box: the layer's n x n cells)"
                     + ("; * box clipped at the image border" if clipped_any else ""),
                     fontsize=8)
        path = out_dir / f"{split}-{i:04d}.png"
        atomic_write_bytes(path, lambda f, fig=fig: fig.savefig(f, dpi=100, format="png"))
        plt.close(fig)
        paths.append(path)
    return paths


def _word_panel(ax: Any, img: Any, word: str, loc: Any, side: float, layer: str) -> bool:
    """One word's panel: the image, the box it attended, the word and layer (with a *
    when the box reaches past the border); whether it did."""
    H, W = img.shape[-2:]
    _imshow(ax, img)
    cx, cy = (loc[0].item() + 1) / 2 * W, (loc[1].item() + 1) / 2 * H
    ax.add_patch(pyplot().Rectangle((cx - side / 2 - 0.5, cy - side / 2 - 0.5), side, side,
                                    fill=False, edgecolor="#e41a1c", linewidth=1.5))
    clipped = is_clipped(cx, cy, side, W, H)
    ax.set_title(f"{word}\n{layer}{' *' if clipped else ''}", fontsize=8)
    ax.set_xlim(-0.5, W - 0.5)
    ax.set_ylim(H - 0.5, -0.5)
    return clipped


def reference_text(refs: list[list[str]]) -> str:
    """The reference captions of an image, one per line."""
    return "references:\n" + "\n".join(" ".join(r) for r in refs) if refs else "no references"


def layer_name(index: int, grid: tuple[int, int]) -> str:
    """A feature layer with its resolution: ``layer 2 (14x14)``."""
    return f"layer {index + 1} ({grid[0]}x{grid[1]})"


def is_clipped(cx: float, cy: float, side: float, width: int, height: int) -> bool:
    """Whether a box of ``side`` centred at (cx, cy) reaches past the image's border."""
    half = side / 2
    return cx - half < 0 or cy - half < 0 or cx + half > width or cy + half > height


def _imshow(ax: Any, img: torch.Tensor) -> None:
    ax.axis("off")
    if img.shape[0] == 1:
        ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(img.permute(1, 2, 0).clamp(0, 1).numpy())


def plot_curves(run_dirs: list[str | Path], out: str | Path, key: str = "train/nll",
                max_step: int | None = None, title: str | None = None,
                log_y: bool = False) -> Path:
    """``key`` from metrics.jsonl against updates, one line per method (e.g. the training
    negative log-likelihood of WS-RAM and VAR, paper Figure 6): runs of one method (seeds)
    are drawn as their mean with a 95% band."""
    out = writable_output(out, (".png",))
    groups: dict[str, list[Path]] = {}
    for run in map(Path, run_dirs):
        metrics = RunDir(run).metrics
        if not metrics.is_file():
            raise WsramError(f"{run}: not a run folder (no {metrics.name})")
        if not curve(run, key, max_step=max_step):
            raise WsramError(f"{run}: no {key!r} in {metrics.name}")
        groups.setdefault(_method(run), []).append(run)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    for method, runs in groups.items():
        label = method if len(runs) > 1 or method == runs[0].name else f"{method} ({runs[0].name})"
        if not band(ax, runs, key, label, max_step=max_step, **method_style(method)):
            raise WsramError(f"{method}: its runs logged {key!r} at no common update")
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel("updates")
    ax.set_ylabel(key)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    atomic_write_bytes(out, lambda f: fig.savefig(f, dpi=120, format="png"))
    plt.close(fig)
    return out


def _method(run: Path) -> str:
    try:
        return str(RunDir(run).read_config().get("method", run.name))
    except ConfigError:
        return run.name
