"""``wsram migrate RUN``: a run folder of an older format, converted in place.

Older folders have a ``config.yaml`` that does not name its task (and lacks keys added
since, whose values the task knows: its ``migrate``), and checkpoints whose data-stream
state is under ``canvas_rng``. The config is rewritten in full (every key, resolved) and
every checkpoint atomically; a folder in use by a training is refused (its lock).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import checkpoint, registry
from .config import make_config
from .errors import WsramError
from .run_dir import EARLIER_BEST, RunDir, RunLock


def _checkpoint_state(state: dict[str, Any]) -> bool:
    """Bring one checkpoint's dict to today's keys in place; True if anything changed."""
    changed = False
    if "canvas_rng" in state and "data_rng" not in state:
        state["data_rng"] = state.pop("canvas_rng")
        changed = True
    for key in ("optimizer", "baseline_optimizer"):
        for group in state.get(key, {}).get("param_groups", []):
            if group.get("foreach") is None:  # saved before foreach was set
                group["foreach"] = True
                changed = True
    return changed


def _new_config(run: RunDir) -> dict[str, Any] | None:
    """The folder's config in today's form, or None if it is in it already."""
    raw = run.read_config()
    if "task" in raw:
        if raw["task"] not in registry.tasks():
            raise WsramError(f"{run}: {run.config.name} names an unknown task "
                             f"{raw['task']!r}; known: {', '.join(registry.tasks())}")
        return None
    found = [(spec, new) for spec in registry.tasks().values() if spec.migrate
             and (new := spec.migrate(raw)) is not None]
    if len(found) != 1:
        raise WsramError(f"{run}: its {run.config.name} is not a wsram run's of any known "
                         "format (no task recognises it)")
    spec, new = found[0]
    try:
        cfg = make_config(new, spec.config_class)
    except WsramError as e:
        raise WsramError(f"{run}: its {run.config.name} does not convert: {e}") from None
    return {"task": spec.name, **cfg.to_dict()}


def migrate_run(run_dir: str | Path) -> str:
    """Convert ``run_dir`` in place; return what was done, in one line."""
    run = RunDir(run_dir)
    if not run.path.is_dir():
        raise WsramError(f"{run}: no such run folder")
    if not run.has_config():
        raise WsramError(f"{run}: not a run folder (no {run.config.name})")
    config = _new_config(run)
    paths = [run.last, run.best, run / EARLIER_BEST]
    states = {p: checkpoint.load(p) for p in paths if p.is_file()}
    stale = {p: st for p, st in states.items() if _checkpoint_state(st)}
    if config is None and not stale:  # nothing written, not even a lock file
        return f"{run}: already in the current format; nothing to do"
    with RunLock(run.path):  # not while a training holds the folder
        for path, state in stale.items():
            checkpoint.save(path, state)  # atomic: a crash leaves the old file
        if config is not None:
            run.write_config(config)
    done = ([f"{run.config.name} (task: {config['task']})"] if config else []) + [
        p.name for p in stale]
    return f"{run}: migrated {', '.join(done)}"
