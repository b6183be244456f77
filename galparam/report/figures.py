"""The report's figures: each drawn from a computed :class:`~galparam.report.content.Report` for one
item (a test set, a network, a denoiser, a fit, a search) into its file (:mod:`galparam.report.layout`)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from galparam.evaluate.fitbox import FitBox
from galparam.evaluate.metrics import estimator_metrics
from galparam.io import atomic_path
from galparam.parameters import LABEL_NAMES, PARAMETERS
from galparam.plots import denoising_panels
from galparam.render import GalSimRenderer, renderer_for


def _save(fig, path: Path) -> Path:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def _units(label: str) -> str:
    unit = PARAMETERS[label].unit
    return f" [{unit}]" if unit else ""


def plot_true_vs_predicted(truth, predicted, snr, title: str, path: Path) -> Path:
    """Five panels: estimate against truth, points coloured by SNR."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 5, figsize=(17, 3.6), constrained_layout=True)
    for i, (ax, label) in enumerate(zip(axes, LABEL_NAMES, strict=True)):
        points = ax.scatter(truth[:, i], predicted[:, i], c=snr, s=4, cmap="viridis", vmin=10, vmax=100)
        low, high = truth[:, i].min(), truth[:, i].max()
        ax.plot([low, high], [low, high], color="k", lw=0.8)
        ax.set(xlabel=f"true {label}{_units(label)}", ylabel=f"estimated {label}")
    fig.colorbar(points, ax=axes, label="SNR")
    fig.suptitle(title)
    return _save(fig, path)


def plot_error_vs_true(truth, predicted, title: str, path: Path) -> Path:
    """Five panels: error (estimate − truth) against the true value."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 5, figsize=(17, 3.4), constrained_layout=True)
    for i, (ax, label) in enumerate(zip(axes, LABEL_NAMES, strict=True)):
        ax.scatter(truth[:, i], predicted[:, i] - truth[:, i], s=3, alpha=0.5)
        ax.axhline(0, color="k", lw=0.8)
        ax.set(xlabel=f"true {label}{_units(label)}", ylabel=f"error in {label}")
    fig.suptitle(title)
    return _save(fig, path)


def plot_error_histograms(ts, estimates: dict, path: Path) -> Path:
    """Per parameter, each estimator's error histogram with the bound's Gaussian N(0, CRB²)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 5, figsize=(17, 3.4), constrained_layout=True)
    for i, (ax, label) in enumerate(zip(axes, LABEL_NAMES, strict=True)):
        crb = ts.bound[i]
        edges = np.linspace(-5 * crb, 5 * crb, 41)
        for name, values in estimates.items():
            ax.hist(
                np.clip(values[:, i] - ts.truth[i], edges[0], edges[-1]),
                edges,
                density=True,
                histtype="step",
                label=name,
            )
        x = np.linspace(edges[0], edges[-1], 200)
        ax.plot(x, np.exp(-0.5 * (x / crb) ** 2) / (crb * np.sqrt(2 * np.pi)), "k--", lw=1, label="N(0, CRB²)")
        ax.set(xlabel=f"error in {label}{_units(label)}")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Errors on the SNR {ts.snr} test set (clipped to ±5 CRB)")
    return _save(fig, path)


def plot_bias_spread(ts, estimates: dict, path: Path) -> Path:
    """Bias / CRB and std / CRB per parameter and estimator (1 is the bound)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8), constrained_layout=True)
    x = np.arange(len(LABEL_NAMES))
    width = 0.8 / max(len(estimates), 1)
    for k, (name, values) in enumerate(estimates.items()):
        m = estimator_metrics(np.tile(ts.truth, (len(values), 1)), values, ts.bound)
        axes[0].bar(x + k * width, m["bias/crb"], width, label=name)
        axes[1].bar(x + k * width, m["std/crb"], width, label=name)
    for ax, what in zip(axes, ("bias / CRB", "std / CRB"), strict=True):
        ax.axhline(1 if what.startswith("std") else 0, color="k", lw=0.8)
        ax.set_xticks(x + 0.4 - width / 2, LABEL_NAMES)
        ax.set_ylabel(what)
    axes[1].legend(fontsize=7)
    fig.suptitle(f"Bias and spread against the Cramér–Rao bound, SNR {ts.snr}")
    return _save(fig, path)


def plot_reconstructions(dataset, indices, estimated, title: str, path: Path) -> Path:
    """Rows of images: noisy, noiseless, re-rendered from the estimate, residual (noisy − re-rendered)."""
    import matplotlib.pyplot as plt

    spec = dataset.spec
    renderer = renderer_for(GalSimRenderer.NAME, spec.geometry)
    box = FitBox.from_spec(spec)  # a network's estimate may stray outside what can be drawn
    fig, axes = plt.subplots(len(indices), 4, figsize=(9, 2.3 * len(indices)), constrained_layout=True, squeeze=False)
    for row, (i, theta) in enumerate(zip(indices, estimated, strict=True)):
        theta = box.to_theta(box.to_variables(np.asarray(theta, dtype=np.float64)))
        rendered = renderer.image(*theta, float(dataset.psf_fwhm[i]), dtype=np.float64)
        panels = (dataset.img[i], dataset.img_nonoise[i], rendered, dataset.img[i] - rendered)
        for ax, image, name in zip(axes[row], panels, ("noisy", "noiseless", "re-rendered", "residual"), strict=True):
            ax.imshow(image, origin="lower", cmap="gray" if name != "residual" else "RdBu_r")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name)
    fig.suptitle(title)
    return _save(fig, path)


def plot_denoising(noisy, denoised, clean, title: str, path: Path) -> Path:
    """:func:`galparam.plots.denoising_panels`, written to ``path``."""
    fig = denoising_panels(noisy, denoised, clean)
    fig.suptitle(title)
    return _save(fig, path)


def plot_efficiency(table: pd.DataFrame, title: str, path: Path) -> Path:
    """Heat maps of RMSE / bound: one panel per binned variable, parameters × bins."""
    import matplotlib.pyplot as plt

    groups = list(table.groupby("by", sort=False))
    # one colour scale for every panel (the colour bar's), from the bound (1) or below where an
    # estimator beats it everywhere (a biased one can)
    ratios = table["rms err/crb"].to_numpy(dtype=np.float64)
    vmin = min(1.0, np.nanmin(ratios)) if np.isfinite(ratios).any() else 1.0
    vmax = max(np.nanmax(ratios), vmin + 1e-3) if np.isfinite(ratios).any() else vmin + 1.0
    fig, axes = plt.subplots(1, len(groups), figsize=(3.2 * len(groups), 3.2), constrained_layout=True, squeeze=False)
    for ax, (by, part) in zip(axes[0], groups, strict=True):
        grid = part.pivot(index="parameter", columns="bin", values="rms err/crb").reindex(list(LABEL_NAMES))
        grid = grid[list(dict.fromkeys(part["bin"]))]
        image = ax.imshow(grid.to_numpy(), cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
        ax.set_yticks(range(len(LABEL_NAMES)), LABEL_NAMES)
        starts = [f"{float(b.split(',')[0].strip('[')):.3g}" for b in grid.columns]
        ax.set_xticks(range(grid.shape[1]), starts, rotation=60, fontsize=7)
        ax.set_xlabel(f"{by} (bin start)")
        for (i, j), v in np.ndenumerate(grid.to_numpy()):
            ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=6, color="w")
    fig.colorbar(image, ax=axes[0, -1], label="RMSE / CRB")
    fig.suptitle(title)
    return _save(fig, path)


def plot_reliability(table: pd.DataFrame, title: str, path: Path) -> Path:
    """The reliability diagram: observed against nominal coverage of central intervals, per parameter."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 4), constrained_layout=True)
    ax.plot([0, 1], [0, 1], color="k", lw=0.8, label="calibrated")
    for label in LABEL_NAMES:
        ax.plot(table["level"], table[label], marker=".", label=label)
    ax.set_xlabel("nominal coverage")
    ax.set_ylabel("observed coverage")
    ax.legend(fontsize=7)
    fig.suptitle(title)
    return _save(fig, path)


# ----------------------------------------------------------------------------- a report's items


def errors(report, snr, path: Path) -> Path:
    """The test set's error histograms (:func:`plot_error_histograms`)."""
    return plot_error_histograms(report.test_sets[snr], report.estimates[snr], path)


def bias_spread(report, snr, path: Path) -> Path:
    """The test set's bias and spread against the bound (:func:`plot_bias_spread`)."""
    return plot_bias_spread(report.test_sets[snr], report.estimates[snr], path)


def denoising(report, name, path: Path) -> Path:
    """A denoiser's first validation images (:func:`plot_denoising`)."""
    ds, val, restored = report.restored[name]
    shown = val[:4]
    title = f"{name} on the {ds.spec.name} validation split"
    return plot_denoising(ds.img[shown], restored[:4], ds.img_nonoise[shown], title, path)


def true_vs_predicted(report, name, path: Path) -> Path:
    """A network's estimates against the truth on its validation split."""
    v = report.validated[name]
    title = f"{name} on the {v.dataset.spec.name} validation split"
    return plot_true_vs_predicted(v.truth, v.predicted, v.dataset.snr[v.indices], title, path)


def error_vs_true(report, name, path: Path) -> Path:
    """A network's errors against the truth on its validation split."""
    v = report.validated[name]
    return plot_error_vs_true(v.truth, v.predicted, f"{name} on the {v.dataset.spec.name} validation split", path)


def reconstructions(report, name, path: Path) -> Path:
    """A network's first validation images re-drawn from its estimates."""
    v = report.validated[name]
    return plot_reconstructions(v.dataset, v.indices[:4], v.predicted[:4], f"{name}: reconstructions", path)


def efficiency(report, name, path: Path) -> Path:
    """An estimator's RMSE over each image's bound, as heat maps (:func:`plot_efficiency`)."""
    return plot_efficiency(report.validated[name].checks["efficiency"], f"{name}: RMSE / each image's bound", path)


def reliability(report, name, path: Path) -> Path:
    """A network's reliability diagram (:func:`plot_reliability`)."""
    return plot_reliability(report.validated[name].checks["reliability"], f"{name}: reliability", path)


def search(report, name, path: Path) -> Path:
    """A search's trials: the figure its dashboard drew, copied."""
    with atomic_path(path, suffix=".png") as tmp:
        shutil.copyfile(report.search_plots[name], tmp)
    return path
