"""The results table of ``galparam-measure``: galparam's parameters in the units and conventions
astronomers use (magnitudes, arcsec and pixels, axis ratio and position angle, one-based pixel
centres, sky coordinates where the image has a WCS), each with its inverse-Fisher error.

Conventions (also in the table's metadata):

* ``hlr`` is galparam's (and GalSim's) half-light radius of the unsheared profile, which the
  area-preserving shear keeps as the circularized radius sqrt(a·b); ``hlr_major`` is the
  semi-major-axis radius GALFIT, pysersic and AstroPhot report: hlr / sqrt(q).
* ``axis_ratio`` q = b/a = (1 − |g|)/(1 + |g|) for the reduced shear g = g1 + i·g2.
* ``position_angle``: the major axis's angle in degrees, counter-clockwise from the image's +x
  axis (columns), in (−90, 90]: ½·atan2(g2, g1) (GalSim's β). GALFIT's PA (from +y) is this − 90.
* ``x``, ``y``: the centre in the image's pixel coordinates, one-based (FITS, GALFIT, DS9).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from galparam.evaluate.stamp_fit import FLAGS
from galparam.io import atomic_path

CONVENTIONS = {
    "hlr": "half-light radius of the unsheared profile = circularized radius sqrt(a*b)",
    "hlr_major": "semi-major-axis half-light radius (GALFIT's Re) = hlr / sqrt(axis_ratio)",
    "axis_ratio": "b/a = (1 - |g|) / (1 + |g|), g = g1 + i g2 (reduced shear)",
    "position_angle": "major axis, degrees counter-clockwise from the image's +x axis, in (-90, 90]; GALFIT PA = this - 90",
    "x, y": "centre in the image's pixel coordinates, one-based (FITS)",
    "flags": "; ".join(f"{k}: {v}" for k, v in FLAGS.items()),
    "*_post_*": "with --posterior: the posterior's mean, std and 2.5/16/50/84/97.5 % quantiles of the model's "
    "parameters (flux counts, sersic_n, hlr arcsec circularized, g1, g2, dx and dy pixels from the stamp's "
    "centre, sky) under a flat prior in the fit's box",
}
"""What the columns mean, written into the table's metadata."""


def _propagate(gradient, covariance) -> float:
    """sqrt(∇ᵀ C ∇): a derived quantity's error from the parameters' covariance."""
    gradient = np.asarray(gradient, dtype=np.float64)
    value = float(gradient @ covariance @ gradient)
    return math.sqrt(value) if value >= 0 else math.nan


def result_row(theta, covariance, stamp, *, chi2, dof, converged, flags, iterations, seconds, error, zeropoint, header):
    """One galaxy's row (a dict of column → value) from its fit."""
    flux, n, hlr, g1, g2, dx, dy, sky = (float(v) for v in theta)
    cov = np.asarray(covariance, dtype=np.float64)
    std = np.sqrt(np.clip(np.diagonal(cov), 0, None))
    scale = stamp.frame.pixel_scale
    ny, nx = stamp.frame.shape
    g = math.hypot(g1, g2)
    q = (1 - g) / (1 + g) if np.isfinite(g) else math.nan
    # derivatives by (hlr, g1, g2) of q, β and the major-axis radius, for their errors
    sub = cov[np.ix_([2, 3, 4], [2, 3, 4])]
    if g > 0:
        dg = np.array([0.0, g1 / g, g2 / g])
        dq = -2 / (1 + g) ** 2 * dg
        dbeta = np.array([0.0, -0.5 * g2 / g**2, 0.5 * g1 / g**2])
        stretch = math.sqrt((1 + g) / (1 - g))
        dmajor = np.array([stretch, 0, 0]) + hlr * (1 / ((1 - g) ** 2 * stretch)) * dg
        q_err, beta_err = _propagate(dq, sub), math.degrees(_propagate(dbeta, sub))
    else:
        stretch, q_err, beta_err = 1.0, math.nan, math.nan
        dmajor = np.array([1.0, 0, 0])
    beta = math.degrees(0.5 * math.atan2(g2, g1)) if np.isfinite(g) else math.nan
    if beta <= -90:
        beta += 180
    major = hlr * stretch
    major_err = _propagate(dmajor, sub)

    def corr(i, j):
        return float(cov[i, j] / (std[i] * std[j])) if std[i] > 0 and std[j] > 0 else math.nan

    row = {
        "name": stamp.name,
        "flux": flux,
        "flux_err": std[0],
    }
    if zeropoint is not None:
        row["mag"] = zeropoint - 2.5 * math.log10(flux) if flux > 0 else math.nan
        row["mag_err"] = 2.5 / math.log(10) * std[0] / flux if flux > 0 else math.nan
    row.update(
        {
            "sersic_n": n,
            "sersic_n_err": std[1],
            "hlr_arcsec": hlr,
            "hlr_arcsec_err": std[2],
            "hlr_pixels": hlr / scale,
            "hlr_pixels_err": std[2] / scale,
            "hlr_major_arcsec": major,
            "hlr_major_arcsec_err": major_err,
            "hlr_major_pixels": major / scale,
            "hlr_major_pixels_err": major_err / scale,
            "g1": g1,
            "g1_err": std[3],
            "g2": g2,
            "g2_err": std[4],
            "axis_ratio": q,
            "axis_ratio_err": q_err,
            "position_angle": beta,
            "position_angle_err": beta_err,
            "x": (nx + 1) / 2 + dx,
            "x_err": std[5],
            "y": (ny + 1) / 2 + dy,
            "y_err": std[6],
        }
    )
    row.update(_sky_position(header, row["x"], row["y"]))
    row.update(
        {
            "sky": sky,
            "sky_err": std[7] if np.isfinite(cov[7, 7]) else math.nan,
            "corr_flux_sersic_n": corr(0, 1),
            "corr_flux_hlr": corr(0, 2),
            "corr_sersic_n_hlr": corr(1, 2),
            "corr_g1_g2": corr(3, 4),
            "chi2": float(chi2),
            "dof": int(dof),
            "chi2_reduced": float(chi2) / dof if dof > 0 else math.nan,
            "converged": bool(converged),
            "flags": ",".join(flags),
            "iterations": int(iterations),
            "seconds": round(float(seconds), 4),
            "pixel_scale": scale,
            "error": error,
        }
    )
    return row


def _sky_position(header, x, y) -> dict:
    """RA and Dec (degrees) of a one-based pixel position, where the header has a celestial WCS."""
    import warnings

    from astropy.wcs import WCS, FITSFixedWarning

    if header is None:
        return {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        try:
            wcs = WCS(header, naxis=2)
        except Exception:  # noqa: BLE001 - no usable WCS: no sky position
            return {}
    if not wcs.has_celestial or not (np.isfinite(x) and np.isfinite(y)):
        return {}
    ra, dec = wcs.celestial.all_pix2world([[x, y]], 1)[0]
    return {"ra": float(ra), "dec": float(dec)}


UNITS = {
    "flux_err": None,
    "mag": "mag",
    "mag_err": "mag",
    "hlr_arcsec": "arcsec",
    "hlr_arcsec_err": "arcsec",
    "hlr_pixels": "pix",
    "hlr_pixels_err": "pix",
    "hlr_major_arcsec": "arcsec",
    "hlr_major_arcsec_err": "arcsec",
    "hlr_major_pixels": "pix",
    "hlr_major_pixels_err": "pix",
    "position_angle": "deg",
    "position_angle_err": "deg",
    "x": "pix",
    "x_err": "pix",
    "y": "pix",
    "y_err": "pix",
    "ra": "deg",
    "dec": "deg",
    "pixel_scale": "arcsec / pix",
    "seconds": "s",
}
"""Each column's astropy unit (flux and sky are in the image's own units)."""


def results_table(rows: list[dict], meta: dict):
    """An astropy Table of result rows: columns in the rows' order (RA/Dec only where every row
    has them; magnitudes NaN where a galaxy has no zero point), units, and :data:`CONVENTIONS`
    with ``meta`` in its metadata."""
    from astropy.table import Table

    columns = []
    for row in rows:
        for key in row:
            if key not in columns:
                columns.append(key)
    if any(key not in row for row in rows for key in ("ra", "dec")):
        columns = [c for c in columns if c not in ("ra", "dec")]
    missing = {"mag": math.nan, "mag_err": math.nan}  # a galaxy without a zero point: no magnitude
    table = (
        Table(rows=[[row.get(c, missing.get(c)) for c in columns] for row in rows], names=columns) if rows else Table()
    )
    for name, unit in UNITS.items():
        if name in table.colnames and unit is not None:
            table[name].unit = unit
    table.meta.update({"conventions": dict(CONVENTIONS), **meta})
    return table


def write_table(table, path) -> None:
    """Write a results table atomically, its format by extension: .ecsv (default), .csv, .fits
    (where the metadata become COMMENT cards)."""
    path = Path(path)
    suffix = path.suffix.lower()
    formats = {".ecsv": "ascii.ecsv", ".csv": "ascii.csv", ".fits": "fits", ".fit": "fits"}
    if formats.get(suffix) == "fits":
        table = table.copy(copy_data=False)
        table.meta = {"comments": [f"{key}: {value}" for key, value in _flat(table.meta)]}
    with atomic_path(path, suffix=suffix) as tmp:
        table.write(tmp, format=formats.get(suffix, "ascii.ecsv"), overwrite=True)


def _flat(meta, prefix=""):
    for key, value in meta.items():
        if isinstance(value, dict):
            yield from _flat(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value
