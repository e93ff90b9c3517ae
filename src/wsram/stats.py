"""Statistics across seeds: means with 95% Student-t intervals, differences and ratios of
two methods with Welch's interval, Fisher's exact test of two counts of runs, and when a
training curve first reaches a level.

Pure functions of plain numbers; ``compare`` applies them to run folders.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# Two-sided 95% quantiles of Student's t, t_{0.975, df}, for df = 1..30, 40, 60, 120
# (standard tables); a df between two tabulated ones takes the lower one's (wider) value,
# and beyond 120 the normal quantile 1.96 is within 1%.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
         2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
         2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
_T975_LARGE = ((120, 1.980), (60, 2.000), (40, 2.021), (30, 2.042))


def t975(df: float) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom (df >= 1; a
    fractional df, as Welch's gives, rounds down: a wider interval)."""
    if df < 1:
        raise ValueError(f"need at least 1 degree of freedom, got {df}")
    d = int(math.floor(df))
    if d <= len(_T975):
        return _T975[d - 1]
    if d > 120:
        return 1.96
    return next(t for lo, t in _T975_LARGE if d >= lo)


@dataclass(frozen=True)
class Interval:
    """A point estimate with a 95% interval [lo, hi] from n values (lo = hi = mean when
    n = 1: no interval)."""

    mean: float
    lo: float
    hi: float
    n: int
    null: float = 0.0  # the value of "no difference": 0 for differences, 1 for ratios

    @property
    def excludes_null(self) -> bool:
        """Whether the interval excludes "no difference" (needs an interval: n > 1)."""
        return self.n > 1 and (self.lo > self.null or self.hi < self.null)

    @property
    def excludes_zero(self) -> bool:
        return self.n > 1 and (self.lo > 0 or self.hi < 0)

    def to_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "lo": self.lo, "hi": self.hi, "n": self.n,
                "null": self.null, "excludes_null": self.excludes_null}


def mean_interval(values: Sequence[float]) -> Interval:
    """Mean and 95% t-interval, mean +- t_{0.975,n-1} s / sqrt(n), of independent values
    (one per seed)."""
    v = [float(x) for x in values]
    n = len(v)
    if n == 0:
        raise ValueError("no values")
    m = sum(v) / n
    if n == 1:
        return Interval(m, m, m, 1)
    s = math.sqrt(sum((x - m) ** 2 for x in v) / (n - 1))
    h = t975(n - 1) * s / math.sqrt(n)
    return Interval(m, m - h, m + h, n)


def difference_interval(a: Sequence[float], b: Sequence[float]) -> Interval:
    """mean(a) - mean(b) with Welch's 95% interval (unequal variances; Welch-Satterthwaite
    degrees of freedom). Needs at least 2 values on each side for an interval."""
    a, b = [float(x) for x in a], [float(x) for x in b]
    na, nb = len(a), len(b)
    if not na or not nb:
        raise ValueError("no values")
    ma, mb = sum(a) / na, sum(b) / nb
    d = ma - mb
    if na < 2 or nb < 2:
        return Interval(d, d, d, 1)
    va = sum((x - ma) ** 2 for x in a) / (na - 1) / na
    vb = sum((x - mb) ** 2 for x in b) / (nb - 1) / nb
    se = math.sqrt(va + vb)
    if se == 0:  # every value alike on both sides: no spread to build an interval from
        return Interval(d, d, d, 1)
    df = (va + vb) ** 2 / ((va ** 2 / (na - 1) if va else 0) + (vb ** 2 / (nb - 1) if vb else 0))
    h = t975(df) * se
    return Interval(d, d - h, d + h, min(na, nb))


def ratio_interval(a: Sequence[float], b: Sequence[float]) -> Interval:
    """How many times larger b is than a (geometric means, b / a), with the interval from
    Welch's interval of log b - log a: e.g. "A needs R times fewer updates than B"."""
    if any(x <= 0 for x in (*a, *b)):
        raise ValueError("ratios need positive values")
    d = difference_interval([math.log(x) for x in b], [math.log(x) for x in a])
    return Interval(math.exp(d.mean), math.exp(d.lo), math.exp(d.hi), d.n, null=1.0)


def fisher_exact(hits_a: int, of_a: int, hits_b: int, of_b: int) -> float:
    """Two-sided p-value of Fisher's exact test that two groups of runs share one chance of
    an outcome (``hits_a`` of ``of_a`` against ``hits_b`` of ``of_b``): the probability,
    with the margins fixed, of every table no more likely than the one observed."""
    hits, n = hits_a + hits_b, of_a + of_b

    def prob(k: int) -> float:
        return math.comb(hits, k) * math.comb(n - hits, of_a - k) / math.comb(n, of_a)

    seen = prob(hits_a)
    return min(1.0, sum(p for k in range(max(0, of_a - (n - hits)), min(hits, of_a) + 1)
                        if (p := prob(k)) <= seen * (1 + 1e-9)))


def smoothed(points: Sequence[tuple[int, float]], window: int = 5) -> list[tuple[int, float]]:
    """Trailing mean over ``window`` consecutive points of a (step, value) curve."""
    out = []
    for i in range(len(points)):
        chunk = [v for _, v in points[max(0, i - window + 1):i + 1]]
        out.append((points[i][0], sum(chunk) / len(chunk)))
    return out


def first_reach(points: Sequence[tuple[float, float]], level: float) -> float | None:
    """The first x at which a (x, value) curve is at or below ``level``; None if never."""
    return next((x for x, v in points if v <= level), None)


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided p-value of McNemar's exact test on paired outcomes (two models on the
    same test images): ``only_a`` images only model A gets wrong, ``only_b`` only B. Under
    "no difference" each discordant image is a fair coin: the binomial tail, doubled."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(only_a, only_b) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def wilson_interval(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion ``hits`` / ``n`` (a test error on n
    images); it stays inside [0, 1] and is sound near 0, where errors of a few % sit."""
    if n <= 0:
        raise ValueError(f"need n >= 1, got {n}")
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Plateau:
    """Where a validation curve stands at its end (``plateau``, below)."""

    converged: bool  # improved by less than ``tol`` over the last quarter of the updates
    gain_last_quarter: float  # the level a quarter before the end minus the level at the end
    level: float  # the level at the end: the mean of the last ``window`` evaluations
    reached_at: int | None  # the first update whose level is within ``tol`` of the end's


def plateau(points: Sequence[tuple[int, float]], window: int = 3, tol: float = 0.005,
            ) -> Plateau:
    """Whether an error curve (update, value) has flattened, by the rule of
    docs/convergence.md: the level (the mean of ``window`` consecutive evaluations) at the
    end has improved by less than ``tol`` on the level a quarter of the updates before.
    ``reached_at``: the first update whose level is within ``tol`` of the final one."""
    if len(points) < window:
        raise ValueError(f"need at least {window} evaluations, got {len(points)}")
    levels = [(s, v) for (s, v) in smoothed(points, window)][window - 1:]
    end_step, end = levels[-1]
    before = [v for s, v in levels if s <= end_step * 0.75]
    gain = (before[-1] - end) if before else math.inf
    reached = next((s for s, v in levels if v - end < tol), None)
    return Plateau(gain < tol, gain, end, reached)
