"""Run folders of an older format, for ``wsram migrate``."""

from __future__ import annotations

from typing import Any

from .config import ClassificationConfig


def migrate_config(raw: dict[str, Any]) -> dict[str, Any] | None:
    """A ``config.yaml`` written before config files named their task, in today's form
    (keys added since then take the value that reproduces what the run did:
    ``ClassificationConfig.MIGRATE_VALUES``); None if it is not a classification run's."""
    if "dataset" in raw or not {"glimpses", "canvas_size"} <= set(raw):  # not a classifier's
        return None
    return {"task": ClassificationConfig.TASK,
            **{k: v for k, v in ClassificationConfig.MIGRATE_VALUES.items() if k not in raw},
            **raw}
