"""Denoisers (EDSR, RDN), their restoration metrics, two-stage runs and the joint model."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, tiny_experiment

from galparam.errors import GalparamError, SpecError
from galparam.evaluate.restoration import psnr, restoration_by_snr, restoration_scores, ssim
from galparam.specs import experiment_from_dict

TINY_EDSR = {"num_filters": 8, "num_res_blocks": 1}


def edsr_parameters(f, b):
    """EDSR's count by hand: head, b blocks of two 3x3 convolutions, the body's end, the correction."""
    return (9 * f + f) + b * 2 * (9 * f * f + f) + (9 * f * f + f) + (9 * f + 1)


def rdn_parameters(g0, d, c, g):
    """RDN's count by hand: two shallow convolutions, d dense blocks, global fusion, the correction."""
    block = sum(9 * (g0 + i * g) * g + g for i in range(c)) + (g0 + c * g) * g0 + g0
    return (9 * g0 + g0) + (9 * g0 * g0 + g0) + d * block + (d * g0 * g0 + g0) + (9 * g0 * g0 + g0) + (9 * g0 + 1)


@pytest.mark.parametrize(
    "family, args, expected",
    [
        ("edsr", {}, edsr_parameters(64, 8)),  # the reference's code default: 628,993
        pytest.param(
            "edsr",
            {"num_filters": 256, "num_res_blocks": 16, "res_scaling": 0.1},
            edsr_parameters(256, 16),
            marks=pytest.mark.slow,
        ),
        ("rdn", {}, rdn_parameters(32, 4, 4, 16)),
        pytest.param(
            "rdn",
            {"num_features": 64, "num_blocks": 20, "num_layers": 6, "growth_rate": 32},
            rdn_parameters(64, 20, 6, 32),
            marks=pytest.mark.slow,
        ),
    ],
)
def test_denoiser_builders_give_same_size_images_and_the_expected_parameter_counts(family, args, expected):
    import importlib

    module = importlib.import_module(f"galparam.models.{family}")
    model = getattr(module, f"build_{family}")((64, 64, 1), **args)
    assert model.input_shape == (None, 64, 64, 1) and model.output_shape == (None, 64, 64, 1)
    assert model.count_params() == expected
    if family == "edsr" and args:
        assert expected == 19_477_505 and args == module.REFERENCE_RUN
    if family == "rdn" and args:
        assert expected == 5_466_497 and args == module.REFERENCE_RUN


def test_denoiser_builders_reject_bad_arguments():
    from galparam.models.edsr import build_edsr
    from galparam.models.rdn import build_rdn

    with pytest.raises(GalparamError, match="num_filters 0: accepted whole numbers >= 1"):
        build_edsr(num_filters=0)
    with pytest.raises(GalparamError, match=r"res_scaling 2: accepted \[0, 1\]"):
        build_edsr(res_scaling=2)
    with pytest.raises(GalparamError, match="growth_rate 1.5"):
        build_rdn(growth_rate=1.5)
    with pytest.raises(GalparamError, match="a denoiser takes"):
        build_edsr((64, 64, 2))


def _blob(sigma=50.0, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:64, :64]
    clean = 1000 * np.exp(-((xx - 32) ** 2 + (yy - 28) ** 2) / 50)
    return clean + rng.normal(0, sigma, clean.shape), clean


def test_ssim_and_psnr_match_scikit_image():
    noisy, clean = _blob()
    # skimage.metrics.structural_similarity(noisy, clean, gaussian_weights=True, sigma=1.5,
    # use_sample_covariance=False, data_range=np.ptp(clean)) and peak_signal_noise_ratio (0.25.0)
    assert ssim(noisy, clean)[0] == pytest.approx(0.3115585052489817, rel=1e-9)
    assert psnr(noisy, clean)[0] == pytest.approx(26.040720488055896, rel=1e-9)
    assert ssim(clean, clean)[0] == pytest.approx(1.0)
    better = restoration_scores(np.stack([_blob(10)[0], _blob(100)[0]]), np.stack([clean, clean]))
    assert better["residual_rms"][0] < better["residual_rms"][1] and better["ssim"][0] > better["ssim"][1]


def test_restoration_by_snr_bins_the_images_and_gives_the_gain():
    pairs = [_blob(s, seed=i) for i, s in enumerate((20, 20, 200))]
    noisy, clean = np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
    denoised = clean + (noisy - clean) / 2
    table = restoration_by_snr(noisy, denoised, clean, snr=[50, 55, 5], edges=(0, 20, 60))
    assert list(table["snr_bin"]) == ["[0.0, 20.0)", "[20.0, 60.0)", "all"]
    assert list(table["images"]) == [1, 2, 3]
    # halving the residual gains 20 log10(2) dB in every image
    np.testing.assert_allclose(table["psnr_gain_db"], 20 * np.log10(2), rtol=1e-12)
    np.testing.assert_allclose(table["denoised_residual_rms"], table["noisy_residual_rms"] / 2, rtol=1e-12)
    assert table["noisy_residual_rms"][2] == pytest.approx(np.sqrt(((noisy - clean) ** 2).mean()))


def denoiser_experiment(dataset, **changes):
    raw = {
        "name": "d",
        "family": "edsr",
        "dataset": str(dataset),
        "hyperparameters": dict(TINY_EDSR),
        "batch_size": 32,
        "epochs": 3,
        "learning_rate": 0.003,
        "seed": 1,
    }
    raw.update(changes)
    return experiment_from_dict(raw, source="test-denoiser.yaml")


def test_denoiser_specs_reject_what_does_not_apply(datasets, tmp_path):
    with pytest.raises(SpecError, match="a denoiser learns noisy"):
        denoiser_experiment(datasets["fixed"], images="noiseless")
    with pytest.raises(SpecError, match="not binary_crossentropy"):
        denoiser_experiment(datasets["fixed"], loss="binary_crossentropy")
    with pytest.raises(SpecError, match="denoiser: applies to the xception family"):
        denoiser_experiment(datasets["fixed"], denoiser="runs/d")
    with pytest.raises(SpecError, match="joint: true needs denoiser"):
        tiny_experiment(datasets["fixed"], joint=True)
    with pytest.raises(SpecError, match="loss_weights: applies to the joint"):
        tiny_experiment(datasets["fixed"], loss_weights=[1, 1])
    spec = denoiser_experiment(datasets["fixed"])
    assert spec.loss == "mae" and spec.to_dict()["family"] == "edsr" and "denoiser" not in spec.to_dict()


@pytest.fixture(scope="session")
def tiny_denoiser(datasets, tmp_path_factory):
    """A finished 3-epoch tiny EDSR run on the fixed-PSF dataset; do not write into it."""
    from galparam.train import train

    return train(denoiser_experiment(datasets["fixed"]), tmp_path_factory.mktemp("denoiser") / "run", verbose=0)


@pytest.mark.slow
def test_a_tiny_denoiser_beats_the_identity(tiny_denoiser, datasets):
    from galparam.data import load_dataset
    from galparam.estimator import load_denoiser, load_estimator
    from galparam.runs import RunFolder

    run = RunFolder(tiny_denoiser)
    info = run.info()
    assert info["family"] == "edsr" and info["parameters"] == edsr_parameters(8, 1)
    assert run.image_scaler_path.exists() and not run.scaler_path.exists()
    metrics = run.restoration_metrics()
    noisy, denoised = metrics["noisy"], metrics["denoised"]
    assert denoised["residual_rms"] < 0.5 * noisy["residual_rms"]
    assert denoised["psnr_db"] > noisy["psnr_db"] + 6 and denoised["ssim"] > noisy["ssim"]
    # the metrics are those of the loaded denoiser on the validation split, in counts
    ds = load_dataset(datasets["fixed"])
    val = run.validation_indices(info)
    restored = load_denoiser(tiny_denoiser).denoise(ds.img[val])
    rms = np.sqrt(((restored - ds.img_nonoise[val]) ** 2).mean())
    assert rms == pytest.approx(denoised["residual_rms"], rel=1e-4)
    with pytest.raises(GalparamError, match="restores images and estimates no parameters"):
        load_estimator(tiny_denoiser)


@pytest.mark.slow
def test_two_stage_run_trains_on_restored_images_and_predicts_with_both_stages(tiny_denoiser, datasets, tmp_path):
    from galparam.data import load_dataset
    from galparam.estimator import load_denoiser, load_estimator
    from galparam.runs import RunFolder
    from galparam.train import train

    denoiser_copy = tmp_path / "denoiser"
    shutil.copytree(tiny_denoiser, denoiser_copy)
    spec = tiny_experiment(datasets["fixed"], denoiser=str(denoiser_copy))
    folder = train(spec, tmp_path / "two", verbose=0)
    run = RunFolder(folder)
    info = run.info()
    sha = RunFolder(denoiser_copy).model_sha256()
    assert info["denoiser"] == {"run": str(denoiser_copy), "name": "d", "family": "edsr", "model_sha256": sha}
    assert not info["joint"]
    restored = np.load(run.denoised_path(sha))
    ds = load_dataset(datasets["fixed"])
    denoiser = load_denoiser(denoiser_copy)
    np.testing.assert_allclose(restored[:8], denoiser.denoise(ds.img[:8]), rtol=1e-5, atol=1e-2)
    estimator = load_estimator(folder)
    assert estimator.denoiser is not None and estimator.denoiser.model_sha256 == sha
    predicted = estimator.predict(ds.img[:5]).to_numpy()
    by_hand = estimator.label_scaler.inverse_transform(estimator.model.predict(restored[:5, ..., None], verbose=0))
    np.testing.assert_allclose(predicted, by_hand, rtol=1e-4)
    assert set(json.loads(run.metrics_path.read_text())["labels"]) == {"flux", "sersic_n", "hlr", "g1", "g2"}

    # the report: the pipeline in the validation table, the denoiser's table by SNR bin and its images
    from galparam.report import write_report

    report = write_report(tmp_path / "report", runs=[folder, denoiser_copy])
    assert list(report.validation_table["pipeline"]) == ["edsr d → xception"]
    table = report.denoising_table
    assert table["model"].eq("d").all() and table["snr_bin"].iloc[-1] == "all"
    val = RunFolder(denoiser_copy).validation_indices()
    assert table["images"].iloc[-1] == len(val) == table["images"].iloc[:-1].sum()
    assert table["psnr_gain_db"].iloc[-1] > 6
    written = {p.name for p in report.files}
    assert {"denoising.csv", "denoising.md", "denoising.tex", "denoising_d.png", "validation.md"} <= written

    # a denoiser trained again since is refused, by the estimator and by a resumed run
    shutil.copy(RunFolder(tiny_denoiser).model_path, denoiser_copy / "ignored.keras")
    info_path = RunFolder(denoiser_copy).info_path
    recorded = json.loads(info_path.read_text())
    recorded["model_sha256"] = "0" * 64
    info_path.write_text(json.dumps(recorded))
    with pytest.raises(GalparamError, match="differs from the model its run.json records"):
        load_estimator(folder)
    shutil.rmtree(denoiser_copy)
    with pytest.raises(GalparamError, match="no such run folder"):
        load_estimator(folder)


@pytest.mark.slow
def test_bad_denoiser_references_fail_before_training(tiny_run, tiny_denoiser, datasets, tmp_path):
    from galparam.train import train

    for reference, message in [
        (tmp_path / "missing", "denoiser: .*no such run folder"),
        (tiny_run, "is a run of family xception; a denoiser is a run of edsr or rdn"),
    ]:
        with pytest.raises(GalparamError, match=message):
            train(tiny_experiment(datasets["fixed"], denoiser=str(reference)), tmp_path / "x", verbose=0)
    unfinished = tmp_path / "unfinished"
    shutil.copytree(tiny_denoiser, unfinished)
    (unfinished / "run.json").unlink()
    with pytest.raises(GalparamError, match="not a finished galparam run"):
        train(tiny_experiment(datasets["fixed"], denoiser=str(unfinished)), tmp_path / "y", verbose=0)
    from galparam.runs import ExperimentData

    spec = tiny_experiment(datasets["fixed"], denoiser=str(tiny_denoiser))
    fly = spec.__class__(**{**spec.__dict__, "on_the_fly": True})
    with pytest.raises(GalparamError, match="denoiser: needs a dataset file"):
        ExperimentData(fly, on_the_fly=True)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


@pytest.mark.slow
def test_the_joint_model_lowers_both_losses(tiny_denoiser, datasets, tmp_path):
    from galparam.estimator import load_estimator
    from galparam.runs import RunFolder
    from galparam.train import train

    spec = tiny_experiment(
        datasets["fixed"], denoiser=str(tiny_denoiser), joint=True, loss_weights=[1.0, 10.0], epochs=3, max_images=240
    )
    folder = train(spec, tmp_path / "joint", verbose=0)
    run = RunFolder(folder)
    history = pd.read_csv(run.history_path)
    assert list(history["stage"]) == ["denoiser_xception"] * 3
    assert history["labels_loss"].iloc[-1] < history["labels_loss"].iloc[0]
    assert history["denoised_loss"].iloc[-1] < history["denoised_loss"].iloc[0]
    info = run.info()
    assert info["joint"] and info["denoiser"]["name"] == "d"
    estimator = load_estimator(folder)
    assert estimator.denoiser is None  # the joint model holds its own denoiser
    from galparam.data import load_dataset

    predicted = estimator.predict(load_dataset(datasets["fixed"]).img[:4])
    assert predicted.shape == (4, 5) and np.isfinite(predicted.to_numpy()).all()


@pytest.mark.slow
def test_the_denoising_benchmark_refuses_bad_arguments():
    import subprocess
    import sys

    for args, message in (
        (["--images", "5"], "--images 5: a whole number >= 10"),
        (["--budget-s", "0"], "--budget-s 0"),
    ):
        done = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / "bench_denoise.py"), "out", *args],
            capture_output=True,
            text=True,
        )
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
