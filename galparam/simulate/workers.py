"""Rendering candidates in worker processes: the SNR window, noise, and the split of work.

With the GalSim renderer worker w renders the Sérsic indices assigned to w (each worker builds
GalSim's tables for its share of the indices only); with the k-space renderer each worker draws
an equal share of the candidates.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

from galparam.geometry import Geometry
from galparam.jobs import resolve_jobs
from galparam.render import GalSimRenderer, renderer_for
from galparam.schema import Draws
from galparam.simulate.draws import STREAM_NOISE
from galparam.specs import DatasetSpec
from galparam.stamp_model import StampConfig, stamp_model_for


@dataclass(frozen=True)
class RenderConfig:
    """What a worker needs to turn candidates into images."""

    seed: int
    geometry: Geometry
    poisson_noise: bool
    snr_window: tuple | None
    psf_varies: bool  # each image's PSF stamp is returned (also for every stamp-model spec)
    renderer: str
    stamp: StampConfig | None = None

    @classmethod
    def from_spec(cls, spec: DatasetSpec) -> RenderConfig:
        return cls(
            spec.seed,
            spec.geometry,
            spec.poisson_noise,
            spec.snr_window,
            spec.psf_varies or spec.stamp_model,
            spec.renderer,
            StampConfig.from_spec(spec),
        )


@dataclass
class Rendered:
    """Outcome of rendering candidates: SNR of each, and images of the accepted ones."""

    accepted: np.ndarray  # (m,) bool
    snr: np.ndarray  # (m,) float64
    img: np.ndarray  # (a, S, S) float32, accepted rows only, in candidate order
    img_nonoise: np.ndarray
    psf_img: np.ndarray | None


class CandidateRenderer:
    """Renders candidates, applies the SNR window and adds noise to the accepted ones (with the
    spec's renderer: all candidates in one call, or GalSim one at a time)."""

    def __init__(self, config: RenderConfig, renderer=None):
        self.config = config
        if config.stamp is not None:
            self.stamp_model, self.renderer = stamp_model_for(config.stamp), None
        else:
            self.stamp_model, self.renderer = None, renderer or renderer_for(config.renderer, config.geometry)

    def noiseless(self, draws: Draws) -> np.ndarray:
        """(m, S, S) float32 noiseless images of the candidates (the stamp model's: without the sky)."""
        if self.stamp_model is not None:
            return self.stamp_model.images(draws).astype(np.float32)
        return self.renderer.images(*draws.labels.T, draws.psf_fwhm)

    def __call__(self, indices: np.ndarray, draws: Draws) -> Rendered:
        cfg = self.config
        clean = self.noiseless(draws)
        snr = np.sqrt(np.sum(clean.reshape(len(clean), -1).astype(np.float64) ** 2, axis=1)) / draws.sigma
        if cfg.snr_window is None:
            accepted = np.ones(len(draws), dtype=bool)
        else:
            accepted = (cfg.snr_window[0] <= snr) & (snr <= cfg.snr_window[1])
        rows = np.flatnonzero(accepted)
        img = np.empty((len(rows), *cfg.geometry.shape), np.float32)
        for out, row in enumerate(rows):
            img[out] = self.add_noise(int(indices[row]), clean[row], draws.sigma[row])
        if self.stamp_model is not None:  # the SNR and the noise are the galaxy's; the sky is a level
            sky = draws.stamp_column("sky").astype(np.float32)[:, None, None]
            clean += sky
            img += sky[rows]
        psf_img = None
        if cfg.psf_varies and self.stamp_model is not None:
            psf_img = self.stamp_model.psf_rows(draws[rows])
        elif cfg.psf_varies:
            psf_img = self.renderer.psf_images(draws.psf_fwhm[rows])
        return Rendered(accepted, snr, img, clean[rows], psf_img)

    def add_noise(self, index: int, image: np.ndarray, sigma: float) -> np.ndarray:
        """Poisson noise on the galaxy counts, then Gaussian read noise of level ``sigma``."""
        rng = np.random.default_rng(np.random.SeedSequence(self.config.seed, spawn_key=(index, STREAM_NOISE)))
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


def _render(config: RenderConfig, indices, draws: Draws) -> Rendered:
    return CandidateRenderer(config)(indices, draws)


class Workers:
    """``jobs`` worker processes (see the module docstring for how work is split).

    Keeping an index on one worker means each worker builds GalSim's tables for its share of the
    indices only, once for as long as the workers live. Pass one ``Workers`` to several
    :func:`~galparam.simulate.simulate` calls to share that work; ``jobs=1`` renders in this process.
    """

    def __init__(self, jobs: int | None = None):
        self.jobs = resolve_jobs(jobs)
        ctx = multiprocessing.get_context("spawn")
        self._pools = [ProcessPoolExecutor(1, mp_context=ctx) for _ in range(self.jobs if self.jobs > 1 else 0)]

    def render(self, config: RenderConfig, indices: np.ndarray, draws: Draws) -> Rendered:
        """Render candidates ``draws`` of samples ``indices``; results in the order given."""
        if not self._pools:
            return _render(config, indices, draws)
        if config.renderer == GalSimRenderer.NAME:
            owner = np.round(draws.sersic_n * 1e6).astype(np.int64) % self.jobs
        else:
            owner = np.arange(len(draws)) * self.jobs // len(draws)
        parts = []
        for w, pool in enumerate(self._pools):
            rows = np.flatnonzero(owner == w)
            if rows.size:
                parts.append((rows, pool.submit(_render, config, indices[rows], draws[rows])))
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
