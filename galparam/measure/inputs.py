"""Reading what astronomers have: FITS cutouts (``img.fits[2]`` for an HDU), their PSF, noise and
mask files, the pixel scale from the header, and catalogues of many galaxies (a CSV/ECSV list or
GalSim's real-galaxy catalogue). Every problem is one line naming the file and what is wrong.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from galparam.errors import GalparamError
from galparam.evaluate.ood import psf_fwhm_from_images
from galparam.frame import Frame
from galparam.psf import ImagePSF
from galparam.render import KSpaceRenderer, renderer_for
from galparam.stamp import Stamp, segment_mask
from galparam.stamp_model import psf_fwhm_on_stamp

NOISE_OPTIONS = ("sigma", "weight", "variance", "noise_sigma")
"""How a cutout's noise may be given (one of them): a σ map, an inverse-variance map, a variance map, one σ."""

CATALOG_COLUMNS = (
    "image",
    "psf",
    "sigma",
    "weight",
    "variance",
    "noise_sigma",
    "mask",
    "mask_bad",
    "segmap",
    "segment_id",
    "pixel_scale",
    "psf_oversampling",
    "psf_includes_pixel",
    "gain",
    "zeropoint",
    "name",
)
"""The columns a CSV/ECSV catalogue may have (``image`` and ``psf`` required; files relative to it)."""

GALSIM_CATALOG_COLUMNS = ("GAL_FILENAME", "GAL_HDU", "PSF_FILENAME", "PSF_HDU", "PIXEL_SCALE", "NOISE_VARIANCE")
"""GalSim's real-galaxy catalogue columns galparam reads (plus ``IDENT`` for the names)."""

FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz")
"""File name endings read as FITS."""

_HDU = re.compile(r"^(?P<path>.+?)\[(?P<hdu>[^\]]+)\]$")


def split_hdu(spec: str) -> tuple[Path, int | str | None]:
    """``"img.fits[2]"`` → (Path("img.fits"), 2); ``"img.fits[SCI]"`` → (…, "SCI"); no brackets: None."""
    match = _HDU.match(str(spec))
    if not match:
        return Path(spec), None
    hdu = match["hdu"].strip()
    return Path(match["path"]), int(hdu) if hdu.lstrip("-").isdigit() else hdu


def read_fits(spec, *, what: str = "image", relative_to: Path | None = None):
    """The 2-D array and header of a FITS HDU named ``file.fits`` or ``file.fits[HDU]``.

    Without an HDU, the first HDU that holds an image. The file is opened read-only.

    Raises
    ------
    GalparamError
        A missing or unreadable file, an HDU that does not exist, an HDU without a 2-D image.
    """
    from astropy.io import fits

    path, hdu = split_hdu(spec)
    if relative_to is not None and not path.is_absolute():
        path = relative_to / path
    name = f"{path}" + (f"[{hdu}]" if hdu is not None else "")
    if not path.is_file():
        raise GalparamError(f"{what} {name}: no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # astropy's notes on a damaged file: the error below says it in one line
            return _read_hdu(fits, path, hdu, what, name)
    except GalparamError:
        raise
    except (OSError, ValueError, TypeError) as exc:
        raise GalparamError(f"{what} {name}: not a readable FITS file ({exc})") from None


def _read_hdu(fits, path, hdu, what, name):
    with fits.open(path, mode="readonly", memmap=False) as hdus:
        if hdu is None:
            found = [h for h in hdus if getattr(h, "data", None) is not None and np.ndim(h.data) >= 2]
            if not found:
                raise GalparamError(f"{what} {name}: no HDU holds an image")
            chosen = found[0]
        else:
            try:
                chosen = hdus[hdu]
            except (KeyError, IndexError):
                names = [f"{i} ({h.name})" for i, h in enumerate(hdus)]
                raise GalparamError(f"{what} {name}: no HDU {hdu!r}; the file has {', '.join(names)}") from None
        data = chosen.data
        if data is None or np.ndim(data) != 2:
            shape = None if data is None else np.shape(data)
            raise GalparamError(f"{what} {name}: the HDU holds no 2-D image (shape {shape})")
        return np.array(data), chosen.header.copy(), name


def header_pixel_scale(header) -> float | None:
    """Arcsec per pixel from a FITS header: its celestial WCS (CD matrix or CDELT) or PIXSCALE.

    Raises
    ------
    GalparamError
        Pixels that are not square (the two axes' scales differ by more than 0.1 %).
    """
    from astropy.wcs import WCS, FITSFixedWarning
    from astropy.wcs.utils import proj_plane_pixel_scales

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        try:
            wcs = WCS(header, naxis=2)
        except Exception:  # noqa: BLE001 - a header without a usable WCS falls back to PIXSCALE
            wcs = None
    if wcs is not None and wcs.has_celestial:
        scales = proj_plane_pixel_scales(wcs.celestial) * 3600.0
        if abs(scales[0] - scales[1]) > 1e-3 * max(scales):
            raise GalparamError(
                f"the header's pixels are not square ({scales[0]:.5g} × {scales[1]:.5g} arcsec); galparam needs square pixels"
            )
        return float(np.mean(scales))
    for key in ("PIXSCALE", "PIXSCAL1", "SECPIX"):
        if key in header:
            value = float(header[key])
            if value > 0:
                return value
    return None


def parse_bad_values(text: str | None):
    """``--mask-bad``: which mask values are bad: ``nonzero`` (default), ``zero``, or integers ``1,4,8``."""
    text = "nonzero" if text in (None, "") else str(text).strip()
    if text in ("nonzero", "zero"):
        return text
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise GalparamError(
            f"mask_bad {text!r}: accepted nonzero, zero or a comma-separated list of integers"
        ) from None


def good_pixels(mask, bad) -> np.ndarray:
    """True where a mask image marks a pixel good, given which values are bad (:func:`parse_bad_values`)."""
    mask = np.asarray(mask)
    if bad == "nonzero":
        return mask == 0
    if bad == "zero":
        return mask != 0
    return ~np.isin(mask, bad)


@dataclass(frozen=True)
class Cutout:
    """What to read for one galaxy: the files (``file.fits[HDU]``) and settings of a measurement.

    Exactly one of ``sigma``, ``weight``, ``variance`` (files) and ``noise_sigma`` (a number)
    gives the noise. ``pixel_scale`` (arcsec) overrides the header's. ``psf_oversampling`` is how
    many PSF pixels span a data pixel.
    """

    image: str
    psf: str
    sigma: str | None = None
    weight: str | None = None
    variance: str | None = None
    noise_sigma: float | None = None
    mask: str | None = None
    mask_bad: str | None = None
    segmap: str | None = None
    segment_id: int | None = None
    pixel_scale: float | None = None
    psf_oversampling: int = 1
    psf_includes_pixel: bool = True
    gain: float | None = None
    zeropoint: float | None = None
    name: str | None = None
    relative_to: str | None = field(default=None, compare=False)

    def label(self) -> str:
        """The galaxy's name in results: ``name``, else the image's file name (with its HDU)."""
        if self.name:
            return str(self.name)
        path, hdu = split_hdu(self.image)
        return path.name + (f"[{hdu}]" if hdu is not None else "")

    def read(self) -> tuple[Stamp, dict]:
        """The checked :class:`~galparam.stamp.Stamp` and what the results record of its inputs
        (the WCS header, the zero point, the files).

        Raises
        ------
        GalparamError
            Any problem with a file or a value, in one line naming it.
        """
        base = Path(self.relative_to) if self.relative_to else None
        image, header, image_name = read_fits(self.image, what="image", relative_to=base)
        scale = self.pixel_scale
        if scale is None:
            try:
                scale = header_pixel_scale(header)
            except GalparamError as exc:
                raise GalparamError(f"image {image_name}: {exc}") from None
        if scale is None:
            raise GalparamError(
                f"image {image_name}: no pixel scale in its header (CD matrix, CDELT or PIXSCALE); "
                "give it with --pixel-scale (arcsec per pixel)"
            )
        psf_array, _, psf_name = read_fits(self.psf, what="PSF", relative_to=base)
        oversampling = int(self.psf_oversampling)
        if oversampling < 1:
            raise GalparamError(f"psf_oversampling {self.psf_oversampling!r}: give a positive integer")
        psf = ImagePSF(
            psf_array.astype(np.float64),
            float(scale) / oversampling,
            includes_pixel=bool(self.psf_includes_pixel),
            oversampling=oversampling,
            source=psf_name,
        )
        ny, nx = image.shape
        try:
            frame = Frame((ny, nx), float(scale), psf)
        except GalparamError as exc:
            raise GalparamError(f"image {image_name}: {exc}") from None
        noise = {}
        sources = {"image": image_name}
        for kind in ("sigma", "weight", "variance"):
            spec = getattr(self, kind)
            if spec is not None:
                array, _, sources[kind] = read_fits(spec, what=f"{kind} map", relative_to=base)
                noise[kind] = array
        if self.noise_sigma is not None:
            noise["noise_sigma"] = float(self.noise_sigma)
        keep = np.ones(image.shape, dtype=bool)
        for kind, spec in (("mask", self.mask), ("segmap", self.segmap)):
            if spec is None:
                continue
            array, _, sources[kind] = read_fits(spec, what=kind, relative_to=base)
            if array.shape != image.shape:
                raise GalparamError(
                    f"{kind} {sources[kind]}: shape {array.shape} differs from the image's {image.shape}"
                )
            if kind == "mask":
                keep &= good_pixels(array, parse_bad_values(self.mask_bad))
            else:
                keep &= segment_mask(array, self.segment_id, source=sources[kind])
        stamp = Stamp.from_arrays(
            image,
            frame,
            mask=keep,
            gain=self.gain,
            name=self.label(),
            sources={**sources, "mask": sources.get("mask", sources.get("segmap", "mask"))},
            **noise,
        )
        return stamp, {"header": header, "zeropoint": self.zeropoint, "image": image_name, "psf": psf_name}


def _cell(row, column):
    """A catalogue cell as a Python value, None where empty or masked."""
    if column not in row.colnames:
        return None
    value = row[column]
    if np.ma.is_masked(value):
        return None
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str):
        value = value.strip()
        return value or None
    if isinstance(value, (float, np.floating)) and math.isnan(value):
        return None
    return value.item() if hasattr(value, "item") else value


def read_catalog(path, **defaults) -> list[Cutout]:
    """The cutouts a catalogue lists: a CSV/ECSV table with :data:`CATALOG_COLUMNS`, or GalSim's
    real-galaxy catalogue (a FITS table with :data:`GALSIM_CATALOG_COLUMNS`). Files are relative
    to the catalogue; ``defaults`` (e.g. a zero point given on the command line) fill columns the
    catalogue does not have.

    Raises
    ------
    GalparamError
        A missing or unreadable catalogue, one without the required columns, a bad value.
    """
    from astropy.table import Table

    path = Path(path)
    if not path.is_file():
        raise GalparamError(f"catalogue {path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix in (".fits", ".fit", ".fts"):
            table = Table.read(path, format="fits")
        elif suffix == ".ecsv":
            table = Table.read(path, format="ascii.ecsv")
        elif suffix == ".csv":
            table = Table.read(path, format="ascii.csv")
        else:
            raise GalparamError(f"catalogue {path}: accepted .csv, .ecsv or a FITS table (.fits)")
    except GalparamError:
        raise
    except Exception as exc:  # noqa: BLE001 - astropy raises many kinds on a bad table
        raise GalparamError(f"catalogue {path}: not a readable table ({type(exc).__name__}: {exc})") from None
    if len(table) == 0:
        raise GalparamError(f"catalogue {path}: no rows")
    base = str(path.resolve().parent)
    if set(GALSIM_CATALOG_COLUMNS) <= set(table.colnames):
        cutouts = []
        for row in table:
            name = _cell(row, "IDENT")
            variance = float(row["NOISE_VARIANCE"])
            if not variance > 0:
                raise GalparamError(f"catalogue {path}: NOISE_VARIANCE {variance:g} of galaxy {name}: must be positive")
            values = {
                **defaults,
                "image": f"{_cell(row, 'GAL_FILENAME')}[{int(row['GAL_HDU'])}]",
                "psf": f"{_cell(row, 'PSF_FILENAME')}[{int(row['PSF_HDU'])}]",
                "noise_sigma": math.sqrt(variance),
                "pixel_scale": float(row["PIXEL_SCALE"]),
                "name": None if name is None else str(name),
            }
            for kind in ("sigma", "weight", "variance"):
                values.pop(kind, None)
            cutouts.append(Cutout(**values, relative_to=base))
        return cutouts
    missing = {"image", "psf"} - set(table.colnames)
    if missing:
        raise GalparamError(
            f"catalogue {path}: no column {', '.join(sorted(missing))}; a catalogue has columns "
            f"{', '.join(CATALOG_COLUMNS)} (or GalSim's {', '.join(GALSIM_CATALOG_COLUMNS)})"
        )
    unknown = sorted(set(table.colnames) - set(CATALOG_COLUMNS))
    if unknown:
        raise GalparamError(
            f"catalogue {path}: unknown column(s) {', '.join(unknown)}; accepted {', '.join(CATALOG_COLUMNS)}"
        )
    cutouts = []
    for i, row in enumerate(table):
        values = {column: _cell(row, column) for column in CATALOG_COLUMNS}
        values = {key: value for key, value in values.items() if value is not None}
        noise_given = [k for k in NOISE_OPTIONS if k in values]
        merged = {k: v for k, v in defaults.items() if not (k in NOISE_OPTIONS and noise_given)}
        merged.update(values)
        try:
            cutouts.append(_typed(Cutout(**merged, relative_to=base)))
        except (TypeError, ValueError) as exc:
            raise GalparamError(f"catalogue {path}, row {i + 1}: {exc}") from None
    return cutouts


def _typed(cutout: Cutout) -> Cutout:
    """Catalogue cells converted to the types a Cutout holds."""
    numbers = {}
    for key in ("noise_sigma", "pixel_scale", "gain", "zeropoint"):
        value = getattr(cutout, key)
        if value is not None:
            numbers[key] = float(value)
    for key in ("segment_id", "psf_oversampling"):
        value = getattr(cutout, key)
        if value is not None:
            numbers[key] = int(value)
    if isinstance(cutout.psf_includes_pixel, str):
        numbers["psf_includes_pixel"] = cutout.psf_includes_pixel.lower() in ("1", "true", "yes")
    for key in ("image", "psf", "sigma", "weight", "variance", "mask", "segmap", "mask_bad", "name"):
        value = getattr(cutout, key)
        if value is not None and not isinstance(value, str):
            numbers[key] = str(value)
    return replace(cutout, **numbers)


PSF_MATCH_TOLERANCE = 0.05
"""How far (a fraction of its peak) a PSF image may differ from the Moffat profile a network was
trained on, at its own FWHM, before the network refuses the images."""


def network_inputs(specs, geometry, *, pixel_scale=None, psf=None, psf_fwhm=None, trained_on_psf_images=False):
    """FITS cutouts for a network trained on ``geometry``, checked against it.

    Parameters
    ----------
    specs : sequence of str
        ``file.fits`` or ``file.fits[HDU]``, one 2-D cutout each.
    geometry : Geometry
        The network's training geometry (its ``run.json``).
    pixel_scale : float, optional
        Arcsec per pixel, where the headers have no WCS.
    psf : sequence of str, optional
        PSF images at the data's pixel scale, one for all cutouts or one each: each must be the
        training PSF's profile (a Moffat of the geometry's β) within :data:`PSF_MATCH_TOLERANCE`.
    psf_fwhm : float, optional
        Or the PSF's FWHM (arcsec), a Moffat of the geometry's β.
    trained_on_psf_images : bool
        The network was trained through PSF images (a survey-like dataset, ``run.json``'s geometry
        ``psf: images``): any PSF image is taken, only its FWHM is measured.

    Returns
    -------
    images : ndarray (N, S, S)
    psf_images : ndarray (N, S, S) or None
        Unit-flux PSF stamps (from ``psf``), for a network that takes them.
    psf_fwhm : ndarray (N,) or None

    Raises
    ------
    GalparamError
        A cutout whose stamp size, pixel scale or PSF differs from the training geometry, in one
        line naming the file and the mismatch; any problem reading the files.
    """
    side = geometry.stamp_size
    images, names = [], []
    for spec in specs:
        image, header, name = read_fits(spec, what="image")
        if image.shape != geometry.shape:
            raise GalparamError(
                f"image {name}: {image.shape[1]}×{image.shape[0]} pixels; the network was trained on "
                f"{side}×{side} stamps (cut your images to that size, or train on a dataset of yours)"
            )
        scale = pixel_scale if pixel_scale is not None else header_pixel_scale(header)
        if scale is None:
            raise GalparamError(
                f"image {name}: no pixel scale in its header; give it with --pixel-scale "
                f"(the network was trained at {geometry.pixel_scale:g} arcsec per pixel)"
            )
        if abs(scale / geometry.pixel_scale - 1) > 5e-3:
            raise GalparamError(
                f"image {name}: {scale:.4g} arcsec per pixel; the network was trained at {geometry.pixel_scale:g} "
                "(resample the images to its scale, or train on a dataset of yours)"
            )
        if not np.isfinite(image).all():
            raise GalparamError(f"image {name}: holds NaN or infinite values; a network needs every pixel")
        images.append(image.astype(np.float64))
        names.append(name)
    images = np.stack(images)
    if psf is not None and psf_fwhm is not None:
        raise GalparamError("give the PSF as --psf images or as --psf-fwhm, not both")
    if psf_fwhm is not None:
        if not (np.isfinite(psf_fwhm) and psf_fwhm > 0):
            raise GalparamError(f"psf_fwhm {psf_fwhm!r}: give a positive number of arcsec")
        return images, None, np.full(len(images), float(psf_fwhm))
    if psf is None:
        return images, None, None
    psf = list(psf)
    if len(psf) not in (1, len(images)):
        raise GalparamError(f"--psf: {len(psf)} files for {len(images)} images; give one, or one per image")
    stamps = []
    for spec in psf:
        array, _, name = read_fits(spec, what="PSF")
        image_psf = ImagePSF(array.astype(np.float64), geometry.pixel_scale, source=name)
        # onto the network's stamp, centred on its true centre as the training PSF images are
        stamps.append((Frame((side, side), geometry.pixel_scale, image_psf).psf_image(), name))
    if trained_on_psf_images:  # any PSF image is what it was trained with: none is refused
        fwhm = psf_fwhm_on_stamp(np.stack([s for s, _ in stamps]), geometry)
        return _repeated(images, np.stack([s for s, _ in stamps]), fwhm)
    renderer = renderer_for(KSpaceRenderer.NAME, geometry)
    fwhm = psf_fwhm_from_images(np.stack([s for s, _ in stamps]), geometry)
    drawn = renderer.psf_images(fwhm).astype(np.float64)
    for (stamp, name), model, width in zip(stamps, drawn, fwhm, strict=True):
        worst = float(np.abs(stamp - model).max() / model.max())
        if worst > PSF_MATCH_TOLERANCE:
            raise GalparamError(
                f"PSF {name}: not the Moffat β={geometry.psf_beta:g} profile the network was trained with (it "
                f"differs from the closest one, FWHM {width:.3g} arcsec, by {100 * worst:.0f} % of its peak; "
                f"accepted {100 * PSF_MATCH_TOLERANCE:.0f} %); galparam-measure fits any PSF"
            )
    return _repeated(images, np.stack([s for s, _ in stamps]), fwhm)


def _repeated(images, psf_images, fwhm):
    """One PSF given for every image: repeated for each."""
    if len(psf_images) == 1:
        psf_images, fwhm = np.repeat(psf_images, len(images), axis=0), np.repeat(fwhm, len(images))
    return images, psf_images, fwhm
