"""Uncertainty heads, their calibration and coverage, shear calibration and efficiency maps."""

import json

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_experiment

from galparam.errors import SpecError
from galparam.evaluate.uncertainty import (
    calibration_factors,
    coverage,
    coverage_table,
    efficiency_map,
    interval_factors,
    reliability,
    shear_calibration,
    shear_table,
)
from galparam.parameters import LABEL_NAMES


def _fit_head(kind, x, y, epochs):
    import keras

    from galparam.models.heads import head_units, loss_for

    keras.utils.set_random_seed(0)
    inputs = keras.Input(shape=(1,))
    h = keras.layers.Dense(64, activation="tanh")(inputs)
    h = keras.layers.Dense(64, activation="tanh")(h)
    model = keras.Model(inputs, keras.layers.Dense(head_units(kind))(h))
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=loss_for(kind))
    model.fit(x, y, epochs=epochs, batch_size=128, verbose=0)
    return model


@pytest.mark.backends
def test_the_heads_losses_are_gaussian_log_likelihoods():
    from scipy.stats import multivariate_normal

    from galparam.models.heads import decode, gaussian_nll_diagonal, gaussian_nll_full

    rng = np.random.default_rng(6)
    y = rng.normal(size=(4, 5)).astype("float32")
    for loss, kind, width in ((gaussian_nll_diagonal, "diagonal", 10), (gaussian_nll_full, "full", 20)):
        out = rng.normal(size=(4, width)).astype("float32")
        mean, cov = decode(out, kind)
        # the loss is the negative log-density less its constant (5/2) log 2 pi, over the 5 labels
        expected = [
            -(multivariate_normal(mean[i], cov[i]).logpdf(y[i]) + 2.5 * np.log(2 * np.pi)) / 5 for i in range(4)
        ]
        np.testing.assert_allclose(np.asarray(loss(y, out)), expected, rtol=1e-4)


@pytest.mark.slow
def test_the_diagonal_head_learns_a_known_spread():
    from galparam.models.heads import decode

    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (4000, 1)).astype("float32")
    sigma = (0.05 + 0.1 * (x + 1)) * np.linspace(0.5, 1.5, 5)  # each label its own spread, growing with x
    y = (x * np.arange(1, 6) + sigma * rng.normal(size=(4000, 5))).astype("float32")
    model = _fit_head("diagonal", x, y, epochs=60)
    probe = np.array([[-0.8], [-0.3], [0.0], [0.5], [0.9]], "float32")
    mean, cov = decode(model.predict(probe, verbose=0), "diagonal")
    truth_sigma = (0.05 + 0.1 * (probe + 1)) * np.linspace(0.5, 1.5, 5)
    # (where σ is smallest, the mean's own error adds to it in quadrature)
    np.testing.assert_allclose(np.sqrt(np.diagonal(cov, axis1=1, axis2=2)), truth_sigma, rtol=0.25)
    np.testing.assert_allclose(mean, probe * np.arange(1, 6), rtol=0.05, atol=0.05)


@pytest.mark.slow
def test_the_full_head_learns_a_known_correlation():
    from galparam.models.heads import decode

    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, (4000, 1)).astype("float32")
    truth_cov = np.diag([0.04, 0.09, 0.01, 0.0025, 0.0025])
    truth_cov[0, 1] = truth_cov[1, 0] = 0.8 * 0.2 * 0.3  # correlation 0.8, as flux and index
    truth_cov[1, 2] = truth_cov[2, 1] = -0.6 * 0.3 * 0.1
    y = (x + rng.multivariate_normal(np.zeros(5), truth_cov, size=4000)).astype("float32")
    model = _fit_head("full", x, y, epochs=60)
    _, cov = decode(model.predict(np.array([[0.0], [0.5]], "float32"), verbose=0), "full")
    std = np.sqrt(np.diagonal(cov, axis1=1, axis2=2))
    np.testing.assert_allclose(std, np.tile(np.sqrt(np.diag(truth_cov)), (2, 1)), rtol=0.15)
    corr = cov / (std[:, :, None] * std[:, None, :])
    np.testing.assert_allclose(corr[:, 0, 1], 0.8, atol=0.1)
    np.testing.assert_allclose(corr[:, 1, 2], -0.6, atol=0.1)


def test_coverage_and_calibration_on_known_gaussians():
    rng = np.random.default_rng(2)
    n = 20000
    std = rng.uniform(0.5, 2.0, (n, 5))
    truth = rng.normal(size=(n, 5))
    mean = truth + std * rng.normal(size=(n, 5))
    honest = coverage(truth, mean, std)
    np.testing.assert_allclose(honest["coverage_68"], 0.68, atol=0.015)
    np.testing.assert_allclose(honest["coverage_95"], 0.95, atol=0.006)
    # a network claiming half its spread covers too little; calibration brings it back
    claimed = std * np.array([0.5, 1, 2, 1, 1])
    factors = calibration_factors(truth, mean, claimed)
    np.testing.assert_allclose(factors, [2, 1, 0.5, 1, 1], rtol=0.02)
    before, after = coverage(truth, mean, claimed), coverage(truth, mean, claimed * factors)
    assert before["coverage_68"]["flux"] < 0.45 and before["coverage_68"]["hlr"] > 0.9
    np.testing.assert_allclose(after["coverage_68"], 0.68, atol=0.015)
    np.testing.assert_allclose(calibration_factors(truth, mean, claimed, method="rms"), factors, rtol=0.03)
    diagram = reliability(truth, mean, std)
    np.testing.assert_allclose(diagram[list(LABEL_NAMES)].to_numpy(), np.tile(diagram[["level"]], 5), atol=0.02)
    table = coverage_table(truth, mean, std, snr=np.where(np.arange(n) < 5000, 15.0, 50.0))
    assert list(table["snr_bin"].unique()) == ["[0.0, 20.0)", "[40.0, 60.0)", "all"]
    assert table.loc[table.snr_bin == "all", "images"].iloc[0] == n


def _worst_deviation(truth, mean, std) -> np.ndarray:
    table = coverage(truth, mean, std)
    return np.maximum(
        np.abs(table["coverage_68"] - 0.68) / np.sqrt(0.68 * 0.32),
        np.abs(table["coverage_95"] - 0.95) / np.sqrt(0.95 * 0.05),
    ).to_numpy()


def test_calibration_balances_both_levels_where_the_residuals_are_not_gaussian():
    rng = np.random.default_rng(5)
    n = 40000
    truth = np.zeros((n, 3))
    # flat-topped (a normal's core clipped by a box), heavy-tailed, normal
    errors = np.stack([np.clip(rng.normal(size=n) * 1.6, -2, 2), rng.standard_t(4, size=n), rng.normal(size=n)], axis=1)
    std = np.full((n, 3), 0.7)
    by_rms = calibration_factors(truth, errors, std, method="rms")
    by_coverage = calibration_factors(truth, errors, std)
    rms_deviation = _worst_deviation(truth, errors, std * by_rms)
    coverage_deviation = _worst_deviation(truth, errors, std * by_coverage)
    assert (coverage_deviation <= rms_deviation + 1e-9).all()
    after, by_rms_coverage = coverage(truth, errors, std * by_coverage), coverage(truth, errors, std * by_rms)
    # heavy tails inflate the RMS: its factor covers 76 % at 68 %; the balanced one is closer at 68 % and at 95 % within 2
    assert by_rms_coverage["coverage_68"].iloc[1] > 0.75 and after["coverage_68"].iloc[1] < 0.73
    assert abs(after["coverage_95"].iloc[1] - 0.95) < 0.02
    np.testing.assert_allclose(by_coverage[2], by_rms[2], rtol=0.02)  # Gaussian: the two agree
    np.testing.assert_allclose(after.iloc[2], [0.68, 0.95], atol=0.01)
    # a normal core and a prior's box (the index's residuals): no one factor covers both levels ...
    box = np.where(rng.uniform(size=(n, 1)) < 0.3, rng.uniform(-1.8, 1.8, (n, 1)), rng.normal(size=(n, 1)))
    one = coverage(truth[:, :1], box, np.ones((n, 1)) * calibration_factors(truth[:, :1], box, np.ones((n, 1))))
    assert one["coverage_68"].iloc[0] < 0.655 and one["coverage_95"].iloc[0] > 0.96
    # ... each level's own factor does, on images other than those it was fitted on
    calibrating, held_out = slice(0, n // 2), slice(n // 2, n)
    factors = interval_factors(truth[calibrating, :1], box[calibrating], np.ones((n // 2, 1)))
    held = coverage(truth[held_out, :1], box[held_out], np.ones((n // 2, 1)), interval_scale=factors)
    np.testing.assert_allclose(held.iloc[0], [0.68, 0.95], atol=0.01)
    gaussian = interval_factors(truth, errors, std)
    np.testing.assert_allclose([gaussian[0.68][2], gaussian[0.95][2]], by_rms[2], rtol=0.03)
    with pytest.raises(ValueError, match="calibration method 'mad'"):
        calibration_factors(truth, errors, std, method="mad")


def test_shear_calibration_recovers_planted_m_and_c():
    rng = np.random.default_rng(3)
    g = rng.uniform(-0.5, 0.5, 50000)
    m, c, noise = 0.02, -3e-3, 0.05
    fit = shear_calibration(g, (1 + m) * g + c + noise * rng.normal(size=g.size))
    assert fit["m"] == pytest.approx(m, abs=4 * fit["m_err"]) and fit["c"] == pytest.approx(c, abs=4 * fit["c_err"])
    # the standard errors are those of least squares: σ / sqrt(N var g) and σ / sqrt(N)
    assert fit["m_err"] == pytest.approx(noise / np.sqrt(g.size * g.var()), rel=0.05)
    assert fit["c_err"] == pytest.approx(noise / np.sqrt(g.size), rel=0.05)
    labels = np.zeros((g.size, 5))
    labels[:, 3], labels[:, 4] = g, -g
    estimates = labels.copy()
    estimates[:, 3], estimates[:, 4] = 1.1 * g, -g + 0.01
    table = shear_table(labels, estimates)
    assert table.set_index("component").loc["g1", "m"] == pytest.approx(0.1)
    assert table.set_index("component").loc["g2", "c"] == pytest.approx(0.01)
    assert table.set_index("component").loc["g2", "|c| / requirement"] == pytest.approx(100)


def test_efficiency_map_equals_a_hand_computation():
    truth = np.zeros((6, 5))
    bound = np.ones((6, 5)) * 2.0
    estimate = truth.copy()
    estimate[:, 0] = [2, 4, 0, -2, -2, -2]
    n = np.array([1.0, 1.5, 2.5, 4.0, 4.5, 5.5])
    table = efficiency_map(truth, estimate, bound, n, edges=[0, 2, 5, 6], name="sersic_n")
    flux = table[table.parameter == "flux"].set_index("sersic_n")
    # bin [0, 2): errors/bound 1 and 2; [2, 5): 0, -1, -1; [5, 6): -1
    assert flux.loc["[0.0, 2.0)", "mean err/crb"] == pytest.approx(1.5)
    assert flux.loc["[0.0, 2.0)", "rms err/crb"] == pytest.approx(np.sqrt(2.5))
    assert flux.loc["[2.0, 5.0)", "mean err/crb"] == pytest.approx(-2 / 3)
    assert flux.loc["[2.0, 5.0)", "std err/crb"] == pytest.approx(np.std([0, -1, -1], ddof=1))
    assert flux.loc["[5.0, 6.0)", "images"] == 1 and np.isnan(flux.loc["[5.0, 6.0)", "std err/crb"])
    assert "claimed std/crb" not in table.columns
    # a claimed spread: its median over the bound, per bin (spread / bound: 0.5, 1 | 1, 1, 4 | 2)
    spread = np.ones((6, 5)) * 2.0
    spread[:, 0] = [1, 2, 2, 2, 8, 4]
    claimed = efficiency_map(truth, estimate, bound, n, edges=[0, 2, 5, 6], name="sersic_n", spread=spread)
    claimed = claimed[claimed.parameter == "flux"].set_index("sersic_n")["claimed std/crb"]
    np.testing.assert_allclose(claimed.to_numpy(), [0.75, 1.0, 2.0])


def test_uncertainty_specs(datasets):
    with pytest.raises(SpecError, match="uncertainty: 'wide' is not accepted; accepted: none, diagonal, full"):
        tiny_experiment(datasets["fixed"], uncertainty="wide")
    with pytest.raises(SpecError, match="leave loss out"):
        tiny_experiment(datasets["fixed"], uncertainty="diagonal", loss="mae")
    assert "uncertainty" not in tiny_experiment(datasets["fixed"]).to_dict()
    assert tiny_experiment(datasets["fixed"], uncertainty="full").to_dict()["uncertainty"] == "full"
    encoder = tiny_experiment(datasets["fixed"], family="autoencoder", hyperparameters={}, uncertainty="diagonal")
    assert encoder.uncertainty == "diagonal" and encoder.loss == "binary_crossentropy"  # the image's loss
    with pytest.raises(SpecError, match="uncertainty"):
        tiny_experiment(datasets["fixed"], family="edsr", hyperparameters={}, uncertainty="diagonal")


TINY_AUTOENCODER = {"base_filters": 4, "dense_units": 32, "dropout_rate": 0.0}


@pytest.mark.slow
# the full head: its losses and synthetic fits above, and specs; the autoencoder's encoder has the same heads
@pytest.mark.parametrize("family, kind", [("xception", "diagonal"), ("autoencoder", "diagonal")])
def test_a_run_with_an_uncertainty_head_predicts_calibrated_spreads(family, kind, datasets, tmp_path):
    from galparam.data import load_dataset
    from galparam.estimator import load_estimator
    from galparam.runs import RunFolder
    from galparam.train import train

    changes = {"family": "autoencoder", "hyperparameters": TINY_AUTOENCODER} if family == "autoencoder" else {}
    spec = tiny_experiment(datasets["fixed"], uncertainty=kind, epochs=3, **changes)
    folder = train(spec, tmp_path / "run", verbose=0)
    run = RunFolder(folder)
    assert run.info()["uncertainty"] == kind
    factors = json.loads(run.calibration_path.read_text())["factors"]
    assert set(factors) == set(LABEL_NAMES) and all(0 < v < 100 for v in factors.values())
    estimator = load_estimator(folder)
    ds = load_dataset(datasets["fixed"])
    val = run.validation_indices()
    table = estimator.predict(ds.img[val])
    stds = [f"{n}_std" for n in LABEL_NAMES]
    assert set(stds) <= set(table.columns) and (table[stds] > 0).all().all()
    assert ("corr_flux_sersic_n" in table.columns) == (kind == "full")
    # calibrated on this split: the factors are the coverage-balancing ones of the uncalibrated spreads
    truth, mean, std = ds.label[val], table[list(LABEL_NAMES)].to_numpy(), table[stds].to_numpy()
    uncalibrated = std / np.array([factors[n] for n in LABEL_NAMES])
    np.testing.assert_allclose(
        calibration_factors(truth, mean, uncalibrated), [factors[n] for n in LABEL_NAMES], rtol=1e-5
    )
    assert (_worst_deviation(truth, mean, std) <= _worst_deviation(truth, mean, uncalibrated) + 1e-9).all()
    # each level's interval covers that level of the split it was calibrated on
    for level in (68, 95):
        half_width = table[[f"{n}_ci{level}" for n in LABEL_NAMES]].to_numpy()
        inside = (np.abs(truth - mean) <= half_width * (1 + 1e-9)).mean(axis=0)
        assert (np.abs(inside - level / 100) <= 1.5 / len(val)).all(), (level, inside)
    if family == "autoencoder":  # the decoder still draws an image of the estimates
        assert estimator.reconstruct(table[list(LABEL_NAMES)].to_numpy()[:2]).shape == (2, 64, 64)
    metrics = json.loads(run.metrics_path.read_text())
    assert metrics["uncertainty"]["kind"] == kind
    assert set(pd.DataFrame(metrics["uncertainty"]["coverage_uncalibrated"]).index) == {"coverage_68", "coverage_95"}


class _Member:
    """A stand-in estimator with fixed outputs (the ensemble's arithmetic alone)."""

    image_shape, psf_input = (64, 64), False

    def __init__(self, mean, cov):
        self.mean, self.cov = np.asarray(mean, float), cov

    def predict_distribution(self, images, psf_images=None, *, batch_size=256):
        return self.mean, self.cov


def test_an_ensemble_combines_means_and_spreads_as_a_mixture():
    from galparam.errors import GalparamError
    from galparam.estimator import Ensemble

    a, b = np.zeros((2, 5)), np.ones((2, 5)) * 2
    points = Ensemble([_Member(a, None), _Member(b, None)])
    mean, cov = points.predict_distribution(None)
    np.testing.assert_allclose(mean, 1.0)
    np.testing.assert_allclose(np.diagonal(cov, axis1=1, axis2=2), 1.0)  # the members' disagreement alone
    heads = Ensemble([_Member(a, np.tile(np.eye(5) * 4, (2, 1, 1))), _Member(b, np.tile(np.eye(5) * 2, (2, 1, 1)))])
    table = heads.predict(None)
    np.testing.assert_allclose(table[[f"{n}_std" for n in LABEL_NAMES]], np.sqrt(3 + 1))
    np.testing.assert_allclose(table["corr_flux_sersic_n"], 0.25)  # the shared disagreement correlates them
    with pytest.raises(GalparamError, match="at least two runs"):
        Ensemble([_Member(a, None)])
    # calibrated as a whole: truths spread twice the mixture's sqrt(4) about the mean
    rng = np.random.default_rng(8)
    n = 20000
    members = [_Member(np.zeros((n, 5)), np.tile(np.eye(5) * 3, (n, 1, 1))), _Member(np.full((n, 5), 2.0), None)]
    ensemble = Ensemble(members)
    truth = 1.0 + 4.0 * rng.normal(size=(n, 5))
    factors = ensemble.calibrate(None, truth)
    np.testing.assert_allclose(factors["factors"], 2.0, rtol=0.03)
    table = ensemble.predict(None)
    np.testing.assert_allclose(table["g2_std"], 4.0, rtol=0.03)
    inside = np.abs(truth - 1.0) <= table[[f"{n}_ci95" for n in LABEL_NAMES]].to_numpy()
    np.testing.assert_allclose(inside.mean(axis=0), 0.95, atol=1e-3)


def test_out_of_distribution_flags_name_each_reason():
    from galparam.evaluate.ood import border_sigma, flag

    ranges = {"sigma": [200, 400], "psf_fwhm": [0.5, 0.5], "snr": [10, 100], "chi2_per_pixel_q99": 1.2}
    table = flag(
        ranges,
        sigma=[300, 500, 300, 300],
        psf_fwhm=[0.5, 0.5, 1.2, 0.51],
        snr=[50, 50, 50, 5],
        chi2=[1.0, 1.0, 3.0, 1.0],
    )
    assert list(table.ood) == [False, True, True, True]
    assert table.ood_reason[1] == "noise sigma 500 outside the training 200–400"
    assert table.ood_reason[2].startswith("PSF FWHM 1.20″ outside the training 0.50″–0.50″; chi2 per pixel 3.00 above")
    assert table.ood_reason[3] == "SNR 5.0 outside the training 10.0–100.0"
    rng = np.random.default_rng(4)
    noise = rng.normal(0, 250, (50, 64, 64))
    np.testing.assert_allclose(np.median(border_sigma(noise)), 250, rtol=0.02)


def test_psf_fwhm_is_measured_from_psf_images():
    """Against GalSim's own drawing of the Moffat (it used to measure the renderer's images against
    the same renderer's)."""
    import galsim

    from galparam.evaluate.ood import psf_fwhm_from_images
    from galparam.geometry import Geometry

    fwhm = np.array([0.45, 0.7, 1.0, 1.35])
    images = np.stack([galsim.Moffat(beta=2.0, fwhm=f).drawImage(nx=64, ny=64, scale=0.23).array for f in fwhm])
    np.testing.assert_allclose(psf_fwhm_from_images(images, Geometry()), fwhm, rtol=2e-3)


@pytest.mark.slow
def test_predict_flags_shifted_images_and_combines_an_ensemble(tiny_run, datasets, tmp_path, capsys):
    from galparam.cli.evaluate import main
    from galparam.data import load_dataset
    from galparam.runs import RunFolder
    from galparam.train import train

    other = train(tiny_experiment(datasets["fixed"], seed=11), tmp_path / "seed11", verbose=0)
    info = RunFolder(tiny_run).info()
    limits = {"chi2_per_pixel_q99", "chi2_per_pixel_q99_border_sigma"}
    assert set(info["training_range"]) == {"sigma", "psf_fwhm", "snr", "box"} | limits
    ds = load_dataset(datasets["fixed"])
    val = RunFolder(tiny_run).validation_indices()
    rng = np.random.default_rng(5)
    shifted = ds.img_nonoise[val] + rng.normal(0, 1000, (len(val), 64, 64))  # sigma 1000 against 200-400
    np.savez(tmp_path / "own.npz", img=ds.img[val])
    np.savez(tmp_path / "shifted.npz", img=shifted.astype(np.float32))
    for name in ("own", "shifted"):
        argv = ["predict", str(tiny_run), str(tmp_path / f"{name}.npz"), "-o", str(tmp_path / f"{name}.csv")]
        assert main([*argv, "--ensemble", str(other)]) == 0
    own, moved = pd.read_csv(tmp_path / "own.csv"), pd.read_csv(tmp_path / "shifted.csv")
    assert {"flux_std", "corr_g1_g2", "ood", "ood_reason", "sigma", "chi2_per_pixel"} <= set(own.columns)
    assert (own["flux_std"] > 0).all()
    # calibrated on the runs' shared validation split (these images): each interval covers its level
    inside = np.abs(ds.label[val] - own[list(LABEL_NAMES)].to_numpy()) <= own[[f"{n}_ci95" for n in LABEL_NAMES]]
    assert (np.abs(inside.mean(axis=0) - 0.95) <= 1.5 / len(val)).all()
    # runs validated on other images are combined, uncalibrated, and the console says so
    import shutil

    shifted_run = tmp_path / "other-split"
    shutil.copytree(other, shifted_run)
    run_json = json.loads((shifted_run / "run.json").read_text())
    run_json["dataset"]["images_used"] -= 1
    (shifted_run / "run.json").write_text(json.dumps(run_json))
    argv = ["predict", str(tiny_run), str(tmp_path / "own.npz"), "-o", str(tmp_path / "unc.csv")]
    assert main([*argv, "--ensemble", str(shifted_run)]) == 0
    assert "not calibrated: its runs share no validation split" in capsys.readouterr().out
    assert "flux_ci95" not in pd.read_csv(tmp_path / "unc.csv").columns
    assert own.ood.mean() < 0.1 and moved.ood.all()
    assert moved.ood_reason.str.contains("noise sigma").all()


@pytest.mark.slow
def test_predict_takes_fits_cutouts_of_the_training_geometry_and_refuses_others(tiny_run, datasets, tmp_path):
    """FITS cutouts give the npz's estimates; a stamp size, pixel scale or PSF profile other than
    the training geometry's is refused in one line."""
    import galsim
    from astropy.io import fits

    from galparam.cli.evaluate import main
    from galparam.data import load_dataset
    from galparam.errors import GalparamError

    ds = load_dataset(datasets["fixed"])
    np.savez(tmp_path / "three.npz", img=ds.img[:3])
    header = fits.Header({"PIXSCALE": 0.23})
    names = []
    for i in range(3):
        fits.PrimaryHDU(ds.img[i].astype(np.float64), header=header).writeto(tmp_path / f"g{i}.fits")
        names.append(str(tmp_path / f"g{i}.fits"))
    moffat = galsim.Moffat(beta=2.0, fwhm=float(ds.psf_fwhm[0])).drawImage(nx=41, ny=41, scale=0.23).array
    fits.PrimaryHDU(moffat).writeto(tmp_path / "psf.fits")
    assert main(["predict", str(tiny_run), str(tmp_path / "three.npz"), "-o", str(tmp_path / "npz.csv")]) == 0
    assert (
        main(["predict", str(tiny_run), *names, "--psf", str(tmp_path / "psf.fits"), "-o", str(tmp_path / "f.csv")])
        == 0
    )
    from_npz, from_fits = pd.read_csv(tmp_path / "npz.csv"), pd.read_csv(tmp_path / "f.csv")
    np.testing.assert_allclose(from_fits[list(LABEL_NAMES)], from_npz[list(LABEL_NAMES)], rtol=1e-5)
    np.testing.assert_allclose(from_fits["psf_fwhm"], ds.psf_fwhm[0], rtol=0.02)  # measured from the PSF image
    assert list(from_fits["image"]) == names
    fits.PrimaryHDU(ds.img[0][:48, :48].astype(np.float64), header=header).writeto(tmp_path / "small.fits")
    fits.PrimaryHDU(ds.img[0].astype(np.float64), header=fits.Header({"PIXSCALE": 0.3})).writeto(
        tmp_path / "coarse.fits"
    )
    airy = galsim.Airy(lam_over_diam=0.25).drawImage(nx=41, ny=41, scale=0.23).array
    fits.PrimaryHDU(airy).writeto(tmp_path / "airy.fits")
    for argv, message in [
        ([str(tmp_path / "small.fits")], r"48×48 pixels; the network was trained on 64×64 stamps"),
        ([str(tmp_path / "coarse.fits")], r"0.3 arcsec per pixel; the network was trained at 0.23"),
        ([names[0], "--psf", str(tmp_path / "airy.fits")], r"not the Moffat β=2 profile the network was trained with"),
    ]:
        with pytest.raises(GalparamError, match=message):
            main(["predict", str(tiny_run), *argv, "-o", str(tmp_path / "bad.csv")])
    assert not (tmp_path / "bad.csv").exists()
