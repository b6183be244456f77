"""PSF stamps from the k-space tables: GalSim's drawing of the Moffat ⊗ pixel PSF, many at once.

The reference is :meth:`galparam.render.GalSimRenderer.psf_image`, GalSim's
``Moffat(beta, fwhm).drawImage(image=Image(64, 64, scale))`` by FFT (``GSObject.drawFFT``): the
Moffat × pixel transform sampled on a half-plane k-box of half-width ``h`` (in units of
``dk = 2π/(N·scale)``), wrapped onto N×N, inverse-FFT'd and cropped. Over FWHM 0.35–1.3″ GalSim's
N is 128 and ``h`` runs from 125 (0.4″: the Moffat's maxk lies beyond Nyquist, so the box folds)
down to 64 (the Nyquist box, FWHM ≥ 0.776″). :func:`psf_fft` does exactly that arithmetic from the
tables (3e-13 of the peak from GalSim in float64) at ~0.4 ms an image.

:func:`psf_images` is the fast path (~8 µs an image in batches, GalSim ~0.6 ms). For a fixed
(N, h) the image is an analytic function of the FWHM (the transform is Moffat(|k|·fwhm); box and
wrap are fixed), so it is interpolated in the FWHM from exact :func:`psf_fft` images at Chebyshev
nodes, piecewise over intervals on which GalSim's (N, h) is constant: the interval edges are
GalSim's own jumps in h (found by bisection of the same rule), so no interpolant straddles one.
An image is stored as one octant of the stamp (the profile and the stamp are symmetric under
x ↔ -x, y ↔ -y, x ↔ y: 528 numbers). The table (about 110 intervals × 6 nodes over 0.35–1.5″,
2.8 MB) is built once per process in under a second, from the tables alone (no GalSim).

A jump in h moves the image by up to 7e-5 of the peak, so h must be GalSim's exactly, also at
FWHMs within an ulp of a jump: :func:`psf_geometry` repeats GalSim's floating-point sequence.
FWHMs outside the table's range are drawn by :func:`psf_fft`. An image depends only on its own
FWHM, bit for bit: its interval and weights are functions of it and every operation is
elementwise.
"""

from __future__ import annotations

import numpy as np

from galparam.kspace.fourier import box_grid, eval_spline, fold_into, hermitian_inverse
from galparam.kspace.grid import good_fft_size

# Range the interpolation table covers (outside it: exact psf_fft). v3 draws 0.5–1.0.
FWHM_RANGE = (0.35, 1.5)
NODES = 6  # Chebyshev nodes per interval
MAX_REL_WIDTH = 0.02  # intervals no wider than this fraction of their FWHM
CHUNK = 128  # images combined at a time (their octants and stamps stay in the CPU caches)


# --------------------------------------------------------------------------------------------
# GalSim's geometry and the exact (slow) path
# --------------------------------------------------------------------------------------------
def psf_geometry(tables, fwhm):
    """GalSim's FFT size N and k-box half-width h for Moffat(fwhm) ⊗ Pixel, as int arrays.

    Convolution rules: maxk is the smaller of the Moffat's and the pixel's, 1/stepk² the sum.
    maxk and the box (``GSObject.drawFFT_makeKImage``) are computed with GalSim's own sequence
    of floating-point operations, so h jumps at exactly GalSim's FWHMs (bit for bit; checked on
    3,000 FWHMs and at every jump), and so are stepk and N (128 up to FWHM 1.3248″, then 192).
    """
    fwhm = np.asarray(fwhm, dtype=np.float64)
    beta, scale = tables.psf_beta, tables.pixel_scale
    stamp = tables.stamp
    # drawImage works in pixel units on Convolve(Transformation(Moffat), Pixel(1)): the
    # Transformation divides stepk and maxk by 1/scale, and an even stamp's half-pixel centring
    # shift adds |shift| = hypot(0.5, 0.5) pixel to the radius π/stepk; Pixel(1).stepk = π
    # GalSim's Moffat(fwhm) has maxk maxk1·(1/r0) and stepk π/((π/stepk1)·r0), bit for bit
    maxk1, stepk1 = tables.psf_unit_maxk, tables.psf_unit_stepk
    r0 = fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))
    stepk = np.pi / ((np.pi / stepk1) * r0) / (1.0 / scale)
    if stamp % 2 == 0:
        stepk = np.pi / (np.pi / stepk + np.hypot(0.5, 0.5))
    stepk = (stepk**-2 + np.pi**-2) ** -0.5
    N = np.ceil(2.0 * np.pi / stepk * (1.0 - 1.0e-12)).astype(np.int64)  # getGoodImageSize
    N = 2 * ((N + 1) // 2)
    N = good_fft_size(np.maximum(N, 2 * stamp))  # the image's own N: 2·max|bound| (bounds 1..stamp)
    N = np.maximum(N, 128)  # GSParams.minimum_fft_size
    maxk = np.minimum(maxk1 * (1.0 / r0) / (1.0 / scale), 2.0 / 1e-3)  # rad/pixel
    dk = 2.0 * np.pi / N
    h = np.where(N * dk / 2 > maxk, N // 2, np.ceil(maxk / dk).astype(np.int64))
    return N, h


def psf_fft(tables, fwhm, dtype=np.float64):
    """Exact path: GalSim's drawFFT arithmetic for each FWHM (grouped by (N, h)). ~0.4 ms/image."""
    fwhm = np.atleast_1d(np.asarray(fwhm, dtype=np.float64))
    Ns, hs = psf_geometry(tables, fwhm)
    out = np.empty((len(fwhm), tables.stamp, tables.stamp), dtype)
    keys = np.stack([Ns, hs], 1)
    M = tables.psf.shape[0]
    for key in np.unique(keys, axis=0):
        sel = np.flatnonzero((keys == key).all(1))
        N, h = int(key[0]), int(key[1])
        g = box_grid(N, h, tables.pixel_scale, np.float64)
        pos = np.sqrt(g["k"][None] * fwhm[sel, None, None]) / tables.s_step
        rows = np.minimum(pos.astype(np.int64), M - 1)
        F = eval_spline(tables.psf_coef, rows, pos - rows)  # Moffat(|k|·fwhm)
        F *= g["py"][:, None] * g["px"][None, :]  # pixel sinc × fold sign (kx = 0 halved)
        Fy = fold_into(np.zeros((len(sel), N, h + 1)), F, N, h, axis=1)
        P = fold_into(np.zeros((len(sel), N, N)), Fy, N, 0, axis=2)
        out[sel] = hermitian_inverse(P, N, tables.stamp, g["phase"])
    return out


# --------------------------------------------------------------------------------------------
# Octant storage
# --------------------------------------------------------------------------------------------
def _octant_maps(stamp):
    """(take, expand): flat indices of the octant in a stamp, and the octant index of every pixel."""
    c = stamp // 2
    d = np.where(np.arange(stamp) >= c, np.arange(stamp) - c, c - 1 - np.arange(stamp))  # |offset| rank
    i, j = np.tril_indices(c)  # i ≥ j
    oct_index = np.full((c, c), -1)
    oct_index[i, j] = np.arange(len(i))
    oct_index[j, i] = np.arange(len(i))
    take = (c + i) * stamp + (c + j)
    expand = oct_index[d[:, None], d[None, :]]
    return take, expand


# --------------------------------------------------------------------------------------------
# The interpolation table
# --------------------------------------------------------------------------------------------
def _breaks(tables, lo, hi, scan=1e-4):
    """FWHMs in (lo, hi) where GalSim's (N, h) changes, each to ~1 ulp (bisection of the rule)."""
    f = np.linspace(lo, hi, int(np.ceil((hi - lo) / scan)) + 1)
    N, h = psf_geometry(tables, f)
    chg = np.flatnonzero((N[1:] != N[:-1]) | (h[1:] != h[:-1]))
    a, b = f[chg].copy(), f[chg + 1].copy()
    key_a = np.stack(psf_geometry(tables, a), 1)
    for _ in range(60):
        m = 0.5 * (a + b)
        same = (np.stack(psf_geometry(tables, m), 1) == key_a).all(1)
        a, b = np.where(same, m, a), np.where(same, b, m)
    return b  # the first FWHM of the next (N, h)


class PsfTable:
    """Piecewise Chebyshev interpolation of the exact PSF octant in the FWHM (see module doc)."""

    def __init__(self, tables, fwhm_range=FWHM_RANGE, nodes=NODES, max_rel_width=MAX_REL_WIDTH):
        lo, hi = map(float, fwhm_range)
        edges = np.concatenate([[lo], _breaks(tables, lo, hi), [hi]])
        left, right = [], []
        for a, b in zip(edges[:-1], edges[1:], strict=True):
            n = max(1, int(np.ceil((b - a) / (max_rel_width * 0.5 * (a + b)))))
            cuts = a + (b - a) * np.arange(n + 1) / n
            cuts[-1] = b
            left.extend(cuts[:-1])
            right.extend(cuts[1:])
        self.left, self.right = np.array(left), np.array(right)
        self.lo, self.hi = lo, hi
        self.mid, self.half = 0.5 * (self.left + self.right), 0.5 * (self.right - self.left)
        # every interval lies inside one (N, h) segment: its midpoint tells which
        self.N, self.h = psf_geometry(tables, self.mid)
        K = int(nodes)
        self.x = np.cos(np.pi * (2 * np.arange(K) + 1) / (2 * K))  # Chebyshev points, interior
        self.denom = np.array([np.prod([self.x[k] - self.x[j] for j in range(K) if j != k]) for k in range(K)])
        f_nodes = (self.mid[:, None] + self.half[:, None] * self.x[None, :]).ravel()
        imgs = psf_fft(tables, f_nodes, np.float64)
        # a node is strictly inside its interval, hence inside its (N, h) segment
        if not (np.stack(psf_geometry(tables, f_nodes), 1) == np.repeat(np.stack([self.N, self.h], 1), K, 0)).all():
            raise RuntimeError("a PSF interpolation node lies outside its interval's k-box (a bug)")
        self.take, self.expand = _octant_maps(tables.stamp)
        self.expand_flat = np.ascontiguousarray(self.expand.ravel())
        octs = imgs.reshape(len(f_nodes), -1)[:, self.take]  # (I·K, 528)
        self.nodes = octs.reshape(len(self.left), K, -1)
        self._cast = {}
        self.stamp = tables.stamp
        self.tables = tables

    def values(self, dtype):
        key = np.dtype(dtype).str
        if key not in self._cast:
            self._cast[key] = np.ascontiguousarray(self.nodes.reshape(-1, self.nodes.shape[-1]).astype(dtype))
        return self._cast[key]

    def locate(self, fwhm):
        """Interval index of each FWHM (−1 outside the table), on the same (N, h) as GalSim's."""
        i = np.searchsorted(self.left, fwhm, side="right") - 1
        i = np.clip(i, 0, len(self.left) - 1)
        N, h = psf_geometry(self.tables, fwhm)
        # a FWHM within rounding of a jump: take the neighbour whose (N, h) is GalSim's
        for step in (-1, 1):
            bad = (self.N[i] != N) | (self.h[i] != h)
            j = np.clip(i + step, 0, len(self.left) - 1)
            fix = bad & (self.N[j] == N) & (self.h[j] == h)
            i = np.where(fix, j, i)
        outside = (fwhm < self.lo) | (fwhm > self.hi) | (self.N[i] != N) | (self.h[i] != h)
        return np.where(outside, -1, i)

    def weights(self, fwhm, i):
        """(B, K) Lagrange weights of the K nodes of interval i at each FWHM (float64)."""
        x = (fwhm - self.mid[i]) / self.half[i]
        d = x[:, None] - self.x[None, :]
        K = len(self.x)
        W = np.empty((len(x), K))
        for k in range(K):  # Π_{j≠k} (x - x_j) / Π_{j≠k} (x_k - x_j), products in a fixed order
            w = np.full(len(x), 1.0 / self.denom[k])
            for j in range(K):
                if j != k:
                    w = w * d[:, j]
            W[:, k] = w
        return W

    def draw(self, fwhm, dtype=np.float32, compute_dtype=None, chunk=CHUNK):
        """(B, stamp, stamp) images in ``dtype``. ``compute_dtype`` (default float64) is the
        arithmetic: float64 costs ~1.3 µs an image more than float32 and is 4× closer to GalSim."""
        fwhm = np.atleast_1d(np.asarray(fwhm, dtype=np.float64))
        compute_dtype = np.dtype(np.float64 if compute_dtype is None else compute_dtype)
        B, S = len(fwhm), self.stamp
        out = np.empty((B, S * S), dtype)
        i = self.locate(fwhm)
        inside = np.flatnonzero(i >= 0)
        all_inside = len(inside) == B
        if len(inside):
            ii = i[inside]
            W = self.weights(fwhm[inside], ii).astype(compute_dtype)
            vals = self.values(compute_dtype)
            K = len(self.x)
            base = ii * K
            for a in range(0, len(ii), chunk):  # chunks small enough to stay in the caches
                b = min(len(ii), a + chunk)
                acc = np.take(vals, base[a:b], axis=0)
                acc *= W[a:b, 0, None]
                for k in range(1, K):
                    term = np.take(vals, base[a:b] + k, axis=0)
                    term *= W[a:b, k, None]
                    acc += term
                acc = acc.astype(dtype, copy=False)
                if all_inside:
                    np.take(acc, self.expand_flat, axis=1, out=out[a:b])
                else:
                    out[inside[a:b]] = np.take(acc, self.expand_flat, axis=1)
        if not all_inside:
            rest = np.flatnonzero(i < 0)
            out[rest] = psf_fft(self.tables, fwhm[rest], np.float64).reshape(len(rest), -1).astype(dtype)
        return out.reshape(B, S, S)


_TABLES: dict = {}


def psf_table(tables) -> PsfTable:
    """This process's PsfTable for a Tables object (built on first use, under a second)."""
    t = _TABLES.get(id(tables))
    if t is None or t.tables is not tables:
        t = _TABLES[id(tables)] = PsfTable(tables)
    return t


def psf_images(tables, psf_fwhm, dtype=np.float32) -> np.ndarray:
    """Unit-flux Moffat ⊗ pixel PSF stamps, (B, stamp, stamp), as GalSim's ``GalSimRenderer.psf_image``.

    ``tables`` from :func:`galparam.kspace.load_tables` (its PSF table, β and geometry); ``psf_fwhm``
    (B,) arcsec. Inside ``FWHM_RANGE``: within 3.4e-13 of GalSim's peak in float64, and float32
    images within 1.2e-7 of GalSim's float32 ones (GalSim's float32 is itself 6e-8 from its
    float64, its k-image being complex64). Outside the range: psf_fft (same accuracy, ~0.4 ms).
    """
    return psf_table(tables).draw(psf_fwhm, dtype=dtype)
