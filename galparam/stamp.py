"""One cutout to measure: its image, its noise, the pixels to use and its frame, checked.

Real data come with their noise as a σ map, an inverse-variance weight map, a variance map or one
σ for the whole stamp; with bad pixels and neighbours in a mask, or in a segmentation map as
SExtractor writes it; sometimes with a gain, for the galaxy's own Poisson noise. A :class:`Stamp`
holds them in one form — a σ map, a boolean map of the pixels that count, the gain — without
touching the user's arrays (the ones it keeps are copies), and refuses in one line what cannot be
measured.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from galparam.errors import GalparamError
from galparam.frame import Frame

NOISE_KINDS = ("sigma", "weight", "variance", "noise_sigma")
"""How the noise may be given: a σ map, an inverse-variance map, a variance map, one σ."""


SKY_RANGE_SIGMAS = 20.0
"""A fitted sky stays within this many times the stamp's median σ of zero."""


def offset_limit(shape) -> float:
    """How far from a stamp's centre a galaxy's centre is fitted (pixels, along each axis): a
    quarter of the smaller side, at least 5; simulated centres stay within it too."""
    return max(5.0, min(shape) / 4)


def _first_pixel(bad: np.ndarray) -> str:
    """``x=…, y=…`` (1-based, FITS order) of the first True pixel."""
    y, x = np.argwhere(bad)[0]
    return f"x={x + 1}, y={y + 1}"


def segment_mask(segmap, segment_id: int | None = None, *, source: str = "segmentation map") -> np.ndarray:
    """The pixels a segmentation map leaves to the target: sky (0) and the target's segment.

    Parameters
    ----------
    segmap : array_like of int, shape (ny, nx)
        0 for sky, k for the pixels of source k (SExtractor's ``SEGMENTATION`` check image).
    segment_id : int, optional
        The target's segment. Default: the one under the stamp's centre pixel (nx//2, ny//2
        zero-based), or where that pixel is sky, the segment nearest to it.
    source : str
        The map's name, for messages.

    Returns
    -------
    bool ndarray (ny, nx): True where a pixel counts (the other sources' pixels are False).

    Raises
    ------
    GalparamError
        A map that is not integer-valued, or a ``segment_id`` it does not hold.
    """
    segmap = np.asarray(segmap)
    if not np.isfinite(segmap).all() or not np.array_equal(segmap, np.round(segmap)):
        raise GalparamError(f"{source}: a segmentation map holds integers (0 sky, k source k)")
    segmap = segmap.astype(np.int64)
    ny, nx = segmap.shape
    if segment_id is None:
        segment_id = int(segmap[ny // 2, nx // 2])
        if segment_id == 0 and segmap.any():
            y, x = np.nonzero(segmap)
            nearest = np.argmin(np.hypot(y - ny // 2, x - nx // 2))
            segment_id = int(segmap[y[nearest], x[nearest]])
    elif segment_id != 0 and not (segmap == segment_id).any():
        present = sorted(set(np.unique(segmap).tolist()) - {0})
        raise GalparamError(f"{source}: no segment {segment_id}; it holds {present}")
    return (segmap == 0) | (segmap == segment_id)


@dataclass(frozen=True, eq=False)
class Stamp:
    """A cutout ready to fit: ``image`` and ``sigma`` (ny, nx) float64, ``mask`` (ny, nx) bool
    (True: the pixel counts), its :class:`~galparam.frame.Frame`, the ``gain`` (electrons per
    count; None: no Poisson noise of the galaxy in the variance) and a ``name``.

    Masked pixels hold 0 in ``image`` and 1 in ``sigma`` (they are never used). Build one with
    :meth:`from_arrays`.
    """

    image: np.ndarray
    sigma: np.ndarray
    mask: np.ndarray
    frame: Frame
    gain: float | None = None
    name: str = "stamp"

    @property
    def used_pixels(self) -> int:
        """How many pixels count."""
        return int(self.mask.sum())

    @classmethod
    def from_arrays(
        cls,
        image,
        frame: Frame,
        *,
        sigma=None,
        weight=None,
        variance=None,
        noise_sigma: float | None = None,
        mask=None,
        gain: float | None = None,
        name: str = "stamp",
        sources: dict | None = None,
    ) -> Stamp:
        """A checked stamp from the user's arrays (which are not modified).

        Parameters
        ----------
        image : array_like (ny, nx)
            The cutout, sky-subtracted or with a sky the fit measures.
        frame : Frame
            Its shape, pixel scale and PSF (the shape must be the image's).
        sigma, weight, variance : array_like (ny, nx), optional
            The noise as a σ map, an inverse-variance weight map (weight 0: the pixel is
            masked) or a variance map. Exactly one of these or ``noise_sigma``.
        noise_sigma : float, optional
            One σ for every pixel.
        mask : array_like of bool (ny, nx), optional
            True where a pixel counts (bad pixels and neighbours False).
        gain : float, optional
            Electrons per count: the variance then includes the model's own counts / gain.
        name : str
            The stamp's name in results and messages.
        sources : dict, optional
            What to call each input in messages (``{"image": "img.fits[1]", "sigma": ...}``).

        Raises
        ------
        GalparamError
            A shape that differs from the image's, no noise or more than one, σ or variance ≤ 0
            or not finite on a pixel that counts, a negative or non-finite weight, NaN in the
            image where it counts, a stamp with no pixel left, a gain ≤ 0.
        """
        sources = {"image": name, **(sources or {})}
        image = np.array(image, dtype=np.float64)  # a copy: the user's array stays as it was
        if image.ndim != 2:
            raise GalparamError(f"{sources['image']}: an image must be 2-D, not of shape {image.shape}")
        if image.shape != frame.shape:
            raise GalparamError(f"{sources['image']}: image of shape {image.shape}, its frame is {frame.shape}")
        given = {
            k: v for k, v in zip(NOISE_KINDS, (sigma, weight, variance, noise_sigma), strict=True) if v is not None
        }
        if len(given) != 1:
            names = ", ".join(NOISE_KINDS)
            raise GalparamError(f"{name}: give the noise once, as one of {names} (given: {', '.join(given) or 'none'})")
        kind, noise = next(iter(given.items()))
        use = np.ones(image.shape, dtype=bool)
        if mask is not None:
            mask = np.asarray(mask)
            if mask.shape != image.shape:
                raise GalparamError(
                    f"{sources.get('mask', 'mask')}: shape {mask.shape} differs from the image's {image.shape}"
                )
            use &= mask.astype(bool)
        if kind == "noise_sigma":
            value = float(noise)
            if not (np.isfinite(value) and value > 0):
                raise GalparamError(f"{name}: noise σ {noise!r}: give a positive number (image units)")
            sigma_map = np.full(image.shape, value)
        else:
            array = np.array(noise, dtype=np.float64)
            where = sources.get(kind, f"{kind} map")
            if array.shape != image.shape:
                raise GalparamError(f"{where}: shape {array.shape} differs from the image's {image.shape}")
            if kind == "weight":
                bad = use & ~(np.isfinite(array) & (array >= 0))
                if bad.any():
                    raise GalparamError(
                        f"{where}: {int(bad.sum())} weights are negative or not finite (first at "
                        f"{_first_pixel(bad)}); weights are 1/σ², 0 for a pixel to ignore"
                    )
                use &= array > 0
                with np.errstate(divide="ignore"):
                    sigma_map = np.where(array > 0, 1.0 / np.sqrt(np.where(array > 0, array, 1.0)), 1.0)
            else:
                bad = use & ~(np.isfinite(array) & (array > 0))
                if bad.any():
                    raise GalparamError(
                        f"{where}: {int(bad.sum())} pixels that count have {'σ' if kind == 'sigma' else 'a variance'} "
                        f"≤ 0 or not finite (first at {_first_pixel(bad)}); mask them or correct the map"
                    )
                sigma_map = array if kind == "sigma" else np.sqrt(np.where(use, array, 1.0))
        bad = use & ~np.isfinite(image)
        if bad.any():
            raise GalparamError(
                f"{sources['image']}: {int(bad.sum())} pixels that count are NaN or infinite (first at "
                f"{_first_pixel(bad)}); mask them"
            )
        if not use.any():
            raise GalparamError(f"{name}: every pixel is masked; nothing is left to fit")
        if gain is not None and not (np.isfinite(gain) and gain > 0):
            raise GalparamError(f"{name}: gain {gain!r}: give a positive number of electrons per count")
        image[~use] = 0.0
        sigma_map = np.where(use, sigma_map, 1.0)
        for array in (image, sigma_map, use):
            array.setflags(write=False)
        return cls(image, sigma_map, use, frame, None if gain is None else float(gain), name)
