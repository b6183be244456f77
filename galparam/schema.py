"""The dataset file, declared once: what ``OUT.npz`` holds, key by key, and the parameters drawn.

:data:`DATASET_SCHEMA` lists each array of a dataset in the order it is written: its key, dtype,
whether it has a row per image or one value for the set, its shape, and what it holds. The writer
(:mod:`galparam.simulate`) writes these entries in this order, the reader
(:func:`galparam.data.load_dataset`) checks a file against them, and the fresh-image path
(:mod:`galparam.fresh`) returns the entries a training batch takes.

:class:`Draws` names the columns of the drawn parameters (flux, index, radius, shear, PSF FWHM,
noise), so code reads ``draws.sersic_n`` and ``draws.sigma`` instead of column numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from galparam.parameters import LABEL_NAMES

PER_IMAGE = "image"
"""A row per image."""
PER_IMAGE_OR_SET = "image or set"
"""A row per image, or one row for every image (the PSF image where the PSF is fixed)."""
PER_SET = "set"
"""One value for the whole set."""


@dataclass(frozen=True)
class Entry:
    """One array of a dataset file.

    Attributes
    ----------
    key : str
        The npz key.
    dtype : str
        ``float32``, ``int32``, ``int64``, or ``str`` (text).
    per : str
        :data:`PER_IMAGE`, :data:`PER_IMAGE_OR_SET` or :data:`PER_SET`.
    shape : tuple of str or int
        The shape after the image axis: ``"stamp"`` for the stamp's sides, numbers as they are.
    required : bool
        A file without it is not a galparam dataset.
    batch : bool
        A training batch may take it (and fresh images are drawn with it).
    description : str
        What it holds (units included).
    """

    key: str
    dtype: str
    per: str
    shape: tuple
    required: bool
    batch: bool
    description: str

    def row_shape(self, stamp_size: int) -> tuple:
        """The shape of one row for a stamp of ``stamp_size`` pixels a side."""
        return tuple(part for dim in self.shape for part in ((stamp_size, stamp_size) if dim == "stamp" else (dim,)))


DATASET_SCHEMA = (
    Entry("img", "float32", PER_IMAGE, ("stamp",), True, True, "noisy images, counts"),
    Entry("img_nonoise", "float32", PER_IMAGE, ("stamp",), True, True, "noiseless images, counts"),
    Entry("psf_img", "float32", PER_IMAGE_OR_SET, ("stamp",), True, True, "unit-flux PSF images (one where fixed)"),
    Entry("label", "float32", PER_IMAGE, (len(LABEL_NAMES),), True, True, "the five labels, LABEL_NAMES order"),
    Entry("label_names", "str", PER_SET, (len(LABEL_NAMES),), True, False, "the labels' names"),
    Entry("snr", "float32", PER_IMAGE, (), True, False, "sqrt(Σ noiseless²) / σ"),
    Entry("sigma", "float32", PER_IMAGE, (), True, False, "Gaussian noise per pixel, counts"),
    Entry("psf_fwhm", "float32", PER_IMAGE, (), True, False, "Moffat FWHM of the PSF, arcsec"),
    Entry("centre", "float32", PER_IMAGE, (2,), False, False, "galaxy centre (dx, dy) from the stamp's, pixels"),
    Entry("sky", "float32", PER_IMAGE, (), False, False, "constant sky level, counts per pixel"),
    Entry("psf_index", "int32", PER_IMAGE, (), False, False, "which PSF image of the spec's file drew it"),
    Entry("draws", "int32", PER_IMAGE, (), False, False, "candidates drawn until one was in the SNR window"),
    Entry("spec", "str", PER_SET, (), True, False, "the resolved dataset spec (YAML)"),
    Entry("renderer", "str", PER_SET, (), False, False, "the renderer and its tables' settings (JSON)"),
    Entry("spec_name", "str", PER_SET, (), False, False, "the spec's name"),
    Entry("galparam_version", "str", PER_SET, (), False, False, "the galparam that wrote it"),
    Entry("seed", "int64", PER_SET, (), False, False, "the spec's seed"),
)
"""Every array of a dataset file, in the order it is written."""

ENTRIES = {entry.key: entry for entry in DATASET_SCHEMA}
STAMP_MODEL_KEYS = ("centre", "sky", "psf_index")
"""The entries a dataset drawn with the stamp model has (and no other)."""
REQUIRED_KEYS = tuple(e.key for e in DATASET_SCHEMA if e.required)
BATCH_KEYS = tuple(e.key for e in DATASET_SCHEMA if e.batch)
"""The arrays a training batch may take (what fresh images are drawn with)."""

DRAW_COLUMNS = (*LABEL_NAMES, "psf_fwhm", "sigma")
"""The columns of the drawn parameters, in :class:`Draws`' order."""

STAMP_COLUMNS = ("dx", "dy", "sky", "psf_index")
"""The stamp model's drawn columns (:attr:`Draws.stamp`): centre offsets (pixels), sky (counts per
pixel), the PSF image's index in the spec's file."""


class Draws:
    """Drawn parameters, a row per candidate or image, with named columns (:data:`DRAW_COLUMNS`).

    Parameters
    ----------
    array : array_like of shape (N, 7)
        float64; the columns in :data:`DRAW_COLUMNS` order (what a simulation part stores as ``params``).
    stamp : array_like of shape (N, 4), optional
        The stamp model's columns, :data:`STAMP_COLUMNS` (a part's ``stamp``); None: centred
        galaxies, no sky, the Moffat.
    """

    def __init__(self, array, stamp=None):
        array = np.asarray(array, dtype=np.float64)
        if array.ndim != 2 or array.shape[1] != len(DRAW_COLUMNS):
            raise ValueError(f"draws of shape {array.shape}: expected (N, {len(DRAW_COLUMNS)})")
        if stamp is not None:
            stamp = np.asarray(stamp, dtype=np.float64)
            if stamp.shape != (len(array), len(STAMP_COLUMNS)):
                raise ValueError(f"stamp draws of shape {stamp.shape}: expected ({len(array)}, {len(STAMP_COLUMNS)})")
        self.array = array
        self.stamp = stamp

    @classmethod
    def from_columns(cls, **columns) -> Draws:
        """Draws from one array per column name (every name of :data:`DRAW_COLUMNS`)."""
        return cls(np.stack([np.asarray(columns[name], dtype=np.float64) for name in DRAW_COLUMNS], axis=1))

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, rows) -> Draws:
        return Draws(self.array[rows], None if self.stamp is None else self.stamp[rows])

    def stamp_column(self, name: str) -> np.ndarray:
        """The stamp model's column ``name`` (:data:`STAMP_COLUMNS`); zeros where there is none."""
        if self.stamp is None:
            return np.zeros(len(self))
        return self.stamp[:, STAMP_COLUMNS.index(name)]

    def column(self, name: str) -> np.ndarray:
        """The column ``name`` (one of :data:`DRAW_COLUMNS`)."""
        return self.array[:, DRAW_COLUMNS.index(name)]

    flux = property(lambda self: self.column("flux"), doc="Total flux, counts.")
    sersic_n = property(lambda self: self.column("sersic_n"), doc="Sérsic index.")
    hlr = property(lambda self: self.column("hlr"), doc="Half-light radius, arcsec.")
    g1 = property(lambda self: self.column("g1"), doc="Reduced shear, first component.")
    g2 = property(lambda self: self.column("g2"), doc="Reduced shear, second component.")
    psf_fwhm = property(lambda self: self.column("psf_fwhm"), doc="PSF FWHM, arcsec.")
    sigma = property(lambda self: self.column("sigma"), doc="Gaussian noise per pixel, counts.")

    @property
    def theta(self) -> np.ndarray:
        """(N, 8): the stamp model's parameters (:data:`galparam.kspace.stamps.STAMP_PARAMETERS`)."""
        return np.column_stack([self.labels, *(self.stamp_column(name) for name in STAMP_COLUMNS[:3])])

    @property
    def labels(self) -> np.ndarray:
        """(N, 5): the galaxies' parameters, :data:`~galparam.parameters.LABEL_NAMES` order."""
        return self.array[:, : len(LABEL_NAMES)]

    @property
    def shear(self) -> np.ndarray:
        """|g| of each row."""
        return np.hypot(self.g1, self.g2)
