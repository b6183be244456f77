"""Measuring real galaxies: FITS cutouts with their own pixel scale, PSF, noise and mask, fitted
GalSim-exactly (:class:`galparam.evaluate.stamp_fit.StampFit`), as a table astronomers read.

::

    import galparam
    table = galparam.measure(
        [galparam.Cutout("img.fits", psf="psf.fits", sigma="sigma.fits", segmap="seg.fits", pixel_scale=0.396)],
        residuals="residuals/",
    )

What ``galparam-measure`` runs. Every input is read and checked before anything is fitted or
written; a galaxy whose fit fails is a flagged row; with an ``output`` the finished galaxies are
kept as they come (``<output>.partial``), so an interrupted run resumes where it stopped, and
the table is written atomically at the end.
"""

from __future__ import annotations

import functools
import hashlib
import json
import multiprocessing
import os
import time
from dataclasses import asdict
from pathlib import Path

from tqdm.auto import tqdm

from galparam import __version__
from galparam.errors import GalparamError, Remedy
from galparam.evaluate.posterior import QUANTILE_NAMES
from galparam.evaluate.stamp_fit import StampFit
from galparam.evaluate.stamp_posterior import StampPosterior
from galparam.jobs import resolve_jobs
from galparam.measure.inputs import Cutout, read_catalog
from galparam.measure.residuals import safe_name, write_residuals
from galparam.measure.table import result_row, results_table, write_table
from galparam.stamp import Stamp

__all__ = ["Cutout", "measure", "read_catalog"]


POSTERIOR_SUFFIXES = ("mean", "std", *QUANTILE_NAMES)
"""The posterior columns of a parameter ``p``: ``p_post_mean``, ``p_post_std``, ``p_post_q025``, ...
(:data:`~galparam.evaluate.posterior.QUANTILE_NAMES`)."""


def _posterior_columns(post: StampPosterior) -> dict:
    """A stamp's posterior summaries as row entries (the sampled parameters, in the model's units:
    counts, arcsec, offsets in pixels from the stamp's centre)."""
    out = {}
    for k, name in enumerate(post.names_):
        values = [post.mean_[0, k], post.std_[0, k], *post.quantiles_[0, :, k]]
        out.update({f"{name}_post_{s}": float(v) for s, v in zip(POSTERIOR_SUFFIXES, values, strict=True)})
    out.update(
        post_method=str(post.method_[0]),
        post_ess=round(float(post.ess_[0]), 1),
        post_evaluations=int(post.evaluations_[0]),
    )
    return out


@functools.cache
def _threadpools():
    """The process's thread pools (found once: finding them costs ~3 ms, a fast fit's fifth)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def _fit_task(task):
    """(index, stamp, fit_sky, posterior seed or None) → what the row needs (run in a worker process)."""
    index, stamp, fit_sky, posterior_seed = task
    posterior = {}
    with _threadpools().limit(limits=1, user_api="blas"):  # the same digits whatever the workers
        if posterior_seed is None:
            fit = StampFit(fit_sky=fit_sky).fit([stamp])
        else:
            sampler = StampPosterior(fit_sky=fit_sky, seed=posterior_seed).sample([stamp], indices=[index])
            fit, posterior = sampler.fit_, _posterior_columns(sampler)
    r = fit.results_[0]
    return (
        index,
        {
            "posterior": posterior,
            "theta": r.theta.tolist(),
            "covariance": r.covariance.tolist(),
            "chi2": r.chi2,
            "dof": r.dof,
            "converged": r.converged,
            "flags": list(r.flags),
            "iterations": r.iterations,
            "seconds": r.seconds,
            "error": r.error,
        },
        r.model,
    )


def _manifest(items, fit_sky: bool, posterior_seed: int | None = None) -> str:
    """A fingerprint of what is measured: the inputs' descriptions and the fit's options."""
    described = [asdict(c) if isinstance(c, Cutout) else {"stamp": c.name} for c in items]
    for d in described:
        d.pop("relative_to", None)
    options = {"fit_sky": fit_sky, **({"posterior_seed": posterior_seed} if posterior_seed is not None else {})}
    text = json.dumps({"inputs": described, **options}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _read_partial(path: Path, manifest: str) -> dict:
    """Rows of an interrupted run of the same measurement (index → row); a torn last line is dropped."""
    if not path.exists():
        return {}
    lines = path.read_text().splitlines()
    try:
        head = json.loads(lines[0]) if lines else {}
    except ValueError:
        head = {}
    if head.get("manifest") != manifest:
        raise GalparamError(
            f"{path} holds an interrupted measurement of other inputs or options; remove it",
            remedy=Remedy("overwrite", "start again"),
        )
    done = {}
    for line in lines[1:]:
        try:
            entry = json.loads(line)
        except ValueError:
            break
        done[int(entry["index"])] = entry["row"]
    return done


def measure(
    inputs,
    *,
    output=None,
    residuals=None,
    fit_sky: bool = False,
    zeropoint: float | None = None,
    posterior: bool = False,
    seed: int = 0,
    jobs: int | None = 1,
    progress: bool = True,
    overwrite: bool = False,
):
    """Fit each galaxy and return the results as an astropy Table (:mod:`galparam.measure.table`).

    Parameters
    ----------
    inputs : Cutout, Stamp, or a sequence of them
        What to measure: cutouts to read from FITS files, or stamps already in memory.
    output : path, optional
        Write the table here (.ecsv, .csv or .fits), atomically; an interrupted run resumes.
    residuals : path, optional
        A folder for each galaxy's ``<name>.fits`` (data, model, residual, weight) and ``<name>.png``.
    fit_sky : bool
        Fit a constant sky level (default: held at 0).
    zeropoint : float, optional
        For magnitudes, where a cutout has none of its own.
    posterior : bool
        Also sample each galaxy's posterior under a flat prior (the fit's box;
        :class:`~galparam.evaluate.stamp_posterior.StampPosterior`): columns ``p_post_mean``,
        ``p_post_std``, ``p_post_q025`` ... ``p_post_q975`` of each parameter (the model's units),
        ``post_method``, ``post_ess``, ``post_evaluations``.
    seed : int
        The posteriors' random seed (a galaxy's draws depend on it and on its position in the inputs).
    jobs : int, optional
        Worker processes (None: every core). The results do not depend on it.
    progress : bool
        Show a progress bar.
    overwrite : bool
        Replace an existing ``output`` (and forget an interrupted run).

    Raises
    ------
    GalparamError
        A bad input (before anything is fitted or written), or an ``output`` that exists.
    """
    items = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    if not items:
        raise GalparamError("nothing to measure: give at least one cutout")
    jobs = resolve_jobs(jobs)
    stamps, context = [], []
    for item in items:
        if isinstance(item, Stamp):
            stamps.append(item)
            context.append({"header": None, "zeropoint": None, "image": item.name, "psf": "given"})
        else:
            stamp, info = item.read()
            stamps.append(stamp)
            context.append(info)
    names = [safe_name(s.name) for s in stamps]
    if residuals is not None and len(set(names)) < len(names):
        repeated = sorted({n for n in names if names.count(n) > 1})
        raise GalparamError(f"galaxies share the name {repeated[0]!r}: their residual files would collide; name them")
    partial, done = None, {}
    if output is not None:
        output = Path(output)
        if output.suffix.lower() not in (".ecsv", ".csv", ".fits", ".fit"):
            raise GalparamError(f"output {output}: accepted .ecsv, .csv or .fits", argument="output")
        partial = output.with_name(output.name + ".partial")
        if overwrite:
            partial.unlink(missing_ok=True)
        elif output.exists():
            raise GalparamError(f"{output} exists", remedy=Remedy("overwrite", "replace it"))
        manifest = _manifest(items, fit_sky, seed if posterior else None)
        done = _read_partial(partial, manifest)
        if not partial.exists():
            partial.parent.mkdir(parents=True, exist_ok=True)
            partial.write_text(json.dumps({"manifest": manifest}) + "\n")
    rows: dict[int, dict] = dict(done)
    tasks = [(i, stamps[i], fit_sky, seed if posterior else None) for i in range(len(stamps)) if i not in done]
    started = time.perf_counter()
    bar = tqdm(total=len(stamps), initial=len(done), unit="galaxy", desc="measure", disable=not progress)
    log = None if partial is None else open(partial, "a")
    try:
        if jobs > 1 and len(tasks) > 1:
            pool = multiprocessing.get_context("spawn").Pool(min(jobs, len(tasks)))
            results = pool.imap(_fit_task, tasks)
        else:
            pool, results = None, map(_fit_task, tasks)
        try:
            for index, fitted, model in results:
                info = context[index]
                row = result_row(
                    fitted["theta"],
                    fitted["covariance"],
                    stamps[index],
                    chi2=fitted["chi2"],
                    dof=fitted["dof"],
                    converged=fitted["converged"],
                    flags=fitted["flags"],
                    iterations=fitted["iterations"],
                    seconds=fitted["seconds"],
                    error=fitted["error"],
                    zeropoint=info["zeropoint"] if info["zeropoint"] is not None else zeropoint,
                    header=info["header"],
                )
                row = {
                    "name": row.pop("name"),
                    "image": info["image"],
                    "psf": info["psf"],
                    **row,
                    **fitted["posterior"],
                }
                if residuals is not None and model is not None:
                    write_residuals(residuals, stamps[index], model, row, info["header"])
                rows[index] = row
                if log is not None:
                    log.write(json.dumps({"index": index, "row": row}) + "\n")
                    log.flush()
                    os.fsync(log.fileno())
                bar.update(1)
        finally:
            if pool is not None:
                pool.terminate()
    finally:
        bar.close()
        if log is not None:
            log.close()
    meta = {
        "galparam": __version__,
        "fit_sky": fit_sky,
        **(
            {"posterior": "flat prior in the fit's box; importance sampling, emcee fallback", "seed": seed}
            if posterior
            else {}
        ),
        "seconds": round(time.perf_counter() - started, 2),
    }
    table = results_table([rows[i] for i in range(len(stamps))], meta)
    if output is not None:
        write_table(table, output)
        partial.unlink(missing_ok=True)
    return table
