"""What the explorer shows, computed by the library: one galaxy drawn from its parameters with its
noise, bound and estimates; a dataset filtered, with a run's predictions against each image's bound.

The web app (:mod:`galparam.explorer_app`, started by ``galparam-explore``) holds layout and
widgets only; every number and image it shows comes from here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from galparam.data import load_dataset
from galparam.errors import GalparamError
from galparam.estimator import load_estimator
from galparam.evaluate.crb import cramer_rao, dataset_bounds
from galparam.evaluate.fit import BatchedFit
from galparam.parameters import LABEL_NAMES
from galparam.render import KSpaceRenderer, renderer_for
from galparam.simulate import add_noise

RUNS_ENV = "GALPARAM_EXPLORE_RUNS"
"""How ``galparam-explore`` passes the run folders to the app (separated by ``os.pathsep``)."""
DATASET_ENV = "GALPARAM_EXPLORE_DATASET"
"""How ``galparam-explore`` passes the dataset to the app."""

TRAINING_SNR_WINDOW = (10.0, 100.0)
"""The SNR window of galparam's training sets (``snr_window`` of ``data/v1.yaml``, ``v2``, ``v3``)."""

SLIDERS = {
    # name: (low, high, default, step): the training prior, widened where drawing allows
    "flux": (1.0e4, 1.0e6, 1.0e5, 1.0e3),
    "sersic_n": (0.5, 6.0, 3.0, 0.05),
    "hlr": (0.1, 1.0, 0.3, 0.01),
    "shear_amplitude": (0.0, 0.9, 0.165, 0.005),
    "shear_angle_deg": (0.0, 180.0, 57.3, 0.5),
    "psf_fwhm": (0.4, 1.2, 0.5, 0.01),
    "sigma": (50.0, 800.0, 200.0, 5.0),
}
"""The Simulate page's sliders: range, default (the test-set galaxy at SNR 60) and step."""


@dataclass(frozen=True)
class Point:
    """One galaxy and how it is observed (the Simulate page's sliders)."""

    flux: float = SLIDERS["flux"][2]
    sersic_n: float = SLIDERS["sersic_n"][2]
    hlr: float = SLIDERS["hlr"][2]
    shear_amplitude: float = SLIDERS["shear_amplitude"][2]
    shear_angle_deg: float = SLIDERS["shear_angle_deg"][2]
    psf_fwhm: float = SLIDERS["psf_fwhm"][2]
    sigma: float = SLIDERS["sigma"][2]
    poisson: bool = True
    seed: int = 0

    @property
    def g1(self) -> float:
        return self.shear_amplitude * math.cos(2 * math.radians(self.shear_angle_deg))

    @property
    def g2(self) -> float:
        return self.shear_amplitude * math.sin(2 * math.radians(self.shear_angle_deg))

    @property
    def theta(self) -> np.ndarray:
        """(flux, sersic_n, hlr, g1, g2)."""
        return np.array([self.flux, self.sersic_n, self.hlr, self.g1, self.g2])


@dataclass
class View:
    """A drawn point: its images, its SNR and the bound there."""

    point: Point
    noiseless: np.ndarray
    noisy: np.ndarray
    psf: np.ndarray
    snr: float
    in_window: bool
    bound: object  # galparam.evaluate.crb.Bound


def draw(point: Point, renderer=None, *, window=TRAINING_SNR_WINDOW) -> View:
    """Draw a point: noiseless, noisy (the datasets' noise, seeded by ``point.seed``) and PSF
    images, the SNR and whether it lies in ``window``, and the Cramér–Rao bound there (exact
    derivatives of the k-space model).

    Raises
    ------
    GalparamError
        If a parameter is outside what can be drawn.
    """
    renderer = renderer or renderer_for(KSpaceRenderer.NAME)
    theta = point.theta
    noiseless = renderer.images(*theta, point.psf_fwhm, dtype=np.float64)[0]
    noisy = add_noise(noiseless, point.sigma, np.random.default_rng(point.seed), poisson=point.poisson)
    snr = float(np.sqrt(np.sum(noiseless**2)) / point.sigma)
    bound = cramer_rao(theta, point.psf_fwhm, point.sigma, poisson=point.poisson, renderer=renderer)
    return View(
        point,
        noiseless,
        noisy,
        renderer.psf_image(point.psf_fwhm),
        snr,
        window[0] <= snr <= window[1],
        bound,
    )


def estimate(view: View, estimators: dict) -> pd.DataFrame:
    """Each run's estimate from the noisy image, and its error in units of the bound.

    Parameters
    ----------
    view : View
        A drawn point.
    estimators : dict of str to Estimator
        Loaded runs by name.

    Returns
    -------
    DataFrame indexed by (run, quantity) with quantity ``estimate`` and ``error/bound``, one
    column per label; the truth and the bound first.
    """
    truth, std = view.point.theta, view.bound.std.to_numpy()
    rows = {("truth", "value"): truth, ("bound", "std"): std}
    for name, estimator in estimators.items():
        psf = view.psf[None] if estimator.psf_input else None
        value = estimator.predict(view.noisy[None].astype(np.float32), psf)[list(LABEL_NAMES)].to_numpy()[0]
        rows[(name, "estimate")] = value
        rows[(name, "error/bound")] = (value - truth) / std
    table = pd.DataFrame.from_dict(rows, orient="index", columns=list(LABEL_NAMES))
    table.index = pd.MultiIndex.from_tuples(table.index, names=["row", "quantity"])
    return table


def fit(view: View, renderer=None):
    """The maximum-likelihood fit of the noisy image (k-space batched fit), its estimate's error
    in units of the bound, and the residual image (noisy − model at the estimate).

    Returns
    -------
    result : galparam.evaluate.fit.FitResult
    errors : Series
        (estimate − truth) / bound per label.
    residual : ndarray (S, S)
    """
    renderer = renderer or renderer_for(KSpaceRenderer.NAME)
    point = view.point
    fitter = BatchedFit(poisson=point.poisson, renderer=renderer)
    result = fitter.fit(view.noisy[None], point.psf_fwhm, point.sigma, psf_images=view.psf[None]).results_[0]
    model = renderer.images(*result.theta, point.psf_fwhm, dtype=np.float64)[0]
    errors = pd.Series((result.theta - point.theta) / view.bound.std.to_numpy(), index=list(LABEL_NAMES))
    return result, errors, view.noisy - model


def stretch(image: np.ndarray, kind: str = "linear") -> np.ndarray:
    """An image scaled to [0, 1] for display: ``linear`` (min to max) or ``log`` (asinh-like:
    log(1 + x/s) of the image above its minimum, s a tenth of a percent of its range)."""
    image = np.asarray(image, dtype=np.float64)
    low, high = float(image.min()), float(image.max())
    span = high - low if high > low else 1.0
    x = (image - low) / span
    if kind == "log":
        x = np.log1p(x / 1e-3) / np.log1p(1 / 1e-3)
    elif kind != "linear":
        raise GalparamError(f"stretch {kind!r}: accepted linear, log")
    return np.clip(x, 0.0, 1.0)


# ----------------------------------------------------------------------------- datasets


def load(dataset_path):
    """A dataset, memory-mapped (see :func:`galparam.data.load_dataset`)."""
    return load_dataset(dataset_path, mmap=True)


FILTER_COLUMNS = (*LABEL_NAMES, "psf_fwhm", "sigma", "snr")
"""The dataset page's filters, in order."""


def metadata(dataset) -> pd.DataFrame:
    """One row per image: the labels, PSF FWHM, σ and SNR, indexed by image."""
    table = pd.DataFrame(np.asarray(dataset.label, dtype=np.float64), columns=list(LABEL_NAMES))
    table["psf_fwhm"] = np.asarray(dataset.psf_fwhm, dtype=np.float64)
    table["sigma"] = np.asarray(dataset.sigma, dtype=np.float64)
    table["snr"] = np.asarray(dataset.snr, dtype=np.float64)
    table.index.name = "index"
    return table


def select(table: pd.DataFrame, ranges: dict) -> pd.DataFrame:
    """The rows of ``table`` whose columns lie within ``ranges`` (column → (low, high), inclusive)."""
    keep = np.ones(len(table), dtype=bool)
    for column, (low, high) in ranges.items():
        keep &= table[column].between(low, high).to_numpy()
    return table[keep]


def predictions(dataset, estimator, indices, *, batch_size: int = 256) -> pd.DataFrame:
    """A run's predictions of some images beside the truth, with each error in units of the
    image's own bound (:func:`galparam.evaluate.crb.dataset_bounds`, k-space).

    Returns
    -------
    DataFrame indexed by image: ``<label>`` (truth), ``<label>_pred`` and ``<label>_err/crb``
    per label, and ``snr``.
    """
    indices = np.sort(np.asarray(indices, dtype=np.int64))
    if not len(indices):
        return pd.DataFrame()
    psf = dataset.psf_images(indices) if estimator.psf_input else None
    predicted = estimator.predict(dataset.img[indices], psf, batch_size=batch_size)[list(LABEL_NAMES)].to_numpy()
    truth = np.asarray(dataset.label[indices], dtype=np.float64)
    bound = dataset_bounds(dataset, indices, progress=False).to_numpy()
    out = pd.DataFrame(index=pd.Index(indices, name="index"))
    for i, name in enumerate(LABEL_NAMES):
        out[name] = truth[:, i]
        out[f"{name}_pred"] = predicted[:, i]
        out[f"{name}_err/crb"] = (predicted[:, i] - truth[:, i]) / bound[:, i]
    out["snr"] = np.asarray(dataset.snr[indices], dtype=np.float64)
    return out


def check_runs(run_dirs) -> dict:
    """Load finished runs by folder name, or raise naming the first that is not one.

    Raises
    ------
    GalparamError
        A missing, unfinished or foreign run folder.
    """
    estimators = {}
    for run_dir in run_dirs:
        estimators[Path(run_dir).name] = load_estimator(run_dir)
    return estimators


__all__ = [
    "DATASET_ENV",
    "RUNS_ENV",
    "FILTER_COLUMNS",
    "Point",
    "SLIDERS",
    "TRAINING_SNR_WINDOW",
    "View",
    "check_runs",
    "draw",
    "estimate",
    "fit",
    "load",
    "metadata",
    "predictions",
    "select",
    "stretch",
]
