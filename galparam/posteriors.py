"""The posteriors of a dataset's images: parallel, written row by row, resumable.

``posterior.csv`` gets one row per image (:data:`POSTERIOR_COLUMNS`), in dataset order, appended
as each task of images finishes; a run that is interrupted continues after the last complete row
when started again, or goes on to more images when asked for more. A JSON file beside it
(``posterior.csv.json``) records the dataset, the prior and the settings the rows belong to. With ``samples``, each image's posterior is also stored as
equal-weight draws in an npz file (written when the run completes; the finished tasks' draws wait
in a folder beside it until then).
"""

from __future__ import annotations

import csv
import multiprocessing
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from galparam.data import load_dataset
from galparam.errors import GalparamError, Remedy
from galparam.evaluate.posterior import QUANTILE_NAMES, Posterior, PosteriorPrior, equal_weight_samples
from galparam.io import write_npz_atomic
from galparam.jobs import resolve_jobs
from galparam.parameters import LABEL_NAMES
from galparam.render import KSpaceRenderer, renderer_for
from galparam.row_files import open_row_file

POSTERIOR_COLUMNS = (
    "index",
    *(f"{name}_{stat}" for name in LABEL_NAMES for stat in ("mean", "std", *QUANTILE_NAMES)),
    *(f"{name}_fit" for name in LABEL_NAMES),
    *(f"{name}_fit_err" for name in LABEL_NAMES),
    "method",
    "ess",
    "max_weight",
    *(f"rhat_{name}" for name in LABEL_NAMES),
    "evaluations",
    "seconds",
)
"""The columns of ``posterior.csv``: per parameter the posterior mean, standard deviation and
quantiles; the fit's maximum and inverse-Fisher error (the Laplace approximation); how it was
sampled (``importance`` or ``mcmc``), the effective sample size, the largest normalized weight,
split-R̂ (MCMC only) and the likelihood evaluations and seconds per image."""

POSTERIOR_BATCH = 8
"""Images a worker's task samples; its rows are written together when it ends (fixed, so that the
tasks, and so every digit, are the same whatever the number of workers)."""

SAMPLES_KEPT = 1000
"""Equal-weight draws stored per image with ``samples``."""


def _rows(indices, post: Posterior, seconds: float) -> list[list]:
    rows = []
    fit_err = np.sqrt(np.clip(np.diagonal(post.laplace_cov_, axis1=1, axis2=2), 0, None))
    for b, index in enumerate(indices):
        stats = []
        for k in range(5):
            stats += [post.mean_[b, k], post.std_[b, k], *post.quantiles_[b, :, k]]
        rows.append(
            [
                int(index),
                *(float(v) for v in stats),
                *post.laplace_mean_[b].tolist(),
                *fit_err[b].tolist(),
                post.method_[b],
                round(float(post.ess_[b]), 1),
                float(post.max_weight_[b]),
                *(round(float(v), 5) for v in post.rhat_[b]),
                int(post.evaluations_[b]),
                round(seconds, 4),
            ]
        )
    return rows


def _task(task):
    """Rows (and equal-weight draws, or None) of one task of images."""
    indices, images, psf_fwhm, sigma, prior, poisson, geometry, options, keep = task
    t0 = time.perf_counter()
    post = Posterior(prior, poisson=poisson, renderer=renderer_for(KSpaceRenderer.NAME, geometry), **options)
    post.sample(images, psf_fwhm, sigma, indices=indices)
    seconds = (time.perf_counter() - t0) / len(indices)
    draws = equal_weight_samples(post, SAMPLES_KEPT, options["seed"], indices) if keep else None
    return indices, _rows(indices, post, seconds), draws


def run_posterior(
    dataset_path,
    output,
    *,
    n_images: int | None = None,
    prior_spec=None,
    samples=None,
    seed: int = 0,
    target_ess: int = 500,
    jobs: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> pd.DataFrame:
    """Sample the posteriors of the first ``n_images`` images of a dataset.

    Parameters
    ----------
    dataset_path : path
        A galparam dataset (``.npz``) of centred galaxies with Moffat PSFs.
    output : path
        The ``posterior.csv`` to write (columns :data:`POSTERIOR_COLUMNS`).
    n_images : int, optional
        How many images, from the first (default all).
    prior_spec : DatasetSpec, optional
        Whose prior to use (default the dataset's own, :meth:`PosteriorPrior.from_spec`): e.g. a
        training set's for a fixed-parameter test set.
    samples : path, optional
        An npz file for :data:`SAMPLES_KEPT` equal-weight draws of each image's posterior
        (``index`` (N,), ``samples`` (N, SAMPLES_KEPT, 5) in the order of ``LABEL_NAMES``).
    seed : int
        Random seed (an image's draws depend only on it and on the image's index).
    target_ess : int
        Effective samples wanted per image.
    jobs : int, optional
        Worker processes (default every core); the rows do not depend on it.
    overwrite : bool
        Start again instead of resuming an existing file.
    progress : bool
        Show a progress bar.

    Returns
    -------
    DataFrame of all rows of ``output``
    """
    jobs = resolve_jobs(jobs)
    ds = load_dataset(dataset_path)
    if ds.spec.stamp_model:
        raise GalparamError(
            f"{dataset_path}: posteriors of stamp-model datasets (PSF images, centre or sky priors) are not "
            "sampled yet; accepted: datasets of centred galaxies with Moffat PSFs"
        )
    total = len(ds) if n_images is None else int(n_images)
    if not 1 <= total <= len(ds):
        raise GalparamError(
            f"n_images {n_images}: the dataset has {len(ds)} images; accepted 1..{len(ds)}", argument="n_images"
        )
    if not 50 <= int(target_ess) <= 100_000:
        raise GalparamError(f"target_ess {target_ess}: accepted 50..100000", argument="target_ess")
    prior = PosteriorPrior.from_spec(prior_spec or ds.spec)
    output = Path(output)
    options = {"seed": int(seed), "target_ess": int(target_ess)}
    manifest = {
        "dataset": str(Path(dataset_path).resolve()),
        "dataset_spec_digest": ds.spec.digest(),
        "prior": prior.to_dict(),
        "prior_from": (prior_spec or ds.spec).name,
        **options,
        "samples": str(Path(samples).resolve()) if samples else None,
    }
    parts = Path(str(samples) + ".parts") if samples else None
    if overwrite and parts is not None:
        shutil.rmtree(parts, ignore_errors=True)
    done = open_row_file(
        output,
        manifest,
        POSTERIOR_COLUMNS,
        total,
        kind="posteriors",
        of="another dataset, prior or setting",
        overwrite=overwrite,
    )
    if parts is not None and done < total:
        parts.mkdir(parents=True, exist_ok=True)

    def batch(a):
        rows = slice(a, min(a + POSTERIOR_BATCH, total))
        return (
            np.arange(a, min(a + POSTERIOR_BATCH, total)),
            ds.img[rows].astype(np.float64),
            ds.psf_fwhm[rows].astype(np.float64),
            ds.sigma[rows].astype(np.float64),
            prior,
            ds.spec.poisson_noise,
            ds.spec.geometry,
            options,
            parts is not None,
        )

    tasks = (batch(a) for a in range(done, total, POSTERIOR_BATCH))
    with open(output, "a", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        bar = tqdm(total=total, initial=done, unit="image", desc="posterior", disable=not progress)

        def keep(result):
            indices, rows, draws = result
            if parts is not None:  # the draws first: a row is never without them
                write_npz_atomic(parts / f"part-{indices[0]:09d}.npz", {"index": indices, "samples": draws})
            writer.writerows(rows)
            f.flush()
            os.fsync(f.fileno())
            bar.update(len(rows))

        if jobs > 1:
            with multiprocessing.get_context("spawn").Pool(jobs) as pool:
                for result in pool.imap(_task, tasks):
                    keep(result)
        else:
            for task in tasks:
                keep(_task(task))
        bar.close()
    if parts is not None and done < total:
        _assemble_samples(parts, Path(samples), total)
    return pd.read_csv(output)


def _assemble_samples(parts: Path, samples: Path, total: int) -> None:
    """The parts' draws in one npz file, in index order; the parts removed."""
    files = sorted(parts.glob("part-*.npz"))
    index, draws = [], []
    for path in files:
        with np.load(path, allow_pickle=False) as z:
            index.append(z["index"])
            draws.append(z["samples"])
    index = np.concatenate(index) if index else np.empty(0, dtype=np.int64)
    if not np.array_equal(index, np.arange(total)):
        raise GalparamError(
            f"{parts}: the stored draws do not cover images 0..{total - 1}; run again with --overwrite",
            remedy=Remedy("overwrite", "start again"),
        )
    write_npz_atomic(samples, {"index": index, "samples": np.concatenate(draws)})
    shutil.rmtree(parts)
