"""How well a denoiser restores images: residual RMS (counts), PSNR and SSIM against the noiseless
image, for the restored images beside the noisy input they came from.

PSNR and SSIM take each image's own range as the peak (``data_range`` = max − min of its
noiseless image), since galaxies' brightness spans two decades; SSIM is the Gaussian-window
form of Wang et al. (2004) (σ 1.5 pixels, K1 0.01, K2 0.03, population statistics, the mean over
the pixels at least 5 from the border), as ``skimage.metrics.structural_similarity`` with
``gaussian_weights=True``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage

SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
_CROP = 5  # (window 11 - 1) / 2: pixels whose window leaves the image are left out of the mean

COLUMNS = ("residual_rms", "psnr_db", "ssim")


def _as_stack(images) -> np.ndarray:
    images = np.asarray(images, dtype=np.float64)
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim == 2:
        images = images[None]
    if images.ndim != 3:
        raise ValueError(f"images of shape {images.shape}: expected (N, S, S)")
    return images


def _data_range(clean: np.ndarray) -> np.ndarray:
    span = clean.max(axis=(1, 2)) - clean.min(axis=(1, 2))
    return np.where(span > 0, span, 1.0)


def residual_rms(images, clean) -> np.ndarray:
    """Per image, the root mean square of ``images − clean`` (counts)."""
    images, clean = _as_stack(images), _as_stack(clean)
    return np.sqrt(((images - clean) ** 2).mean(axis=(1, 2)))


def psnr(images, clean) -> np.ndarray:
    """Per image, the peak signal-to-noise ratio in dB, the peak being the noiseless image's range."""
    images, clean = _as_stack(images), _as_stack(clean)
    mse = ((images - clean) ** 2).mean(axis=(1, 2))
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(_data_range(clean) ** 2 / mse)


def ssim(images, clean) -> np.ndarray:
    """Per image, the mean structural similarity to the noiseless image (1 for identical images)."""
    x, y = _as_stack(images), _as_stack(clean)
    if x.shape != y.shape:
        raise ValueError(f"images {x.shape} and clean {y.shape} differ in shape")

    def blur(a):
        return ndimage.gaussian_filter(a, sigma=(0, SSIM_SIGMA, SSIM_SIGMA), truncate=3.5, mode="reflect")

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    span = _data_range(y)[:, None, None]
    c1, c2 = (SSIM_K1 * span) ** 2, (SSIM_K2 * span) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s[:, _CROP:-_CROP, _CROP:-_CROP].mean(axis=(1, 2))


def restoration_scores(images, clean) -> pd.DataFrame:
    """Per image: ``residual_rms``, ``psnr_db`` and ``ssim`` of ``images`` against ``clean``."""
    return pd.DataFrame(
        {"residual_rms": residual_rms(images, clean), "psnr_db": psnr(images, clean), "ssim": ssim(images, clean)}
    )


def summarize(scores: pd.DataFrame) -> dict:
    """One row of a restoration table: the residual RMS over all pixels (the root of the mean
    squared residual), the mean PSNR and the mean SSIM."""
    return {
        "residual_rms": float(np.sqrt((scores["residual_rms"] ** 2).mean())),
        "psnr_db": float(scores["psnr_db"].mean()),
        "ssim": float(scores["ssim"].mean()),
    }


def restoration_metrics(noisy, denoised, clean) -> dict:
    """``{"noisy": {...}, "denoised": {...}}``: :func:`summarize` of the noisy input and of the
    restored images against the noiseless ones (what a denoiser run's ``metrics.json`` holds)."""
    return {
        "noisy": summarize(restoration_scores(noisy, clean)),
        "denoised": summarize(restoration_scores(denoised, clean)),
    }


def restoration_by_snr(noisy, denoised, clean, snr, edges=(0, 20, 40, 60, 100, np.inf)) -> pd.DataFrame:
    """The restoration table by SNR bin: per bin, the images, and residual RMS, PSNR and SSIM of
    the noisy and the denoised images, with the PSNR gain (dB).

    Parameters
    ----------
    noisy : array_like of shape (N, S, S)
        The noisy images (counts).
    denoised : array_like of shape (N, S, S)
        The same images restored.
    clean : array_like of shape (N, S, S)
        The noiseless images.
    snr : array_like of shape (N,)
        Each image's signal-to-noise ratio (the dataset's ``snr`` column).
    edges : sequence of float
        Bin edges; the last row is every image.
    """
    noisy_scores = restoration_scores(noisy, clean)
    denoised_scores = restoration_scores(denoised, clean)
    snr = np.asarray(snr, dtype=np.float64)
    bins = pd.cut(snr, np.asarray(edges, dtype=np.float64), right=False)
    rows = []
    groups = [(str(b), bins == b) for b in bins.categories] + [("all", np.ones(len(snr), bool))]
    for label, mask in groups:
        mask = np.asarray(mask)
        if not mask.any():
            continue
        n, d = summarize(noisy_scores[mask]), summarize(denoised_scores[mask])
        rows.append(
            {
                "snr_bin": label,
                "images": int(mask.sum()),
                **{f"noisy_{k}": v for k, v in n.items()},
                **{f"denoised_{k}": v for k, v in d.items()},
                "psnr_gain_db": d["psnr_db"] - n["psnr_db"],
            }
        )
    return pd.DataFrame(rows)
