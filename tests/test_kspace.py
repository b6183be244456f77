"""The batched k-space renderer against GalSim's drawImage (the oracle): pixels, flux, continuous
indices, gradients; its table cache; what it refuses."""

import json

import galsim
import numpy as np
import pytest

from galparam import kspace
from galparam.errors import GalparamError
from galparam.kspace import cache
from galparam.parameters import ParameterError
from galparam.render import GalSimRenderer, KSpaceRenderer

CORNERS = [
    # flux, n, hlr, g1, g2, psf_fwhm
    (1.0e5, 6.0, 0.6, 0.67, 0.0, 1.0),  # the prior's hardest corner (largest FFT in GalSim)
    (1.0e5, 6.0, 0.6, 0.67 / np.sqrt(2), 0.67 / np.sqrt(2), 1.0),
    (3.0e4, 0.5, 0.1, 0.0, 0.0, 0.5),  # its smallest galaxies
    (4.0e5, 0.5, 0.1, 0.3, -0.2, 0.5),
    (1.0e5, 3.0, 0.3, -0.069, 0.15, 0.5),  # the test-set galaxy
    (2.0e5, 2.345, 0.45, 0.2, 0.3, 0.7),  # an index between tabulated ones
]


def _prior_draws(rng, size, *, psf_varies, continuous_n):
    grid = np.linspace(0.5, 6.0, 1000)
    n = rng.uniform(0.5, 6.0, size) if continuous_n else grid[rng.integers(0, 1000, size)]
    amplitude, angle = rng.uniform(0, 0.67, size), rng.uniform(0, np.pi, size)
    psf = rng.uniform(0.5, 1.0, size) if psf_varies else np.full(size, 0.5)
    return list(
        zip(
            rng.uniform(3e4, 4e5, size),
            n,
            rng.uniform(0.1, 0.6, size),
            amplitude * np.cos(2 * angle),
            amplitude * np.sin(2 * angle),
            psf,
            strict=True,
        )
    )


def galsim_image(flux, n, hlr, g1, g2, psf_fwhm):
    galaxy = galsim.Sersic(n, half_light_radius=hlr, flux=flux).shear(g1=g1, g2=g2)
    psf = galsim.Moffat(beta=2.0, fwhm=psf_fwhm)
    return galsim.Convolve(galaxy, psf).drawImage(nx=64, ny=64, scale=0.23, dtype=np.float64).array


@pytest.fixture(scope="module")
def renderer():
    return KSpaceRenderer()


def test_every_pixel_within_1e_4_of_the_peak_and_the_flux_within_1e_3(renderer):
    rng = np.random.default_rng(12)
    cases = (
        CORNERS
        + _prior_draws(rng, 12, psf_varies=False, continuous_n=False)  # v1 and v2 (the noise aside)
        + _prior_draws(rng, 12, psf_varies=True, continuous_n=True)  # v3, indices off the tables' nodes
    )
    ours = renderer.images(*np.array(cases).T)
    for image, case in zip(ours, cases, strict=True):
        truth = galsim_image(*case)
        assert np.abs(image - truth).max() <= 1e-4 * truth.max(), case
        assert image.sum() == pytest.approx(truth.sum(), rel=1e-3), case


def test_an_image_does_not_depend_on_the_other_galaxies_of_its_batch(renderer):
    batch = np.array(CORNERS + _prior_draws(np.random.default_rng(3), 20, psf_varies=True, continuous_n=True))
    together = renderer.images(*batch.T)
    for i in (0, 4, len(batch) - 1):
        alone = renderer.images(*batch[i : i + 1].T)
        assert np.array_equal(alone[0], together[i])


def test_the_jacobian_is_the_exact_derivative_of_the_drawn_model(renderer):
    cases = np.array(CORNERS + _prior_draws(np.random.default_rng(8), 6, psf_varies=True, continuous_n=True))
    cases[0, 1] = 5.9  # off the end of the range, where a step up would leave the tables
    images, jac = renderer.images_and_jacobians(*cases.T)
    np.testing.assert_array_equal(images, renderer.images(*cases.T, dtype=np.float64))
    steps = (10.0, 1e-6, 1e-7, 1e-7, 1e-7)
    for i, step in enumerate(steps):
        for direction in (1, -1):  # one-sided, on a side where the galaxy keeps its grid
            moved = cases.copy()
            moved[:, i] += direction * step
            drawn, grid = kspace.render_numpy(renderer.tables, *moved.T, dtype=np.float64, box_step=8, return_grid=True)
            _, same = kspace.render_numpy(renderer.tables, *cases.T, dtype=np.float64, box_step=8, return_grid=True)
            keep = np.all([a == b for a, b in zip(grid, same, strict=True)], axis=0)
            assert keep.sum() >= len(cases) - 2  # grid changes are rare at these steps
            difference = (drawn - images) / (direction * step)
            for b in np.flatnonzero(keep):
                scale = np.abs(jac[b, i]).max()
                assert np.abs(difference[b] - jac[b, i]).max() <= 2e-4 * scale, (i, direction, cases[b])


def test_the_vector_jacobian_product_contracts_the_jacobian_exactly(renderer):
    cases = np.array(CORNERS + _prior_draws(np.random.default_rng(9), 10, psf_varies=True, continuous_n=True))
    images, jac = renderer.images_and_jacobians(*cases.T)
    drawn, vjp = renderer.images_and_vjp(*cases.T)
    np.testing.assert_array_equal(drawn, images)
    weights = np.random.default_rng(2).normal(size=images.shape)
    expected = np.einsum("bkij,bij->bk", jac, weights)
    np.testing.assert_allclose(vjp(weights), expected, rtol=1e-9, atol=1e-12 * np.abs(expected).max())


def test_on_a_held_grid_the_model_is_smooth_across_a_grid_change_and_as_accurate(renderer):
    # n = 3.25 is a node of the grid rule: the test-set galaxy's own grid grows just above it
    below, above = (np.array([[1.0e5, 3.25 + d, 0.3, -0.069, 0.15, 0.5]]) for d in (-1e-6, 1e-6))
    own_below, own_above = renderer.grid(*below.T), renderer.grid(*above.T)
    assert own_below[0][0] < own_above[0][0]
    # a galaxy's own grid, held, draws the same image; a grid that encloses it is held as it is
    np.testing.assert_array_equal(
        renderer.images(*below.T, dtype=np.float64, grid=own_below), renderer.images(*below.T, dtype=np.float64)
    )
    held = renderer.enclosing_grid(own_below, *above.T)
    assert held == own_above and renderer.enclosing_grid(held, *below.T) == held
    # on the held grid, the image across the node changes by its derivative (no jump) ...
    image, jac = renderer.images_and_jacobians(*above.T, grid=held)
    step = below - above
    difference = renderer.images(*below.T, dtype=np.float64, grid=held) - image
    assert np.abs(difference - step[0, 1] * jac[:, 1]).max() <= 1e-12 * image.max()
    jumped = renderer.images(*below.T, dtype=np.float64) - image  # on the galaxies' own grids: a jump
    assert np.abs(jumped - step[0, 1] * jac[:, 1]).max() > 1e-6 * image.max()
    # ... and is GalSim's drawing as closely as on the galaxy's own grid
    truth = galsim_image(*below[0])
    assert np.abs(renderer.images(*below.T, dtype=np.float64, grid=held)[0] - truth).max() <= 1e-4 * truth.max()


def test_psf_images_are_galsims_also_at_its_k_box_jumps_and_outside_the_table(renderer):
    from galparam.kspace.psf import _breaks

    jumps = _breaks(renderer.tables, 0.45, 1.1)[::7]
    fwhm = np.concatenate(
        [
            [0.5, 0.5123, 0.75, 1.0, 0.2, 2.0],
            jumps,
            np.nextafter(jumps, 0.0),
            np.random.default_rng(5).uniform(0.5, 1, 8),
        ]
    )
    ours = renderer.psf_images(fwhm, dtype=np.float64)
    galsim_psf = GalSimRenderer()
    for image, f in zip(ours, fwhm, strict=True):
        truth = galsim_psf.psf_image(f, dtype=np.float64)
        assert np.abs(image - truth).max() <= 1e-10 * truth.max(), f
    singles = np.stack([renderer.psf_image(f) for f in fwhm[[0, 7, -1]]])
    assert np.array_equal(singles, renderer.psf_images(fwhm)[[0, 7, -1]])
    with pytest.raises(ParameterError, match="psf_fwhm"):
        renderer.psf_images([0.5, -1.0])


@pytest.mark.backends
def test_the_keras_renderer_compiled_on_this_backend_draws_the_numpy_renderers_images(renderer):
    rng = np.random.default_rng(5)
    theta = [rng.uniform(3e4, 4e5, 12), rng.uniform(0.5, 5.5, 12), rng.uniform(0.1, 0.6, 12)]
    theta += [rng.uniform(-0.4, 0.4, 12), rng.uniform(-0.4, 0.4, 12)]
    expected = renderer.images(*theta, 0.5)
    model = kspace.KerasRenderer(renderer.tables, dtype="float32", jit=True)
    from keras import ops

    drawn = ops.convert_to_numpy(model(*(np.float32(v) for v in theta), 0.5))
    assert drawn.shape == expected.shape
    assert np.abs(drawn - expected).max() < 1e-5 * expected.max()


def _keras_gradient(theta, weights) -> np.ndarray:
    """d/dθ Σ weights · image(θ) through the keras.ops renderer, in float64, on this process's backend."""
    from galparam import backend

    if backend.is_tensorflow():
        import tensorflow as tf

        model = kspace.KerasRenderer(kspace.load_tables(), dtype="float64")
        variables = [tf.Variable([v], dtype=tf.float64) for v in theta]
        with tf.GradientTape() as tape:
            projection = tf.reduce_sum(model(*variables, 0.5)[0] * weights)
        return np.array([float(g.numpy()[0]) for g in tape.gradient(projection, variables)])
    import jax
    import jax.numpy as jnp

    with jax.enable_x64(True):
        model = kspace.KerasRenderer(kspace.load_tables(), dtype="float64")
        plan = model.plan(*theta, 0.5)  # the grid, from the values (it carries no gradient)

        def projection(p):
            return jnp.sum(model(*(p[i] for i in range(5)), 0.5, plan=plan)[0] * weights)

        return np.asarray(jax.grad(projection)(jnp.asarray(theta, dtype=jnp.float64)))


@pytest.mark.backends
def test_keras_renderer_gradients_match_finite_differences_of_galsim():
    """d/dθ of a fixed random projection of the image, by automatic differentiation (float64)
    against central differences of GalSim renders. Reached (relative): flux 5e-5, index 1e-3,
    radius 1.3e-4, g1 1.1e-4, g2 8e-5 (GalSim's own finite differences wander at ~1e-4)."""
    weights = np.random.default_rng(0).normal(size=(64, 64))
    tolerance = {0: 2e-4, 1: 3e-3, 2: 5e-4, 3: 5e-4, 4: 5e-4}  # measured: 5e-5, 1e-3, 1.3e-4, 1.1e-4, 8e-5
    steps = {0: 100.0, 1: 1e-2, 2: 1e-3, 3: 1e-3, 4: 1e-3}
    for theta in ([1.0e5, 3.0, 0.3, -0.069, 0.15], [2.0e5, 4.2, 0.45, 0.2, -0.1]):
        gradient = _keras_gradient(theta, weights)
        for i, h in steps.items():
            up, down = list(theta), list(theta)
            up[i] += h
            down[i] -= h
            numeric = np.sum((galsim_image(*up, 0.5) - galsim_image(*down, 0.5)) * weights) / (2 * h)
            assert gradient[i] == pytest.approx(numeric, rel=tolerance[i]), (theta, i)


def test_parameters_outside_what_can_be_drawn_are_refused_with_the_range(renderer):
    with pytest.raises(ParameterError, match=r"sersic_n 0.4 is outside what the k-space renderer draws, \[0.5, 6\]"):
        renderer.images([1e5], [0.4], [0.3], [0.0], [0.0], [0.5])
    with pytest.raises(ParameterError, match=r"hlr -0.1 is outside the valid range"):
        renderer.images([1e5, 1e5], [1.0, 1.0], [0.3, -0.1], [0.0, 0.0], [0.0, 0.0], [0.5, 0.5])
    with pytest.raises(ParameterError, match=r"too large for the k-space tables: .* the tables end at 49"):
        renderer.images([1e5], [6.0], [2.0], [0.9], [0.0], [0.3])


@pytest.mark.parametrize("damage", ["truncated", "foreign", "garbage"])
def test_a_bad_cache_file_is_rebuilt_with_one_notice(damage, tmp_path, monkeypatch, capsys):
    good = kspace.load_tables()
    settings = kspace.table_settings()
    real = kspace.cache_path(settings).read_bytes()
    monkeypatch.setenv(kspace.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(cache, "_LOADED", {})
    path = kspace.cache_path(settings)
    if damage == "foreign":  # a readable file made for other settings (another GalSim version)
        other = dict(settings, galsim="0.0")
        np.savez(
            path,
            settings=np.array(json.dumps(other, sort_keys=True)),
            **{k: np.asarray(getattr(good, k)) for k in good._SAVED},
        )
    else:
        path.write_bytes(real[: len(real) // 2] if damage == "truncated" else b"not an npz at all")
    built = []
    monkeypatch.setattr(cache, "build_tables", lambda **kwargs: built.append(kwargs) or good)
    tables = kspace.load_tables()
    notice = capsys.readouterr().err.strip().splitlines()
    assert len(notice) == 1 and str(path) in notice[0] and "rebuilding it" in notice[0], notice
    assert built and tables is good
    monkeypatch.setattr(cache, "_LOADED", {})
    assert kspace.load_tables().sersic.shape == good.sersic.shape  # the rewritten file is trusted
    assert capsys.readouterr().err == "" and len(built) == 1


def test_a_spec_names_its_renderer_and_the_kspace_range(spec_factory):
    from galparam.errors import SpecError

    assert spec_factory().renderer == "kspace" and spec_factory(renderer="galsim").renderer == "galsim"
    with pytest.raises(SpecError, match="renderer: 'opengl' is not accepted; accepted: kspace, galsim"):
        spec_factory(renderer="opengl")
    with pytest.raises(SpecError, match=r"priors.sersic_n: \[0.3, 1\] reaches beyond \[0.5, 6\]"):
        spec_factory(priors={"sersic_n": {"uniform": [0.3, 1.0]}})
    assert spec_factory(renderer="galsim", priors={"sersic_n": {"uniform": [0.3, 1.0]}}).renderer == "galsim"
    assert issubclass(ParameterError, GalparamError)
