"""Figure helpers shared by the tasks' plots: each method's style, and curves of several
runs drawn as their mean with a 95% band. They read run folders' files, never train."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .methods import METHODS
from .run_dir import read_metrics
from .stats import mean_interval, smoothed


def pyplot() -> Any:
    """matplotlib's pyplot, drawing into files (no window)."""
    # matplotlib: imported only when drawing, to keep every command's start-up fast
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def method_style(name: str) -> dict[str, Any]:
    """The method's own colour (the same in every figure); "+explore" variants dashed."""
    base = name.removesuffix("+explore")
    return {"color": METHODS[base].colour if base in METHODS else "#444444",
            "linestyle": "--" if name.endswith("+explore") else "-", "linewidth": 1.6}


def curve(run_dir: Path, key: str, smooth: int = 1, max_step: int | None = None,
          ) -> dict[int, float]:
    """step -> value of a metrics.jsonl key (trailing mean over ``smooth`` points)."""
    pts = [(int(r["step"]), float(r[key])) for r in read_metrics(run_dir)
           if key in r and (max_step is None or r["step"] <= max_step)]
    return dict(smoothed(pts, smooth))


def band(ax: Any, run_dirs: list[Path], key: str, label: str, smooth: int = 1,
         scale: float = 1.0, max_step: int | None = None, log: bool = False,
         **style: Any) -> int:
    """Plot the mean over runs of a metrics key against updates (x ``scale``), with its 95%
    Student-t interval across runs as a band, at the steps every run logged; with ``log``,
    the geometric mean and the interval of the log values (for positive, skewed figures
    on a log axis, such as a gradient variance). Returns the number of points drawn."""
    curves = [curve(d, key, smooth, max_step) for d in run_dirs]
    steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    if log:
        steps = [s for s in steps if all(c[s] > 0 for c in curves)]
    if not steps:
        return 0
    ivs = [mean_interval([math.log(c[s]) if log else c[s] for c in curves]) for s in steps]
    back = math.exp if log else (lambda v: v)
    x = [s * scale for s in steps]
    ax.plot(x, [back(iv.mean) for iv in ivs], label=f"{label} (n={len(curves)})", **style)
    if len(curves) > 1:
        ax.fill_between(x, [back(iv.lo) for iv in ivs], [back(iv.hi) for iv in ivs],
                        alpha=0.18, color=style.get("color"), linewidth=0)
    return len(steps)
