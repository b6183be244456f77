"""A dataset spec's PSF images: ``psf: {images: FILE}``, each galaxy drawn with one of the file's PSFs.

``images`` names one file or a list of them (their PSFs in order). A file is FITS: every HDU holding a 2-D image is one PSF, and an HDU holding a 3-D cube gives one
PSF a plane (PSFEx's and TinyTim's outputs, or a stack of stars). Each PSF is at the data's pixel
scale, or oversampled by an integer factor (``oversampling``), and is by default the effective PSF,
the pixel response included (``includes_pixel: true``), as :class:`~galparam.psf.ImagePSF` takes
it. Paths are relative to the spec's folder; the resolved spec records them as written with the
files' SHA-256 (of their bytes in order), so a dataset says which PSFs drew it and a changed file is
noticed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from galparam.errors import GalparamError, SpecError
from galparam.psf import ImagePSF

RECORDED_SUFFIX = " (recorded spec)"
"""What :func:`galparam.data.load_dataset` appends to a dataset's path for its recorded spec."""

PSF_KEYS = {
    "images": "a FITS file of PSF images (every 2-D HDU, or each plane of a cube), or a list of them",
    "oversampling": "PSF pixels a data pixel spans along each axis (default 1)",
    "includes_pixel": "whether the images are effective PSFs, the pixel response included (default true)",
    "sha256": "the file's SHA-256 (written in resolved specs; checked when given)",
    "count": "how many PSFs the file holds (written in resolved specs)",
}
"""The keys of a spec's ``psf`` mapping."""


@dataclass(frozen=True)
class PSFImagesSpec:
    """Where a spec's PSF images come from, checked (see the module docstring).

    Attributes
    ----------
    images : str or tuple of str
        The path(s) as the spec gives them.
    paths : tuple of Path
        The files they resolve to.
    sha256 : str
        The digest of the files' bytes, in order.
    count : int
        How many PSFs they hold.
    oversampling : int
    includes_pixel : bool
    """

    images: str | tuple
    paths: tuple = field(compare=False)
    sha256: str
    count: int
    oversampling: int = 1
    includes_pixel: bool = True

    def to_dict(self) -> dict:
        """What a resolved spec records (the path as written, the digest)."""
        return {
            "images": self.images if isinstance(self.images, str) else list(self.images),
            "oversampling": self.oversampling,
            "includes_pixel": self.includes_pixel,
            "sha256": self.sha256,
            "count": self.count,
        }

    def require(self, what: str, where) -> None:
        """Refuse ``what`` (e.g. "bounds") of ``where`` (a dataset) in one line when the files
        that drew it are not here, or changed.

        Raises
        ------
        GalparamError
        """
        if not self.available:
            names = ", ".join(str(path) for path in self.paths)
            raise GalparamError(f"{where}: {what} need the PSF images that drew it, {names}, which are not here")

    @property
    def available(self) -> bool:
        """Whether every file is here, unchanged (a dataset's recorded spec may name files elsewhere)."""
        return all(path.is_file() for path in self.paths) and _digest(self.paths) == self.sha256

    def read(self, pixel_scale: float) -> tuple[ImagePSF, ...]:
        """The PSFs, in file order, for data of ``pixel_scale`` arcsec.

        Raises
        ------
        SpecError
            An unreadable file, one whose digest changed, no image in it, a bad image.
        """
        missing = [str(path) for path in self.paths if not path.is_file()]
        if missing:
            raise SpecError(f"psf.images {', '.join(missing)}: no such file (the PSF images this spec draws with)")
        if _digest(self.paths) != self.sha256:
            names = ", ".join(str(path) for path in self.paths)
            raise SpecError(f"{names}: the PSF images changed since the spec recorded them (SHA-256 differs)")
        scale = pixel_scale / self.oversampling
        return tuple(
            _image_psf(array, scale, self.includes_pixel, self.oversampling, f"{path} PSF {k}")
            for path in self.paths
            for k, array in enumerate(read_psf_arrays(path))
        )


def _image_psf(array, scale, includes_pixel, oversampling, source) -> ImagePSF:
    """An :class:`~galparam.psf.ImagePSF`, its problems as a one-line :class:`SpecError` naming it."""
    try:
        return ImagePSF(array, scale, includes_pixel, oversampling, source)
    except GalparamError as exc:
        raise SpecError(str(exc)) from None


def _digest(paths) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def read_psf_arrays(path: Path) -> list[np.ndarray]:
    """Every PSF image of a FITS file (2-D HDUs, and each plane of 3-D ones), float64.

    Raises
    ------
    SpecError
        A missing or unreadable file, or one without any image.
    """
    from astropy.io import fits

    if not path.is_file():
        raise SpecError(f"psf.images {path}: no such file")
    try:
        with fits.open(path, memmap=False) as hdus:
            arrays = []
            for hdu in hdus:
                data = getattr(hdu, "data", None)
                if data is None or not hasattr(data, "ndim") or data.dtype.fields is not None:
                    continue
                if data.ndim == 2:
                    arrays.append(np.array(data, dtype=np.float64))
                elif data.ndim == 3:
                    arrays.extend(np.array(plane, dtype=np.float64) for plane in data)
    except (OSError, ValueError) as exc:
        raise SpecError(f"psf.images {path}: not a readable FITS file ({exc})") from None
    if not arrays:
        raise SpecError(f"psf.images {path}: no 2-D image or 3-D cube in any HDU")
    return arrays


def file_names(images) -> list[str] | None:
    """``psf.images`` as a list of file names (one name or a list of them), or None if it is neither."""
    names = [images] if isinstance(images, str) else images
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        return None
    return names


def parse_psf_images(raw, source: str, *, recorded: bool = False) -> PSFImagesSpec:
    """A spec's ``psf`` mapping, checked: the file exists and is read once (its digest recorded).

    A ``recorded`` spec (the one a dataset holds, with its ``sha256``) is accepted without its file:
    the dataset holds its PSF images; only drawing more galaxies needs the file again.

    Raises
    ------
    SpecError
        Not a mapping, an unknown key, a bad value, a missing file, or a digest that differs.
    """
    where = f"{source}: psf"
    if not isinstance(raw, dict) or "images" not in raw:
        raise SpecError(f"{where}: {raw!r} is not {{images: FILE, oversampling: 1, includes_pixel: true}}")
    unknown = sorted(set(raw) - set(PSF_KEYS))
    if unknown:
        raise SpecError(f"{where}: unknown key {unknown[0]!r}; accepted: {', '.join(PSF_KEYS)}")
    images = raw["images"]
    names = file_names(images)
    if not names:
        raise SpecError(f"{where}.images: {images!r} is not a file name or a list of them")
    oversampling = raw.get("oversampling", 1)
    if isinstance(oversampling, bool) or not isinstance(oversampling, int) or not 1 <= oversampling <= 16:
        raise SpecError(f"{where}.oversampling: {oversampling!r}; accepted: a whole number 1 to 16")
    includes_pixel = raw.get("includes_pixel", True)
    if not isinstance(includes_pixel, bool):
        raise SpecError(f"{where}.includes_pixel: {includes_pixel!r}; accepted: true or false")
    base = Path(source.removesuffix(RECORDED_SUFFIX)).parent
    paths = tuple(Path(n) if Path(n).is_absolute() else base / n for n in names)
    images = images if isinstance(images, str) else tuple(images)
    given = raw.get("sha256")
    count = raw.get("count")
    if recorded and isinstance(given, str) and isinstance(count, int):
        # a dataset's spec: its files are looked for beside it, then from here; if they are not
        # found, or changed, the dataset still loads (it holds its PSF images); drawing more says so
        for folder in (base, Path(".")):
            found = tuple(Path(n) if Path(n).is_absolute() else folder / n for n in names)
            if all(p.is_file() for p in found) and _digest(found) == given:
                return PSFImagesSpec(images, found, given, count, oversampling, includes_pixel)
        return PSFImagesSpec(images, paths, given, count, oversampling, includes_pixel)
    count = 0
    for path in paths:  # each image checked now, before anything is drawn or written
        for k, array in enumerate(read_psf_arrays(path)):
            _image_psf(array, 1.0, includes_pixel, oversampling, f"psf.images {path} PSF {k}")
            count += 1
    digest = _digest(paths)
    if given is not None and given != digest:
        raise SpecError(f"{where}.images: the SHA-256 of {', '.join(names)} is not the spec's sha256 (changed)")
    return PSFImagesSpec(images, paths, digest, count, oversampling, includes_pixel)
