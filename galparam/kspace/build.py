"""Building the tables from GalSim (~7 s) and calibrating the grid-size rule on them (~15 s):
what :func:`galparam.kspace.cache.load_tables` does once per machine and geometry."""

from __future__ import annotations

import time

import numpy as np

from galparam.geometry import DEFAULT_GEOMETRY, Geometry
from galparam.kspace.grid import galsim_fft_size, galsim_maxk_stepk
from galparam.kspace.numpy_renderer import render_numpy
from galparam.kspace.tables import (
    GRID_SIZES,
    N_RANGE,
    N_STEP,
    RULE_FWHM_NODES,
    RULE_N_NODES,
    RULE_R_NODES,
    S_MAX,
    S_STEP,
    Tables,
)
from galparam.parameters import PARAMETERS


def build_tables(
    *,
    n_range: tuple[float, float] = N_RANGE,
    n_step: float = N_STEP,
    s_max: float = S_MAX,
    s_step: float = S_STEP,
    geometry: Geometry = DEFAULT_GEOMETRY,
    calibrate: bool = True,
    verbose: bool = False,
) -> Tables:
    """Tabulate GalSim's unit Sérsic transforms and the unit-FWHM Moffat transform, then (with
    ``calibrate``) measure the grid-size rule (`calibrate_grid_rule`, ~20 s).

    One extra index node is added beyond each end of ``n_range`` (GalSim accepts 0.3 ≤ n ≤ 6.2,
    :data:`galparam.parameters.PARAMETERS`).
    Costs ~1 ms (n 0.5) to ~0.25 s (n 6) per index, nearly all of it GalSim's Hankel tables.
    """
    import galsim

    lo, hi = n_range
    count = int(round((hi - lo) / n_step))
    if abs(lo + count * n_step - hi) > 1e-9:
        raise ValueError(f"n_range {n_range} is not a whole number of n_step {n_step}")
    n_nodes = np.round(lo + n_step * np.arange(-1, count + 2), 12)
    if not PARAMETERS["sersic_n"].valid.contains(n_nodes).all():
        raise ValueError(
            f"GalSim's Sersic needs n in {PARAMETERS['sersic_n'].range_text}; nodes span {n_nodes[[0, -1]]}"
        )
    M = int(round(s_max / s_step)) + 1
    k = (np.arange(M) * s_step) ** 2

    def sample(prof):
        # The C++ profile's kValue skips the Python wrapper's per-call overhead (~15×).
        sbp = prof._sbp
        P = galsim._galsim.PositionD
        return np.array([sbp.kValue(P(float(x), 0.0)).real for x in k])

    sersic = np.empty((len(n_nodes), M))
    maxk = np.empty(len(n_nodes))
    stepk = np.empty(len(n_nodes))
    timing = {}
    for j, n in enumerate(n_nodes):
        t0 = time.perf_counter()
        prof = galsim.Sersic(float(n), half_light_radius=1.0, flux=1.0)
        sersic[j] = sample(prof)
        maxk[j] = prof.maxk
        stepk[j] = prof.stepk
        timing[float(n)] = time.perf_counter() - t0
        if verbose:
            print(f"n={n:.3f}: {timing[float(n)] * 1e3:.1f} ms")
    psf_beta = geometry.psf_beta
    psf = galsim.Moffat(beta=psf_beta, fwhm=1.0)
    unit_radius = galsim.Moffat(beta=psf_beta, scale_radius=1.0)
    tables = Tables(
        n_nodes=n_nodes,
        s_step=float(s_step),
        sersic=sersic,
        sersic_maxk=maxk,
        sersic_stepk=stepk,
        psf=sample(psf),
        psf_maxk=float(psf.maxk),
        psf_stepk=float(psf.stepk),
        psf_unit_maxk=float(unit_radius.maxk),
        psf_unit_stepk=float(unit_radius.stepk),
        psf_beta=float(psf_beta),
        pixel_scale=float(geometry.pixel_scale),
        stamp=int(geometry.stamp_size),
    )
    tables.build_seconds = timing  # not saved; for the benchmark
    if calibrate:
        t0 = time.perf_counter()
        calibrate_grid_rule(tables)
        tables.calibrate_seconds = time.perf_counter() - t0
    return tables


def calibrate_grid_rule(
    tables: Tables,
    *,
    n_nodes=RULE_N_NODES,
    r_nodes=RULE_R_NODES,
    fwhm_nodes=RULE_FWHM_NODES,
    shears=(0.0, 0.67),
    tol_pix=5e-5,
    tol_flux=5e-4,
    verbose=False,
):
    """Measure, per (n, major-axis radius, FWHM) node, the smallest N in `GRID_SIZES` whose image
    is within ``tol_pix`` of the peak (every pixel) and ``tol_flux`` (stamp sum, relative) of the
    image at GalSim's own N, for each |g| in ``shears`` with the major axis along x (the nearest
    wrapped copies, the worst orientation). Stores the rule in ``tables`` and returns it.

    The only difference between the two images is the wrap-around of the profile's far tail
    (and the k-box edge moving by less than one dk), which grows with n, with the radius and
    with the PSF width (the Moffat β=2 wings hold 1/(1+(R/r0)²) of the flux beyond R).
    """
    n_nodes, r_nodes, fwhm_nodes = (np.asarray(a, dtype=np.float64) for a in (n_nodes, r_nodes, fwhm_nodes))
    grid = np.array(np.meshgrid(n_nodes, r_nodes, fwhm_nodes, shears, indexing="ij"))
    n, r, fwhm, g = (a.ravel() for a in grid)
    hlr = r / np.sqrt((1 + g) / (1 - g))
    g1, g2 = g, np.zeros_like(g)
    flux = np.ones_like(n)
    NG = galsim_fft_size(galsim_maxk_stepk(tables, n, hlr, g1, g2, fwhm)[1], tables.pixel_scale, tables.stamp)
    ref = render_numpy(tables, flux, n, hlr, g1, g2, fwhm, dtype=np.float64, N=NG)
    peak, total = ref.max(axis=(1, 2)), ref.sum(axis=(1, 2))
    need = NG.copy()
    settled = np.zeros(len(n), dtype=bool)
    for N in GRID_SIZES:
        todo = np.flatnonzero(~settled & (N < NG))
        if len(todo) == 0:
            continue
        img = render_numpy(
            tables, flux[todo], n[todo], hlr[todo], g1[todo], g2[todo], fwhm[todo], dtype=np.float64, N=N
        )
        d = img - ref[todo]
        ok = (np.abs(d).max(axis=(1, 2)) <= tol_pix * peak[todo]) & (
            np.abs(d.sum(axis=(1, 2))) <= tol_flux * total[todo]
        )
        need[todo[ok]] = N
        settled[todo[ok]] = True
        if verbose:
            print(f"N={N}: {ok.sum()} of {len(todo)} settled")
    rule = need.reshape(grid.shape[1:]).max(axis=-1)  # worst over shears
    tables.rule_n, tables.rule_r, tables.rule_fwhm, tables.rule_N = (
        n_nodes,
        r_nodes,
        fwhm_nodes,
        rule.astype(np.int64),
    )
    return rule
