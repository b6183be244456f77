"""A range of numbers, with its ends open or closed: the one place interval semantics are written.

A parameter's valid range (:mod:`galparam.parameters`), a spec setting's accepted range
(:mod:`galparam.specs`), a geometry's (:mod:`galparam.geometry`), a builder argument's
(:mod:`galparam.models`) and the fit's box are all :class:`Interval`\\ s, so "is it inside" and
"how is the range written in an error" have one answer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Interval:
    """The numbers between ``low`` and ``high``, each end included or not.

    Attributes
    ----------
    low, high : float
        The ends (``-inf``, ``inf`` for none).
    low_inclusive, high_inclusive : bool
        Whether each end belongs to the interval.
    """

    low: float
    high: float
    low_inclusive: bool = True
    high_inclusive: bool = True

    @classmethod
    def open(cls, low: float, high: float) -> Interval:
        """(low, high)."""
        return cls(low, high, False, False)

    @classmethod
    def closed(cls, low: float, high: float) -> Interval:
        """[low, high]."""
        return cls(low, high, True, True)

    def contains(self, value, *, tolerance: float = 0.0):
        """Whether ``value`` (a number, or an array elementwise) lies inside.

        ``tolerance`` widens the closed ends only (float32 rounding of a value stored at an end);
        NaN is never inside.
        """
        value = np.asarray(value, dtype=np.float64)
        above = value >= self.low - tolerance if self.low_inclusive else value > self.low
        below = value <= self.high + tolerance if self.high_inclusive else value < self.high
        inside = above & below & ~np.isnan(value)
        return bool(inside) if inside.ndim == 0 else inside

    def text(self, unit: str = "") -> str:
        """The interval as it is written in messages: ``[0.3, 6.2]``, ``(0, inf) counts``."""
        left = "[" if self.low_inclusive else "("
        right = "]" if self.high_inclusive else ")"
        written = f"{left}{self.low:g}, {self.high:g}{right}"
        return f"{written} {unit}" if unit else written

    def __str__(self) -> str:
        return self.text()

    @property
    def bounded(self) -> bool:
        """Whether both ends are finite."""
        return math.isfinite(self.low) and math.isfinite(self.high)
