"""Fresh images drawn on the device (``draw_on: device``): the numpy path's model and
distributions, images that depend only on (seed, epoch, index), and a training that resumes exactly.

The device tests run in ``make test``'s JAX pass (``backends``); the TensorFlow pass checks what a
TensorFlow process says.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import DATA, TINY_XCEPTION, make_spec, train_killed_in_epoch_2
from scipy.stats import ks_2samp

from galparam import backend
from galparam.cli.common import run
from galparam.cli.train import main as train_main
from galparam.data import load_dataset
from galparam.errors import SpecError
from galparam.parameters import LABEL_NAMES
from galparam.render import KSpaceRenderer
from galparam.simulate import simulate
from galparam.specs import experiment_from_dict, load_experiment, load_spec
from galparam.train import train

ON_JAX = pytest.mark.skipif(backend.name() != "jax", reason="the device draws in the JAX pass")


def _draw(spec, epoch, index):
    import jax
    import jax.numpy as jnp

    from galparam.device_draw import DeviceDrawer

    drawer = DeviceDrawer(spec, spec.seed)
    out = jax.jit(drawer.draw)(epoch, jnp.asarray(index, jnp.int32))
    return {key: np.asarray(value) for key, value in out.items()}


@pytest.mark.backends
@ON_JAX
def test_device_images_are_the_numpy_renderers_and_depend_only_on_seed_epoch_and_index():
    spec = load_spec(DATA / "v3.yaml")  # every prior kind: uniform, discretized, integers, a varying PSF
    whole = _draw(spec, 3, np.arange(48))
    part = _draw(spec, 3, np.arange(20, 36))  # other batch-mates, another batch size
    for key in ("img", "img_nonoise", "label", "snr", "attempts"):
        np.testing.assert_array_equal(part[key], whole[key][20:36])
    other = _draw(spec, 4, np.arange(48))
    assert not np.isin(other["label"][:, 0], whole["label"][:, 0]).any()
    # the numpy renderer's images of the same parameters, each on its own grid
    expected = KSpaceRenderer().images(*whole["label"].astype(np.float64).T, whole["psf_fwhm"].astype(np.float64))
    peak = expected.max(axis=(1, 2))
    assert (np.abs(whole["img_nonoise"] - expected).max(axis=(1, 2)) / peak).max() < 1e-4
    snr = np.sqrt((expected.astype(np.float64) ** 2).sum(axis=(1, 2))) / whole["sigma"]
    np.testing.assert_allclose(whole["snr"], snr, rtol=1e-4)
    assert ((whole["snr"] >= 10) & (whole["snr"] <= 100)).all() and whole["attempts"].max() > 1
    # the noise: Poisson on the light, then the image's Gaussian sigma
    residual = (whole["img"] - whole["img_nonoise"]) / np.sqrt(
        whole["sigma"][:, None, None] ** 2 + whole["img_nonoise"]
    )
    assert abs(residual.std() - 1) < 0.01 and abs(residual.mean()) < 0.01


@pytest.mark.backends
@ON_JAX
def test_device_draws_follow_the_numpy_paths_distributions(tmp_path):
    """Two-sample Kolmogorov–Smirnov tests of each parameter and the SNR, 2,000 draws each side
    (the benchmark runs 20,000): the SNR window's rejection and the priors are the same."""
    spec = load_spec(DATA / "v3.yaml").with_overrides(size=2000, seed=11)
    ds = load_dataset(simulate(spec, tmp_path / "v3.npz", jobs=1, progress=False).output)
    device = _draw(spec, 0, np.arange(2000))
    columns = {name: (ds.label[:, j], device["label"][:, j]) for j, name in enumerate(LABEL_NAMES)}
    columns.update({name: (getattr(ds, name), device[name]) for name in ("psf_fwhm", "sigma", "snr")})
    p = {name: ks_2samp(a, b).pvalue for name, (a, b) in columns.items()}
    assert min(p.values()) > 1e-3, p


def _device_raw(folder) -> dict:
    """A tiny Xception's experiment on fresh images drawn on the device (its data spec written)."""
    (folder / "data.yaml").write_text(make_spec(name="dev", size=100, validation_fraction=0.2).to_yaml())
    return {
        "name": "dev",
        "family": "xception",
        "dataset": {"spec": "data.yaml", "on_the_fly": True, "draw_on": "device"},
        "hyperparameters": dict(TINY_XCEPTION),
        "batch_size": 16,
        "epochs": 2,
        "seed": 1,
    }


def _device_experiment(folder):
    (folder / "dev.yaml").write_text(yaml.safe_dump(_device_raw(folder)))
    return load_experiment(folder / "dev.yaml")


def test_draw_on_is_checked_where_the_experiment_is_read(tmp_path):
    spec = _device_experiment(tmp_path)
    assert spec.draw_on == "device" and experiment_from_dict(yaml.safe_load(spec.to_yaml()), source="r") == spec
    for value, words in [
        ({"spec": "data.yaml", "draw_on": "gpu"}, "draw_on: 'gpu' is not one of host, device"),
        ({"spec": "data.yaml", "on_the_fly": False, "draw_on": "device"}, "it needs on_the_fly: true"),
    ]:
        with pytest.raises(SpecError, match=words):
            experiment_from_dict({"name": "f", "family": "xception", "dataset": value}, base_dir=tmp_path)


@pytest.mark.skipif(backend.name() == "jax", reason="checks what a TensorFlow process says")
def test_draw_on_device_in_a_tensorflow_process_is_one_line_and_exit_2(tmp_path, capsys):
    _device_experiment(tmp_path)
    assert run(train_main, [str(tmp_path / "dev.yaml"), "-o", str(tmp_path / "run")], prog="galparam-train") == 2
    err = capsys.readouterr().err
    assert "draw_on: device" in err and "KERAS_BACKEND=jax" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.backends
@ON_JAX
def test_training_on_device_drawn_images_resumes_exactly(tmp_path, monkeypatch):
    spec = _device_experiment(tmp_path)
    whole = train(spec, tmp_path / "whole", verbose=0)
    history = pd.read_csv(whole / "history.csv")
    assert len(history) == 2 and np.isfinite(history.loss).all() and np.isfinite(history.val_loss).all()
    train_killed_in_epoch_2(spec, tmp_path / "resumed", monkeypatch)
    train(spec, tmp_path / "resumed", resume=True, verbose=0)
    resumed = pd.read_csv(tmp_path / "resumed" / "history.csv")
    np.testing.assert_allclose(resumed.loss, history.loss, rtol=1e-5)
    np.testing.assert_allclose(resumed.val_loss, history.val_loss, rtol=1e-5)


DATA_PARALLEL = """
import json, sys
import pandas as pd
from galparam.specs import experiment_from_dict
from galparam.train import train

def main():
    raw, folder = json.loads(sys.argv[1]), sys.argv[2]
    out = {}
    for strategy in (None, "data_parallel"):
        spec = experiment_from_dict({**raw, "strategy": strategy}, source="dev.yaml", base_dir=folder)
        run = train(spec, folder + "/" + str(strategy), verbose=0)
        out[str(strategy)] = pd.read_csv(run / "history.csv")[["loss", "val_loss"]].to_dict("list")
    print(json.dumps(out))

if __name__ == "__main__":
    main()
"""


@pytest.mark.slow  # trains twice, in a JAX process whose CPU is split into two devices
def test_device_drawn_images_train_to_the_same_losses_on_two_devices(tmp_path):
    """Each device draws its share of a batch's keys: the images, so the losses, are one device's."""
    raw = _device_raw(tmp_path)
    (tmp_path / "dp.py").write_text(DATA_PARALLEL)
    env = {**os.environ, "KERAS_BACKEND": "jax", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    done = subprocess.run(
        [sys.executable, str(tmp_path / "dp.py"), json.dumps(raw), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    histories = json.loads(done.stdout.strip().splitlines()[-1])
    for column in ("loss", "val_loss"):
        np.testing.assert_allclose(histories["data_parallel"][column], histories["None"][column], rtol=1e-4)
