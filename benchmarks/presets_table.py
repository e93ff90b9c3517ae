"""Print the markdown rows of docs/benchmarks.md from run folders of the presets.

Reads each folder's ``config.yaml``, ``metrics.jsonl`` and ``eval.json`` (written by
``wsram train`` and ``wsram evaluate``); trains nothing. Usage::

    python benchmarks/presets_table.py docs/benchmarks/mnist28 docs/benchmarks/cluttered60 ...
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml


def row(run: Path) -> str:
    """One table row: preset, canvas, glimpses, updates, minutes, the three test errors."""
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    ev = json.loads((run / "eval.json").read_text())
    lines = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines() if s]
    minutes = max((r.get("time", 0.0) for r in lines), default=0.0) / 60
    clutter = f", {cfg.get('distractors', 0)} distractors" if cfg.get("distractors") else ""
    return (f"| `{run.name}` | {cfg['canvas_size']}x{cfg['canvas_size']}{clutter} | "
            f"{cfg['glimpses']} | {ev['step']:,} | {minutes:.1f} | "
            f"{ev['test_error_sampled']:.1%} / **{ev['test_error_mc']:.1%}** / "
            f"{ev['test_error_deterministic']:.1%} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    args = p.parse_args()
    print("| preset | canvas | glimpses | updates | minutes | test error: 1 trajectory / "
          "mean of 10 / deterministic |")
    print("|---|---|---|---|---|---|")
    for run in args.runs:
        print(row(run))


if __name__ == "__main__":
    main()
