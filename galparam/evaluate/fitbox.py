"""Where a fit searches: ranges for flux, index and radius, and a disc for the shear.

L-BFGS-B's bounds are a box, while the shear prior is a disc: the fit varies (u1, u2) in the
square [−1, 1]², mapped onto the disc by the elliptical square-to-disc map (smooth, one to one,
the identity to first order at the centre), so the bounds stay exact and no |g| beyond the prior is
ever rendered.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from galparam.errors import GalparamError
from galparam.interval import Interval
from galparam.parameters import PARAMETERS, SERSIC_N_LIMITS, TRAINING_SHEAR_AMPLITUDE

RANGED = ("flux", "sersic_n", "hlr")
"""The parameters a box gives a range (the shear has a disc)."""


@dataclass(frozen=True)
class FitBox:
    """Where the fit searches: a closed range for flux (counts), Sérsic index and radius (arcsec),
    and a disc |g| ≤ ``shear_max`` for the shear (see the module docstring).

    The ranges may be given as :class:`~galparam.interval.Interval`\\ s or (low, high) pairs.
    """

    flux: Interval
    sersic_n: Interval
    hlr: Interval
    shear_max: float

    def __post_init__(self):
        for name in RANGED:
            value = getattr(self, name)
            low, high = (value.low, value.high) if isinstance(value, Interval) else map(float, value)
            PARAMETERS[name].check(low)
            PARAMETERS[name].check(high)
            if not low < high:
                raise GalparamError(f"fit box: {name} [{low:g}, {high:g}] is empty; give low < high")
            object.__setattr__(self, name, Interval.closed(low, high))
        if not 0 < self.shear_max < 1:
            raise GalparamError(f"fit box: shear_max {self.shear_max:g} is outside (0, 1)")

    @classmethod
    def training_prior(cls) -> FitBox:
        """The reference's training prior (flux 3e4–4e5, n 0.5–6, hlr 0.1–0.6″, |g| ≤ 0.67)."""
        return cls(
            *(PARAMETERS[name].training_prior for name in ("flux", "sersic_n", "hlr")),
            shear_max=TRAINING_SHEAR_AMPLITUDE,
        )

    @classmethod
    def from_spec(cls, spec) -> FitBox:
        """The box of a dataset's recorded prior.

        A parameter drawn from a range is fitted within that range. A fixed parameter (the
        fixed-parameter test sets) is fitted within the training prior's range widened to hold it
        with room on either side, since a box around the truth alone would tell the fit the answer.
        """
        default = cls.training_prior()
        ranges = {}
        for name in RANGED:
            prior = spec.priors[name]
            low, high = getattr(default, name).low, getattr(default, name).high
            if not prior.is_fixed:
                ranges[name] = (prior.low, prior.high)
            elif name == "sersic_n":
                ranges[name] = (
                    max(min(low, prior.low - 0.5), SERSIC_N_LIMITS[0]),
                    min(max(high, prior.low + 0.5), SERSIC_N_LIMITS[1]),
                )
            else:  # scale parameters: a factor of two either side
                ranges[name] = (min(low, prior.low / 2), max(high, prior.low * 2))
        a, b = spec.shear_form
        pa, pb = spec.priors[a], spec.priors[b]
        if a == "shear_amplitude":
            largest, fixed = pa.high, pa.is_fixed
        else:
            largest = float(np.hypot(max(abs(pa.low), abs(pa.high)), max(abs(pb.low), abs(pb.high))))
            fixed = pa.is_fixed and pb.is_fixed
        shear_max = max(default.shear_max, largest + (1 - largest) / 2) if fixed else largest
        if shear_max <= 0:  # a prior of round galaxies only: the fit still measures the shear
            shear_max = default.shear_max
        return cls(ranges["flux"], ranges["sersic_n"], ranges["hlr"], shear_max=min(shear_max, 0.95))

    @property
    def low(self) -> np.ndarray:
        """Lower ends of (flux, n, hlr) and of the unit square's (u1, u2)."""
        return np.array([self.flux.low, self.sersic_n.low, self.hlr.low, -1.0, -1.0])

    @property
    def high(self) -> np.ndarray:
        return np.array([self.flux.high, self.sersic_n.high, self.hlr.high, 1.0, 1.0])

    def to_dict(self) -> dict:
        """The box as JSON: (low, high) of each range, and ``shear_max`` (what a fits file records)."""
        out = {name: [getattr(self, name).low, getattr(self, name).high] for name in RANGED}
        return {**out, "shear_max": self.shear_max}

    @classmethod
    def from_dict(cls, mapping: dict) -> FitBox:
        """The box :meth:`to_dict` wrote."""
        return cls(*(tuple(mapping[name]) for name in RANGED), shear_max=mapping["shear_max"])

    def clip(self, theta) -> np.ndarray:
        """Parameters (N, 5) moved into the box (a network's estimate may stray outside what can be drawn)."""
        return np.array([self.to_theta(self.to_variables(t)) for t in np.asarray(theta, dtype=np.float64)])

    def disc(self, u1, u2, xp=np):
        """(g1, g2) of the square's points (u1, u2): the square-to-disc map (``xp`` the array library,
        numpy or ``jax.numpy`` in a traced device computation)."""
        return self.shear_max * (u1 * xp.sqrt(1 - u2**2 / 2)), self.shear_max * (u2 * xp.sqrt(1 - u1**2 / 2))

    def shear(self, u1, u2):
        """(g1, g2) of the square's point (u1, u2), and the 2×2 Jacobian ∂g/∂u."""
        a1, a2 = np.sqrt(1 - u2**2 / 2), np.sqrt(1 - u1**2 / 2)
        g = np.array(self.disc(u1, u2))
        jac = self.shear_max * np.array([[a1, -u1 * u2 / (2 * a1)], [-u1 * u2 / (2 * a2), a2]])
        return g, jac

    def square(self, g1, g2):
        """The inverse of :meth:`shear`: (u1, u2) of a shear, clipped onto the disc first."""
        g = np.array([g1, g2], dtype=np.float64) / self.shear_max
        norm = np.hypot(*g)
        if norm > 1 - 1e-9:
            g *= (1 - 1e-9) / norm
        x, y = g
        r2 = 2 * np.sqrt(2)
        u1 = 0.5 * np.sqrt(max(2 + x * x - y * y + r2 * x, 0)) - 0.5 * np.sqrt(max(2 + x * x - y * y - r2 * x, 0))
        u2 = 0.5 * np.sqrt(max(2 - x * x + y * y + r2 * y, 0)) - 0.5 * np.sqrt(max(2 - x * x + y * y - r2 * y, 0))
        return float(np.clip(u1, -1, 1)), float(np.clip(u2, -1, 1))

    def to_theta(self, x) -> np.ndarray:
        """Physical parameters (flux, n, hlr, g1, g2) of the fit variables (flux, n, hlr, u1, u2)."""
        g, _ = self.shear(x[3], x[4])
        return np.array([x[0], x[1], x[2], g[0], g[1]])

    def to_variables(self, theta) -> np.ndarray:
        """Fit variables of physical parameters, clipped into the box."""
        x = np.empty(5)
        x[:3] = np.clip(theta[:3], self.low[:3], self.high[:3])
        x[3:] = self.square(theta[3], theta[4])
        return x
