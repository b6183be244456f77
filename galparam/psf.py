"""The PSF of an observation: a Moffat profile or an image, with GalSim's own Fourier transform.

A real cutout comes with its PSF as an image (PSFEx, TinyTim, a star), at the data's pixel
scale or oversampled by an integer factor; galparam's own datasets use a Moffat profile. Both are
what the k-space renderer (:mod:`galparam.kspace.stamps`) multiplies the galaxy's transform by,
so each gives, exactly as GalSim computes them:

* ``kvalue(kx, ky)``: its transform on a product grid of wavenumbers (rad/arcsec);
* ``maxk`` and ``stepk``: where GalSim's drawing ends its k-box and how it sizes its FFT;
* ``to_galsim()``: the GalSim object (the oracle the tests compare with).

:class:`ImagePSF` is GalSim's ``InterpolatedImage`` with its defaults (Quintic interpolants in x
and k, pad factor 4, flux normalization, the true centre): its transform is the padded image's
FFT, Quintic-interpolated in k, times the Quintic kernel's transform. Written from GalSim 2.8's
``SBInterpolatedImage`` (``calculateMaxK``, ``calculateStepK``, ``kValue``); it equals GalSim's
``kValue`` to ~1e-15 and its maxk and stepk bit for bit. By default the image is taken to be the
*effective* PSF (the pixel response included, as PSFEx and the surveys deliver it): the galaxy is
then drawn without a further pixel (GalSim's ``method="no_pixel"``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from galparam.errors import GalparamError

FOLDING_THRESHOLD = 5e-3
"""GalSim's ``GSParams.folding_threshold``: stepk holds all but this fraction of the flux."""

MAXK_THRESHOLD = 1e-3
"""GalSim's ``GSParams.maxk_threshold``: maxk is where the transform falls below this."""

KVALUE_ACCURACY = 1e-5
"""GalSim's ``GSParams.kvalue_accuracy``: the Quintic kernel's transform is cut where it falls below."""

PAD_FACTOR = 4
"""``InterpolatedImage``'s default zero-padding of the image before its FFT."""

QUINTIC_RANGE = 3.0
"""Half-width of the Quintic kernel, in pixels."""

QUINTIC_KRANGE = 1.6058208066649935 / KVALUE_ACCURACY ** (1.0 / 3.0)
"""Where GalSim cuts the Quintic kernel's transform (rad per PSF pixel)."""


def quintic(x) -> np.ndarray:
    """GalSim's Quintic interpolation kernel at ``x`` (pixels)."""
    x = np.abs(np.asarray(x, dtype=np.float64))
    out = np.zeros_like(x)
    a = x <= 1
    out[a] = 1 + x[a] ** 3 * (-95 / 12 + x[a] * (23 / 2 + x[a] * (-55 / 12)))
    b = (x > 1) & (x <= 2)
    xb = x[b]
    out[b] = (xb - 1) * (xb - 2) * (-23 / 4 + xb * (29 / 2 + xb * (-83 / 8 + xb * (55 / 24))))
    c = (x > 2) & (x <= 3)
    xc = x[c]
    out[c] = (xc - 2) * (xc - 3) ** 2 * (-9 / 4 + xc * (25 / 12 + xc * (-11 / 24)))
    return out


def quintic_transform(u) -> np.ndarray:
    """The Quintic kernel's Fourier transform at frequency ``u`` (cycles per pixel)."""
    u = np.abs(np.asarray(u, dtype=np.float64))
    s = np.sinc(u)
    piu2 = (np.pi * u) ** 2
    return s**5 * (s * (55 - 19 * piu2) + 2 * np.cos(np.pi * u) * (piu2 - 27))


def good_fft_size(n: int) -> int:
    """GalSim's ``goodFFTSize``: the next 2^k or 3·2^(k-2) at or above ``n``."""
    n = int(n)
    if n <= 2:
        return 2
    log2 = math.ceil(math.log2(n))
    p2, p3 = 2**log2, 3 * 2 ** (log2 - 2)
    return p3 if p3 >= n else p2


@dataclass(frozen=True, eq=False)
class MoffatPSF:
    """GalSim's ``Moffat(beta, fwhm=fwhm)`` (untruncated), drawn with the pixel response.

    Parameters
    ----------
    fwhm : float
        Full width at half maximum, arcsec.
    beta : float
        Moffat index (> 1.1; 2 in galparam's own datasets).
    """

    fwhm: float
    beta: float = 2.0
    includes_pixel = False

    def __post_init__(self):
        if not (np.isfinite(self.fwhm) and self.fwhm > 0):
            raise GalparamError(f"PSF FWHM {self.fwhm!r}: give a positive number of arcsec")
        if not (np.isfinite(self.beta) and 1.1 <= self.beta <= 100):
            raise GalparamError(f"Moffat beta {self.beta!r}: accepted 1.1 to 100")
        object.__setattr__(self, "fwhm", float(self.fwhm))
        object.__setattr__(self, "beta", float(self.beta))

    @property
    def scale_radius(self) -> float:
        """r0 (arcsec): the profile is (1 + (r/r0)²)^-β."""
        return self.fwhm / (2.0 * math.sqrt(2.0 ** (1.0 / self.beta) - 1.0))

    def kvalue(self, kx, ky) -> np.ndarray:
        """The transform (flux 1) on the grid ``ky[:, None]``, ``kx[None, :]`` (rad/arcsec): real.

        2^(2-β)/Γ(β-1) · x^(β-1) · K_(β-1)(x), x = |k|·r0 (GalSim's ``SBMoffat`` without truncation).
        """
        from scipy.special import gamma, kve

        x = np.hypot(np.asarray(ky, np.float64)[:, None], np.asarray(kx, np.float64)[None, :]) * self.scale_radius
        nu = self.beta - 1.0
        out = np.ones_like(x)
        positive = x > 0
        xp = x[positive]
        out[positive] = 2.0 ** (1.0 - nu) / gamma(nu) * xp**nu * kve(nu, xp) * np.exp(-xp)
        return out

    def _galsim_sizes(self) -> tuple[float, float]:
        sizes = self.__dict__.get("_sizes")
        if sizes is None:
            psf = self.to_galsim()
            sizes = (float(psf.maxk), float(psf.stepk))
            self.__dict__["_sizes"] = sizes
        return sizes

    @property
    def maxk(self) -> float:
        """GalSim's maxk (rad/arcsec)."""
        return self._galsim_sizes()[0]

    @property
    def stepk(self) -> float:
        """GalSim's stepk (rad/arcsec)."""
        return self._galsim_sizes()[1]

    @property
    def half_light_radius(self) -> float:
        """Radius holding half the flux (arcsec)."""
        return self.scale_radius * math.sqrt(0.5 ** (1.0 / (1.0 - self.beta)) - 1.0)

    def to_galsim(self):
        """The GalSim profile."""
        import galsim

        return galsim.Moffat(beta=self.beta, fwhm=self.fwhm)

    def describe(self) -> dict:
        """What a results table and its metadata record of the PSF."""
        return {"psf": "moffat", "psf_fwhm": self.fwhm, "psf_beta": self.beta}


@dataclass(frozen=True, eq=False)
class ImagePSF:
    """A PSF given as an image: GalSim's ``InterpolatedImage(Image(array / array.sum(), scale=scale))``.

    Parameters
    ----------
    array : array_like of shape (ny, nx)
        The PSF image, any normalization (it is divided by its sum), centred on the image's true
        centre (pixel ((nx-1)/2, (ny-1)/2) zero-based), as PSFEx and TinyTim write them.
    scale : float
        Arcsec per PSF pixel: the data's pixel scale divided by ``oversampling``.
    includes_pixel : bool
        Whether the image is the effective PSF, the pixel response included (default; PSFEx,
        TinyTim, a star): then the galaxy is drawn without a further pixel convolution.
    oversampling : int
        How many PSF pixels a data pixel spans along each axis (recorded; ``scale`` already holds it).
    source : str
        Where the image came from (a file name), for messages and the results' metadata.

    Raises
    ------
    GalparamError
        An image that is not 2-D, has fewer than 3 pixels a side, holds NaN or infinite values,
        or sums to zero or less.
    """

    array: np.ndarray
    scale: float
    includes_pixel: bool = True
    oversampling: int = 1
    source: str = "PSF image"
    _derived: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        image = np.asarray(self.array, dtype=np.float64)
        where = self.source
        if image.ndim != 2 or min(image.shape) < 3:
            raise GalparamError(f"{where}: a PSF image must be 2-D with at least 3 pixels a side, not {image.shape}")
        if not np.isfinite(image).all():
            raise GalparamError(f"{where}: the PSF image holds NaN or infinite values")
        total = image.sum()
        if not total > 0:
            raise GalparamError(f"{where}: the PSF image sums to {total:g}; it must have positive flux")
        if not (np.isfinite(self.scale) and self.scale > 0):
            raise GalparamError(f"{where}: PSF pixel scale {self.scale!r}: give a positive number of arcsec")
        if int(self.oversampling) != self.oversampling or self.oversampling < 1:
            raise GalparamError(f"{where}: oversampling {self.oversampling!r}: give a positive integer")
        image = image / total
        image.setflags(write=False)
        object.__setattr__(self, "array", image)
        object.__setattr__(self, "scale", float(self.scale))
        object.__setattr__(self, "oversampling", int(self.oversampling))
        ny, nx = image.shape
        pad = good_fft_size(int(math.ceil(PAD_FACTOR * max(nx, ny))))
        padded = np.zeros((pad, pad))
        # GalSim puts the pixel (ny//2, nx//2) at the origin (Image.setCenter(0, 0))
        padded[np.ix_((np.arange(ny) - ny // 2) % pad, (np.arange(nx) - nx // 2) % pad)] = image
        self._derived.update(
            pad=pad,
            fft=np.fft.fft2(padded),
            # the true centre relative to that pixel, in PSF pixels (use_true_center=True)
            centre=((nx - 1) / 2 - nx // 2, (ny - 1) / 2 - ny // 2),
        )
        self._derived["stepk"] = self._calculate_stepk()
        self._derived["maxk"] = self._calculate_maxk()

    @property
    def maxk(self) -> float:
        """GalSim's maxk (rad/arcsec)."""
        return self._derived["maxk"]

    @property
    def stepk(self) -> float:
        """GalSim's stepk (rad/arcsec)."""
        return self._derived["stepk"]

    def _calculate_stepk(self) -> float:
        """``SBInterpolatedImage::calculateStepK``: the smallest centred square holding 99.5 % of
        the flux, its half-width and the kernel's range added in quadrature."""
        image = self.array
        ny, nx = image.shape
        cy, cx = ny // 2, nx // 2
        largest = min((nx - 1) // 2, (ny - 1) // 2)
        wanted = (1.0 - FOLDING_THRESHOLD) * image.sum()
        half = 1
        while half <= largest:
            if image[cy - half : cy + half + 1, cx - half : cx + half + 1].sum() >= wanted:
                break
            half += 1
        radius = math.hypot(half + 0.5, QUINTIC_RANGE)
        return math.pi / (radius * self.scale)

    def _calculate_maxk(self) -> float:
        """``SBInterpolatedImage::calculateMaxK``: the last square ring of the padded FFT with a
        value above 1e-3 of the flux (the scan stops after five rings below it)."""
        pad, fft = self._derived["pad"], self._derived["fft"]
        half = pad // 2
        dk = math.pi / half  # rad per PSF pixel
        threshold = (MAXK_THRESHOLD * self.array.sum()) ** 2
        power = fft.real**2 + fft.imag**2

        def value(x, y):
            return power[y % pad, x % pad]

        last_ring = min(int(math.ceil(QUINTIC_KRANGE / dk)), half)
        ring_above, below = 0, 0
        for ring in range(0, last_ring + 1):
            for j in range(0, ring + 1):
                v = value(j, -ring)
                if v <= threshold and j != ring and ring != half:
                    v = value(j, ring)
                if v <= threshold and j > 0:
                    v = value(ring, -j)
                if v <= threshold and ring > 0 and j != half:
                    v = value(ring, j)
                if v > threshold:
                    ring_above, below = ring, 0
                    break
            below += 1
            if below == 5:
                break
        return (ring_above + 1) * dk / self.scale

    def _taps(self, u):
        """Quintic k-interpolation of the padded FFT at ``u`` (rad per PSF pixel): (m, 6) indices and weights."""
        pad = self._derived["pad"]
        position = u * pad / (2 * math.pi)
        index = np.floor(position)[:, None] + np.arange(-2, 4)[None, :]
        return index.astype(np.int64) % pad, quintic(index - position[:, None])

    def kvalue(self, kx, ky) -> np.ndarray:
        """GalSim's transform (flux 1) on the grid ``ky[:, None]``, ``kx[None, :]`` (rad/arcsec): complex."""
        ux = np.asarray(kx, dtype=np.float64) * self.scale
        uy = np.asarray(ky, dtype=np.float64) * self.scale
        cx, cy = self._derived["centre"]
        # from the origin pixel to the true centre, and the x-interpolant's transform (cut where GalSim cuts it)
        phase_x = np.exp(1j * ux * cx) * quintic_transform(ux / (2 * math.pi)) * (np.abs(ux) <= QUINTIC_KRANGE)
        phase_y = np.exp(1j * uy * cy) * quintic_transform(uy / (2 * math.pi)) * (np.abs(uy) <= QUINTIC_KRANGE)
        fft = self._derived["fft"]
        ix, wx = self._taps(ux)
        iy, wy = self._taps(uy)
        along_x = np.zeros((fft.shape[0], len(ux)), dtype=complex)
        for t in range(6):
            along_x += fft[:, ix[:, t]] * wx[:, t][None, :]
        out = np.zeros((len(uy), len(ux)), dtype=complex)
        for t in range(6):
            out += along_x[iy[:, t], :] * wy[:, t][:, None]
        return out * phase_y[:, None] * phase_x[None, :]

    @property
    def half_light_radius(self) -> float:
        """Radius holding half the flux (arcsec), GalSim's ``calculateHLR`` of the interpolated image."""
        if "hlr" not in self._derived:
            self._derived["hlr"] = float(self.to_galsim().calculateHLR())
        return self._derived["hlr"]

    def to_galsim(self):
        """The GalSim profile (``InterpolatedImage`` with its defaults)."""
        import galsim

        return galsim.InterpolatedImage(galsim.Image(np.array(self.array), scale=self.scale))

    def describe(self) -> dict:
        """What a results table and its metadata record of the PSF."""
        return {
            "psf": self.source,
            "psf_oversampling": self.oversampling,
            "psf_includes_pixel": bool(self.includes_pixel),
        }


PSF_FWHM_GRID = np.geomspace(0.2, 3.0, 64)
"""The Moffat FWHMs (arcsec) a PSF image's effective area is matched with."""


def effective_area(images) -> np.ndarray:
    """(Σp)² / Σp² of each image (pixels): the area a PSF spreads a point's light over."""
    flat = np.asarray(images, dtype=np.float64).reshape(len(images), -1)
    return flat.sum(axis=1) ** 2 / (flat**2).sum(axis=1)


def fwhm_by_effective_area(images, reference_images, reference_fwhm) -> np.ndarray:
    """Each image's FWHM: that of the reference (Moffat) PSF with the same effective area, the
    references drawn the same way on the same stamp (arcsec; ``reference_fwhm`` increasing)."""
    return np.interp(effective_area(images), effective_area(reference_images), reference_fwhm)
