"""Maximum-likelihood fits of real cutouts: a Sérsic galaxy, its centre and a sky, on any stamp.

The model is :mod:`galparam.kspace.stamps` (GalSim's drawing, with exact derivatives by all eight
parameters), the likelihood :mod:`galparam.evaluate.likelihood`'s with the stamp's σ map, mask
and gain (:class:`galparam.stamp.Stamp`). Each stamp is fitted as the datasets' images are
(:class:`galparam.evaluate.fit.BatchedFit`): a start from the image's adaptive moments (its
centroid, size and shape, the PSF's size taken out), Fisher-scoring (Gauss–Newton) steps until
they converge, then bounded L-BFGS-B with each variable in units of its bound and the k-space grid
held (which stops at once where the scoring converged), started again on a larger grid when the
estimate needs one. At the estimate the inverse Fisher matrix gives the
errors and correlations, and the residuals the χ².
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from scipy.optimize import minimize

from galparam.errors import GalparamError
from galparam.evaluate.crb import covariances, fisher_matrices
from galparam.evaluate.fit import FTOL, GTOL, REGRIDS, Fit, FitResult
from galparam.evaluate.fitbox import FitBox
from galparam.evaluate.likelihood import nll_and_weights
from galparam.interval import Interval
from galparam.kspace.stamps import (
    STAMP_PARAMETERS,
    draw_stamps,
    enclosing_stamp_grid,
    fit_fft_size,
    galsim_axes,
    stamp_grid,
    wide_tables,
)
from galparam.kspace.tables import N_RANGE
from galparam.psf import ImagePSF
from galparam.stamp import SKY_RANGE_SIGMAS, Stamp, offset_limit

__all__ = ["FLAGS", "StampBox", "StampFit", "moments_start"]

STAMP_SCORING_STEPS = 12
"""Fisher-scoring steps a stamp's fit takes at most before L-BFGS-B (the scoring usually gets there
in 3–6, quadratically near the maximum; L-BFGS-B then only confirms it)."""

SCORING_DECREMENT = 1e-6
"""The scoring stops when a step would lower the NLL by less than this (½ gᵀF⁻¹g, ~0.001 bound of
distance): the gradient in bound units is then about L-BFGS-B's ``gtol`` or below, so L-BFGS-B
usually stops at once, and otherwise finishes the few last digits."""

SHEAR_MAX = 0.9
"""The largest |g| a stamp's fit considers (axis ratio 0.053)."""

FLAGS = {
    "not_converged": "L-BFGS-B stopped before meeting its convergence criterion",
    "sersic_n_at_edge": f"the index is at an end of the tables' range {N_RANGE} (the fit wanted beyond)",
    "radius_below_psf": "the half-light radius is below the PSF's: the profile is barely resolved",
    "centre_masked": "the galaxy's centre falls on a masked pixel",
    "offset_at_edge": "the centre is at the edge of the searched offsets",
    "beyond_tables": "the galaxy is too large for the k-space tables at this pixel scale: its model's k-box was cut short",
    "fit_failed": "the fit raised an error (the message is in the row)",
}
"""What each flag in a result's ``flags`` means."""


@dataclass(frozen=True)
class StampBox:
    """Where a stamp's fit searches: the galaxy's :class:`~galparam.evaluate.fitbox.FitBox`
    (flux, index and radius ranges, a shear disc), offsets |dx|, |dy| ≤ ``offset_max`` pixels, and
    the sky (``None``: held at 0).

    The fit's variables are the box's (flux, n, hlr, u1, u2) then dx, dy, sky.
    """

    galaxy: FitBox
    offset_max: float
    sky: Interval | None = None

    @classmethod
    def around(cls, stamp: Stamp, start: np.ndarray, *, fit_sky: bool = False) -> StampBox:
        """The box for a stamp: flux from 1e-4 to 1e3 times the start's scale, every index the
        tables hold, radius from 0.1 pixel to half the stamp, the centre within a quarter of the
        stamp (at least 5 pixels), the sky within :data:`SKY_RANGE_SIGMAS` σ."""
        ny, nx = stamp.frame.shape
        scale = stamp.frame.pixel_scale
        median_sigma = float(np.median(stamp.sigma[stamp.mask]))
        flux_scale = max(float(start[0]), 5 * median_sigma * math.sqrt(stamp.used_pixels))
        galaxy = FitBox(
            (1e-4 * flux_scale, 1e3 * flux_scale),
            N_RANGE,
            (0.1 * scale, min(0.5 * max(ny, nx) * scale, 20.0)),
            shear_max=SHEAR_MAX,
        )
        offset_max = offset_limit((ny, nx))
        sky = Interval.closed(-SKY_RANGE_SIGMAS * median_sigma, SKY_RANGE_SIGMAS * median_sigma) if fit_sky else None
        return cls(galaxy, offset_max, sky)

    @property
    def low(self) -> np.ndarray:
        sky = 0.0 if self.sky is None else self.sky.low
        return np.r_[self.galaxy.low, -self.offset_max, -self.offset_max, sky]

    @property
    def high(self) -> np.ndarray:
        sky = 0.0 if self.sky is None else self.sky.high
        return np.r_[self.galaxy.high, self.offset_max, self.offset_max, sky]

    @property
    def free(self) -> np.ndarray:
        """Which of the eight parameters are fitted (the sky only with a sky range)."""
        return np.r_[np.ones(7, dtype=bool), self.sky is not None]

    def to_theta(self, x) -> np.ndarray:
        """Parameters (STAMP_PARAMETERS) of fit variables."""
        return np.r_[self.galaxy.to_theta(x[:5]), x[5:8]]

    def to_variables(self, theta) -> np.ndarray:
        """Fit variables of parameters, moved into the box."""
        return np.clip(np.r_[self.galaxy.to_variables(theta[:5]), theta[5:8]], self.low, self.high)

    def variables_jacobian(self, x) -> np.ndarray:
        """(8, 8) ∂θ/∂x: the identity but for the shear's square-to-disc map."""
        jac = np.eye(8)
        jac[3:5, 3:5] = self.galaxy.shear(x[3], x[4])[1]
        return jac


def _moments(image, mask=None):
    """GalSim's adaptive moments of an image (pixels): (sigma, g1, g2, x, y) with the centroid
    one-based, or None where they fail."""
    import galsim

    try:
        badpix = None if mask is None else galsim.Image((~mask).astype(np.int32))
        m = galsim.hsm.FindAdaptiveMom(galsim.Image(np.ascontiguousarray(image), scale=1.0), badpix=badpix)
    except (galsim.GalSimHSMError, galsim.GalSimError):
        return None
    return (m.moments_sigma, m.observed_shape.g1, m.observed_shape.g2, m.moments_centroid.x, m.moments_centroid.y)


def _psf_sigma_pixels(stamp: Stamp) -> float | None:
    """The PSF's adaptive-moments size in the stamp's pixels."""
    return _psf_sigma(stamp.frame.psf, stamp.frame.pixel_scale)


@lru_cache(maxsize=32)
def _psf_sigma(psf, pixel_scale: float) -> float | None:
    """:func:`_psf_sigma_pixels` of a PSF at a pixel scale, once for the stamps that share it."""
    if isinstance(psf, ImagePSF):
        m = _moments(psf.array)
        return None if m is None else m[0] / psf.oversampling
    side = int(max(32, 8 * psf.fwhm / pixel_scale))
    m = _moments(psf.to_galsim().drawImage(nx=side, ny=side, scale=pixel_scale).array)
    return None if m is None else m[0]


def moments_start(stamp: Stamp) -> np.ndarray:
    """Where a stamp's fit starts (STAMP_PARAMETERS): the flux from the sum of the pixels that
    count, the centre, size and shape from adaptive moments (the PSF's size taken out, the
    shape undiluted), Sérsic index 2, no sky. Where the moments fail: the stamp's centre and a
    radius of two pixels."""
    ny, nx = stamp.frame.shape
    scale = stamp.frame.pixel_scale
    theta = np.array([max(float(stamp.image[stamp.mask].sum()), 0.0), 2.0, 2.0 * scale, 0.0, 0.0, 0.0, 0.0, 0.0])
    gal, psf = _moments(stamp.image, stamp.mask), _psf_sigma_pixels(stamp)
    if gal is not None:
        sigma, g1, g2, x, y = gal
        dx, dy = x - (nx + 1) / 2, y - (ny + 1) / 2
        if abs(dx) < nx / 2 and abs(dy) < ny / 2:
            theta[5:7] = dx, dy
        size2 = sigma**2 - (psf or 0.0) ** 2
        if size2 > 0:
            # Gaussian: hlr = 1.1774 σ; Sérsic profiles of moderate n come out ~1.3× larger
            theta[2] = 1.3 * 1.1774 * math.sqrt(size2) * scale
            dilution = sigma**2 / size2
            g = np.array([g1, g2]) * dilution
            if np.hypot(*g) < SHEAR_MAX:
                theta[3:5] = g
    return theta


def _by_variables(jacobian, variables_jacobian) -> np.ndarray:
    """Derivatives by the parameters (B, 8, ny, nx) → by the fit variables: only the shear's two
    planes mix (:meth:`StampBox.variables_jacobian` is the identity elsewhere)."""
    out = jacobian.copy()
    out[:, 3:5] = np.einsum("bkij,kl->blij", jacobian[:, 3:5], variables_jacobian[3:5, 3:5])
    return out


def beyond_tables(tables, frame, grid, theta) -> bool:
    """Whether the galaxy's k-box on ``grid`` reaches beyond the tables (the model cuts it there)."""
    major = galsim_axes(theta[3], theta[4])[0]
    reach = math.sqrt(2) * grid[1][0] * 2 * math.pi / (grid[0][0] * frame.pixel_scale) * theta[2] * float(major)
    return bool(reach > tables.s_max**2)


@dataclass(frozen=True)
class _Assessment:
    """A stamp's model at a point of its fit: the NLL, its gradient by the fit variables, the
    inverse Fisher matrix (8×8, in the variables; NaN for a held sky), the model and its
    derivatives by the parameters."""

    nll: float
    gradient: np.ndarray
    covariance: np.ndarray
    model: np.ndarray
    jacobian: np.ndarray


@dataclass
class StampResult(FitResult):
    """A stamp's fit: :class:`~galparam.evaluate.fit.FitResult`, with the χ² of the residuals over
    the pixels that count, its degrees of freedom, the flags (:data:`FLAGS`), the model image and
    the grid it was drawn on."""

    chi2: float = math.nan
    dof: int = 0
    flags: tuple = ()
    model: np.ndarray | None = field(default=None, repr=False)
    error: str = ""


class StampFit(Fit):
    """Fits a Sérsic galaxy, its centre and (optionally) a sky to each of many stamps.

    Parameters
    ----------
    fit_sky : bool
        Fit a constant sky level (default: held at 0, the stamps are sky-subtracted).
    max_iter : int
        L-BFGS-B iterations at most, per stamp.
    scoring_steps : int
        Fisher-scoring steps at most, each kept where it lowers the NLL; they stop earlier where
        a step would lower it by less than :data:`SCORING_DECREMENT`.
    ftol, gtol : float
        L-BFGS-B's stopping rule, as :class:`~galparam.evaluate.fit.BatchedFit`'s.

    Attributes
    ----------
    theta_, covariance_, converged_, nll_, ... :
        As every :class:`~galparam.evaluate.fit.Fit`'s, with the eight :data:`STAMP_PARAMETERS`
        (the sky's row and column of the covariance NaN when the sky is held).
    chi2_, dof_ : ndarray (N,)
        χ² of the residuals over the pixels that count, and the pixels less the fitted parameters.
    flags_ : list of tuple of str
        Each stamp's :data:`FLAGS`.
    models_ : list of ndarray
        Each stamp's model image at its estimate (sky included).
    """

    def __init__(
        self,
        *,
        fit_sky: bool = False,
        max_iter: int = 200,
        scoring_steps: int = STAMP_SCORING_STEPS,
        ftol: float = FTOL,
        gtol: float = GTOL,
    ):
        self.fit_sky = bool(fit_sky)
        self.max_iter = int(max_iter)
        self.scoring_steps = int(scoring_steps)
        self.ftol = float(ftol)
        self.gtol = float(gtol)

    def fit(self, stamps, init=None) -> StampFit:
        """Fit each stamp, from its moments (:func:`moments_start`) or from ``init``.

        Parameters
        ----------
        stamps : sequence of Stamp
            The cutouts (:meth:`galparam.stamp.Stamp.from_arrays`).
        init : ndarray of shape (N, 8), optional
            Starting points (STAMP_PARAMETERS), used where their likelihood beats the moments'.

        Returns
        -------
        StampFit
            This fitter, results in its attributes. A stamp whose fit raises becomes a row of
            NaN flagged ``fit_failed`` (its message in ``results_[i].error``).
        """
        stamps = list(stamps)
        if init is not None:
            init = np.asarray(init, dtype=np.float64)
            if init.shape != (len(stamps), len(STAMP_PARAMETERS)):
                raise GalparamError(
                    f"starting points of shape {init.shape}: expected ({len(stamps)}, {len(STAMP_PARAMETERS)})"
                )
        tables = wide_tables()
        results = []
        for i, stamp in enumerate(stamps):
            t0 = time.perf_counter()
            try:
                result = self._fit_one(tables, stamp, None if init is None else init[i])
            except Exception as exc:  # noqa: BLE001 - a failed fit is a flagged row, not a failed batch
                result = StampResult(
                    np.full(8, np.nan),
                    False,
                    math.nan,
                    0,
                    0,
                    0.0,
                    str(exc),
                    np.full((8, 8), np.nan),
                    flags=("fit_failed",),
                    error=f"{type(exc).__name__}: {exc}",
                )
            result.seconds = time.perf_counter() - t0
            results.append(result)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a stamp's convergence is its flag
            self._keep(results)
        self.chi2_ = np.array([r.chi2 for r in results])
        self.dof_ = np.array([r.dof for r in results], dtype=np.int64)
        self.flags_ = [r.flags for r in results]
        self.models_ = [r.model for r in results]
        return self

    # -- one stamp -----------------------------------------------------------------------------
    def _fit_one(self, tables, stamp: Stamp, init) -> StampResult:
        start = moments_start(stamp)
        box = StampBox.around(stamp, start, fit_sky=self.fit_sky)
        free = box.free
        lo, hi = box.low, box.high
        frame = stamp.frame
        image, sigma, mask, gain = stamp.image[None], stamp.sigma[None], stamp.mask[None], stamp.gain

        def nll_at(x, grid):
            model = draw_stamps(tables, frame, box.to_theta(x)[None], grid=grid)
            return nll_and_weights(image, model, sigma, poisson=gain is not None, gain=gain, mask=mask)[0][0]

        largest = fit_fft_size(frame)
        x0 = box.to_variables(start)
        grid = stamp_grid(tables, frame, box.to_theta(x0)[None], max_size=largest)
        from_init = False
        if init is not None:
            given = box.to_variables(init)
            given_grid = stamp_grid(tables, frame, box.to_theta(given)[None], max_size=largest)
            if nll_at(given, given_grid) <= nll_at(x0, grid):
                x0, grid, from_init = given, given_grid, True
        x0, grid, at_x0 = self._scoring(tables, stamp, box, x0, grid, largest)
        unit = np.sqrt(np.clip(np.diagonal(at_x0.covariance), 0, None))
        unit = np.where(np.isfinite(unit) & (unit > 0), np.minimum(unit, np.maximum(hi - lo, 1e-300)), hi - lo)
        unit = np.where(free, unit, 1.0)
        offset = at_x0.nll
        scoring_grid = grid

        def value_and_gradient(z):
            if grid is scoring_grid and not z.any():  # where the scoring ended: known already
                return 0.0, at_x0.gradient * unit * free
            x = x0 + z * unit
            theta = box.to_theta(x)
            model, vjp = draw_stamps(tables, frame, theta[None], grid=grid, derivatives="vjp")
            nll, weights = nll_and_weights(image, model, sigma, poisson=gain is not None, gain=gain, mask=mask)
            gradient = vjp(weights)[0] @ box.variables_jacobian(x)
            return float(nll[0] - offset), gradient * unit * free

        z, iterations, evaluations = np.zeros(8), 0, 0
        bounds = list(zip((lo - x0) / unit, (hi - x0) / unit, strict=True))
        for _ in range(REGRIDS + 1):
            solution = minimize(
                value_and_gradient,
                z,
                jac=True,
                method="L-BFGS-B",
                bounds=bounds,
                options={"maxiter": self.max_iter - iterations, "ftol": self.ftol, "gtol": self.gtol},
            )
            z, iterations, evaluations = solution.x, iterations + solution.nit, evaluations + solution.nfev
            theta = box.to_theta(np.clip(x0 + z * unit, lo, hi))
            enclosing = enclosing_stamp_grid(tables, frame, grid, theta[None], max_size=largest)
            if (enclosing[0][0], enclosing[1][0]) == (grid[0][0], grid[1][0]) or iterations >= self.max_iter:
                break
            grid = enclosing
        x = np.clip(x0 + z * unit, lo, hi)
        theta = box.to_theta(x)
        if grid is scoring_grid and np.array_equal(x, x0):
            model, jacobian = at_x0.model, at_x0.jacobian
        else:
            model, jacobian = draw_stamps(tables, frame, theta[None], grid=grid, derivatives="jacobian")
        covariance = np.full((8, 8), np.nan)
        fisher = fisher_matrices(model, jacobian[:, free], sigma, poisson=gain is not None, gain=gain, mask=mask)
        covariance[np.ix_(free, free)] = covariances(fisher)[0]
        nll, _ = nll_and_weights(image, model, sigma, poisson=gain is not None, gain=gain, mask=mask)
        variance = sigma[0] ** 2 + (np.clip(model[0], 0, None) / gain if gain is not None else 0.0)
        chi2 = float(np.sum(((stamp.image - model[0]) ** 2 / variance)[stamp.mask]))
        flags = self._flags(stamp, box, x, theta, bool(solution.success))
        if beyond_tables(tables, frame, grid, theta):
            flags += ("beyond_tables",)
        return StampResult(
            theta,
            bool(solution.success),
            float(nll[0]),
            int(iterations),
            int(evaluations),
            0.0,
            str(solution.message),
            covariance,
            from_init,
            chi2=chi2,
            dof=int(stamp.used_pixels - free.sum()),
            flags=flags,
            model=model[0],
        )

    def _scoring(
        self, tables, stamp: Stamp, box: StampBox, x0, grid, largest: int
    ) -> tuple[np.ndarray, tuple, _Assessment]:
        """The start moved by Fisher-scoring (Gauss–Newton) steps while they lower the NLL, until the
        step's predicted decrease is below :data:`SCORING_DECREMENT`, on the grid the estimate
        needs (enlarged, at most to ``largest``, and the scoring resumed there when it needs more);
        that grid and the model there.

        Each trial point is drawn with its derivatives at once: a kept step (the usual case) is then
        assessed already, and where the scoring converges L-BFGS-B only confirms it.
        """
        frame, free = stamp.frame, box.free
        image, sigma, mask, gain = stamp.image[None], stamp.sigma[None], stamp.mask[None], stamp.gain
        lo, hi = box.low, box.high
        poisson = gain is not None

        def assess(x, grid) -> _Assessment:
            model, jac = draw_stamps(tables, frame, box.to_theta(x)[None], grid=grid, derivatives="jacobian")
            jac_x = _by_variables(jac, box.variables_jacobian(x))
            cov = np.full((8, 8), np.nan)
            fisher = fisher_matrices(model, jac_x[:, free], sigma, poisson=poisson, gain=gain, mask=mask)
            cov[np.ix_(free, free)] = covariances(fisher)[0]
            nll, weights = nll_and_weights(image, model, sigma, poisson=poisson, gain=gain, mask=mask)
            return _Assessment(float(nll[0]), np.einsum("kij,ij->k", jac_x[0], weights[0]), cov, model, jac)

        current = assess(x0, grid)
        steps = 0
        for _ in range(REGRIDS + 1):
            while steps < self.scoring_steps:
                gradient = np.where(free, current.gradient, 0.0)
                step = np.where(free, -np.nan_to_num(current.covariance) @ gradient, 0.0)
                if not -0.5 * float(gradient @ step) > SCORING_DECREMENT:
                    break
                steps += 1
                for fraction in (1.0, 0.5):
                    x1 = np.clip(x0 + fraction * step, lo, hi)
                    trial = assess(x1, grid)
                    if np.isfinite(trial.nll) and trial.nll < current.nll:
                        break
                else:
                    break
                x0, current = x1, trial
            enclosing = enclosing_stamp_grid(tables, frame, grid, box.to_theta(x0)[None], max_size=largest)
            if (enclosing[0][0], enclosing[1][0]) == (grid[0][0], grid[1][0]) or steps >= self.scoring_steps:
                break
            grid = enclosing
            current = assess(x0, grid)
        return x0, grid, current

    def _flags(self, stamp: Stamp, box: StampBox, x, theta, converged: bool) -> tuple:
        flags = []
        if not converged:
            flags.append("not_converged")
        n_lo, n_hi = N_RANGE
        if theta[1] <= n_lo + 1e-3 or theta[1] >= n_hi - 1e-3:
            flags.append("sersic_n_at_edge")
        if theta[2] < stamp.frame.psf.half_light_radius:
            flags.append("radius_below_psf")
        ny, nx = stamp.frame.shape
        col, row = int(round((nx - 1) / 2 + theta[5])), int(round((ny - 1) / 2 + theta[6]))
        if not (0 <= row < ny and 0 <= col < nx) or not stamp.mask[row, col]:
            flags.append("centre_masked")
        if np.any(np.abs(theta[5:7]) >= box.offset_max - 1e-6):
            flags.append("offset_at_edge")
        return tuple(flags)
