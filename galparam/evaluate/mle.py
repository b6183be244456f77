"""Maximum-likelihood fit of the five parameters to one image: the conventional baseline.

The likelihood is the true one of the simulation: each pixel is Gaussian with mean μ_p(θ), the
noiseless model of :mod:`galparam.render`, and variance ``v_p = σ² + μ_p`` (Poisson light plus
read noise), so

    NLL(θ) = Σ_p (d_p − μ_p)² / (2 v_p) + ½ log v_p

(:func:`nll_and_gradient`, the one place it is computed). :class:`LikelihoodFit` is a thin shell
that minimizes it with ``scipy.optimize.minimize(method="L-BFGS-B")`` within a :class:`FitBox`: the
dataset's prior ranges for flux, index and radius, and the prior's disc for the shear.

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

import numpy as np
from scipy.optimize import minimize

from galparam.errors import GalparamError
from galparam.parameters import PARAMETERS, SERSIC_N_LIMITS, TRAINING_SHEAR_AMPLITUDE, sersic_grid
from galparam.render import Renderer

_FD_STEPS = np.array([0.0, 0.0, 1e-4, 1e-4, 1e-4])  # hlr (arcsec), g1, g2: forward differences


class ConvergenceWarning(UserWarning):
    """The optimizer stopped before meeting its convergence criterion."""


def nll_and_weights(image, model, sigma, *, poisson: bool = True):
    """Negative log-likelihood of ``image`` given the noiseless ``model``, and ∂NLL/∂μ per pixel.

    Each pixel is Gaussian with mean μ_p and variance ``v_p = σ² + max(μ_p, 0)`` (without Poisson
    noise ``σ²``): NLL = Σ_p (d_p − μ_p)² / (2 v_p) + ½ log v_p, up to a constant.

    Parameters
    ----------
    image, model : ndarray of shape (S, S), or (B, S, S) for many images
        The observed image and the noiseless model, in counts.
    sigma : float, or array of shape (B,)
        Gaussian noise per pixel, counts.
    poisson : bool
        Add the model's Poisson variance.

    Returns
    -------
    nll : float, or ndarray of shape (B,)
    weights : ndarray like ``model``
        ∂NLL/∂μ_p: the gradient by any parameter θ is Σ_p weights_p ∂μ_p/∂θ.
    """
    model = np.asarray(model)
    sigma = np.asarray(sigma, dtype=np.float64)
    if model.ndim == 3:
        sigma = np.broadcast_to(sigma, model.shape[:1])[:, None, None]
    positive = np.clip(model, 0.0, None)
    variance = sigma**2 + (positive if poisson else 0.0)
    resid = image - model
    nll = np.sum(resid**2 / (2 * variance) + 0.5 * np.log(variance), axis=(-2, -1))
    nll = float(nll) if model.ndim == 2 else nll
    weights = -resid / variance
    if poisson:
        weights += np.where(model > 0, 0.5 / variance - resid**2 / (2 * variance**2), 0.0)
    return nll, weights


def nll_and_gradient(image, model, sigma: float, jacobian=None, *, poisson: bool = True):
    """Negative log-likelihood of ``image`` given the noiseless ``model``, and its gradient.

    See :func:`nll_and_weights` for the likelihood.

    Parameters
    ----------
    image, model : ndarray of shape (S, S), or (B, S, S) for many images
        The observed image and the noiseless model, in counts.
    sigma : float, or array of shape (B,)
        Gaussian noise per pixel, counts.
    jacobian : ndarray of shape (K, S, S), or (B, K, S, S), optional
        ∂μ/∂θ_k of the model by each of K parameters.
    poisson : bool
        Add the model's Poisson variance.

    Returns
    -------
    nll : float, or ndarray of shape (B,)
    gradient : ndarray of shape (K,) or (B, K), or None without ``jacobian``
    """
    nll, weights = nll_and_weights(image, model, sigma, poisson=poisson)
    if jacobian is None:
        return nll, None
    return nll, np.einsum("...kij,...ij->...k", jacobian, weights)


@dataclass(frozen=True)
class FitBox:
    """Where the fit searches: a range for flux (counts), Sérsic index and radius (arcsec), and a
    disc |g| ≤ ``shear_max`` for the shear.

    L-BFGS-B's bounds are a box, while the shear prior is a disc: the fit varies (u1, u2) in the
    square [−1, 1]², mapped onto the disc by the elliptical square-to-disc map (smooth, one to one,
    the identity to first order at the centre), so the bounds stay exact and no |g| beyond the
    prior is ever rendered.
    """

    flux: tuple[float, float]
    sersic_n: tuple[float, float]
    hlr: tuple[float, float]
    shear_max: float

    def __post_init__(self):
        for name in ("flux", "sersic_n", "hlr"):
            low, high = getattr(self, name)
            PARAMETERS[name].check(low)
            PARAMETERS[name].check(high)
            if not low < high:
                raise GalparamError(f"fit box: {name} [{low:g}, {high:g}] is empty; give low < high")
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
        for name in ("flux", "sersic_n", "hlr"):
            prior = spec.priors[name]
            low, high = getattr(default, name)
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
        return np.array([self.flux[0], self.sersic_n[0], self.hlr[0], -1.0, -1.0])

    @property
    def high(self) -> np.ndarray:
        return np.array([self.flux[1], self.sersic_n[1], self.hlr[1], 1.0, 1.0])

    def to_dict(self) -> dict:
        return {
            "flux": list(self.flux),
            "sersic_n": list(self.sersic_n),
            "hlr": list(self.hlr),
            "shear_max": self.shear_max,
        }

    def shear(self, u1, u2):
        """(g1, g2) of the square's point (u1, u2), and the 2×2 Jacobian ∂g/∂u."""
        a1, a2 = np.sqrt(1 - u2**2 / 2), np.sqrt(1 - u1**2 / 2)
        g = self.shear_max * np.array([u1 * a1, u2 * a2])
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


def initial_guess(image, psf_image, *, pixel_scale: float, box: FitBox | None = None) -> np.ndarray:
    """A robust start: flux from the image sum, size and shear from adaptive moments (:func:`adaptive_moments`).

    The PSF's moments are subtracted from the galaxy's (as for Gaussians); where the moments fail
    (very faint images) the middle of the box is used. Sérsic index: 2.

    Returns
    -------
    ndarray of shape (5,): flux, sersic_n, hlr, g1, g2, inside ``box``
    """
    box = box or FitBox.training_prior()
    lo, hi = box.low, box.high
    guess = (lo + hi) / 2
    guess[0] = float(np.sum(image))
    guess[1] = 2.0
    guess[3:] = 0.0
    gal, psf = adaptive_moments(image), adaptive_moments(psf_image)
    if gal is not None and psf is not None:
        size2 = gal[0] ** 2 - psf[0] ** 2
        if size2 > 0:
            # Gaussian: hlr = 1.1774 sigma; Sérsic profiles of moderate n come out ~1.3x larger.
            guess[2] = 1.3 * 1.1774 * np.sqrt(size2) * pixel_scale
            dilution = gal[0] ** 2 / size2
            guess[3], guess[4] = gal[1] * dilution, gal[2] * dilution
    margin = 1e-6 * (hi - lo)
    guess[:3] = np.clip(guess[:3], lo[:3] + margin[:3], hi[:3] - margin[:3])
    return box.to_theta(box.to_variables(guess))


def adaptive_moments(image) -> tuple[float, float, float] | None:
    """The adaptive moments of an image: GalSim's ``hsm.FindAdaptiveMom`` where GalSim is installed,
    else the same elliptical-Gaussian-weight iteration in numpy (it agrees with GalSim's to 1e-4
    in size and shear on this project's galaxies, noisy or not).

    Returns
    -------
    (sigma, g1, g2) or None
        The matched Gaussian's size in pixels (``moments_sigma``) and its reduced shear
        (``observed_shape``); None where the iteration fails (a very faint image).
    """
    image = np.asarray(image, np.float64)
    try:
        import galsim
    except ImportError:
        return _numpy_adaptive_moments(image)
    try:
        m = galsim.hsm.FindAdaptiveMom(galsim.Image(image, scale=1.0))
    except (galsim.GalSimHSMError, galsim.GalSimError):
        return None
    return float(m.moments_sigma), float(m.observed_shape.g1), float(m.observed_shape.g2)


def _numpy_adaptive_moments(image, max_iter: int = 200, tol: float = 1e-6):
    ny, nx = image.shape
    y, x = np.mgrid[0:ny, 0:nx].astype(np.float64)
    cx, cy = (nx - 1) / 2, (ny - 1) / 2
    cov = np.diag([4.0, 4.0])  # the weight's covariance (pixels²), matched to the object's
    for _ in range(max_iter):
        dx, dy = x - cx, y - cy
        inv = np.linalg.inv(cov)
        w = image * np.exp(-0.5 * (inv[0, 0] * dx * dx + 2 * inv[0, 1] * dx * dy + inv[1, 1] * dy * dy))
        total = w.sum()
        if not np.isfinite(total) or total <= 0:
            return None
        cx, cy = cx + (w * dx).sum() / total, cy + (w * dy).sum() / total
        dx, dy = x - cx, y - cy
        moments = np.array([[(w * dx * dx).sum(), (w * dx * dy).sum()], [0.0, (w * dy * dy).sum()]]) / total
        moments[1, 0] = moments[0, 1]
        new = 2.0 * moments  # a Gaussian weighted by its matched Gaussian has half its covariance
        if np.linalg.det(new) <= 0 or not (0 <= cx < nx and 0 <= cy < ny):
            return None
        converged = np.abs(new - cov).max() < tol * np.trace(cov)
        cov = new
        if converged:
            break
    else:
        return None
    sigma = np.linalg.det(cov) ** 0.25
    trace = cov[0, 0] + cov[1, 1]
    e1, e2 = (cov[0, 0] - cov[1, 1]) / trace, 2 * cov[0, 1] / trace
    e = np.hypot(e1, e2)
    factor = 1.0 / (1.0 + np.sqrt(max(1.0 - e * e, 0.0)))  # distortion → reduced shear
    return float(sigma), float(e1 * factor), float(e2 * factor)


@dataclass
class FitResult:
    """One fit: the estimate, whether L-BFGS-B converged, the NLL there, its work and time, and
    (batched fits) the inverse Fisher matrix at the estimate and whether it started from the
    given starting point."""

    theta: np.ndarray
    converged: bool
    nll: float
    iterations: int
    evaluations: int
    seconds: float
    message: str
    covariance: np.ndarray | None = None
    from_init: bool = False


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
    box : FitBox, optional
        Where to search; default the training prior (:meth:`FitBox.training_prior`). For a
        dataset, :meth:`FitBox.from_spec` of its spec.
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
        box: FitBox | None = None,
        renderer: Renderer | None = None,
        grid_size: int = 200,
        max_iter: int = 200,
    ):
        self.psf_fwhm = PARAMETERS["psf_fwhm"].check(psf_fwhm)
        self.sigma = PARAMETERS["sigma"].check(sigma)
        self.poisson = bool(poisson)
        self.box = box or FitBox.training_prior()
        self.renderer = renderer or Renderer()
        n_low, n_high = self.box.sersic_n
        self.grid = sersic_grid(
            max(SERSIC_N_LIMITS[0], n_low - 0.01), min(SERSIC_N_LIMITS[1], n_high + 0.01), grid_size
        )
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

    def model_and_jacobian(self, theta):
        """The model image at ``theta`` and its derivatives by (flux, n, hlr, g1, g2).

        Analytic in the flux, exact for the interpolation in n; radius and shear by forward
        differences at the nearer grid value only (one render each): that Jacobian differs from
        the interpolated model's by O(grid step) and enters the gradient multiplied by the
        residuals, so the optimum moves by a negligible amount.

        Returns
        -------
        model : ndarray of shape (S, S)
        jacobian : ndarray of shape (5, S, S)
        """
        flux, n, hlr, g1, g2 = theta
        a, b, t, n0, n1 = self._bracket_images(theta)
        mu = (1 - t) * a + t * b
        jac = np.empty((5, *mu.shape))
        jac[0] = mu / flux
        jac[1] = (b - a) / (n1 - n0)
        near_n, near = (n0, a) if t < 0.5 else (n1, b)
        for i in (2, 3, 4):  # the box keeps |g| <= 0.95, so a step of 1e-4 stays drawable
            step = np.array([flux, near_n, hlr, g1, g2])
            step[i] += _FD_STEPS[i]
            jac[i] = (self._render(*step) - near) / _FD_STEPS[i]
        return mu, jac

    def _objective(self, x, image):
        """NLL and its gradient in the fit variables (flux, n, hlr, u1, u2)."""
        theta = self.box.to_theta(x)
        mu, jac = self.model_and_jacobian(theta)
        nll, grad = nll_and_gradient(image, mu, self.sigma, jac, poisson=self.poisson)
        _, dg_du = self.box.shear(x[3], x[4])
        grad_x = grad.copy()
        grad_x[3:] = grad[3:] @ dg_du
        return nll, grad_x

    # -- fitting --------------------------------------------------------------------------------
    def fit(self, image, init=None, *, psf_image=None) -> LikelihoodFit:
        """Fit ``image``; start from ``init`` (5 values) or from :func:`initial_guess`.

        A start outside the box is moved onto its edge (the shear onto the disc).

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
        lo, hi = self.box.low, self.box.high
        if init is None:
            psf_image = self.renderer.psf_image(self.psf_fwhm) if psf_image is None else psf_image
            init = initial_guess(image, psf_image, pixel_scale=self.renderer.pixel_scale, box=self.box)
        x0 = self.box.to_variables(np.asarray(init, dtype=np.float64))
        width = hi - lo

        def objective(z):
            value, grad = self._objective(lo + z * width, image)
            return value, grad * width

        res = minimize(
            objective,
            (x0 - lo) / width,
            jac=True,
            method="L-BFGS-B",
            bounds=[(0.0, 1.0)] * 5,
            options={"maxiter": self.max_iter},
        )
        theta = self.box.to_theta(lo + np.clip(res.x, 0, 1) * width)
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


__all__ = [
    "ConvergenceWarning",
    "FitBox",
    "FitResult",
    "LikelihoodFit",
    "initial_guess",
    "nll_and_gradient",
    "nll_and_weights",
]
