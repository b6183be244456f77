"""galparam: neural-network estimators of galaxy parameters, measured against the best possible.

The public API, loaded on first use so that ``import galparam`` costs milliseconds (GalSim,
TensorFlow and Keras load only when something needs them)::

    import galparam
    ds = galparam.load_dataset("data/v1-small.npz")
    estimator = galparam.load_estimator("runs/xception-v1-small")
    bound = galparam.cramer_rao(theta, psf_fwhm=0.5, sigma=200)
    fits = galparam.BatchedFit().fit(images, psf_fwhm=0.5, sigma=200)   # fits.theta_, fits.covariance_
    table = galparam.measure(galparam.Cutout("img.fits", psf="psf.fits", sigma="sigma.fits"))  # real cutouts
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    # the physical parameters
    "LABEL_NAMES": "galparam.parameters",
    "PARAMETERS": "galparam.parameters",
    "check_parameters": "galparam.parameters",
    # the forward model
    "Geometry": "galparam.geometry",
    "KSpaceRenderer": "galparam.render",
    "GalSimRenderer": "galparam.render",
    "Renderer": "galparam.render:GalSimRenderer",  # the GalSim renderer's former name
    # specs and data
    "load_spec": "galparam.specs",
    "load_experiment": "galparam.specs",
    "load_search": "galparam.specs",
    "simulate": "galparam.simulate",
    "load_dataset": "galparam.data",
    "load_metadata": "galparam.data",
    # training and trained models
    "FAMILIES": "galparam.models",
    "train": "galparam.train",
    "RunFolder": "galparam.runs",
    "load_estimator": "galparam.estimator",
    # evaluation
    "write_report": "galparam.report",
    "cramer_rao": "galparam.evaluate.crb",
    "dataset_bounds": "galparam.evaluate.crb",
    "BatchedFit": "galparam.evaluate.fit",
    "GalSimFit": "galparam.evaluate.galsim_fit",
    "FitBox": "galparam.evaluate.fitbox",
    "run_baseline": "galparam.baseline",
    # posteriors under a stated prior, and the Bayes risk
    "Posterior": "galparam.evaluate.posterior",
    "PosteriorPrior": "galparam.evaluate.posterior",
    "StampPosterior": "galparam.evaluate.stamp_posterior",
    "run_posterior": "galparam.posteriors",
    # real images: any stamp, its PSF, noise and mask, and the galparam-measure workflow
    "Frame": "galparam.frame",
    "MoffatPSF": "galparam.psf",
    "ImagePSF": "galparam.psf",
    "Stamp": "galparam.stamp",
    "StampFit": "galparam.evaluate.stamp_fit",
    "Cutout": "galparam.measure",
    "measure": "galparam.measure",
    "read_catalog": "galparam.measure",
    "estimator_metrics": "galparam.evaluate.metrics",
    # searches
    "search_dashboard": "galparam.search.dashboard:dashboard",
    # the study as steps
    "Study": "galparam.study",
    "read_metrics": "galparam.study",
    # errors
    "GalparamError": "galparam.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    where = _EXPORTS.get(name)
    if where is None:
        raise AttributeError(f"module 'galparam' has no attribute {name!r}")
    module, _, attribute = where.partition(":")
    value = getattr(importlib.import_module(module), attribute or name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)
