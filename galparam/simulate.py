"""Simulated datasets: sampling, SNR-window rejection, noise, parallel workers, parts and merging.

Reproducibility rests on one rule: the random numbers of sample ``i`` depend only on
``(seed, i)``. Candidate ``k`` of sample ``i`` takes its parameters from the stream
``SeedSequence(seed, spawn_key=(i, 0, k))``; the accepted candidate takes its noise from
``SeedSequence(seed, spawn_key=(i, 1))``. So the order of work, the number of workers, the chunking
and the sharding cannot change a byte of the result.

Work proceeds in chunks of samples. Within a chunk, every pending sample draws its next candidate,
the candidates are rendered (split between workers by Sérsic index, so each worker builds only its
share of GalSim's profile tables), and those outside the SNR window draw again, until all are
accepted. Each finished chunk is saved atomically in a parts folder beside the output; a run that
is interrupted resumes from the saved chunks, and the output appears (atomically) only at the end.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from galparam import __version__
from galparam.errors import DatasetError, Remedy, SimulationError
from galparam.io import NpzWriter, atomic_path, write_json_atomic, write_npz_atomic, write_text_atomic
from galparam.jobs import resolve_jobs
from galparam.parameters import LABEL_NAMES
from galparam.render import KSpaceRenderer, renderer_for, renderer_provenance
from galparam.specs import DatasetSpec, spec_from_yaml_text

PARAM_COLUMNS = (*LABEL_NAMES, "psf_fwhm", "sigma")
"""Columns of the per-candidate parameter matrix."""

_STREAM_PARAMS = 0
_STREAM_NOISE = 1
DEFAULT_CHUNK_SIZE = 2048
MAX_ATTEMPTS = 10_000
"""Candidates a sample may draw before the SNR window is declared unreachable."""


# -- sampling ------------------------------------------------------------------------------------
def candidate_deviates(seed: int, indices, attempts) -> np.ndarray:
    """Uniform deviates in [0, 1) for candidate ``attempts[j]`` of sample ``indices[j]``.

    Returns
    -------
    ndarray of shape (len(indices), 7), one column per entry of ``specs.DRAW_ORDER``
    """
    out = np.empty((len(indices), 7), dtype=np.float64)
    for row, (i, k) in enumerate(zip(indices, attempts, strict=True)):
        bits = np.random.SeedSequence(seed, spawn_key=(int(i), _STREAM_PARAMS, int(k))).generate_state(7, np.uint64)
        out[row] = (bits >> np.uint64(11)) * 2.0**-53
    return out


def draw_candidates(spec: DatasetSpec, indices, attempts) -> np.ndarray:
    """Parameters of candidate ``attempts[j]`` of sample ``indices[j]`` under ``spec``'s priors.

    Returns
    -------
    ndarray of shape (len(indices), 7), columns :data:`PARAM_COLUMNS`
    """
    u = candidate_deviates(spec.seed, indices, attempts)
    cols = [prior.transform(u[:, j]) for j, prior in enumerate(spec.draw_priors)]
    flux, n, hlr, a, b, psf_fwhm, sigma = cols
    if spec.shear_form == ("shear_amplitude", "shear_angle"):
        a, b = a * np.cos(2 * b), a * np.sin(2 * b)
    return np.stack([flux, n, hlr, a, b, psf_fwhm, sigma], axis=1)


# -- rendering and noise (runs in the workers) ---------------------------------------------------
@dataclass(frozen=True)
class RenderConfig:
    """What a worker needs to turn candidates into images."""

    seed: int
    stamp_size: int
    pixel_scale: float
    psf_beta: float
    poisson_noise: bool
    snr_window: tuple | None
    psf_varies: bool
    renderer: str = "kspace"

    @classmethod
    def from_spec(cls, spec: DatasetSpec) -> RenderConfig:
        return cls(
            spec.seed,
            spec.stamp_size,
            spec.pixel_scale,
            spec.psf_beta,
            spec.poisson_noise,
            spec.snr_window,
            spec.psf_varies,
            spec.renderer,
        )

    @property
    def geometry(self) -> tuple:
        return self.stamp_size, self.pixel_scale, self.psf_beta


@dataclass
class Rendered:
    """Outcome of rendering candidates: SNR of each, and images of the accepted ones."""

    accepted: np.ndarray  # (m,) bool
    snr: np.ndarray  # (m,) float64
    img: np.ndarray  # (a, S, S) float32, accepted rows only, in candidate order
    img_nonoise: np.ndarray
    psf_img: np.ndarray | None


class CandidateRenderer:
    """Renders candidates, applies the SNR window and adds noise to the accepted ones.

    ``renderer`` is a :class:`~galparam.render.KSpaceRenderer` (all candidates in one call) or a
    :class:`~galparam.render.Renderer` (GalSim, one candidate at a time, same-index candidates
    one after another so each profile table is touched once per call).
    """

    def __init__(self, config: RenderConfig, renderer=None):
        self.config = config
        self.renderer = renderer or renderer_for(config.renderer, *config.geometry)

    def noiseless(self, params: np.ndarray) -> np.ndarray:
        """(m, S, S) float32 noiseless images of the candidates ``params`` (rows of :data:`PARAM_COLUMNS`)."""
        if isinstance(self.renderer, KSpaceRenderer):
            return self.renderer.images(*params[:, :6].T)
        size = self.config.stamp_size
        out = np.empty((len(params), size, size), np.float32)
        for row in np.argsort(params[:, 1], kind="stable"):
            out[row] = self.renderer.image(*params[row, :6])
        return out

    def __call__(self, indices: np.ndarray, params: np.ndarray) -> Rendered:
        cfg = self.config
        clean = self.noiseless(params)
        snr = np.sqrt(np.sum(clean.reshape(len(clean), -1).astype(np.float64) ** 2, axis=1)) / params[:, 6]
        if cfg.snr_window is None:
            accepted = np.ones(len(params), dtype=bool)
        else:
            accepted = (cfg.snr_window[0] <= snr) & (snr <= cfg.snr_window[1])
        rows = np.flatnonzero(accepted)
        img = np.empty((len(rows), cfg.stamp_size, cfg.stamp_size), np.float32)
        for out, row in enumerate(rows):
            img[out] = self.add_noise(int(indices[row]), clean[row], params[row, 6])
        psf_img = self.psf_images(params[rows, 5]) if cfg.psf_varies else None
        return Rendered(accepted, snr, img, clean[rows], psf_img)

    def psf_images(self, psf_fwhm: np.ndarray) -> np.ndarray:
        """(m, S, S) float32 PSF images (one call with the k-space renderer, one each with GalSim)."""
        if isinstance(self.renderer, KSpaceRenderer):
            return self.renderer.psf_images(psf_fwhm)
        size = self.config.stamp_size
        out = np.empty((len(psf_fwhm), size, size), np.float32)
        for row, fwhm in enumerate(psf_fwhm):
            out[row] = self.renderer.psf_image(fwhm)
        return out

    def add_noise(self, index: int, image: np.ndarray, sigma: float) -> np.ndarray:
        """Poisson noise on the galaxy counts, then Gaussian read noise of level ``sigma``."""
        rng = np.random.default_rng(np.random.SeedSequence(self.config.seed, spawn_key=(index, _STREAM_NOISE)))
        return add_noise(image, sigma, rng, poisson=self.config.poisson_noise)


def add_noise(image: np.ndarray, sigma: float, rng: np.random.Generator, *, poisson: bool = True) -> np.ndarray:
    """A noisy copy of a noiseless image, as every galparam dataset has it: Poisson noise on the
    galaxy's counts (if ``poisson``), then Gaussian read noise of standard deviation ``sigma``.

    Returns
    -------
    ndarray of float32, the shape of ``image``
    """
    light = image.astype(np.float64)
    if poisson:
        light = rng.poisson(np.clip(light, 0.0, None)).astype(np.float64)
    return (light + rng.normal(0.0, sigma, size=image.shape)).astype(np.float32)


def _render(config: RenderConfig, indices, params) -> Rendered:
    return CandidateRenderer(config)(indices, params)


class Workers:
    """``jobs`` worker processes. With the GalSim renderer worker w renders the Sérsic indices
    assigned to w; with the k-space renderer each worker draws an equal share of the candidates.

    Keeping an index on one worker means each worker builds GalSim's tables for its share of the
    indices only, once for as long as the workers live. Pass one ``Workers`` to several
    :func:`simulate` calls to share that work; ``jobs=1`` renders in this process.
    """

    def __init__(self, jobs: int | None = None):
        self.jobs = resolve_jobs(jobs)
        ctx = multiprocessing.get_context("spawn")
        self._pools = [ProcessPoolExecutor(1, mp_context=ctx) for _ in range(self.jobs if self.jobs > 1 else 0)]

    def render(self, config: RenderConfig, indices: np.ndarray, params: np.ndarray) -> Rendered:
        """Render candidates ``params`` of samples ``indices``; results in the order given."""
        if not self._pools:
            return _render(config, indices, params)
        if config.renderer == "galsim":
            owner = np.round(params[:, 1] * 1e6).astype(np.int64) % self.jobs
        else:
            owner = np.arange(len(params)) * self.jobs // len(params)
        parts = []
        for w, pool in enumerate(self._pools):
            rows = np.flatnonzero(owner == w)
            if rows.size:
                parts.append((rows, pool.submit(_render, config, indices[rows], params[rows])))
        m = len(indices)
        accepted, snr = np.zeros(m, dtype=bool), np.empty(m)
        pieces = []
        for rows, future in parts:
            res = future.result()
            accepted[rows], snr[rows] = res.accepted, res.snr
            pieces.append((rows[res.accepted], res))
        order = np.argsort(np.concatenate([r for r, _ in pieces]), kind="stable")

        def gather(attr):
            arrays = [getattr(res, attr) for _, res in pieces]
            return None if arrays[0] is None else np.concatenate(arrays)[order]

        return Rendered(accepted, snr, gather("img"), gather("img_nonoise"), gather("psf_img"))

    def close(self) -> None:
        for pool in self._pools:
            pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# -- screening: candidates surely outside the SNR window ------------------------------------------
SCREEN_MIN_IMAGES = 10_000
"""Datasets (or shards) at least this large screen their candidates (building the screen costs seconds)."""


class SNRScreen:
    """Which candidates are surely outside the SNR window, so that they need not be drawn.

    A candidate's SNR is ``flux · u / σ`` with ``u`` the norm of its unit-flux image, a function
    of (n, hlr, |g|, PSF FWHM) that decreases with the radius, the shear and the PSF width. ``u``
    is tabulated on nodes spanning the spec's prior; a candidate's ``u`` lies between the table's
    value at the cell corner of smaller radius, shear and PSF (an upper bound) and at the opposite
    corner (a lower bound), taking the extreme of the two bracketing indices, with a 5 % margin
    for what the nodes do not see. Candidates whose bounds put the SNR outside the window are
    rejected without being drawn; every other candidate keeps the exact check, so a dataset's
    bytes do not depend on the screen (a test compares the bounds with exact norms).
    """

    MARGIN = 1.05
    SHEAR_NODES = (0.0, 0.25, 0.45, 0.6, 0.7, 0.8, 0.9, 0.95)

    def __init__(self, spec: DatasetSpec, renderer: KSpaceRenderer):
        p = spec.priors
        n_lo, n_hi = p["sersic_n"].low, p["sersic_n"].high
        self.n = np.unique(np.clip(np.arange(np.floor(n_lo * 4) / 4, n_hi + 0.25, 0.25), *renderer.sersic_range))
        h_lo, h_hi = p["hlr"].low, p["hlr"].high
        steps = max(1, int(np.ceil(np.log(h_hi / h_lo) / np.log(1.15)))) if h_hi > h_lo else 0
        self.hlr = h_lo * (h_hi / h_lo) ** (np.arange(steps + 1) / max(steps, 1))
        f_lo, f_hi = p["psf_fwhm"].low, p["psf_fwhm"].high
        self.psf = np.linspace(f_lo, f_hi, 4) if f_hi > f_lo else np.array([f_lo])
        g_max = self._largest_shear(spec)
        self.g = np.array([g for g in self.SHEAR_NODES if g < g_max] + [min(g_max, 0.95)])
        grid = np.meshgrid(self.n, self.hlr, self.psf, self.g, indexing="ij")
        n, hlr, psf, g = (a.ravel() for a in grid)
        images = renderer.images(np.ones_like(n), n, hlr, g, np.zeros_like(g), psf)
        self.u = np.sqrt(np.sum(images.reshape(len(n), -1).astype(np.float64) ** 2, axis=1)).reshape(grid[0].shape)
        self.window = spec.snr_window

    @classmethod
    def applies(cls, spec: DatasetSpec) -> bool:
        """Whether the screen can bound this spec's candidates (an SNR window, |g| within its nodes)."""
        return spec.snr_window is not None and cls._largest_shear(spec) <= cls.SHEAR_NODES[-1]

    @staticmethod
    def _largest_shear(spec: DatasetSpec) -> float:
        a, b = spec.shear_form
        pa, pb = spec.priors[a], spec.priors[b]
        if a == "shear_amplitude":
            return pa.high
        return float(np.hypot(max(abs(pa.low), abs(pa.high)), max(abs(pb.low), abs(pb.high))))

    def norm_bounds(self, params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper bounds of each candidate's unit-flux image norm ``u``."""
        n, hlr, g, psf = params[:, 1], params[:, 2], np.hypot(params[:, 3], params[:, 4]), params[:, 5]

        def bracket(nodes, x):
            hi = np.clip(np.searchsorted(nodes, x, side="left"), 0, len(nodes) - 1)
            lo = np.clip(np.searchsorted(nodes, x, side="right") - 1, 0, len(nodes) - 1)
            return lo, hi

        (n0, n1), (h0, h1), (p0, p1), (g0, g1) = (
            bracket(nodes, x) for nodes, x in ((self.n, n), (self.hlr, hlr), (self.psf, psf), (self.g, g))
        )
        upper = np.maximum(self.u[n0, h0, p0, g0], self.u[n1, h0, p0, g0]) * self.MARGIN
        lower = np.minimum(self.u[n0, h1, p1, g1], self.u[n1, h1, p1, g1]) / self.MARGIN
        return lower, upper

    def surely_outside(self, params: np.ndarray) -> np.ndarray:
        """True for the candidates whose SNR is surely outside the window (rows of :data:`PARAM_COLUMNS`)."""
        lower, upper = self.norm_bounds(params)
        scale = params[:, 0] / params[:, 6]
        return (scale * upper < self.window[0]) | (scale * lower > self.window[1])


# -- parts: chunks and shards --------------------------------------------------------------------
_PART_KEYS = ("img", "img_nonoise", "params", "snr", "draws")


def simulate_chunk(
    spec: DatasetSpec, start: int, stop: int, workers: Workers, progress=None, screen: SNRScreen | None = None
) -> dict:
    """Simulate samples ``start`` to ``stop - 1``; returns the arrays of a part.

    With a ``screen``, candidates surely outside the SNR window are rejected without being drawn.
    """
    config = RenderConfig.from_spec(spec)
    m = stop - start
    indices = np.arange(start, stop)
    attempts = np.zeros(m, dtype=np.int64)
    size = spec.stamp_size
    out = {
        "img": np.empty((m, size, size), np.float32),
        "img_nonoise": np.empty((m, size, size), np.float32),
        "params": np.empty((m, len(PARAM_COLUMNS))),
        "snr": np.empty(m),
    }
    if spec.psf_varies:
        out["psf_img"] = np.empty((m, size, size), np.float32)
    pending = np.arange(m)
    while pending.size:
        params = draw_candidates(spec, indices[pending], attempts[pending])
        res = _render_screened(workers, config, indices[pending], params, screen)
        attempts[pending] += 1
        done = pending[res.accepted]
        out["params"][done] = params[res.accepted]
        out["snr"][done] = res.snr[res.accepted]
        out["img"][done] = res.img
        out["img_nonoise"][done] = res.img_nonoise
        if spec.psf_varies:
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


def _render_screened(workers: Workers, config: RenderConfig, indices, params, screen) -> Rendered:
    """``workers.render`` of the candidates the screen lets through; the others are rejected."""
    if screen is None:
        return workers.render(config, indices, params)
    keep = ~screen.surely_outside(params)
    accepted = np.zeros(len(params), dtype=bool)
    if not keep.any():
        empty = np.empty((0, config.stamp_size, config.stamp_size), np.float32)
        return Rendered(accepted, np.full(len(params), np.nan), empty, empty, empty if config.psf_varies else None)
    res = workers.render(config, indices[keep], params[keep])
    accepted[keep] = res.accepted
    snr = np.full(len(params), np.nan)
    snr[keep] = res.snr
    return Rendered(accepted, snr, res.img, res.img_nonoise, res.psf_img)


def _part_header(spec: DatasetSpec, start: int, stop: int) -> dict:
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
                missing = {*header, *_PART_KEYS} - set(z.files)
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


def _check_coverage(parts: list[Part], start: int, stop: int) -> list[Part]:
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


def _write_part(path: Path, spec: DatasetSpec, parts: list[Part], start: int, stop: int) -> None:
    """Join consecutive parts into one part file (a shard)."""
    size = spec.stamp_size
    with atomic_path(path, suffix=".npz") as tmp, NpzWriter(tmp) as w:
        for key, value in _part_header(spec, start, stop).items():
            w.add(key, value)
        _stream(w, "img", parts, "img", (size, size), np.float32)
        _stream(w, "img_nonoise", parts, "img_nonoise", (size, size), np.float32)
        if spec.psf_varies:
            _stream(w, "psf_img", parts, "psf_img", (size, size), np.float32)
        _stream(w, "params", parts, "params", (len(PARAM_COLUMNS),), np.float64)
        _stream(w, "snr", parts, "snr", (), np.float64)
        _stream(w, "draws", parts, "draws", (), np.int32)


def metadata_table(spec: DatasetSpec, params: np.ndarray, snr: np.ndarray, draws: np.ndarray, start: int = 0):
    """The per-image metadata as a DataFrame: index, seed, draws, the drawn parameters, SNR."""
    table = pd.DataFrame(params, columns=list(PARAM_COLUMNS))
    table.insert(0, "index", np.arange(start, start + len(params)))
    table.insert(1, "seed", spec.seed)
    table.insert(2, "draws", draws.astype(np.int64))
    table["snr"] = snr
    return table


def _write_dataset(path: Path, spec: DatasetSpec, parts: list[Part]) -> None:
    """Join parts covering every sample into the dataset file and its metadata CSV."""
    size = spec.stamp_size
    params = np.concatenate([p.read("params") for p in parts])
    snr = np.concatenate([p.read("snr") for p in parts])
    draws = np.concatenate([p.read("draws") for p in parts])
    csv_text = metadata_table(spec, params, snr, draws).to_csv(index=False, lineterminator="\n")
    write_text_atomic(path.with_suffix(".csv"), csv_text)
    with atomic_path(path, suffix=".npz") as tmp, NpzWriter(tmp) as w:
        _stream(w, "img", parts, "img", (size, size), np.float32)
        _stream(w, "img_nonoise", parts, "img_nonoise", (size, size), np.float32)
        if spec.psf_varies:
            _stream(w, "psf_img", parts, "psf_img", (size, size), np.float32)
        else:
            renderer = renderer_for(spec.renderer, size, spec.pixel_scale, spec.psf_beta)
            w.add("psf_img", renderer.psf_image(spec.priors["psf_fwhm"].low)[None])
        w.add("label", params[:, : len(LABEL_NAMES)].astype(np.float32))
        w.add("label_names", np.array(LABEL_NAMES))
        w.add("snr", snr.astype(np.float32))
        w.add("sigma", params[:, 6].astype(np.float32))
        w.add("psf_fwhm", params[:, 5].astype(np.float32))
        w.add("draws", draws)
        w.add("spec", np.array(spec.to_yaml()))
        provenance = renderer_provenance(spec.renderer, spec.stamp_size, spec.pixel_scale, spec.psf_beta)
        w.add("renderer", np.array(json.dumps(provenance, sort_keys=True)))
        w.add("spec_name", np.array(spec.name))
        w.add("galparam_version", np.array(__version__))
        w.add("seed", np.int64(spec.seed))


# -- the driver ----------------------------------------------------------------------------------
def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` → (K, N) with 1 ≤ K ≤ N."""
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise SimulationError(f"shard {text!r}: expected K/N with whole numbers, e.g. 1/4", argument="shard") from None
    if not 1 <= k <= n:
        raise SimulationError(f"shard {text!r}: K must be between 1 and N", argument="shard")
    return k, n


def shard_range(size: int, k: int, n: int) -> tuple[int, int]:
    """Samples of shard ``k`` of ``n`` (1-based): a contiguous range, shards as equal as can be."""
    return (k - 1) * size // n, k * size // n


def default_output(spec_path, shard: tuple[int, int] | None = None) -> Path:
    """``data/v1.yaml`` → ``data/v1.npz`` (``data/v1.shard-2-of-4.npz`` for a shard)."""
    path = Path(spec_path)
    if shard:
        return path.with_name(f"{path.stem}.shard-{shard[0]}-of-{shard[1]}.npz")
    return path.with_suffix(".npz")


def _check_writable(path: Path, overwrite: bool) -> None:
    if path.suffix != ".npz":
        raise SimulationError(f"{path}: the output must be an .npz file")
    if path.exists() and not overwrite:
        raise SimulationError(f"{path} exists", remedy=Remedy("overwrite", "replace it"))
    if path.is_dir():
        raise SimulationError(f"{path} is a folder; give a file name ending in .npz")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SimulationError(f"{path.parent}: cannot create the output folder ({exc.strerror})") from None
    if not os.access(path.parent, os.W_OK):
        raise SimulationError(f"{path.parent}: the output folder is not writable")


@dataclass
class SimulationSummary:
    """What a run did: images written, candidates drawn, time taken."""

    output: Path
    images: int
    candidates: int
    seconds: float
    snr_min: float
    snr_max: float

    @property
    def rejection_rate(self) -> float:
        return 1.0 - self.images / self.candidates if self.candidates else 0.0

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds else float("inf")


def simulate(
    spec: DatasetSpec,
    output,
    *,
    jobs: int | None = None,
    shard: tuple[int, int] | None = None,
    overwrite: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: bool = True,
    workers: Workers | None = None,
) -> SimulationSummary:
    """Simulate a dataset (or one shard of it) and write it atomically.

    Parameters
    ----------
    spec : DatasetSpec
        What to simulate (size and seed included).
    output : path
        The ``.npz`` to write; the metadata CSV goes beside it with the same stem. For a shard, the
        file is a part that :func:`merge` joins with the others.
    jobs : int, optional
        Worker processes; default all cores. The bytes written do not depend on it.
    shard : (K, N), optional
        Simulate only the K-th of N equal ranges of samples (1-based).
    overwrite : bool
        Replace an existing output.
    chunk_size : int
        Samples per saved chunk: the most an interruption can lose.
    progress : bool
        Show a progress bar on standard error.
    workers : Workers, optional
        Worker processes to use (and keep) instead of starting ``jobs`` new ones.

    Returns
    -------
    SimulationSummary

    Raises
    ------
    SimulationError
        If the output exists (without ``overwrite``) or cannot be written, or the SNR window cannot
        be reached.
    """
    output = Path(output)
    if jobs is not None:
        resolve_jobs(jobs)
    if chunk_size < 1:
        raise SimulationError(f"chunk_size {chunk_size}: must be at least 1", argument="chunk_size")
    _check_writable(output, overwrite)
    start, stop = shard_range(spec.size, *shard) if shard else (0, spec.size)
    if stop <= start:
        raise SimulationError(f"shard {shard[0]}/{shard[1]} of {spec.size} samples is empty; use fewer shards")

    workdir = output.with_name(output.name + ".parts")
    manifest = {"digest": spec.digest(), "galparam_version": __version__, "start": start, "stop": stop}
    if workdir.exists():
        old = _read_manifest(workdir)
        if old != manifest:
            if not overwrite:
                raise SimulationError(
                    f"{workdir} holds an interrupted run of another spec, seed, size or shard; remove it",
                    remedy=Remedy("overwrite", "replace it"),
                )
            shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(workdir / "manifest.json", manifest)

    bounds = [(a, min(a + chunk_size, stop)) for a in range(start, stop, chunk_size)]
    chunk_paths = [workdir / f"chunk-{a:09d}-{b:09d}.npz" for a, b in bounds]
    todo = [(a, b, p) for (a, b), p in zip(bounds, chunk_paths, strict=True) if not p.exists()]
    done_images = (stop - start) - sum(b - a for a, b, _ in todo)

    t0 = time.perf_counter()
    bar = tqdm(
        total=stop - start,
        initial=done_images,
        unit="img",
        desc=spec.name,
        disable=not progress,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    counts = {"accepted": 0, "candidates": 0}

    def on_round(accepted: int, candidates: int) -> None:
        counts["accepted"] += accepted
        counts["candidates"] += candidates
        bar.update(accepted)
        bar.set_postfix(rejected=f"{1 - counts['accepted'] / counts['candidates']:.0%}", refresh=False)

    screen = None
    if todo and spec.renderer == "kspace":  # build or check the table cache once, before any worker starts
        renderer = renderer_for(spec.renderer, spec.stamp_size, spec.pixel_scale, spec.psf_beta)
        if SNRScreen.applies(spec) and sum(b - a for a, b, _ in todo) >= SCREEN_MIN_IMAGES:
            screen = SNRScreen(spec, renderer)
    own_workers = workers is None and bool(todo)
    if own_workers:
        workers = Workers(jobs)
    try:
        for a, b, path in todo:
            arrays = simulate_chunk(spec, a, b, workers, on_round, screen)
            write_npz_atomic(path, {**_part_header(spec, a, b), **arrays})
    finally:
        if own_workers:
            workers.close()
        bar.close()

    parts = [Part.open(p) for p in chunk_paths]
    if shard:
        _write_part(output, spec, parts, start, stop)
    else:
        _write_dataset(output, spec, parts)
    draws = np.concatenate([p.read("draws") for p in parts])
    snr = np.concatenate([p.read("snr") for p in parts])
    shutil.rmtree(workdir)
    return SimulationSummary(
        output, stop - start, int(draws.sum()), time.perf_counter() - t0, float(snr.min()), float(snr.max())
    )


def _read_manifest(workdir: Path) -> dict | None:
    try:
        return json.loads((workdir / "manifest.json").read_text())
    except (OSError, ValueError):
        return None


def merge(part_paths, output, *, overwrite: bool = False) -> Path:
    """Join shard files into the dataset a single run of the same spec writes, byte for byte.

    Raises
    ------
    DatasetError
        If a file is missing or not a part.
    SimulationError
        If the parts come from different specs, overlap, or leave samples out.
    """
    output = Path(output)
    _check_writable(output, overwrite)
    if not part_paths:
        raise SimulationError("merge: give the shard files to join")
    parts = [Part.open(p) for p in part_paths]
    if len({p.digest for p in parts}) > 1:
        raise SimulationError("merge: the parts come from different specs or seeds; merge shards of one run only")
    versions = sorted({p.version for p in parts})
    if len(versions) > 1:
        raise SimulationError(f"merge: the parts were made by different galparam versions ({', '.join(versions)})")
    spec = spec_from_yaml_text(parts[0].spec_text, source=str(parts[0].path))
    parts = _check_coverage(parts, 0, spec.size)
    _write_dataset(output, spec, parts)
    return output
