"""Shared fixtures: small, cheap specs (low Sérsic indices build their GalSim tables in ms), the
training datasets, and one tiny trained run and one grid-search folder for every test that reads one.

Tests marked ``slow`` (the demo, the notebooks, the distributed tuner, the AutoKeras trial, the
browser) are left out by ``make test-fast``.
"""

import copy
from pathlib import Path

import pytest
import yaml

from galparam.search.grid import run_grid
from galparam.simulate import simulate
from galparam.specs import experiment_from_dict, search_from_dict, spec_from_dict
from galparam.specs.files import merge
from galparam.train import train

ROOT = Path(__file__).resolve().parents[1]
"""The repository: shipped specs are read from here, wherever pytest runs."""
DATA = ROOT / "data"
REAL = DATA / "real"
"""Real cutouts (SDSS, HST) with their PSFs, noise and masks: data/real/README.md."""

BASE_SPEC = merge(
    yaml.safe_load((DATA / "v1.yaml").read_text()),
    {
        "name": "tiny",
        "size": 40,
        "seed": 7,
        "validation_fraction": 0.25,
        "sersic_grid_size": 12,
        "priors": {"sersic_n": {"discretized": [0.5, 1.6]}, "sigma": {"integers": [200, 400]}},
    },
)
"""``data/v1.yaml`` at test size: 40 images, Sérsic indices in [0.5, 1.6] (whose GalSim tables
build in milliseconds) and σ drawn as in v2."""


def make_spec(**changes):
    """BASE_SPEC with top-level keys replaced; ``priors`` entries are merged."""
    raw = copy.deepcopy(BASE_SPEC)
    priors = changes.pop("priors", {})
    raw.update(changes)
    for name, prior in priors.items():
        if prior is None:
            raw["priors"].pop(name, None)
        else:
            raw["priors"][name] = prior
    return spec_from_dict(raw, source="test.yaml")


@pytest.fixture
def spec_factory():
    return make_spec


@pytest.fixture
def base_spec_dict():
    return copy.deepcopy(BASE_SPEC)


@pytest.fixture(scope="session")
def datasets(tmp_path_factory):
    """Training data: a fixed-PSF dataset (600 images) and a varying-PSF one (200 images), noise as v2."""
    folder = tmp_path_factory.mktemp("train-data")
    simulate(make_spec(name="fixed", size=600, validation_fraction=0.2), folder / "fixed.npz", progress=False)
    varying = make_spec(name="varying", size=200, validation_fraction=0.2, priors={"psf_fwhm": {"uniform": [0.5, 1.0]}})
    simulate(varying, folder / "varying.npz", progress=False)
    return {"fixed": folder / "fixed.npz", "varying": folder / "varying.npz", "folder": folder}


TINY_XCEPTION = {"conv2d_num_filters": 8, "sep_num_filters": 16, "num_residual_blocks": 1}


def tiny_experiment(dataset, **changes):
    """A 2-epoch experiment of a tiny Xception on ``dataset`` (the session's ``tiny_run``, unchanged)."""
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


@pytest.fixture(scope="session")
def tiny_run(datasets, tmp_path_factory):
    """One finished run of :func:`tiny_experiment` on the fixed-PSF dataset, shared; do not write into it."""
    return train(tiny_experiment(datasets["fixed"]), tmp_path_factory.mktemp("tiny-run") / "run", verbose=0)


def grid_spec_dict(datasets, **changes):
    """A 4-point grid search (entry and separable filters) of a tiny Xception, one epoch a trial."""
    raw = {
        "search": "grid",
        "name": "g",
        "family": "xception",
        "dataset": str(datasets["fixed"]),
        "max_images": 300,
        "validation_fraction": 0.2,
        "hyperparameters": {"num_residual_blocks": 1, "initial_strides": 4},
        "grid": {"conv2d_num_filters": [4, 8], "sep_num_filters": [4, 8]},
        "epochs": 1,
        "seed": 0,
    }
    raw.update(changes)
    return raw


@pytest.fixture(scope="session")
def tiny_grid(datasets, tmp_path_factory):
    """The finished results folder of :func:`grid_spec_dict`'s search, shared; copy it before changing it."""
    folder = tmp_path_factory.mktemp("tiny-grid")
    spec = search_from_dict(grid_spec_dict(datasets), source=str(folder / "g.yaml"))
    run_grid(spec, folder / "results", progress=False)
    return {"spec": spec, "results": folder / "results"}


def train_killed_in_epoch_2(spec, folder, monkeypatch):
    """Train ``spec`` into ``folder`` and kill the run at the end of its second epoch (before that
    epoch's checkpoint): what a resumed run must continue from."""
    import galparam.train as train_module

    original = train_module._EpochCheckpoint.end_epoch

    def killed_in_epoch_2(self, model, epoch, logs):
        if epoch == 1:
            raise KeyboardInterrupt
        original(self, model, epoch, logs)

    with monkeypatch.context() as patch:
        patch.setattr(train_module._EpochCheckpoint, "end_epoch", killed_in_epoch_2)
        with pytest.raises(KeyboardInterrupt):
            train_module.train(spec, folder, verbose=0)
