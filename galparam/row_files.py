"""Resumable row files: a CSV written row by row, and the JSON manifest beside it that says which
data and settings its rows belong to (``fits.csv`` and ``fits.csv.json``, ``posterior.csv`` ...)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from galparam.errors import GalparamError, Remedy
from galparam.io import complete_lines, write_json_atomic, write_text_atomic


def open_row_file(output, manifest: dict, columns, total: int, *, kind: str, of: str, overwrite: bool) -> int:
    """Check a row file against its manifest before rows are added (writing its header where it
    has none yet); return the rows it holds.

    With ``overwrite`` the file and its manifest are removed first. Otherwise a file whose
    manifest differs, whose header is not ``columns`` (a torn last line is cut off) or that holds
    more than ``total`` rows is refused. The manifest is written (atomically) once the checks pass.

    Parameters
    ----------
    output : path
        The CSV file; its manifest is ``output`` + ``.json``.
    manifest : dict
        What the rows belong to (JSON).
    columns : sequence of str
        The file's header.
    total : int
        The rows the caller will have in the end.
    kind, of : str
        For messages: "a galparam {kind} file", "holds {kind} of {of}" (``fits``, ``another
        dataset or setting``).
    overwrite : bool
        Start again.

    Raises
    ------
    GalparamError
        One line naming the file and what is wrong, with the ``overwrite`` remedy.
    """
    output = Path(output)
    sidecar = output.with_name(output.name + ".json")
    if overwrite:
        for path in (output, sidecar):
            path.unlink(missing_ok=True)
    if output.exists():
        try:
            old = json.loads(sidecar.read_text())
        except (OSError, ValueError):
            old = None
        if old != manifest:
            raise GalparamError(f"{output} holds {kind} of {of}; remove it", remedy=Remedy("overwrite", "replace it"))
    lines = complete_lines(output)
    if output.exists() and (not lines or lines[0].split(",") != list(columns)):
        raise GalparamError(
            f"{output}: not a galparam {kind} file (header {tuple(columns)}); remove it",
            remedy=Remedy("overwrite", "replace it"),
        )
    done = max(len(lines) - 1, 0)
    if done > total:
        raise GalparamError(
            f"{output} has {done} rows, more than the {total} asked for", remedy=Remedy("overwrite", "start again")
        )
    output.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(sidecar, manifest)
    if not lines:  # the header once, whatever stopped a run before its first row
        write_text_atomic(output, ",".join(columns) + "\n")
    return done


def read_row_file(path, required, *, kind: str, source: str) -> tuple[pd.DataFrame, dict]:
    """A finished row file and its manifest, checked to hold the ``required`` columns.

    ``kind`` and ``source`` name it in messages ("fits", "galparam-evaluate baseline").

    Raises
    ------
    GalparamError
        A missing file or manifest, a file that is not CSV, missing columns.
    """
    path = Path(path)
    sidecar = path.with_name(path.name + ".json")
    try:
        table = pd.read_csv(path)
        manifest = json.loads(sidecar.read_text())
    except FileNotFoundError as exc:
        raise GalparamError(f"{exc.filename}: no such file ({kind} come from {source})") from None
    except (ValueError, pd.errors.ParserError) as exc:
        raise GalparamError(f"{path}: not a galparam {kind} file ({exc})") from None
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise GalparamError(f"{path}: not a galparam {kind} file (missing columns {', '.join(missing)})")
    return table, manifest
