"""Run folders: building a run's pieces from its config, locking, and reading it back."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any

import torch
import yaml

from . import checkpoint
from .config import Config, make_config
from .errors import WsramError
from .models import AttentionModel, ConvClassifier


def build_model(cfg: Config) -> AttentionModel | ConvClassifier:
    if cfg.method == "cnn":
        return ConvClassifier(num_classes=cfg.num_classes)
    return AttentionModel(
        canvas_size=cfg.canvas_size, glimpses=cfg.glimpses, patch=cfg.patch,
        scales=cfg.scales, hidden=cfg.hidden, context_size=cfg.context_size,
        loc_std=cfg.loc_std, num_classes=cfg.num_classes,
    )


def test_set(cfg: Config, size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed test canvases of this config: (N, 1, H, W), (N,)."""
    from .data import CanvasSpec, load_digits, make_test_set

    digits = load_digits("test", cfg.data_dir)
    spec = CanvasSpec(cfg.canvas_size, cfg.digit_min, cfg.digit_max)
    n = size if size is not None else cfg.test_size
    if n is not None:
        n = min(n, len(digits))
    return make_test_set(digits, spec, n)


def save_config(cfg: Config, run_dir: Path) -> None:
    checkpoint.atomic_write_bytes(
        run_dir / "config.yaml",
        lambda f: f.write(yaml.safe_dump(cfg.to_dict(), sort_keys=False).encode()),
    )


def load_run(run_dir: str | Path, which: str = "last") -> tuple[Config, AttentionModel, dict]:
    """Config and model of a finished or running run folder (``which``: last or best)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise WsramError(f"{run_dir}: no such run folder")
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise WsramError(f"{run_dir}: not a run folder (no config.yaml)")
    from .config import load_yaml

    raw = load_yaml(cfg_path)
    if "dataset" in raw:
        raise WsramError(f"{run_dir}: a caption run; use wsram caption evaluate/show")
    cfg = make_config(raw)
    state = checkpoint.load(run_dir / f"{which}.pt")
    checkpoint.check_model_config(run_dir / f"{which}.pt", state["config"], cfg.model_dict())
    model = build_model(cfg)
    checkpoint.load_into(model, state["model"], run_dir / f"{which}.pt")
    model.eval()
    return cfg, model, state


class RunLock:
    """An exclusive lock on a run folder, so two processes never train into one."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / ".lock"
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            self.fd = None
            raise WsramError(f"{self.path.parent}: in use by another wsram process") from None
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """All lines of ``metrics.jsonl``; a torn last line (a crash mid-write) is skipped."""
    path = Path(run_dir) / "metrics.jsonl"
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows
