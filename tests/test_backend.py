"""What differs between Keras backends: the input pipeline, strategies, a training deadline, and
drawing, fitting and studying without GalSim or TensorFlow.

Tests marked ``backends`` run again under ``KERAS_BACKEND=jax`` in ``make test``.
"""

import io
import json
import os
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, tiny_experiment

from galparam import backend, kspace
from galparam.data import load_dataset, with_channel
from galparam.errors import GalparamError, TrainingError
from galparam.evaluate import start
from galparam.pipelines import batches, index_batches

BLOCKER = """
import sys


class _Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("galsim", "tensorflow"):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
        return None


sys.meta_path.insert(0, _Blocked())
"""


def _numpy(tree):
    if isinstance(tree, dict):
        return {k: _numpy(v) for k, v in tree.items()}
    if isinstance(tree, tuple):
        return tuple(_numpy(v) for v in tree)
    return np.asarray(tree)


def _as_fit_sees_them(pipeline, epochs: int, steps: int, first_epoch: int = 0) -> list:
    """The batches of ``epochs`` epochs, asked for as ``fit`` asks: a PyDataset by (epoch, step)
    after its callbacks name the epoch, a ``tf.data`` pipeline in sequence."""
    if hasattr(pipeline, "callbacks"):
        seen = []
        for epoch in range(first_epoch, first_epoch + epochs):
            for callback in pipeline.callbacks:
                callback.on_epoch_begin(epoch)
            seen += [_numpy(pipeline[i]) for i in range(steps)]
        return seen
    stream = iter(pipeline)
    return [_numpy(next(stream)) for _ in range(epochs * steps)]


@pytest.mark.backends
def test_batches_are_the_same_on_every_backend(datasets):
    ds = load_dataset(datasets["fixed"])
    columns = {"image": (ds.img, with_channel), "labels": (ds.label, lambda x: 2 * x)}
    indices = np.arange(10, 60)
    pipeline = batches(columns, "image", "labels", indices, 16, shuffle_seed=3, first_epoch=1)
    # two epochs of 4 batches: each the sorted gather of index_batches' permutation
    expected = index_batches(indices, 16, shuffle_seed=3, first_epoch=1)
    for x, y in _as_fit_sees_them(pipeline, 2, 4, first_epoch=1):
        idx = np.sort(next(expected))
        np.testing.assert_array_equal(x, with_channel(ds.img[idx]))
        np.testing.assert_array_equal(y, 2 * ds.label[idx].astype(np.float32))
    ordered = batches(columns, ("image",), ("labels",), indices, 32)
    first, second = _as_fit_sees_them(ordered, 1, 2)
    np.testing.assert_array_equal(first[0]["image"], with_channel(ds.img[indices[:32]]))
    np.testing.assert_array_equal(second[1]["labels"], 2 * ds.label[indices[32:]].astype(np.float32))


def test_a_stream_is_served_by_epoch_and_step_also_when_keras_starts_an_epoch_again():
    from galparam.pipelines import ArrayBatches, StreamBatches

    def stream():
        for n in range(1000):
            yield (np.full((2, 3), n, np.float32), np.full((2, 1), -n, np.float32))

    served = StreamBatches(stream(), 5, "image", "labels", first_epoch=2)
    assert len(served) == 5
    # Keras's JAX trainer takes a batch or three to build the model, then starts the epoch again
    assert [float(served[i][0][0, 0]) for i in (0, 1, 2, 0, 1, 2, 3, 4)] == [0, 1, 2, 0, 1, 2, 3, 4]
    served.callbacks[0].on_epoch_begin(3)
    assert float(served[0][1][0, 0]) == -5
    for epoch in (3, 4):
        served.callbacks[0].on_epoch_begin(epoch)
        assert [float(served[i][0][0, 0]) for i in range(5)] == [5 * (epoch - 2) + i for i in range(5)]
    served.callbacks[0].on_epoch_begin(2)
    with pytest.raises(RuntimeError, match=r"batch \(2, 0\) was asked for after the stream had passed it"):
        served[0]
    array = ArrayBatches({"x": (np.arange(10.0), lambda v: v)}, "x", "x", np.arange(10), 4, shuffle_seed=1)
    assert len(array) == 3
    assert sorted(np.concatenate([array[i][0] for i in (2, 0, 1)])) == list(range(10))


@pytest.mark.backends
def test_strategies_and_determinism_follow_the_backend():
    assert backend.strategy(None).num_replicas_in_sync == 1
    backend.make_deterministic()
    if backend.is_tensorflow():
        backend.require_tensorflow("this")
        with pytest.raises(TrainingError, match="TF_CONFIG"):
            backend.strategy("multi_worker")
    else:
        with pytest.raises(TrainingError, match="strategy mirrored needs Keras's TensorFlow backend"):
            backend.strategy("mirrored")
        with pytest.raises(TrainingError, match="AutoKeras.*TensorFlow backend only"):
            backend.require_tensorflow("AutoKeras")
    if backend.name() == "jax":
        assert backend.strategy("data_parallel").num_replicas_in_sync == 1  # the one CPU device here
    else:
        with pytest.raises(TrainingError, match="strategy data_parallel runs on Keras's JAX backend"):
            backend.strategy("data_parallel")


@pytest.mark.backends
@pytest.mark.slow  # trains
def test_a_deadline_stops_training_at_a_whole_epoch_with_the_best_weights(datasets, tmp_path):
    from galparam.runs import RunFolder
    from galparam.train import train

    spec = tiny_experiment(datasets["fixed"], epochs=4, patience=0)
    run = RunFolder(train(spec, tmp_path / "run", verbose=0, deadline=time.monotonic()))
    stage = run.info()["stages"]["xception"]
    assert stage["epochs"] == 1 and stage["stopped_by_deadline"] is True and stage["best_epoch"] == 1
    assert len(pd.read_csv(run.history_path)) == 1 and run.metrics_path.exists()


@pytest.mark.backends
def test_the_autoencoders_cross_entropy_keeps_a_gradient_below_kerass_clip():
    import keras

    from galparam.models.compile import backend_loss, pixel_binary_crossentropy

    target = np.array([[0.0, 0.3, 1.0], [0.5, 0.02, 0.9]], np.float32)
    predicted = np.array([[0.01, 0.4, 0.97], [0.5, 0.03, 0.6]], np.float32)
    ours = keras.ops.convert_to_numpy(pixel_binary_crossentropy(target, predicted))
    kerass = keras.ops.convert_to_numpy(keras.losses.binary_crossentropy(target, predicted))
    np.testing.assert_allclose(ours, kerass, rtol=1e-5)  # the same loss inside Keras's clip
    # below it Keras's loss stops changing (no gradient); ours still falls toward the target
    tiny = [np.array([[1e-9]], np.float32), np.array([[1e-12]], np.float32)]
    target0 = np.zeros((1, 1), np.float32) + 0.1
    k = [float(keras.ops.convert_to_numpy(keras.losses.binary_crossentropy(target0, p))[0]) for p in tiny]
    o = [float(keras.ops.convert_to_numpy(pixel_binary_crossentropy(target0, p))[0]) for p in tiny]
    assert k[0] == k[1] and o[1] > o[0] + 0.5
    expected = "binary_crossentropy" if backend.is_tensorflow() else pixel_binary_crossentropy
    assert backend_loss("binary_crossentropy") == expected and backend_loss("mse") == "mse"


def test_the_numpy_adaptive_moments_are_galsims(spec_factory):
    from galparam.render import renderer_for

    renderer = renderer_for("kspace")
    rng = np.random.default_rng(4)
    for noise in (0.0, 30.0):
        for n, hlr, g1, g2 in ((0.7, 0.3, 0.2, -0.1), (2.5, 0.5, -0.3, 0.25), (4.5, 0.2, 0.05, 0.4)):
            image = renderer.image(1e5, n, hlr, g1, g2, 0.6).astype(np.float64) + rng.normal(0, noise, (64, 64))
            hsm = start.adaptive_moments(image)
            ours = start._numpy_adaptive_moments(image)
            np.testing.assert_allclose(ours, hsm, rtol=1e-4, atol=1e-4)
    assert start._numpy_adaptive_moments(np.zeros((64, 64))) is None


def test_tables_are_found_without_galsim_and_missing_ones_say_what_to_do(tmp_path, monkeypatch, capsys):
    from galparam.cli.simulate import main as simulate_main

    assert simulate_main(["tables", "--copy-to", str(tmp_path / "carried")]) == 0
    copied = tmp_path / "carried" / kspace.cache_path(kspace.resolve_table_settings()).name
    assert copied.is_file() and str(copied) in capsys.readouterr().out
    installed = kspace.resolve_table_settings()
    monkeypatch.setattr(kspace.cache, "galsim_version", lambda: None)
    assert kspace.resolve_table_settings(folder=tmp_path / "carried") == installed
    copied.rename(copied.with_name("sersic-tables-carried.npz"))  # any name the glob finds
    tables = kspace.load_tables(folder=tmp_path / "carried")
    assert tables.sersic.shape == kspace.load_tables().sersic.shape
    with pytest.raises(
        GalparamError, match="GalSim is not installed and .* holds no Sérsic tables.*galparam-simulate tables"
    ):
        kspace.resolve_table_settings(folder=tmp_path / "empty")


@pytest.mark.slow
def test_the_toy_gpu_study_runs_on_jax_without_tensorflow_or_galsim(tmp_path):
    """The study's script, as a borrowed GPU machine runs it: JAX backend, no TensorFlow, no GalSim."""
    cache = tmp_path / "cache"
    kspace.load_tables()
    cache.mkdir()
    source = kspace.cache_path(kspace.resolve_table_settings())
    (cache / source.name).write_bytes(source.read_bytes())
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(BLOCKER)
    env = {
        **os.environ,
        "KERAS_BACKEND": "jax",
        "GALPARAM_CACHE": str(cache),
        "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(ROOT)]),
    }
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_study.py"), "--toy", str(out), "--jobs", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "wrote" in done.stdout and "s]" in done.stdout  # progress lines with elapsed time
    files = sorted(p.name for p in out.iterdir())
    assert files == ["history.csv", "status.json", "study.md", "test_sets.csv", "timing.csv", "validation.csv"]
    status = json.loads((out / "status.json").read_text())
    assert status["finished"] and status["environment"]["backend"] == "jax"
    assert "tensorflow" not in status["environment"] and status["scale"] == "toy"
    # the device drew the training images and solved the fits (DeviceFit), as on a GPU
    assert status["draw_on"] == "device"
    steps = list(pd.read_csv(out / "timing.csv").step)
    assert "fits SNR 60 (device)" in steps and "network-started fits SNR 30 (device)" in steps
    tests = pd.read_csv(out / "test_sets.csv")
    assert set(tests.estimator) == {"xception", "fit", "fit from xception"}
    assert set(tests.SNR) == {60, 30} and len(tests) == 2 * 3 * 5
    assert np.isfinite(tests[["CRB", "bias", "std", "rmse"]].to_numpy()).all()
    # the bound of the fixed SNR-60 galaxy is the report's (flux about 5.6e3 counts)
    crb = tests.query("SNR == 60 and parameter == 'flux'").CRB.iloc[0]
    assert 4e3 < crb < 8e3
    validation = pd.read_csv(out / "validation.csv")
    assert list(validation.parameter) == ["flux", "sersic_n", "hlr", "g1", "g2"]
    assert (validation.ratio > 0).all()
    assert len(pd.read_csv(out / "history.csv")) == 2


DATA_PARALLEL = """
import json, sys
from galparam.specs import experiment_from_dict
from galparam.train import train
raw = json.loads(sys.argv[1])
histories = {}
for strategy in (None, "data_parallel"):
    spec = experiment_from_dict({**raw, "strategy": strategy}, source="dp.yaml")
    run = train(spec, sys.argv[2] + "/" + str(strategy), verbose=0)
    histories[str(strategy)] = open(run / "history.csv").read()
try:  # a batch the two devices cannot share
    spec = experiment_from_dict({**raw, "batch_size": 33, "strategy": "data_parallel"}, source="dp.yaml")
    train(spec, sys.argv[2] + "/odd", verbose=0)
except Exception as exc:
    histories["refused"] = str(exc)
print(json.dumps(histories))
"""


@pytest.mark.slow  # trains twice
def test_data_parallel_over_two_cpu_devices_trains_to_the_one_device_losses(datasets, tmp_path):
    """``strategy: data_parallel`` (Keras's DataParallel on JAX) on a CPU split into two devices, as
    a machine with two GPUs runs it: each batch shared by the devices, the same losses."""
    raw = {
        "name": "dp",
        "family": "xception",
        "dataset": str(datasets["fixed"]),
        "hyperparameters": {"conv2d_num_filters": 8, "sep_num_filters": 16, "num_residual_blocks": 1},
        "batch_size": 32,
        "epochs": 2,
        "seed": 3,
    }
    env = {**os.environ, "KERAS_BACKEND": "jax", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    done = subprocess.run(
        [sys.executable, "-c", DATA_PARALLEL, json.dumps(raw), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    histories = json.loads(done.stdout.strip().splitlines()[-1])
    one, two = (pd.read_csv(io.StringIO(histories[k])) for k in ("None", "data_parallel"))
    assert len(one) == len(two) == 2
    for column in ("loss", "val_loss"):
        np.testing.assert_allclose(two[column], one[column], rtol=1e-4)
    # a batch the two devices cannot share is refused before training, before the run folder is made
    assert "batch_size is 33 images, not a multiple of 2" in histories["refused"]
    assert not (tmp_path / "odd").exists()


@pytest.mark.slow
def test_the_gpu_study_stops_cleanly_when_its_budget_is_spent(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_study.py"), "--toy", str(tmp_path), "--budget-s", "0.001"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    status = json.loads((tmp_path / "status.json").read_text())
    assert not status["finished"] and any("training" in item for item in status["not_finished"])
    assert "Not finished" in (tmp_path / "study.md").read_text()
    bad = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_study.py"), str(tmp_path), "--budget-s", "-1"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "--budget-s -1" in bad.stderr


@pytest.mark.slow
def test_a_gpu_study_stopped_from_outside_leaves_its_tables_so_far(tmp_path):
    import signal

    study = subprocess.Popen(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_study.py"), "--toy", str(tmp_path / "out")],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    for line in study.stdout:
        if "training" in line:  # both test sets drawn, their timings written
            break
    study.send_signal(signal.SIGTERM)
    assert study.wait(timeout=120) == 143
    status = json.loads((tmp_path / "out" / "status.json").read_text())
    assert not status["finished"] and not status["running"]
    assert any("SIGTERM" in item for item in status["not_finished"])
    timing = pd.read_csv(tmp_path / "out" / "timing.csv")
    assert list(timing.step) == ["draw test set SNR 60", "draw test set SNR 30"]


@pytest.mark.backends
def test_predict_gives_keras_predicts_outputs_every_batch_in_one_device_call(tiny_run, datasets):
    """``backend.predict`` (on JAX one compiled loop over the batches, the last one padded) against
    Keras's own ``predict``, for a trained Xception and for a model with named inputs and outputs."""
    import keras

    from galparam.estimator import load_estimator

    net = load_estimator(tiny_run)._net
    images = with_channel(load_dataset(datasets["fixed"]).img[:37])
    expected = net.predict(images, batch_size=8, verbose=0)
    np.testing.assert_allclose(backend.predict(net, images, batch_size=16), expected, rtol=1e-5, atol=1e-5)
    image, psf = keras.Input((4,), name="image"), keras.Input((4,), name="psf")
    joined = keras.layers.Concatenate()([image, psf])
    model = keras.Model(
        {"image": image, "psf": psf},
        {"labels": keras.layers.Dense(5, name="labels")(joined), "flux": keras.layers.Dense(1, name="flux")(joined)},
    )
    rng = np.random.default_rng(2)
    inputs = {"image": rng.normal(size=(11, 4)).astype("float32"), "psf": rng.normal(size=(11, 4)).astype("float32")}
    got, expected = backend.predict(model, inputs, batch_size=4), model.predict(inputs, batch_size=4, verbose=0)
    assert set(got) == {"labels", "flux"}
    for key in got:
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-5, atol=1e-6)
