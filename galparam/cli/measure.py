"""``galparam-measure``: fit Sérsic galaxies to real FITS cutouts, GalSim-exactly."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from galparam.cli.common import ArgumentParser, add_jobs, add_overwrite, run
from galparam.errors import GalparamError
from galparam.evaluate.stamp_fit import FLAGS
from galparam.measure import measure
from galparam.measure.inputs import Cutout, parse_bad_values, read_catalog
from galparam.measure.table import CONVENTIONS

DESCRIPTION = (
    """\
Measure galaxies in FITS cutouts: flux (and magnitude), Sérsic index, half-light radius, shape,
centre and optionally a sky, each with its error, by a maximum-likelihood fit of GalSim's own
model (a sheared Sérsic profile through your PSF image, on your pixel scale, σ map and mask).

  galparam-measure galaxy.fits --psf psf.fits --sigma sigma.fits --pixel-scale 0.396 -o results.ecsv
  galparam-measure img.fits[1] --psf psf.fits --weight img.fits[2] --mask img.fits[3] -o out.fits
  galparam-measure J1.fits --psf J1_psf.fits --sigma J1_sigma.fits --segmap J1_seg.fits \\
      --pixel-scale 0.396 --zeropoint 22.5 --residuals residuals/ -o results.ecsv
  galparam-measure a.fits b.fits --psf a_psf.fits b_psf.fits --noise-sigma 0.01 -o ab.csv
  galparam-measure --catalog galaxies.csv -o results.ecsv          one row per galaxy (columns below)
  galparam-measure --catalog real_galaxy_catalog.fits -o hst.ecsv  GalSim's real-galaxy catalogue
  galparam-measure --catalog galaxies.csv --posterior -o results.ecsv   ... and each posterior's summaries

FILE[HDU] names an HDU by number or name (default: the first HDU with an image). The pixel scale
comes from the image header (CD matrix, CDELT, PIXSCALE) unless --pixel-scale gives it. The PSF
image is at the data's pixel scale (or --psf-oversampling K times finer), any normalization,
taken as the effective PSF (pixel included, as PSFEx and the surveys give it) unless
--psf-without-pixel. A catalogue has columns image, psf and one of sigma, weight, variance,
noise_sigma; optionally mask, mask_bad, segmap, segment_id, pixel_scale, psf_oversampling,
psf_includes_pixel, gain, zeropoint, name (files relative to the catalogue).

The table (.ecsv default, .csv or .fits by the extension of -o) has one row per galaxy; an
interrupted run resumes from OUTPUT.partial. Conventions:
"""
    + "\n".join(f"  {key}: {text}" for key, text in CONVENTIONS.items() if key != "flags")
    + ("\nFlags:\n" + "\n".join(f"  {key}: {text}" for key, text in FLAGS.items()))
)


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="galparam-measure", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("images", nargs="*", metavar="IMAGE.fits[HDU]", help="the cutouts (or use --catalog)")
    p.add_argument("--catalog", metavar="FILE", help="a CSV/ECSV list of galaxies, or GalSim's real-galaxy catalogue")
    p.add_argument("-o", "--output", metavar="TABLE", required=True, help="results: .ecsv (default), .csv or .fits")
    psf = p.add_argument_group("the PSF")
    psf.add_argument("--psf", nargs="+", metavar="PSF.fits[HDU]", help="one PSF image, or one per image")
    psf.add_argument(
        "--psf-oversampling",
        type=int,
        default=1,
        metavar="K",
        help="PSF pixels per data pixel along an axis (default: 1)",
    )
    psf.add_argument(
        "--psf-without-pixel",
        action="store_true",
        help="the PSF image lacks the pixel response (a model PSF, not an effective one): the pixel is convolved in",
    )
    noise = p.add_argument_group("the noise (one of)")
    noise.add_argument("--sigma", nargs="+", metavar="SIGMA.fits[HDU]", help="σ maps, one per image")
    noise.add_argument(
        "--weight", nargs="+", metavar="WEIGHT.fits[HDU]", help="inverse-variance maps (0: ignore the pixel)"
    )
    noise.add_argument("--variance", nargs="+", metavar="VAR.fits[HDU]", help="variance maps")
    noise.add_argument("--noise-sigma", type=float, metavar="SIGMA", help="one σ for every pixel, image units")
    masks = p.add_argument_group("masks (bad pixels and neighbours)")
    masks.add_argument("--mask", nargs="+", metavar="MASK.fits[HDU]", help="mask images, one per image")
    masks.add_argument(
        "--mask-bad",
        default="nonzero",
        metavar="VALUES",
        help="which mask values are bad: nonzero (default), zero, or e.g. 1,4,8",
    )
    masks.add_argument(
        "--segmap", nargs="+", metavar="SEG.fits[HDU]", help="SExtractor segmentation maps, one per image"
    )
    masks.add_argument(
        "--segment-id", type=int, metavar="K", help="the target's segment (default: the one under the stamp's centre)"
    )
    other = p.add_argument_group("the data")
    other.add_argument(
        "--pixel-scale", type=float, metavar="ARCSEC", help="arcsec per pixel (default: from the header)"
    )
    other.add_argument(
        "--gain", type=float, metavar="E_PER_COUNT", help="the galaxy's own Poisson noise enters the variance"
    )
    other.add_argument("--zeropoint", type=float, metavar="MAG", help="magnitudes: mag = ZP - 2.5 log10(flux)")
    fit = p.add_argument_group("the fit and its output")
    fit.add_argument(
        "--fit-sky", action="store_true", help="fit a constant sky level (default: the cutouts are sky-subtracted)"
    )
    fit.add_argument(
        "--posterior",
        action="store_true",
        help="also sample each galaxy's posterior (flat prior in the fit's box): mean, std and quantiles per parameter",
    )
    fit.add_argument("--seed", type=int, default=0, help="the posteriors' random seed (default: %(default)s)")
    fit.add_argument(
        "--residuals", metavar="DIR", help="per galaxy: NAME.fits (data, model, residual, weight) and NAME.png"
    )
    add_jobs(fit)
    add_overwrite(fit, "replace the output table (and forget an interrupted run)")
    fit.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no summary")
    return p


def _per_image(option: str, values, count: int) -> list:
    """An option's files, one per image (one given for several images is shared where that makes sense)."""
    if values is None:
        return [None] * count
    if len(values) == count:
        return list(values)
    if len(values) == 1 and option == "psf":
        return list(values) * count
    raise GalparamError(f"--{option}: {len(values)} files for {count} images; give one per image")


def _cutouts(args) -> list[Cutout]:
    noise_given = [k for k in ("sigma", "weight", "variance", "noise_sigma") if getattr(args, k) is not None]
    if args.psf_oversampling < 1:
        raise GalparamError(f"--psf-oversampling {args.psf_oversampling}: give a positive integer")
    if args.pixel_scale is not None and not args.pixel_scale > 0:
        raise GalparamError(f"--pixel-scale {args.pixel_scale:g}: give a positive number of arcsec per pixel")
    parse_bad_values(args.mask_bad)
    shared = dict(
        psf_oversampling=args.psf_oversampling,
        psf_includes_pixel=not args.psf_without_pixel,
        pixel_scale=args.pixel_scale,
        gain=args.gain,
        zeropoint=args.zeropoint,
        mask_bad=args.mask_bad,
        segment_id=args.segment_id,
    )
    if args.catalog:
        if args.images:
            raise GalparamError("give images or --catalog, not both")
        if len(noise_given) > 1:
            raise GalparamError(
                f"give the noise once (given: {', '.join('--' + k.replace('_', '-') for k in noise_given)})"
            )
        defaults = {
            k: v for k, v in shared.items() if v is not None and k not in ("psf_oversampling", "psf_includes_pixel")
        }
        if args.psf_oversampling != 1:
            defaults["psf_oversampling"] = args.psf_oversampling
        if args.psf_without_pixel:
            defaults["psf_includes_pixel"] = False
        if args.noise_sigma is not None:
            defaults["noise_sigma"] = args.noise_sigma
        return read_catalog(args.catalog, **defaults)
    if not args.images:
        raise GalparamError("give at least one IMAGE.fits, or --catalog FILE")
    if not args.psf:
        raise GalparamError("--psf: each image needs its PSF image (one for all, or one per image)")
    if len(noise_given) != 1:
        named = ", ".join("--" + k.replace("_", "-") for k in noise_given) or "none"
        raise GalparamError(f"give the noise as one of --sigma, --weight, --variance, --noise-sigma (given: {named})")
    count = len(args.images)
    files = {
        k: _per_image(k, getattr(args, k), count) for k in ("psf", "sigma", "weight", "variance", "mask", "segmap")
    }
    return [
        Cutout(
            image=image,
            noise_sigma=args.noise_sigma,
            **{k: v[i] for k, v in files.items()},
            **shared,
        )
        for i, image in enumerate(args.images)
    ]


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    cutouts = _cutouts(args)
    table = measure(
        cutouts,
        output=Path(args.output),
        residuals=args.residuals,
        fit_sky=args.fit_sky,
        zeropoint=args.zeropoint,
        posterior=args.posterior,
        seed=args.seed,
        jobs=args.jobs,
        progress=not args.quiet,
        overwrite=args.overwrite,
    )
    if not args.quiet:
        shown = [
            c
            for c in ("name", "mag", "sersic_n", "hlr_arcsec", "axis_ratio", "position_angle", "chi2_reduced", "flags")
            if c in table.colnames
        ]
        view = table[shown]
        for column in shown:
            if view[column].dtype.kind == "f":
                view[column].info.format = ".3f"
        print("\n".join(view.pformat(max_lines=-1, max_width=-1)))
        flagged = sum(bool(f) for f in table["flags"])
        print(
            f"wrote {args.output}: {len(table)} galaxies, {int(sum(table['converged']))} converged, {flagged} flagged"
            + (f"; residual panels in {args.residuals}" if args.residuals else ""),
            file=sys.stdout,
        )
    return 0


def entry_point() -> None:
    sys.exit(run(main, prog="galparam-measure"))


if __name__ == "__main__":
    entry_point()
