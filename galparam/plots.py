"""Figures for looking at datasets and trainings in a notebook (each returns a matplotlib Figure).

The report's figures (true vs predicted, errors against the bound, reconstructions) are written by
:mod:`galparam.report`; these are the exploratory ones the notebooks show.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from galparam.parameters import LABEL_NAMES
from galparam.runs import RunFolder


def galaxy_images(dataset, indices):
    """Columns of galaxies: the noisy image, the noiseless image and the PSF, with their parameters.

    Parameters
    ----------
    dataset : galparam.data.Dataset
        A loaded dataset (:func:`galparam.load_dataset`).
    indices : sequence of int
        Which images.
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, len(indices), figsize=(2.4 * len(indices), 7.6), squeeze=False, constrained_layout=True)
    for col, i in enumerate(indices):
        psf = dataset.psf_img[i if len(dataset.psf_img) > 1 else 0]
        panels = (dataset.img[i], dataset.img_nonoise[i], psf)
        for row, (image, name) in enumerate(zip(panels, ("noisy", "noiseless", "PSF"), strict=True)):
            ax = axes[row, col]
            ax.imshow(image, origin="lower", cmap="gray")
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(name)
        flux, n, hlr, g1, g2 = dataset.label[i]
        axes[0, col].set_title(
            f"#{i}  SNR {dataset.snr[i]:.0f}\nflux {flux:.3g}, n {n:.2f}\nhlr {hlr:.2f}″, g ({g1:.2f}, {g2:.2f})",
            fontsize=8,
        )
        axes[2, col].set_xlabel(f"PSF FWHM {dataset.psf_fwhm[i]:.2f}″, σ {dataset.sigma[i]:.0f}", fontsize=7)
    fig.suptitle(dataset.spec.name)
    return fig


def snr_histograms(datasets: dict, bins: int = 45):
    """Each dataset's SNR distribution (``datasets``: name → loaded Dataset)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6), constrained_layout=True)
    high = max(float(ds.snr.max()) for ds in datasets.values())
    edges = np.linspace(0, high * 1.02, bins + 1)
    for name, ds in datasets.items():
        ax.hist(ds.snr, edges, histtype="step", density=True, label=f"{name} ({len(ds)} images)")
    ax.set(xlabel="SNR = sqrt(Σ I²) / σ of the noiseless image", ylabel="density")
    ax.legend(fontsize=8)
    return fig


def learning_curves(run_dirs):
    """Training and validation loss per epoch of each run and stage (from each run's ``history.csv``)."""
    import matplotlib.pyplot as plt

    panels = []
    for run_dir in map(Path, run_dirs):
        history = pd.read_csv(RunFolder(run_dir).history_path)
        for stage, rows in history.groupby("stage", sort=False):
            panels.append((f"{run_dir.name}: {stage}", rows))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.2), squeeze=False, constrained_layout=True)
    for ax, (title, rows) in zip(axes[0], panels, strict=True):
        ax.plot(rows["epoch"], rows["loss"], "o-", label="training")
        ax.plot(rows["epoch"], rows["val_loss"], "s-", label="validation")
        ax.set(title=title, xlabel="epoch", ylabel="loss")
        ax.set_xticks(rows["epoch"])
        ax.title.set_fontsize(9)
    axes[0, 0].legend(fontsize=8)
    return fig


def autoencoder_reconstructions(estimator, dataset, indices):
    """Rows: noisy image, noiseless image, the decoder's image of the encoder's estimate, and their difference.

    Parameters
    ----------
    estimator : galparam.estimator.Estimator
        A trained autoencoder (:func:`galparam.load_estimator`).
    dataset : galparam.data.Dataset
        The images to encode and their noiseless versions.
    indices : sequence of int
        Which images.
    """
    import matplotlib.pyplot as plt

    indices = list(indices)
    estimated = estimator.predict(dataset.img[indices])[list(LABEL_NAMES)].to_numpy()
    decoded = estimator.reconstruct(estimated)
    rows = (
        ("noisy", dataset.img[indices]),
        ("noiseless", dataset.img_nonoise[indices]),
        ("decoded", decoded),
        ("noiseless − decoded", dataset.img_nonoise[indices] - decoded),
    )
    fig, axes = plt.subplots(4, len(indices), figsize=(2.3 * len(indices), 9), squeeze=False, constrained_layout=True)
    for r, (name, images) in enumerate(rows):
        for c, image in enumerate(images):
            ax = axes[r, c]
            ax.imshow(image, origin="lower", cmap="RdBu_r" if r == 3 else "gray")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name)
    fig.suptitle("conditional autoencoder: image → parameters → noiseless image")
    return fig


def denoising_panels(noisy, denoised, clean):
    """Rows of images: noisy, denoised, noiseless (one colour scale per row, the noiseless image's),
    and denoised − noiseless (symmetric about zero).

    Parameters
    ----------
    noisy, denoised, clean : array_like of shape (N, S, S)
        Counts; :meth:`galparam.estimator.Denoiser.denoise` gives ``denoised``.
    """
    import matplotlib.pyplot as plt

    noisy, denoised, clean = (np.asarray(a, dtype=np.float64) for a in (noisy, denoised, clean))
    names = ("noisy", "denoised", "noiseless", "denoised − noiseless")
    fig, axes = plt.subplots(len(noisy), 4, figsize=(9, 2.3 * len(noisy)), constrained_layout=True, squeeze=False)
    for row, panels in enumerate(zip(noisy, denoised, clean, denoised - clean, strict=True)):
        low, high = float(panels[2].min()), float(panels[2].max())
        for col, (ax, image, name) in enumerate(zip(axes[row], panels, names, strict=True)):
            limit = float(np.abs(image).max()) or 1.0
            scale = (
                {"cmap": "RdBu_r", "vmin": -limit, "vmax": limit}
                if col == 3
                else {"cmap": "gray", "vmin": low, "vmax": high}
            )
            ax.imshow(image, origin="lower", **scale)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name)
    return fig
