"""The table cache on disk: one file per GalSim version, geometry and table settings, found
again without GalSim (a machine that only draws), rebuilt with one notice where it cannot be trusted."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import zipfile
from functools import lru_cache
from pathlib import Path

import numpy as np

from galparam.errors import GalparamError
from galparam.geometry import DEFAULT_GEOMETRY, Geometry
from galparam.io import atomic_path
from galparam.kspace.build import build_tables
from galparam.kspace.tables import N_RANGE, N_STEP, S_MAX, S_STEP, Tables

FORMAT_VERSION = 2
"""Bumped when the tables' content or layout changes: older cache files are then rebuilt."""

CACHE_ENV = "GALPARAM_CACHE"
"""Environment variable naming the cache folder (default ``~/.cache/galparam``)."""


def cache_dir() -> Path:
    """Where built tables are kept between runs."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "galparam")


@lru_cache(maxsize=1)
def galsim_version() -> str | None:
    """The installed GalSim's version, or None where GalSim is not installed (drawing then needs a
    table file made elsewhere: :func:`load_tables`)."""
    try:
        import galsim
    except ImportError:
        return None
    return galsim.__version__


def table_settings(geometry: Geometry = DEFAULT_GEOMETRY, *, galsim: str | None = None, s_max: float = S_MAX) -> dict:
    """Everything a table file depends on: GalSim's version, the geometry and the table settings.

    ``galsim`` defaults to the installed version; where GalSim is not installed it is the version
    that made the cached tables of this geometry (see :func:`resolve_table_settings`). Tables of
    another reach than :data:`~galparam.kspace.tables.S_MAX` (``s_max``) carry no grid-size rule.
    """
    if galsim is None:
        return table_file(geometry, s_max=s_max)[0]
    return {
        "format": FORMAT_VERSION,
        "galsim": galsim,
        "stamp": int(geometry.stamp_size),
        "pixel_scale": float(geometry.pixel_scale),
        "psf_beta": float(geometry.psf_beta),
        "n_range": list(N_RANGE),
        "n_step": N_STEP,
        "s_max": float(s_max),
        "s_step": S_STEP,
    }


def table_file(geometry: Geometry = DEFAULT_GEOMETRY, *, folder=None, s_max: float = S_MAX) -> tuple[dict, Path]:
    """The settings and the file of the tables :func:`load_tables` reads: the installed GalSim's
    (the file may not exist yet), or without GalSim the cache file made for this geometry by the
    newest GalSim, under whatever name it was copied.

    Raises
    ------
    GalparamError
        GalSim is not installed and no cache file holds tables of this geometry.
    """
    folder = Path(folder or cache_dir())
    version = galsim_version()
    if version is None:
        return _find_cached(geometry, folder, s_max)
    settings = table_settings(geometry, galsim=version, s_max=s_max)
    return settings, cache_path(settings, folder)


def resolve_table_settings(geometry: Geometry = DEFAULT_GEOMETRY, *, folder=None) -> dict:
    """The settings of the tables this process draws from (:func:`table_file`'s)."""
    return table_file(geometry, folder=folder)[0]


_FOUND: dict = {}


def _find_cached(geometry: Geometry, folder: Path, s_max: float = S_MAX) -> tuple[dict, Path]:
    """Without GalSim: the settings and file of the cached tables of a geometry (newest GalSim's),
    looked for once per process and folder."""
    key = (geometry, str(folder), s_max)
    if key in _FOUND and _FOUND[key][1].exists():
        return _FOUND[key]
    wanted = table_settings(geometry, galsim="", s_max=s_max)
    found = []
    for path in sorted(folder.glob("sersic-tables-*.npz")):
        try:
            with np.load(path, allow_pickle=False) as z:
                recorded = json.loads(str(z["settings"]))
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            continue
        if isinstance(recorded, dict) and {**recorded, "galsim": ""} == wanted:
            found.append((recorded, path))
    if not found:
        raise GalparamError(
            f"GalSim is not installed and {folder} holds no Sérsic tables for a {geometry.stamp_size}-pixel stamp of "
            f"{geometry.pixel_scale:g} arcsec, Moffat beta {geometry.psf_beta:g} (table format {FORMAT_VERSION}); "
            "install GalSim to build them, or copy the sersic-tables-*.npz that `galparam-simulate tables` names "
            f"on a machine with GalSim into {folder} (or set {CACHE_ENV})"
        )
    _FOUND[key] = max(found, key=lambda item: _version_key(item[0]["galsim"]))
    return _FOUND[key]


def _version_key(version: str):
    return tuple(int(p) if p.isdigit() else 0 for p in str(version).replace("-", ".").split("."))


def _settings_key(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def cache_path(settings: dict, folder=None) -> Path:
    """The file that holds the tables of ``settings``."""
    return Path(folder or cache_dir()) / f"sersic-tables-{_settings_key(settings)}.npz"


def _read_cached(path: Path, settings: dict) -> Tables:
    """The tables in ``path``, or ValueError saying why they cannot be trusted."""
    try:
        with np.load(path, allow_pickle=False) as z:
            recorded = json.loads(str(z["settings"])) if "settings" in z.files else None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"unreadable ({type(exc).__name__})") from None
    if recorded != settings:
        raise ValueError("made for other settings or another GalSim version")
    try:
        tables = Tables.load(path)
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"incomplete ({type(exc).__name__})") from None
    expected_rows = int(round(settings["s_max"] / S_STEP)) + 1
    if (
        tables.sersic.shape != (len(tables.n_nodes), expected_rows)
        or tables.psf.shape != (expected_rows,)
        or not np.isfinite(tables.sersic).all()
        or (tables.rule_N.size == 0) != (settings["s_max"] != S_MAX)
        or not np.isfinite([tables.psf_unit_maxk, tables.psf_unit_stepk]).all()
    ):
        raise ValueError("its arrays do not have the expected shapes or values")
    return tables


_LOADED: dict = {}


def load_tables(geometry: Geometry = DEFAULT_GEOMETRY, *, folder=None, s_max: float = S_MAX) -> Tables:
    """The Sérsic and PSF tables of a stamp geometry: from this process's memory, from the cache
    file, or built from GalSim (~30 s, once per machine) and saved there.

    ``s_max`` is the tables' reach (s = sqrt(k·radius)): the default's tables carry the geometry's
    calibrated grid-size rule; :data:`~galparam.kspace.tables.WIDE_S_MAX`'s, which draw any stamp
    (:mod:`galparam.kspace.stamps`), carry none (~10 s to build).

    A cache file that is truncated, made for other settings or another GalSim version, or holds
    bad values is rebuilt, with one notice line on stderr; it is never trusted.
    """
    settings, path = table_file(geometry, folder=folder, s_max=s_max)
    key = str(path)
    if key in _LOADED:
        return _LOADED[key]
    tables = None
    if path.exists():
        try:
            tables = _read_cached(path, settings)
        except ValueError as reason:
            print(f"galparam: the Sérsic table cache {path} is {reason}; rebuilding it", file=sys.stderr)
    if tables is None:
        if galsim_version() is None:
            raise GalparamError(
                f"the Sérsic table cache {path} cannot be used and GalSim is not installed to rebuild it"
            )
        tables = build_tables(geometry=geometry, s_max=s_max, calibrate=s_max == S_MAX)
        try:
            with atomic_path(path, suffix=".npz") as tmp:
                arrays = {k: np.asarray(getattr(tables, k)) for k in Tables._SAVED}
                np.savez(tmp, settings=np.array(json.dumps(settings, sort_keys=True)), **arrays)
        except OSError as exc:  # a read-only home: draw from memory, build again next time
            print(
                f"galparam: cannot keep the Sérsic tables in {path.parent} ({exc.strerror}); set {CACHE_ENV}",
                file=sys.stderr,
            )
    _LOADED[key] = tables
    return tables
