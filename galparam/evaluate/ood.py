"""Out-of-distribution flags: which images are unlike a network's training data, and why.

An image is flagged where its noise level, PSF or SNR lies outside what the run trained on (its
``run.json``'s ``training_range``), or where the image is poorly explained by the model re-drawn
from the network's estimate: a χ² per pixel above the 99th percentile of the run's own validation
images. Each image's noise σ, PSF FWHM and SNR are taken from a galparam dataset's columns when
the caller has them; otherwise σ is estimated from the stamp's border (the median absolute
deviation of its outer 4 pixels), the PSF FWHM from the PSF image (its effective area, matched
to the renderer's PSF images) or, for a run trained on one PSF, taken as that one, and the SNR from the re-drawn model
(sqrt(Σ model²) / σ, the datasets' definition).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from galparam.evaluate.fitbox import FitBox
from galparam.evaluate.likelihood import pixel_variance
from galparam.geometry import Geometry
from galparam.parameters import LABEL_NAMES
from galparam.psf import PSF_FWHM_GRID, fwhm_by_effective_area
from galparam.render import KSpaceRenderer, renderer_for

BORDER_PX = 4
CHI2_QUANTILE = 0.99
RANGE_SLACK = {"sigma": 0.15, "psf_fwhm": 0.05, "snr": 0.1}
"""How far (relative) past a training bound a value is still in range: a border σ scatters by up
to ~10 % where a large galaxy reaches the border; the PSF's FWHM is measured to ~1e-3; an SNR
from the re-drawn estimate is as good as the flux estimate."""


def border_sigma(images) -> np.ndarray:
    """Each image's noise σ from its border pixels (1.4826 × the median absolute deviation)."""
    images = np.asarray(images, dtype=np.float64)
    mask = np.zeros(images.shape[1:], bool)
    mask[:BORDER_PX], mask[-BORDER_PX:], mask[:, :BORDER_PX], mask[:, -BORDER_PX:] = True, True, True, True
    frame = images[:, mask]
    return 1.4826 * np.median(np.abs(frame - np.median(frame, axis=1, keepdims=True)), axis=1)


def psf_fwhm_from_images(psf_images, geometry: Geometry) -> np.ndarray:
    """Each PSF image's FWHM (arcsec): its effective area (Σp)² / Σp² matched to the renderer's own
    PSF images of known FWHM (:data:`~galparam.psf.PSF_FWHM_GRID`), which are drawn the same way."""
    reference = renderer_for(KSpaceRenderer.NAME, geometry).psf_images(PSF_FWHM_GRID)
    return fwhm_by_effective_area(psf_images, reference, PSF_FWHM_GRID)


def redraw(estimates, psf_fwhm, geometry: Geometry, box: FitBox) -> np.ndarray:
    """The noiseless images of the estimates, each first clipped into ``box`` (a network's
    estimate may stray outside what can be drawn)."""
    theta = box.clip(estimates)
    renderer = renderer_for(KSpaceRenderer.NAME, geometry)
    psf = np.broadcast_to(np.asarray(psf_fwhm, dtype=np.float64), (len(theta),))
    return renderer.images(*theta.T, psf, dtype=np.float64)


def chi2_per_pixel(images, models, sigma, *, poisson: bool = True) -> np.ndarray:
    """Mean over pixels of (image − model)² / (σ² + the model's Poisson counts)."""
    images, models = np.asarray(images, dtype=np.float64), np.asarray(models, dtype=np.float64)
    var = pixel_variance(models, sigma, poisson=poisson)
    return ((images - models) ** 2 / var).mean(axis=(1, 2))


def training_range(dataset, rows, chi2, box, chi2_border_sigma=None) -> dict:
    """What :func:`flag` compares with: the training images' σ, PSF FWHM and SNR ranges, the
    ``CHI2_QUANTILE`` of the validation images' χ² per pixel under the network's estimates (with
    their true σ, and with σ measured from their border, ``chi2_border_sigma``: a σ measured a few
    per cent low raises every χ²), and the box estimates are clipped into before they are drawn."""
    rows = np.asarray(rows)
    span = {
        name: [float(getattr(dataset, name)[rows].min()), float(getattr(dataset, name)[rows].max())]
        for name in ("sigma", "psf_fwhm", "snr")
    }
    out = {**span, "chi2_per_pixel_q99": float(np.quantile(chi2, CHI2_QUANTILE)), "box": box.to_dict()}
    if chi2_border_sigma is not None:
        out["chi2_per_pixel_q99_border_sigma"] = float(np.quantile(chi2_border_sigma, CHI2_QUANTILE))
    return out


def _outside(values, low_high, slack: float) -> np.ndarray:
    low, high = low_high
    return (values < low * (1 - slack)) | (values > high * (1 + slack))


def flag(ranges: dict, *, sigma, psf_fwhm, snr, chi2, chi2_limit: float | None = None) -> pd.DataFrame:
    """Columns ``ood`` (bool) and ``ood_reason`` (empty, or every reason joined by ``; ``);
    ``chi2_limit`` defaults to ``ranges["chi2_per_pixel_q99"]``."""
    limit = ranges["chi2_per_pixel_q99"] if chi2_limit is None else chi2_limit
    checks = [
        ("noise sigma", "sigma", np.asarray(sigma, dtype=np.float64), "{:.0f}"),
        ("PSF FWHM", "psf_fwhm", np.asarray(psf_fwhm, dtype=np.float64), "{:.2f}\u2033"),
        ("SNR", "snr", np.asarray(snr, dtype=np.float64), "{:.1f}"),
    ]
    n = len(np.asarray(chi2))
    reasons = [[] for _ in range(n)]
    for name, key, values, fmt in checks:
        values, span = np.broadcast_to(values, (n,)), ranges[key]
        for i in np.flatnonzero(_outside(values, span, RANGE_SLACK[key])):
            reasons[i].append(
                f"{name} {fmt.format(values[i])} outside the training {fmt.format(span[0])}–{fmt.format(span[1])}"
            )
    chi2 = np.asarray(chi2, dtype=np.float64)
    for i in np.flatnonzero(chi2 > limit):
        reasons[i].append(f"chi2 per pixel {chi2[i]:.2f} above the validation images' 99th percentile {limit:.2f}")
    return pd.DataFrame({"ood": [bool(r) for r in reasons], "ood_reason": ["; ".join(r) for r in reasons]})


def check_images(run_info: dict, images, estimates, *, sigma=None, psf_fwhm=None, psf_images=None) -> pd.DataFrame:
    """:func:`flag` for images a run estimated, measuring what the caller does not give.

    Parameters
    ----------
    run_info : dict
        The run's ``run.json`` (its ``training_range`` and ``geometry``).
    images : array_like of shape (N, S, S)
        The images, in counts.
    estimates : array_like of shape (N, 5)
        The network's estimates (physical units).
    sigma, psf_fwhm : array_like of shape (N,), optional
        Each image's noise σ and PSF FWHM (a galparam dataset's columns).
    psf_images : array_like of shape (N, S, S), optional
        PSF images, measured where ``psf_fwhm`` is not given.

    Returns
    -------
    DataFrame
        ``ood``, ``ood_reason``, and the ``sigma``, ``psf_fwhm``, ``snr`` and ``chi2_per_pixel`` used.
    """
    ranges, geometry = run_info["training_range"], Geometry.from_dict(run_info["geometry"])
    images = np.asarray(images, dtype=np.float64)
    measured = sigma is None
    sigma = border_sigma(images) if measured else np.broadcast_to(np.asarray(sigma, dtype=np.float64), (len(images),))
    if psf_fwhm is None:
        if psf_images is not None:
            psf_fwhm = psf_fwhm_from_images(psf_images, geometry)
        else:  # a run trained on one PSF: the images are assumed to share it (their size is checked)
            psf_fwhm = np.full(len(images), ranges["psf_fwhm"][0])
    psf_fwhm = np.broadcast_to(np.asarray(psf_fwhm, dtype=np.float64), (len(images),))
    box = FitBox.from_dict(ranges["box"])
    models = redraw(np.asarray(estimates)[:, : len(LABEL_NAMES)], psf_fwhm, geometry, box)
    chi2 = chi2_per_pixel(images, models, sigma, poisson=run_info["geometry"].get("poisson_noise", True))
    snr = np.sqrt((models**2).sum(axis=(1, 2))) / sigma
    limit = ranges.get("chi2_per_pixel_q99_border_sigma") if measured else None
    table = flag(ranges, sigma=sigma, psf_fwhm=psf_fwhm, snr=snr, chi2=chi2, chi2_limit=limit)
    return table.assign(sigma=sigma, psf_fwhm=psf_fwhm, snr=snr, chi2_per_pixel=chi2)
