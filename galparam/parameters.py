"""The physical parameters of the forward model, declared once: names, units, valid ranges, priors.

Every module that needs to know what a parameter is (the forward model, the dataset specs, the
dataset checks, the Fisher matrix, the likelihood fit) reads :data:`PARAMETERS` instead of keeping a
copy. As in GalSim, a value outside its range is refused eagerly with a :class:`ParameterError`
that names the value and the range.

This module imports numpy only, so ``import galparam`` stays light.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from galparam.errors import GalparamError, SpecError
from galparam.interval import Interval


class ParameterError(GalparamError):
    """A physical parameter outside the range the forward model can draw."""


@dataclass(frozen=True)
class Parameter:
    """One physical quantity of the image model.

    Attributes
    ----------
    name : str
        Column name in label matrices, metadata tables and specs.
    unit : str
        Physical unit ("" for dimensionless).
    valid : Interval
        The values the forward model accepts.
    training_prior : tuple of float or None
        The range of the reference's training prior (design notes, section 1), where the parameter
        is drawn from a range there.
    description : str
        What the parameter is.
    """

    name: str
    unit: str
    valid: Interval
    training_prior: tuple[float, float] | None
    description: str

    @property
    def range_text(self) -> str:
        """The valid range as text, e.g. ``(0, inf) counts``."""
        return self.valid.text(self.unit)

    def check(self, value) -> float:
        """``value`` as a float, or a :class:`ParameterError` naming it and the valid range."""
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ParameterError(f"{self.name} {value!r} is not a number") from None
        if not math.isfinite(number) or not self.valid.contains(number):
            raise ParameterError(f"{self.name} {number:g} is outside the valid range {self.range_text}")
        return number


SHEAR_LIMIT = 1.0
"""|g| must stay below this (an axis ratio of 0)."""

TRAINING_SHEAR_AMPLITUDE = 0.67
"""The largest |g| of the reference's training prior (axis ratio ≈ 0.2)."""

PARAMETERS = {
    p.name: p
    for p in (
        Parameter("flux", "counts", Interval.open(0.0, math.inf), (3.0e4, 4.0e5), "total flux"),
        # GalSim's Sersic accepts 0.3 <= n <= 6.2.
        Parameter("sersic_n", "", Interval.closed(0.3, 6.2), (0.5, 6.0), "Sérsic index"),
        Parameter("hlr", "arcsec", Interval(0.0, 20.0, False, True), (0.1, 0.6), "half-light radius before shear"),
        Parameter("g1", "", Interval.open(-SHEAR_LIMIT, SHEAR_LIMIT), None, "reduced shear, first component"),
        Parameter("g2", "", Interval.open(-SHEAR_LIMIT, SHEAR_LIMIT), None, "reduced shear, second component"),
        Parameter(
            "shear_amplitude", "", Interval(0.0, SHEAR_LIMIT, True, False), (0.0, TRAINING_SHEAR_AMPLITUDE), "|g| = A"
        ),
        Parameter("shear_angle", "radians", Interval.closed(0.0, math.pi), (0.0, math.pi), "β: g1 + i g2 = A e^{2iβ}"),
        Parameter("psf_fwhm", "arcsec", Interval(0.0, 20.0, False, True), (0.5, 1.0), "FWHM of the Moffat PSF"),
        Parameter("sigma", "counts", Interval.open(0.0, math.inf), (200.0, 400.0), "Gaussian noise per pixel"),
        Parameter("dx", "pixels", Interval.open(-math.inf, math.inf), None, "galaxy centre right of the stamp's"),
        Parameter("dy", "pixels", Interval.open(-math.inf, math.inf), None, "galaxy centre above the stamp's"),
        Parameter("sky", "counts", Interval.open(-math.inf, math.inf), None, "constant sky level per pixel"),
    )
}
"""Every physical quantity of the image model, by name."""

LABEL_NAMES = ("flux", "sersic_n", "hlr", "g1", "g2")
"""Names of the five estimated parameters, in the column order of every label matrix."""

LABEL_UNITS = {name: PARAMETERS[name].unit for name in LABEL_NAMES}
"""Unit of each label ("" for dimensionless)."""

SERSIC_N_LIMITS = (PARAMETERS["sersic_n"].valid.low, PARAMETERS["sersic_n"].valid.high)
"""Sérsic indices GalSim can render (``galsim.Sersic`` rejects others)."""


def sersic_grid(n_min: float = 0.5, n_max: float = 6.0, size: int = 1000) -> np.ndarray:
    """Equally spaced Sérsic indices, the values a discretized prior draws from.

    Parameters
    ----------
    n_min, n_max : float
        First and last index, inside GalSim's range ``SERSIC_N_LIMITS``.
    size : int
        Number of grid values (≥ 2).

    Returns
    -------
    ndarray of shape (size,), float64
    """
    lo, hi = SERSIC_N_LIMITS
    if not (lo <= n_min < n_max <= hi):
        raise SpecError(f"Sérsic grid [{n_min}, {n_max}] must satisfy {lo} <= n_min < n_max <= {hi}")
    if int(size) < 2:
        raise SpecError(f"Sérsic grid size {size} must be at least 2")
    return np.linspace(n_min, n_max, int(size))


def check_parameters(theta, psf_fwhm: float | None = None, sigma: float | None = None) -> np.ndarray:
    """Validate a parameter vector (flux, sersic_n, hlr, g1, g2) and, if given, the observing conditions.

    Parameters
    ----------
    theta : array_like of shape (5,)
        flux (counts), sersic_n, hlr (arcsec), g1, g2.
    psf_fwhm : float, optional
        PSF FWHM in arcsec.
    sigma : float, optional
        Gaussian noise per pixel, counts.

    Returns
    -------
    ndarray of shape (5,), float64

    Raises
    ------
    ParameterError
        If ``theta`` is not five finite numbers, a value is outside its valid range, or |g| ≥ 1.
    """
    theta = np.asarray(theta, dtype=np.float64)
    if theta.shape != (len(LABEL_NAMES),):
        raise ParameterError(f"expected {len(LABEL_NAMES)} parameters {LABEL_NAMES}, got shape {theta.shape}")
    for name, value in zip(LABEL_NAMES, theta, strict=True):
        PARAMETERS[name].check(value)
    g = math.hypot(theta[3], theta[4])
    if not g < SHEAR_LIMIT:
        raise ParameterError(f"|g| = {g:.3g} (g1 {theta[3]:g}, g2 {theta[4]:g}) is outside the valid range [0, 1)")
    if psf_fwhm is not None:
        PARAMETERS["psf_fwhm"].check(psf_fwhm)
    if sigma is not None:
        PARAMETERS["sigma"].check(sigma)
    return theta


def first_invalid(name: str, values) -> int | None:
    """Index of the first of ``values`` outside the valid range of parameter ``name``, or None.

    Both ends get a tolerance of 1e-6 for float32 rounding; ``name`` ``"g"`` checks |g| < 1 on an
    (N, 2) array of (g1, g2).
    """
    values = np.asarray(values, dtype=np.float64)
    if name == "g":
        ok = np.hypot(values[:, 0], values[:, 1]) < SHEAR_LIMIT
    else:
        ok = PARAMETERS[name].valid.contains(values, tolerance=1e-6) & np.isfinite(values)
    bad = np.flatnonzero(~ok)
    return int(bad[0]) if len(bad) else None
