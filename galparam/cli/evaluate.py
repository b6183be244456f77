"""``galparam-evaluate``: Cramér–Rao bounds and the likelihood-fit baseline."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from galparam.baseline import network_starting_points, run_baseline
from galparam.cli.common import ArgumentParser, add_jobs, add_overwrite, load_tensorflow_quietly, positive_int, run
from galparam.data import load_dataset
from galparam.errors import GalparamError
from galparam.estimator import load_ensemble, load_estimator, read_image_file
from galparam.evaluate.crb import cramer_rao, dataset_bounds
from galparam.evaluate.ood import check_images
from galparam.geometry import Geometry
from galparam.io import write_text_atomic
from galparam.measure.inputs import FITS_SUFFIXES, network_inputs, split_hdu
from galparam.parameters import LABEL_NAMES
from galparam.posteriors import run_posterior
from galparam.render import RENDERERS, GalSimRenderer, KSpaceRenderer, renderer_for
from galparam.report import write_report
from galparam.runs import RunFolder
from galparam.specs import load_spec

DESCRIPTION = """\
Judge estimators against the best possible.

  galparam-evaluate crb --sigma 200                 the Cramér-Rao bound of one galaxy
  galparam-evaluate crb --dataset DATA.npz -o bounds.csv   each image's own bound
  galparam-evaluate baseline DATA.npz -o fits.csv   maximum-likelihood fits (resumable)
  galparam-evaluate baseline DATA.npz --init RUN -o refined.csv   the fit started from a network's estimate
  galparam-evaluate posterior DATA.npz --n-images 100 -o post.csv   posteriors under the data's prior (resumable)
  galparam-evaluate posterior T60.npz --prior data/v2.yaml -o post.csv   ... under a training set's prior
  galparam-evaluate predict RUN DATA.npz -o pred.csv a trained model's estimates for any npz of images
  galparam-evaluate predict RUN a.fits b.fits --psf psf.fits -o pred.csv   ... or FITS cutouts of its geometry
  galparam-evaluate report --runs RUN... --test-sets T60.npz T30.npz --fits F.csv... --posteriors P.csv... -o reports/
"""


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="galparam-evaluate", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)

    c = sub.add_parser("crb", help="Cramér-Rao bound of one galaxy, or of every image of a dataset")
    c.add_argument("--flux", type=float, default=1.0e5, help="total flux, counts (default: %(default)g)")
    c.add_argument("--sersic-n", type=float, default=3.0, help="Sérsic index (default: %(default)g)")
    c.add_argument("--hlr", type=float, default=0.3, help="half-light radius, arcsec (default: %(default)g)")
    c.add_argument("--g1", type=float, default=-0.069, help="reduced shear g1 (default: %(default)g)")
    c.add_argument("--g2", type=float, default=0.15, help="reduced shear g2 (default: %(default)g)")
    c.add_argument("--psf-fwhm", type=float, default=0.5, help="Moffat PSF FWHM, arcsec (default: %(default)g)")
    c.add_argument("--sigma", type=float, default=200.0, help="Gaussian noise per pixel, counts (default: %(default)g)")
    c.add_argument("--no-poisson", action="store_true", help="leave out the Poisson variance of the galaxy light")
    c.add_argument("--json", action="store_true", help="print JSON: the bound per label")
    c.add_argument("--dataset", metavar="DATA.npz", help="bound of each image of this dataset instead")
    c.add_argument("--n-images", type=positive_int, help="with --dataset: the first N images")
    c.add_argument("-o", "--output", metavar="BOUNDS.csv", help="with --dataset: where to write the bounds")
    c.add_argument(
        "--renderer",
        choices=tuple(RENDERERS),
        default=None,
        help="how the model is differentiated: kspace (exact Jacobian; --dataset's default, many images a call) "
        "or galsim (central differences of GalSim's images; one galaxy's default)",
    )

    b = sub.add_parser("baseline", help="maximum-likelihood (L-BFGS-B) fits of a dataset's images")
    b.add_argument("dataset", metavar="DATA.npz")
    b.add_argument("-o", "--output", metavar="fits.csv", required=True, help="one row per image; resumes if present")
    b.add_argument("--n-images", type=positive_int, help="fit the first N images (default: all)")
    add_jobs(b)
    b.add_argument(
        "--init",
        metavar="MODEL_DIR",
        help="start each fit from this trained model's estimate (the network refined by the likelihood)",
    )
    b.add_argument(
        "--renderer",
        choices=tuple(RENDERERS),
        default=KSpaceRenderer.NAME,
        help="the fit's forward model: kspace (batched, exact gradients; default) or galsim (the reference, slow)",
    )
    add_overwrite(b, "start again instead of resuming")
    b.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    q = sub.add_parser(
        "posterior",
        help="posterior samples of a dataset's images under a stated prior (importance sampling, MCMC fallback)",
    )
    q.add_argument("dataset", metavar="DATA.npz")
    q.add_argument(
        "-o", "--output", metavar="posterior.csv", required=True, help="one row per image; resumes if present"
    )
    q.add_argument("--n-images", type=positive_int, help="the first N images (default: all)")
    q.add_argument(
        "--prior",
        metavar="SPEC.yaml",
        help="the dataset spec whose prior to use, e.g. the training set's for a test set (default: the data's own; "
        "a parameter it fixes gets the fit's flat range)",
    )
    q.add_argument("--samples", metavar="SAMPLES.npz", help="also store 1000 equal-weight draws of each posterior")
    q.add_argument(
        "--target-ess", type=positive_int, default=500, help="effective samples per image (default: %(default)s)"
    )
    q.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    add_jobs(q)
    add_overwrite(q, "start again instead of resuming an existing posterior file")
    q.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    r = sub.add_parser(
        "predict",
        help="a trained model's estimates of the five parameters (and their spreads, and out-of-distribution flags), as a CSV",
    )
    r.add_argument("run", metavar="RUN_DIR", help="a finished galparam-train run folder")
    r.add_argument(
        "images",
        nargs="+",
        metavar="IMAGES",
        help="galparam's datasets or your own npz of (N, 64, 64) images; or FITS cutouts (file.fits[HDU], several), "
        "checked against the network's training geometry (stamp size, pixel scale, PSF)",
    )
    r.add_argument("-o", "--output", metavar="predictions.csv", required=True)
    r.add_argument("--key", help="the array holding the images (default: img, or the only image array)")
    r.add_argument("--psf-key", help="the array holding the PSF images, for models with a PSF input (default: psf_img)")
    r.add_argument(
        "--batch-size", type=positive_int, help="images per forward pass (default: 256; 1024 on the JAX backend)"
    )
    r.add_argument(
        "--ensemble",
        nargs="+",
        metavar="RUN_DIR",
        default=[],
        help="more runs of the same experiment (other seeds; galparam-train --seed): a deep ensemble, its mean "
        "and spread (the members' spreads and their disagreement), calibrated on the runs' shared validation split",
    )
    r.add_argument("--no-flags", action="store_true", help="leave out the out-of-distribution flags (ood, ood_reason)")
    r.add_argument(
        "--pixel-scale", type=float, metavar="ARCSEC", help="FITS cutouts: arcsec per pixel where the header has no WCS"
    )
    r.add_argument(
        "--psf", nargs="+", metavar="PSF.fits[HDU]", help="FITS cutouts: their PSF image(s) at the data's scale"
    )
    r.add_argument("--psf-fwhm", type=float, metavar="ARCSEC", help="FITS cutouts: or their Moffat PSF's FWHM")

    t = sub.add_parser("report", help="tables (CSV, Markdown, LaTeX) and plots from runs, test sets and fits")
    t.add_argument("-o", "--output", metavar="DIR", default="reports", help="report folder (default: %(default)s)")
    t.add_argument("--runs", nargs="*", default=[], metavar="RUN_DIR", help="finished galparam-train run folders")
    t.add_argument("--test-sets", nargs="*", default=[], metavar="TEST.npz", help="fixed-parameter test sets")
    t.add_argument(
        "--fits",
        nargs="*",
        default=[],
        metavar="FITS.csv",
        help="baseline fits of those test sets, or of a dataset drawn from a prior (v2.npz: the fit joins the "
        "efficiency, shear and coverage tables)",
    )
    t.add_argument(
        "--posteriors",
        nargs="*",
        default=[],
        metavar="POSTERIOR.csv",
        help="posteriors of those test sets (galparam-evaluate posterior): the posterior mean joins the estimators "
        "and the Bayes risk's root (√MMSE) the bound, with each estimator's RMSE over it",
    )
    t.add_argument("--n-images", type=positive_int, help="evaluate networks on the first N test images (default: all)")
    return p


def _crb(args) -> int:
    if args.dataset:
        if not args.output:
            raise GalparamError("crb --dataset needs -o BOUNDS.csv")
        ds = load_dataset(args.dataset)
        n = len(ds) if args.n_images is None else min(args.n_images, len(ds))
        table = dataset_bounds(
            ds, np.arange(n), poisson=False if args.no_poisson else None, renderer=args.renderer or KSpaceRenderer.NAME
        )
        write_text_atomic(Path(args.output), table.to_csv(lineterminator="\n"))
        print(f"wrote {args.output}: the bound of {n} images")
        return 0
    theta = [args.flux, args.sersic_n, args.hlr, args.g1, args.g2]
    renderer = renderer_for(args.renderer or GalSimRenderer.NAME)
    bound = cramer_rao(theta, args.psf_fwhm, args.sigma, poisson=not args.no_poisson, renderer=renderer)
    if args.json:
        print(json.dumps({k: float(v) for k, v in bound.std.items()}, indent=2))
        return 0
    print(f"Cramér-Rao bound (standard deviation) at {dict(zip(LABEL_NAMES, theta, strict=True))},")
    print(f"PSF FWHM {args.psf_fwhm} arcsec, sigma {args.sigma}, Poisson {'off' if args.no_poisson else 'on'}:")
    print(bound.std.to_frame("crb").to_string(float_format=lambda v: f"{v:.4g}"))
    print("\nCorrelation matrix:")
    print(bound.correlation.to_string(float_format=lambda v: f"{v:+.2f}"))
    return 0


def _baseline(args) -> int:
    init = source = None
    if args.init:
        RunFolder(args.init).info()  # a finished run, checked before TensorFlow loads
        load_tensorflow_quietly()
        init, source = network_starting_points(args.init, args.dataset, args.n_images)
    fits = run_baseline(
        args.dataset,
        args.output,
        n_images=len(init) if init is not None else args.n_images,
        jobs=args.jobs,
        init=init,
        init_source=source,
        renderer=args.renderer,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    print(
        f"wrote {args.output}: {len(fits)} fits, {int(fits['converged'].sum())} converged, "
        f"median {fits['seconds'].median():.3f} s per image, {fits['iterations'].median():g} iterations"
    )
    if args.init:
        print(
            f"{int(fits['from_init'].sum())} of {len(fits)} fits started from {Path(args.init).name}'s estimate "
            "(the others from adaptive moments, where the network's estimate was less likely)"
        )
    return 0


def _posterior(args) -> int:
    prior_spec = load_spec(args.prior) if args.prior else None
    table = run_posterior(
        args.dataset,
        args.output,
        n_images=args.n_images,
        prior_spec=prior_spec,
        samples=args.samples,
        seed=args.seed,
        target_ess=args.target_ess,
        jobs=args.jobs,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    methods = table["method"].value_counts()
    print(
        f"wrote {args.output}: {len(table)} posteriors ({methods.get('importance', 0)} by importance sampling, "
        f"{methods.get('mcmc', 0)} by MCMC), median ESS {table['ess'].median():.0f}, "
        f"median {table['seconds'].median():.2f} s per image"
    )
    short = int((table["ess"] < args.target_ess).sum())
    if short:
        print(
            f"{short} posteriors below {args.target_ess} effective samples (column ess): read their summaries with care"
        )
    return 0


def _predict(args) -> int:
    info = RunFolder(args.run).info()  # the inputs are checked before TensorFlow loads
    fits_inputs = [str(split_hdu(spec)[0]).lower().endswith(FITS_SUFFIXES) for spec in args.images]
    sigma = psf_fwhm = None
    if any(fits_inputs):
        if not all(fits_inputs):
            raise GalparamError("give one npz of images, or FITS cutouts, not both")
        images, psf, psf_fwhm = network_inputs(
            args.images,
            Geometry.from_dict(info["geometry"]),
            pixel_scale=args.pixel_scale,
            psf=args.psf,
            psf_fwhm=args.psf_fwhm,
            trained_on_psf_images=info["geometry"].get("psf") == "images",
        )
        if info.get("psf_input", False) and psf is None:
            raise GalparamError(f"{args.run}: this model takes each image's PSF image; give it with --psf")
    else:
        if len(args.images) > 1:
            raise GalparamError(f"{len(args.images)} npz files: give one (or FITS cutouts)")
        if args.psf or args.psf_fwhm is not None or args.pixel_scale is not None:
            raise GalparamError("--psf, --psf-fwhm and --pixel-scale are for FITS cutouts; an npz holds its own PSFs")
        images, psf = read_image_file(args.images[0], args.key, args.psf_key, need_psf=info.get("psf_input", False))
    load_tensorflow_quietly()
    if args.ensemble:
        estimator = load_ensemble([args.run, *args.ensemble], batch_size=args.batch_size)
    else:
        estimator = load_estimator(args.run)
    table = estimator.predict(images, psf if info.get("psf_input", False) else None, batch_size=args.batch_size)
    note = ""
    if not args.no_flags:
        if "training_range" in info:
            if not any(fits_inputs):
                sigma, psf_fwhm = _columns_of(args.images[0], len(images))
            checked = check_images(
                info, images, table[list(LABEL_NAMES)].to_numpy(), sigma=sigma, psf_fwhm=psf_fwhm, psf_images=psf
            )
            table = pd.concat([table, checked], axis=1)
            note = f"; {int(checked.ood.sum())} flagged out of distribution"
        elif "ood" in info:
            note = f"; no out-of-distribution flags ({info['ood']})"
        else:
            note = "; no out-of-distribution flags (the run predates them: train it again to have them)"
    table.index.name = "index"
    if any(fits_inputs):
        table.insert(0, "image", list(args.images))
    write_text_atomic(Path(args.output), table.to_csv(lineterminator="\n"))
    if getattr(estimator, "not_calibrated", None):
        note += f"; the ensemble's spreads are not calibrated: {estimator.not_calibrated}"
    print(f"wrote {args.output}: estimates of {len(table)} images{note}")
    return 0


def _columns_of(path, n: int):
    """A galparam dataset's ``sigma`` and ``psf_fwhm`` columns (None where the file has none)."""
    with np.load(path, allow_pickle=False) as z:
        return tuple(z[k] if k in z.files and z[k].shape == (n,) else None for k in ("sigma", "psf_fwhm"))


def _report(args) -> int:
    for run_dir in args.runs:
        RunFolder(run_dir).info()
    if args.runs:
        load_tensorflow_quietly()

    report = write_report(
        args.output,
        runs=args.runs,
        test_sets=args.test_sets,
        fits=args.fits,
        posteriors=args.posteriors,
        n_images=args.n_images,
    )
    if len(report.test_table):
        print(report.test_table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    for note in report.notes:
        print(f"note: {note}")
    print(f"wrote {len(report.files)} files into {report.folder}")
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    commands = {"crb": _crb, "baseline": _baseline, "predict": _predict, "posterior": _posterior, "report": _report}
    return commands[args.command](args)


def entry_point() -> None:
    sys.exit(run(main, prog="galparam-evaluate"))


if __name__ == "__main__":
    entry_point()
