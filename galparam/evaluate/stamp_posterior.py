"""Posteriors of real cutouts: the stamp model's parameters (flux, index, radius, shear, centre and,
when fitted, the sky) under a flat prior, the fit's own box.

The sampler is :class:`~galparam.evaluate.posterior.Posterior`'s (importance sampling from the
fit's Laplace approximation, emcee where that falls short); the fit is
:class:`~galparam.evaluate.stamp_fit.StampFit`'s and the likelihood its own: the stamp model
(:func:`galparam.kspace.stamps.draw_stamps`) with the cutout's σ map, mask and gain. Each stamp is
sampled on its own (stamps differ in shape, scale and PSF).
"""

from __future__ import annotations

import numpy as np

from galparam.evaluate.likelihood import nll_and_weights
from galparam.evaluate.posterior import DRAWS, RENDER_DTYPE, ROUNDS, TARGET_ESS, Posterior, PosteriorPrior
from galparam.evaluate.stamp_fit import StampBox, StampFit, moments_start
from galparam.kspace.stamps import STAMP_PARAMETERS, draw_stamps, fit_fft_size, stamp_grid, wide_tables
from galparam.parameters import ParameterError
from galparam.stamp import Stamp

__all__ = ["StampPosterior"]

CHUNK = 512
"""Parameter sets drawn in one call of the stamp model."""


def stamp_prior(stamp: Stamp, *, fit_sky: bool) -> PosteriorPrior:
    """The flat prior of a stamp: its fit's box (:meth:`StampBox.around`), the centre within the
    searched offsets and, when fitted, the sky within its range."""
    box = StampBox.around(stamp, moments_start(stamp), fit_sky=fit_sky)
    galaxy = box.galaxy
    extra = [("dx", -box.offset_max, box.offset_max), ("dy", -box.offset_max, box.offset_max)]
    if box.sky is not None:
        extra.append(("sky", box.sky.low, box.sky.high))
    ranges = [(getattr(galaxy, name).low, getattr(galaxy, name).high) for name in ("flux", "sersic_n", "hlr")]
    return PosteriorPrior(*ranges, "disc", (0.0, galaxy.shear_max), extra=tuple(extra))


class StampPosterior(Posterior):
    """Posterior samples of each stamp's parameters (the module docstring says how).

    Parameters
    ----------
    fit_sky : bool
        Whether the sky is a parameter (default: held at 0, the stamps are sky-subtracted).
    target_ess, draws, rounds, mcmc, seed :
        As :class:`~galparam.evaluate.posterior.Posterior`'s.

    Attributes
    ----------
    names_ : tuple of str
        The parameters sampled (:data:`STAMP_PARAMETERS`, less the sky when it is held).
    fit_ : StampFit
        The fits whose maxima and inverse Fisher matrices start the sampling.
    mean_, std_, quantiles_, ess_, max_weight_, rhat_, method_, evaluations_, samples_ :
        As :class:`~galparam.evaluate.posterior.Posterior`'s, in the order of ``names_``; a stamp
        whose fit failed has NaN rows and the method ``failed``.
    """

    def __init__(
        self,
        *,
        fit_sky: bool = False,
        target_ess: int = TARGET_ESS,
        draws: int = DRAWS,
        rounds: int = ROUNDS,
        mcmc: bool = True,
        seed: int = 0,
    ):
        super().__init__(None, target_ess=target_ess, draws=draws, rounds=rounds, mcmc=mcmc, seed=seed)
        self.fit_sky = bool(fit_sky)

    def sample(self, stamps, *, indices=None, init=None) -> StampPosterior:
        """Sample each stamp's posterior.

        Parameters
        ----------
        stamps : sequence of Stamp
            The cutouts (:meth:`galparam.stamp.Stamp.from_arrays`).
        indices : array_like of int, optional
            The stamps' indices (default 0..N−1): a stamp's random numbers depend only on the
            seed and its index.
        init : ndarray of shape (N, 8), optional
            Starting points for the fits (:meth:`StampFit.fit`).

        Returns
        -------
        StampPosterior
            This sampler, its results in the attributes ending in ``_``.
        """
        stamps = list(stamps)
        indices = np.arange(len(stamps)) if indices is None else np.asarray(indices, dtype=np.int64)
        self.fit_ = StampFit(fit_sky=self.fit_sky).fit(stamps, init)
        free = np.r_[np.ones(7, dtype=bool), self.fit_sky]
        self.names_ = tuple(name for name, used in zip(STAMP_PARAMETERS, free, strict=True) if used)
        K = len(self.names_)
        results = []
        for b, stamp in enumerate(stamps):
            theta, cov = self.fit_.theta_[b], self.fit_.covariance_[b]
            if not np.isfinite(theta).all():
                results.append(None)
                continue
            self.prior = stamp_prior(stamp, fit_sky=self.fit_sky)
            self.laplace_mean_ = theta[free][None]
            self.laplace_cov_ = cov[np.ix_(free, free)][None]
            self._run(indices[b : b + 1], _StampTarget(self.prior, stamp, free))
            results.append(self._results())
        self._gather(results, K)
        return self

    _KEPT = ("mean_", "std_", "quantiles_", "ess_", "max_weight_", "rhat_", "method_", "evaluations_")

    def _results(self) -> dict:
        return {name: getattr(self, name)[0] for name in self._KEPT} | {"samples_": self.samples_[0]}

    def _gather(self, results, K) -> None:
        """The stamps' results as arrays, NaN (method ``failed``) where a fit failed."""
        empty = {
            "mean_": np.full(K, np.nan),
            "std_": np.full(K, np.nan),
            "quantiles_": np.full((5, K), np.nan),
            "ess_": 0.0,
            "max_weight_": np.nan,
            "rhat_": np.full(K, np.nan),
            "method_": "failed",
            "evaluations_": 0,
            "samples_": (np.empty((0, K)), np.empty(0)),
        }
        filled = [r if r is not None else empty for r in results]
        for name in self._KEPT:
            values = [r[name] for r in filled]
            setattr(self, name, np.array(values, dtype=object if name == "method_" else None))
        self.samples_ = [r["samples_"] for r in filled]
        self.laplace_mean_ = self.fit_.theta_
        self.laplace_cov_ = self.fit_.covariance_


class _StampTarget:
    """The log posterior density of one stamp's parameter sets: the flat prior and the stamp
    model's likelihood with the cutout's σ map, mask and gain, its models drawn in
    :data:`~galparam.evaluate.posterior.RENDER_DTYPE` as the datasets' posteriors draw theirs (the
    fit that places the proposal stays float64)."""

    def __init__(self, prior: PosteriorPrior, stamp: Stamp, free):
        self.prior, self.stamp, self.free = prior, stamp, free
        self.tables = wide_tables()
        self.largest = fit_fft_size(stamp.frame)

    def __call__(self, theta, rows) -> np.ndarray:
        log_p = self.prior.log_density(theta)
        keep = np.flatnonzero(np.isfinite(log_p))
        for a in range(0, len(keep), CHUNK):
            part = keep[a : a + CHUNK]
            log_p[part] += self._log_likelihood(theta[part])
        return log_p

    def _log_likelihood(self, theta) -> np.ndarray:
        full = np.zeros((len(theta), len(STAMP_PARAMETERS)))
        full[:, self.free] = theta
        try:
            return self._draw_and_compare(full)
        except ParameterError:  # some galaxy reaches beyond the tables: each on its own, those out
            out = np.full(len(full), -np.inf)
            for m, row in enumerate(full):
                try:
                    out[m] = self._draw_and_compare(row[None])[0]
                except ParameterError:
                    pass
            return out

    def _draw_and_compare(self, full) -> np.ndarray:
        stamp = self.stamp
        grid = stamp_grid(self.tables, stamp.frame, full, max_size=self.largest)
        model = draw_stamps(self.tables, stamp.frame, full, grid=grid, compute_dtype=RENDER_DTYPE)
        gain = stamp.gain
        nll = nll_and_weights(
            stamp.image[None], model, stamp.sigma[None], poisson=gain is not None, gain=gain, mask=stamp.mask[None]
        )[0]
        return -nll
