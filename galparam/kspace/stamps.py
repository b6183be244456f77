"""Any stamp in k-space: a sheared Sérsic galaxy, off-centre, through a Moffat or image PSF, on a
sky level, in a stamp of any shape and pixel scale, matched to GalSim.

The reference is GalSim 2.8's::

    gal = galsim.Sersic(n, half_light_radius=hlr, flux=flux).shear(g1=g1, g2=g2).shift(dx * scale, dy * scale)
    galsim.Convolve(gal, psf).drawImage(nx=nx, ny=ny, scale=scale, method=method) + sky

with ``psf`` a ``Moffat`` (``method="auto"``: the pixel response is convolved in) or an
``InterpolatedImage`` of a PSF image (``method="no_pixel"`` for an effective PSF, which holds the
pixel already; ``"auto"`` for one that does not). ``(dx, dy)`` is the galaxy's offset in pixels
from the stamp's true centre (pixel ((nx+1)/2, (ny+1)/2) one-based), as ``drawImage``'s
``offset``.

The arithmetic is GalSim's ``drawFFT``, for many galaxies of one frame at once:

* the galaxy's transform from the k-space tables (:func:`galparam.kspace.numpy_renderer.sersic_on_box`,
  the same splines as galparam's own datasets, here from tables of a wider reach,
  :data:`~galparam.kspace.tables.WIDE_S_MAX`), times the PSF's transform (:mod:`galparam.psf`:
  complex for an image), times the pixel's sinc where the PSF lacks it;
* the offset and the even axes' half-pixel centring as one phase per galaxy (separable);
* GalSim's own FFT size N (99.5 % of the flux, the offset widening it) and k-box (the
  convolution's maxk), sampled on the half-plane, folded modulo N as complex numbers, and the
  stamp cut from the real inverse transform.

With ``derivatives``, the exact derivatives by all eight parameters (:data:`STAMP_PARAMETERS`):
the Sérsic ones as for the datasets' renderer, the offsets' as −i·k times the transform, the
sky's a constant; or their contraction with weight images (a likelihood's gradient) at the cost
of about one more draw.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from galparam.frame import Frame
from galparam.geometry import DEFAULT_GEOMETRY
from galparam.kspace.cache import load_tables
from galparam.kspace.fourier import box_grid, fold_into
from galparam.kspace.grid import good_fft_size, shear_axes, unit_maxk_stepk
from galparam.kspace.numpy_renderer import sersic_on_box, sersic_setup, sersic_shear_derivatives
from galparam.kspace.tables import WIDE_S_MAX, Tables
from galparam.parameters import ParameterError

STAMP_PARAMETERS = ("flux", "sersic_n", "hlr", "g1", "g2", "dx", "dy", "sky")
"""A stamp's model parameters: counts, index, arcsec, reduced shear, pixels (from the true
centre, as GalSim's ``offset``), counts per pixel."""

MINIMUM_FFT_SIZE = 128
"""GalSim's ``GSParams.minimum_fft_size``."""

FIT_FFT_SIDES = 6
"""A fit draws on an FFT of at most this many times the stamp's larger side (:func:`stamp_grid`'s
``max_size``): GalSim sizes N to hold 99.5 % of the flux, 4096 for a 30-pixel n = 6 galaxy (4 s a
draw); at 6 sides the far tail's wrap-around moves no pixel by more than ~3e-5 of the peak
(8.6e-5 at 4 sides, measured on the worst real case: n 6, hlr 31 pixels, a 104-pixel stamp)."""

CHUNK_POINTS = 200_000
"""Box points evaluated at once (a chunk's arrays stay in the CPU caches)."""


def wide_tables() -> Tables:
    """The tables that draw any stamp: :func:`~galparam.kspace.cache.load_tables` at the wide reach."""
    return load_tables(DEFAULT_GEOMETRY, s_max=WIDE_S_MAX)


def _columns(theta) -> tuple[np.ndarray, ...]:
    theta = np.atleast_2d(np.asarray(theta, dtype=np.float64))
    if theta.shape[1] != len(STAMP_PARAMETERS):
        raise ValueError(f"parameters of shape {theta.shape}: expected (B, {len(STAMP_PARAMETERS)}) {STAMP_PARAMETERS}")
    return tuple(theta[:, i].copy() for i in range(theta.shape[1]))


def _centring(frame: Frame) -> tuple[float, float]:
    """(ox, oy): the true centre's offset from the FFT's origin pixel (nx//2, ny//2), pixels."""
    ny, nx = frame.shape
    return (-0.5 if nx % 2 == 0 else 0.0), (-0.5 if ny % 2 == 0 else 0.0)


def galsim_axes(g1, g2) -> tuple[np.ndarray, np.ndarray]:
    """Major and minor axis factors of a shear as GalSim's ``Transformation`` computes them (from
    ``Shear.getMatrix()``, bit for bit)."""
    g1, g2 = np.broadcast_arrays(np.asarray(g1, dtype=np.float64), np.asarray(g2, dtype=np.float64))
    major, minor = np.empty(g1.shape), np.empty(g1.shape)
    for i, (s1, s2) in enumerate(zip(g1.ravel().tolist(), g2.ravel().tolist(), strict=True)):
        # Shear.getMatrix() and Transformation._major_minor, in Python floats as GalSim has them
        norm = np.sqrt(1.0 - abs(s1 + 1j * s2) ** 2)
        a, b, d = (1.0 + s1) / norm, s2 / norm, (1.0 - s1) / norm
        h1, h2 = math.hypot(a + d, b - b), math.hypot(a - d, b + b)
        major.flat[i], minor.flat[i] = 0.5 * abs(h1 + h2), 0.5 * abs(h1 - h2)
    return major, minor


def fit_fft_size(frame: Frame) -> int:
    """The largest FFT a fit of this frame draws on (:data:`FIT_FFT_SIDES` times its larger side)."""
    return good_fft_size(max(FIT_FFT_SIDES * max(frame.shape), MINIMUM_FFT_SIZE))


def stamp_grid(tables: Tables, frame: Frame, theta, *, max_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per galaxy, GalSim's FFT size N and k-box half-width h (in units of dk = 2π/N per pixel).

    With ``max_size`` (e.g. :func:`fit_fft_size`), N is at most that, the k-box keeping its reach
    in rad/pixel: only the wrap-around of the profile's far tail differs from GalSim's drawing.

    The convolution's maxk is the smallest of the galaxy's (``maxk_unit/(hlr·minor axis)``) and
    the PSF's; 1/stepk² the sum of theirs, the galaxy's radius π/stepk widened by its offset and
    the whole by the even axes' half-pixel centring; the pixel, where the PSF lacks it, adds
    π⁻² to 1/stepk² and caps maxk (``GSObject.drawFFT_makeKImage``).
    """
    flux, n, hlr, g1, g2, dx, dy, _ = _columns(theta)
    scale = frame.pixel_scale
    major, minor = galsim_axes(g1, g2)
    unit_maxk, unit_stepk = unit_maxk_stepk(tables, n)
    # GalSim's own floating-point sequence (a k-box edge can fall on an integer number of dk)
    maxk = np.minimum(unit_maxk / hlr / minor, frame.psf.maxk) / (1.0 / scale)  # rad/pixel
    stepk_gal = unit_stepk / hlr / major
    stepk_gal = np.pi / (np.pi / stepk_gal + np.hypot(dx * scale, dy * scale))
    stepk = (stepk_gal**-2 + frame.psf.stepk**-2) ** -0.5 / (1.0 / scale)
    ox, oy = _centring(frame)
    if ox or oy:
        stepk = np.pi / (np.pi / stepk + math.hypot(ox, oy))
    if not frame.psf.includes_pixel:
        maxk = np.minimum(maxk, 2.0 / 1e-3)
        stepk = (stepk**-2 + np.pi**-2) ** -0.5
    N = np.ceil(2 * np.pi / stepk * (1.0 - 1e-12)).astype(np.int64)
    N = 2 * ((N + 1) // 2)
    ny, nx = frame.shape
    image_N = max(2 * max(nx // 2, ny // 2), nx, ny)
    N = np.array([max(good_fft_size(max(int(v), image_N)), MINIMUM_FFT_SIZE) for v in N], dtype=np.int64)
    dk = 2 * np.pi / N
    h = np.where(N * dk / 2 > maxk, N // 2, np.ceil(maxk / dk).astype(np.int64))
    if max_size is not None:
        capped = np.minimum(N, int(max_size))
        h = -(-h * capped // N)  # the same reach on the smaller grid
        N = capped
    return N, h


def enclosing_stamp_grid(tables: Tables, frame: Frame, grid, theta, *, max_size: int | None = None):
    """Per galaxy, the smallest grid that encloses ``grid`` and the galaxy's own (the larger N,
    the farther k-box reach): a fit moved onto it is as accurate as on the galaxy's own."""
    own_N, own_h = stamp_grid(tables, frame, theta, max_size=max_size)
    N0, h0 = (np.broadcast_to(np.asarray(a, dtype=np.int64), own_N.shape) for a in grid)
    N = np.maximum(N0, own_N)
    h = np.maximum(-(-own_h * N // own_N), -(-h0 * N // N0))
    return N, h


def _check_reach(tables: Tables, frame: Frame, N, h, n, hlr, g1, g2) -> None:
    """Refuse a galaxy whose k-box reaches beyond the tables (k·hlr·major axis > s_max²)."""
    major = shear_axes(g1, g2)[0]
    reach = math.sqrt(2) * h * 2 * np.pi / (N * frame.pixel_scale) * hlr * major
    bad = np.flatnonzero(reach > tables.s_max**2)
    if len(bad):
        i = bad[0]
        raise ParameterError(
            f"galaxy {i} (n {n[i]:g}, hlr {hlr[i]:g} arcsec = {hlr[i] / frame.pixel_scale:.1f} pixels, "
            f"major axis ×{major[i]:.2f}) is too large for the k-space tables at this pixel scale: its k-box "
            f"reaches k·radius {reach[i]:.0f}, the tables end at {tables.s_max**2:.0f}"
        )


@lru_cache(maxsize=32)
def _psf_on_box(psf, N: int, h: int, scale: float) -> np.ndarray:
    """(2h+1, h+1) complex: the PSF's transform on the half-plane box, the pixel's sinc where the
    PSF lacks it, and the kx = 0 column halved (the half-plane then sums to the full plane)."""
    m_x, m_y = np.arange(0, h + 1), np.arange(-h, h + 1)
    dk = 2 * np.pi / (N * scale)
    values = np.asarray(psf.kvalue(m_x * dk, m_y * dk), dtype=np.complex128)
    if not psf.includes_pixel:
        values = values * (np.sinc(m_y / N)[:, None] * np.sinc(m_x / N)[None, :])
    values = values.copy()
    values[:, 0] *= 0.5
    return values


def _phases(N: int, h: int, dx, dy, ox: float, oy: float):
    """Per galaxy, exp(−i·k·(offset + centring)) along x (B, h+1) and y (B, 2h+1)."""
    kx = np.arange(0, h + 1) * (2 * np.pi / N)
    ky = np.arange(-h, h + 1) * (2 * np.pi / N)
    return np.exp(-1j * np.outer(dx + ox, kx)), np.exp(-1j * np.outer(dy + oy, ky))


def _stamp_indices(frame: Frame, N: int) -> tuple[np.ndarray, np.ndarray]:
    """Grid indices of the stamp's rows and columns: pixel j is frequency-grid position j − side//2."""
    ny, nx = frame.shape
    return (np.arange(ny) - ny // 2) % N, (np.arange(nx) - nx // 2) % N


def _inverse(V, N: int, h: int, rows, cols) -> np.ndarray:
    """Real stamps from half-plane box values V (B, 2h+1, h+1) (kx = 0 halved): fold in ky,
    inverse FFT along y on the stamp's rows, fold in kx, inverse FFT along x, 2·Re."""
    from scipy import fft as sfft

    B = V.shape[0]
    Vy = fold_into(np.zeros((B, N, h + 1), dtype=V.dtype), V, N, h, axis=1)
    Y = sfft.ifft(Vy, axis=1)[:, rows]
    X = fold_into(np.zeros((B, len(rows), N), dtype=V.dtype), Y, N, 0, axis=2)
    return 2 * sfft.ifft(X, axis=2)[:, :, cols].real


def _adjoint(weights, N: int, h: int, rows, cols) -> np.ndarray:
    """A(k) = 2·ifft2(w on the grid) at each box point (B, 2h+1, h+1): Σ_pixels w·stamp(V) = Re Σ_box V·A."""
    from scipy import fft as sfft

    B = weights.shape[0]
    grid_rows = np.zeros((B, len(rows), N))
    grid_rows[:, :, cols] = weights
    along_x = sfft.ifft(grid_rows, axis=2)[:, :, np.arange(0, h + 1) % N]
    columns = np.zeros((B, N, h + 1), dtype=along_x.dtype)
    columns[:, rows] = along_x
    return 2 * sfft.ifft(columns, axis=1)[:, np.arange(-h, h + 1) % N]


def draw_stamps(
    tables: Tables, frame: Frame, theta, *, dtype=np.float64, grid=None, derivatives=None, compute_dtype=np.float64
):
    """Draw galaxies of one frame: ``theta`` (B, 8) in :data:`STAMP_PARAMETERS` order → (B, ny, nx).

    Parameters
    ----------
    tables : Tables
        The k-space tables (:func:`wide_tables`).
    frame : Frame
        The stamp's shape, pixel scale and PSF.
    theta : array_like of shape (B, 8)
        flux (counts), Sérsic index, half-light radius (arcsec), g1, g2, offset dx, dy (pixels
        from the true centre), sky (counts per pixel).
    dtype : numpy float type
        The images' type.
    compute_dtype : {numpy.float64, numpy.float32}
        The arithmetic's precision on the k-box and in the FFTs: float64 (GalSim's drawing to
        ~1e-9 of the peak) or float32 (the float64 drawing to ~2e-7 of the peak, 1.6–1.8× sooner:
        a posterior's many draws). Derivatives stay float64 where they meet float64 factors.
    grid : pair of int arrays (B,), optional
        Each galaxy's FFT size and k-box half-width, held (a fit's model is then smooth in θ);
        default GalSim's own (:func:`stamp_grid`).
    derivatives : {None, "jacobian", "vjp"}
        ``"jacobian"``: also return (B, 8, ny, nx), the derivatives of the drawn model by each
        parameter. ``"vjp"``: also return a function mapping weight images (B, ny, nx) to
        Σ_pixels w·∂image/∂θ (B, 8).

    Raises
    ------
    ParameterError
        A galaxy whose k-box reaches beyond the tables.
    """
    if np.dtype(compute_dtype) not in (np.float64, np.float32):
        raise ValueError(f"compute_dtype {np.dtype(compute_dtype)}: float64 or float32")
    flux, n, hlr, g1, g2, dx, dy, sky = _columns(theta)
    B = len(flux)
    Ns, hs = stamp_grid(tables, frame, theta) if grid is None else (np.broadcast_to(a, (B,)) for a in grid)
    Ns, hs = np.asarray(Ns, dtype=np.int64), np.asarray(hs, dtype=np.int64)
    if grid is not None:  # a held box ends where the tables do
        major = shear_axes(g1, g2)[0]
        dk = 2 * np.pi / (Ns * frame.pixel_scale)
        limit = np.floor(tables.s_max**2 / (math.sqrt(2) * dk * hlr * major)).astype(np.int64)
        hs = np.minimum(hs, np.maximum(limit, 1))
    _check_reach(tables, frame, Ns, hs, n, hlr, g1, g2)
    ny, nx = frame.shape
    images = np.empty((B, ny, nx))
    jac = np.empty((B, len(STAMP_PARAMETERS), ny, nx)) if derivatives == "jacobian" else None
    pieces = []
    keys = np.stack([Ns, hs], axis=1)
    for key in keys[:1] if B == 1 else np.unique(keys, axis=0):  # a fit's one galaxy: one grid
        sel = np.flatnonzero((keys == key).all(axis=1))
        drawn = _draw_group(
            tables,
            frame,
            int(key[0]),
            int(key[1]),
            flux[sel],
            n[sel],
            hlr[sel],
            g1[sel],
            g2[sel],
            dx[sel],
            dy[sel],
            derivatives,
            compute_dtype,
        )
        if derivatives == "jacobian":
            images[sel], jac[sel] = drawn
        elif derivatives == "vjp":
            images[sel] = drawn[0]
            pieces.append((sel, drawn[1]))
        else:
            images[sel] = drawn
    galaxy_images = images.copy() if derivatives else None
    images += sky[:, None, None]
    images = images.astype(dtype, copy=False)
    if derivatives is None:
        return images
    if derivatives == "jacobian":
        jac[:, 0] = galaxy_images / flux[:, None, None]
        jac[:, 7] = 1.0
        return images, jac

    def vjp(weights):
        weights = np.asarray(weights, dtype=np.float64)
        out = np.empty((B, len(STAMP_PARAMETERS)))
        for sel, piece in pieces:
            out[sel] = piece(weights[sel])
        out[:, 0] = np.einsum("bij,bij->b", weights, galaxy_images) / flux
        out[:, 7] = weights.sum(axis=(1, 2))
        return out

    return images, vjp


def _draw_group(tables, frame, N, h, flux, n, hlr, g1, g2, dx, dy, derivatives, compute_dtype=np.float64):
    """Stamps (B, ny, nx) of galaxies sharing (N, h) without the sky, and their derivatives:
    ``"jacobian"`` (B, 8, ny, nx) with the flux and sky planes left for the caller; ``"vjp"`` a
    function w → (B, 8) likewise."""
    derive = derivatives is not None
    B = len(flux)
    real = np.dtype(compute_dtype).type
    complex_ = np.complex128 if real == np.float64 else np.complex64
    g = box_grid(N, h, frame.pixel_scale, real)
    galaxy = sersic_setup(tables, g, flux, n, hlr, g1, g2, real, derive)
    transfer = _psf_on_box(frame.psf, N, h, frame.pixel_scale).astype(complex_, copy=False)
    ox, oy = _centring(frame)
    phase_x, phase_y = (p.astype(complex_, copy=False) for p in _phases(N, h, dx, dy, ox, oy))
    rows, cols = _stamp_indices(frame, N)
    kx_pix = np.arange(0, h + 1) * (2 * np.pi / N)
    ky_pix = np.arange(-h, h + 1) * (2 * np.pi / N)
    images = np.empty((B, *frame.shape))
    jac = np.empty((B, len(STAMP_PARAMETERS), *frame.shape)) if derivatives == "jacobian" else None
    stored = np.empty((B, 4, 2 * h + 1, h + 1)) if derivatives == "vjp" else None
    step = max(1, CHUNK_POINTS // (g["kxy"].size * (4 if derive else 1)))
    for a in range(0, B, step):
        b = min(B, a + step)
        F, factors = sersic_on_box(tables, g, galaxy, a, b, real, derive)
        shift = transfer[None] * phase_y[a:b, :, None] * phase_x[a:b, None, :]  # PSF · pixel · offset
        V = F * shift
        images[a:b] = _inverse(V, N, h, rows, cols)
        if derivatives == "jacobian":
            planes = sersic_shear_derivatives(g, galaxy["shear"], a, b, *factors)
            for p, dF in enumerate(planes, start=1):
                jac[a:b, p] = _inverse(dF * shift, N, h, rows, cols)
            jac[a:b, 5] = _inverse(V * (-1j * kx_pix)[None, None, :], N, h, rows, cols)
            jac[a:b, 6] = _inverse(V * (-1j * ky_pix)[None, :, None], N, h, rows, cols)
        elif derivatives == "vjp":
            dF_dn, s1, s2, _ = factors
            stored[a:b, 0], stored[a:b, 1], stored[a:b, 2], stored[a:b, 3] = dF_dn, s1, s2, F
    if derivatives != "vjp":
        return (images, jac) if derive else images
    shear = galaxy["shear"]

    def vjp(weights):
        # Σ_pixels w·stamp(c·∂V/∂θ) = Re Σ_box ∂V/∂θ·A; with V = F·T (T the PSF, pixel and offset
        # factor) a Sérsic parameter's is Σ ∂F/∂θ·Re(T·A), an offset's Σ F·k·Im(T·A)
        Z = transfer[None] * phase_y[:, :, None] * phase_x[:, None, :] * _adjoint(weights, N, h, rows, cols)
        real, imag = Z.real, Z.imag
        dn = np.einsum("byx,byx->b", stored[:, 0], real)
        a_ = np.einsum("byx,byx->b", stored[:, 1], real)
        x = stored[:, 2] * real
        bd, bs, bxy = (np.einsum("byx,yx->b", x, term) for term in (g["kdiff"], g["ksum"], g["kxy"]))
        Fi = stored[:, 3] * imag
        out = np.empty((B, len(STAMP_PARAMETERS)))
        out[:, 0] = np.nan  # the flux and the sky: the caller's
        out[:, 1] = dn
        out[:, 2] = a_ * shear["half_over_hlr"]
        out[:, 3] = shear["a1"] * a_ / 4 + shear["hh2"] * bd + shear["hh2g1"] * bs
        out[:, 4] = shear["a2"] * a_ / 4 + shear["hh2g2"] * bs + shear["hh2"] * bxy
        out[:, 5] = np.einsum("byx,x->b", Fi, kx_pix)
        out[:, 6] = np.einsum("byx,y->b", Fi, ky_pix)
        out[:, 7] = np.nan
        return out

    return images, vjp
