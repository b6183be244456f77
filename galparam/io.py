"""Safe files: atomic writes, reproducible npz archives, JSON.

Every file galparam writes goes to a temporary name in the destination folder and is renamed into
place, so a reader never sees half a file. npz archives are written with a fixed timestamp and no
compression, so the same arrays always give the same bytes; arrays can be streamed in pieces, so a
dataset larger than memory can be assembled from its parts.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


@contextlib.contextmanager
def atomic_path(path, *, suffix: str | None = None):
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def complete_lines(path) -> list[str]:
    """The complete lines of a text file written line by line (a resumable CSV): a torn last
    line, left by an interrupted write, is cut off the file first. No file: no lines."""
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    if not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]
        with open(path, "r+b") as f:
            f.truncate(len(data))
    return data.decode().splitlines()


def write_json_atomic(path, obj) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


class NpzWriter:
    """Write an npz archive entry by entry, each entry optionally in pieces.

    Use :meth:`add` for a whole array, or :meth:`begin` / :meth:`write` to stream an array whose
    pieces are stacked along the first axis. Entries are stored uncompressed with a fixed
    timestamp: the same arrays give the same bytes, and ``numpy.load(..., allow_pickle=False)``
    reads the file.
    """

    def __init__(self, path):
        self._zip = zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True)
        self._entry = None
        self._remaining = 0
        self._row_shape = None
        self._dtype = None

    def add(self, name: str, array) -> None:
        array = np.asarray(array)
        if array.dtype == object:
            raise TypeError(f"{name}: object arrays cannot be stored without pickling")
        self.begin(name, array.shape, array.dtype)
        if array.ndim == 0:
            self._write_bytes(np.ascontiguousarray(array).tobytes(), 1)
            self._close_entry()
        else:
            self.write(array)

    def begin(self, name: str, shape, dtype) -> None:
        """Start entry ``name`` of the given total ``shape``; fill it with :meth:`write`."""
        if self._entry is not None:
            raise RuntimeError("the previous entry is not complete")
        dtype = np.dtype(dtype)
        info = zipfile.ZipInfo(name + ".npy", date_time=_ZIP_DATE)
        info.compress_type = zipfile.ZIP_STORED
        info.external_attr = 0o600 << 16
        self._entry = self._zip.open(info, "w", force_zip64=True)
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)}
        if _fits_v1(header):
            np.lib.format.write_array_header_1_0(self._entry, header)
        else:
            np.lib.format.write_array_header_2_0(self._entry, header)
        self._dtype = dtype
        self._row_shape = tuple(shape[1:])
        self._remaining = int(shape[0]) if len(shape) else 1

    def write(self, piece) -> None:
        """Append rows to the open entry (cast to its dtype; shapes checked)."""
        piece = np.ascontiguousarray(piece, dtype=self._dtype)
        if piece.shape[1:] != self._row_shape:
            raise ValueError(f"piece rows {piece.shape[1:]} do not match the entry's {self._row_shape}")
        self._write_bytes(piece.tobytes(), len(piece))
        if self._remaining == 0:
            self._close_entry()

    def _write_bytes(self, data: bytes, rows: int) -> None:
        if rows > self._remaining:
            raise ValueError("more rows written than the entry's shape holds")
        self._entry.write(data)
        self._remaining -= rows

    def _close_entry(self) -> None:
        self._entry.close()
        self._entry = None

    def close(self) -> None:
        if self._entry is not None:
            if self._remaining:
                raise RuntimeError(f"entry incomplete: {self._remaining} rows missing")
            self._close_entry()
        self._zip.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self._zip.close()


def _fits_v1(header) -> bool:
    # The 1.0 header stores its length in 2 bytes; fall back to 2.0 only when it must.
    return len(repr(header)) < 60000


def write_npz_atomic(path, arrays: dict) -> None:
    """Write a dict of arrays as a reproducible npz file, atomically."""
    with atomic_path(path, suffix=".npz") as tmp, NpzWriter(tmp) as writer:
        for name, array in arrays.items():
            writer.add(name, array)
