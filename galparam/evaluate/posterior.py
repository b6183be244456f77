"""Posteriors of (flux, sersic_n, hlr, g1, g2) under a stated prior, from the batched forward model.

The sampler is importance sampling from the fit's Laplace approximation, falling back to MCMC
where that is not good enough:

1. The batched fit (:class:`~galparam.evaluate.fit.BatchedFit`, within the prior's box) gives
   each image's maximum θ̂ and inverse Fisher matrix Σ.
2. :data:`DRAWS` parameter sets are drawn from a multivariate Student-t (ν = :data:`NU`) at θ̂
   with scale Σ (a t, not a Gaussian: its tails keep the weights bounded where the posterior's
   are heavier than the Laplace approximation's; on a Gaussian posterior 84 % of the draws are
   effective), each weighted by prior × likelihood / proposal, all images' draws rendered together.
3. Where the effective sample size (ESS, (Σw)²/Σw²) is below the target, the proposal moves to the
   weighted mean and covariance of the draws so far (the weights clipped where few draws count:
   :func:`_moved_proposal`) and draws again (population Monte Carlo), up to :data:`ROUNDS` times.
   Every draw is weighted against all the rounds' proposals as one mixture (the deterministic
   mixture of multiple importance sampling, as in Cornuet et al. 2012's AMIS), so a poor first
   proposal's few lucky draws do not hold all the weight.
4. Where it still is, emcee's affine-invariant ensemble sampler runs for all such images in
   lockstep (:func:`lockstep_chains`: each image's chain is emcee's own, every step of all of
   them rendered together) from the weighted draws until its ESS (the walkers'
   draws over the integrated autocorrelation time) reaches the target, or :data:`MCMC_STEPS` steps.

Why this choice: at the SNRs galparam's data have, the posterior of a 64² galaxy is close to its
Laplace approximation, so importance sampling needs ~1,000–2,000 renders an image for 500 effective
samples, where an ensemble sampler needed 80,000–130,000 (32 walkers, 20 autocorrelation times and
the ESS; measured on v2's and v3's faint prior draws); NUTS over the
``keras.ops`` renderer would need the JAX backend and compiles per grid. The importance weights are
exact (no approximation survives in the result). Where the Laplace approximation is poor (faint
galaxies whose fit ends on the box's edge), the rounds find the posterior from it in 2,000–6,000
renders; the MCMC fallback (≤ 1 % of v2's and v3's prior draws) covers what they do not.

The prior (:class:`PosteriorPrior`) is a dataset spec's own (uniform ranges, the discretized index,
the shear's amplitude-and-angle prior, whose density in (g1, g2) is ∝ 1/|g|, and the SNR window
the simulator rejects outside of) or a flat box. A discretized index is sampled exactly: a
continuous index, uniform over the grid's cells, is drawn on the grid value at its cell's centre.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import emcee
import numpy as np
from emcee.ensemble import walkers_independent
from scipy.special import gammaln

from galparam.errors import GalparamError
from galparam.evaluate.fit import BatchedFit, ConvergenceWarning, check_images
from galparam.evaluate.fitbox import FitBox
from galparam.evaluate.likelihood import nll_and_weights
from galparam.parameters import LABEL_NAMES, sersic_grid
from galparam.render import KSpaceRenderer, renderer_for

__all__ = [
    "Posterior",
    "PosteriorPrior",
    "QUANTILES",
    "QUANTILE_NAMES",
    "SHEAR_PRIORS",
    "equal_weight_samples",
    "pit_values",
    "lockstep_chains",
]

NU = 5.0
"""Degrees of freedom of the Student-t proposal."""

DRAWS = 1024
"""Proposal draws an image gets in each importance-sampling round."""

ROUNDS = 6
"""Importance-sampling rounds at most (the first from the Laplace approximation)."""

ADAPT_DRAWS = 50
"""Draws a proposal's move is estimated from at least (:func:`_moved_proposal`)."""

TARGET_ESS = 500
"""Effective samples an image's posterior should have."""

WALKERS = 32
"""emcee's walkers (the fallback)."""

MCMC_CHUNK = 250
"""Steps emcee runs between checks of its effective sample size."""

MCMC_STEPS = 4000
"""Steps emcee runs at most."""

MIN_TAUS = 20
"""emcee's chains are kept at least this many autocorrelation times long."""

MAX_RHAT = 1.05
"""emcee's chains run on until every parameter's split-R̂ is below this."""

QUANTILES = (0.025, 0.16, 0.5, 0.84, 0.975)
"""The posterior quantiles reported (the median and the 68 and 95 % central intervals)."""

QUANTILE_NAMES = ("q025", "q16", "median", "q84", "q975")
"""The names of :data:`QUANTILES` in tables (column suffixes)."""

SHEAR_PRIORS = ("amplitude", "box", "disc")
"""The shear priors: |g| uniform in a range and its angle uniform (density ∝ 1/|g| in (g1, g2)),
g1 and g2 each uniform in a range, or uniform on the disc |g| ≤ a maximum."""

RENDER_CHUNK = 128
"""Parameter sets rendered in one call: the renderer's k-space planes and FFTs of 128 galaxies
stay within the caches (2,048 a call was 40 % slower, its arrays freshly paged in each time)."""

RENDER_DTYPE = np.float32
"""The precision the likelihood's models are drawn in. Float32 is within ~2e-7 of the peak of
float64 (:func:`galparam.kspace.numpy_renderer.render_numpy`), which moves a weight's log by
~1e-3 at most and the posterior means by ~1e-6 σ (measured on 20 v2 draws), at 60 % of float64's
time; the fit that places the proposal stays in float64."""


@dataclass(frozen=True)
class PosteriorPrior:
    """A prior on (flux, sersic_n, hlr, g1, g2): uniform ranges, an optional discretized index,
    one of :data:`SHEAR_PRIORS` and an optional SNR window (the simulator's rejection).

    Parameters
    ----------
    flux, sersic_n, hlr : pair of float
        The uniform ranges (counts, -, arcsec).
    shear : str
        One of :data:`SHEAR_PRIORS`.
    shear_range : tuple of float
        ``amplitude``: (low, high) of |g|; ``box``: (g1 low, g1 high, g2 low, g2 high); ``disc``:
        (0, maximum |g|).
    sersic_steps : int
        0 for a uniform index; else the index takes ``sersic_steps`` equally spaced values from
        low to high (:func:`galparam.parameters.sersic_grid`).
    snr_window : pair of float, optional
        Galaxies whose noiseless SNR (√Σμ² / σ) falls outside are not in the prior.
    extra : tuple of (str, float, float)
        Further parameters after the five, each uniform in its range (a stamp's centre and sky).
    """

    flux: tuple
    sersic_n: tuple
    hlr: tuple
    shear: str
    shear_range: tuple
    sersic_steps: int = 0
    snr_window: tuple | None = None
    extra: tuple = ()

    def __post_init__(self):
        if self.shear not in SHEAR_PRIORS:
            raise GalparamError(f"shear prior {self.shear!r}: accepted {', '.join(SHEAR_PRIORS)}")
        for name in ("flux", "sersic_n", "hlr"):
            low, high = map(float, getattr(self, name))
            if not low < high:
                raise GalparamError(f"posterior prior: {name} [{low:g}, {high:g}] is empty or fixed; give low < high")
            object.__setattr__(self, name, (low, high))
        object.__setattr__(self, "shear_range", tuple(float(v) for v in self.shear_range))
        object.__setattr__(self, "extra", tuple((str(n), float(lo), float(hi)) for n, lo, hi in self.extra))

    @property
    def names(self) -> tuple[str, ...]:
        """The parameters: the five labels, then the extra ones."""
        return (*LABEL_NAMES, *(name for name, _, _ in self.extra))

    def widths(self) -> np.ndarray:
        """Each parameter's range (the shear's: its largest |g|)."""
        ranges = [self.flux, self.sersic_n, self.hlr]
        return np.array([hi - lo for lo, hi in ranges] + [self.shear_max] * 2 + [hi - lo for _, lo, hi in self.extra])

    @classmethod
    def from_spec(cls, spec) -> PosteriorPrior:
        """A dataset spec's prior. A galaxy parameter the spec fixes (a fixed-parameter test set)
        gets the range :meth:`FitBox.from_spec` searches, flat (a prior that is the truth would
        tell the answer); a fixed shear the box's disc."""
        box = FitBox.from_spec(spec)
        priors = spec.priors
        ranges = {}
        for name in ("flux", "sersic_n", "hlr"):
            prior = priors[name]
            ranges[name] = (
                (prior.low, prior.high) if not prior.is_fixed else (getattr(box, name).low, getattr(box, name).high)
            )
        n_prior = priors["sersic_n"]
        steps = n_prior.steps if n_prior.kind == "discretized" else 0
        a, b = spec.shear_form
        if a == "shear_amplitude" and spec.varies(a):
            shear, shear_range = "amplitude", (priors[a].low, priors[a].high)
        elif a == "g1" and (spec.varies("g1") or spec.varies("g2")):
            shear, shear_range = "box", (priors[a].low, priors[a].high, priors[b].low, priors[b].high)
        else:
            shear, shear_range = "disc", (0.0, box.shear_max)
        window = tuple(spec.snr_window) if spec.snr_window else None
        return cls(**ranges, shear=shear, shear_range=shear_range, sersic_steps=steps, snr_window=window)

    @classmethod
    def flat(cls, box: FitBox) -> PosteriorPrior:
        """Uniform in a fit box: its ranges and its shear disc."""
        ranges = [(getattr(box, name).low, getattr(box, name).high) for name in ("flux", "sersic_n", "hlr")]
        return cls(*ranges, "disc", (0.0, box.shear_max))

    def to_dict(self) -> dict:
        """The prior as JSON (what a posterior file records)."""
        return {
            "flux": list(self.flux),
            "sersic_n": list(self.sersic_n),
            "sersic_steps": self.sersic_steps,
            "hlr": list(self.hlr),
            "shear": self.shear,
            "shear_range": list(self.shear_range),
            "snr_window": list(self.snr_window) if self.snr_window else None,
            **({"extra": [list(e) for e in self.extra]} if self.extra else {}),
        }

    @property
    def shear_max(self) -> float:
        """The largest |g| the prior holds."""
        if self.shear == "box":
            g1a, g1b, g2a, g2b = self.shear_range
            return float(np.hypot(max(abs(g1a), abs(g1b)), max(abs(g2a), abs(g2b))))
        return self.shear_range[1]

    def fit_box(self) -> FitBox:
        """The fit box holding the prior's support (where the Laplace approximation is found)."""
        return FitBox(self.flux, self.sersic_n, self.hlr, shear_max=min(self.shear_max, 0.95))

    @property
    def sersic_step(self) -> float:
        """The discretized index's spacing (0 for a uniform index)."""
        low, high = self.sersic_n
        return (high - low) / (self.sersic_steps - 1) if self.sersic_steps else 0.0

    def n_support(self) -> tuple[float, float]:
        """Where the continuous index is uniform: the range, widened by half a cell each side
        for a discretized index."""
        low, high = self.sersic_n
        return low - self.sersic_step / 2, high + self.sersic_step / 2

    def snap(self, n) -> np.ndarray:
        """The index values drawn: the grid value of each continuous index's cell (unchanged
        for a uniform index)."""
        n = np.asarray(n, dtype=np.float64)
        if not self.sersic_steps:
            return n
        cell = np.clip(np.rint((n - self.sersic_n[0]) / self.sersic_step), 0, self.sersic_steps - 1).astype(np.int64)
        return sersic_grid(*self.sersic_n, self.sersic_steps)[cell]

    def log_density(self, theta) -> np.ndarray:
        """The log prior density of (flux, continuous index, hlr, g1, g2, extra...) (..., K), up to
        a constant, −inf outside the support (the SNR window aside: it needs the image)."""
        theta = np.asarray(theta, dtype=np.float64)
        flux, n, hlr, g1, g2 = np.moveaxis(theta[..., :5], -1, 0)
        n_low, n_high = self.n_support()
        inside = (self.flux[0] <= flux) & (flux <= self.flux[1])
        inside &= (n_low <= n) & (n < n_high) & (self.hlr[0] <= hlr) & (hlr <= self.hlr[1])
        for k, (_, low, high) in enumerate(self.extra):
            inside &= (low <= theta[..., 5 + k]) & (theta[..., 5 + k] <= high)
        amplitude = np.hypot(g1, g2)
        out = np.zeros(flux.shape)
        if self.shear == "box":
            g1a, g1b, g2a, g2b = self.shear_range
            inside &= (g1a <= g1) & (g1 <= g1b) & (g2a <= g2) & (g2 <= g2b)
        else:
            low, high = self.shear_range
            inside &= (low <= amplitude) & (amplitude < high)
            if self.shear == "amplitude":
                with np.errstate(divide="ignore"):
                    out = -np.log(amplitude)
        return np.where(inside, out, -np.inf)

    def in_window(self, snr) -> np.ndarray:
        """Whether each SNR is inside the window (all True without one)."""
        snr = np.asarray(snr)
        if self.snr_window is None:
            return np.ones(snr.shape, dtype=bool)
        return (self.snr_window[0] <= snr) & (snr <= self.snr_window[1])


def _t_draws(rng, mean, scale_chol, size):
    """``size`` draws (size, K) of the multivariate Student-t (ν = :data:`NU`)."""
    z = rng.standard_normal((size, len(mean))) @ scale_chol.T
    return mean + z / np.sqrt(rng.chisquare(NU, size) / NU)[:, None]


def _t_logpdf(x, mean, scale_chol):
    """Log density of the multivariate Student-t at x (M, K)."""
    K = len(mean)
    solved = np.linalg.solve(scale_chol, (x - mean).T)
    delta2 = np.sum(solved**2, axis=0)
    log_det = np.sum(np.log(np.diag(scale_chol)))
    const = gammaln((NU + K) / 2) - gammaln(NU / 2) - K / 2 * np.log(NU * np.pi) - log_det
    return const - (NU + K) / 2 * np.log1p(delta2 / NU)


def _mixture_logpdf(x, rounds) -> np.ndarray:
    """Log density at x (M, K) of all rounds' proposals as one mixture, each weighted by its share
    of the draws (the deterministic-mixture weights of multiple importance sampling: a draw counts
    against every proposal that could have made it, so one round's poor proposal no longer gives
    a few of its draws all the weight)."""
    total = sum(count for _, count in rounds)
    parts = [np.log(count / total) + _t_logpdf(x, *proposal) for proposal, count in rounds]
    return np.logaddexp.reduce(parts, axis=0) if len(parts) > 1 else parts[0]


def _weights(log_w) -> np.ndarray:
    """Normalized weights of log weights (all −inf: all zero)."""
    top = np.max(log_w) if len(log_w) else -np.inf
    if not np.isfinite(top):
        return np.zeros(len(log_w))
    w = np.exp(log_w - top)
    return w / w.sum()


def _ess(weights) -> float:
    """Kish's effective sample size of normalized weights."""
    total = float(np.sum(weights**2))
    return 1.0 / total if total > 0 else 0.0


def _weighted_quantiles(values, weights, quantiles) -> np.ndarray:
    """Quantiles (Q, K) of weighted samples (M, K): the inverse of the weighted CDF, interpolated
    between the sorted samples' mid-cumulative weights."""
    out = np.empty((len(quantiles), values.shape[1]))
    for k in range(values.shape[1]):
        order = np.argsort(values[:, k], kind="stable")
        v, w = values[order, k], weights[order]
        keep = w > 0
        v, w = v[keep], w[keep]
        cum = np.cumsum(w) - w / 2
        out[:, k] = np.interp(quantiles, cum, v)
    return out


def _split_rhat(chains) -> np.ndarray:
    """Split-R̂ (Gelman et al.) of chains (steps, chains, K), each chain cut in halves."""
    steps = chains.shape[0] // 2
    halves = np.concatenate([chains[:steps], chains[steps : 2 * steps]], axis=1)
    means = halves.mean(axis=0)
    within = halves.var(axis=0, ddof=1).mean(axis=0)
    between = steps * means.var(axis=0, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.sqrt(((steps - 1) / steps * within + between / steps) / within)


class Posterior:
    """Posterior samples of (flux, sersic_n, hlr, g1, g2) for many images, under a stated prior
    (the module docstring says how).

    Parameters
    ----------
    prior : PosteriorPrior
        The prior (:meth:`PosteriorPrior.from_spec` for a dataset's own).
    poisson : bool
        Whether the images have Poisson noise on the galaxy light.
    renderer : galparam.render.KSpaceRenderer, optional
        The forward model (default the reference geometry's).
    target_ess : int
        Effective samples wanted per image.
    draws : int
        Importance-sampling draws an image gets per round.
    rounds : int
        Importance-sampling rounds at most before the MCMC fallback.
    mcmc : bool
        Whether images whose importance sampling stays below the target fall back to emcee.
    seed : int
        Random seed; an image's draws depend only on it and on the image's index.

    Attributes
    ----------
    mean_, std_ : ndarray of shape (B, K)
        Posterior means and standard deviations of the prior's parameters (:attr:`PosteriorPrior.names`:
        K = 5, or more with a stamp's centre and sky).
    quantiles_ : ndarray of shape (B, len(QUANTILES), K)
        The posterior quantiles :data:`QUANTILES`.
    ess_ : ndarray of shape (B,)
        Effective sample size.
    max_weight_ : ndarray of shape (B,)
        The largest normalized importance weight (1 / number of samples for MCMC).
    rhat_ : ndarray of shape (B, K)
        Split-R̂ of the MCMC chains (NaN for importance sampling).
    method_ : ndarray of shape (B,), str
        ``importance`` or ``mcmc``.
    evaluations_ : ndarray of shape (B,), int
        Likelihood evaluations spent.
    laplace_mean_, laplace_cov_ : ndarray (B, K), (B, K, K)
        The fit's maximum and inverse Fisher matrix (the Laplace approximation).
    samples_ : list of (ndarray (M, K), ndarray (M,))
        Each image's samples (the index on its grid) and normalized weights.
    """

    def __init__(
        self,
        prior: PosteriorPrior,
        *,
        poisson: bool = True,
        renderer=None,
        target_ess: int = TARGET_ESS,
        draws: int = DRAWS,
        rounds: int = ROUNDS,
        mcmc: bool = True,
        seed: int = 0,
    ):
        self.prior = prior
        self.poisson = bool(poisson)
        self.renderer = renderer or renderer_for(KSpaceRenderer.NAME)
        self.target_ess = int(target_ess)
        self.draws = int(draws)
        self.rounds = int(rounds)
        self.mcmc = bool(mcmc)
        self.seed = int(seed)

    # -- the model -------------------------------------------------------------------------------
    def laplace(self, images, psf_fwhm, sigma, init=None):
        """Each image's Laplace approximation: the fit's maximum (B, 5) and inverse Fisher matrix (B, 5, 5)."""
        fitter = BatchedFit(box=self.prior.fit_box(), poisson=self.poisson, renderer=self.renderer)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # the weights correct a poor start
            fitter.fit(images, psf_fwhm, sigma, init)
        return fitter.theta_, fitter.covariance_

    def log_likelihood(self, images, psf_fwhm, sigma, theta) -> np.ndarray:
        """log L (M,) of parameter sets theta (M, 5) (the index on its grid) for the images (M, S, S)
        they belong to, each set drawn on its own grid, with the SNR window's cut (−inf outside)."""
        out = np.empty(len(theta))
        for a in range(0, len(theta), RENDER_CHUNK):
            rows = slice(a, a + RENDER_CHUNK)
            model = self.renderer.images(*theta[rows].T, psf_fwhm[rows], dtype=RENDER_DTYPE).astype(np.float64)
            nll = nll_and_weights(images[rows], model, sigma[rows], poisson=self.poisson)[0]
            snr = np.sqrt(np.sum(model.reshape(len(model), -1) ** 2, axis=1)) / sigma[rows]
            out[rows] = np.where(self.prior.in_window(snr), -nll, -np.inf)
        return out

    def _log_target(self, images, psf_fwhm, sigma, theta, rows) -> np.ndarray:
        """log prior + log likelihood (M,) of continuous-index parameter sets theta (M, 5), set m
        for image ``rows[m]``."""
        log_p = self.prior.log_density(theta)
        keep = np.flatnonzero(np.isfinite(log_p))
        if len(keep):
            t = theta[keep].copy()
            t[:, 1] = self.prior.snap(t[:, 1])
            r = rows[keep]
            log_p[keep] += self.log_likelihood(images[r], psf_fwhm[r], sigma[r], t)
        return log_p

    # -- sampling ------------------------------------------------------------------------------
    def sample(self, images, psf_fwhm, sigma, *, indices=None, init=None) -> Posterior:
        """Sample each image's posterior.

        Parameters
        ----------
        images : ndarray of shape (B, S, S)
            The observed images, counts.
        psf_fwhm, sigma : array_like of shape (B,) or scalars
            Each image's PSF FWHM (arcsec) and Gaussian noise (counts).
        indices : array_like of int (B,), optional
            The images' indices in their dataset (default 0..B−1): an image's random numbers
            depend only on the seed and its index, so the same image gets the same samples
            whatever the batch it is in.
        init : ndarray of shape (B, 5), optional
            Starting points for the fit (e.g. a network's estimates).

        Returns
        -------
        Posterior
            This sampler, its results in the attributes ending in ``_``.

        Raises
        ------
        GalparamError
            Images of another shape, NaN values, a PSF FWHM or σ outside its range.
        """
        images, psf_fwhm, sigma, init = check_images(images, psf_fwhm, sigma, init, self.renderer.geometry.shape)
        B = len(images)
        indices = np.arange(B) if indices is None else np.asarray(indices, dtype=np.int64)
        if indices.shape != (B,):
            raise GalparamError(f"indices of shape {indices.shape}: expected ({B},)")
        self.laplace_mean_, self.laplace_cov_ = self.laplace(images, psf_fwhm, sigma, init)
        self._run(indices, lambda theta, rows: self._log_target(images, psf_fwhm, sigma, theta, rows))
        return self

    def _run(self, indices, log_target) -> None:
        """Importance sampling from the Laplace approximations (:attr:`laplace_mean_`,
        :attr:`laplace_cov_`), then the summaries (:meth:`_finish`). ``log_target(theta, rows)``:
        the log posterior density (M,), up to a constant, of parameter sets theta (M, K), set m
        for image ``rows[m]``."""
        B = len(indices)
        rngs = [np.random.default_rng([self.seed, int(i)]) for i in indices]
        thetas = [np.empty((0, len(self.prior.names))) for _ in range(B)]  # per image: all its draws
        log_targets = [np.empty(0) for _ in range(B)]  # and their log prior × likelihood
        log_weights = [np.empty(0) for _ in range(B)]  # and their log weights against all rounds' proposals
        used = [[] for _ in range(B)]  # per image: (proposal, draws) of each round
        evaluations = np.zeros(B, dtype=np.int64)
        proposals = [self._first_proposal(b) for b in range(B)]
        ess = np.zeros(B)
        wanted = np.full(B, self.draws)
        for _ in range(self.rounds):
            active = np.flatnonzero(ess < self.target_ess)
            if not len(active):
                break
            theta = [_t_draws(rngs[b], *proposals[b], int(wanted[b])) for b in active]
            rows = np.repeat(active, wanted[active])
            log_p = np.split(log_target(np.concatenate(theta), rows), np.cumsum(wanted[active])[:-1])
            evaluations[active] += wanted[active]
            for t, lp, b in zip(theta, log_p, active, strict=True):
                used[b].append((proposals[b], len(t)))
                thetas[b], log_targets[b] = np.concatenate([thetas[b], t]), np.concatenate([log_targets[b], lp])
                log_weights[b] = log_targets[b] - _mixture_logpdf(thetas[b], used[b])
                weights = _weights(log_weights[b])
                ess[b] = _ess(weights)
                if ess[b] < self.target_ess:
                    proposals[b] = _moved_proposal(thetas[b], weights, proposals[b])
                    wanted[b] = _next_round(ess[b], evaluations[b], self.target_ess, self.draws)
        self._finish(log_target, list(zip(thetas, log_weights, strict=True)), ess, evaluations, rngs)

    def _first_proposal(self, b):
        """The Laplace approximation as a t's (mean, scale's Cholesky factor); where the image does
        not constrain θ, a scale of a tenth of the prior's widths."""
        mean = self.laplace_mean_[b].copy()
        cov = self.laplace_cov_[b]
        try:
            chol = np.linalg.cholesky(cov)
        except np.linalg.LinAlgError:
            chol = None
        if chol is None or not np.isfinite(chol).all():
            chol = np.diag(self.prior.widths() / 10)
        return mean, chol

    def _finish(self, log_target, drawn, ess, evaluations, rngs) -> None:
        """Summaries of the weighted draws (``drawn``: per image its draws (M, K) and their log
        weights (M,)); the MCMC fallback where they fall short."""
        B, K = len(drawn), len(self.prior.names)
        self.samples_ = []
        self.method_ = np.full(B, "importance", dtype=object)
        self.rhat_ = np.full((B, K), np.nan)
        for b in range(B):
            t_all, log_w = drawn[b]
            weights = _weights(log_w)
            keep = weights > 0
            t = t_all[keep].copy()
            t[:, 1] = self.prior.snap(t[:, 1])
            self.samples_.append((t, weights[keep]))
        short = np.flatnonzero(ess < self.target_ess) if self.mcmc else np.array([], dtype=np.int64)
        if len(short):
            chains, steps = self._mcmc(log_target, [drawn[b] for b in short], rngs, short)
            for r, b in enumerate(short):
                kept = chains[r]  # (steps, walkers, K)
                if kept is None:  # no start inside the prior: the importance draws stand, their ESS says so
                    continue
                flat = kept.reshape(-1, K).copy()
                flat[:, 1] = self.prior.snap(flat[:, 1])
                self.samples_[b] = (flat, np.full(len(flat), 1.0 / len(flat)))
                self.method_[b] = "mcmc"
                self.rhat_[b] = _split_rhat(kept)
                ess[b] = _chain_ess(kept)
                evaluations[b] += steps[r] * WALKERS
        self.ess_ = ess
        self.evaluations_ = evaluations
        self.mean_ = np.array([w @ t for t, w in self.samples_])
        self.std_ = np.array(
            [np.sqrt(np.clip(w @ (t - m) ** 2, 0, None)) for (t, w), m in zip(self.samples_, self.mean_, strict=True)]
        )
        self.quantiles_ = np.array([_weighted_quantiles(t, w, QUANTILES) for t, w in self.samples_])
        self.max_weight_ = np.array([w.max() for _, w in self.samples_])

    def _mcmc(self, log_target, drawn, rngs, rows):
        """emcee's ensemble sampler for each of the images ``rows`` (their indices in the batch),
        all of them in lockstep (:func:`lockstep_chains`), from their weighted draws."""
        starts, randoms = {}, {}
        for r, row in enumerate(rows):
            rng = rngs[row]
            start = _walker_start(drawn[r], rng, self.prior)
            if start is None or not walkers_independent(start):  # the draws stay
                continue
            starts[r] = start
            randoms[r] = np.random.RandomState(rng.integers(2**31))

        def log_prob(theta, owners):
            return log_target(theta, np.asarray(rows)[owners])

        chains, steps = lockstep_chains(log_prob, starts, randoms, lambda chain: _mixed(chain, self.target_ess))
        return [chains.get(r) for r in range(len(rows))], [steps.get(r, 0) for r in range(len(rows))]


def lockstep_chains(log_prob, starts: dict, randoms: dict, mixed, chunk: int = MCMC_CHUNK, most: int = MCMC_STEPS):
    """emcee's ensemble sampler run for many targets at once, each step of all of them evaluated
    in one call.

    Each target's walkers move exactly as ``emcee.EnsembleSampler`` with its default
    ``StretchMove`` would move them, from the target's own random stream (the same draws in the
    same order, so each chain is the one emcee gives with that random state), but without a
    thread per chain waiting for the others.

    Parameters
    ----------
    log_prob : callable
        ``log_prob(theta, owners)``: the log posterior of parameter sets ``theta`` (N, K), the
        ``owners`` (N,) the key of the target each is for. NaN counts as −∞ (the proposal is refused).
    starts : dict
        Each target's starting walkers (walkers, K), by key.
    randoms : dict
        Each target's ``numpy.random.RandomState``, by key (advanced in place).
    mixed : callable
        ``mixed(chain)``: whether a chain (steps, walkers, K), its first third discarded, is long
        enough; checked every ``chunk`` steps.
    chunk, most : int
        Steps between checks, and steps at most.

    Returns
    -------
    chains, steps : dict, dict
        By key: the chain after burn-in (its first third discarded), and the steps run.
    """
    move = emcee.moves.StretchMove()
    coords = {key: np.array(start, dtype=np.float64) for key, start in starts.items()}
    history = {key: [] for key in coords}
    chains, steps = {}, {}

    def evaluate(active, theta):
        sizes = [len(theta[key]) for key in active]
        values = log_prob(np.concatenate([theta[key] for key in active]), np.repeat(np.asarray(active), sizes))
        values = np.where(np.isnan(values), -np.inf, values)
        return dict(zip(active, np.split(values, np.cumsum(sizes)[:-1]), strict=True))

    active = sorted(coords)
    log_probs = evaluate(active, coords) if active else {}
    done = 0
    while active:
        for _ in range(chunk):
            halves = {}
            for key in active:
                walkers = len(coords[key])
                randoms[key].random_sample()  # emcee's choice among its moves: one, but a draw all the same
                halves[key] = np.arange(walkers) % 2
                randoms[key].shuffle(halves[key])
            for half in (0, 1):
                moving, proposed, factors = {}, {}, {}
                for key in active:
                    moving[key] = np.flatnonzero(halves[key] == half)
                    proposed[key], factors[key] = move.get_proposal(
                        coords[key][moving[key]], [coords[key][halves[key] != half]], randoms[key]
                    )
                new_log_probs = evaluate(active, proposed)
                for key in active:
                    gain = factors[key] + new_log_probs[key] - log_probs[key][moving[key]]
                    accepted = gain > np.log(randoms[key].rand(len(moving[key])))
                    coords[key][moving[key][accepted]] = proposed[key][accepted]
                    log_probs[key][moving[key][accepted]] = new_log_probs[key][accepted]
            for key in active:
                history[key].append(coords[key].copy())
        done += chunk
        for key in list(active):
            chain = np.array(history[key][done // 3 :])
            if done >= most or mixed(chain):
                chains[key], steps[key] = chain, done
                active.remove(key)
                del history[key]
    return chains, steps


def _next_round(ess, spent, target, most):
    """Draws the next round needs: what the efficiency so far says will reach the target, with a
    fifth more; between 128 and ``most``."""
    if ess < 10:
        return most
    return int(np.clip(np.ceil(1.2 * (target - ess) * spent / ess), 128, most))


def _moved_proposal(theta, weights, previous):
    """The next round's t: the weighted mean and covariance of the draws so far (with a little
    of the previous scale, so that a proposal never collapses). Where fewer than
    :data:`ADAPT_DRAWS` draws count, the weights are first clipped at the ADAPT_DRAWS-th largest
    (Koblents & Míguez's nonlinear PMC): the best draws then say where the posterior is and how
    wide, whether the proposal was too wide or too narrow, without one draw's weight making the
    covariance a point. With fewer draws inside the support than parameters, the previous one
    widened."""
    positive = np.flatnonzero(weights > 0)
    if len(positive) <= theta.shape[1]:
        mean, chol = previous
        top = theta[np.argmax(weights)] if len(positive) else mean
        return top, chol * 2.0
    if _ess(weights) < ADAPT_DRAWS:
        weights = np.minimum(weights, np.sort(weights)[-min(ADAPT_DRAWS, len(positive))])
        weights = weights / weights.sum()
    mean = weights @ theta
    centred = theta - mean
    cov = (centred * weights[:, None]).T @ centred + 0.01 * previous[1] @ previous[1].T
    try:
        return mean, np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        return mean, previous[1] * 2.0


def _walker_start(drawn, rng, prior):
    """emcee's walkers: distinct draws of an image's importance sample ``drawn`` (its draws and
    their log weights) by weight (inside the
    prior), or its best draws where too few carry weight; None where fewer than :data:`WALKERS`
    draws are inside the prior."""
    theta, log_w = drawn
    finite = np.flatnonzero(np.isfinite(log_w))
    if len(finite) < WALKERS:
        return None
    weights = _weights(log_w)
    if np.count_nonzero(weights > 1e-12) >= WALKERS:
        picks = rng.choice(len(theta), size=WALKERS, replace=False, p=weights)
    else:
        picks = finite[np.argsort(log_w[finite])[-WALKERS:]]
    return theta[picks]


def _mixed(chains, target_ess) -> bool:
    """Whether emcee's chains (steps, walkers, K), burn-in discarded, are long enough: ESS at
    least ``target_ess``, at least :data:`MIN_TAUS` autocorrelation times long (emcee's advice for
    a reliable τ), and split-R̂ below :data:`MAX_RHAT`."""
    ess = _chain_ess(chains)
    # ess = steps · walkers / τ, so steps ≥ MIN_TAUS · τ is ess ≥ MIN_TAUS · walkers
    long_enough = ess >= MIN_TAUS * chains.shape[1]
    return ess >= target_ess and long_enough and np.max(_split_rhat(chains)) < MAX_RHAT


def _chain_ess(chains) -> float:
    """Effective sample size of emcee chains (steps, walkers, K): draws over the largest
    integrated autocorrelation time (emcee's estimate)."""
    if len(chains) < 2:
        return 0.0
    tau = emcee.autocorr.integrated_time(chains, tol=0)
    return float(chains.shape[0] * chains.shape[1] / np.max(tau))


def equal_weight_samples(posterior: Posterior, size: int, seed: int, indices) -> np.ndarray:
    """(B, size, K) draws of each image's weighted samples by systematic resampling (an image's
    from its index and the seed), e.g. to store them."""
    out = np.empty((len(posterior.samples_), size, len(posterior.prior.names)))
    for b, ((t, w), index) in enumerate(zip(posterior.samples_, indices, strict=True)):
        rng = np.random.default_rng([seed, int(index), 1])
        positions = (rng.uniform() + np.arange(size)) / size
        picks = np.minimum(np.searchsorted(np.cumsum(w), positions), len(t) - 1)
        out[b] = t[rng.permutation(picks)]
    return out


def pit_values(posterior: Posterior, truth, rng) -> np.ndarray:
    """The posterior CDF at each true value (B, K), ties (a discretized index) split at random:
    uniform on [0, 1] when the posteriors are calibrated (simulation-based calibration)."""
    truth = np.array(truth, dtype=np.float64)
    truth[:, 1] = posterior.prior.snap(truth[:, 1])  # a dataset's float32 index, on its grid
    out = np.empty(truth.shape)
    for b, (t, w) in enumerate(posterior.samples_):
        below = w @ (t < truth[b])
        equal = w @ (t == truth[b])
        out[b] = below + rng.uniform(size=len(below)) * equal
    return out
