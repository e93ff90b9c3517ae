"""The learning-rate schedule: a factor on each network's starting rate, a function of
the number of updates done alone, so that a resumed run continues it exactly.

``constant`` keeps every rate (after the warm-up, if any); ``cosine`` lowers each from its
starting rate to ``lr_min`` times it over the horizon ``schedule_steps`` (SGDR, Loshchilov
and Hutter 2017, without restarts) and keeps it there past the horizon. ``warmup`` updates
first raise the rate linearly from 1/warmup of it.
"""

from __future__ import annotations

import math

#: the values of the config key ``lr_schedule``
SCHEDULES = ("constant", "cosine")


def lr_factor(schedule: str, step: int, warmup: int, lr_min: float, horizon: int) -> float:
    """The factor on each starting rate for the update that follows ``step`` updates."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    if schedule != "cosine":
        raise ValueError(f"unknown lr_schedule {schedule!r}; choose from {SCHEDULES}")
    progress = min(1.0, max(0.0, (step - warmup) / max(1, horizon - warmup)))
    return lr_min + (1.0 - lr_min) * 0.5 * (1.0 + math.cos(math.pi * progress))
