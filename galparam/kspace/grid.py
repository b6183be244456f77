"""Each galaxy's FFT grid, as GalSim would choose it and as the calibrated rule allows: its maxk
and stepk, the k-box, the FFT size N (host-side numpy, never differentiated)."""

from __future__ import annotations

import math

import numpy as np

from galparam.kspace.tables import Tables
from galparam.parameters import ParameterError


def shear_axes(g1, g2, xp=np):
    """Major and minor semi-axis factors of GalSim's shear matrix (their product is 1).

    ``xp`` is the array library (numpy, or ``jax.numpy`` in a traced device computation), as below."""
    g = xp.hypot(g1, g2)
    return xp.sqrt((1 + g) / (1 - g)), xp.sqrt((1 - g) / (1 + g))


def unit_maxk_stepk(tables: Tables, n, xp=np):
    """The unit Sérsic's maxk and stepk at any n: log-linear between tabulated indices."""
    n = xp.asarray(n, dtype=np.float64) if xp is np else n
    return (
        xp.exp(xp.interp(n, tables.n_nodes, np.log(tables.sersic_maxk))),
        xp.exp(xp.interp(n, tables.n_nodes, np.log(tables.sersic_stepk))),
    )


def galsim_maxk_stepk(tables: Tables, n, hlr, g1, g2, psf_fwhm, xp=np):
    """maxk and stepk (rad/arcsec) that GalSim gives the galaxy ⊗ PSF ⊗ pixel (Convolution rules:
    maxk is the smallest, 1/stepk² the sum of 1/stepk²; a Transformation divides maxk by its
    minor and stepk by its major axis)."""
    major, minor = shear_axes(g1, g2, xp)
    mk_u, sk_u = unit_maxk_stepk(tables, n, xp)
    if xp is np:
        hlr = np.asarray(hlr, dtype=np.float64)
        psf_fwhm = np.asarray(psf_fwhm, dtype=np.float64)
    mk_gal, sk_gal = mk_u / (hlr * minor), sk_u / (hlr * major)
    mk_psf, sk_psf = tables.psf_maxk / psf_fwhm, tables.psf_stepk / psf_fwhm
    mk_pix = 2.0 / (1e-3 * tables.pixel_scale)  # GSParams.maxk_threshold = 1e-3
    sk_pix = math.pi / tables.pixel_scale
    maxk = xp.minimum(xp.minimum(mk_gal, mk_psf), mk_pix)
    stepk = (sk_gal**-2 + sk_psf**-2 + sk_pix**-2) ** -0.5
    return maxk, stepk


def kbox_half(maxk, N, pixel_scale, xp=np):
    """GalSim's half-width of the k-box in units of dk = 2π/(N·scale) (drawFFT_makeKImage)."""
    maxk_pix = xp.asarray(maxk) * pixel_scale  # rad/pixel
    dk = 2 * np.pi / (np.asarray(N) if xp is np else N)
    return xp.where(N * dk / 2 > maxk_pix, N // 2, xp.ceil(maxk_pix / dk).astype(_int(xp)))


def good_fft_size(N, xp=np):
    """GalSim's goodFFTSize: the next 2^k or 3·2^k at or above N."""
    log2 = xp.ceil(xp.log2(N))
    p2, p3 = 2**log2, 3 * 2 ** (log2 - 2)
    return xp.where(p3 >= N, p3, p2).astype(_int(xp))


def galsim_fft_size(stepk, pixel_scale, stamp, xp=np):
    """The N GalSim's drawImage would use (getGoodImageSize, goodFFTSize, minimum 128)."""
    nd = 2 * np.pi / (pixel_scale * (np.asarray(stepk, dtype=np.float64) if xp is np else stepk))
    N = xp.ceil(nd * (1 - 1e-12)).astype(_int(xp))
    N = 2 * ((N + 1) // 2)
    N = xp.maximum(N, stamp)
    return xp.maximum(good_fft_size(N, xp), 128)


def _int(xp):
    """The integer type of grid sizes: int64 in numpy, int32 on the device."""
    return np.int64 if xp is np else "int32"


def choose_grid(tables: Tables, flux, n, hlr, g1, g2, psf_fwhm, *, N=None, box_step=8, grid=None):
    """Per galaxy: the FFT size N (`grid_size`, or ``N`` forced), GalSim's k-box half-width h
    (in units of dk) and the padded half-width H ≥ h shared by galaxies drawn together (h rounded
    up to a multiple of ``box_step``). Returns int arrays (N, h, H); all three are functions of
    the galaxy alone, unless ``grid`` holds them. ``flux`` is unused (accepted for a uniform call
    signature).

    ``grid``, a pair (N, h) of int arrays (B,) (e.g. this function's first two results at another
    point, or :func:`enclosing_grid`'s), fixes each galaxy's grid instead: the image is then a
    smooth function of the parameters (a fit's model), and it is as accurate as on the galaxy's
    own grid where ``grid`` encloses that (:func:`enclosing_grid`). Where the fixed k-box would
    reach beyond the tables for these parameters, it is narrowed to their end.

    Raises
    ------
    ParameterError
        If the k-box would reach beyond the tables (k·hlr·major axis or k·fwhm > s_max²): a
        galaxy too large to draw from them.
    """
    maxk, stepk = galsim_maxk_stepk(tables, n, hlr, g1, g2, psf_fwhm)
    shape = maxk.shape
    if grid is not None:
        N = np.broadcast_to(np.asarray(grid[0], dtype=np.int64), shape).copy()
        h = np.broadcast_to(np.asarray(grid[1], dtype=np.int64), shape).copy()
    else:
        if N is None:
            N = grid_size(tables, n, hlr, g1, g2, psf_fwhm, stepk)
        N = np.broadcast_to(np.asarray(N, dtype=np.int64), shape).copy()
        h = kbox_half(maxk, N, tables.pixel_scale)
    # the k-box corner must stay inside the tables, for the galaxy (hlr·major·|k|) and the PSF
    extent = np.broadcast_to(np.maximum(np.asarray(hlr) * shear_axes(g1, g2)[0], np.asarray(psf_fwhm)), shape)
    if grid is not None:  # a fixed box ends where the tables do (a box wider than GalSim's own)
        dk = 2 * np.pi / (N * tables.pixel_scale)
        h = np.minimum(h, np.maximum(np.floor(tables.s_max**2 / (math.sqrt(2) * dk * extent)), 1).astype(np.int64))
    H = -(-h // box_step) * box_step
    need = extent * math.sqrt(2) * h * 2 * np.pi / (N * tables.pixel_scale)
    bad = np.flatnonzero(need > tables.s_max**2)
    if len(bad):
        i = bad[0]
        raise ParameterError(
            f"galaxy {i} (n {np.broadcast_to(n, shape)[i]:g}, "
            f"hlr {np.broadcast_to(hlr, shape)[i]:g} arcsec, "
            f"psf_fwhm {np.broadcast_to(psf_fwhm, shape)[i]:g} arcsec) is too large for the k-space "
            f"tables: its k-box reaches k·radius {need[i]:.1f}, the tables end at "
            f"{tables.s_max**2:.1f} (renderer: galsim draws it)"
        )
    return N, h, H


def enclosing_grid(tables: Tables, grid, flux, n, hlr, g1, g2, psf_fwhm):
    """Per galaxy: the smallest grid (N, h) that encloses both ``grid`` and the galaxy's own.

    N is the larger of the two sizes, and the k-box reaches the farther of the two boxes (in
    rad/arcsec) at that size. A galaxy drawn on a grid that encloses its own is as accurate as on
    its own (the wrap-around is no larger, the k-box no narrower). Returns int arrays (N, h); they
    equal ``grid`` wherever it encloses the galaxy's own grid already.

    Parameters
    ----------
    tables : Tables
        The k-space tables.
    grid : pair of int arrays (B,)
        Sizes N and k-box half-widths h (units of dk = 2π/(N·scale)), as :func:`choose_grid`'s.
    flux, n, hlr, g1, g2, psf_fwhm : array_like of shape (B,) or scalars
        The galaxies.
    """
    own_N, _, _ = choose_grid(tables, flux, n, hlr, g1, g2, psf_fwhm, box_step=1)
    N0 = np.broadcast_to(np.asarray(grid[0], dtype=np.int64), own_N.shape)
    h0 = np.broadcast_to(np.asarray(grid[1], dtype=np.int64), own_N.shape)
    N = np.maximum(N0, own_N)
    maxk = galsim_maxk_stepk(tables, n, hlr, g1, g2, psf_fwhm)[0]
    # the fixed box's reach h0·dk(N0) in units of dk(N), in integers (exact where N = N0)
    h = np.maximum(kbox_half(maxk, N, tables.pixel_scale), -(-h0 * N // N0))
    return N, h


def grid_size(tables: Tables, n, hlr, g1, g2, psf_fwhm, stepk=None, xp=np):
    """N by galaxy: GalSim's own N, or the smaller N that the calibrated rule allows.

    The rule table holds, at nodes of (n, major-axis radius hlr·sqrt((1+|g|)/(1-|g|)), PSF FWHM),
    the smallest size in `GRID_SIZES` whose image is within the calibration tolerances of the
    image at GalSim's N. A galaxy takes the largest N required at the 8 corners of its cell (no
    monotonicity assumed), and never more than GalSim's own N (at which the match is exact, the
    wrap-around included). Outside the calibrated ranges it takes GalSim's N. ``xp``: numpy, or
    ``jax.numpy`` in a traced device computation.
    """
    if stepk is None:
        stepk = galsim_maxk_stepk(tables, n, hlr, g1, g2, psf_fwhm, xp)[1]
    NG = galsim_fft_size(stepk, tables.pixel_scale, tables.stamp, xp)
    if tables.rule_N.size == 0:
        return NG
    if xp is np:
        n, hlr, psf_fwhm = (np.asarray(a, dtype=np.float64) for a in (n, hlr, psf_fwhm))
    r = hlr * shear_axes(g1, g2, xp)[0]
    need = xp.zeros(NG.shape, dtype=_int(xp))
    inside = xp.ones(NG.shape, dtype=bool)
    idx = []
    for x, nodes in ((n, tables.rule_n), (r, tables.rule_r), (psf_fwhm, tables.rule_fwhm)):
        tol = 1e-9 * (nodes[-1] - nodes[0])
        inside &= (x >= nodes[0] - tol) & (x <= nodes[-1] + tol)
        hi = xp.clip(xp.searchsorted(nodes, x - tol), 0, len(nodes) - 1)
        lo = xp.clip(xp.searchsorted(nodes, x + tol, side="right") - 1, 0, len(nodes) - 1)
        idx.append((lo, hi))
    rule = tables.rule_N if xp is np else xp.asarray(tables.rule_N, dtype=_int(xp))
    for a in idx[0]:
        for b in idx[1]:
            for c in idx[2]:
                need = xp.maximum(need, rule[a, b, c])
    return xp.where(inside, xp.minimum(need, NG), NG)
