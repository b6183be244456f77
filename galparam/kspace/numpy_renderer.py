"""The k-space renderer in numpy: many galaxies a call, grouped by grid, with the exact Jacobian
of the drawn model or its contraction with weight images (a likelihood's gradient)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from galparam.kspace.fourier import box_grid, eval_spline, fold_into, hermitian_inverse, horner
from galparam.kspace.grid import choose_grid
from galparam.kspace.tables import Tables


def n_weights(u):
    """Cubic-spline weights of (C_j, C_j+1, D_j, D_j+1) at fraction u between nodes j, j+1
    (`Tables.coef_d2`). Written with products only (see
    :meth:`galparam.kspace.keras_renderer.KerasRenderer._render_group`)."""
    v = 1 - u
    return np.stack([v, u, v * v * v - v, u * u * u - u], axis=-1)


def n_position(tables: Tables, n):
    """Index j of the node below n and the fraction u in [0, 1]."""
    x = (np.asarray(n, dtype=np.float64) - tables.n_nodes[0]) / tables.n_step
    j = np.clip(np.floor(x).astype(np.int64), 0, len(tables.n_nodes) - 2)
    return j, x - j


_GRID_CACHE: dict = {}


def render_numpy(
    tables: Tables,
    flux,
    n,
    hlr,
    g1,
    g2,
    psf_fwhm,
    *,
    dtype=np.float32,
    N=None,
    box_step=1,
    return_grid=False,
    jacobian=False,
    vjp=False,
    grid=None,
):
    """Draw galaxies: (B,) parameter arrays (scalars broadcast) → (B, stamp, stamp) counts.

    Parameters are GalSim's: flux in counts, Sérsic index n, half-light radius hlr in arcsec,
    reduced shear g1, g2, Moffat FWHM psf_fwhm in arcsec. ``dtype`` is the arithmetic precision
    (float32 is within ~2e-7 of the peak of float64). ``N`` forces one grid size (testing).
    ``box_step`` pads the k-box to a multiple (1: none; numpy has no per-shape compile cost).
    With ``jacobian``, returns ``(images, jacobians)``, the second (B, 5, stamp, stamp): the
    derivatives by (flux, n, hlr, g1, g2) of the drawn model (on each galaxy's own grid). With
    ``vjp``, returns ``(images, vjp)``: ``vjp(w)`` maps weight images (B, stamp, stamp) to
    Σ_pixels w·∂image/∂θ (B, 5), the same derivatives at a third of the cost (a gradient).
    ``grid``, a pair (N, h) of int arrays (B,), holds each galaxy's FFT size and k-box half-width
    fixed instead of choosing them from its parameters (:func:`choose_grid`): a fit holds its
    image's grid while the parameters move, so that its model and gradient are continuous.
    """
    flux, n, hlr, g1, g2, psf_fwhm = np.broadcast_arrays(
        *(np.atleast_1d(np.asarray(a, dtype=np.float64)) for a in (flux, n, hlr, g1, g2, psf_fwhm))
    )
    B = flux.shape[0]
    Ns, hs, Hs = choose_grid(tables, flux, n, hlr, g1, g2, psf_fwhm, N=N, box_step=box_step, grid=grid)
    out = np.empty((B, tables.stamp, tables.stamp), dtype=dtype)
    jac = np.empty((B, 5, tables.stamp, tables.stamp), dtype=dtype) if jacobian else None
    derivatives = "jacobian" if jacobian else "vjp" if vjp else None
    pieces = []
    keys = np.stack([Ns, Hs], axis=1)
    for key in np.unique(keys, axis=0):
        sel = np.flatnonzero((keys == key).all(axis=1))
        drawn = _render_group(
            tables,
            int(key[0]),
            int(key[1]),
            hs[sel],
            flux[sel],
            n[sel],
            hlr[sel],
            g1[sel],
            g2[sel],
            psf_fwhm[sel],
            dtype,
            derivatives,
        )
        if jacobian:
            out[sel], jac[sel] = drawn
        elif vjp:
            out[sel] = drawn[0]
            pieces.append((sel, drawn[1]))
        else:
            out[sel] = drawn
    if vjp:

        def contract(weights):
            weights = np.asarray(weights)
            grad = np.empty((B, 5))
            for sel, piece in pieces:
                grad[sel] = piece(weights[sel])
            return grad

        result = (out, contract)
    else:
        result = (out, jac) if jacobian else out
    if return_grid:
        return result, (Ns, hs, Hs)
    return result


# Galaxies evaluated together: a chunk's (chunk, 2H+1, H+1) arrays stay in the CPU caches.
CHUNK_POINTS = 200_000


def n_weight_derivatives(u):
    """d/du of :func:`n_weights`."""
    v = 1 - u
    return np.stack([-np.ones_like(u), np.ones_like(u), 1 - 3 * v * v, 3 * u * u - 1], axis=-1)


def _blend(coef, coef_d2, j, weights, m, dtype):
    """(c·m, 4) s-spline coefficients of c galaxies' first m rows: the n-spline between the two
    bracketing tables (a spline is linear in its values, so blending the s-spline coefficients
    gives the s-spline of the blended values), with ``weights`` (c, 4) of :func:`n_weights`."""
    wc = weights[:, :, None, None].astype(dtype)
    out = wc[:, 0] * coef[j, :m]
    out += wc[:, 1] * coef[j + 1, :m]
    out += wc[:, 2] * coef_d2[j, :m]
    out += wc[:, 3] * coef_d2[j + 1, :m]
    return out.reshape(len(j) * m, 4)


def _render_group(tables, N, H, h, flux, n, hlr, g1, g2, fwhm, dtype, derivatives=None):
    """Images (B, S, S) of galaxies sharing a grid, and with ``derivatives``:

    * ``"jacobian"``: their derivatives (B, 5, S, S) by (flux, n, hlr, g1, g2), exact for the
      interpolated model (the spline's own derivatives in s and in n, the chain rule through the
      shear's quadratic form);
    * ``"vjp"``: a function of weight images w (B, S, S) → Σ_pixels w·∂image/∂θ (B, 5), the
      same derivatives contracted in k-space (one FFT instead of four: a likelihood's gradient).
    """
    derive = derivatives is not None
    dtype = np.dtype(dtype).type
    B = flux.shape[0]
    g = box_grid(N, H, tables.pixel_scale, dtype)
    psfpix = _psf_pixel(tables, N, H, fwhm, dtype)  # (1 or B, 2H+1, H+1)
    galaxy = sersic_setup(tables, g, flux, n, hlr, g1, g2, dtype, derive)
    shear = galaxy["shear"]

    folded = 5 if derivatives == "jacobian" else 1  # the image, ∂/∂n, ∂/∂hlr, ∂/∂g1, ∂/∂g2 (∂/∂flux = image/flux)
    P = np.zeros((folded, B, N, N), dtype=dtype)
    # vjp: per galaxy, ∂F/∂n, S1 = F'(p)·p and S2 = F'(p)·p/(4Q) on the box (PSF and box mask
    # are applied to the adjoint weights instead)
    stored = np.empty((B, 3, 2 * H + 1, H + 1), dtype) if derivatives == "vjp" else None
    step = max(1, CHUNK_POINTS // (g["kxy"].size * (3 if derive else 1)))
    for a in range(0, B, step):
        b = min(B, a + step)
        c = b - a
        F, factors = sersic_on_box(tables, g, galaxy, a, b, dtype, derive)
        values = [F]
        if derive:
            dF_dn, s1, s2, quadratic = factors
            if stored is not None:
                stored[a:b, 0], stored[a:b, 1], stored[a:b, 2] = dF_dn, s1, s2
            else:
                values += sersic_shear_derivatives(g, shear, a, b, dF_dn, s1, s2, quadratic)
        hc = h[a:b]
        for plane, F in enumerate(values):
            F *= psfpix if psfpix.shape[0] == 1 else psfpix[a:b]
            if np.any(hc < H):
                # GalSim's own box is h ≤ H: zero the rest (exact zeros leave the sums unchanged)
                F *= _box_mask(g, hc)
            Fy = fold_into(np.zeros((c, N, H + 1), dtype), F, N, H, axis=1)  # ky from -H
            fold_into(P[plane, a:b], Fy, N, 0, axis=2)  # kx from 0
    cdt = np.complex128 if dtype == np.float64 else np.complex64
    phase = g["phase"].astype(cdt)
    image = hermitian_inverse(P[0], N, tables.stamp, phase)
    if not derive:
        return image
    if stored is not None:
        weights_on_box = psfpix * (_box_mask(g, h) if np.any(h < H) else 1.0)
        return image, _box_vjp(image, flux, stored, shear, weights_on_box, N, tables.stamp, g, phase)
    jac = np.empty((B, 5, tables.stamp, tables.stamp), dtype=image.dtype)
    jac[:, 0] = image / flux[:, None, None]
    for plane in range(1, 5):
        jac[:, plane] = hermitian_inverse(P[plane], N, tables.stamp, phase)
    return image, jac


def sersic_setup(tables, g, flux, n, hlr, g1, g2, dtype, derive: bool) -> dict:
    """Per-galaxy scalars of the Sérsic transform on a k-box ``g`` (:func:`box_grid`): the table
    blend in n (flux folded in), the quadratic form whose fourth root is the table position, the
    table rows each galaxy can reach and (with ``derive``) the factors of its derivatives."""
    coef, coef_d2 = tables.coefficients(dtype)
    M = tables.sersic.shape[1]
    j, u = n_position(tables, n)
    w = n_weights(u) * flux[:, None]  # flux folded into the table blend
    # (hlr·|A k| / s_step²)² as a quadratic form in k, so that ksq**0.25 is the table position:
    # A² = [[(1+g1)²+g2², 2g2], [2g2, (1-g1)²+g2²]]/(1-g²). No epsilon at k = 0: no gradients here.
    gsq = g1 * g1 + g2 * g2
    hh = hlr * hlr / (1 - gsq) / tables.s_step**4
    cxx = (hh * ((1 + g1) ** 2 + g2**2)).astype(dtype)
    cxy = (hh * 2 * g2).astype(dtype)  # multiplies 2·kx·ky
    cyy = (hh * ((1 - g1) ** 2 + g2**2)).astype(dtype)
    # the table rows a galaxy can reach: its largest ksq on the box (+2 rows of margin, so the
    # float32 position never reaches the clip and the result does not depend on the chunk)
    kmax2 = (g["kxx"].max() + g["kyy"].max()) * np.maximum(cxx, cyy).astype(np.float64) * 2
    rows_needed = np.minimum(M, np.ceil(kmax2**0.25).astype(np.int64) + 3)
    out = dict(coef=coef, coef_d2=coef_d2, j=j, w=w, cxx=cxx, cxy=cxy, cyy=cyy, rows_needed=rows_needed, shear=None)
    if derive:
        out["w_n"] = n_weight_derivatives(u) * (flux / tables.n_step)[:, None]
        # ∂p/∂θ for the table position p = Q^¼ of the quadratic form Q = hh·[...]:
        #   ∂p/∂hlr = p/(2·hlr);  ∂p/∂g = (∂Q/∂g)/(4p³) with
        #   ∂Q/∂g1 = Q·2g1/(1-g²) + 2hh·(kxx - kyy) + 2hh·g1·(kxx + kyy),
        #   ∂Q/∂g2 = Q·2g2/(1-g²) + 2hh·g2·(kxx + kyy) + 2hh·kxy   (kxy = 2·kx·ky)
        out["shear"] = {
            "a1": 2 * g1 / (1 - gsq),
            "a2": 2 * g2 / (1 - gsq),
            "hh2": 2 * hh,
            "hh2g1": 2 * hh * g1,
            "hh2g2": 2 * hh * g2,
            "half_over_hlr": 0.5 / hlr,
        }
    return out


def sersic_on_box(tables, g, galaxy, a: int, b: int, dtype, derive: bool):
    """The Sérsic transforms F (c, 2H+1, H+1) of galaxies a..b on the box, flux included, and
    with ``derive`` the factors of their derivatives: ∂F/∂n, S1 = F'(p)·p, S2 = F'(p)·p/(4Q) and
    the quadratic form Q (None without). ``galaxy`` is :func:`sersic_setup`'s."""
    c = b - a
    m = int(galaxy["rows_needed"][a:b].max())
    j = galaxy["j"]
    gal = _blend(galaxy["coef"], galaxy["coef_d2"], j[a:b], galaxy["w"][a:b], m, dtype)
    pos = galaxy["cxx"][a:b, None, None] * g["kxx"]
    pos += galaxy["cxy"][a:b, None, None] * g["kxy"]
    pos += galaxy["cyy"][a:b, None, None] * g["kyy"]
    quadratic = pos.copy() if derive else None
    np.sqrt(pos, out=pos)
    np.sqrt(pos, out=pos)  # the table position s / s_step
    position = pos.copy() if derive else None
    rows = pos.astype(np.int32)
    np.minimum(rows, m - 1, out=rows)
    pos -= rows  # now the fraction t
    rows += (np.arange(c, dtype=np.int32) * m)[:, None, None]
    cf = np.take(gal, rows, axis=0)  # np.take is ~5× faster than gal[rows]
    F = horner(cf, pos)
    if not derive:
        return F, None
    dF_dn = eval_spline(_blend(galaxy["coef"], galaxy["coef_d2"], j[a:b], galaxy["w_n"][a:b], m, dtype), rows, pos)
    slope = cf[..., 3] * (3 * pos)  # ∂F/∂p = c1 + 2·c2·t + 3·c3·t²
    slope += 2 * cf[..., 2]
    slope *= pos
    slope += cf[..., 1]
    s1 = slope * position
    # finite (→ 0) as k → 0; at k = 0 itself, where Q = 0, it is 0
    s2 = np.divide(s1, 4 * quadratic, out=np.zeros_like(s1), where=quadratic > 0)
    return F, (dF_dn, s1, s2, quadratic)


def sersic_shear_derivatives(g, shear, a: int, b: int, dF_dn, s1, s2, quadratic) -> list:
    """[∂F/∂n, ∂F/∂hlr, ∂F/∂g1, ∂F/∂g2] of galaxies a..b on the box, from :func:`sersic_on_box`'s factors."""
    sh = {key: v[a:b, None, None] for key, v in shear.items()}
    d_g1 = sh["a1"] * quadratic
    d_g1 += sh["hh2"] * g["kdiff"]
    d_g1 += sh["hh2g1"] * g["ksum"]
    d_g2 = sh["a2"] * quadratic
    d_g2 += sh["hh2g2"] * g["ksum"]
    d_g2 += sh["hh2"] * g["kxy"]
    return [dF_dn, s1 * sh["half_over_hlr"], s2 * d_g1, s2 * d_g2]


def _box_mask(g, h):
    """(B, 2H+1, H+1): 1 inside each galaxy's own k-box |m_y|, m_x ≤ h, else 0."""
    return (np.abs(g["my"])[None, :, None] <= h[:, None, None]) & (g["mx"][None, None, :] <= h[:, None, None])


def _box_vjp(image, flux, stored, shear, weights_on_box, N, stamp, g, phase):
    """w (B, S, S) → Σ_pixels w·∂image/∂θ (B, 5) from the derivative factors on the k-box.

    The stamp is μ(r) = (2/N²)·Re Σ_k e(k)·P(k)·ω^{k·r} (P the folded real sums, e the half-pixel
    phase; see :func:`hermitian_inverse`), so Σ_r w(r)·μ(r) = Σ_k P(k)·2·Re[e(k)·ifft2(w)(k)]:
    the adjoint of the inverse transform is one inverse FFT of w embedded in the grid, and the
    adjoint of the fold reads it back at each box point's folded index. Each parameter's
    derivative on the box is a stored factor times per-galaxy scalars (see ``_render_group``), so
    the gradient is a few sums over the box.
    """
    from scipy import fft as sfft

    place = np.r_[N - stamp // 2 : N, 0 : stamp // 2]
    ky, kx = g["my"] % N, g["mx"] % N

    def vjp(weights):
        weights = np.asarray(weights, dtype=np.float64)
        # ifft2 of w embedded in the N×N grid, pruned: along x on the stamp's rows only, keeping
        # the box's columns, then along y on those columns only, keeping the box's rows
        rows = np.zeros((len(weights), stamp, N))
        rows[:, :, place] = weights
        along_x = sfft.ifft(rows, axis=2)[:, :, kx] * phase[kx]
        columns = np.zeros((len(weights), N, len(kx)), dtype=along_x.dtype)
        columns[:, place] = along_x
        adjoint = sfft.ifft(columns, axis=1)[:, ky] * phase[ky][:, None]
        on_box = 2 * adjoint.real
        on_box *= weights_on_box
        dn = np.einsum("byx,byx->b", stored[:, 0], on_box)
        a = np.einsum("byx,byx->b", stored[:, 1], on_box)
        x = stored[:, 2] * on_box
        bd, bs, bxy = (np.einsum("byx,yx->b", x, term) for term in (g["kdiff"], g["ksum"], g["kxy"]))
        out = np.empty((len(weights), 5))
        out[:, 0] = np.einsum("bij,bij->b", weights, image) / flux
        out[:, 1] = dn
        out[:, 2] = a * shear["half_over_hlr"]
        out[:, 3] = shear["a1"] * a / 4 + shear["hh2"] * bd + shear["hh2g1"] * bs
        out[:, 4] = shear["a2"] * a / 4 + shear["hh2g2"] * bs + shear["hh2"] * bxy
        return out

    return vjp


_PSF_CACHE: dict = {}


@lru_cache(maxsize=64)
def _octant(N: int, H: int, pixel_scale: float):
    """|k| on the octant ky ≥ kx ≥ 0 of the box, and its flat places in the quadrant ky, kx = 0..H
    (where |k| is the same): the octant's and their mirror images'."""
    j, i = np.tril_indices(H + 1)
    k = box_grid(N, H, pixel_scale, np.float64)["k"][H:][j, i]
    return k, j * (H + 1) + i, i * (H + 1) + j


def _psf_pixel(tables, N, H, fwhm, dtype):
    """(B or 1, 2H+1, H+1): Moffat(k·fwhm) · pixel · fold sign. Cached by FWHM value."""
    ufw = np.unique(fwhm)
    if len(ufw) == 1:
        return _psf_pixel_one(tables, N, H, float(ufw[0]), dtype)[None]
    return np.stack([_psf_pixel_one(tables, N, H, float(f), dtype) for f in fwhm])


def _psf_pixel_one(tables, N, H, fwhm, dtype):
    key = (id(tables), N, H, fwhm, np.dtype(dtype).str)
    v = _PSF_CACHE.get(key)
    if v is None:
        g = box_grid(N, H, tables.pixel_scale, np.float64)
        k, lower, upper = _octant(N, H, tables.pixel_scale)
        M = tables.psf.shape[0]
        # radial: evaluated on one octant of the box (a third of the time), the same numbers mirrored
        pos = np.sqrt(k * fwhm) / tables.s_step
        rows = np.minimum(pos.astype(np.int64), M - 1)
        quadrant = np.empty((H + 1) * (H + 1))
        quadrant[lower] = quadrant[upper] = eval_spline(tables.psf_coef, rows, pos - rows)
        quadrant = quadrant.reshape(H + 1, H + 1)
        v = np.empty((2 * H + 1, H + 1))
        v[H:] = quadrant
        v[:H] = quadrant[:0:-1]
        v *= g["py"][:, None]
        v *= g["px"][None, :]
        v = v.astype(dtype)
        if len(_PSF_CACHE) > 256:
            _PSF_CACHE.clear()
        _PSF_CACHE[key] = v
    return v
