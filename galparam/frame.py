"""How a real stamp is taken: its shape, its pixel scale and its PSF, as one frozen value.

:class:`~galparam.geometry.Geometry` describes galparam's own datasets (square stamps, a Moffat
PSF given by its FWHM per image); a :class:`Frame` is any stamp's: ``ny`` × ``nx`` pixels, any
scale, a Moffat or image PSF (:mod:`galparam.psf`). The k-space stamp renderer
(:mod:`galparam.kspace.stamps`), the stamp fit and ``galparam-measure`` take it whole.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from galparam.errors import GalparamError
from galparam.geometry import Geometry
from galparam.interval import Interval
from galparam.psf import ImagePSF, MoffatPSF

STAMP_SIDE = Interval.closed(16, 512)
"""Pixels a side a stamp may have."""

PIXEL_SCALE = Interval.closed(0.01, 2.0)
"""Arcsec per pixel a stamp may have."""


@dataclass(frozen=True, eq=False)
class Frame:
    """A stamp of ``shape`` = (ny, nx) pixels of ``pixel_scale`` arcsec, seen through ``psf``.

    Raises
    ------
    GalparamError
        A side outside :data:`STAMP_SIDE`, a scale outside :data:`PIXEL_SCALE`, or a PSF that is
        neither a :class:`~galparam.psf.MoffatPSF` nor an :class:`~galparam.psf.ImagePSF`.
    """

    shape: tuple[int, int]
    pixel_scale: float
    psf: MoffatPSF | ImagePSF

    def __post_init__(self):
        shape = tuple(int(s) for s in self.shape)
        if len(shape) != 2 or not all(STAMP_SIDE.contains(s) for s in shape):
            raise GalparamError(f"stamp of {self.shape} pixels: each side must be in {STAMP_SIDE.text()}")
        scale = float(self.pixel_scale)
        if not PIXEL_SCALE.contains(scale):
            raise GalparamError(f"pixel scale {scale:g} arcsec: accepted {PIXEL_SCALE.text()}")
        if not isinstance(self.psf, (MoffatPSF, ImagePSF)):
            raise GalparamError(f"PSF {self.psf!r}: give a MoffatPSF or an ImagePSF")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "pixel_scale", scale)

    @classmethod
    def of_geometry(cls, geometry: Geometry, psf_fwhm: float) -> Frame:
        """The frame of an image of galparam's own datasets: the geometry's stamp, its Moffat β."""
        return cls(geometry.shape, geometry.pixel_scale, MoffatPSF(psf_fwhm, geometry.psf_beta))

    def psf_image(self) -> np.ndarray:
        """The unit-flux PSF drawn on this stamp by GalSim (``drawImage``; an effective PSF image
        ``no_pixel``, else with the pixel response): (ny, nx) float64, centred on the true centre."""
        ny, nx = self.shape
        method = "no_pixel" if self.psf.includes_pixel else "auto"
        return self.psf.to_galsim().drawImage(nx=nx, ny=ny, scale=self.pixel_scale, method=method, dtype=float).array
