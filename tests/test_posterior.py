"""Posteriors: a linear-Gaussian model whose posterior is known in closed form (through the same
sampling code: only the model differs), a galaxy against a long emcee chain, calibration on prior
draws, the spec's prior, and ``galparam-evaluate posterior``."""

import subprocess
import sys

import emcee
import numpy as np
import pandas as pd
import pytest
from conftest import DATA, make_spec
from scipy import stats

from galparam.cli.common import run
from galparam.cli.evaluate import main as evaluate_main
from galparam.data import load_dataset
from galparam.evaluate.likelihood import nll_and_weights
from galparam.evaluate.posterior import (
    MCMC_CHUNK,
    Posterior,
    PosteriorPrior,
    equal_weight_samples,
    lockstep_chains,
    pit_values,
)
from galparam.parameters import sersic_grid
from galparam.posteriors import POSTERIOR_COLUMNS, run_posterior
from galparam.simulate import simulate
from galparam.specs import load_spec

TRUTH = np.array([1.0e5, 3.0, 0.3, 0.1, -0.1])
SCALE = np.array([2.0e3, 0.05, 0.005, 0.01, 0.01])  # about each parameter's posterior width
SIGMA = 200.0


class LinearGaussian(Posterior):
    """y = A θ + N(0, σ²) on a 64² stamp, flat prior: the posterior is N(θ̂, σ² (AᵀA)⁻¹), θ̂ the
    least-squares solution. Its Laplace approximation is given off on purpose (a standard
    deviation off, 1.5 times as wide), so the importance weights have something to correct."""

    def __init__(self, design, off=1.0, wide=1.5, **options):
        prior = PosteriorPrior((3e4, 4e5), (0.5, 6.0), (0.1, 0.6), "disc", (0.0, 0.67))
        super().__init__(prior, poisson=False, **options)
        self.design, self.off, self.wide = design, off, wide

    def exact(self, images):
        ata = self.design.T @ self.design
        mean = np.linalg.solve(ata, self.design.T @ images.reshape(len(images), -1).T).T
        return mean, SIGMA**2 * np.linalg.inv(ata)

    def laplace(self, images, psf_fwhm, sigma, init=None):
        mean, cov = self.exact(images)
        sd = np.sqrt(np.diag(cov))
        return mean + self.off * sd, np.broadcast_to(cov * self.wide**2, (len(images), 5, 5)).copy()

    def log_likelihood(self, images, psf_fwhm, sigma, theta):
        model = (theta @ self.design.T).reshape(images.shape)
        return -nll_and_weights(images, model, sigma, poisson=False)[0]


@pytest.fixture(scope="module")
def linear():
    rng = np.random.default_rng(1)
    design = SIGMA * rng.standard_normal((64 * 64, 5)) / SCALE / 64
    images = (TRUTH @ design.T + SIGMA * rng.standard_normal((3, 64 * 64))).reshape(3, 64, 64)
    return design, images


def test_importance_sampling_recovers_the_closed_form_posterior(linear):
    design, images = linear
    post = LinearGaussian(design).sample(images, 0.5, SIGMA)
    mean, cov = post.exact(images)
    sd = np.sqrt(np.diag(cov))
    assert (post.method_ == "importance").all() and (post.ess_ >= 500).all()
    np.testing.assert_array_less(np.abs(post.mean_ - mean) / sd, 0.15)
    np.testing.assert_allclose(post.std_ / sd, 1, atol=0.1)
    for q, z in ((1, -1.0), (3, 1.0)):  # the 16 and 84 % quantiles
        np.testing.assert_array_less(np.abs(post.quantiles_[:, q] - (mean + z * sd)) / sd, 0.2)


def test_importance_sampling_recovers_from_a_laplace_approximation_far_too_wide(linear):
    # as at a faint galaxy whose fit ends on the box's edge: 30 times too wide, 5 σ off. Almost
    # no first-round draw lands in the posterior; the proposal must narrow onto the best draws
    # (clipped weights) and the rounds' draws count together (mixture weights), within the rounds
    # and without MCMC (the old rule, doubling the scale, never got there)
    design, images = linear
    post = LinearGaussian(design, off=5.0, wide=30.0, mcmc=False).sample(images, 0.5, SIGMA)
    mean, cov = post.exact(images)
    sd = np.sqrt(np.diag(cov))
    assert (post.ess_ >= 500).all()
    np.testing.assert_array_less(np.abs(post.mean_ - mean) / sd, 0.15)
    np.testing.assert_allclose(post.std_ / sd, 1, atol=0.1)


@pytest.mark.slow  # make test-fast keeps its 5 minutes
def test_mcmc_fallback_recovers_the_closed_form_posterior(linear):
    design, images = linear
    post = LinearGaussian(design, draws=64, rounds=1, target_ess=200).sample(images[:2], 0.5, SIGMA)
    mean, cov = post.exact(images[:2])
    sd = np.sqrt(np.diag(cov))
    assert (post.method_ == "mcmc").all() and (post.ess_ >= 200).all()
    assert np.nanmax(post.rhat_) < 1.1
    np.testing.assert_array_less(np.abs(post.mean_ - mean) / sd, 0.25)
    np.testing.assert_allclose(post.std_ / sd, 1, atol=0.15)


def test_lockstep_chains_are_emcees_own():
    """Three targets run together give, each, the chain emcee's EnsembleSampler gives alone with
    the same random state, to the last bit; one that is mixed early stops there, and the others'
    chains do not change."""
    centres = np.array([[0.0, 1.0], [5.0, -2.0], [1.0, 1.0]])
    widths = np.array([1.0, 0.1, 3.0])

    def log_prob(theta, owners):
        return -0.5 * np.sum(((theta - centres[owners]) / widths[owners, None]) ** 2, axis=1)

    def emcee_chain(k, steps):
        sampler = emcee.EnsembleSampler(8, 2, lambda x: log_prob(x, np.full(len(x), k)), vectorize=True)
        sampler.random_state = np.random.RandomState(10 + k).get_state()
        sampler.run_mcmc(starts[k], steps, progress=False)
        return sampler.get_chain(discard=steps // 3)

    def run(mixed):
        randoms = {k: np.random.RandomState(10 + k) for k in range(3)}
        return lockstep_chains(log_prob, starts, randoms, mixed, chunk=MCMC_CHUNK, most=3 * MCMC_CHUNK)

    starts = {k: np.random.default_rng(k).normal(centres[k], widths[k], (8, 2)) for k in range(3)}
    chains, steps = run(mixed=lambda chain: False)
    assert steps == dict.fromkeys(range(3), 3 * MCMC_CHUNK)
    for k in range(3):
        assert chains[k].tobytes() == emcee_chain(k, 3 * MCMC_CHUNK).tobytes()
    early, early_steps = run(mixed=lambda chain: chain[..., 0].mean() > 3)  # target 1 only
    assert early_steps == {0: 3 * MCMC_CHUNK, 1: MCMC_CHUNK, 2: 3 * MCMC_CHUNK}
    assert early[1].tobytes() == emcee_chain(1, MCMC_CHUNK).tobytes()
    assert early[0].tobytes() == chains[0].tobytes() and early[2].tobytes() == chains[2].tobytes()


def test_spec_prior_is_the_simulators():
    v2 = PosteriorPrior.from_spec(load_spec(DATA / "v2.yaml"))
    assert (v2.shear, v2.shear_range, v2.sersic_steps, v2.snr_window) == ("amplitude", (0.0, 0.67), 1000, (10, 100))
    grid = sersic_grid(0.5, 6.0, 1000)
    step = grid[1] - grid[0]
    np.testing.assert_array_equal(v2.snap(grid + 0.49 * step * np.sign(np.sin(np.arange(1000)))), grid)
    # the shear's density ∝ 1/|g|: uniform points of the disc weighted by it have the simulator's |g|
    rng = np.random.default_rng(0)
    g = rng.uniform(-0.67, 0.67, (200_000, 2))
    theta = np.column_stack([np.full((len(g), 3), [1e5, 3.0, 0.3]), g])
    weights = np.exp(v2.log_density(theta))
    spec = load_spec(DATA / "v2.yaml")
    drawn = np.hypot(*spec.parameters_of(rng.uniform(size=(20_000, 7)))[3:5])
    inside = weights > 0
    resampled = rng.choice(np.hypot(*g[inside].T), size=20_000, p=weights[inside] / weights[inside].sum())
    assert stats.ks_2samp(resampled, drawn).pvalue > 1e-3
    # a fixed-parameter test set: the fit's flat box
    t60 = PosteriorPrior.from_spec(load_spec(DATA / "test_snr60.yaml"))
    assert (t60.shear, t60.sersic_steps, t60.snr_window) == ("disc", 0, None)
    assert t60.flux == (3e4, 4e5) and t60.hlr == (0.1, 0.6)


@pytest.fixture(scope="module")
def prior_draws(tmp_path_factory):
    """40 galaxies of the tiny spec's prior (a 12-value discretized index, the SNR window)."""
    path = tmp_path_factory.mktemp("posterior") / "draws.npz"
    return simulate(make_spec(name="draws", size=40, validation_fraction=0.0, seed=3), path, progress=False).output


def test_an_images_posterior_is_reproducible_and_hardly_depends_on_its_batch(prior_draws):
    ds = load_dataset(prior_draws)
    images, fwhm, sigma = ds.img[:3].astype(np.float64), ds.psf_fwhm[:3], ds.sigma[:3]
    options = {"target_ess": 100, "draws": 256, "mcmc": False}
    prior = PosteriorPrior.from_spec(ds.spec)
    batch = Posterior(prior, seed=5, **options).sample(images, fwhm, sigma)
    again = Posterior(prior, seed=5, **options).sample(images, fwhm, sigma)
    assert again.mean_.tobytes() == batch.mean_.tobytes() and again.quantiles_.tobytes() == batch.quantiles_.tobytes()
    # alone, its draws are the same (they depend on the seed and its index); the fit's maximum, the
    # proposal's centre, may differ in its last digits (the fit renders its batch together)
    alone = Posterior(prior, seed=5, **options).sample(images[2:], fwhm[2:], sigma[2:], indices=[2])
    np.testing.assert_allclose(alone.mean_[0], batch.mean_[2], rtol=1e-8)
    np.testing.assert_allclose(alone.quantiles_[0], batch.quantiles_[2], rtol=1e-8)
    other_seed = Posterior(prior, seed=6, **options).sample(images[2:], fwhm[2:], sigma[2:], indices=[2])
    assert other_seed.mean_[0].tobytes() != alone.mean_[0].tobytes()
    draws = equal_weight_samples(batch, 2000, 0, range(3))
    np.testing.assert_allclose(draws.mean(axis=1), batch.mean_, atol=0, rtol=0.05)


@pytest.mark.slow  # make test-fast keeps its 5 minutes
def test_posteriors_of_prior_draws_are_calibrated(prior_draws):
    ds = load_dataset(prior_draws)
    post = Posterior(PosteriorPrior.from_spec(ds.spec), target_ess=200, draws=512, mcmc=False)
    post.sample(ds.img.astype(np.float64), ds.psf_fwhm, ds.sigma)
    pit = pit_values(post, ds.label, np.random.default_rng(0))
    # the probability integral transforms of 40 galaxies × 5 parameters are uniform
    assert stats.kstest(pit.ravel(), "uniform").pvalue > 1e-3
    inside68 = np.mean((pit > 0.16) & (pit < 0.84))
    assert 0.56 <= inside68 <= 0.80, inside68
    # the index is on the prior's grid of 12 values
    assert np.isin(np.round(post.quantiles_[:, 2, 1], 9), np.round(sersic_grid(0.5, 1.6, 12), 9)).all()


@pytest.mark.slow  # make test-fast keeps its 5 minutes
def test_galaxy_posterior_matches_a_long_emcee_chain(prior_draws):
    ds = load_dataset(prior_draws)
    prior = PosteriorPrior((3e4, 4e5), (0.5, 6.0), (0.1, 0.6), "amplitude", (0.0, 0.67))
    b = int(np.argmin(np.abs(ds.snr - 30)))  # a galaxy at SNR ~30: a posterior far from Gaussian in n
    image, fwhm, sigma = ds.img[b : b + 1].astype(np.float64), ds.psf_fwhm[b : b + 1], ds.sigma[b : b + 1]
    post = Posterior(prior, target_ess=1000).sample(image, fwhm, sigma)

    def log_target(theta):
        return post._log_target(image, fwhm, sigma, theta, np.zeros(len(theta), dtype=np.int64))

    rng = np.random.default_rng(1)
    start = post.samples_[0][0][rng.choice(len(post.samples_[0][0]), 32, p=post.samples_[0][1])]
    chain = emcee.EnsembleSampler(32, 5, log_target, vectorize=True)
    chain.random_state = np.random.RandomState(1).get_state()
    chain.run_mcmc(start, 900, progress=False)
    reference = chain.get_chain(discard=200, flat=True)
    sd = reference.std(axis=0)
    np.testing.assert_array_less(np.abs(post.mean_[0] - reference.mean(axis=0)) / sd, 0.15)
    np.testing.assert_allclose(post.std_[0] / sd, 1, atol=0.12)


def test_posterior_cli_writes_resumes_and_refuses_bad_input(prior_draws, tmp_path, capsys):
    out = tmp_path / "post.csv"
    options = {"target_ess": 100, "jobs": 1, "progress": False}
    first = run_posterior(prior_draws, out, n_images=2, **options)
    assert list(first.columns) == list(POSTERIOR_COLUMNS) and len(first) == 2
    whole = run_posterior(prior_draws, tmp_path / "whole.csv", n_images=3, overwrite=True, **options)
    resumed = run_posterior(prior_draws, out, n_images=3, **options)
    pd.testing.assert_frame_equal(resumed.drop(columns="seconds"), whole.drop(columns="seconds"))
    assert (whole["flux_q16"] <= whole["flux_median"]).all()
    # the console, in process (its one-line errors and exit status 2 come from the same run wrapper)
    cli = ["posterior", str(prior_draws), "-q"]
    samples = tmp_path / "s.npz"
    argv = [*cli, "-o", str(tmp_path / "c.csv"), "--n-images", "2", "--target-ess", "100", "--samples", str(samples)]
    assert run(evaluate_main, argv, prog="galparam-evaluate") == 0
    assert "2 posteriors" in capsys.readouterr().out
    with np.load(samples, allow_pickle=False) as z:
        assert z["samples"].shape == (2, 1000, 5) and z["index"].tolist() == [0, 1]
    for args, message in (
        (["-o", str(out), "--n-images", "4", "--target-ess", "200"], "another dataset, prior or setting"),
        (["-o", str(tmp_path / "d.csv"), "--target-ess", "10"], "--target-ess 10: accepted 50..100000"),
        (["-o", str(tmp_path / "e.csv"), "--n-images", "99"], "--n-images 99: the dataset has 40 images"),
    ):
        assert run(evaluate_main, [*cli, *args], prog="galparam-evaluate") == 2, args
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "d.csv").exists() and not (tmp_path / "e.csv").exists()
    # one run as users start it, a separate process: its exit status
    bad = subprocess.run(
        [sys.executable, "-m", "galparam.cli.evaluate", *cli, "-o", str(tmp_path / "f.csv"), "--target-ess", "10"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr
