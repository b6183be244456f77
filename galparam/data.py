"""Loading and checking datasets; the deterministic train/validation split; scalers.

:func:`load_dataset` either returns a dataset whose arrays are what the file's schema
(:data:`galparam.schema.DATASET_SCHEMA`) declares (keys, shapes, dtypes, finite values, label
ranges) or raises one :class:`DatasetError` that names the file and the problem. Serving batches
of a dataset to Keras is :mod:`galparam.pipelines`' job.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from galparam.errors import DatasetError, GalparamError
from galparam.io import write_json_atomic
from galparam.parameters import LABEL_NAMES, PARAMETERS, first_invalid
from galparam.psf_file import RECORDED_SUFFIX
from galparam.schema import DATASET_SCHEMA, ENTRIES, PER_IMAGE, PER_IMAGE_OR_SET, REQUIRED_KEYS, STAMP_MODEL_KEYS
from galparam.specs import DatasetSpec, spec_from_yaml_text

_CHECKED = tuple(e for e in DATASET_SCHEMA if e.required and e.dtype != "str")
"""The arrays whose shape, dtype and values a dataset is checked for."""
_STAMPS = tuple(e.key for e in DATASET_SCHEMA if "stamp" in e.shape)
"""The image arrays (memory-mapped with ``mmap``)."""


@dataclass
class Dataset:
    """A checked galparam dataset.

    Attributes
    ----------
    img, img_nonoise : ndarray of shape (N, S, S), float32
        Noisy and noiseless images in counts.
    psf_img : ndarray of shape (N, S, S) or (1, S, S), float32
        The PSF of each image, or the one PSF of all images.
    label : ndarray of shape (N, 5), float32
        Columns :data:`galparam.parameters.LABEL_NAMES`.
    snr, sigma, psf_fwhm : ndarray of shape (N,), float32
    spec : DatasetSpec
        The spec that made the dataset.
    path : Path
    extra : dict
        Any further arrays in the file (``draws``, provenance).
    """

    img: np.ndarray
    img_nonoise: np.ndarray
    psf_img: np.ndarray
    label: np.ndarray
    snr: np.ndarray
    sigma: np.ndarray
    psf_fwhm: np.ndarray
    spec: DatasetSpec
    path: Path
    extra: dict = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.label)

    @property
    def psf_varies(self) -> bool:
        return len(self.psf_img) > 1

    def psf_images(self, indices) -> np.ndarray:
        """The PSF images of the images at ``indices`` (an index array or a slice); the dataset's
        one PSF image, shape (1, S, S), where the PSF does not vary (models broadcast it)."""
        return self.psf_img[indices] if self.psf_varies else self.psf_img

    def split(self, validation_fraction: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Indices of the training and validation images (see :func:`split_indices`)."""
        fraction = self.spec.validation_fraction if validation_fraction is None else validation_fraction
        return split_indices(len(self), fraction)


def split_indices(n_images: int, validation_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic split: the first images train, the last ``validation_fraction`` validate.

    Samples are independent draws, so a contiguous tail is as random as a shuffled one, and it is
    the same for every user and tool.

    Returns
    -------
    train, validation : ndarray of int64
    """
    if not 0.0 <= validation_fraction < 1.0:
        raise GalparamError(f"validation fraction {validation_fraction}: accepted range [0, 1)")
    n_val = int(round(n_images * validation_fraction))
    n_train = n_images - n_val
    return np.arange(n_train), np.arange(n_train, n_images)


def _fail(path, message):
    raise DatasetError(f"{path}: {message}")


def _memmap_member(path: Path, zf: zipfile.ZipFile, name: str) -> np.ndarray | None:
    """A read-only memory map of an uncompressed ``.npy`` member, or None if it cannot be mapped."""
    info = zf.getinfo(name + ".npy")
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
        if local[:4] != b"PK\x03\x04":
            return None
        start = (
            info.header_offset + 30 + int.from_bytes(local[26:28], "little") + int.from_bytes(local[28:30], "little")
        )
        f.seek(start)
        version = np.lib.format.read_magic(f)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in read_header:
            return None
        shape, fortran, dtype = read_header[version](f)
        offset = f.tell()
    if fortran or dtype.hasobject or not shape or 0 in shape:
        return None
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)


def _all_finite(array: np.ndarray, rows: int = 4096) -> int:
    """Count the non-finite entries, a block of rows at a time.

    A memory-mapped array is scanned through short-lived maps of each block, so the scan does not
    leave the whole file mapped into the process (its resident size stays that of one block).
    """
    count = 0
    for start in range(0, max(len(array), 1), rows):
        if isinstance(array, np.memmap) and array.ndim and len(array):
            row_bytes = array.itemsize * int(np.prod(array.shape[1:], dtype=np.int64))
            n = min(rows, len(array) - start)
            block = np.memmap(
                array.filename,
                dtype=array.dtype,
                mode="r",
                offset=array.offset + start * row_bytes,
                shape=(n, *array.shape[1:]),
            )
            count += int(np.count_nonzero(~np.isfinite(block)))
            del block
        else:
            count += int(np.count_nonzero(~np.isfinite(array[start : start + rows])))
    return count


def load_dataset(path, *, mmap: bool = False) -> Dataset:
    """Load a dataset written by ``galparam-simulate`` and check it.

    Parameters
    ----------
    path : path-like
        An ``.npz`` dataset.
    mmap : bool
        Memory-map the image arrays instead of reading them (a 200,000-image dataset holds
        6.6 GB of images; mapped, they are read from disk as batches need them).

    Returns
    -------
    Dataset

    Raises
    ------
    DatasetError
        If the file is missing, not an npz, truncated, lacks a key, has a wrong shape or dtype,
        holds NaN or infinite values, or labels outside their physical ranges.
    """
    path = Path(path)
    if not path.exists():
        _fail(path, "no such file")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in REQUIRED_KEYS if k not in z.files]
            if missing:
                _fail(
                    path, f"not a galparam dataset: missing {', '.join(missing)} (required: {', '.join(REQUIRED_KEYS)})"
                )
            images = set(_STAMPS) if mmap else set()
            arrays = {}
            for k in z.files:
                mapped = _memmap_member(path, z.zip, k) if k in images else None
                arrays[k] = z[k] if mapped is None else mapped
    except DatasetError:
        raise
    except (zipfile.BadZipFile, EOFError, ValueError, OSError, KeyError) as exc:
        _fail(path, f"not a readable npz dataset, perhaps truncated ({type(exc).__name__}: {exc})")

    try:
        spec = spec_from_yaml_text(str(arrays["spec"]), source=f"{path}{RECORDED_SUFFIX}")
    except GalparamError as exc:
        _fail(path, f"its recorded spec is invalid: {exc}")

    missing = [key for key in STAMP_MODEL_KEYS if key not in arrays] if spec.stamp_model else []
    if missing:
        _fail(path, f"drawn with PSF images or centre and sky priors, but missing {', '.join(missing)}")
    img = arrays["img"]
    if img.ndim != 3 or img.shape[1] != img.shape[2]:
        _fail(path, f"img has shape {img.shape}; expected (N, S, S)")
    n, s = img.shape[0], img.shape[1]
    for entry in _CHECKED + tuple(ENTRIES[key] for key in STAMP_MODEL_KEYS if key in arrays):
        array, row = arrays[entry.key], entry.row_shape(s)
        if entry.per == PER_IMAGE and array.shape != (n, *row):
            _fail(path, f"{entry.key} has shape {array.shape}; expected {(n, *row)}")
        if entry.per == PER_IMAGE_OR_SET and (
            array.ndim != 1 + len(row) or array.shape[0] not in (1, n) or array.shape[1:] != row
        ):
            _fail(path, f"{entry.key} has shape {array.shape}; expected {(1, *row)} or {(n, *row)}")
        if array.dtype != np.dtype(entry.dtype):
            _fail(path, f"{entry.key} has dtype {array.dtype}; expected {entry.dtype}")
        bad = _all_finite(array)
        if bad:
            _fail(path, f"{entry.key} holds {bad} NaN or infinite values")
    if tuple(str(v) for v in arrays["label_names"]) != LABEL_NAMES:
        _fail(path, f"label_names are {list(arrays['label_names'])}; expected {list(LABEL_NAMES)}")

    label = arrays["label"]
    columns = {name: label[:, j] for j, name in enumerate(LABEL_NAMES)}
    columns.update(g=label[:, 3:5], sigma=arrays["sigma"], psf_fwhm=arrays["psf_fwhm"])
    for name, values in columns.items():
        first = first_invalid(name, values)
        if first is not None:
            accepted = "|g| < 1" if name == "g" else PARAMETERS[name].range_text
            _fail(path, f"{name} of image {first} is out of range (accepted: {accepted})")

    extra = {k: v for k, v in arrays.items() if k not in REQUIRED_KEYS}
    return Dataset(
        img=img,
        img_nonoise=arrays["img_nonoise"],
        psf_img=arrays["psf_img"],
        label=label,
        snr=arrays["snr"],
        sigma=arrays["sigma"],
        psf_fwhm=arrays["psf_fwhm"],
        spec=spec,
        path=path,
        extra=extra,
    )


def load_metadata(path):
    """The per-image metadata table written beside a dataset (``OUT.csv`` for ``OUT.npz``)."""
    csv = Path(path).with_suffix(".csv")
    if not csv.exists():
        raise DatasetError(f"{csv}: no metadata table beside the dataset")
    return pd.read_csv(csv)


class MinMaxScaler:
    """Per-column min-max scaling to ``feature_range``, stored as JSON (never pickled).

    Fit it on the training split only. The Xception regressor uses (-1, 1) for the labels, the
    autoencoder (0, 1) for the labels and the noiseless images.

    Parameters
    ----------
    feature_range : (float, float)
        The target interval.
    names : sequence of str, optional
        Column names, recorded in the JSON (e.g. :data:`galparam.parameters.LABEL_NAMES`).
    """

    def __init__(self, feature_range=(-1.0, 1.0), names=None):
        low, high = (float(v) for v in feature_range)
        if not low < high:
            raise GalparamError(f"feature_range {feature_range}: expected (low, high) with low < high")
        self.feature_range = (low, high)
        self.names = list(names) if names is not None else None

    def fit(self, values) -> MinMaxScaler:
        """Learn each column's minimum and maximum (a scalar for images: pass ``values.ravel()[:, None]``)."""
        values = np.asarray(values, dtype=np.float64)
        if values.ndim != 2 or not len(values):
            raise GalparamError(f"scaler: expected a non-empty (N, columns) array, got shape {values.shape}")
        if not np.isfinite(values).all():
            raise GalparamError("scaler: the values hold NaN or infinite entries")
        self.data_min_ = values.min(axis=0)
        self.data_max_ = values.max(axis=0)
        return self

    def _scale(self):
        span = np.where(self.data_max_ > self.data_min_, self.data_max_ - self.data_min_, 1.0)
        return (self.feature_range[1] - self.feature_range[0]) / span

    def transform(self, values) -> np.ndarray:
        values = np.asarray(values, dtype=np.float64)
        return ((values - self.data_min_) * self._scale() + self.feature_range[0]).astype(np.float32)

    def affine(self) -> tuple[np.ndarray, np.ndarray]:
        """(scale, offset) with ``transform(v) == v * scale + offset`` (for a Keras ``Rescaling`` layer)."""
        scale = self._scale()
        return scale, self.feature_range[0] - self.data_min_ * scale

    def inverse_transform(self, scaled) -> np.ndarray:
        scaled = np.asarray(scaled, dtype=np.float64)
        return (scaled - self.feature_range[0]) / self._scale() + self.data_min_

    def to_dict(self) -> dict:
        return {
            "kind": "minmax",
            "feature_range": list(self.feature_range),
            "names": self.names,
            "data_min": self.data_min_.tolist(),
            "data_max": self.data_max_.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> MinMaxScaler:
        try:
            if d["kind"] != "minmax":
                raise GalparamError(f"scaler kind {d['kind']!r}: expected 'minmax'")
            scaler = cls(d["feature_range"], d.get("names"))
            scaler.data_min_ = np.asarray(d["data_min"], dtype=np.float64)
            scaler.data_max_ = np.asarray(d["data_max"], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as exc:
            raise GalparamError(f"not a galparam scaler ({type(exc).__name__}: {exc})") from None
        return scaler

    def save(self, path) -> None:
        """Write the scaler as JSON, atomically."""
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path) -> MinMaxScaler:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except FileNotFoundError:
            raise GalparamError(f"{path}: no such scaler file") from None
        except ValueError as exc:
            raise GalparamError(f"{path}: not JSON ({exc})") from None


def column_range(array, indices, rows: int = 4096) -> tuple[float, float]:
    """Smallest and largest value of ``array[indices]``, read a block of rows at a time."""
    indices = np.asarray(indices)
    low, high = np.inf, -np.inf
    for start in range(0, len(indices), rows):
        block = array[np.sort(indices[start : start + rows])]
        low, high = min(low, float(block.min())), max(high, float(block.max()))
    return low, high


def spread_sample(indices, size: int) -> np.ndarray:
    """At most ``size`` of ``indices``, evenly spaced (a deterministic sample for adapting layers)."""
    indices = np.asarray(indices)
    if len(indices) <= size:
        return indices
    return indices[np.linspace(0, len(indices) - 1, size).round().astype(np.int64)]


def with_channel(images) -> np.ndarray:
    """(N, S, S) images → (N, S, S, 1) float32, the layout the models take."""
    images = np.asarray(images, dtype=np.float32)
    return images[..., None] if images.ndim == 3 else images
