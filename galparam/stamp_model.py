"""A dataset's galaxies drawn with the stamp model: off-centre, on a sky, through PSF images.

A spec with PSF images or a centre or sky prior (:attr:`~galparam.specs.DatasetSpec.stamp_model`)
draws its candidates with :func:`galparam.kspace.stamps.draw_stamps`, the model ``galparam-measure``
fits, equal to GalSim's ``drawImage`` of the same galaxy, offset and PSF to ~1e-9 of the peak.
Galaxies are drawn a PSF at a time (each PSF image of the spec's file, or each Moffat FWHM), on
the FFTs fits use (:func:`~galparam.kspace.stamps.fit_fft_size`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from galparam.frame import Frame
from galparam.geometry import Geometry
from galparam.kspace.stamps import draw_stamps, fit_fft_size, stamp_grid, wide_tables
from galparam.psf import MoffatPSF, fwhm_by_effective_area
from galparam.psf_file import PSFImagesSpec
from galparam.schema import Draws

MOFFAT_FWHM_PIXELS = np.geomspace(0.5, 40.0, 96)
"""The Moffat FWHMs (pixels) a PSF image's effective area is matched with, for its FWHM column."""


@dataclass(frozen=True)
class StampConfig:
    """What the stamp model of a spec needs: the geometry and the PSF images (None: the Moffat)."""

    geometry: Geometry
    psf: PSFImagesSpec | None

    @classmethod
    def from_spec(cls, spec) -> StampConfig | None:
        """A :class:`~galparam.specs.DatasetSpec`'s stamp model, or None for a spec drawn by its
        renderer as before."""
        return cls(spec.geometry, spec.psf) if spec.stamp_model else None


class StampModel:
    """The stamp model of one :class:`StampConfig`: its frames, its PSFs on the stamp, their FWHMs.

    Attributes
    ----------
    psf_images : ndarray (K, S, S) float32 or None
        Each PSF image of the file on the stamp, unit flux, pixel response included (what a
        dataset stores as ``psf_img``), drawn by GalSim.
    psf_fwhm : ndarray (K,) or None
        Each one's FWHM: the Moffat's with the same effective area (arcsec).
    """

    def __init__(self, config: StampConfig):
        self.config = config
        self.tables = wide_tables()
        geometry = config.geometry
        self.frames = self.psf_images = self.psf_fwhm = None
        if config.psf is not None:
            self.frames = [
                Frame(geometry.shape, geometry.pixel_scale, psf) for psf in config.psf.read(geometry.pixel_scale)
            ]
            self.psf_images = np.stack([frame.psf_image() for frame in self.frames]).astype(np.float32)
            self.psf_fwhm = psf_fwhm_on_stamp(self.psf_images, geometry)

    def frame(self, key: float, *, moffat: bool = False) -> Frame:
        """PSF image ``key``'s frame, or (a Moffat spec, or ``moffat``) the Moffat's of FWHM ``key``."""
        if self.frames is not None and not moffat:
            return self.frames[int(key)]
        geometry = self.config.geometry
        return Frame(geometry.shape, geometry.pixel_scale, MoffatPSF(key, geometry.psf_beta))

    def images(self, draws: Draws) -> np.ndarray:
        """(B, S, S) float64 noiseless images of the candidates, without the sky (the SNR's image)."""
        return self._draw(draws, None)

    def images_and_jacobians(self, draws: Draws) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`images` and their exact derivatives by the eight parameters, (B, 8, S, S)
        (:data:`~galparam.kspace.stamps.STAMP_PARAMETERS`)."""
        return self._draw(draws, "jacobian")

    def _draw(self, draws: Draws, derivatives):
        theta = draws.theta
        theta[:, 7] = 0.0
        keys = draws.stamp_column("psf_index") if self.frames is not None else draws.psf_fwhm
        out = np.empty((len(theta), *self.config.geometry.shape))
        jac = np.empty((len(theta), theta.shape[1], *self.config.geometry.shape)) if derivatives else None
        for key in np.unique(keys):
            rows = np.flatnonzero(keys == key)
            frame = self.frame(key)
            # at most FIT_FFT_SIDES times the stamp, as fits draw: GalSim's 99.5 %-of-the-flux FFT
            # reaches 4096 for a 20-pixel n = 6 galaxy; the tail's wrap-around stays ≲ 3e-5 of the peak
            grid = stamp_grid(self.tables, frame, theta[rows], max_size=fit_fft_size(frame))
            drawn = draw_stamps(self.tables, frame, theta[rows], grid=grid, derivatives=derivatives)
            if derivatives:
                out[rows], jac[rows] = drawn
            else:
                out[rows] = drawn
        return out if jac is None else (out, jac)

    def psf_rows(self, draws: Draws) -> np.ndarray:
        """(B, S, S) float32: each candidate's PSF on the stamp."""
        if self.psf_images is not None:
            return self.psf_images[draws.stamp_column("psf_index").astype(np.int64)]
        out = np.empty((len(draws), *self.config.geometry.shape), np.float32)
        for fwhm in np.unique(draws.psf_fwhm):
            out[draws.psf_fwhm == fwhm] = self.frame(fwhm).psf_image()
        return out


def psf_fwhm_on_stamp(psf_images, geometry: Geometry) -> np.ndarray:
    """Each PSF image's FWHM (arcsec), images drawn on the geometry's stamp: that of the Moffat
    (the geometry's β, drawn by GalSim the same way) with the same effective area, from half a
    pixel to 40 pixels (any pixel scale; the tables' Moffats start at 0.2″, wider than HST's PSF)."""
    grid = MOFFAT_FWHM_PIXELS * geometry.pixel_scale
    shape = geometry.shape
    moffats = np.stack([Frame(shape, geometry.pixel_scale, MoffatPSF(f, geometry.psf_beta)).psf_image() for f in grid])
    return fwhm_by_effective_area(psf_images, moffats, grid)


@lru_cache(maxsize=4)
def stamp_model_for(config: StampConfig) -> StampModel:
    """This process's stamp model of ``config`` (PSF images read and drawn once)."""
    return StampModel(config)
