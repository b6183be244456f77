"""What the k-space renderer takes from GalSim, as plain arrays: the per-index Sérsic transforms,
the unit-FWHM Moffat transform, their spline coefficients, and the calibrated grid-size rule.

The tables are built once per machine and geometry (:mod:`galparam.kspace.build`) and kept on
disk (:mod:`galparam.kspace.cache`); here is their layout and the splines that interpolate them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from galparam.geometry import DEFAULT_GEOMETRY, Geometry

# FFT sizes the renderer may pick (products of 2, 3, 5: fast for pocketfft, FFTW and cuFFT).
GRID_SIZES = (96, 128, 160, 192, 256, 320, 384, 512)

# Table defaults. s = sqrt(k·hlr) (galaxy) or sqrt(k·fwhm) (PSF), k in rad/arcsec; s ≤ 7 covers
# k·hlr ≤ 49: the k-box corners of the prior reach 40 (n 6, hlr 0.6″, |g| 0.67, FWHM 0.5″).
# `choose_grid` refuses a galaxy whose box would leave the tables (F_n=6 is still 0.02 at s = 7).
S_MAX = 7.0
WIDE_S_MAX = 16.0
"""The reach of the tables that draw any stamp (:mod:`galparam.kspace.stamps`): k·radius ≤ 256,
the k-box corner of a galaxy of ~55 pixels' major-axis radius at Nyquist (an HST galaxy of 1.6″
at 0.03″). F_n=6 is still 3e-3 there; a galaxy whose box reaches farther is refused."""
S_STEP = 2e-3
N_STEP = 0.05
N_RANGE = (0.5, 6.0)
"""The Sérsic indices the tables cover: what the k-space renderer draws."""

# Nodes of the calibrated grid-size rule: Sérsic index, major-axis radius hlr·sqrt((1+|g|)/(1-|g|))
# (arcsec), PSF FWHM (arcsec). Outside them a galaxy gets GalSim's own N.
RULE_N_NODES = tuple(0.5 + 0.25 * i for i in range(23))
RULE_R_NODES = (0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0, 1.2, 1.4)
RULE_FWHM_NODES = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


@dataclass
class Tables:
    """Everything the renderer needs from GalSim, as plain arrays (npz-able without pickles).

    Attributes
    ----------
    n_nodes : (Nn,) tabulated Sérsic indices, uniformly spaced, one node beyond each end of the
        supported range (keeps the n-spline's end conditions away from the range used).
    s_step : step of the s grid; node i is at s = i·s_step.
    sersic : (Nn, M) ``Sersic(n, half_light_radius=1, flux=1).kValue(k=s², 0)`` (real).
    sersic_maxk, sersic_stepk : (Nn,) GalSim's maxk and stepk of the unit profile (rad/arcsec).
    psf : (M,) ``Moffat(beta, fwhm=1).kValue(k=s², 0)``.
    psf_maxk, psf_stepk : the unit-FWHM Moffat's maxk and stepk.
    psf_unit_maxk, psf_unit_stepk : maxk and stepk of ``Moffat(beta, scale_radius=1)``, from which
        GalSim derives every FWHM's, bit for bit (:func:`galparam.kspace.psf.psf_geometry`).
    psf_beta, pixel_scale, stamp : the geometry the tables were made for.
    rule_n, rule_r, rule_fwhm, rule_N : the grid-size rule: the smallest N meeting the
        tolerances at each (n, major-axis radius, PSF FWHM) node (:func:`galparam.kspace.build.calibrate_grid_rule`).
    """

    n_nodes: np.ndarray
    s_step: float
    sersic: np.ndarray
    sersic_maxk: np.ndarray
    sersic_stepk: np.ndarray
    psf: np.ndarray
    psf_maxk: float
    psf_stepk: float
    psf_beta: float = DEFAULT_GEOMETRY.psf_beta
    pixel_scale: float = DEFAULT_GEOMETRY.pixel_scale
    stamp: int = DEFAULT_GEOMETRY.stamp_size
    psf_unit_maxk: float = math.nan
    psf_unit_stepk: float = math.nan
    # the calibrated grid-size rule (build.calibrate_grid_rule); empty: always GalSim's own N
    rule_n: np.ndarray = field(default_factory=lambda: np.zeros(0))
    rule_r: np.ndarray = field(default_factory=lambda: np.zeros(0))
    rule_fwhm: np.ndarray = field(default_factory=lambda: np.zeros(0))
    rule_N: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0), dtype=np.int64))

    # derived, built on first use (not saved)
    _coef: np.ndarray | None = field(default=None, repr=False, compare=False)
    _coef_d2: np.ndarray | None = field(default=None, repr=False, compare=False)
    _psf_coef: np.ndarray | None = field(default=None, repr=False, compare=False)
    _cast: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def geometry(self) -> Geometry:
        """The geometry the tables were made for."""
        return Geometry(stamp_size=self.stamp, pixel_scale=self.pixel_scale, psf_beta=self.psf_beta)

    @property
    def n_step(self) -> float:
        return float(self.n_nodes[1] - self.n_nodes[0])

    @property
    def n_range(self) -> tuple[float, float]:
        return float(self.n_nodes[1]), float(self.n_nodes[-2])

    @property
    def s_max(self) -> float:
        return self.s_step * (self.sersic.shape[1] - 1)

    @property
    def coef(self) -> np.ndarray:
        """(Nn, M, 4) cubic-spline coefficients of the Sérsic tables (see `spline_coefficients`)."""
        if self._coef is None:
            self._coef = spline_coefficients(self.sersic)
        return self._coef

    @property
    def coef_d2(self) -> np.ndarray:
        """(Nn, M, 4) second derivatives in n of `coef` at the nodes, times n_step²/6: with them
        the not-a-knot cubic spline in n between nodes j and j+1 (fraction u) is
        (1-u)·C_j + u·C_j+1 + ((1-u)³-(1-u))·D_j + (u³-u)·D_j+1 (see `n_weights`)."""
        if self._coef_d2 is None:
            from scipy.interpolate import CubicSpline

            c = self.coef
            cs = CubicSpline(self.n_nodes, c.reshape(len(c), -1), axis=0, bc_type="not-a-knot")
            self._coef_d2 = (cs(self.n_nodes, 2) * self.n_step**2 / 6).reshape(c.shape)
        return self._coef_d2

    @property
    def psf_coef(self) -> np.ndarray:
        """(M, 4) cubic-spline coefficients of the PSF table."""
        if self._psf_coef is None:
            self._psf_coef = spline_coefficients(self.psf[None])[0]
        return self._psf_coef

    def coefficients(self, dtype) -> tuple[np.ndarray, np.ndarray]:
        """`coef` and `coef_d2` in ``dtype``, cast once (a cast per call cost ~1 ms)."""
        key = np.dtype(dtype).str
        cast = self._cast.get(key)
        if cast is None:
            cast = self._cast[key] = (self.coef.astype(dtype), self.coef_d2.astype(dtype))
        return cast

    # -- io ----------------------------------------------------------------------------------
    _SAVED = (
        "n_nodes",
        "s_step",
        "sersic",
        "sersic_maxk",
        "sersic_stepk",
        "psf",
        "psf_maxk",
        "psf_stepk",
        "psf_beta",
        "pixel_scale",
        "stamp",
        "psf_unit_maxk",
        "psf_unit_stepk",
        "rule_n",
        "rule_r",
        "rule_fwhm",
        "rule_N",
    )

    def save(self, path) -> None:
        """Write an npz (no pickles: plain arrays and scalars)."""
        np.savez(path, **{k: np.asarray(getattr(self, k)) for k in self._SAVED})

    @classmethod
    def load(cls, path) -> Tables:
        """Read `save`'s npz (``allow_pickle=False``); spline coefficients are rebuilt lazily."""
        with np.load(path, allow_pickle=False) as z:
            d = {k: z[k] for k in cls._SAVED if k in z.files}
        for k in ("s_step", "psf_maxk", "psf_stepk", "psf_beta", "pixel_scale", "psf_unit_maxk", "psf_unit_stepk"):
            d[k] = float(d[k])
        d["stamp"] = int(d["stamp"])
        return cls(**d)


def spline_coefficients(values: np.ndarray) -> np.ndarray:
    """Cubic-spline coefficients on a uniform grid, one row per interval, in the local variable.

    ``values`` is (T, M): T tables sampled at s = 0, h, ..., (M-1)·h. Returns (T, M, 4) ``c`` with
    ``f(s) = c0 + t·(c1 + t·(c2 + t·c3))`` for ``s = (i + t)·h``, ``0 ≤ t ≤ 1``, i the row. The
    spline is C² (scipy's CubicSpline) with a zero slope at s = 0 (every table here is even in
    k, hence flat in s at 0) and not-a-knot at the far end. The last row repeats the last
    interval's polynomial extended (t up to 2) so an index clipped to M-1 stays continuous.
    Blending tables (in n) blends their coefficients: a spline is linear in its node values.
    """
    from scipy.interpolate import CubicSpline

    values = np.asarray(values, dtype=np.float64)
    T, M = values.shape
    t = np.arange(M, dtype=np.float64)
    cs = CubicSpline(t, values, axis=1, bc_type=((1, np.zeros(T)), "not-a-knot"))
    # cs.c has shape (4, M-1, T) with the highest power first, in the variable (x - x_i).
    c = cs.c[::-1].transpose(2, 1, 0)  # (T, M-1, 4): c0, c1, c2, c3
    last = c[:, -1:, :].copy()
    # re-expand the last interval around its end point (t' = t - 1) so row M-1 continues it
    c0, c1, c2, c3 = (last[..., j] for j in range(4))
    last[..., 0] = c0 + c1 + c2 + c3
    last[..., 1] = c1 + 2 * c2 + 3 * c3
    last[..., 2] = c2 + 3 * c3
    last[..., 3] = c3
    return np.ascontiguousarray(np.concatenate([c, last], axis=1))
