"""Training runs: a small model learns, run folders are complete and usable alone, resume is exact."""

import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import ROOT, TINY_XCEPTION, tiny_experiment, train_killed_in_epoch_2

from galparam import load_estimator
from galparam.cli.common import run
from galparam.cli.evaluate import main as evaluate_main
from galparam.cli.train import main as train_main
from galparam.data import MinMaxScaler, load_dataset
from galparam.errors import GalparamError, SpecError
from galparam.models import FAMILIES, resolve_hyperparameters
from galparam.parameters import LABEL_NAMES
from galparam.runs import RunFolder
from galparam.specs import experiment_from_dict, load_experiment
from galparam.train import train

TINY_AUTOENCODER = {"base_filters": 4, "dense_units": 32, "dropout_rate": 0.0}
experiment = tiny_experiment


def test_xception_learns_noiseless_images(datasets, tmp_path):
    spec = experiment(datasets["fixed"], images="noiseless", epochs=8, learning_rate=3e-3, patience=0)
    run = train(spec, tmp_path / "run", verbose=0)
    history = pd.read_csv(run / "history.csv")
    ds = load_dataset(datasets["fixed"])
    _, val = ds.split()
    scaler = MinMaxScaler.load(run / "scaler.json")
    # The loss of always predicting the training mean, in the same scaled units as val_loss.
    train_mean = scaler.transform(ds.label[: val[0]]).mean(axis=0)
    mean_loss = float(((scaler.transform(ds.label[val]) - train_mean) ** 2).mean())
    assert history.val_loss.min() < 0.5 * mean_loss
    metrics = json.loads((run / "metrics.json").read_text())["labels"]
    assert metrics["flux"]["explained_variance"] > 0.8
    assert metrics["hlr"]["explained_variance"] > 0.3


@pytest.mark.backends
def test_run_folder_is_complete_and_usable_alone(datasets, tiny_run):
    run = RunFolder(tiny_run)
    for path in (run.model_path, run.scaler_path, run.spec_path, run.history_path, run.metrics_path, run.info_path):
        assert path.stat().st_size > 0, path
    assert sorted(p.name for p in run.stage_dir("xception").glob("epoch-*.keras")) == [
        "epoch-001.keras",
        "epoch-002.keras",
    ]
    info = run.info()
    assert info["complete"] and info["family"] == "xception" and info["psf_input"] is False
    assert info["dataset"]["train"] == 480 and info["dataset"]["validation"] == 120
    assert info["model_sha256"] == run.model_sha256()
    # Loading the folder gives back the predictions the metrics were computed from.
    ds = load_dataset(datasets["fixed"])
    _, val = ds.split()
    np.testing.assert_array_equal(run.validation_indices(), val)
    predicted = load_estimator(tiny_run).predict(ds.img[val])
    assert list(predicted.columns) == ["flux", "sersic_n", "hlr", "g1", "g2"]
    metrics = run.metrics()
    for i, name in enumerate(predicted.columns):
        rmse = math.sqrt(((predicted[name] - ds.label[val, i]) ** 2).mean())
        assert rmse == pytest.approx(metrics[name]["rmse"], rel=1e-5)
    # The resolved spec in the folder is a valid experiment and names the dataset absolutely.
    assert load_experiment(run.spec_path).dataset == datasets["fixed"].resolve()


@pytest.mark.backends
def test_same_seed_same_model_and_resume_is_exact(datasets, tiny_run, tmp_path, monkeypatch):
    spec = experiment(datasets["fixed"])  # the shared run's experiment: same seed, same model
    whole = tiny_run

    train_killed_in_epoch_2(spec, tmp_path / "resumed", monkeypatch)
    assert not (tmp_path / "resumed" / "run.json").exists()
    with pytest.raises(
        GalparamError, match=r"not a finished galparam run, no run.json \(an unfinished run: train it again with resume"
    ):
        load_estimator(tmp_path / "resumed")
    with pytest.raises(GalparamError, match="holds an unfinished run; to continue it from its checkpoint, pass resume"):
        train(spec, tmp_path / "resumed", verbose=0)
    train(spec, tmp_path / "resumed", resume=True, verbose=0)

    h_whole = pd.read_csv(whole / "history.csv")
    h_resumed = pd.read_csv(tmp_path / "resumed" / "history.csv")
    assert list(h_resumed.epoch) == [1, 2]
    np.testing.assert_allclose(h_resumed.val_loss, h_whole.val_loss, rtol=1e-6)
    ds = load_dataset(datasets["fixed"])
    a = load_estimator(whole).predict(ds.img[:50])
    b = load_estimator(tmp_path / "resumed").predict(ds.img[:50])
    np.testing.assert_allclose(a.to_numpy(), b.to_numpy(), rtol=1e-5)
    resumed = tmp_path / "resumed"
    with pytest.raises(GalparamError, match="a finished run is there; to train it again from scratch, pass overwrite"):
        train(spec, resumed, verbose=0)
    # resume on a finished run of the same experiment trains nothing; another experiment is refused.
    before = (resumed / "model.keras").stat().st_mtime_ns
    assert train(spec, resumed, resume=True, verbose=0) == resumed
    assert (resumed / "model.keras").stat().st_mtime_ns == before
    with pytest.raises(GalparamError, match="different experiment"):
        train(experiment(datasets["fixed"], epochs=4), resumed, resume=True, verbose=0)


def test_overwrite_replaces_a_run_and_the_console_names_its_flags(datasets, tmp_path, capsys, monkeypatch):
    spec_path = tmp_path / "e.yaml"
    spec_path.write_text(yaml.safe_dump(experiment(datasets["fixed"], epochs=1, max_images=100).to_dict()))
    out = str(tmp_path / "run")
    assert run(train_main, [str(spec_path), "-o", out, "-q"], prog="galparam-train") == 0
    assert run(train_main, ["run", str(spec_path), "-o", out, "-q"], prog="galparam-train") == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith("a finished run is there; to train it again from scratch, pass --overwrite")
    )
    first = pd.read_csv(RunFolder(out).history_path)
    (tmp_path / "run" / "history.csv").unlink()
    assert run(train_main, ["run", str(spec_path), "-o", out, "-q", "--overwrite"], prog="galparam-train") == 0
    again = pd.read_csv(RunFolder(out).history_path)  # trained again from scratch, to the same model
    np.testing.assert_allclose(again.val_loss, first.val_loss, rtol=1e-6)
    # an ensemble member: another seed, into runs/NAME-seedN
    monkeypatch.chdir(tmp_path)
    assert run(train_main, [str(spec_path), "--seed", "-1"], prog="galparam-train") == 2
    assert "--seed -1: a whole number from 0" in capsys.readouterr().err
    assert run(train_main, [str(spec_path), "--seed", "5", "-q"], prog="galparam-train") == 0
    member = RunFolder(tmp_path / "runs" / f"{yaml.safe_load(spec_path.read_text())['name']}-seed5")
    assert yaml.safe_load(member.spec_path.read_text())["seed"] == 5
    assert not np.allclose(pd.read_csv(member.history_path).val_loss, first.val_loss, rtol=1e-6)


@pytest.mark.backends
def test_psf_input_model(datasets, tmp_path):
    run = train(experiment(datasets["varying"], epochs=1), tmp_path / "run", verbose=0)
    info = json.loads((run / "run.json").read_text())
    assert info["psf_input"] is True
    estimator = load_estimator(run)
    ds = load_dataset(datasets["varying"])
    assert estimator.predict(ds.img[:4], ds.psf_img[:4]).shape == (4, 5)
    with pytest.raises(GalparamError, match="psf_images"):
        estimator.predict(ds.img[:4])
    with pytest.raises(GalparamError, match=r"\(N, 64, 64\)"):
        estimator.predict(np.zeros((2, 32, 32)), ds.psf_img[:2])


@pytest.mark.backends
def test_autoencoder_stages_each_lower_their_loss(datasets, tmp_path):
    spec = experiment(
        datasets["fixed"], family="autoencoder", hyperparameters=TINY_AUTOENCODER, epochs=3, learning_rate=3e-3
    )
    run = train(spec, tmp_path / "run", verbose=0)
    history = pd.read_csv(run / "history.csv")
    assert list(history.stage.unique()) == ["encoder", "decoder", "joint"]
    for stage, rows in history.groupby("stage"):
        assert rows.loss.iloc[-1] < rows.loss.iloc[0], stage
    assert {"labels_loss", "image_loss"} <= set(history.columns)
    estimator = load_estimator(run)
    ds = load_dataset(datasets["fixed"])
    predicted = estimator.predict(ds.img[:5])
    assert predicted.shape == (5, 5)
    image = estimator.reconstruct(ds.label[:60])
    assert image.shape == (60, 64, 64)
    # The decoder learned the forward model's scale: reconstructed fluxes track the true ones.
    assert np.corrcoef(image.sum(axis=(1, 2)), ds.label[:60, 0])[0, 1] > 0.5


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"epochz": 3}, "unknown key 'epochz'"),
        ({"batch_size": "many"}, "batch_size: 'many' is not an integer"),
        ({"family": "resnet"}, "accepted: xception, autoencoder"),
        ({"hyperparameters": {"filters": 3}}, "unknown xception argument 'filters'"),
        ({"dataset": "nowhere.npz"}, "no such file"),
        ({"psf_input": True}, "one PSF for all images"),
        ({"max_images": 3, "validation_fraction": 0.1}, "both need images"),
    ],
)
def test_bad_experiments_fail_before_training(datasets, tmp_path, capsys, changes, words):
    raw = {"name": "t", "family": "xception", "dataset": str(datasets["fixed"]), "epochs": 1}
    raw.update(changes)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert run(train_main, [str(path), "-o", str(tmp_path / "run")], prog="galparam-train") == 2
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_nan_data_is_rejected(datasets, tmp_path):
    with np.load(datasets["fixed"]) as z:
        arrays = dict(z)
    arrays["img"] = arrays["img"].copy()
    arrays["img"][3, 10, 10] = np.nan
    bad = tmp_path / "nan.npz"
    np.savez(bad, **arrays)
    with pytest.raises(GalparamError, match="img holds 1 NaN"):
        train(experiment(bad), tmp_path / "run", verbose=0)
    assert not (tmp_path / "run").exists()


def test_hyperparameters_from_a_search_json(datasets, tmp_path):
    (tmp_path / "best.json").write_text(json.dumps({"hyperparameters": {**TINY_XCEPTION, "learning_rate": 0.002}}))
    spec = experiment_from_dict(
        {"name": "t", "family": "xception", "dataset": str(datasets["fixed"]), "hyperparameters": "best.json"},
        source="s.yaml",
        base_dir=tmp_path,
    )
    hp, lr = resolve_hyperparameters(spec)
    assert hp["sep_num_filters"] == 16 and lr == 0.002
    with pytest.raises(SpecError, match="no such file"):
        experiment_from_dict({**spec.to_dict(), "hyperparameters": "missing.json"}, base_dir=tmp_path)


@pytest.mark.backends
def test_predict_console_writes_a_csv_for_any_npz(datasets, tiny_run, tmp_path, capsys):
    ds = load_dataset(datasets["fixed"])
    own = tmp_path / "mine.npz"
    np.savez(own, galaxies=ds.img[:7])  # a user's file: one array, any name
    out = tmp_path / "pred.csv"
    assert evaluate_main(["predict", str(tiny_run), str(own), "-o", str(out)]) == 0
    table = pd.read_csv(out)
    flags = ["ood", "ood_reason", "sigma", "psf_fwhm", "snr", "chi2_per_pixel"]  # out-of-distribution checks
    assert list(table.columns) == ["index", "flux", "sersic_n", "hlr", "g1", "g2", *flags] and len(table) == 7
    np.testing.assert_allclose(table.flux, load_estimator(tiny_run).predict(ds.img[:7]).flux, rtol=1e-5)


def test_console_errors_come_before_tensorflow_and_alone(datasets, tmp_path):
    """A bad run folder is one line on stderr: TensorFlow's start-up chatter never reaches the user."""
    cli = [sys.executable, "-m", "galparam.cli.evaluate", "predict"]
    bad = subprocess.run(
        [*cli, str(tmp_path / "nope"), str(datasets["fixed"]), "-o", "x.csv"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and bad.stderr.splitlines() == [
        f"galparam-evaluate: error: {tmp_path / 'nope'}: no such run folder"
    ]
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "experiment.yaml").write_text("name: x\n")
    bad = subprocess.run([*cli, str(unfinished), str(datasets["fixed"]), "-o", "x.csv"], capture_output=True, text=True)
    assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1 and "an unfinished run" in bad.stderr, bad.stderr


def test_tensorflow_start_up_lines_stay_off_the_terminal(datasets, tiny_run, tmp_path):
    out = tmp_path / "p.csv"
    cli = [sys.executable, "-m", "galparam.cli.evaluate", "predict", str(tiny_run), str(datasets["fixed"])]
    done = subprocess.run([*cli, "-o", str(out)], capture_output=True, text=True)
    assert done.returncode == 0 and out.exists()
    assert done.stderr == "", done.stderr


def test_shipped_experiment_specs_are_valid():
    folder = ROOT / "experiments"
    specs = sorted(folder.glob("*.yaml"))
    assert len(specs) >= 14
    for path in specs:
        spec = load_experiment(path)
        resolve_hyperparameters(spec)
        recipe = spec.dataset.with_suffix(".yaml")
        assert recipe.exists(), f"{path.name}: no dataset spec {recipe}"


def test_an_xception_run_recorded_before_losses_were_resolved_still_resumes(datasets, tiny_run, tmp_path):
    """Earlier versions wrote the unused autoencoder default ``loss: binary_crossentropy`` into an Xception's record."""
    old = tmp_path / "old"
    shutil.copytree(tiny_run, old)
    record = RunFolder(old).spec_path
    record.write_text(record.read_text().replace("loss: mse", "loss: binary_crossentropy"))
    assert train(experiment(datasets["fixed"]), old, resume=True, verbose=0) == old  # finished: nothing to train
    record.write_text(record.read_text().replace("epochs: 2", "epochs: 5"))
    with pytest.raises(GalparamError, match="different experiment"):
        train(experiment(datasets["fixed"]), old, resume=True, verbose=0)


@pytest.mark.slow  # trains each family
@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_trains_from_the_console_and_prints_its_validation(family, datasets, tmp_path, capsys):
    """galparam-train on a denoiser wrote its run, then died printing label metrics it has not
    (KeyError: 'flux'): what the console prints comes from the family's declaration."""
    raw = {
        "name": family,
        "family": family,
        "dataset": str(datasets["fixed"]),
        "epochs": 1,
        "max_images": 64,
        "batch_size": 16,
        "validation_fraction": 0.25,
    }
    path = tmp_path / f"{family}.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert run(train_main, [str(path), "-o", str(tmp_path / "run"), "-q"], prog="galparam-train") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"run complete: {tmp_path / 'run'}" and "validation (16 images)" in out[1]
    rows = {line.split()[0]: line.split()[1:] for line in out[2:]}
    if FAMILIES[family].restores_images:
        metrics = RunFolder(tmp_path / "run").restoration_metrics()
        assert set(rows) == {"noisy", "denoised"} and "psnr_db" in out[1]
        assert float(rows["denoised"][1]) == pytest.approx(metrics["denoised"]["psnr_db"], rel=1e-4)
    else:
        metrics = RunFolder(tmp_path / "run").metrics()
        assert set(rows) == set(LABEL_NAMES)
        assert float(rows["flux"][0]) == pytest.approx(metrics["flux"]["rmse"], rel=1e-4)
