"""The GalSim-path likelihood fit: one image at a time on GalSim's own drawing, the reference.

Each image is fitted by ``scipy.optimize.minimize(method="L-BFGS-B")`` within the
:class:`~galparam.evaluate.fitbox.FitBox` on GalSim's ``drawImage`` (:class:`galparam.render.GalSimRenderer`).
It has the API of every fit (:class:`~galparam.evaluate.fit.Fit`) and is what the tests hold the
batched k-space fit (:class:`~galparam.evaluate.fit.BatchedFit`, the default, ~15× faster) to.

Speed: a new Sérsic index makes GalSim build tables (4–300 ms). The fit never asks for one: the
model at index n interpolates linearly between the images at the two neighbouring values of a fine
grid (200 values over [0.5, 6]; the interpolation error is below 1e-5 counts per count of the
peak), whose profiles the renderer keeps. The gradient is analytic in the flux, exact for the
interpolation in n and by forward differences in the radius and the shear.
"""

from __future__ import annotations

import time

import numpy as np
from scipy.optimize import minimize

from galparam.errors import GalparamError
from galparam.evaluate.crb import cramer_rao
from galparam.evaluate.fit import Fit, FitResult, check_images
from galparam.evaluate.fitbox import FitBox
from galparam.evaluate.likelihood import nll_and_gradient
from galparam.evaluate.start import initial_guess
from galparam.parameters import SERSIC_N_LIMITS, sersic_grid
from galparam.render import GalSimRenderer, renderer_for

_FD_STEPS = np.array([0.0, 0.0, 1e-4, 1e-4, 1e-4])  # hlr (arcsec), g1, g2: forward differences


class GalSimFit(Fit):
    """Fits (flux, sersic_n, hlr, g1, g2) to images by maximum likelihood, one at a time, on GalSim.

    Parameters
    ----------
    box : FitBox, optional
        Where to search; default the training prior (:meth:`FitBox.training_prior`). For a
        dataset, :meth:`FitBox.from_spec` of its spec.
    poisson : bool
        Whether the images have Poisson noise on the galaxy light.
    renderer : GalSimRenderer, optional
        The forward model (its geometry must be the images'; default the reference geometry's).
    grid_size : int
        Values of the Sérsic grid the model interpolates on.
    max_iter : int
        L-BFGS-B iterations at most, per image.

    Attributes
    ----------
    As :class:`~galparam.evaluate.fit.Fit`, after :meth:`fit`.
    """

    def __init__(
        self,
        *,
        box: FitBox | None = None,
        poisson: bool = True,
        renderer: GalSimRenderer | None = None,
        grid_size: int = 200,
        max_iter: int = 200,
    ):
        self.box = box or FitBox.training_prior()
        self.poisson = bool(poisson)
        self.renderer = renderer or renderer_for(GalSimRenderer.NAME)
        self.grid = sersic_grid(
            max(SERSIC_N_LIMITS[0], self.box.sersic_n.low - 0.01),
            min(SERSIC_N_LIMITS[1], self.box.sersic_n.high + 0.01),
            grid_size,
        )
        self.max_iter = int(max_iter)

    # -- the model ------------------------------------------------------------------------------
    def _render(self, flux, n_value, hlr, g1, g2, psf_fwhm):
        return self.renderer.image(flux, n_value, hlr, g1, g2, psf_fwhm, dtype=np.float64)

    def _bracket_images(self, theta, psf_fwhm):
        """Images at the two grid indices around n, and the interpolation weight t of the upper one."""
        flux, n, hlr, g1, g2 = theta
        j = int(np.clip(np.searchsorted(self.grid, n) - 1, 0, len(self.grid) - 2))
        n0, n1 = self.grid[j], self.grid[j + 1]
        a = self._render(flux, n0, hlr, g1, g2, psf_fwhm)
        b = self._render(flux, n1, hlr, g1, g2, psf_fwhm)
        return a, b, (n - n0) / (n1 - n0), n0, n1

    def model(self, theta, psf_fwhm: float) -> np.ndarray:
        """The model image at ``theta``: linear in n between the two neighbouring grid values."""
        a, b, t, _, _ = self._bracket_images(theta, psf_fwhm)
        return (1 - t) * a + t * b

    def model_and_jacobian(self, theta, psf_fwhm: float):
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
        a, b, t, n0, n1 = self._bracket_images(theta, psf_fwhm)
        mu = (1 - t) * a + t * b
        jac = np.empty((5, *mu.shape))
        jac[0] = mu / flux
        jac[1] = (b - a) / (n1 - n0)
        near_n, near = (n0, a) if t < 0.5 else (n1, b)
        for i in (2, 3, 4):  # the box keeps |g| <= 0.95, so a step of 1e-4 stays drawable
            step = np.array([flux, near_n, hlr, g1, g2])
            step[i] += _FD_STEPS[i]
            jac[i] = (self._render(*step, psf_fwhm) - near) / _FD_STEPS[i]
        return mu, jac

    def _objective(self, x, image, psf_fwhm, sigma):
        """NLL and its gradient in the fit variables (flux, n, hlr, u1, u2)."""
        theta = self.box.to_theta(x)
        mu, jac = self.model_and_jacobian(theta, psf_fwhm)
        nll, grad = nll_and_gradient(image, mu, sigma, jac, poisson=self.poisson)
        _, dg_du = self.box.shear(x[3], x[4])
        grad_x = grad.copy()
        grad_x[3:] = grad[3:] @ dg_du
        return nll, grad_x

    # -- fitting --------------------------------------------------------------------------------
    def fit(self, images, psf_fwhm, sigma, init=None, *, psf_images=None) -> GalSimFit:
        """Fit each image; start from ``init`` (as given, moved into the box) or from
        :func:`~galparam.evaluate.start.initial_guess`.

        Parameters
        ----------
        images : ndarray of shape (B, S, S), or (S, S) for one
            The observed images, counts.
        psf_fwhm, sigma : array_like of shape (B,) or scalars
            Each image's PSF FWHM (arcsec) and Gaussian noise (counts).
        init : ndarray of shape (B, 5), optional
            Starting points.
        psf_images : ndarray of shape (B, S, S), optional
            The PSF images the moment-based start needs (default: drawn).

        Returns
        -------
        GalSimFit
            This fitter, its results in the attributes of :class:`~galparam.evaluate.fit.Fit`;
            ``covariance_`` is the Cramér–Rao bound at each estimate (GalSim differences).

        Warns
        -----
        ConvergenceWarning
            Once, with the count, if some fits stopped without converging (their estimates are kept).
        """
        images, psf_fwhm, sigma, init = check_images(images, psf_fwhm, sigma, init, self.renderer.geometry.shape)
        results = []
        for b, image in enumerate(images):
            t0 = time.perf_counter()
            if init is None:
                psf = self.renderer.psf_image(psf_fwhm[b]) if psf_images is None else psf_images[b]
                start = initial_guess(image, psf, pixel_scale=self.renderer.geometry.pixel_scale, box=self.box)
            else:
                start = init[b]
            result = self._fit_one(image, psf_fwhm[b], sigma[b], start)
            result.from_init = init is not None
            result.seconds = time.perf_counter() - t0
            results.append(result)
        self._keep(results)
        return self

    def _fit_one(self, image, psf_fwhm: float, sigma: float, start) -> FitResult:
        lo, hi = self.box.low, self.box.high
        x0 = self.box.to_variables(np.asarray(start, dtype=np.float64))
        width = hi - lo

        def objective(z):
            value, grad = self._objective(lo + z * width, image, psf_fwhm, sigma)
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
        try:
            covariance = cramer_rao(theta, psf_fwhm, sigma, poisson=self.poisson, renderer=self.renderer).covariance
        except GalparamError:
            covariance = np.full((5, 5), np.nan)
        return FitResult(
            theta, bool(res.success), float(res.fun), int(res.nit), int(res.nfev), 0.0, str(res.message), covariance
        )
