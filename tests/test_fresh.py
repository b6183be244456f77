"""Fresh training images on the fly: an image depends only on (seed, epoch, index), a resumed run
sees the images it would have seen, validation is a fixed set, and specs name it clearly."""

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import TINY_XCEPTION, make_spec, train_killed_in_epoch_2

from galparam import load_estimator
from galparam.cli.common import run
from galparam.cli.train import main as train_main
from galparam.data import load_dataset, with_channel
from galparam.errors import GalparamError, SpecError
from galparam.fresh import FreshImages, draw, epoch_seed
from galparam.runs import ExperimentData, RunFolder
from galparam.simulate import simulate
from galparam.specs import experiment_from_dict, load_experiment
from galparam.train import train

VARYING_PSF = {"psf_fwhm": {"uniform": [0.5, 1.0]}}


def test_an_image_depends_only_on_seed_epoch_and_index():
    fresh = FreshImages(make_spec(priors=VARYING_PSF), images_per_epoch=24, batch_size=8)
    whole = draw(fresh.epoch_spec(1), 0, 24)
    tail = draw(fresh.epoch_spec(1), 10, 24)
    for key in ("img", "img_nonoise", "psf_img", "label"):
        np.testing.assert_array_equal(whole[key][10:], tail[key])
    other = draw(fresh.epoch_spec(2), 0, 24)
    assert not np.isin(other["label"][:, 0], whole["label"][:, 0]).any()
    assert len({epoch_seed(7, e) for e in range(100)} | {7}) == 101
    assert whole["img"].dtype == np.float32 and whole["label"].shape == (24, 5)


@pytest.mark.backends
def test_batches_continue_from_any_epoch_and_the_drawing_processes_draw_the_same():
    spec = make_spec()
    columns = {"image": ("img", with_channel), "labels": ("label", lambda x: x)}
    in_process = FreshImages(spec, images_per_epoch=20, batch_size=8, prefetch=0)
    assert in_process.steps_per_epoch == 3
    stream = in_process.batches(columns)
    two_epochs = [next(stream) for _ in range(6)]
    assert [len(b[0]) for b in two_epochs] == [8, 8, 4, 8, 8, 4]
    assert two_epochs[0][0].shape == (8, 64, 64, 1)
    resumed = in_process.batches(columns, first_epoch=1)
    for expected in two_epochs[3:]:
        for a, b in zip(expected, next(resumed), strict=True):
            np.testing.assert_array_equal(a, b)
    for processes in (1, 2):  # epochs drawn side by side come back in order
        with FreshImages(spec, images_per_epoch=20, batch_size=8, prefetch=1, processes=processes) as ahead:
            stream = ahead.batches(columns)
            for expected in two_epochs:
                for a, b in zip(expected, next(stream), strict=True):
                    np.testing.assert_array_equal(a, b)


def _fly_experiment(folder, **changes):
    spec = make_spec(name="fly", size=100, validation_fraction=0.2, priors=VARYING_PSF)
    (folder / "data.yaml").write_text(spec.to_yaml())
    raw = {
        "name": "fly",
        "family": "xception",
        "dataset": {"spec": "data.yaml", "on_the_fly": True},
        "hyperparameters": dict(TINY_XCEPTION),
        "batch_size": 16,
        "epochs": 2,
        "seed": 1,
        **changes,
    }
    (folder / "fly.yaml").write_text(yaml.safe_dump(raw))
    return load_experiment(folder / "fly.yaml"), spec


def test_dataset_sources_in_an_experiment(tmp_path):
    spec, _ = _fly_experiment(tmp_path)
    assert spec.on_the_fly and spec.dataset == (tmp_path / "data.yaml").resolve()
    again = experiment_from_dict(yaml.safe_load(spec.to_yaml()), source="run")
    assert again == spec
    from_file = experiment_from_dict(
        {"name": "f", "family": "xception", "dataset": {"spec": "data.yaml", "on_the_fly": False}}, base_dir=tmp_path
    )
    assert not from_file.on_the_fly and from_file.dataset == (tmp_path / "data.npz").resolve()
    for value, words in [
        ({"spec": "data.yaml", "fresh": True}, "unknown key 'fresh'; accepted: spec, on_the_fly"),
        ({"spec": "data.npz"}, "is not a dataset spec file (.yaml)"),
        ({"spec": "data.yaml", "on_the_fly": "yes"}, "on_the_fly: 'yes' is not true or false"),
        (3, "is not a dataset file (data/v1.npz) or {spec: data/v1.yaml, on_the_fly: true}"),
    ]:
        with pytest.raises(SpecError, match=words.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
            experiment_from_dict({"name": "f", "family": "xception", "dataset": value}, base_dir=tmp_path)
    with pytest.raises(GalparamError, match="on_the_fly data is for galparam-train; a search trains on a file"):
        ExperimentData(spec)


def test_a_missing_dataset_spec_is_one_line_and_exit_2(tmp_path, capsys):
    spec, _ = _fly_experiment(tmp_path)
    (tmp_path / "data.yaml").unlink()
    assert run(train_main, [str(tmp_path / "fly.yaml"), "-o", str(tmp_path / "run")], prog="galparam-train") == 2
    err = capsys.readouterr().err
    assert "dataset:" in err and "data.yaml" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.backends
def test_on_the_fly_training_validates_on_a_fixed_set_and_resumes_exactly(tmp_path, monkeypatch):
    spec, data_spec = _fly_experiment(tmp_path)
    whole = train(spec, tmp_path / "whole", verbose=0)
    info = RunFolder(whole).info()
    assert info["dataset"]["on_the_fly"]["images_per_epoch"] == 80
    assert info["dataset"]["validation"] == 20 and info["dataset"]["spec_sha256"] == data_spec.digest()
    # the fixed validation set is the spec's first 20 samples: the first images of its file
    simulate(data_spec.with_overrides(size=30), tmp_path / "file.npz", progress=False)
    fixed, file = load_dataset(whole / "validation.npz"), load_dataset(tmp_path / "file.npz")
    np.testing.assert_array_equal(fixed.img, file.img[:20])
    np.testing.assert_array_equal(fixed.psf_img, file.psf_img[:20])
    history = pd.read_csv(whole / "history.csv")
    assert np.isfinite(history.val_loss).all() and len(history) == 2

    train_killed_in_epoch_2(spec, tmp_path / "resumed", monkeypatch)
    train(spec, tmp_path / "resumed", resume=True, verbose=0)
    resumed = pd.read_csv(tmp_path / "resumed" / "history.csv")
    np.testing.assert_allclose(resumed.loss, history.loss, rtol=1e-5)
    np.testing.assert_allclose(resumed.val_loss, history.val_loss, rtol=1e-5)
    a = load_estimator(whole).predict(fixed.img, fixed.psf_img)
    b = load_estimator(tmp_path / "resumed").predict(fixed.img, fixed.psf_img)
    np.testing.assert_allclose(a.to_numpy(), b.to_numpy(), rtol=1e-5)
