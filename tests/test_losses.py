"""galparam's label losses (issue 26): each equals its formula on both backends, the bias-penalized
loss weighs bias and spread as its docstring states, fresh replicas share a galaxy and nothing else,
the bound targets are the Cramér–Rao bounds, and a run's val_loss is the loss of its predictions."""

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import TINY_XCEPTION, make_spec, tiny_experiment

from galparam import load_estimator
from galparam.data import load_dataset
from galparam.errors import SpecError
from galparam.evaluate.crb import cramer_rao, dataset_bounds
from galparam.fresh import draw
from galparam.models.losses import BIAS_WEIGHT, bias_penalized_mse, bound_scaled_mse
from galparam.schema import Draws
from galparam.specs import experiment_from_dict, load_experiment
from galparam.train import train


def _numpy(loss, y_true, y_pred):
    from keras import ops

    return ops.convert_to_numpy(loss(ops.convert_to_tensor(y_true), ops.convert_to_tensor(y_pred))).astype(np.float64)


@pytest.mark.backends
def test_bound_scaled_mse_is_the_squared_error_over_each_bound():
    rng = np.random.default_rng(0)
    labels, pred = rng.normal(size=(2, 12, 5)).astype(np.float32)
    bounds = rng.uniform(0.01, 1.0, size=(12, 5)).astype(np.float32)
    bounds[3, 2] = np.inf  # a label the image does not constrain weighs nothing
    got = _numpy(bound_scaled_mse, np.hstack([labels, bounds]), pred)
    ratio = (pred.astype(np.float64) - labels) / bounds
    np.testing.assert_allclose(got, np.mean(ratio**2, axis=1), rtol=1e-5)
    assert np.isfinite(got).all()


@pytest.mark.backends
def test_bias_penalized_mse_is_its_formula_and_weighs_bias_and_spread_as_stated():
    rng = np.random.default_rng(1)
    replicas = 4
    labels, pred = rng.normal(size=(2, 10, 5)).astype(np.float32)  # groups of 4, 4 and a last one of 2
    got = _numpy(bias_penalized_mse, np.hstack([labels, np.full((10, 1), replicas, np.float32)]), pred)
    error = pred.astype(np.float64) - labels
    group_mean = np.vstack([np.repeat(error[a : a + replicas].mean(0, keepdims=True), len(error[a : a + replicas]), 0)
                            for a in range(0, 10, replicas)])  # fmt: skip
    np.testing.assert_allclose(got, np.mean(error**2 + BIAS_WEIGHT * group_mean**2, axis=1), rtol=1e-5)
    single = _numpy(bias_penalized_mse, np.hstack([labels, np.ones((10, 1), np.float32)]), pred)
    np.testing.assert_allclose(single, (1 + BIAS_WEIGHT) * np.mean(error**2, axis=1), rtol=1e-5)

    # on average (1 + λ) bias² + (1 + λ/K) variance: 4,000 galaxies of K = 8 realizations
    galaxies, replicas, spread = 4000, 8, 0.5
    bias = rng.normal(0.0, 0.3, size=(galaxies, 1, 5))
    errors = (bias + spread * rng.normal(size=(galaxies, replicas, 5))).reshape(-1, 5).astype(np.float32)
    target = np.hstack([np.zeros_like(errors), np.full((len(errors), 1), replicas, np.float32)])
    mean_loss = np.mean(np.concatenate([_numpy(bias_penalized_mse, target[a : a + 512], errors[a : a + 512])
                                        for a in range(0, len(errors), 512)]))  # fmt: skip
    expected = (1 + BIAS_WEIGHT) * np.mean(bias**2) + (1 + BIAS_WEIGHT / replicas) * spread**2
    assert mean_loss == pytest.approx(expected, rel=0.02)


def test_fresh_replicas_share_a_galaxy_and_nothing_else_and_the_bounds_are_the_crb():
    spec = make_spec(seed=5)
    keys = ("img", "img_nonoise", "label", "label_bound", "label_replicas")
    whole = draw(spec, 0, 32, keys, replicas=8)
    part = draw(spec, 8, 24, keys, replicas=8)  # a chunk that starts inside the stream: the same images
    for key in keys:
        np.testing.assert_array_equal(whole[key][8:24], part[key])
    groups = whole["label"].reshape(4, 8, 5)
    assert (groups == groups[:, :1]).all() and len(np.unique(groups[:, 0, 0])) == 4
    assert (whole["img_nonoise"].reshape(4, 8, -1) == whole["img_nonoise"].reshape(4, 8, -1)[:, :1]).all()
    noise = (whole["img"] - whole["img_nonoise"]).reshape(32, -1)
    assert np.abs(np.corrcoef(noise[:8])[np.triu_indices(8, 1)]).max() < 0.1  # independent realizations
    np.testing.assert_array_equal(whole["label_replicas"][:, 5], 8.0)
    np.testing.assert_allclose(whole["label_bound"][:, :5], whole["label"], rtol=1e-7)
    single = draw(spec, 0, 4, ("label",))  # without replicas image j is the spec's sample j
    np.testing.assert_array_equal(single["label"][::2][:1], whole["label"][:1])
    # the exact Jacobian's bound against central differences of the same renderer
    galaxy = Draws(draw(spec, 0, 1, ("params",))["params"])
    reference = cramer_rao(galaxy.labels[0], galaxy.psf_fwhm[0], galaxy.sigma[0], poisson=spec.poisson_noise)
    np.testing.assert_allclose(whole["label_bound"][0, 5:], reference.std.to_numpy(), rtol=2e-3)


def _raw(folder, **changes):
    spec = make_spec(name="fly", size=100, validation_fraction=0.2)
    (folder / "data.yaml").write_text(spec.to_yaml())
    raw = {
        "name": "fly",
        "family": "xception",
        "dataset": {"spec": str(folder / "data.yaml"), "on_the_fly": True},
        "hyperparameters": dict(TINY_XCEPTION),
        "batch_size": 16,
        "epochs": 1,
        "seed": 1,
        **changes,
    }
    return raw


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"loss": "bias_penalized_mse", "dataset": "data.npz"}, "fresh images give"),
        ({"loss": "bias_penalized_mse", "noise_replicas": 3}, "not a multiple of noise_replicas 3"),
        ({"noise_replicas": 4}, "noise_replicas: applies to loss: bias_penalized_mse"),
        ({"loss": "bound_scaled_mse", "uncertainty": "diagonal"}, "leave loss out"),
        ({"loss": "bias_penalized_mse", "family": "autoencoder", "hyperparameters": {}}, "autoencoder family"),
        ({"loss": "bound_scaled_mse", "noise_replicas": 1}, "noise_replicas"),
    ],
)
def test_label_losses_refuse_what_they_cannot_train_on(tmp_path, changes, message):
    with pytest.raises(SpecError, match=message):
        experiment_from_dict(_raw(tmp_path, **changes), source="x.yaml")


def test_a_resolved_spec_without_the_loss_keeps_its_old_keys(tmp_path):
    spec = experiment_from_dict(_raw(tmp_path), source="x.yaml")
    assert "noise_replicas" not in spec.to_dict()
    replicas = experiment_from_dict(_raw(tmp_path, loss="bias_penalized_mse", noise_replicas=4), source="x.yaml")
    assert replicas.to_dict()["noise_replicas"] == 4
    assert experiment_from_dict(yaml.safe_load(replicas.to_yaml()), source="run") == replicas


def _scaled_errors(run, images, labels):
    estimator = load_estimator(run)
    scaler = estimator.label_scaler
    return estimator.predict_scaled(images).astype(np.float64) - scaler.transform(labels), scaler


@pytest.mark.backends
def test_a_runs_val_loss_is_its_label_loss_of_its_predictions(datasets, tmp_path):
    # bound_scaled_mse from a file: the squared errors over each validation image's own bound
    run = train(tiny_experiment(datasets["fixed"], loss="bound_scaled_mse", epochs=1), tmp_path / "bound", verbose=0)
    ds = load_dataset(datasets["fixed"])
    _, val = ds.split()
    errors, scaler = _scaled_errors(run, ds.img[val], ds.label[val])
    bounds = dataset_bounds(ds, val, progress=False).to_numpy() * scaler.affine()[0]
    history = pd.read_csv(run / "history.csv")
    assert history["val_loss"].iloc[-1] == pytest.approx(np.mean((errors / bounds) ** 2), rel=1e-3)

    # bias_penalized_mse on fresh replicas: the validation images are one realization each
    path = tmp_path / "fly.yaml"
    path.write_text(yaml.safe_dump(_raw(tmp_path, loss="bias_penalized_mse", noise_replicas=4)))
    fly = train(load_experiment(path), tmp_path / "fly", verbose=0)
    validation = load_dataset(fly / "validation.npz")
    errors, _ = _scaled_errors(fly, validation.img, validation.label)
    history = pd.read_csv(fly / "history.csv")
    assert np.isfinite(history["loss"]).all()
    assert history["val_loss"].iloc[-1] == pytest.approx((1 + BIAS_WEIGHT) * np.mean(errors**2), rel=1e-3)
