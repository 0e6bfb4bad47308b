"""95% percentile-bootstrap intervals for benchmark figures, one implementation for all.

Every benchmark that reports a figure from several seeds, repeats, steps or queries
prints it with an interval from here, so they resample the same way: 2,000 draws from a
fixed seed, the 2.5th and 97.5th percentiles of the statistic over the draws.
``statistic`` is a numpy reduction taking ``axis`` (``np.mean``, ``np.median``,
``np.sum``, or ``functools.partial(np.percentile, q=99)``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

DRAWS = 2000
Statistic = Callable[..., npt.NDArray[np.float64]]


def resample(
    values: npt.ArrayLike, statistic: Statistic, rng: np.random.Generator
) -> npt.NDArray[np.float64]:
    """``statistic`` of DRAWS resamples (with replacement) of ``values``."""
    array = np.asarray(values, dtype=np.float64)
    picks = rng.integers(0, len(array), (DRAWS, len(array)))
    return np.asarray(statistic(array[picks], axis=1), dtype=np.float64)


def bounds(draws: npt.NDArray[np.float64]) -> tuple[float, float]:
    low, high = np.percentile(draws, [2.5, 97.5])
    return float(low), float(high)


def interval(values: npt.ArrayLike, statistic: Statistic, seed: int = 0) -> tuple[float, float]:
    """The 95% interval of ``statistic(values)``."""
    return bounds(resample(values, statistic, np.random.default_rng(seed)))


def ratio_interval(
    top: Sequence[float] | npt.NDArray[np.float64],
    bottom: Sequence[float] | npt.NDArray[np.float64],
    statistic: Statistic,
    paired: bool = False,
) -> tuple[float, float, float]:
    """``statistic(top) / statistic(bottom)`` and its 95% interval.

    ``paired`` resamples the same indices from both (each index one item measured both
    ways, such as one training step under two plans); otherwise each side is resampled on
    its own (two runs of independent requests or repeats).
    """
    first = np.asarray(top, dtype=np.float64)
    second = np.asarray(bottom, dtype=np.float64)
    ratio = float(statistic(first, axis=0) / statistic(second, axis=0))
    rng = np.random.default_rng(0)
    if paired:
        picks = rng.integers(0, len(second), (DRAWS, len(second)))
        draws = statistic(first[picks], axis=1) / statistic(second[picks], axis=1)
    else:
        draws = resample(first, statistic, rng) / resample(second, statistic, rng)
    low, high = bounds(np.asarray(draws, dtype=np.float64))
    return ratio, low, high
