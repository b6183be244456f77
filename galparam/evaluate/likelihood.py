"""The likelihood of an image given its noiseless model: the one place it is computed.

Each pixel is Gaussian with mean μ_p(θ), the noiseless model of :mod:`galparam.render`, and
variance ``v_p = σ_p² + μ_p / gain`` (Poisson light plus read noise; galparam's own datasets are in
electrons, gain 1, with one σ per image), so

    NLL(θ) = Σ_p (d_p − μ_p)² / (2 v_p) + ½ log v_p

up to a constant, over the pixels a mask keeps: the true likelihood of the simulation, and of a
real cutout given its σ map, mask and gain. The fits (:mod:`galparam.evaluate.fit`),
the out-of-distribution check and the bounds' noise model all read it here.
"""

from __future__ import annotations

import numpy as np


def pixel_variance(model, sigma, *, poisson: bool = True, gain: float | None = None, xp=np) -> np.ndarray:
    """Each pixel's variance: ``σ² + max(μ_p, 0) / gain`` (``σ²`` without Poisson noise).

    Parameters
    ----------
    model : ndarray of shape (S, S), or (B, S, S) for many images
        The noiseless model, counts.
    sigma : float, array of shape (B,), or a σ map like ``model``
        Gaussian noise per pixel, counts.
    poisson : bool
        Add the model's Poisson variance.
    gain : float, optional
        Electrons per count (default 1: the counts are electrons).
    xp : module
        The array library: ``numpy``, or ``jax.numpy`` inside a traced device computation.

    Returns
    -------
    ndarray like ``model``
    """
    model = xp.asarray(model)
    sigma = xp.asarray(sigma, dtype=model.dtype if xp is not np else np.float64)
    if model.ndim == 3 and sigma.ndim <= 1:
        sigma = xp.broadcast_to(sigma, model.shape[:1])[:, None, None]
    if not poisson:
        return sigma**2 + 0.0
    light = xp.clip(model, 0.0, None)
    return sigma**2 + (light if gain is None else light / gain)


def nll_and_weights(image, model, sigma, *, poisson: bool = True, gain: float | None = None, mask=None, xp=np):
    """Negative log-likelihood of ``image`` given the noiseless ``model``, and ∂NLL/∂μ per pixel.

    Each pixel is Gaussian with mean μ_p and variance ``v_p = σ_p² + max(μ_p, 0) / gain`` (without
    Poisson noise ``σ_p²``): NLL = Σ_p (d_p − μ_p)² / (2 v_p) + ½ log v_p, up to a constant, over
    the pixels ``mask`` keeps.

    Parameters
    ----------
    image, model : ndarray of shape (S, S), or (B, S, S) for many images
        The observed image and the noiseless model, in counts.
    sigma : float, array of shape (B,), or a σ map like ``model``
        Gaussian noise per pixel, counts.
    poisson : bool
        Add the model's Poisson variance.
    gain : float, optional
        Electrons per count (default 1).
    mask : bool ndarray like ``model``, optional
        The pixels to count (True); the others add nothing to the NLL and get weight 0.
    xp : module
        The array library: ``numpy``, or ``jax.numpy`` inside a traced device computation.

    Returns
    -------
    nll : float, or ndarray of shape (B,)
    weights : ndarray like ``model``
        ∂NLL/∂μ_p: the gradient by any parameter θ is Σ_p weights_p ∂μ_p/∂θ.
    """
    model = xp.asarray(model)
    variance = pixel_variance(model, sigma, poisson=poisson, gain=gain, xp=xp)
    resid = image - model
    terms = resid**2 / (2 * variance) + 0.5 * xp.log(variance)
    if mask is not None:
        terms = xp.where(mask, terms, 0.0)
    nll = xp.sum(terms, axis=(-2, -1))
    nll = float(nll) if model.ndim == 2 and xp is np else nll
    weights = -resid / variance
    if poisson:
        light = xp.where(model > 0, 0.5 / variance - resid**2 / (2 * variance**2), 0.0)
        weights = weights + (light if gain is None else light / gain)
    if mask is not None:
        weights = xp.where(mask, weights, 0.0)
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
