"""Maximum-likelihood fit of the five parameters to one image: the conventional baseline.

The likelihood is the true one of the simulation: each pixel is Gaussian with mean μ_p(θ), the
noiseless model of :mod:`galparam.render`, and variance ``v_p = σ² + μ_p`` (Poisson light plus
read noise), so

    NLL(θ) = Σ_p (d_p − μ_p)² / (2 v_p) + ½ log v_p.

It is minimized with ``scipy.optimize.minimize(method="L-BFGS-B")`` within the prior's bounds.

Speed: a new Sérsic index makes GalSim build tables (4–300 ms). The fit never asks for one: the
model at index n interpolates linearly between the images at the two neighbouring values of a fine
grid (200 values over [0.5, 6]; the interpolation error is below 1e-5 counts per count of the peak), whose profiles
the renderer keeps. The gradient is analytic in the flux, exact for the interpolation in n and by
forward differences in the radius and the shear.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import galsim
import numpy as np
from scipy.optimize import minimize

from galparam.errors import GalparamError
from galparam.render import Renderer, sersic_grid

DEFAULT_BOUNDS = np.array(
    [
        [3.0e4, 4.0e5],  # flux, counts
        [0.5, 6.0],  # sersic_n
        [0.1, 0.6],  # hlr, arcsec
        [-0.67, 0.67],  # g1
        [-0.67, 0.67],  # g2
    ]
)
"""The training priors' ranges (design.md), used as the fit's bounds."""

_FD_STEPS = np.array([0.0, 0.0, 1e-4, 1e-4, 1e-4])  # hlr (arcsec), g1, g2: forward differences


class ConvergenceWarning(UserWarning):
    """The optimizer stopped before meeting its convergence criterion."""


def negative_log_likelihood(image, model, sigma: float, *, poisson: bool = True) -> float:
    """NLL of ``image`` given the noiseless ``model`` (both in counts), up to a constant.

    Parameters
    ----------
    image, model : ndarray of shape (S, S)
        The observed image and the noiseless model.
    sigma : float
        Gaussian noise per pixel.
    poisson : bool
        Add the model's Poisson variance.
    """
    variance = sigma**2 + (np.clip(model, 0.0, None) if poisson else 0.0)
    return float(np.sum((image - model) ** 2 / (2 * variance) + 0.5 * np.log(variance)))


def initial_guess(image, psf_image, *, pixel_scale: float, bounds=DEFAULT_BOUNDS) -> np.ndarray:
    """A robust start: flux from the image sum, size and shear from adaptive moments (``galsim.hsm``).

    The PSF's moments are subtracted from the galaxy's (as for Gaussians); where the moments fail
    (very faint images) the middle of the bounds is used. Sérsic index: 2.

    Returns
    -------
    ndarray of shape (5,), inside ``bounds``
    """
    lo, hi = bounds[:, 0], bounds[:, 1]
    guess = (lo + hi) / 2
    guess[0] = float(np.sum(image))
    guess[1] = 2.0
    guess[3:] = 0.0
    try:
        gal = galsim.hsm.FindAdaptiveMom(galsim.Image(np.asarray(image, np.float64), scale=pixel_scale))
        psf = galsim.hsm.FindAdaptiveMom(galsim.Image(np.asarray(psf_image, np.float64), scale=pixel_scale))
        size2 = gal.moments_sigma**2 - psf.moments_sigma**2
        if size2 > 0:
            # Gaussian: hlr = 1.1774 sigma; Sérsic profiles of moderate n come out ~1.3x larger.
            guess[2] = 1.3 * 1.1774 * np.sqrt(size2) * pixel_scale
            dilution = gal.moments_sigma**2 / size2
            g = gal.observed_shape
            guess[3], guess[4] = g.g1 * dilution, g.g2 * dilution
    except (galsim.GalSimHSMError, galsim.GalSimError):
        pass
    margin = 1e-6 * (hi - lo)
    return np.clip(guess, lo + margin, hi - margin)


@dataclass
class FitResult:
    theta: np.ndarray
    converged: bool
    nll: float
    iterations: int
    evaluations: int
    seconds: float
    message: str


class LikelihoodFit:
    """Fits (flux, sersic_n, hlr, g1, g2) to an image by maximum likelihood.

    Parameters
    ----------
    psf_fwhm : float
        Moffat FWHM of the image's PSF, arcsec.
    sigma : float
        Gaussian noise per pixel, counts.
    poisson : bool
        Whether the image has Poisson noise on the galaxy light.
    bounds : ndarray of shape (5, 2)
        Lower and upper bound of each parameter.
    renderer : Renderer, optional
        The forward model (its stamp and pixel scale must match the images).
    grid_size : int
        Values of the Sérsic grid the model interpolates on.
    max_iter : int
        L-BFGS-B iterations at most.

    Attributes
    ----------
    theta_ : ndarray of shape (5,)
        The estimate, after :meth:`fit`.
    converged_ : bool
    result_ : FitResult
    """

    def __init__(
        self,
        *,
        psf_fwhm: float,
        sigma: float,
        poisson: bool = True,
        bounds=DEFAULT_BOUNDS,
        renderer: Renderer | None = None,
        grid_size: int = 200,
        max_iter: int = 200,
    ):
        if not psf_fwhm > 0:
            raise GalparamError(f"psf_fwhm {psf_fwhm}: must be > 0 arcsec")
        if not sigma > 0:
            raise GalparamError(f"sigma {sigma}: must be > 0")
        self.psf_fwhm = float(psf_fwhm)
        self.sigma = float(sigma)
        self.poisson = bool(poisson)
        self.bounds = np.asarray(bounds, dtype=np.float64)
        if self.bounds.shape != (5, 2) or not np.all(self.bounds[:, 0] < self.bounds[:, 1]):
            raise GalparamError("bounds: expected 5 rows of [low, high] with low < high")
        self.renderer = renderer or Renderer()
        self.grid = sersic_grid(max(0.3, self.bounds[1, 0] - 0.01), min(6.2, self.bounds[1, 1] + 0.01), grid_size)
        self.max_iter = int(max_iter)

    # -- the model ------------------------------------------------------------------------------
    def _render(self, flux, n_value, hlr, g1, g2):
        return self.renderer.image(flux, n_value, hlr, g1, g2, self.psf_fwhm, dtype=np.float64)

    def _bracket_images(self, theta):
        """Images at the two grid indices around n, and the interpolation weight t of the upper one."""
        flux, n, hlr, g1, g2 = theta
        j = int(np.clip(np.searchsorted(self.grid, n) - 1, 0, len(self.grid) - 2))
        n0, n1 = self.grid[j], self.grid[j + 1]
        a = self._render(flux, n0, hlr, g1, g2)
        b = self._render(flux, n1, hlr, g1, g2)
        return a, b, (n - n0) / (n1 - n0), n0, n1

    def model(self, theta) -> np.ndarray:
        """The model image at ``theta``: linear in n between the two neighbouring grid values."""
        a, b, t, _, _ = self._bracket_images(theta)
        return (1 - t) * a + t * b

    def _nll_and_gradient(self, theta, image):
        flux, n, hlr, g1, g2 = theta
        a, b, t, n0, n1 = self._bracket_images(theta)
        mu = (1 - t) * a + t * b
        variance = self.sigma**2 + (np.clip(mu, 0.0, None) if self.poisson else 0.0)
        resid = image - mu
        nll = float(np.sum(resid**2 / (2 * variance) + 0.5 * np.log(variance)))
        dnll_dmu = -resid / variance
        if self.poisson:
            dnll_dmu += np.where(mu > 0, 0.5 / variance - resid**2 / (2 * variance**2), 0.0)
        grad = np.empty(5)
        grad[0] = np.sum(dnll_dmu * mu) / flux
        grad[1] = np.sum(dnll_dmu * (b - a)) / (n1 - n0)
        # Radius and shear: forward differences at the nearer grid value only (one render each).
        # The Jacobian differs from the interpolated model's by O(grid step); it enters the
        # gradient multiplied by the residuals, so the optimum moves by a negligible amount.
        near_n, near = (n0, a) if t < 0.5 else (n1, b)
        for i in (2, 3, 4):
            step = np.array([flux, near_n, hlr, g1, g2])
            h = _FD_STEPS[i] if theta[i] + _FD_STEPS[i] <= self.bounds[i, 1] else -_FD_STEPS[i]
            step[i] += h
            grad[i] = np.sum(dnll_dmu * (self._render(*step) - near)) / h
        return nll, grad

    # -- fitting --------------------------------------------------------------------------------
    def fit(self, image, init=None, *, psf_image=None) -> LikelihoodFit:
        """Fit ``image``; start from ``init`` (5 values) or from :func:`initial_guess`.

        Warns
        -----
        ConvergenceWarning
            If L-BFGS-B stops without converging (the estimate is kept, ``converged_`` is False).
        """
        t0 = time.perf_counter()
        image = np.asarray(image, dtype=np.float64)
        size = self.renderer.stamp_size
        if image.shape != (size, size):
            raise GalparamError(f"image of shape {image.shape}: expected ({size}, {size})")
        if not np.isfinite(image).all():
            raise GalparamError("the image holds NaN or infinite values")
        lo, hi = self.bounds[:, 0], self.bounds[:, 1]
        if init is None:
            psf_image = self.renderer.psf_image(self.psf_fwhm) if psf_image is None else psf_image
            init = initial_guess(image, psf_image, pixel_scale=self.renderer.pixel_scale, bounds=self.bounds)
        init = np.clip(np.asarray(init, dtype=np.float64), lo, hi)
        width = hi - lo

        def objective(x):
            value, grad = self._nll_and_gradient(lo + x * width, image)
            return value, grad * width

        res = minimize(
            objective,
            (init - lo) / width,
            jac=True,
            method="L-BFGS-B",
            bounds=[(0.0, 1.0)] * 5,
            options={"maxiter": self.max_iter},
        )
        theta = lo + np.clip(res.x, 0, 1) * width
        self.theta_ = theta
        self.converged_ = bool(res.success)
        self.result_ = FitResult(
            theta,
            bool(res.success),
            float(res.fun),
            int(res.nit),
            int(res.nfev),
            time.perf_counter() - t0,
            str(res.message),
        )
        if not res.success:
            warnings.warn(f"L-BFGS-B did not converge: {res.message}", ConvergenceWarning, stacklevel=2)
        return self


def fit_image(image, *, psf_fwhm: float, sigma: float, init=None, **kwargs) -> FitResult:
    """Fit one image; see :class:`LikelihoodFit` for the keyword arguments."""
    return LikelihoodFit(psf_fwhm=psf_fwhm, sigma=sigma, **kwargs).fit(image, init).result_


__all__ = [
    "DEFAULT_BOUNDS",
    "ConvergenceWarning",
    "FitResult",
    "LikelihoodFit",
    "fit_image",
    "initial_guess",
    "negative_log_likelihood",
]
