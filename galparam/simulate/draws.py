"""Sampling: the random numbers of sample ``i`` depend only on ``(seed, i)``.

Candidate ``k`` of sample ``i`` takes its parameters from the stream
``SeedSequence(seed, spawn_key=(i, 0, k))``; the accepted candidate takes its noise from
``SeedSequence(seed, spawn_key=(i, 1))`` (:mod:`galparam.simulate.workers`). So the order of work,
the number of workers, the chunking and the sharding cannot change a byte of the result.
"""

from __future__ import annotations

import numpy as np

from galparam.schema import Draws
from galparam.specs import DRAW_ORDER, DatasetSpec

STREAM_PARAMS = 0
STREAM_NOISE = 1


def candidate_deviates(seed: int, indices, attempts) -> np.ndarray:
    """Uniform deviates in [0, 1) for candidate ``attempts[j]`` of sample ``indices[j]``.

    Returns
    -------
    ndarray of shape (len(indices), 7), one column per entry of :data:`galparam.specs.DRAW_ORDER`
    """
    out = np.empty((len(indices), len(DRAW_ORDER)), dtype=np.float64)
    for row, (i, k) in enumerate(zip(indices, attempts, strict=True)):
        bits = np.random.SeedSequence(seed, spawn_key=(int(i), STREAM_PARAMS, int(k))).generate_state(
            len(DRAW_ORDER), np.uint64
        )
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
    flux, n, hlr, a, b, psf_fwhm, sigma = (prior.transform(u[:, j]) for j, prior in enumerate(spec.draw_priors))
    if spec.shear_form == ("shear_amplitude", "shear_angle"):
        a, b = a * np.cos(2 * b), a * np.sin(2 * b)
    return Draws.from_columns(flux=flux, sersic_n=n, hlr=hlr, g1=a, g2=b, psf_fwhm=psf_fwhm, sigma=sigma)
