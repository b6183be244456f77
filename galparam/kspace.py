"""Batched k-space forward model of Sérsic ⊗ Moffat(β=2) ⊗ pixel galaxy stamps, matched to GalSim.

The reference is GalSim 2.8's::

    galsim.Convolve(galsim.Sersic(n, half_light_radius=hlr, flux=flux).shear(g1=g1, g2=g2),
                    galsim.Moffat(beta=2.0, fwhm=psf_fwhm)).drawImage(nx=64, ny=64, scale=0.23)

which GalSim computes as (``GSObject.drawFFT``): the profile's Fourier transform sampled on a
half-plane k-box ``kx = 0..Nk/2, ky = -Nk/2..Nk/2`` (in units of ``dk = 2π/(N·scale)``; the box ends
at the profile's ``maxk`` or at Nyquist, whichever is larger), wrapped (summed modulo N) onto an
N×N grid, inverse-FFT'd, and the central 64×64 cut out. Its N is sized to hold 99.5 % of the flux
(128 to 768 pixels over our prior, 2 % of draws above 384), which is why a cached GalSim draw costs
milliseconds.

This module does the same arithmetic for many galaxies at once:

* The unit Sérsic transform ``F_n(k)`` (flux 1, half-light radius 1) comes from GalSim itself
  (``Sersic.kValue``), tabulated per index on a uniform grid in ``s = sqrt(k)`` and interpolated
  with a C² cubic spline in ``s`` and a C² cubic spline in ``n`` across tabulated indices, so
  derivatives with respect to every parameter are continuous. A galaxy is
  ``flux · F_n(hlr · |A k|)`` with ``A`` GalSim's shear matrix (``Shear.getMatrix()``, symmetric,
  determinant 1): ``Transformation`` evaluates the original profile at ``Aᵀ k``.
* The Moffat PSF (one unit-FWHM table: the FWHM only rescales k) and the pixel response
  ``sinc(kx·scale/2π)·sinc(ky·scale/2π)`` multiply it.
* GalSim centres an even stamp on its true centre, half a pixel below and left of the pixel
  that its FFT treats as the origin: a phase ``exp(+i·(kx+ky)·scale/2)``.
* The k-box is GalSim's (``Nk = 2·ceil(maxk/dk)`` with ``maxk`` the convolution's: the smallest of
  the galaxy's ``maxk_unit/(hlr·minor axis)``, the PSF's and the pixel's; the Nyquist box when
  that is larger), but on an N chosen per galaxy (:func:`grid_size`): the only difference from
  GalSim is then the real-space wrap-around of the profile's far tail, which N controls. At
  GalSim's own N the images agree to ~1e-7 of the peak. N comes from a rule calibrated against
  renders at GalSim's N (:func:`calibrate_grid_rule`: every pixel within 5e-5 of the peak, the
  stamp flux within 5e-4), over (n, major-axis radius, PSF FWHM); on the v1 prior it picks
  96 / 128 / 160 / 192 / 256 / 320 for 45 / 23 / 10 / 11 / 9 / 3 % of galaxies, and never more than
  GalSim's own N. The Moffat β=2 wings alone (1/(1+(R/r0)²) of the flux beyond R) push the stamp
  flux off by 2.4e-4 at N 96 for a 0.5″ PSF and 1e-3 for a 1″ PSF, hence 128 there.
* The k samples are folded (summed modulo N) onto the N×N grid as real numbers: the pixel's sinc
  and the sign that the half-pixel phase takes under folding are applied first, the phase after.
  The kx < 0 half is the mirror conjugate, so the image is 2·Re ifft2 of the folded half-plane
  (kx = 0 column halved).

Measured (GalSim 2.8, 210 draws of the v1 and v3 priors and corners, ``check.py``): every pixel
within 1.5e-5 of the peak (median 1.5e-6), stamp flux within 4.1e-4, float32 as float64, numpy as
keras.ops (TensorFlow eager and XLA, JAX). Throughput on the v1 prior, one core, batch 256
(``bench.py``): numpy 0.45 ms an image (8.5× GalSim's cached drawImage in the same run), keras.ops
1.1 ms with XLA. Tables: 113 indices in ~7 s plus ~15 s of rule calibration, 3.2 MB.

A galaxy's image depends only on its own parameters, bit for bit: N and the k-box are functions
of the galaxy, never of the batch it is drawn in, and no operation's rounding depends on the
batch size (explicit adds instead of einsum or reductions; products instead of ``** 2``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
import zipfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from galparam.parameters import ParameterError

STAMP = 64
SCALE = 0.23  # arcsec / pixel
PSF_BETA = 2.0

# FFT sizes the renderer may pick (products of 2, 3, 5: fast for pocketfft, FFTW and cuFFT).
GRID_SIZES = (96, 128, 160, 192, 256, 320, 384, 512)

# Table defaults. s = sqrt(k·hlr) (galaxy) or sqrt(k·fwhm) (PSF), k in rad/arcsec; s ≤ 7 covers
# k·hlr ≤ 49: the k-box corners of the prior reach 40 (n 6, hlr 0.6″, |g| 0.67, FWHM 0.5″).
# `choose_grid` refuses a galaxy whose box would leave the tables (F_n=6 is still 0.02 at s = 7).
S_MAX = 7.0
S_STEP = 2e-3
N_STEP = 0.05
N_RANGE = (0.5, 6.0)

# Nodes of the calibrated grid-size rule: Sérsic index, major-axis radius hlr·sqrt((1+|g|)/(1-|g|))
# (arcsec), PSF FWHM (arcsec). Outside them a galaxy gets GalSim's own N.
RULE_N_NODES = tuple(0.5 + 0.25 * i for i in range(23))
RULE_R_NODES = (0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0, 1.2, 1.4)
RULE_FWHM_NODES = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)

# k = 0 has s = k**0.5 with an infinite derivative; the epsilon keeps automatic gradients finite.
KSQ_EPS = 1e-12


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------
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
        GalSim derives every FWHM's, bit for bit (:func:`galparam.kspace_psf.psf_geometry`).
    psf_beta, pixel_scale, stamp : the geometry the tables were made for.
    rule_n, rule_r, rule_fwhm, rule_N : the grid-size rule: the smallest N meeting the
        tolerances at each (n, major-axis radius, PSF FWHM) node (see `calibrate_grid_rule`).
    """

    n_nodes: np.ndarray
    s_step: float
    sersic: np.ndarray
    sersic_maxk: np.ndarray
    sersic_stepk: np.ndarray
    psf: np.ndarray
    psf_maxk: float
    psf_stepk: float
    psf_beta: float = PSF_BETA
    pixel_scale: float = SCALE
    stamp: int = STAMP
    psf_unit_maxk: float = math.nan
    psf_unit_stepk: float = math.nan
    # the calibrated grid-size rule (`calibrate_grid_rule`); empty: always GalSim's own N
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


def build_tables(
    *,
    n_range: tuple[float, float] = N_RANGE,
    n_step: float = N_STEP,
    s_max: float = S_MAX,
    s_step: float = S_STEP,
    psf_beta: float = PSF_BETA,
    pixel_scale: float = SCALE,
    stamp: int = STAMP,
    calibrate: bool = True,
    verbose: bool = False,
) -> Tables:
    """Tabulate GalSim's unit Sérsic transforms and the unit-FWHM Moffat transform, then (with
    ``calibrate``) measure the grid-size rule (`calibrate_grid_rule`, ~20 s).

    One extra index node is added beyond each end of ``n_range`` (GalSim accepts 0.3 ≤ n ≤ 6.2).
    Costs ~1 ms (n 0.5) to ~0.25 s (n 6) per index, nearly all of it GalSim's Hankel tables.
    """
    import galsim

    lo, hi = n_range
    count = int(round((hi - lo) / n_step))
    if abs(lo + count * n_step - hi) > 1e-9:
        raise ValueError(f"n_range {n_range} is not a whole number of n_step {n_step}")
    n_nodes = np.round(lo + n_step * np.arange(-1, count + 2), 12)
    if n_nodes[0] < 0.3 or n_nodes[-1] > 6.2:
        raise ValueError(f"GalSim's Sersic needs 0.3 <= n <= 6.2; nodes span {n_nodes[[0, -1]]}")
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
        pixel_scale=float(pixel_scale),
        stamp=int(stamp),
    )
    tables.build_seconds = timing  # not saved; for the benchmark
    if calibrate:
        t0 = time.perf_counter()
        calibrate_grid_rule(tables)
        tables.calibrate_seconds = time.perf_counter() - t0
    return tables


# --------------------------------------------------------------------------------------------
# The table cache on disk
# --------------------------------------------------------------------------------------------
FORMAT_VERSION = 2
"""Bumped when the tables' content or layout changes: older cache files are then rebuilt."""

CACHE_ENV = "GALPARAM_CACHE"
"""Environment variable naming the cache folder (default ``~/.cache/galparam``)."""


def cache_dir() -> Path:
    """Where built tables are kept between runs."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "galparam")


@lru_cache(maxsize=1)
def galsim_version() -> str | None:
    """The installed GalSim's version, or None where GalSim is not installed (drawing then needs a
    table file made elsewhere: :func:`load_tables`)."""
    try:
        import galsim
    except ImportError:
        return None
    return galsim.__version__


def table_settings(
    *, stamp: int = STAMP, pixel_scale: float = SCALE, psf_beta: float = PSF_BETA, galsim: str | None = None
) -> dict:
    """Everything a table file depends on: GalSim's version, the geometry and the table settings.

    ``galsim`` defaults to the installed version; where GalSim is not installed it is the version
    that made the cached tables of this geometry (see :func:`resolve_table_settings`).
    """
    if galsim is None:
        return table_file(stamp=stamp, pixel_scale=pixel_scale, psf_beta=psf_beta)[0]
    return {
        "format": FORMAT_VERSION,
        "galsim": galsim,
        "stamp": int(stamp),
        "pixel_scale": float(pixel_scale),
        "psf_beta": float(psf_beta),
        "n_range": list(N_RANGE),
        "n_step": N_STEP,
        "s_max": S_MAX,
        "s_step": S_STEP,
    }


def table_file(
    *, stamp: int = STAMP, pixel_scale: float = SCALE, psf_beta: float = PSF_BETA, folder=None
) -> tuple[dict, Path]:
    """The settings and the file of the tables :func:`load_tables` reads: the installed GalSim's
    (the file may not exist yet), or without GalSim the cache file made for this geometry by the
    newest GalSim, under whatever name it was copied.

    Raises
    ------
    GalparamError
        GalSim is not installed and no cache file holds tables of this geometry.
    """
    folder = Path(folder or cache_dir())
    version = galsim_version()
    if version is None:
        return _find_cached(stamp, pixel_scale, psf_beta, folder)
    settings = table_settings(stamp=stamp, pixel_scale=pixel_scale, psf_beta=psf_beta, galsim=version)
    return settings, cache_path(settings, folder)


def resolve_table_settings(*, stamp: int = STAMP, pixel_scale: float = SCALE, psf_beta: float = PSF_BETA, folder=None):
    """The settings of the tables this process draws from (:func:`table_file`'s)."""
    return table_file(stamp=stamp, pixel_scale=pixel_scale, psf_beta=psf_beta, folder=folder)[0]


_FOUND: dict = {}


def _find_cached(stamp, pixel_scale, psf_beta, folder: Path) -> tuple[dict, Path]:
    """Without GalSim: the settings and file of the cached tables of a geometry (newest GalSim's),
    looked for once per process and folder."""
    key = (int(stamp), float(pixel_scale), float(psf_beta), str(folder))
    if key in _FOUND and _FOUND[key][1].exists():
        return _FOUND[key]
    wanted = table_settings(stamp=stamp, pixel_scale=pixel_scale, psf_beta=psf_beta, galsim="")
    found = []
    for path in sorted(folder.glob("sersic-tables-*.npz")):
        try:
            with np.load(path, allow_pickle=False) as z:
                recorded = json.loads(str(z["settings"]))
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            continue
        if isinstance(recorded, dict) and {**recorded, "galsim": ""} == wanted:
            found.append((recorded, path))
    if not found:
        from galparam.errors import GalparamError

        raise GalparamError(
            f"GalSim is not installed and {folder} holds no Sérsic tables for a {stamp}-pixel stamp of "
            f"{pixel_scale:g} arcsec, Moffat beta {psf_beta:g} (table format {FORMAT_VERSION}); install GalSim "
            f"to build them, or copy the sersic-tables-*.npz that `galparam-simulate tables` names on a "
            f"machine with GalSim into {folder} (or set {CACHE_ENV})"
        )
    _FOUND[key] = max(found, key=lambda item: _version_key(item[0]["galsim"]))
    return _FOUND[key]


def _version_key(version: str):
    return tuple(int(p) if p.isdigit() else 0 for p in str(version).replace("-", ".").split("."))


def _settings_key(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def cache_path(settings: dict, folder=None) -> Path:
    """The file that holds the tables of ``settings``."""
    return Path(folder or cache_dir()) / f"sersic-tables-{_settings_key(settings)}.npz"


def _read_cached(path: Path, settings: dict) -> Tables:
    """The tables in ``path``, or ValueError saying why they cannot be trusted."""
    try:
        with np.load(path, allow_pickle=False) as z:
            recorded = json.loads(str(z["settings"])) if "settings" in z.files else None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"unreadable ({type(exc).__name__})") from None
    if recorded != settings:
        raise ValueError("made for other settings or another GalSim version")
    try:
        tables = Tables.load(path)
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"incomplete ({type(exc).__name__})") from None
    expected_rows = int(round(S_MAX / S_STEP)) + 1
    if (
        tables.sersic.shape != (len(tables.n_nodes), expected_rows)
        or tables.psf.shape != (expected_rows,)
        or not np.isfinite(tables.sersic).all()
        or tables.rule_N.size == 0
        or not np.isfinite([tables.psf_unit_maxk, tables.psf_unit_stepk]).all()
    ):
        raise ValueError("its arrays do not have the expected shapes or values")
    return tables


_LOADED: dict = {}


def load_tables(*, stamp: int = STAMP, pixel_scale: float = SCALE, psf_beta: float = PSF_BETA, folder=None) -> Tables:
    """The Sérsic and PSF tables of a stamp geometry: from this process's memory, from the cache
    file, or built from GalSim (~30 s, once per machine) and saved there.

    A cache file that is truncated, made for other settings or another GalSim version, or holds
    bad values is rebuilt, with one notice line on stderr; it is never trusted.
    """
    settings, path = table_file(stamp=stamp, pixel_scale=pixel_scale, psf_beta=psf_beta, folder=folder)
    key = str(path)
    if key in _LOADED:
        return _LOADED[key]
    tables = None
    if path.exists():
        try:
            tables = _read_cached(path, settings)
        except ValueError as reason:
            print(f"galparam: the Sérsic table cache {path} is {reason}; rebuilding it", file=sys.stderr)
    if tables is None:
        if galsim_version() is None:
            from galparam.errors import GalparamError

            raise GalparamError(
                f"the Sérsic table cache {path} cannot be used and GalSim is not installed to rebuild it"
            )
        tables = build_tables(psf_beta=psf_beta, pixel_scale=pixel_scale, stamp=stamp)
        from galparam.io import atomic_path

        try:
            with atomic_path(path, suffix=".npz") as tmp:
                arrays = {k: np.asarray(getattr(tables, k)) for k in Tables._SAVED}
                np.savez(tmp, settings=np.array(json.dumps(settings, sort_keys=True)), **arrays)
        except OSError as exc:  # a read-only home: draw from memory, build again next time
            print(
                f"galparam: cannot keep the Sérsic tables in {path.parent} ({exc.strerror}); set {CACHE_ENV}",
                file=sys.stderr,
            )
    _LOADED[key] = tables
    return tables


# --------------------------------------------------------------------------------------------
# Per-galaxy geometry: the k-box and N (host-side, numpy; not differentiated)
# --------------------------------------------------------------------------------------------
def shear_axes(g1, g2):
    """Major and minor semi-axis factors of GalSim's shear matrix (their product is 1)."""
    g = np.hypot(g1, g2)
    return np.sqrt((1 + g) / (1 - g)), np.sqrt((1 - g) / (1 + g))


def unit_maxk_stepk(tables: Tables, n):
    """The unit Sérsic's maxk and stepk at any n: log-linear between tabulated indices."""
    n = np.asarray(n, dtype=np.float64)
    return (
        np.exp(np.interp(n, tables.n_nodes, np.log(tables.sersic_maxk))),
        np.exp(np.interp(n, tables.n_nodes, np.log(tables.sersic_stepk))),
    )


def galsim_maxk_stepk(tables: Tables, n, hlr, g1, g2, psf_fwhm):
    """maxk and stepk (rad/arcsec) that GalSim gives the galaxy ⊗ PSF ⊗ pixel (Convolution rules:
    maxk is the smallest, 1/stepk² the sum of 1/stepk²; a Transformation divides maxk by its
    minor and stepk by its major axis)."""
    major, minor = shear_axes(g1, g2)
    mk_u, sk_u = unit_maxk_stepk(tables, n)
    hlr = np.asarray(hlr, dtype=np.float64)
    psf_fwhm = np.asarray(psf_fwhm, dtype=np.float64)
    mk_gal, sk_gal = mk_u / (hlr * minor), sk_u / (hlr * major)
    mk_psf, sk_psf = tables.psf_maxk / psf_fwhm, tables.psf_stepk / psf_fwhm
    mk_pix = 2.0 / (1e-3 * tables.pixel_scale)  # GSParams.maxk_threshold = 1e-3
    sk_pix = math.pi / tables.pixel_scale
    maxk = np.minimum(np.minimum(mk_gal, mk_psf), mk_pix)
    stepk = (sk_gal**-2 + sk_psf**-2 + sk_pix**-2) ** -0.5
    return maxk, stepk


def kbox_half(maxk, N, pixel_scale=SCALE):
    """GalSim's half-width of the k-box in units of dk = 2π/(N·scale) (drawFFT_makeKImage)."""
    maxk_pix = np.asarray(maxk) * pixel_scale  # rad/pixel
    dk = 2 * np.pi / np.asarray(N)
    return np.where(N * dk / 2 > maxk_pix, N // 2, np.ceil(maxk_pix / dk).astype(np.int64))


def galsim_fft_size(stepk, pixel_scale=SCALE, stamp=STAMP):
    """The N GalSim's drawImage would use (getGoodImageSize, good_fft_size, minimum 128)."""
    nd = 2 * np.pi / (pixel_scale * np.asarray(stepk, dtype=np.float64))
    N = np.ceil(nd * (1 - 1e-12)).astype(np.int64)
    N = 2 * ((N + 1) // 2)
    N = np.maximum(N, stamp)
    # good_fft_size: the next 2^k or 3·2^k
    log2 = np.ceil(np.log2(N))
    p2 = 2**log2
    p3 = 3 * 2 ** (log2 - 2)
    N = np.where(p3 >= N, p3, p2).astype(np.int64)
    return np.maximum(N, 128)


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


def grid_size(tables: Tables, n, hlr, g1, g2, psf_fwhm, stepk=None):
    """N by galaxy: GalSim's own N, or the smaller N that the calibrated rule allows.

    The rule table holds, at nodes of (n, major-axis radius hlr·sqrt((1+|g|)/(1-|g|)), PSF FWHM),
    the smallest size in `GRID_SIZES` whose image is within the calibration tolerances of the
    image at GalSim's N. A galaxy takes the largest N required at the 8 corners of its cell (no
    monotonicity assumed), and never more than GalSim's own N (at which the match is exact, the
    wrap-around included). Outside the calibrated ranges it takes GalSim's N.
    """
    if stepk is None:
        stepk = galsim_maxk_stepk(tables, n, hlr, g1, g2, psf_fwhm)[1]
    NG = galsim_fft_size(stepk, tables.pixel_scale, tables.stamp)
    if tables.rule_N.size == 0:
        return NG
    n, hlr, psf_fwhm = (np.asarray(a, dtype=np.float64) for a in (n, hlr, psf_fwhm))
    r = hlr * shear_axes(g1, g2)[0]
    need = np.zeros(np.shape(NG), dtype=np.int64)
    inside = np.ones(np.shape(NG), dtype=bool)
    idx = []
    for x, nodes in ((n, tables.rule_n), (r, tables.rule_r), (psf_fwhm, tables.rule_fwhm)):
        tol = 1e-9 * (nodes[-1] - nodes[0])
        inside &= (x >= nodes[0] - tol) & (x <= nodes[-1] + tol)
        hi = np.clip(np.searchsorted(nodes, x - tol), 0, len(nodes) - 1)
        lo = np.clip(np.searchsorted(nodes, x + tol, side="right") - 1, 0, len(nodes) - 1)
        idx.append((lo, hi))
    for a in idx[0]:
        for b in idx[1]:
            for c in idx[2]:
                need = np.maximum(need, tables.rule_N[a, b, c])
    return np.where(inside, np.minimum(need, NG), NG)


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


# --------------------------------------------------------------------------------------------
# numpy renderer
# --------------------------------------------------------------------------------------------
def n_weights(u):
    """Cubic-spline weights of (C_j, C_j+1, D_j, D_j+1) at fraction u between nodes j, j+1
    (`Tables.coef_d2`). Written with products only (see `KerasRenderer._render_group`)."""
    v = 1 - u
    return np.stack([v, u, v * v * v - v, u * u * u - u], axis=-1)


def _n_position(tables: Tables, n):
    """Index j of the node below n and the fraction u in [0, 1]."""
    x = (np.asarray(n, dtype=np.float64) - tables.n_nodes[0]) / tables.n_step
    j = np.clip(np.floor(x).astype(np.int64), 0, len(tables.n_nodes) - 2)
    return j, x - j


_GRID_CACHE: dict = {}


def _grid(N: int, H: int, pixel_scale: float, dtype):
    """Static per-(N, H) arrays on the half-plane box kx = m_x·dk, m_x = 0..H (columns),
    ky = m_y·dk, m_y = -H..H (rows), dk = 2π/(N·scale) in rad/arcsec.

    Returns a dict: mx, my (the integer offsets), kxx = kx², kxy = 2·kx·ky, kyy = ky² and k = |k|
    as (2H+1, H+1) arrays, px, py (the pixel factor per axis, `_pixel_factor`) and phase
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
            px=_pixel_factor(mx, N, half_zero=True).astype(dtype),
            py=_pixel_factor(my, N).astype(dtype),
            phase=np.exp(1j * np.pi * np.arange(N) / N),
        )
        _GRID_CACHE[key] = g
    return g


def _pixel_factor(m, N, half_zero=False):
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


def _fold_into(out, x, N, offset, axis):
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


def _eval_spline(coef_flat, rows, t):
    """Cubic in Horner form: coef_flat (R, 4) float, rows int (any shape), t same shape."""
    return _horner(np.take(coef_flat, rows, axis=0), t)  # np.take is ~5× faster than coef_flat[rows]


def _horner(c, t):
    """c₀ + c₁t + c₂t² + c₃t³ of gathered coefficients c (..., 4)."""
    r = c[..., 3] * t
    r += c[..., 2]
    r *= t
    r += c[..., 1]
    r *= t
    r += c[..., 0]
    return r


def _hermitian_inverse(P, N, stamp, phase):
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
    g = _grid(N, H, tables.pixel_scale, dtype)
    M = tables.sersic.shape[1]
    coef, coef_d2 = tables.coefficients(dtype)
    psfpix = _psf_pixel(tables, N, H, fwhm, dtype)  # (1 or B, 2H+1, H+1)

    # per-galaxy scalars (float64, cast once)
    j, u = _n_position(tables, n)
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
    if derive:
        w_n = n_weight_derivatives(u) * (flux / tables.n_step)[:, None]
        # ∂p/∂θ for the table position p = Q^¼ of the quadratic form Q = hh·[...]:
        #   ∂p/∂hlr = p/(2·hlr);  ∂p/∂g = (∂Q/∂g)/(4p³) with
        #   ∂Q/∂g1 = Q·2g1/(1-g²) + 2hh·(kxx - kyy) + 2hh·g1·(kxx + kyy),
        #   ∂Q/∂g2 = Q·2g2/(1-g²) + 2hh·g2·(kxx + kyy) + 2hh·kxy   (kxy = 2·kx·ky)
        shear = {
            "a1": 2 * g1 / (1 - gsq),
            "a2": 2 * g2 / (1 - gsq),
            "hh2": 2 * hh,
            "hh2g1": 2 * hh * g1,
            "hh2g2": 2 * hh * g2,
            "half_over_hlr": 0.5 / hlr,
        }

    folded = 5 if derivatives == "jacobian" else 1  # the image, ∂/∂n, ∂/∂hlr, ∂/∂g1, ∂/∂g2 (∂/∂flux = image/flux)
    P = np.zeros((folded, B, N, N), dtype=dtype)
    # vjp: per galaxy, ∂F/∂n, S1 = F'(p)·p and S2 = F'(p)·p/(4Q) on the box (PSF and box mask
    # are applied to the adjoint weights instead)
    stored = np.empty((B, 3, 2 * H + 1, H + 1), dtype) if derivatives == "vjp" else None
    step = max(1, CHUNK_POINTS // (g["kxy"].size * (3 if derive else 1)))
    for a in range(0, B, step):
        b = min(B, a + step)
        c = b - a
        m = int(rows_needed[a:b].max())
        gal = _blend(coef, coef_d2, j[a:b], w[a:b], m, dtype)
        pos = cxx[a:b, None, None] * g["kxx"]
        pos += cxy[a:b, None, None] * g["kxy"]
        pos += cyy[a:b, None, None] * g["kyy"]
        quadratic = pos.copy() if derive else None
        np.sqrt(pos, out=pos)
        np.sqrt(pos, out=pos)  # the table position s / s_step
        position = pos.copy() if derive else None
        rows = pos.astype(np.int32)
        np.minimum(rows, m - 1, out=rows)
        pos -= rows  # now the fraction t
        rows += (np.arange(c, dtype=np.int32) * m)[:, None, None]
        cf = np.take(gal, rows, axis=0)  # np.take is ~5× faster than gal[rows]
        F = _horner(cf, pos)
        values = [F]
        if derive:
            dF_dn = _eval_spline(_blend(coef, coef_d2, j[a:b], w_n[a:b], m, dtype), rows, pos)
            slope = cf[..., 3] * (3 * pos)  # ∂F/∂p = c1 + 2·c2·t + 3·c3·t²
            slope += 2 * cf[..., 2]
            slope *= pos
            slope += cf[..., 1]
            s1 = slope * position
            # finite (→ 0) as k → 0; at k = 0 itself, where Q = 0, it is 0
            s2 = np.divide(s1, 4 * quadratic, out=np.zeros_like(s1), where=quadratic > 0)
            if stored is not None:
                stored[a:b, 0], stored[a:b, 1], stored[a:b, 2] = dF_dn, s1, s2
            else:
                sh = {key: v[a:b, None, None] for key, v in shear.items()}
                d_g1 = sh["a1"] * quadratic
                d_g1 += sh["hh2"] * g["kdiff"]
                d_g1 += sh["hh2g1"] * g["ksum"]
                d_g2 = sh["a2"] * quadratic
                d_g2 += sh["hh2g2"] * g["ksum"]
                d_g2 += sh["hh2"] * g["kxy"]
                values += [dF_dn, s1 * sh["half_over_hlr"], s2 * d_g1, s2 * d_g2]
        del cf
        hc = h[a:b]
        for plane, F in enumerate(values):
            F *= psfpix if psfpix.shape[0] == 1 else psfpix[a:b]
            if np.any(hc < H):
                # GalSim's own box is h ≤ H: zero the rest (exact zeros leave the sums unchanged)
                F *= _box_mask(g, hc)
            Fy = _fold_into(np.zeros((c, N, H + 1), dtype), F, N, H, axis=1)  # ky from -H
            _fold_into(P[plane, a:b], Fy, N, 0, axis=2)  # kx from 0
    cdt = np.complex128 if dtype == np.float64 else np.complex64
    phase = g["phase"].astype(cdt)
    image = _hermitian_inverse(P[0], N, tables.stamp, phase)
    if not derive:
        return image
    if stored is not None:
        weights_on_box = psfpix * (_box_mask(g, h) if np.any(h < H) else 1.0)
        return image, _box_vjp(image, flux, stored, shear, weights_on_box, N, tables.stamp, g, phase)
    jac = np.empty((B, 5, tables.stamp, tables.stamp), dtype=image.dtype)
    jac[:, 0] = image / flux[:, None, None]
    for plane in range(1, 5):
        jac[:, plane] = _hermitian_inverse(P[plane], N, tables.stamp, phase)
    return image, jac


def _box_mask(g, h):
    """(B, 2H+1, H+1): 1 inside each galaxy's own k-box |m_y|, m_x ≤ h, else 0."""
    return (np.abs(g["my"])[None, :, None] <= h[:, None, None]) & (g["mx"][None, None, :] <= h[:, None, None])


def _box_vjp(image, flux, stored, shear, weights_on_box, N, stamp, g, phase):
    """w (B, S, S) → Σ_pixels w·∂image/∂θ (B, 5) from the derivative factors on the k-box.

    The stamp is μ(r) = (2/N²)·Re Σ_k e(k)·P(k)·ω^{k·r} (P the folded real sums, e the half-pixel
    phase; see :func:`_hermitian_inverse`), so Σ_r w(r)·μ(r) = Σ_k P(k)·2·Re[e(k)·ifft2(w)(k)]:
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
    k = _grid(N, H, pixel_scale, np.float64)["k"][H:][j, i]
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
        g = _grid(N, H, tables.pixel_scale, np.float64)
        k, lower, upper = _octant(N, H, tables.pixel_scale)
        M = tables.psf.shape[0]
        # radial: evaluated on one octant of the box (a third of the time), the same numbers mirrored
        pos = np.sqrt(k * fwhm) / tables.s_step
        rows = np.minimum(pos.astype(np.int64), M - 1)
        quadrant = np.empty((H + 1) * (H + 1))
        quadrant[lower] = quadrant[upper] = _eval_spline(tables.psf_coef, rows, pos - rows)
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


# --------------------------------------------------------------------------------------------
# keras.ops renderer (TensorFlow today, JAX later): same arithmetic, differentiable
# --------------------------------------------------------------------------------------------
class KerasRenderer:
    """The renderer in backend-neutral ``keras.ops``, differentiable in flux, n, hlr, g1, g2.

    The grid (N, k-box) is chosen on the host from the parameter values, as in `render_numpy`
    (it is piecewise constant in the parameters, so it carries no gradient); each group of
    galaxies sharing (N, H) is one batched evaluation, fold and inverse FFT with static shapes.

    Parameters
    ----------
    tables : Tables
    dtype : "float32" or "float64"
    jit : compile one function per (N, H) group shape (XLA under TensorFlow, jax.jit under JAX).
        Gradients through a compiled function work (TensorFlow traces the backward pass too).
    box_step : the k-box half-width is padded to a multiple of this (fewer distinct shapes to
        compile); default 8 with ``jit``, else 1.
    """

    def __init__(self, tables: Tables, *, dtype="float32", jit=False, box_step=None):
        from keras import ops

        self.tables = tables
        self.dtype = dtype
        self.box_step = box_step if box_step is not None else (8 if jit else 1)
        self.jit = jit
        self._ops = ops
        # (Nn, 2, M, 4): each node's s-spline coefficients and their n-spline second derivatives
        self.coef = ops.convert_to_tensor(np.stack([tables.coef, tables.coef_d2], axis=1), dtype=dtype)
        self.psf_coef = ops.convert_to_tensor(tables.psf_coef, dtype=dtype)  # (M, 4)
        self.M = tables.sersic.shape[1]
        self._consts: dict = {}
        self._compiled: dict = {}

    # -- static per-(N, H) constants --------------------------------------------------------
    def _grid_consts(self, N, H):
        key = (N, H)
        c = self._consts.get(key)
        if c is None:
            ops, dt = self._ops, self.dtype
            g = _grid(N, H, self.tables.pixel_scale, np.float64)
            # post-fold phase: the half-pixel centring exp(iπa/N) (see `_pixel_factor`) times a
            # shift of stamp/2 pixels, exp(-2πi·(stamp/2)·a/N), so the stamp is the grid's first
            # stamp×stamp corner; a is the folded index in [0, N)
            a = np.arange(N)
            th1 = np.pi * a * (1 - self.tables.stamp) / N
            th = th1[:, None] + th1[None, :]
            c = dict(
                kxx=ops.convert_to_tensor(g["kxx"].ravel(), dt),
                kxy=ops.convert_to_tensor(g["kxy"].ravel(), dt),
                kyy=ops.convert_to_tensor(g["kyy"].ravel(), dt),
                k=ops.convert_to_tensor(g["k"].ravel(), dt),
                pix=ops.convert_to_tensor((g["py"][:, None] * g["px"][None, :]).ravel(), dt),
                amx=ops.convert_to_tensor(np.broadcast_to(g["mx"][None, :], g["k"].shape).ravel(), "int32"),
                amy=ops.convert_to_tensor(np.broadcast_to(np.abs(g["my"])[:, None], g["k"].shape).ravel(), "int32"),
                cos=ops.convert_to_tensor(np.cos(th), dt),
                sin=ops.convert_to_tensor(np.sin(th), dt),
            )
            self._consts[key] = c
        return c

    # -- one group ---------------------------------------------------------------------------
    def render_group(self, flux, n, hlr, g1, g2, psf_fwhm, h, *, N: int, H: int):
        """(B,) tensors (psf_fwhm may be a Python float shared by all), h (B,) int GalSim box
        half-widths ≤ H → (B, stamp, stamp) tensor."""
        if not self.jit:
            return self._render_group(flux, n, hlr, g1, g2, psf_fwhm, h, N=N, H=H)
        ops = self._ops
        fn = self._compiled.get((N, H))
        if fn is None:
            fn = self._compiled[(N, H)] = self._compile(N, H)
        if np.isscalar(psf_fwhm):
            psf_fwhm = np.full((1,), psf_fwhm)
        # XLA compiles per shape: pad the group to a power of two (≥ 8) by repeating its first
        # galaxy, so a few shapes serve every batch; images do not depend on their batch-mates.
        B = int(ops.shape(flux)[0])
        Bp = max(8, 1 << (B - 1).bit_length())
        args = [ops.convert_to_tensor(v, self.dtype) for v in (flux, n, hlr, g1, g2)]
        fw = ops.convert_to_tensor(psf_fwhm, self.dtype)
        h = ops.convert_to_tensor(h, "int32")
        if Bp > B:
            pad = ops.zeros((Bp - B,), "int32")
            idx = ops.concatenate([ops.arange(B, dtype="int32"), pad])
            args = [ops.take(a, idx, axis=0) for a in args]
            h = ops.take(h, idx, axis=0)
            if fw.shape[0] != 1:
                fw = ops.take(fw, idx, axis=0)
        out = fn(*args, fw, h)
        return out[:B] if Bp > B else out

    def _compile(self, N, H):
        import keras

        def f(flux, n, hlr, g1, g2, psf_fwhm, h):
            return self._render_group(flux, n, hlr, g1, g2, psf_fwhm, h, N=N, H=H)

        self._grid_consts(N, H)  # constants made eagerly, outside any trace
        backend = keras.backend.backend()
        if backend == "tensorflow":
            import tensorflow as tf

            v = tf.TensorSpec([None], self.dtype)
            sig = [v, v, v, v, v, v, tf.TensorSpec([None], tf.int32)]
            return tf.function(f, jit_compile=True, input_signature=sig)
        if backend == "jax":
            import jax

            return jax.jit(f)
        return f

    def _render_group(self, flux, n, hlr, g1, g2, psf_fwhm, h, *, N, H):
        ops, dt, t = self._ops, self.dtype, self.tables
        c = self._grid_consts(N, H)
        M = self.M
        flux, n, hlr, g1, g2 = (ops.convert_to_tensor(v, dt) for v in (flux, n, hlr, g1, g2))
        psf_fwhm = ops.convert_to_tensor(psf_fwhm, dt)
        B = ops.shape(flux)[0]

        # per-galaxy Sérsic table: the cubic spline in n between the bracketing nodes (C² in n)
        x = (n - float(t.n_nodes[0])) / float(t.n_step)
        j = ops.clip(ops.floor(x), 0.0, float(len(t.n_nodes) - 2))
        u = x - j
        v = 1.0 - u
        w = [v, u, v * v * v - v, u * u * u - u]  # weights of C_j, C_j+1, D_j, D_j+1
        jj = ops.cast(j, "int32")
        lo, hi = ops.take(self.coef, jj, axis=0), ops.take(self.coef, jj + 1, axis=0)
        # explicit adds in a fixed order (an einsum's matmul kernel may depend on the batch size)
        w = [wq * flux for wq in w]  # the flux scales the table (M rows) rather than the k-box
        gal = w[0][:, None, None] * lo[:, 0]
        gal = gal + w[1][:, None, None] * hi[:, 0]
        gal = gal + w[2][:, None, None] * lo[:, 1]
        gal = gal + w[3][:, None, None] * hi[:, 1]
        gal = ops.reshape(gal, (-1, 4))  # (B·M, 4)

        # hlr²·|A k|², A GalSim's shear matrix; epsilon keeps d(ksq**0.25) finite at k = 0
        # (products, not ** 2: a vectorised pow can round differently from the scalar one, which
        # would make an image depend on its batch size)
        # scaled by 1/s_step⁴ so that ksq**0.25 is the table position directly
        gsq = g1 * g1 + g2 * g2
        hh = hlr * hlr / (1.0 - gsq) * (1.0 / t.s_step**4)
        p1, m1 = 1.0 + g1, 1.0 - g1
        cxx = hh * (p1 * p1 + g2 * g2)
        cxy = hh * 2.0 * g2
        cyy = hh * (m1 * m1 + g2 * g2)
        ksq = cxx[:, None] * c["kxx"] + cxy[:, None] * c["kxy"] + cyy[:, None] * c["kyy"]
        pos = ops.sqrt(ops.sqrt(ksq + KSQ_EPS / t.s_step**4))
        row = ops.minimum(ops.floor(pos), float(M - 1))  # floor: no gradient, as it should be
        tt = pos - row
        irow = ops.cast(row, "int32") + (ops.arange(B, dtype="int32") * M)[:, None]
        F = self._horner(ops.take(gal, irow, axis=0), tt)  # (B, P)

        # PSF (Moffat at |k|·fwhm) × pixel response × fold sign
        sp = ops.sqrt(c["k"][None, :] * ops.reshape(psf_fwhm, (-1, 1))) * (1.0 / t.s_step)
        prow = ops.minimum(ops.floor(sp), float(M - 1))
        psf = self._horner(ops.take(self.psf_coef, ops.cast(prow, "int32"), axis=0), sp - prow)
        F = F * (psf * c["pix"][None, :])

        # GalSim's own k-box (half-width h ≤ H): exact zeros outside (skipped on the host when
        # no galaxy needs it; always applied inside a compiled function)
        if not (isinstance(h, np.ndarray) and np.all(h == H)):
            hcol = ops.reshape(ops.convert_to_tensor(h, "int32"), (-1, 1))
            inside = ops.logical_and(c["amx"][None, :] <= hcol, c["amy"][None, :] <= hcol)
            F = F * ops.cast(inside, dt)

        # fold modulo N: ky (rows, first index -H), then kx (columns, first index 0)
        F = ops.reshape(F, (-1, 2 * H + 1, H + 1))
        F = self._fold(F, N, H, axis=1)
        F = self._fold(F, N, 0, axis=2)  # (B, N, N)

        # image = 2·Re ifft2(phase·P): the kx < 0 half is the complex conjugate mirror
        re, _ = ops.ifft2((F * c["cos"], F * c["sin"]))
        s = t.stamp
        return 2.0 * re[:, :s, :s]

    def _horner(self, cf, tt):
        return cf[..., 0] + tt * (cf[..., 1] + tt * (cf[..., 2] + tt * cf[..., 3]))

    def _fold(self, x, N, offset, axis):
        """Sum along ``axis`` modulo N (index i has frequency i - offset): pad, reshape, sum."""
        ops = self._ops
        L = x.shape[axis]
        lead = (-offset) % N
        R = -(-(lead + L) // N)
        pad = [[0, 0], [0, 0], [0, 0]]
        pad[axis] = [lead, R * N - lead - L]
        x = ops.pad(x, pad)
        # slices added in a fixed order, so the result does not depend on the batch size
        part = [slice(None)] * 3
        out = None
        for r in range(R):
            part[axis] = slice(r * N, (r + 1) * N)
            out = x[tuple(part)] if out is None else out + x[tuple(part)]
        return out

    # -- whole batch ------------------------------------------------------------------------
    def plan(self, flux, n, hlr, g1, g2, psf_fwhm, *, N=None) -> RenderPlan:
        """The host-side part: per galaxy N and k-box, and the groups drawn together, from
        concrete parameter values (arrays or eager tensors). A plan lets `__call__` run inside
        a trace (jax.jit, jax.grad, tf.function): the grid is piecewise constant in the
        parameters, so a plan stays valid for small parameter changes (a likelihood fit can
        re-plan at each outer step)."""
        ops = self._ops
        host = [
            np.atleast_1d(np.asarray(ops.convert_to_numpy(v), dtype=np.float64)).ravel() for v in (flux, n, hlr, g1, g2)
        ]
        B = max(len(v) for v in host)
        host = [np.broadcast_to(v, (B,)) for v in host]
        fw = np.asarray(ops.convert_to_numpy(psf_fwhm), dtype=np.float64)
        shared = float(fw) if fw.ndim == 0 else None
        Ns, hs, Hs = choose_grid(self.tables, *host, np.broadcast_to(fw, (B,)), N=N, box_step=self.box_step)
        keys = np.stack([Ns, Hs], axis=1)
        groups = []
        for key in np.unique(keys, axis=0):
            sel = np.flatnonzero((keys == key).all(axis=1))
            groups.append((int(key[0]), int(key[1]), sel, hs[sel]))
        order = np.concatenate([g[2] for g in groups])
        inv = None if len(groups) == 1 else np.argsort(order)
        return RenderPlan(B=B, groups=groups, inverse=inv, shared_fwhm=shared)

    def __call__(self, flux, n, hlr, g1, g2, psf_fwhm, *, N=None, plan=None):
        """(B,) parameters (tensors or arrays) → (B, stamp, stamp) tensor, differentiable in
        flux, n, hlr, g1, g2. A scalar ``psf_fwhm`` is shared (its PSF evaluated once per
        group). Without a ``plan`` one is made from the values (eager execution only)."""
        ops = self._ops
        if plan is None:
            plan = self.plan(flux, n, hlr, g1, g2, psf_fwhm, N=N)
        B = plan.B
        params = [ops.reshape(ops.convert_to_tensor(v, self.dtype), (-1,)) for v in (flux, n, hlr, g1, g2)]
        params = [p if p.shape[0] == B else ops.broadcast_to(p, (B,)) for p in params]
        if plan.shared_fwhm is None:
            fw_all = ops.reshape(ops.convert_to_tensor(psf_fwhm, self.dtype), (-1,))
        outs = []
        for N_, H_, sel, h in plan.groups:
            if len(plan.groups) == 1:
                args = params
                fw = plan.shared_fwhm if plan.shared_fwhm is not None else fw_all
            else:
                idx = ops.convert_to_tensor(sel, "int32")
                args = [ops.take(p, idx, axis=0) for p in params]
                fw = plan.shared_fwhm if plan.shared_fwhm is not None else ops.take(fw_all, idx, axis=0)
            outs.append(self.render_group(*args, fw, h, N=N_, H=H_))
        if plan.inverse is None:
            return outs[0]
        return ops.take(ops.concatenate(outs, axis=0), ops.convert_to_tensor(plan.inverse, "int32"), axis=0)


@dataclass
class RenderPlan:
    """Host-side grouping of a batch (see `KerasRenderer.plan`): per group (N, H, member
    indices, GalSim k-box half-widths h), and the permutation back to the batch order."""

    B: int
    groups: list
    inverse: np.ndarray | None
    shared_fwhm: float | None
