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
from galparam.evaluate.likelihood import pixel_variance
from galparam.parameters import LABEL_NAMES, SERSIC_N_LIMITS, check_parameters
from galparam.render import RENDERERS, GalSimRenderer, KSpaceRenderer, renderer_for
from galparam.schema import STAMP_COLUMNS, Draws
from galparam.stamp_model import StampConfig, stamp_model_for

DEFAULT_STEPS = {"sersic_n": 0.01, "hlr": 0.003, "g1": 1e-3, "g2": 1e-3}
"""Central-difference steps: absolute for n, g1, g2; relative to the radius for hlr. Halving them
changes the bounds by less than 1e-4 relative at the test-set galaxy."""


def image_derivatives(theta, psf_fwhm: float, *, renderer=None, scale: float = 1.0):
    """The model image and its derivatives by each parameter.

    Parameters
    ----------
    theta : array_like of shape (5,)
        flux (counts), sersic_n, hlr (arcsec), g1, g2.
    psf_fwhm : float
        Moffat FWHM in arcsec.
    renderer : GalSimRenderer or KSpaceRenderer, optional
        The forward model (default GalSim's, differentiated by central differences; the k-space
        renderer gives exact derivatives).
    scale : float
        Multiplies every finite-difference step (to check that the result does not depend on it).

    Returns
    -------
    mu : ndarray of shape (S, S), float64
    jac : ndarray of shape (5, S, S), float64
        ∂μ/∂θ_i.
    """
    renderer = renderer or renderer_for(GalSimRenderer.NAME)
    theta = np.asarray(theta, dtype=np.float64)
    if hasattr(renderer, "images_and_jacobians"):  # the k-space model: exact derivatives
        mu, jac = renderer.images_and_jacobians(*theta, psf_fwhm)
        return mu[0], jac[0]
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
    theta, psf_fwhm: float, sigma: float, *, poisson: bool = True, renderer=None, scale: float = 1.0
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
    renderer : GalSimRenderer or KSpaceRenderer, optional
        The forward model (default GalSim's).
    scale : float
        Multiplies the finite-difference steps.

    Returns
    -------
    ndarray of shape (5, 5)
    """
    theta = check_parameters(theta, psf_fwhm, sigma)
    mu, jac = image_derivatives(theta, psf_fwhm, renderer=renderer, scale=scale)
    return fisher_matrices(mu[None], jac[None], sigma, poisson=poisson)[0]


def fisher_matrices(
    model, jacobian, sigma, *, poisson: bool = True, gain: float | None = None, mask=None, xp=np
) -> np.ndarray:
    """Fisher matrices of many images: ``F_ij = Σ_p ∂_i μ_p ∂_j μ_p / v_p``, ``v_p = σ_p² (+ μ_p / gain)``.

    Parameters
    ----------
    model : ndarray of shape (B, S, S)
        The noiseless models, counts.
    jacobian : ndarray of shape (B, K, S, S)
        Their derivatives by K parameters.
    sigma : array_like of shape (B,), a scalar or a σ map like ``model``
        Gaussian noise per pixel, counts.
    poisson : bool
        Add the model's Poisson variance to σ².
    gain : float, optional
        Electrons per count (default 1).
    mask : bool ndarray like ``model``, optional
        The pixels that count (the others carry no information).
    xp : module
        The array library: ``numpy``, or ``jax.numpy`` inside a traced device computation.

    Returns
    -------
    ndarray of shape (B, K, K)
    """
    variance = pixel_variance(model, sigma, poisson=poisson, gain=gain, xp=xp)
    flat = jacobian.reshape(*jacobian.shape[:2], -1)
    if mask is None:
        return xp.einsum("bip,bjp->bij", flat / variance.reshape(model.shape[0], 1, -1), flat)
    information = xp.where(mask, 1.0 / variance, 0.0)  # per pixel, none where masked
    return xp.einsum("bip,bjp->bij", flat * information.reshape(model.shape[0], 1, -1), flat)


def covariances(fisher: np.ndarray) -> np.ndarray:
    """Inverses of Fisher matrices (B, K, K), conditioned on their diagonals; NaN where singular."""
    d = np.sqrt(np.clip(np.diagonal(fisher, axis1=1, axis2=2), 0.0, None))
    out = np.full_like(fisher, np.nan)
    ok = np.all(d > 0, axis=1)
    if ok.any():
        scale = d[ok, :, None] * d[ok, None, :]
        try:
            out[ok] = np.linalg.inv(fisher[ok] / scale) / scale
        except np.linalg.LinAlgError:
            for i in np.flatnonzero(ok):
                try:
                    s = np.outer(d[i], d[i])
                    out[i] = np.linalg.inv(fisher[i] / s) / s
                except np.linalg.LinAlgError:
                    pass
    return out


def batch_bounds(theta, psf_fwhm, sigma, *, poisson: bool = True, renderer=None) -> np.ndarray:
    """Cramér–Rao covariances of many galaxies from the k-space model's exact Jacobian.

    Parameters
    ----------
    theta : array_like of shape (B, 5)
        flux, sersic_n, hlr, g1, g2 of each galaxy.
    psf_fwhm, sigma : array_like of shape (B,) or scalars
        PSF FWHM (arcsec) and Gaussian noise per pixel (counts).
    poisson : bool
        Add the model's Poisson variance.
    renderer : galparam.render.KSpaceRenderer, optional
        The forward model (default: the reference geometry's).

    Returns
    -------
    ndarray of shape (B, 5, 5)
        The inverse Fisher matrices (NaN where an image does not constrain every parameter).
    """
    renderer = renderer or renderer_for(KSpaceRenderer.NAME)
    theta = np.atleast_2d(np.asarray(theta, dtype=np.float64))
    mu, jac = renderer.images_and_jacobians(*theta.T, psf_fwhm)
    return covariances(fisher_matrices(mu, jac, sigma, poisson=poisson))


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


BOUND_BATCH = 64
"""Images per call of the k-space model in :func:`dataset_bounds`."""


def dataset_bounds(
    dataset, indices=None, *, poisson: bool | None = None, progress: bool = True, renderer: str = "kspace"
) -> pd.DataFrame:
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
    renderer : {"kspace", "galsim"}
        How the model is differentiated (:data:`galparam.render.RENDERERS`): the k-space model's
        exact Jacobian, many images a call, or GalSim's images by central differences (the reference).

    Returns
    -------
    DataFrame indexed by image, one column per label (the bound on its standard deviation)
    """
    from tqdm.auto import tqdm

    if renderer not in RENDERERS:
        raise GalparamError(f"renderer {renderer!r}: accepted {', '.join(RENDERERS)}", argument="renderer")
    spec = dataset.spec
    poisson = spec.poisson_noise if poisson is None else poisson
    indices = np.arange(len(dataset)) if indices is None else np.asarray(indices)
    if spec.stamp_model:
        if renderer != KSpaceRenderer.NAME:
            raise GalparamError(
                f"renderer {renderer}: {dataset.path} was drawn with PSF images or centre and sky priors, whose "
                "bounds come from the k-space stamp model's exact derivatives (renderer kspace)",
                argument="renderer",
            )
        return stamp_dataset_bounds(dataset, indices, poisson=poisson, progress=progress)
    model = renderer_for(renderer, spec.geometry)
    # fixed-parameter test sets: one bound serves every image
    keys = np.column_stack([dataset.label[indices], dataset.psf_fwhm[indices], dataset.sigma[indices]]).astype(
        np.float64
    )
    unique, inverse = np.unique(keys, axis=0, return_inverse=True)
    std = np.empty((len(unique), len(LABEL_NAMES)))
    bar = tqdm(total=len(unique), desc="bounds", unit="img", disable=not progress)
    if renderer == KSpaceRenderer.NAME:
        for a in range(0, len(unique), BOUND_BATCH):
            block = unique[a : a + BOUND_BATCH]
            cov = batch_bounds(block[:, :5], block[:, 5], block[:, 6], poisson=poisson, renderer=model)
            std[a : a + len(block)] = np.sqrt(np.diagonal(cov, axis1=1, axis2=2))
            bar.update(len(block))
    else:
        for row, key in enumerate(unique):
            std[row] = cramer_rao(key[:5], key[5], key[6], poisson=poisson, renderer=model).std.to_numpy()
            bar.update(1)
    bar.close()
    return pd.DataFrame(std[np.ravel(inverse)], index=pd.Index(indices, name="index"), columns=list(LABEL_NAMES))


def stamp_dataset_bounds(dataset, indices, *, poisson: bool, progress: bool = True) -> pd.DataFrame:
    """:func:`dataset_bounds` of a dataset drawn with the stamp model (:mod:`galparam.stamp_model`):
    each image's Fisher matrix by its five labels and by the centre and sky where the spec's prior
    lets them vary (an estimator must find them too), from the exact derivatives of the model that
    drew it; the bound on each label is then marginalized over them."""
    from tqdm.auto import tqdm

    spec = dataset.spec
    if spec.psf is not None:
        spec.psf.require("bounds", dataset.path)
    model = stamp_model_for(StampConfig.from_spec(spec))
    stamp = np.column_stack(
        [dataset.extra["centre"][indices], dataset.extra["sky"][indices], dataset.extra["psf_index"][indices]]
    )
    draws = Draws(np.column_stack([dataset.label[indices], dataset.psf_fwhm[indices], dataset.sigma[indices]]), stamp)
    free = list(range(len(LABEL_NAMES))) + [
        len(LABEL_NAMES) + j for j, name in enumerate(STAMP_COLUMNS[:3]) if spec.varies(name)
    ]
    std = np.empty((len(indices), len(LABEL_NAMES)))
    bar = tqdm(total=len(indices), desc="bounds", unit="img", disable=not progress)
    for a in range(0, len(indices), BOUND_BATCH):
        block = draws[a : a + BOUND_BATCH]
        images, jacobians = model.images_and_jacobians(block)
        fisher = fisher_matrices(images, jacobians[:, free], block.sigma, poisson=poisson)
        cov = covariances(fisher)
        std[a : a + len(block)] = np.sqrt(np.diagonal(cov, axis1=1, axis2=2))[:, : len(LABEL_NAMES)]
        bar.update(len(block))
    bar.close()
    return pd.DataFrame(std, index=pd.Index(indices, name="index"), columns=list(LABEL_NAMES))
