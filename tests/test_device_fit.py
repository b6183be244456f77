"""Fits and bounds solved on the device (Keras's JAX backend): the same maxima and bounds as the
numpy path's (``BatchedFit``, ``batch_bounds``), on both test sets.

The parity tests run in ``make test``'s JAX pass (``backends``); the TensorFlow pass checks that
the device path says what it needs.
"""

import numpy as np
import pytest
from conftest import DATA

from galparam import backend
from galparam.data import load_dataset
from galparam.errors import GalparamError
from galparam.evaluate.crb import batch_bounds
from galparam.evaluate.device_fit import DeviceFit, device_adaptive_moments, device_bounds
from galparam.evaluate.fit import BatchedFit
from galparam.evaluate.fitbox import FitBox
from galparam.simulate import simulate
from galparam.specs import load_spec

ON_JAX = pytest.mark.skipif(backend.name() != "jax", reason="the device path runs in the JAX pass")
IMAGES = 12


@pytest.fixture(scope="module")
def test_sets(tmp_path_factory):
    folder = tmp_path_factory.mktemp("device")
    out = {}
    for snr in (60, 30):
        spec = load_spec(DATA / f"test_snr{snr}.yaml").with_overrides(size=IMAGES)
        out[snr] = load_dataset(simulate(spec, folder / f"t{snr}.npz", jobs=1, progress=False).output)
    return out


@pytest.mark.skipif(backend.name() == "jax", reason="checks the message a TensorFlow process gives")
def test_the_device_path_says_it_needs_the_jax_backend():
    with pytest.raises(GalparamError, match=r"KERAS_BACKEND=jax.*tensorflow"):
        DeviceFit()
    with pytest.raises(GalparamError, match=r"device_bounds runs on Keras's JAX backend"):
        device_bounds([[1e5, 3.0, 0.3, 0.0, 0.0]], 0.5, 100.0)


@pytest.mark.backends
@ON_JAX
def test_device_fits_reach_the_batched_fits_maxima_on_both_test_sets(test_sets):
    for snr, ds in test_sets.items():
        images, sigma, truth = ds.img.astype(np.float64), ds.sigma, ds.label.astype(np.float64)
        box = FitBox.from_spec(ds.spec)
        reference = BatchedFit(box=box).fit(images, 0.5, sigma)
        device = DeviceFit(box=box).fit(images, 0.5, sigma)
        bound = np.sqrt(np.diagonal(batch_bounds(truth, 0.5, sigma), axis1=1, axis2=2))
        assert device.converged_.all() and reference.converged_.all(), snr
        assert np.all(np.abs(device.theta_ - reference.theta_) < 0.05 * bound), snr
        np.testing.assert_allclose(device.nll_, reference.nll_, atol=1e-3, rtol=0)
        # the same inverse-Fisher errors at (nearly) the same estimates
        np.testing.assert_allclose(device.std_, reference.std_, rtol=0.01)
        # a start from the truth is taken where BatchedFit takes it, and ends where the plain fit did
        started = DeviceFit(box=box).fit(images, 0.5, sigma, init=truth)
        assert (started.from_init_ == BatchedFit(box=box).fit(images, 0.5, sigma, init=truth).from_init_).all()
        assert np.all(np.abs(started.theta_ - device.theta_) < 0.05 * bound), snr


@pytest.mark.backends
@ON_JAX
def test_device_bounds_are_the_numpy_bounds_over_the_prior():
    rng = np.random.default_rng(5)
    B = 12  # spread over the v2 prior: several grids (N, k-box) in one call
    theta = np.column_stack(
        [
            rng.uniform(3e4, 4e5, B),
            rng.uniform(0.5, 6.0, B),
            rng.uniform(0.1, 0.6, B),
            rng.uniform(-0.4, 0.4, B),
            rng.uniform(-0.4, 0.4, B),
        ]
    )
    psf = rng.uniform(0.5, 1.0, B)
    sigma = rng.uniform(50, 200, B)
    for poisson in (True, False):
        expected, got = (
            batch_bounds(theta, psf, sigma, poisson=poisson),
            device_bounds(theta, psf, sigma, poisson=poisson),
        )
        std = np.sqrt(np.diagonal(expected, axis1=1, axis2=2))
        np.testing.assert_allclose(np.sqrt(np.diagonal(got, axis1=1, axis2=2)), std, rtol=1e-7)
        scale = std[:, :, None] * std[:, None, :]
        np.testing.assert_allclose(got / scale, expected / scale, atol=1e-7)


@pytest.mark.backends
@ON_JAX
def test_device_moments_are_the_numpy_moments_a_machine_without_galsim_starts_from(test_sets, monkeypatch):
    from galparam.evaluate import device_fit, start

    images = np.concatenate([test_sets[60].img, test_sets[30].img]).astype(np.float64)
    images = np.concatenate([images, np.zeros((1, 64, 64))])  # one where the iteration fails
    device = device_adaptive_moments(images)
    numpy = [start._numpy_adaptive_moments(image) for image in images]
    assert [m is None for m in device] == [m is None for m in numpy] and device[-1] is None
    for a, b in zip(device, numpy, strict=True):
        if a is not None:
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    # where GalSim is missing (a GPU machine), DeviceFit starts from them; with GalSim from its HSM
    monkeypatch.setattr(device_fit, "galsim_installed", lambda: False)
    assert DeviceFit()._moments(images[:3]) == device[:3]
    monkeypatch.undo()
    assert DeviceFit()._moments(images[:3]) is None
