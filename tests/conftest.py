"""Shared fixtures: small, cheap specs (low Sérsic indices build their GalSim tables in ms)."""

import copy

import pytest

from galparam.simulate import simulate
from galparam.specs import spec_from_dict

BASE_SPEC = {
    "name": "tiny",
    "size": 40,
    "seed": 7,
    "validation_fraction": 0.25,
    "stamp_size": 64,
    "pixel_scale": 0.23,
    "psf_beta": 2.0,
    "sersic_grid_size": 12,
    "poisson_noise": True,
    "snr_window": [10, 100],
    "priors": {
        "flux": {"uniform": [3.0e4, 4.0e5]},
        "sersic_n": {"discretized": [0.5, 1.6]},
        "hlr": {"uniform": [0.1, 0.6]},
        "shear_amplitude": {"uniform": [0.0, 0.67]},
        "shear_angle": {"uniform": [0.0, 3.141592653589793]},
        "psf_fwhm": {"fixed": 0.5},
        "sigma": {"integers": [200, 400]},
    },
}


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
