"""Fisher information and the Cramér–Rao bound of the five galaxy parameters.

For pixel noise that is Gaussian with variance ``v_p = σ² (+ μ_p with Poisson noise)``,

    F_ij = Σ_p (∂μ_p/∂θ_i)(∂μ_p/∂θ_j) / v_p,

and the standard deviation of any unbiased estimator of θ_i is at least ``sqrt((F⁻¹)_ii)``. The
model image μ comes from :mod:`galparam.render`; its derivatives are central differences (the flux
derivative is exact: μ is linear in the flux). The Sérsic index is differentiated on the exact,
undiscretized profile.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from galparam.errors import GalparamError
from galparam.parameters import LABEL_NAMES, SERSIC_N_LIMITS, check_parameters
from galparam.render import Renderer

DEFAULT_STEPS = {"sersic_n": 0.01, "hlr": 0.003, "g1": 1e-3, "g2": 1e-3}
"""Central-difference steps: absolute for n, g1, g2; relative to the radius for hlr. Halving them
changes the bounds by less than 1e-4 relative at the test-set galaxy."""


def image_derivatives(theta, psf_fwhm: float, *, renderer: Renderer | None = None, scale: float = 1.0):
    """The model image and its derivatives by each parameter.

    Parameters
    ----------
    theta : array_like of shape (5,)
        flux (counts), sersic_n, hlr (arcsec), g1, g2.
    psf_fwhm : float
        Moffat FWHM in arcsec.
    renderer : Renderer, optional
        The forward model (a default one if not given).
    scale : float
        Multiplies every finite-difference step (to check that the result does not depend on it).

    Returns
    -------
    mu : ndarray of shape (S, S), float64
    jac : ndarray of shape (5, S, S), float64
        ∂μ/∂θ_i.
    """
    renderer = renderer or Renderer()
    theta = np.asarray(theta, dtype=np.float64)
    mu = renderer.image(*theta, psf_fwhm, dtype=np.float64)
    jac = np.empty((5, *mu.shape))
    jac[0] = mu / theta[0]
    steps = {
        1: DEFAULT_STEPS["sersic_n"] * scale,
        2: DEFAULT_STEPS["hlr"] * scale * theta[2],
        3: DEFAULT_STEPS["g1"] * scale,
        4: DEFAULT_STEPS["g2"] * scale,
    }
    for i, h in steps.items():
        hi, lo = theta.copy(), theta.copy()
        hi[i] += h
        lo[i] -= h
        if i == 1:  # stay inside GalSim's range: one-sided at the edges
            hi[1], lo[1] = min(hi[1], SERSIC_N_LIMITS[1]), max(lo[1], SERSIC_N_LIMITS[0])
        up = renderer.image(*hi, psf_fwhm, dtype=np.float64)
        down = renderer.image(*lo, psf_fwhm, dtype=np.float64)
        jac[i] = (up - down) / (hi[i] - lo[i])
    return mu, jac


def fisher_matrix(
    theta, psf_fwhm: float, sigma: float, *, poisson: bool = True, renderer: Renderer | None = None, scale: float = 1.0
) -> np.ndarray:
    """The 5×5 Fisher information matrix of (flux, sersic_n, hlr, g1, g2).

    Parameters
    ----------
    theta : array_like of shape (5,)
        The true parameters.
    psf_fwhm : float
        PSF FWHM in arcsec.
    sigma : float
        Gaussian noise level per pixel, counts.
    poisson : bool
        Add the model's Poisson variance ``μ_p`` to ``σ²``.
    renderer : Renderer, optional
        The forward model.
    scale : float
        Multiplies the finite-difference steps.

    Returns
    -------
    ndarray of shape (5, 5)
    """
    theta = check_parameters(theta, psf_fwhm, sigma)
    mu, jac = image_derivatives(theta, psf_fwhm, renderer=renderer, scale=scale)
    variance = sigma**2 + (np.clip(mu, 0.0, None) if poisson else np.zeros_like(mu))
    flat = jac.reshape(5, -1)
    return (flat / variance.ravel()) @ flat.T


@dataclass
class Bound:
    """The Cramér–Rao bound at one parameter vector."""

    theta: np.ndarray
    fisher: np.ndarray
    covariance: np.ndarray

    @property
    def std(self) -> pd.Series:
        """Lower bound on each parameter's standard deviation."""
        return pd.Series(np.sqrt(np.diag(self.covariance)), index=list(LABEL_NAMES))

    @property
    def correlation(self) -> pd.DataFrame:
        d = np.sqrt(np.diag(self.covariance))
        return pd.DataFrame(self.covariance / np.outer(d, d), index=list(LABEL_NAMES), columns=list(LABEL_NAMES))


def cramer_rao(theta, psf_fwhm: float, sigma: float, *, poisson: bool = True, renderer=None, scale=1.0) -> Bound:
    """The Cramér–Rao bound (inverse Fisher matrix) at ``theta``; see :func:`fisher_matrix`.

    Raises
    ------
    GalparamError
        If a parameter is out of range or the Fisher matrix is singular.
    """
    fisher = fisher_matrix(theta, psf_fwhm, sigma, poisson=poisson, renderer=renderer, scale=scale)
    # Condition on the parameter scales so a flux of 1e5 and a shear of 0.1 invert together.
    d = np.sqrt(np.diag(fisher))
    if not np.all(d > 0):
        raise GalparamError("the Fisher matrix is singular: the image does not constrain every parameter")
    covariance = np.linalg.inv(fisher / np.outer(d, d)) / np.outer(d, d)
    return Bound(np.asarray(theta, dtype=np.float64), fisher, covariance)


def dataset_bounds(dataset, indices=None, *, poisson: bool | None = None, progress: bool = True) -> pd.DataFrame:
    """The bound of every image of a dataset at its own true parameters, PSF and noise.

    Parameters
    ----------
    dataset : galparam.data.Dataset
        A loaded dataset (its labels, PSF FWHM and sigma are used).
    indices : array_like of int, optional
        Which images (default all).
    poisson : bool, optional
        Default: as the dataset was simulated.
    progress : bool
        Show a progress bar.

    Returns
    -------
    DataFrame indexed by image, one column per label (the bound on its standard deviation)
    """
    from tqdm.auto import tqdm

    spec = dataset.spec
    poisson = spec.poisson_noise if poisson is None else poisson
    renderer = Renderer(stamp_size=spec.stamp_size, pixel_scale=spec.pixel_scale, psf_beta=spec.psf_beta)
    indices = np.arange(len(dataset)) if indices is None else np.asarray(indices)
    rows, cache = [], {}
    for i in tqdm(indices, desc="bounds", disable=not progress):
        key = (*dataset.label[i].tolist(), float(dataset.psf_fwhm[i]), float(dataset.sigma[i]))
        if key not in cache:  # fixed-parameter test sets: one bound for all images
            theta = dataset.label[i].astype(np.float64)
            cache[key] = cramer_rao(theta, key[5], key[6], poisson=poisson, renderer=renderer).std.to_numpy()
        rows.append(cache[key])
    return pd.DataFrame(np.array(rows), index=pd.Index(indices, name="index"), columns=list(LABEL_NAMES))
