"""The likelihood-fit baseline over a dataset: parallel, written row by row, resumable.

``fits.csv`` gets one row per image, in dataset order, appended as each fit finishes; a run that
is interrupted continues after the last complete row when started again. A JSON file beside it
(``fits.csv.json``) records which dataset and settings the rows belong to, so rows of another
dataset are never mixed in.
"""

from __future__ import annotations

import csv
import multiprocessing
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from galparam.data import load_dataset
from galparam.errors import GalparamError
from galparam.estimator import load_estimator
from galparam.evaluate.fit import BatchedFit, ConvergenceWarning
from galparam.evaluate.fitbox import FitBox
from galparam.evaluate.galsim_fit import GalSimFit
from galparam.evaluate.stamp_fit import StampFit
from galparam.jobs import resolve_jobs
from galparam.parameters import LABEL_NAMES
from galparam.render import RENDERERS, GalSimRenderer, KSpaceRenderer, renderer_for
from galparam.row_files import open_row_file
from galparam.runs import RunFolder
from galparam.stamp import Stamp
from galparam.stamp_model import StampConfig, stamp_model_for

CORRELATED = (("flux", "sersic_n"), ("flux", "hlr"), ("sersic_n", "hlr"))
"""Pairs whose correlation a fits file records (strongly correlated at these SNRs)."""

FIT_COLUMNS = (
    "index",
    *LABEL_NAMES,
    *(f"{name}_err" for name in LABEL_NAMES),
    *(f"corr_{a}_{b}" for a, b in CORRELATED),
    "converged",
    "nll",
    "iterations",
    "evaluations",
    "seconds",
    "from_init",
)
"""The columns of ``fits.csv``: the estimate, its uncertainty (the square root of the inverse
Fisher matrix's diagonal at the estimate) and correlations, the fit's work, and whether it
started from the given starting point (``--init``) rather than the moments' one."""

FITS = {KSpaceRenderer.NAME: BatchedFit, GalSimRenderer.NAME: GalSimFit}
"""The fit on each renderer: batched fits on the k-space model with its exact Jacobian, or one
GalSim fit at a time (the reference)."""

FIT_BATCH = {KSpaceRenderer.NAME: 128, GalSimRenderer.NAME: 1}
"""Images a worker's task fits; its rows are written together when it ends."""

FIT_CONCURRENCY = 32
"""Fits under way at once in a task: each round evaluates up to this many images together, and a
finished fit hands its place to the next image (1.3× the throughput of fixed batches of 32)."""


def _rows(indices, fitter) -> list[list]:
    """``fits.csv`` rows of a fitter's results (:class:`~galparam.evaluate.fit.Fit`)."""
    at = {name: i for i, name in enumerate(LABEL_NAMES)}
    rows = []
    labels = len(LABEL_NAMES)  # a stamp fit's centre and sky are left out
    for k, (index, r) in enumerate(zip(indices, fitter.results_, strict=True)):
        err = fitter.std_[k]
        corr = [fitter.covariance_[k, at[a], at[b]] / (err[at[a]] * err[at[b]]) for a, b in CORRELATED]
        rows.append(
            [
                index,
                *r.theta[:labels].tolist(),
                *err[:labels].tolist(),
                *(round(float(c), 6) for c in corr),
                int(r.converged),
                r.nll,
                r.iterations,
                r.evaluations,
                round(r.seconds, 5),
                int(r.from_init),
            ]
        )
    return rows


def _fit_task(task) -> list[list]:
    """Rows of one task: a batch of images (k-space) or one image (GalSim)."""
    indices, images, psf_fwhm, sigma, poisson, geometry, box, init, renderer, stamps = task
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # recorded in the 'converged' column
        if stamps is not None:
            return _rows(indices, _fit_stamps(images, psf_fwhm, sigma, poisson, init, *stamps))
        fitter = FITS[renderer](box=box, poisson=poisson, renderer=renderer_for(renderer, geometry))
        options = {"concurrency": FIT_CONCURRENCY} if renderer == KSpaceRenderer.NAME else {}
        return _rows(indices, fitter.fit(images, psf_fwhm, sigma, init, **options))


def _fit_stamps(images, psf_fwhm, sigma, poisson, init, config: StampConfig, psf_index, fit_sky: bool) -> StampFit:
    """A survey-like dataset's images fitted as stamps (:class:`~galparam.evaluate.stamp_fit.StampFit`)
    with each image's own PSF, the centre free and the sky where its prior varies."""
    model = stamp_model_for(config)
    stamps = [
        Stamp.from_arrays(
            image,
            model.frame(psf_index[k] if model.frames is not None else psf_fwhm[k]),
            noise_sigma=float(sigma[k]),
            gain=1.0 if poisson else None,
        )
        for k, image in enumerate(images)
    ]
    if init is not None:  # a network's five labels, at the stamp's centre on no sky
        init = np.column_stack([init, np.zeros((len(init), 3))])
    return StampFit(fit_sky=fit_sky).fit(stamps, init)


def run_baseline(
    dataset_path,
    output,
    *,
    n_images: int | None = None,
    jobs: int | None = None,
    init=None,
    init_source: dict | None = None,
    renderer: str = "kspace",
    overwrite: bool = False,
    progress: bool = True,
) -> pd.DataFrame:
    """Fit the first ``n_images`` images of a dataset by maximum likelihood.

    Parameters
    ----------
    dataset_path : path
        A galparam dataset (``.npz``).
    output : path
        The ``fits.csv`` to write (columns :data:`FIT_COLUMNS`).
    n_images : int, optional
        How many images, from the first (default all).
    jobs : int, optional
        Worker processes (default: every core, :func:`galparam.jobs.resolve_jobs`).
    init : ndarray of shape (n_images, 5), optional
        Starting points (e.g. a network's estimates); default
        :func:`~galparam.evaluate.start.initial_guess` (adaptive moments).
    init_source : dict, optional
        Where ``init`` came from (recorded beside the fits, e.g. ``{"init_model": name}``).
    renderer : {"kspace", "galsim"}
        The forward model of the fit (:data:`FITS`).
    overwrite : bool
        Start again instead of resuming an existing file.
    progress : bool
        Show a progress bar.

    Returns
    -------
    DataFrame of all rows of ``output``
    """
    jobs = resolve_jobs(jobs)
    if renderer not in RENDERERS:
        raise GalparamError(f"renderer {renderer!r}: accepted {', '.join(RENDERERS)}", argument="renderer")
    ds = load_dataset(dataset_path)
    if ds.spec.stamp_model and renderer != KSpaceRenderer.NAME:
        raise GalparamError(
            f"renderer {renderer}: {dataset_path} was drawn with PSF images or centre and sky priors, which "
            "are fitted on the k-space stamp model (renderer kspace)",
            argument="renderer",
        )
    output = Path(output)
    total = len(ds) if n_images is None else int(n_images)
    if not 1 <= total <= len(ds):
        raise GalparamError(
            f"n_images {n_images}: the dataset has {len(ds)} images; accepted 1..{len(ds)}", argument="n_images"
        )
    if init is not None:
        init = np.asarray(init, dtype=np.float64)
        if init.shape != (total, 5):
            raise GalparamError(f"starting points of shape {init.shape}: expected ({total}, 5)")
    box = FitBox.from_spec(ds.spec)
    manifest = {
        "dataset": str(Path(dataset_path).resolve()),
        "dataset_spec_digest": ds.spec.digest(),
        "n_images": total,
        "fit_box": box.to_dict(),
        "init": "given" if init is not None else "adaptive moments",
        "renderer": renderer,
        **({"model": "stamps: centre free, each image's PSF"} if ds.spec.stamp_model else {}),
        **(init_source or {}),
    }
    done = open_row_file(
        output, manifest, FIT_COLUMNS, total, kind="fits", of="another dataset or setting", overwrite=overwrite
    )

    spec = ds.spec
    geometry = spec.geometry
    per_task = FIT_BATCH[renderer]
    stamps, known_sky = None, 0.0
    if spec.stamp_model:
        if "sky" in spec.priors and spec.priors["sky"].is_fixed:
            known_sky = spec.priors["sky"].low
        sky_varies = spec.varies("sky")  # a fixed sky is known: subtracted
        if spec.psf is not None:
            spec.psf.require("fits", dataset_path)
        stamps = (StampConfig.from_spec(spec), ds.extra["psf_index"], sky_varies)
    tasks = (
        (
            list(range(a, min(a + per_task, total))),
            ds.img[a : min(a + per_task, total)].astype(np.float64) - known_sky,
            ds.psf_fwhm[a : min(a + per_task, total)].astype(np.float64),
            ds.sigma[a : min(a + per_task, total)].astype(np.float64),
            spec.poisson_noise,
            geometry,
            box,
            None if init is None else init[a : min(a + per_task, total)],
            renderer,
            None if stamps is None else (stamps[0], stamps[1][a : min(a + per_task, total)], stamps[2]),
        )
        for a in range(done, total, per_task)
    )
    with open(output, "a", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        bar = tqdm(total=total, initial=done, unit="fit", desc="baseline", disable=not progress)
        if jobs > 1:
            ctx = multiprocessing.get_context("spawn")
            with ctx.Pool(jobs) as pool:
                for rows in pool.imap(_fit_task, tasks):
                    _append(f, writer, rows, bar)
        else:
            for task in tasks:
                _append(f, writer, _fit_task(task), bar)
        bar.close()
    return pd.read_csv(output)


def _append(f, writer, rows, bar) -> None:
    writer.writerows(rows)
    f.flush()
    os.fsync(f.fileno())
    bar.update(len(rows))


def network_starting_points(run_dir, dataset_path, n_images: int | None = None) -> tuple[np.ndarray, dict]:
    """A trained network's estimates of a dataset's first images, as fit starting points.

    Returns
    -------
    init : ndarray of shape (n_images, 5)
    source : dict
        ``init_model`` (the run's name) and ``init_model_sha256``, for the fits' manifest.

    Raises
    ------
    GalparamError
        If the run folder is not a finished run, or its model does not take the dataset's images.
    """
    estimator = load_estimator(run_dir)
    ds = load_dataset(dataset_path)
    n = len(ds) if n_images is None else min(int(n_images), len(ds))
    psf = ds.psf_images(slice(n)) if estimator.psf_input else None
    try:
        init = estimator.predict(ds.img[:n], psf)[list(LABEL_NAMES)].to_numpy()
    except GalparamError as exc:
        raise GalparamError(f"model {run_dir} does not fit {dataset_path}: {exc}") from None
    info = RunFolder(run_dir).info()
    return init, {"init_model": info["name"], "init_model_sha256": info.get("model_sha256", "")}
