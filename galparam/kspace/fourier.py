"""The k-space arithmetic the galaxy and PSF renderers share: the half-plane k-box and its
constants, the pixel response with the fold's sign, folding onto the FFT grid, cubic splines in
Horner form, and the real stamp from the folded half-plane."""

from __future__ import annotations

import numpy as np

_GRID_CACHE: dict = {}


def box_grid(N: int, H: int, pixel_scale: float, dtype):
    """Static per-(N, H) arrays on the half-plane box kx = m_x·dk, m_x = 0..H (columns),
    ky = m_y·dk, m_y = -H..H (rows), dk = 2π/(N·scale) in rad/arcsec.

    Returns a dict: mx, my (the integer offsets), kxx = kx², kxy = 2·kx·ky, kyy = ky² and k = |k|
    as (2H+1, H+1) arrays, px, py (the pixel factor per axis, `pixel_factor`) and phase
    (exp(iπa/N) for the folded index a = 0..N-1).
    """
    key = (N, H, pixel_scale, np.dtype(dtype).str)
    g = _GRID_CACHE.get(key)
    if g is None:
        dk = 2 * np.pi / (N * pixel_scale)
        mx = np.arange(0, H + 1)
        my = np.arange(-H, H + 1)
        kx, ky = mx * dk, my * dk
        g = dict(
            mx=mx,
            my=my,
            kxx=np.broadcast_to(kx[None, :] ** 2, (len(my), len(mx))).astype(dtype),
            kxy=(2 * ky[:, None] * kx[None, :]).astype(dtype),
            kyy=np.broadcast_to(ky[:, None] ** 2, (len(my), len(mx))).astype(dtype),
            k=np.hypot(ky[:, None], kx[None, :]).astype(dtype),
            # kx² ∓ ky²: the shear derivatives' terms of the quadratic form
            kdiff=(kx[None, :] ** 2 - ky[:, None] ** 2).astype(dtype),
            ksum=(kx[None, :] ** 2 + ky[:, None] ** 2).astype(dtype),
            px=pixel_factor(mx, N, half_zero=True).astype(dtype),
            py=pixel_factor(my, N).astype(dtype),
            phase=np.exp(1j * np.pi * np.arange(N) / N),
        )
        _GRID_CACHE[key] = g
    return g


def pixel_factor(m, N, half_zero=False):
    """Pixel response sinc(m/N) along one axis, times the sign that the half-pixel phase
    exp(iπ·m/N) takes when m is folded to m mod N (exp(iπ(m - jN)/N) = (-1)^j · exp(iπ m/N)), so
    the fold can be done on real numbers and the phase applied once after it. With
    ``half_zero`` the kx = 0 column is halved: the half-plane box then folds into P with
    full-plane sum P + conj(P(-k))."""
    m = np.asarray(m)
    f = np.sinc(m / N) * np.where((m // N) % 2 == 0, 1.0, -1.0)
    if half_zero:
        f = np.where(m == 0, 0.5 * f, f)
    return f


def fold_into(out, x, N, offset, axis):
    """Add x into out along ``axis`` modulo N: x's index i has frequency index i - offset, which
    lands on out's index (i - offset) mod N. A few contiguous slice additions."""
    L = x.shape[axis]
    pos, tgt = 0, (-offset) % N
    while pos < L:
        m = min(L - pos, N - tgt)
        dst = [slice(None)] * out.ndim
        src = [slice(None)] * x.ndim
        dst[axis], src[axis] = slice(tgt, tgt + m), slice(pos, pos + m)
        out[tuple(dst)] += x[tuple(src)]
        pos, tgt = pos + m, 0
    return out


def eval_spline(coef_flat, rows, t):
    """Cubic in Horner form: coef_flat (R, 4) float, rows int (any shape), t same shape."""
    return horner(np.take(coef_flat, rows, axis=0), t)  # np.take is ~5× faster than coef_flat[rows]


def horner(c, t):
    """c₀ + c₁t + c₂t² + c₃t³ of gathered coefficients c (..., 4)."""
    r = c[..., 3] * t
    r += c[..., 2]
    r *= t
    r += c[..., 1]
    r *= t
    r += c[..., 0]
    return r


def hermitian_inverse(P, N, stamp, phase):
    """Real stamp from the folded real half-plane sums P (B, N, N).

    The full-plane spectrum is G(k) = e(k)·P(k) + conj(e(-k)·P(-k)), e the half-pixel phase
    exp(iπ(a+b)/N) of folded indices a, b in [0, N). Since e(-k) = s_a·s_b·conj(e(k)) with
    s = -1 except at index 0, G = e·(P + s_a·s_b·P(-k)): real arithmetic, then one complex
    multiply. Inverse FFT along y, keep the stamp's rows, inverse real FFT along x, keep its
    columns (stamp pixel j ↔ grid index j - stamp/2 mod N)."""
    from scipy import fft as sfft

    nc = N // 2 + 1
    # Q = P + s_a·s_b·P(-k) on the kept columns b = 0..N/2 (index -b mod N: 0, N-1, ..., N/2),
    # written block by block with views (s = +1 only at index 0)
    Q = np.empty(P.shape[:1] + (N, nc), dtype=P.dtype)
    neg_b = slice(N - 1, N // 2 - 1, -1)  # -b for b = 1..N/2
    Q[:, 0, 0] = 2 * P[:, 0, 0]
    np.subtract(P[:, 0, 1:nc], P[:, 0, neg_b], out=Q[:, 0, 1:])
    np.subtract(P[:, 1:, 0], P[:, N - 1 : 0 : -1, 0], out=Q[:, 1:, 0])
    np.add(P[:, 1:, 1:nc], P[:, N - 1 : 0 : -1, neg_b], out=Q[:, 1:, 1:])
    G = Q * (phase[:, None] * phase[None, :nc])
    rows = np.r_[N - stamp // 2 : N, 0 : stamp // 2]
    Y = sfft.ifft(G, axis=1)[:, rows]
    img = sfft.irfft(Y, n=N, axis=2)
    return img[:, :, rows]
