"""Parts of a simulation: chunks saved as they finish, shards, and the dataset joined from them.

Work proceeds in chunks of samples. Within a chunk, every pending sample draws its next candidate,
the candidates are rendered (:mod:`galparam.simulate.workers`), and those outside the SNR window
draw again, until all are accepted. Each finished chunk is saved atomically in a parts folder
beside the output; the dataset file is joined from the parts at the end, entry by entry as
:data:`galparam.schema.DATASET_SCHEMA` declares it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from galparam import __version__
from galparam.errors import DatasetError, SimulationError
from galparam.io import NpzWriter, atomic_path, write_text_atomic
from galparam.kspace import galsim_version
from galparam.parameters import LABEL_NAMES
from galparam.render import renderer_for, renderer_provenance
from galparam.schema import DATASET_SCHEMA, DRAW_COLUMNS, STAMP_COLUMNS, Draws
from galparam.simulate.draws import draw_candidates
from galparam.simulate.screen import SNRScreen
from galparam.simulate.workers import RenderConfig, Rendered, Workers
from galparam.specs import DatasetSpec

PART_KEYS = ("img", "img_nonoise", "params", "snr", "draws")
"""The arrays of a part (and ``psf_img`` where the PSF varies, ``stamp`` for the stamp model)."""

MAX_ATTEMPTS = 10_000
"""Candidates a sample may draw before the SNR window is declared unreachable."""


def simulate_chunk(
    spec: DatasetSpec, start: int, stop: int, workers: Workers, progress=None, screen: SNRScreen | None = None
) -> dict:
    """Simulate samples ``start`` to ``stop - 1``; returns the arrays of a part (``params``: the
    drawn parameters, :class:`~galparam.schema.Draws`' columns).

    With a ``screen``, candidates surely outside the SNR window are rejected without being drawn.
    """
    config = RenderConfig.from_spec(spec)
    m = stop - start
    indices = np.arange(start, stop)
    attempts = np.zeros(m, dtype=np.int64)
    shape = spec.geometry.shape
    out = {
        "img": np.empty((m, *shape), np.float32),
        "img_nonoise": np.empty((m, *shape), np.float32),
        "params": np.empty((m, len(DRAW_COLUMNS))),
        "snr": np.empty(m),
    }
    if config.psf_varies:  # a stamp-model spec's parts hold them all: a merge needs no PSF file
        out["psf_img"] = np.empty((m, *shape), np.float32)
    if spec.stamp_model:
        out["stamp"] = np.empty((m, len(STAMP_COLUMNS)))
    pending = np.arange(m)
    while pending.size:
        draws = draw_candidates(spec, indices[pending], attempts[pending])
        res = _render_screened(workers, config, indices[pending], draws, screen)
        attempts[pending] += 1
        done = pending[res.accepted]
        out["params"][done] = draws.array[res.accepted]
        if spec.stamp_model:
            out["stamp"][done] = draws.stamp[res.accepted]
        out["snr"][done] = res.snr[res.accepted]
        out["img"][done] = res.img
        out["img_nonoise"][done] = res.img_nonoise
        if config.psf_varies:
            out["psf_img"][done] = res.psf_img
        if progress is not None:
            progress(len(done), len(pending))
        pending = pending[~res.accepted]
        if pending.size and attempts[pending].max() >= MAX_ATTEMPTS:
            raise SimulationError(
                f"sample {indices[pending[0]]} drew {MAX_ATTEMPTS} candidates without an SNR inside "
                f"{list(spec.snr_window)}; widen snr_window or change the priors of {spec.source}"
            )
    out["draws"] = attempts.astype(np.int32)
    return out


def _render_screened(workers: Workers, config: RenderConfig, indices, draws: Draws, screen) -> Rendered:
    """``workers.render`` of the candidates the screen lets through; the others are rejected."""
    if screen is None:
        return workers.render(config, indices, draws)
    keep = ~screen.surely_outside(draws)
    accepted = np.zeros(len(draws), dtype=bool)
    if not keep.any():
        empty = np.empty((0, *config.geometry.shape), np.float32)
        return Rendered(accepted, np.full(len(draws), np.nan), empty, empty, empty if config.psf_varies else None)
    res = workers.render(config, indices[keep], draws[keep])
    accepted[keep] = res.accepted
    snr = np.full(len(draws), np.nan)
    snr[keep] = res.snr
    return Rendered(accepted, snr, res.img, res.img_nonoise, res.psf_img)


def part_header(spec: DatasetSpec, start: int, stop: int) -> dict:
    return {
        "sample_start": np.int64(start),
        "sample_stop": np.int64(stop),
        "spec": np.array(spec.to_yaml()),
        "digest": np.array(spec.digest()),
        "galparam_version": np.array(__version__),
    }


@dataclass
class Part:
    """A saved range of samples (a chunk or a shard), opened lazily."""

    path: Path
    start: int
    stop: int
    digest: str
    spec_text: str
    version: str

    @classmethod
    def open(cls, path) -> Part:
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                header = ("sample_start", "sample_stop", "digest", "spec", "galparam_version")
                missing = {*header, *PART_KEYS} - set(z.files)
                if missing:
                    raise DatasetError(f"{path}: not a galparam part (missing {', '.join(sorted(missing))})")
                start, stop, digest, spec_text, version = (z[k] for k in header)
                return cls(path, int(start), int(stop), str(digest), str(spec_text), str(version))
        except FileNotFoundError:
            raise DatasetError(f"{path}: no such file") from None
        except DatasetError:
            raise
        except Exception as exc:  # zipfile.BadZipFile, ValueError, EOFError, OSError ...
            raise DatasetError(f"{path}: not a readable npz part ({type(exc).__name__}: {exc})") from None

    def read(self, key: str) -> np.ndarray:
        try:
            with np.load(self.path, allow_pickle=False) as z:
                value = z[key]
        except Exception as exc:  # truncated or altered after it was opened
            raise DatasetError(f"{self.path}: cannot read {key} ({type(exc).__name__}: {exc})") from None
        if value.ndim and len(value) != self.stop - self.start:
            raise DatasetError(f"{self.path}: {key} has {len(value)} rows for {self.stop - self.start} samples")
        return value


def check_coverage(parts: list[Part], start: int, stop: int) -> list[Part]:
    parts = sorted(parts, key=lambda p: p.start)
    position = start
    for part in parts:
        if part.start != position:
            what = "overlaps" if part.start < position else "leaves a gap before"
            raise SimulationError(f"{part.path}: samples {part.start}..{part.stop - 1} {what} sample {position}")
        position = part.stop
    if position != stop:
        raise SimulationError(f"the parts cover samples {start}..{position - 1}, not {start}..{stop - 1}")
    return parts


def _stream(writer: NpzWriter, name: str, parts: list[Part], key: str, shape_tail, dtype):
    total = sum(p.stop - p.start for p in parts)
    writer.begin(name, (total, *shape_tail), dtype)
    for part in parts:
        piece = part.read(key)
        if piece.shape[1:] != tuple(shape_tail):
            raise DatasetError(f"{part.path}: {key} rows have shape {piece.shape[1:]}, expected {tuple(shape_tail)}")
        writer.write(piece)


def write_part(path: Path, spec: DatasetSpec, parts: list[Part], start: int, stop: int) -> None:
    """Join consecutive parts into one part file (a shard)."""
    shape = spec.geometry.shape
    with atomic_path(path, suffix=".npz") as tmp, NpzWriter(tmp) as w:
        for key, value in part_header(spec, start, stop).items():
            w.add(key, value)
        _stream(w, "img", parts, "img", shape, np.float32)
        _stream(w, "img_nonoise", parts, "img_nonoise", shape, np.float32)
        if spec.psf_varies or spec.stamp_model:
            _stream(w, "psf_img", parts, "psf_img", shape, np.float32)
        _stream(w, "params", parts, "params", (len(DRAW_COLUMNS),), np.float64)
        _stream(w, "snr", parts, "snr", (), np.float64)
        _stream(w, "draws", parts, "draws", (), np.int32)
        if spec.stamp_model:
            _stream(w, "stamp", parts, "stamp", (len(STAMP_COLUMNS),), np.float64)


def metadata_table(spec: DatasetSpec, draws: Draws, snr: np.ndarray, attempts: np.ndarray, start: int = 0):
    """The per-image metadata as a DataFrame: index, seed, candidates drawn, the drawn parameters, SNR."""
    table = pd.DataFrame(draws.array, columns=list(DRAW_COLUMNS))
    if draws.stamp is not None:
        for j, name in enumerate(STAMP_COLUMNS):
            table[name] = draws.stamp[:, j].astype(np.int64) if name == "psf_index" else draws.stamp[:, j]
    table.insert(0, "index", np.arange(start, start + len(draws)))
    table.insert(1, "seed", spec.seed)
    table.insert(2, "draws", attempts.astype(np.int64))
    table["snr"] = snr
    return table


class _Stream:
    """A dataset entry streamed from the parts' arrays of the same key."""

    def __init__(self, parts: list[Part]):
        self.parts = parts


def write_dataset(path: Path, spec: DatasetSpec, parts: list[Part]) -> None:
    """Join parts covering every sample into the dataset file (:data:`galparam.schema.DATASET_SCHEMA`,
    entry by entry in its order) and its metadata CSV."""
    stamp = np.concatenate([p.read("stamp") for p in parts]) if spec.stamp_model else None
    draws = Draws(np.concatenate([p.read("params") for p in parts]), stamp)
    snr = np.concatenate([p.read("snr") for p in parts])
    attempts = np.concatenate([p.read("draws") for p in parts])
    csv_text = metadata_table(spec, draws, snr, attempts).to_csv(index=False, lineterminator="\n")
    write_text_atomic(path.with_suffix(".csv"), csv_text)
    if spec.psf_varies:
        psf = _Stream(parts)
    elif spec.stamp_model:  # one PSF: the first image's, from the parts
        psf = parts[0].read("psf_img")[:1]
    else:
        psf = renderer_for(spec.renderer, spec.geometry).psf_image(spec.priors["psf_fwhm"].low)[None]
    if spec.stamp_model:
        provenance = {"renderer": spec.renderer, "model": "galparam.kspace.stamps", "galsim": galsim_version()}
    else:
        provenance = renderer_provenance(spec.renderer, spec.geometry)
    values = {
        "img": _Stream(parts),
        "img_nonoise": _Stream(parts),
        "psf_img": psf,
        "label": draws.labels,
        "label_names": np.array(LABEL_NAMES),
        "snr": snr,
        "sigma": draws.sigma,
        "psf_fwhm": draws.psf_fwhm,
        "centre": None if stamp is None else stamp[:, :2],
        "sky": None if stamp is None else draws.stamp_column("sky"),
        "psf_index": None if stamp is None else draws.stamp_column("psf_index"),
        "draws": attempts,
        "spec": np.array(spec.to_yaml()),
        "renderer": np.array(json.dumps(provenance, sort_keys=True)),
        "spec_name": np.array(spec.name),
        "galparam_version": np.array(__version__),
        "seed": np.int64(spec.seed),
    }
    with atomic_path(path, suffix=".npz") as tmp, NpzWriter(tmp) as w:
        for entry in DATASET_SCHEMA:
            value = values[entry.key]
            if value is None:  # the stamp model's entries, for a spec without it
                continue
            if isinstance(value, _Stream):
                _stream(w, entry.key, value.parts, entry.key, entry.row_shape(spec.geometry.stamp_size), entry.dtype)
            elif entry.dtype == "str":
                w.add(entry.key, value)
            else:
                w.add(entry.key, np.asarray(value).astype(entry.dtype))
