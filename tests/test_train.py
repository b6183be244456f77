"""Training runs: a small model learns, run folders are complete and usable alone, resume is exact."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import yaml

import galparam.train as train_module
from galparam import load_estimator
from galparam.cli.common import run
from galparam.cli.evaluate import main as evaluate_main
from galparam.cli.train import main as train_main
from galparam.data import MinMaxScaler, load_dataset
from galparam.errors import GalparamError, SpecError
from galparam.specs import experiment_from_dict, load_experiment
from galparam.train import train

TINY_XCEPTION = {"conv2d_num_filters": 8, "sep_num_filters": 16, "num_residual_blocks": 1}
TINY_AUTOENCODER = {"base_filters": 4, "dense_units": 32, "dropout_rate": 0.0}


def experiment(dataset, **changes):
    raw = {
        "name": "t",
        "family": "xception",
        "dataset": str(dataset),
        "hyperparameters": dict(TINY_XCEPTION),
        "batch_size": 32,
        "epochs": 2,
        "seed": 3,
    }
    raw.update(changes)
    return experiment_from_dict(raw, source="test-experiment.yaml")


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


def test_run_folder_is_complete_and_usable_alone(datasets, tmp_path):
    run = train(experiment(datasets["fixed"]), tmp_path / "run", verbose=0)
    for name in ("model.keras", "scaler.json", "experiment.yaml", "history.csv", "metrics.json", "run.json"):
        assert (run / name).stat().st_size > 0, name
    assert sorted(p.name for p in (run / "checkpoints" / "xception").glob("epoch-*.keras")) == [
        "epoch-001.keras",
        "epoch-002.keras",
    ]
    info = json.loads((run / "run.json").read_text())
    assert info["complete"] and info["family"] == "xception" and info["psf_input"] is False
    assert info["dataset"]["train"] == 480 and info["dataset"]["validation"] == 120
    # Loading the folder gives back the predictions the metrics were computed from.
    ds = load_dataset(datasets["fixed"])
    _, val = ds.split()
    predicted = load_estimator(run).predict(ds.img[val])
    assert list(predicted.columns) == ["flux", "sersic_n", "hlr", "g1", "g2"]
    metrics = json.loads((run / "metrics.json").read_text())["labels"]
    for i, name in enumerate(predicted.columns):
        rmse = math.sqrt(((predicted[name] - ds.label[val, i]) ** 2).mean())
        assert rmse == pytest.approx(metrics[name]["rmse"], rel=1e-5)
    # The resolved spec in the folder is a valid experiment and names the dataset absolutely.
    assert load_experiment(run / "experiment.yaml").dataset == datasets["fixed"].resolve()


def test_same_seed_same_model_and_resume_is_exact(datasets, tmp_path, monkeypatch):
    spec = experiment(datasets["fixed"], epochs=3)
    whole = train(spec, tmp_path / "whole", verbose=0)

    original = train_module._EpochCheckpoint.end_epoch

    def killed_in_epoch_2(self, model, epoch, logs):
        if epoch == 1:
            raise KeyboardInterrupt
        original(self, model, epoch, logs)

    monkeypatch.setattr(train_module._EpochCheckpoint, "end_epoch", killed_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train(spec, tmp_path / "resumed", verbose=0)
    monkeypatch.setattr(train_module._EpochCheckpoint, "end_epoch", original)
    assert not (tmp_path / "resumed" / "run.json").exists()
    with pytest.raises(GalparamError, match="unfinished run"):
        load_estimator(tmp_path / "resumed")
    with pytest.raises(GalparamError, match="--resume"):
        train(spec, tmp_path / "resumed", verbose=0)
    train(spec, tmp_path / "resumed", resume=True, verbose=0)

    h_whole = pd.read_csv(whole / "history.csv")
    h_resumed = pd.read_csv(tmp_path / "resumed" / "history.csv")
    assert list(h_resumed.epoch) == [1, 2, 3]
    np.testing.assert_allclose(h_resumed.val_loss, h_whole.val_loss, rtol=1e-6)
    ds = load_dataset(datasets["fixed"])
    a = load_estimator(whole).predict(ds.img[:50])
    b = load_estimator(tmp_path / "resumed").predict(ds.img[:50])
    np.testing.assert_allclose(a.to_numpy(), b.to_numpy(), rtol=1e-5)
    with pytest.raises(GalparamError, match="finished run"):
        train(spec, whole, verbose=0)
    # --resume on a finished run of the same experiment trains nothing; another experiment is refused.
    before = (whole / "model.keras").stat().st_mtime_ns
    assert train(spec, whole, resume=True, verbose=0) == whole
    assert (whole / "model.keras").stat().st_mtime_ns == before
    with pytest.raises(GalparamError, match="different experiment"):
        train(experiment(datasets["fixed"], epochs=4), whole, resume=True, verbose=0)


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
    image = estimator.reconstruct(ds.label[:5])
    assert image.shape == (5, 64, 64)
    # The decoder learned the forward model's scale: reconstructed fluxes track the true ones.
    assert np.corrcoef(image.sum(axis=(1, 2)), ds.label[:5, 0])[0, 1] > 0.5


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
    hp, lr = train_module.resolve_hyperparameters(spec)
    assert hp["sep_num_filters"] == 16 and lr == 0.002
    with pytest.raises(SpecError, match="no such file"):
        experiment_from_dict({**spec.to_dict(), "hyperparameters": "missing.json"}, base_dir=tmp_path)


def test_predict_console_writes_a_csv_for_any_npz(datasets, tmp_path, capsys):
    run = train(experiment(datasets["fixed"], epochs=1), tmp_path / "run", verbose=0)
    ds = load_dataset(datasets["fixed"])
    own = tmp_path / "mine.npz"
    np.savez(own, galaxies=ds.img[:7])  # a user's file: one array, any name
    out = tmp_path / "pred.csv"
    assert evaluate_main(["predict", str(run), str(own), "-o", str(out)]) == 0
    table = pd.read_csv(out)
    assert list(table.columns) == ["index", "flux", "sersic_n", "hlr", "g1", "g2"] and len(table) == 7
    np.testing.assert_allclose(table.flux, load_estimator(run).predict(ds.img[:7]).flux, rtol=1e-5)


def test_shipped_experiment_specs_are_valid():
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "experiments"
    specs = sorted(folder.glob("*.yaml"))
    assert len(specs) >= 14
    for path in specs:
        spec = load_experiment(path)
        train_module.resolve_hyperparameters(spec)
        recipe = spec.dataset.with_suffix(".yaml")
        assert recipe.exists(), f"{path.name}: no dataset spec {recipe}"
