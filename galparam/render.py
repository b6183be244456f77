"""The one forward model: five galaxy parameters and a Moffat PSF → a pixel image.

Simulation, the likelihood fit, Fisher matrices and reconstructions all render through this
module; there is no second copy of the galaxy model. It offers two renderers of the same image,
each declaring its name (what a dataset spec's ``renderer`` says) and the Sérsic indices it draws:

* :class:`KSpaceRenderer` (``kspace``, the default of dataset specs): many galaxies per call,
  drawn in k-space from GalSim's own per-index Sérsic transforms (:mod:`galparam.kspace`), within
  1e-4 of GalSim's peak at a fraction of a millisecond an image;
* :class:`GalSimRenderer` (``galsim``): GalSim's ``drawImage`` itself, the exact reference.

:data:`RENDERERS` lists them; :func:`renderer_for` gives this process's renderer of a name and a
:class:`~galparam.geometry.Geometry`.

GalSim builds Hankel-transform tables for every new Sérsic index (4 ms at n = 0.5, ~300 ms at
n = 6 on a 2-core machine) and keeps only the last 100 in its C++ cache, which cannot be enlarged
from Python. A :class:`GalSimRenderer` therefore keeps one unit-flux, unit-radius
``galsim.Sersic`` per index it has seen and derives each galaxy from it by dilation, flux scaling
and shear: the derived profile shares the retained tables, so an index is built once per process
however the work is ordered, and the image equals GalSim's drawing of
``Sersic(n, half_light_radius, flux).shear(...)`` to float32 rounding.
"""

from __future__ import annotations

from collections import OrderedDict
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from galparam import kspace
from galparam.errors import GalparamError
from galparam.geometry import DEFAULT_GEOMETRY, Geometry
from galparam.parameters import (
    LABEL_NAMES,
    PARAMETERS,
    SERSIC_N_LIMITS,
    ParameterError,
    check_parameters,
    first_invalid,
)

if TYPE_CHECKING:
    import galsim

MAX_PROFILES = 4096
"""Unit Sérsic profiles a :class:`GalSimRenderer` keeps (one per index, least recently used out
first): a 1,000-value grid with room to spare, a few kB each."""


class GalSimRenderer:
    """Draws galaxies and PSFs with GalSim's ``drawImage``: the exact reference.

    Parameters
    ----------
    geometry : Geometry
        The stamp, pixel scale and PSF profile.
    """

    NAME = "galsim"
    SERSIC_RANGE = SERSIC_N_LIMITS
    """The Sérsic indices it draws: all that ``galsim.Sersic`` accepts."""

    def __init__(self, geometry: Geometry = DEFAULT_GEOMETRY):
        self.geometry = geometry
        self._galsim = require_galsim("the GalSim renderer (renderer: galsim)")
        self._unit_sersic: OrderedDict[float, galsim.Sersic] = OrderedDict()
        self._psf: OrderedDict[float, galsim.Moffat] = OrderedDict()

    # -- profiles -------------------------------------------------------------------------------
    def _sersic(self, n: float) -> galsim.Sersic:
        n = float(n)
        prof = self._unit_sersic.get(n)
        if prof is None:
            prof = self._galsim.Sersic(n, half_light_radius=1.0, flux=1.0)
            self._unit_sersic[n] = prof
            if len(self._unit_sersic) > MAX_PROFILES:
                self._unit_sersic.popitem(last=False)
        else:
            self._unit_sersic.move_to_end(n)
        return prof

    def galaxy(self, flux: float, sersic_n: float, hlr: float, g1: float, g2: float):
        """The sheared Sérsic profile before the PSF.

        Parameters
        ----------
        flux : float
            Total flux in counts.
        sersic_n : float
            Sérsic index, within ``SERSIC_N_LIMITS``.
        hlr : float
            Half-light radius in arcsec (before shear; the shear preserves area).
        g1, g2 : float
            Reduced shear, ``g1**2 + g2**2 < 1``.

        Returns
        -------
        galsim.GSObject

        Raises
        ------
        ParameterError
            If a value is outside its valid range (:data:`galparam.parameters.PARAMETERS`).
        """
        check_parameters((flux, sersic_n, hlr, g1, g2))
        return self._sersic(sersic_n).dilate(float(hlr)).withFlux(float(flux)).shear(g1=float(g1), g2=float(g2))

    def psf(self, fwhm: float) -> galsim.Moffat:
        """The Moffat PSF of FWHM ``fwhm`` arcsec (the last few are kept)."""
        fwhm = float(fwhm)
        prof = self._psf.get(fwhm)
        if prof is None:
            prof = self._galsim.Moffat(beta=self.geometry.psf_beta, fwhm=fwhm)
            self._psf[fwhm] = prof
            if len(self._psf) > 8:
                self._psf.popitem(last=False)
        return prof

    # -- images ---------------------------------------------------------------------------------
    def _draw(self, obj, dtype) -> np.ndarray:
        rows, columns = self.geometry.shape
        image = self._galsim.Image(columns, rows, scale=self.geometry.pixel_scale, dtype=dtype)
        obj.drawImage(image=image)
        return image.array

    def image(self, flux, sersic_n, hlr, g1, g2, psf_fwhm, *, dtype=np.float32) -> np.ndarray:
        """The noiseless, PSF-convolved, pixel-integrated image.

        Parameters
        ----------
        flux, sersic_n, hlr, g1, g2 : float
            The galaxy, as in :meth:`galaxy`.
        psf_fwhm : float
            FWHM of the Moffat PSF in arcsec.
        dtype : numpy dtype
            ``np.float32`` (datasets) or ``np.float64`` (derivatives for Fisher matrices).

        Returns
        -------
        ndarray of shape (stamp_size, stamp_size), in counts per pixel
        """
        obj = self._galsim.Convolve(self.galaxy(flux, sersic_n, hlr, g1, g2), self.psf(psf_fwhm))
        return self._draw(obj, dtype)

    def images(self, flux, sersic_n, hlr, g1, g2, psf_fwhm, *, dtype=np.float32) -> np.ndarray:
        """Many galaxies, one ``drawImage`` each, galaxies of one index one after another (so each
        index's profile is touched once a call); as :meth:`KSpaceRenderer.images`.

        Returns
        -------
        ndarray of shape (B, stamp_size, stamp_size)
        """
        columns = np.broadcast_arrays(
            *(np.atleast_1d(np.asarray(v, dtype=np.float64)) for v in (flux, sersic_n, hlr, g1, g2, psf_fwhm))
        )
        out = np.empty((len(columns[0]), *self.geometry.shape), dtype)
        for row in np.argsort(columns[1], kind="stable"):
            out[row] = self.image(*(c[row] for c in columns), dtype=dtype)
        return out

    def psf_image(self, psf_fwhm: float, *, dtype=np.float32) -> np.ndarray:
        """The unit-flux PSF image on the same stamp, pixel response included.

        Returns
        -------
        ndarray of shape (stamp_size, stamp_size)
        """
        return self._draw(self.psf(psf_fwhm), dtype)

    def psf_images(self, psf_fwhm, *, dtype=np.float32) -> np.ndarray:
        """Unit-flux PSF images, one ``drawImage`` each (see :meth:`KSpaceRenderer.psf_images`)."""
        fwhm = np.atleast_1d(np.asarray(psf_fwhm, dtype=np.float64))
        out = np.empty((len(fwhm), *self.geometry.shape), dtype)
        for row, value in enumerate(fwhm):
            out[row] = self.psf_image(value, dtype=dtype)
        return out


BOX_STEP = 8
"""The k-space renderer pads each galaxy's k-box to a multiple of this (a function of the galaxy alone)."""


class KSpaceRenderer:
    """Draws many galaxies per call in k-space from GalSim's tables (:mod:`galparam.kspace`).

    Parameters
    ----------
    geometry : Geometry
        The stamp, pixel scale and PSF profile.

    The tables are loaded from the cache (built from GalSim once per machine and geometry).
    Sérsic indices are drawable within :attr:`SERSIC_RANGE` (the tabulated indices).
    """

    NAME = "kspace"
    SERSIC_RANGE = kspace.N_RANGE
    """The Sérsic indices it draws: those its tables hold."""

    def __init__(self, geometry: Geometry = DEFAULT_GEOMETRY):
        self.geometry = geometry
        self.tables = kspace.load_tables(geometry)

    def check(self, flux, sersic_n, hlr, g1, g2) -> None:
        """Refuse parameters outside what can be drawn, naming the first and the accepted range.

        Raises
        ------
        ParameterError
        """
        columns = np.broadcast_arrays(
            *(np.atleast_1d(np.asarray(v, dtype=np.float64)) for v in (flux, sersic_n, hlr, g1, g2))
        )
        for values in (*zip(LABEL_NAMES, columns, strict=True), ("g", np.stack(columns[3:], axis=1))):
            first = first_invalid(*values)
            if first is not None:
                check_parameters([c[first] for c in columns])
        n = np.atleast_1d(np.asarray(sersic_n, dtype=np.float64))
        lo, hi = self.tables.n_range
        bad = np.flatnonzero((n < lo - 1e-9) | (n > hi + 1e-9))
        if bad.size:
            raise ParameterError(
                f"sersic_n {n[bad[0]]:g} is outside what the k-space renderer draws, [{lo:g}, {hi:g}] "
                "(renderer: galsim draws GalSim's whole range)"
            )

    def images(self, flux, sersic_n, hlr, g1, g2, psf_fwhm, *, dtype=np.float32, grid=None) -> np.ndarray:
        """Noiseless, PSF-convolved, pixel-integrated images of many galaxies.

        Parameters
        ----------
        flux, sersic_n, hlr, g1, g2, psf_fwhm : array_like of shape (B,) or scalars
            As in :meth:`GalSimRenderer.image` (counts, arcsec).
        dtype : numpy dtype
            Arithmetic and output precision: ``np.float32`` (datasets) or ``np.float64``.
        grid : pair of int arrays (B,), optional
            Each galaxy's FFT size and k-box half-width (N, h), held fixed instead of chosen from
            its parameters (:func:`galparam.kspace.choose_grid`): a fit holds its image's grid so
            that the model is continuous in the parameters (:func:`galparam.kspace.enclosing_grid`).

        Returns
        -------
        ndarray of shape (B, stamp_size, stamp_size), ``dtype``, counts per pixel. An image depends
        only on its own parameters, never on the other galaxies of the call.

        Raises
        ------
        ParameterError
            If a parameter is outside what can be drawn.
        """
        return self._render(flux, sersic_n, hlr, g1, g2, psf_fwhm, dtype=dtype, grid=grid)

    def _render(self, flux, sersic_n, hlr, g1, g2, psf_fwhm, **options):
        """:func:`galparam.kspace.render_numpy` of checked parameters, on this renderer's tables."""
        self.check(flux, sersic_n, hlr, g1, g2)
        # k-boxes padded to multiples of 8 draw in fewer, larger groups (exact zeros: same images)
        return kspace.render_numpy(self.tables, flux, sersic_n, hlr, g1, g2, psf_fwhm, box_step=BOX_STEP, **options)

    def image(self, flux, sersic_n, hlr, g1, g2, psf_fwhm, *, dtype=np.float32) -> np.ndarray:
        """One galaxy (see :meth:`images`)."""
        return self.images(flux, sersic_n, hlr, g1, g2, psf_fwhm, dtype=dtype)[0]

    def images_and_jacobians(
        self, flux, sersic_n, hlr, g1, g2, psf_fwhm, *, grid=None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Images (as :meth:`images`, float64) and their exact derivatives by the five parameters.

        The derivatives are those of the drawn model (the tables' splines in radius and index,
        the chain rule through the shear), each galaxy on its own grid, as fits and Fisher
        matrices need them (or on ``grid``, as in :meth:`images`).

        Returns
        -------
        images : ndarray of shape (B, stamp_size, stamp_size)
        jacobians : ndarray of shape (B, 5, stamp_size, stamp_size)
            ∂image/∂(flux, sersic_n, hlr, g1, g2).

        Raises
        ------
        ParameterError
            If a parameter is outside what can be drawn.
        """
        return self._render(flux, sersic_n, hlr, g1, g2, psf_fwhm, dtype=np.float64, jacobian=True, grid=grid)

    def images_and_vjp(self, flux, sersic_n, hlr, g1, g2, psf_fwhm, *, grid=None):
        """Images (float64) and the contraction of their derivatives with weight images.

        ``grid`` holds each galaxy's grid fixed, as in :meth:`images`.

        Returns
        -------
        images : ndarray of shape (B, stamp_size, stamp_size)
        vjp : callable
            ``vjp(w)`` with ``w`` (B, stamp_size, stamp_size) gives Σ_pixels w·∂image/∂θ, (B, 5):
            with ``w = ∂NLL/∂image`` the likelihood's gradient, at a third of the cost of
            :meth:`images_and_jacobians`.
        """
        return self._render(flux, sersic_n, hlr, g1, g2, psf_fwhm, dtype=np.float64, vjp=True, grid=grid)

    def grid(self, flux, sersic_n, hlr, g1, g2, psf_fwhm) -> tuple[np.ndarray, np.ndarray]:
        """Each galaxy's own grid: FFT size N and k-box half-width h, int arrays (B,) (the
        ``grid`` that :meth:`images` takes; :func:`galparam.kspace.choose_grid`)."""
        self.check(flux, sersic_n, hlr, g1, g2)
        N, h, _ = kspace.choose_grid(self.tables, flux, sersic_n, hlr, g1, g2, psf_fwhm, box_step=BOX_STEP)
        return N, h

    def enclosing_grid(self, grid, flux, sersic_n, hlr, g1, g2, psf_fwhm) -> tuple[np.ndarray, np.ndarray]:
        """The smallest grids that enclose both ``grid`` and each galaxy's own
        (:func:`galparam.kspace.enclosing_grid`): ``grid`` itself where it does already."""
        self.check(flux, sersic_n, hlr, g1, g2)
        return kspace.enclosing_grid(self.tables, grid, flux, sersic_n, hlr, g1, g2, psf_fwhm)

    def psf_images(self, psf_fwhm, *, dtype=np.float32) -> np.ndarray:
        """Unit-flux PSF images on the same stamp, pixel response included, many per call.

        GalSim's drawing of them (:meth:`GalSimRenderer.psf_image`) to ~3e-13 of the peak in
        float64 (:mod:`galparam.kspace.psf`); an image depends only on its own FWHM.

        Parameters
        ----------
        psf_fwhm : array_like of shape (B,) or scalar
            Arcsec.
        dtype : numpy dtype
            Output precision.

        Returns
        -------
        ndarray of shape (B, stamp_size, stamp_size)
        """
        fwhm = np.atleast_1d(np.asarray(psf_fwhm, dtype=np.float64))
        bad = first_invalid("psf_fwhm", fwhm)
        if bad is not None:
            PARAMETERS["psf_fwhm"].check(fwhm[bad])
        return kspace.psf_images(self.tables, fwhm, dtype=dtype)

    def psf_image(self, psf_fwhm: float, *, dtype=np.float32) -> np.ndarray:
        """One PSF image (see :meth:`psf_images`)."""
        return self.psf_images(psf_fwhm, dtype=dtype)[0]


RENDERERS = {cls.NAME: cls for cls in (KSpaceRenderer, GalSimRenderer)}
"""The renderers by the name a dataset spec gives them; the first is the default."""

DEFAULT_RENDERER = next(iter(RENDERERS))


@lru_cache(maxsize=8)
def renderer_for(name: str, geometry: Geometry = DEFAULT_GEOMETRY):
    """This process's renderer ``name`` (:data:`RENDERERS`) for a geometry.

    One per process: a GalSim renderer's retained profiles outlive one dataset or one fit (a
    worker that makes several datasets or fits many images builds each Sérsic index once), and
    the k-space tables are read once.

    Raises
    ------
    ParameterError
        An unknown renderer name.
    """
    if name not in RENDERERS:
        raise ParameterError(f"renderer {name!r} is not one of {', '.join(RENDERERS)}")
    return RENDERERS[name](geometry)


def renderer_provenance(name: str, geometry: Geometry) -> dict:
    """What drew a dataset: the renderer and, for ``kspace``, its tables' settings and GalSim's version."""
    if name == KSpaceRenderer.NAME:
        return {"renderer": name, **kspace.resolve_table_settings(geometry)}
    return {"renderer": name, "galsim": kspace.galsim_version()}


def require_galsim(what: str):
    """The ``galsim`` module, or a one-line :class:`~galparam.errors.GalparamError` saying that
    ``what`` needs GalSim (the k-space renderer draws without it, from its table cache)."""
    try:
        import galsim
    except ImportError:
        raise GalparamError(
            f"{what} needs GalSim, which is not installed here; install galsim, or draw with the k-space "
            "renderer (renderer: kspace) from its table cache"
        ) from None
    return galsim
