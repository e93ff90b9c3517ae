"""Run folders of an older format, for ``wsram migrate``."""

from __future__ import annotations

from typing import Any

from .config import CaptionConfig


def migrate_config(raw: dict[str, Any]) -> dict[str, Any] | None:
    """A ``config.yaml`` written before config files named their task, in today's form;
    None if it is not a caption run's (only caption configs have ``dataset``)."""
    if not {"dataset", "embed"} <= set(raw):  # keys only a caption config has
        return None
    return {"task": CaptionConfig.TASK, **raw}
