"""Simulated datasets: sampling, SNR-window rejection, noise, parallel workers, parts and merging.

Reproducibility rests on one rule: the random numbers of sample ``i`` depend only on
``(seed, i)`` (:mod:`galparam.simulate.draws`). So the order of work, the number of workers, the
chunking and the sharding cannot change a byte of the result.

* :mod:`~galparam.simulate.draws`: the candidates' parameters from their seeds;
* :mod:`~galparam.simulate.workers`: rendering, the SNR window and noise, in worker processes;
* :mod:`~galparam.simulate.screen`: candidates surely outside the SNR window, skipped undrawn;
* :mod:`~galparam.simulate.parts`: chunks saved as they finish, shards, the dataset joined from them;
* here, :func:`simulate` and :func:`merge`: a run (resumed from its saved chunks when interrupted)
  and the join of shards, byte for byte what a single run writes.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from galparam import __version__
from galparam.errors import Remedy, SimulationError
from galparam.io import write_json_atomic, write_npz_atomic
from galparam.jobs import resolve_jobs
from galparam.render import KSpaceRenderer, renderer_for
from galparam.simulate.draws import candidate_deviates, draw_candidates
from galparam.simulate.parts import (
    MAX_ATTEMPTS,
    Part,
    check_coverage,
    metadata_table,
    part_header,
    simulate_chunk,
    write_dataset,
    write_part,
)
from galparam.simulate.screen import SCREEN_MIN_IMAGES, SNRScreen
from galparam.simulate.workers import CandidateRenderer, RenderConfig, Rendered, Workers, add_noise
from galparam.specs import DatasetSpec, spec_from_yaml_text

__all__ = [
    "MAX_ATTEMPTS",
    "CandidateRenderer",
    "Part",
    "RenderConfig",
    "Rendered",
    "SNRScreen",
    "SimulationSummary",
    "Workers",
    "add_noise",
    "candidate_deviates",
    "default_output",
    "draw_candidates",
    "merge",
    "metadata_table",
    "parse_shard",
    "shard_range",
    "simulate",
    "simulate_chunk",
]

DEFAULT_CHUNK_SIZE = 2048


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
    if todo and spec.renderer == KSpaceRenderer.NAME and not spec.stamp_model:  # the table cache, before workers start
        renderer = renderer_for(spec.renderer, spec.geometry)
        if SNRScreen.applies(spec) and sum(b - a for a, b, _ in todo) >= SCREEN_MIN_IMAGES:
            screen = SNRScreen(spec, renderer)
    own_workers = workers is None and bool(todo)
    if own_workers:
        workers = Workers(jobs)
    try:
        for a, b, path in todo:
            arrays = simulate_chunk(spec, a, b, workers, on_round, screen)
            write_npz_atomic(path, {**part_header(spec, a, b), **arrays})
    finally:
        if own_workers:
            workers.close()
        bar.close()

    parts = [Part.open(p) for p in chunk_paths]
    if shard:
        write_part(output, spec, parts, start, stop)
    else:
        write_dataset(output, spec, parts)
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
    parts = check_coverage(parts, 0, spec.size)
    write_dataset(output, spec, parts)
    return output
