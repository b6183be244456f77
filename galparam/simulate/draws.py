"""Sampling: the random numbers of sample ``i`` depend only on ``(seed, i)``.

Candidate ``k`` of sample ``i`` takes its parameters from the stream
``SeedSequence(seed, spawn_key=(i, 0, k))``; the accepted candidate takes its noise from
``SeedSequence(seed, spawn_key=(i, 1))`` (:mod:`galparam.simulate.workers`); the stamp model's
centre, sky and PSF image take theirs from ``SeedSequence(seed, spawn_key=(i, 2, k))``, so a spec
without them draws the numbers it always did. The order of work, the number of workers, the
chunking and the sharding cannot change a byte of the result.
"""

from __future__ import annotations

import numpy as np

from galparam.schema import Draws
from galparam.specs import DRAW_ORDER, STAMP_DRAW_ORDER, DatasetSpec
from galparam.stamp_model import StampConfig, stamp_model_for

STREAM_PARAMS = 0
STREAM_NOISE = 1
STREAM_STAMP = 2


def candidate_deviates(seed: int, indices, attempts, *, stream: int = STREAM_PARAMS, count: int | None = None):
    """Uniform deviates in [0, 1) for candidate ``attempts[j]`` of sample ``indices[j]``.

    Returns
    -------
    ndarray of shape (len(indices), count), by default one column per entry of
    :data:`galparam.specs.DRAW_ORDER` (``stream`` :data:`STREAM_STAMP`: of ``STAMP_DRAW_ORDER``)
    """
    count = len(DRAW_ORDER) if count is None else count
    out = np.empty((len(indices), count), dtype=np.float64)
    for row, (i, k) in enumerate(zip(indices, attempts, strict=True)):
        bits = np.random.SeedSequence(seed, spawn_key=(int(i), stream, int(k))).generate_state(count, np.uint64)
        out[row] = (bits >> np.uint64(11)) * 2.0**-53
    return out


def draw_candidates(spec: DatasetSpec, indices, attempts) -> Draws:
    """Parameters of candidate ``attempts[j]`` of sample ``indices[j]`` under ``spec``'s priors.

    Returns
    -------
    Draws
        One row per candidate.
    """
    u = candidate_deviates(spec.seed, indices, attempts)
    flux, n, hlr, a, b, psf_fwhm, sigma = spec.parameters_of(u)
    stamp = None
    if spec.stamp_model:
        v = candidate_deviates(spec.seed, indices, attempts, stream=STREAM_STAMP, count=len(STAMP_DRAW_ORDER))
        dx, dy, sky = (prior.transform(v[:, j]) for j, prior in enumerate(spec.stamp_priors()))
        psf_index = np.minimum(np.floor(v[:, 3] * spec.psf_count), max(spec.psf_count - 1, 0))
        if spec.psf is not None:
            psf_fwhm = stamp_model_for(StampConfig.from_spec(spec)).psf_fwhm[psf_index.astype(np.int64)]
        stamp = np.column_stack([dx, dy, sky, psf_index])
    draws = Draws.from_columns(flux=flux, sersic_n=n, hlr=hlr, g1=a, g2=b, psf_fwhm=psf_fwhm, sigma=sigma)
    return Draws(draws.array, stamp)
