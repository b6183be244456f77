"""Fits of any stamp: noiseless truth, the noise model's forms, masks and the errors' scale."""

import galsim
import numpy as np
import pytest

from galparam.errors import GalparamError
from galparam.evaluate.crb import covariances, fisher_matrices
from galparam.evaluate.stamp_fit import StampFit, moments_start
from galparam.frame import Frame
from galparam.kspace.stamps import draw_stamps, wide_tables
from galparam.psf import ImagePSF, MoffatPSF
from galparam.stamp import Stamp, segment_mask

PSF = ImagePSF(galsim.Moffat(beta=2.5, fwhm=0.7).drawImage(nx=25, ny=25, scale=0.2).array, 0.2)
FRAME = Frame((48, 57), 0.2, PSF)
TRUTH = np.array([3.0e4, 2.0, 0.5, 0.2, -0.1, 1.3, -0.8, 0.0])


@pytest.fixture(scope="module")
def tables():
    return wide_tables()


def bound(tables, frame, theta, sigma, mask=None, parameters=7):
    """The Cramér–Rao standard deviations at ``theta`` of a stamp with white noise ``sigma``."""
    model, jac = draw_stamps(tables, frame, theta[None], derivatives="jacobian")
    sigma_map = np.full(frame.shape, sigma)[None]
    fisher = fisher_matrices(
        model, jac[:, :parameters], sigma_map, poisson=False, mask=None if mask is None else mask[None]
    )
    return np.sqrt(np.diag(covariances(fisher)[0]))


def test_a_noiseless_stamp_is_fitted_to_its_truth_with_the_bound_as_error(tables):
    for frame, truth in [
        (FRAME, TRUTH),
        (Frame((64, 64), 0.23, MoffatPSF(0.6, 3.0)), np.array([1e5, 3.0, 0.5, -0.069, 0.15, -2.0, 0.7, 0.0])),
    ]:
        clean = draw_stamps(tables, frame, truth[None])[0]
        fit = StampFit().fit([Stamp.from_arrays(clean, frame, noise_sigma=30.0)])
        std = bound(tables, frame, truth, 30.0)
        assert fit.converged_[0] and fit.flags_[0] in ((), ("radius_below_psf",))
        assert np.all(np.abs(fit.theta_[0, :7] - truth[:7]) < 0.02 * std), (fit.theta_[0] - truth) / np.r_[std, 1]
        np.testing.assert_allclose(fit.std_[0, :7], std, rtol=0.02)
        assert np.isnan(fit.std_[0, 7]) and fit.theta_[0, 7] == 0  # the sky is held
        assert fit.chi2_[0] < 1e-6 and fit.dof_[0] == frame.shape[0] * frame.shape[1] - 7


def test_the_noise_forms_give_one_fit(tables):
    """σ map, weight map, variance map and one σ are one noise model: the same fit, bit for bit."""
    rng = np.random.default_rng(1)
    image = draw_stamps(tables, FRAME, TRUTH[None])[0] + rng.normal(0, 30.0, FRAME.shape)
    sigma = np.full(FRAME.shape, 30.0)
    forms = [
        dict(noise_sigma=30.0),
        dict(sigma=sigma),
        dict(variance=sigma**2),
        dict(weight=1 / sigma**2),
    ]
    fits = [StampFit().fit([Stamp.from_arrays(image, FRAME, **form)]) for form in forms]
    for fit in fits[1:]:
        np.testing.assert_allclose(fit.theta_, fits[0].theta_, rtol=1e-12)


def test_masked_pixels_are_ignored_and_the_users_arrays_untouched(tables):
    """What masked pixels hold (a bright neighbour, NaN, a σ of 0) changes nothing, and the σ map
    and mask given stay as they were."""
    rng = np.random.default_rng(2)
    image = draw_stamps(tables, FRAME, TRUTH[None])[0] + rng.normal(0, 30.0, FRAME.shape)
    neighbour = draw_stamps(tables, FRAME, np.array([[5e5, 1.0, 0.3, 0.0, 0.0, 18.0, 15.0, 0.0]]))[0]
    mask = neighbour < 10.0
    crowded = np.where(mask, image, image + neighbour)
    crowded[~mask & (neighbour > 1e3)] = np.nan
    sigma = np.full(FRAME.shape, 30.0)
    sigma[~mask] = 0.0  # a σ map with zeros on the masked pixels is accepted
    kept = (sigma.copy(), mask.copy(), crowded.copy())
    alone = StampFit().fit([Stamp.from_arrays(image, FRAME, noise_sigma=30.0, mask=mask)])
    fit = StampFit().fit([Stamp.from_arrays(crowded, FRAME, sigma=sigma, mask=mask)])
    np.testing.assert_allclose(fit.theta_, alone.theta_, rtol=1e-12)
    for given, copy in zip((sigma, mask, crowded), kept, strict=True):
        np.testing.assert_array_equal(given, copy)
    assert (~mask).sum() > 40
    # the errors are the bound at the estimate with the mask, which is wider than without it
    masked, unmasked = (bound(tables, FRAME, alone.theta_[0], 30.0, m) for m in (mask, None))
    np.testing.assert_allclose(alone.std_[0, :7], masked, rtol=1e-6)
    assert masked[0] > 1.01 * unmasked[0]


def test_the_sky_is_fitted_when_asked(tables):
    rng = np.random.default_rng(3)
    truth = TRUTH.copy()
    truth[7] = 4.0
    image = draw_stamps(tables, FRAME, truth[None])[0] + rng.normal(0, 10.0, FRAME.shape)
    fit = StampFit(fit_sky=True).fit([Stamp.from_arrays(image, FRAME, noise_sigma=10.0)])
    sky_error = fit.std_[0, 7]
    assert 0 < sky_error < 1 and abs(fit.theta_[0, 7] - 4.0) < 4 * sky_error


def test_the_scoring_reaches_the_maximum_l_bfgs_b_reaches_alone(tables):
    """Fisher scoring run to convergence (the default) and L-BFGS-B alone from the moments
    (no scoring) are two optimizers: they find the same maximum of a noisy stamp, with and
    without a gain; with the scoring L-BFGS-B has nothing left to do."""
    rng = np.random.default_rng(7)
    clean = draw_stamps(tables, FRAME, TRUTH[None])[0]
    std = bound(tables, FRAME, TRUTH, 30.0)
    for gain in (None, 0.5):
        image = clean + rng.normal(0, 30.0, FRAME.shape)
        stamp = Stamp.from_arrays(image, FRAME, noise_sigma=30.0, gain=gain)
        scored, alone = StampFit().fit([stamp]), StampFit(scoring_steps=0).fit([stamp])
        assert scored.converged_[0] and alone.converged_[0]
        assert scored.results_[0].iterations == 0 < alone.results_[0].iterations
        assert scored.nll_[0] <= alone.nll_[0] + 1e-4
        assert np.all(np.abs(scored.theta_[0, :7] - alone.theta_[0, :7]) < 0.05 * std)


def test_a_gain_puts_the_galaxys_own_noise_in_the_variance(tables):
    """With a gain the likelihood is the simulation's own (σ² + μ/gain): a bright galaxy's
    errors grow by the Poisson term, as the bound with it says."""
    truth = TRUTH.copy()
    truth[0] = 3e5
    clean = draw_stamps(tables, FRAME, truth[None])[0]
    plain = StampFit().fit([Stamp.from_arrays(clean, FRAME, noise_sigma=30.0)])
    poisson = StampFit().fit([Stamp.from_arrays(clean, FRAME, noise_sigma=30.0, gain=0.5)])
    model, jac = draw_stamps(tables, FRAME, truth[None], derivatives="jacobian")
    fisher = fisher_matrices(model, jac[:, :7], np.full(FRAME.shape, 30.0)[None], gain=0.5)
    np.testing.assert_allclose(poisson.std_[0, :7], np.sqrt(np.diag(covariances(fisher)[0])), rtol=0.02)
    assert np.all(poisson.std_[0, :7] > 1.2 * plain.std_[0, :7])


def test_the_start_finds_an_offset_galaxy(tables):
    truth = np.array([3e4, 1.5, 0.6, 0.3, 0.2, -6.2, 4.1, 0.0])
    clean = draw_stamps(tables, FRAME, truth[None])[0]
    start = moments_start(Stamp.from_arrays(clean, FRAME, noise_sigma=1.0))
    np.testing.assert_allclose(start[5:7], truth[5:7], atol=0.3)
    assert 0.5 * truth[2] < start[2] < 2 * truth[2]


def test_a_failing_stamp_is_a_flagged_row(tables, monkeypatch):
    good = Stamp.from_arrays(draw_stamps(tables, FRAME, TRUTH[None])[0], FRAME, noise_sigma=30.0, name="good")
    fitter = StampFit()
    original = fitter._fit_one
    calls = []

    def failing_second(tables_, stamp, init):
        calls.append(stamp.name)
        if len(calls) == 2:
            raise FloatingPointError("the model overflowed")
        return original(tables_, stamp, init)

    monkeypatch.setattr(fitter, "_fit_one", failing_second)
    fit = fitter.fit([good, good, good])
    assert fit.flags_[1] == ("fit_failed",) and np.isnan(fit.theta_[1]).all()
    assert "FloatingPointError: the model overflowed" in fit.results_[1].error
    assert fit.converged_[[0, 2]].all()


def test_segmentation_maps_mask_the_other_sources():
    segmap = np.zeros((9, 9), dtype=int)
    segmap[3:6, 3:6] = 2  # the target, under the centre
    segmap[0:2, 0:2] = 1  # a neighbour
    keep = segment_mask(segmap)
    assert keep[4, 4] and not keep[0, 0] and keep[8, 8]
    assert segment_mask(segmap, 1)[0, 0] and not segment_mask(segmap, 1)[4, 4]
    with pytest.raises(GalparamError, match=r"no segment 7; it holds \[1, 2\]"):
        segment_mask(segmap, 7)


@pytest.mark.parametrize(
    "arrays, message",
    [
        (dict(noise_sigma=1.0, sigma=np.ones((48, 57))), "give the noise once"),
        (dict(), "given: none"),
        (dict(sigma=np.ones((40, 57))), r"shape \(40, 57\) differs from the image's \(48, 57\)"),
        (
            dict(sigma=np.where(np.arange(57) == 3, 0.0, 1.0) * np.ones((48, 57))),
            r"σ ≤ 0 or not finite \(first at x=4, y=1\)",
        ),
        (dict(weight=-np.ones((48, 57))), "weights are negative"),
        (dict(noise_sigma=1.0, mask=np.zeros((48, 57), bool)), "every pixel is masked"),
        (dict(noise_sigma=1.0, gain=0.0), "gain 0.0"),
    ],
)
def test_bad_noise_and_masks_are_refused_in_one_line(arrays, message):
    with pytest.raises(GalparamError, match=message):
        Stamp.from_arrays(np.zeros((48, 57)), FRAME, **arrays)


def test_nan_pixels_are_refused_unless_masked():
    image = np.zeros((48, 57))
    image[10, 20] = np.nan
    with pytest.raises(GalparamError, match=r"1 pixels that count are NaN or infinite \(first at x=21, y=11\)"):
        Stamp.from_arrays(image, FRAME, noise_sigma=1.0)
    mask = np.ones((48, 57), bool)
    mask[10, 20] = False
    stamp = Stamp.from_arrays(image, FRAME, noise_sigma=1.0, mask=mask)
    assert stamp.image[10, 20] == 0 and np.isnan(image[10, 20])


def test_a_galaxy_too_large_for_the_tables_is_flagged(tables):
    frame = Frame((96, 96), 0.03, MoffatPSF(0.1, 3.0))
    truth = np.array([1e5, 3.5, 1.5, 0.3, 0.0, 0.0, 0.0, 0.0])  # a 50-pixel radius, major axis ×1.4
    grid = (np.array([512]), np.array([256]))
    image = draw_stamps(tables, frame, truth[None], grid=grid)[0]  # cut at the tables' reach
    fit = StampFit().fit([Stamp.from_arrays(image, frame, noise_sigma=1.0)])
    assert "beyond_tables" in fit.flags_[0]
