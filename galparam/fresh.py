"""Fresh training images, drawn on the fly from a dataset spec.

An experiment whose dataset is ``{spec: data/v2.yaml, on_the_fly: true}`` trains on new galaxies
every epoch. Image ``j`` of epoch ``e`` is sample ``j`` of the spec re-seeded with
:func:`epoch_seed` ``(seed, e)``: the same prior, SNR window, noise and renderer as the spec's
dataset file, drawn by the same code (:func:`galparam.simulate.simulate_chunk`), so an image depends
only on (seed, epoch, index) — not on the batch, the chunk, or whether the run was resumed.
Validation stays a fixed set: the spec's first samples at its own seed (the same galaxies as the
first images of the spec's file), simulated once into the run folder.

Chunks are drawn in a child process a few chunks ahead of the training, so drawing overlaps it.

With ``replicas`` K (the loss ``bias_penalized_mse``), image ``j`` of an epoch is galaxy ``j // K``
(the spec's sample ``j // K``) with its own noise from ``SeedSequence(epoch seed, spawn_key=(j,
3))``: the K consecutive images of a galaxy differ only in their noise. The targets of galparam's
label losses (:mod:`galparam.models.losses`) are drawn with the images: each image's Cramér–Rao
bound at its true parameters (``label_bound``) and K (``label_replicas``).
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace

import numpy as np

from galparam.evaluate.crb import BOUND_BATCH, batch_bounds
from galparam.jobs import available_cores
from galparam.render import KSpaceRenderer, renderer_for
from galparam.schema import BATCH_KEYS, Draws
from galparam.simulate import SNRScreen, Workers, simulate_chunk
from galparam.simulate.workers import add_noise
from galparam.specs import DatasetSpec

FRESH_STREAM = 2
"""Second entry of the spawn key ``(epoch, 2)`` that seeds an epoch (a sample's streams use 0 and 1 there)."""

REPLICA_NOISE_STREAM = 3
"""Second entry of the spawn key ``(j, 3)`` of image ``j``'s noise where galaxies are drawn K times
(the simulator's samples use 0 to 2)."""

CHUNK_IMAGES = 1024
"""Images drawn per task of the child process (rounded to whole batches)."""


def epoch_seed(seed: int, epoch: int) -> int:
    """The dataset seed of epoch ``epoch``'s fresh images (a 63-bit hash of ``(seed, epoch)``)."""
    state = np.random.SeedSequence(seed, spawn_key=(epoch, FRESH_STREAM)).generate_state(1, np.uint64)
    return int(state[0] >> np.uint64(1))


def validation_spec(spec: DatasetSpec, images: int) -> DatasetSpec:
    """The fixed validation set: the spec's first ``images`` samples, at its own seed."""
    return spec.with_overrides(size=images)


def _yield_to_training() -> None:
    # drawing ahead is background work: where the cores are busy, the training goes first
    os.nice(DRAWING_NICENESS)


DRAWING_NICENESS = 5

_SCREENS: dict = {}


def draw(spec: DatasetSpec, start: int, stop: int, keys=BATCH_KEYS, replicas: int = 1) -> dict:
    """Images ``start`` to ``stop - 1`` of ``spec`` in this process: the arrays a batch needs.

    Parameters
    ----------
    spec : DatasetSpec
        The prior, seed and renderer (an epoch's: :meth:`FreshImages.epoch_spec`).
    start, stop : int
        The images drawn.
    keys : sequence of str
        The arrays to return, among a dataset's batch arrays (:data:`galparam.schema.BATCH_KEYS`)
        and the loss targets ``label_bound`` and ``label_replicas`` (the others are not sent back
        from the drawing process).
    replicas : int
        Noise realizations of each galaxy (see the module docstring); 1: image ``j`` is sample ``j``.

    Returns
    -------
    dict
        Of ``keys``: ``img``, ``img_nonoise`` (and ``psf_img`` where the PSF varies): float32
        (m, S, S); ``label``: float32 (m, 5), columns :data:`~galparam.parameters.LABEL_NAMES`;
        ``label_bound`` (m, 10): the labels then their bounds; ``label_replicas`` (m, 6): the labels then K.
    """
    screen = None
    if spec.renderer == KSpaceRenderer.NAME and SNRScreen.applies(spec):
        key = replace(spec, seed=0).digest()  # the screen depends on the priors, not the seed
        if key not in _SCREENS:
            _SCREENS[key] = SNRScreen(spec, renderer_for(spec.renderer, spec.geometry))
        screen = _SCREENS[key]
    first = start // replicas
    with Workers(1) as workers:
        part = simulate_chunk(spec, first, -(-stop // replicas), workers, screen=screen)
    if replicas > 1:
        part = _noise_replicas(spec, part, np.arange(start, stop), replicas, first)
    draws = Draws(part["params"])
    part["label"] = draws.labels.astype(np.float32)
    if "label_bound" in keys:
        part["label_bound"] = np.hstack([draws.labels, _bounds(spec, draws)])
    if "label_replicas" in keys:
        part["label_replicas"] = np.hstack([draws.labels, np.full((len(draws), 1), float(replicas))])
    return {k: part[k] for k in keys if k in part}


def _noise_replicas(spec: DatasetSpec, part: dict, images: np.ndarray, replicas: int, first: int) -> dict:
    """The part's galaxies ``replicas`` times each, image ``j`` with noise of its own stream."""
    rows = images // replicas - first
    out = {key: value[rows] for key, value in part.items()}
    draws = Draws(out["params"], out.get("stamp"))
    sky, sigma = draws.stamp_column("sky"), draws.sigma
    for i, j in enumerate(images):
        rng = np.random.default_rng(np.random.SeedSequence(spec.seed, spawn_key=(int(j), REPLICA_NOISE_STREAM)))
        galaxy = out["img_nonoise"][i] - np.float32(sky[i])
        out["img"][i] = add_noise(galaxy, sigma[i], rng, poisson=spec.poisson_noise) + np.float32(sky[i])
    return out


def _bounds(spec: DatasetSpec, draws: Draws) -> np.ndarray:
    """(m, 5) each image's Cramér–Rao bound on its labels' standard deviations (NaN where the image
    does not constrain every label)."""
    renderer = renderer_for(KSpaceRenderer.NAME, spec.geometry)
    out = np.empty((len(draws), 5))
    for a in range(0, len(draws), BOUND_BATCH):
        block = draws[a : a + BOUND_BATCH]
        cov = batch_bounds(block.labels, block.psf_fwhm, block.sigma, poisson=spec.poisson_noise, renderer=renderer)
        out[a : a + len(block)] = np.sqrt(np.diagonal(cov, axis1=1, axis2=2))
    return out


class FreshImages:
    """An endless stream of fresh training images from a dataset spec, epoch after epoch.

    Parameters
    ----------
    spec : DatasetSpec
        The prior, SNR window, noise and renderer (its ``seed`` seeds every epoch; its ``size``
        is not used).
    images_per_epoch : int
        Images in an epoch.
    batch_size : int
        Images per batch (an epoch's last batch may be smaller).
    prefetch : int
        Chunks drawn ahead of the one being trained on, beyond one per drawing process; 0 draws
        in this process, when asked.
    replicas : int
        Noise realizations of each galaxy, consecutive (see the module docstring; a multiple of
        the batch size).
    processes : int, optional
        Drawing processes (default: every core but one, at least one: a GPU's training needs
        many cores drawing; on a 2-core machine one draws while the other trains). The images
        do not depend on it.

    Use it as a context manager (or call :meth:`close`) so the drawing processes end with it.
    """

    def __init__(
        self,
        spec: DatasetSpec,
        images_per_epoch: int,
        batch_size: int,
        *,
        prefetch: int = 2,
        replicas: int = 1,
        processes: int | None = None,
    ):
        if images_per_epoch < 1 or batch_size < 1:
            raise ValueError("images_per_epoch and batch_size must be positive")
        self.processes = max(1, available_cores() - 1) if processes is None else int(processes)
        if self.processes < 1:
            raise ValueError("processes must be at least 1")
        self.spec = spec
        self.images_per_epoch = int(images_per_epoch)
        self.batch_size = int(batch_size)
        self.chunk_images = max(1, CHUNK_IMAGES // self.batch_size) * self.batch_size
        self.prefetch = int(prefetch)
        self.replicas = int(replicas)
        if self.replicas < 1 or self.batch_size % self.replicas:
            raise ValueError(f"replicas {replicas}: a divisor of the batch size {batch_size} is accepted")
        self._pool = None

    @property
    def steps_per_epoch(self) -> int:
        return -(-self.images_per_epoch // self.batch_size)

    def epoch_spec(self, epoch: int) -> DatasetSpec:
        """The spec that draws epoch ``epoch``'s images (its samples 0 … images_per_epoch - 1)."""
        return replace(self.spec, seed=epoch_seed(self.spec.seed, epoch), size=self.images_per_epoch)

    def tasks(self, first_epoch: int = 0):
        """``(epoch, start, stop)`` of each chunk, in training order, forever."""
        epoch = first_epoch
        while True:
            for start in range(0, self.images_per_epoch, self.chunk_images):
                yield epoch, start, min(start + self.chunk_images, self.images_per_epoch)
            epoch += 1

    def chunks(self, first_epoch: int = 0, keys=BATCH_KEYS):
        """``(epoch, arrays)`` of each chunk (:func:`draw`'s ``keys``), in training order, forever."""
        tasks = self.tasks(first_epoch)
        if self.prefetch == 0:
            for epoch, start, stop in tasks:
                yield epoch, draw(self.epoch_spec(epoch), start, stop, keys, self.replicas)
            return
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                self.processes, mp_context=multiprocessing.get_context("spawn"), initializer=_yield_to_training
            )
        pending = deque()
        try:
            while True:
                while len(pending) < self.prefetch + self.processes:
                    epoch, start, stop = next(tasks)
                    pending.append(
                        (epoch, self._pool.submit(draw, self.epoch_spec(epoch), start, stop, keys, self.replicas))
                    )
                epoch, future = pending.popleft()
                yield epoch, future.result()
        finally:  # a pipeline that is dropped (the end of a stage) leaves no work behind it
            for _, future in pending:
                future.cancel()

    def batches(self, columns: dict, first_epoch: int = 0):
        """Batches of transformed columns, forever.

        Parameters
        ----------
        columns : dict of str to (str, callable)
            Each model input or output name → the key of :func:`draw`'s arrays it is made of and
            the transform that turns a block of them into the float32 batch.
        first_epoch : int
            The epoch the stream starts at (a resumed run's next epoch).

        Yields
        ------
        tuple of ndarray
            One float32 array per column, in ``columns``' order.
        """
        keys = tuple(dict.fromkeys(key for key, _ in columns.values()))
        for _, arrays in self.chunks(first_epoch, keys):
            for a in range(0, len(arrays[keys[0]]), self.batch_size):
                block = slice(a, a + self.batch_size)
                yield tuple(
                    np.ascontiguousarray(transform(arrays[key][block]), dtype=np.float32)
                    for key, transform in columns.values()
                )

    def close(self) -> None:
        """Stop the drawing processes (chunks drawn ahead are dropped)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
