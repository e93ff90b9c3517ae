"""Checkpoints as plain dicts: atomic writes, safe loads (``weights_only=True``)."""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_write_bytes
from .errors import CheckpointError

FORMAT = "wsram-checkpoint-v1"


def writable_output(path: str | Path, suffixes: tuple[str, ...]) -> Path:
    """Check a user-given output path: its folder exists, and it does not name a file of
    another kind (a checkpoint, a config), which writing would destroy."""
    path = Path(path)
    if not path.parent.is_dir():
        raise CheckpointError(f"{path}: no such folder {path.parent}")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder; give a file name ending in {suffixes[0]}")
    if path.suffix.lower() not in suffixes:
        raise CheckpointError(f"{path}: expected a {' or '.join(suffixes)} file name")
    return path


def save(path: str | Path, state: dict[str, Any]) -> None:
    state = {"format": FORMAT, **state}
    atomic_write_bytes(Path(path), lambda f: torch.save(state, f))


def _torch_load(path: Path, map_location: str | torch.device = "cpu") -> Any:
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes), not a checkpoint")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: {_refusal(str(e))}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        detail = str(e).splitlines()[0][:80] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: truncated or not a checkpoint ({detail})") from None


def _refusal(message: str) -> str:
    """Why a weights-only load refused a file, in our words: PyTorch's own message advises
    loading it unsafely (``weights_only=False``), which must never be done with it."""
    found = re.search(r"GLOBAL ([\w.]+)", message)
    if found:
        return ("refused: it holds objects other than tensors and plain data (it names "
                f"{found.group(1)}); it is never loaded in a way that could run code")
    return "not a checkpoint (not a file PyTorch wrote: unreadable content)"


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint without executing code from it; errors say what is wrong."""
    path = Path(path)
    state = _torch_load(path, map_location)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a wsram checkpoint")
    return state


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A plain state dict from someone else's file (e.g. torchvision's ``.pth``), loaded
    without executing code; ``{"state_dict": ...}`` / ``{"model": ...}`` wrappers unwrapped."""
    path = Path(path)
    state = _torch_load(path)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: not a state dict of tensors")
    return state


def load_into(module: torch.nn.Module, weights: Any, path: str | Path,
              what: str = "weights do not fit the model") -> None:
    """``module.load_state_dict(weights)``; a mismatch is one CheckpointError line."""
    try:
        module.load_state_dict(weights)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{path}: {what}: {str(e).splitlines()[0]}") from None


def restore_generator(gen: torch.Generator, rng: Any, what: str) -> None:
    """Set a CPU generator from a saved state (loaded on any device); CheckpointError if
    it is not one."""
    if not isinstance(rng, torch.Tensor) or rng.dtype != torch.uint8:
        raise CheckpointError(f"{what}: expected a uint8 tensor")
    try:
        gen.set_state(rng.cpu())
    except RuntimeError as err:
        raise CheckpointError(f"{what} is not a valid CPU generator state: {err}") from None


def check_model_config(path: str | Path, saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Refuse a checkpoint whose model configuration differs, naming the differences."""
    keys = {**saved, **current}  # both ways: a key only one side has is a difference too
    diffs = [f"{k}={saved.get(k)!r} (expected {current.get(k)!r})" for k in keys
             if saved.get(k) != current.get(k)]
    if diffs:
        raise CheckpointError(f"{path}: made with a different model: {', '.join(diffs)}")
