import json

import galsim
import numpy as np
import pytest
from conftest import DATA
from scipy import stats

from galparam.data import load_dataset
from galparam.errors import SimulationError
from galparam.render import GalSimRenderer, KSpaceRenderer
from galparam.simulate import draw_candidates, merge, simulate


def _arrays(path):
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module", params=["kspace", "galsim"])
def tiny_run(request, tmp_path_factory):
    """The tiny spec with one worker, two workers, and three shards merged, with each renderer."""
    from conftest import make_spec

    spec = make_spec(size=60, renderer=request.param)
    root = tmp_path_factory.mktemp("sim")
    one = simulate(spec, root / "one.npz", jobs=1, chunk_size=25, progress=False).output
    two = simulate(spec, root / "two.npz", jobs=2, chunk_size=16, progress=False).output
    shards = [simulate(spec, root / f"s{k}.npz", jobs=1, shard=(k, 3), progress=False).output for k in (1, 2, 3)]
    merged = merge(shards[::-1], root / "merged.npz")
    return spec, one, two, merged


def test_same_seed_same_bytes_whatever_jobs_chunks_and_shards(tiny_run):
    _, one, two, merged = tiny_run
    assert one.read_bytes() == two.read_bytes() == merged.read_bytes()
    assert one.with_suffix(".csv").read_bytes() == merged.with_suffix(".csv").read_bytes()


def test_the_renderers_draw_the_same_galaxies(tmp_path):
    """Same spec, same seed: the same candidates, within 1e-4 of the peak, hence (nearly always) the same draws."""
    from conftest import make_spec

    made = {
        r: load_dataset(simulate(make_spec(size=30, renderer=r), tmp_path / f"{r}.npz", progress=False).output)
        for r in ("kspace", "galsim")
    }
    k, g = made["kspace"], made["galsim"]
    np.testing.assert_array_equal(k.label, g.label)
    peak = g.img_nonoise.max(axis=(1, 2), keepdims=True)
    assert (np.abs(k.img_nonoise - g.img_nonoise) <= 1e-4 * peak).all()
    np.testing.assert_allclose(k.snr, g.snr, rtol=1e-4)


def test_another_seed_other_data(tiny_run, tmp_path):
    spec, one, _, _ = tiny_run
    other = simulate(spec.with_overrides(seed=8), tmp_path / "o.npz", jobs=1, progress=False).output
    a, b = _arrays(one), _arrays(other)
    assert not np.array_equal(a["label"], b["label"]) and not np.array_equal(a["img"], b["img"])


def test_dataset_contents(tiny_run):
    spec, one, _, _ = tiny_run
    ds = load_dataset(one)
    assert len(ds) == 60 and ds.img.shape == (60, 64, 64) and ds.psf_img.shape == (1, 64, 64)
    assert ((ds.snr >= 10) & (ds.snr <= 100)).all()
    assert np.isin(ds.label[:, 1], spec.priors["sersic_n"].grid().astype(np.float32)).all()
    # The SNR recorded is the SNR of the noiseless image.
    snr = np.sqrt((ds.img_nonoise.astype(np.float64) ** 2).sum(axis=(1, 2))) / ds.sigma
    np.testing.assert_allclose(snr, ds.snr, rtol=1e-5)
    # Provenance, and the metadata table agrees with the arrays.
    assert str(ds.extra["galparam_version"]) and int(ds.extra["seed"]) == 7
    drawn_by = json.loads(str(ds.extra["renderer"]))
    assert drawn_by["renderer"] == spec.renderer and drawn_by["galsim"] == galsim.__version__
    if spec.renderer == "kspace":  # the tables' settings: which cache file drew it
        assert drawn_by["n_step"] == 0.05 and drawn_by["format"] >= 1
    from galparam.data import load_metadata

    table = load_metadata(one)
    assert list(table.columns[:3]) == ["index", "seed", "draws"]
    np.testing.assert_allclose(table[["flux", "sersic_n", "hlr", "g1", "g2"]].to_numpy(), ds.label, rtol=1e-6)
    assert (table["draws"] >= 1).all() and table["draws"].sum() > 60  # some candidates were rejected
    train, val = ds.split()
    assert len(train) == 45 and len(val) == 15 and val[0] == 45


def test_rejection_redraws_every_parameter(tiny_run):
    """Sample i is the first of its candidates (seeded by (seed, i, k)) whose SNR is in the window."""
    spec, one, _, _ = tiny_run
    ds = load_dataset(one)
    draws = ds.extra["draws"]
    renderer = GalSimRenderer()
    indices_redrawn = []
    for i in np.flatnonzero(draws > 1)[:5]:
        candidates = draw_candidates(spec, [i] * draws[i], np.arange(draws[i]))
        for k, (flux, n, hlr, g1, g2, fwhm, sigma) in enumerate(candidates.array):
            image = renderer.image(flux, n, hlr, g1, g2, fwhm)
            snr = np.sqrt((image.astype(np.float64) ** 2).sum()) / sigma
            assert (10 <= snr <= 100) == (k == draws[i] - 1)
        np.testing.assert_array_equal(ds.label[i], candidates.labels[-1].astype(np.float32))
        for column in (candidates.flux, candidates.hlr, candidates.g1, candidates.g2):  # drawn from ranges
            assert len(set(column)) == len(column)
        indices_redrawn.append(len(set(candidates.sersic_n)) > 1)
    assert any(indices_redrawn)  # the index, from a 12-value grid, is redrawn too


def test_noise_on_blank_pixels_matches_sigma(spec_factory, tmp_path):
    spec = spec_factory(size=30, priors={"sigma": {"fixed": 300}, "hlr": {"uniform": [0.1, 0.2]}})
    ds = load_dataset(simulate(spec, tmp_path / "n.npz", jobs=1, progress=False).output)
    blank = ds.img_nonoise < 1e-3 * 300
    residual = (ds.img - ds.img_nonoise)[blank]
    assert blank.sum() > 50_000
    assert residual.std() == pytest.approx(300, rel=0.02)
    assert abs(residual.mean()) < 3 * 300 / np.sqrt(blank.sum())


def test_poisson_noise_on_the_galaxy_light(spec_factory, tmp_path):
    """Bright pixels carry Poisson variance on top of sigma squared."""
    spec = spec_factory(size=1, snr_window=None, priors={"flux": {"fixed": 4e5}, "sigma": {"fixed": 5}})
    base = simulate(spec, tmp_path / "p.npz", jobs=1, progress=False).output
    ds = load_dataset(base)
    bright = ds.img_nonoise[0] > 1000
    z = (ds.img[0] - ds.img_nonoise[0])[bright] / np.sqrt(ds.img_nonoise[0][bright] + 25)
    assert bright.sum() > 20 and 0.6 < z.std() < 1.4


def test_marginals_match_the_priors_without_window(spec_factory, tmp_path):
    spec = spec_factory(size=1500, snr_window=None, priors={"hlr": {"uniform": [0.1, 0.3]}})
    ds = load_dataset(simulate(spec, tmp_path / "m.npz", jobs=2, progress=False).output)
    flux, n, hlr, g1, g2 = ds.label.T.astype(np.float64)
    assert stats.kstest(flux, stats.uniform(3e4, 3.7e5).cdf).pvalue > 1e-3
    assert stats.kstest(hlr, stats.uniform(0.1, 0.2).cdf).pvalue > 1e-3
    amplitude, angle = np.hypot(g1, g2), np.mod(np.arctan2(g2, g1) / 2, np.pi)
    assert stats.kstest(amplitude, stats.uniform(0, 0.67).cdf).pvalue > 1e-3
    assert stats.kstest(angle, stats.uniform(0, np.pi).cdf).pvalue > 1e-3
    grid = spec.priors["sersic_n"].grid().astype(np.float32)
    counts = np.array([(n == v).sum() for v in grid])
    assert counts.sum() == 1500 and stats.chisquare(counts).pvalue > 1e-3
    sigma_counts = np.bincount(ds.sigma.astype(int) - 200, minlength=201)
    assert sigma_counts.size == 201 and stats.chisquare(sigma_counts).pvalue > 1e-3
    assert ds.sigma.min() >= 200 and ds.sigma.max() <= 400


def test_varying_psf_stores_each_psf_image(spec_factory, tmp_path):
    spec = spec_factory(size=12, priors={"psf_fwhm": {"uniform": [0.5, 1.0]}})
    ds = load_dataset(simulate(spec, tmp_path / "v3.npz", jobs=2, progress=False).output)
    assert ds.psf_img.shape == (12, 64, 64) and ds.psf_varies
    drawn_by, galsim_psf = KSpaceRenderer(), GalSimRenderer()
    for i in (0, 11):
        fwhm = float(np.float64(_fwhm(ds, i)))
        np.testing.assert_array_equal(ds.psf_img[i], drawn_by.psf_image(fwhm))
        truth = galsim_psf.psf_image(fwhm)
        assert np.abs(ds.psf_img[i] - truth).max() <= 1e-6 * truth.max()
    assert len(np.unique(ds.psf_fwhm)) == 12


def _fwhm(ds, i):
    from galparam.data import load_metadata

    return load_metadata(ds.path)["psf_fwhm"][i]


def test_fixed_test_set_differs_only_by_noise(tmp_path):
    from galparam.specs import load_spec

    spec = load_spec(DATA / "test_snr60.yaml").with_overrides(size=20)
    ds = load_dataset(simulate(spec, tmp_path / "t.npz", jobs=1, progress=False).output)
    assert (ds.label == ds.label[0]).all() and (ds.img_nonoise == ds.img_nonoise[0]).all()
    assert not np.array_equal(ds.img[0], ds.img[1])
    assert ds.snr[0] == pytest.approx(59.9, abs=0.1)
    galaxy = galsim.Sersic(3.0, half_light_radius=0.3, flux=1e5).shear(g1=-0.069, g2=0.15)
    expected = galsim.Convolve(galaxy, galsim.Moffat(beta=2, fwhm=0.5)).drawImage(nx=64, ny=64, scale=0.23).array
    # the k-space renderer (the default) is within 1e-4 of GalSim's peak; here it is at 3e-6
    np.testing.assert_allclose(ds.img_nonoise[0], expected, atol=1e-5 * expected.max())


def test_existing_output_needs_overwrite(spec_factory, tmp_path):
    spec = spec_factory(size=3)
    out = simulate(spec, tmp_path / "x.npz", jobs=1, progress=False).output
    before = out.read_bytes()
    with pytest.raises(SimulationError, match="exists; to replace it, pass overwrite=True"):
        simulate(spec.with_overrides(seed=1), out, jobs=1, progress=False)
    assert out.read_bytes() == before
    simulate(spec.with_overrides(seed=1), out, jobs=1, progress=False, overwrite=True)
    assert out.read_bytes() != before


def test_unreachable_window_is_an_error_not_a_hang(spec_factory, tmp_path, monkeypatch):
    import galparam.simulate as sim

    monkeypatch.setattr(sim, "MAX_ATTEMPTS", 5)
    spec = spec_factory(size=2, snr_window=[5000, 6000])
    with pytest.raises(SimulationError, match="widen snr_window"):
        simulate(spec, tmp_path / "u.npz", jobs=1, progress=False)
    assert not (tmp_path / "u.npz").exists()


def test_merge_rejects_gaps_and_mixed_specs(spec_factory, tmp_path):
    spec = spec_factory(size=6)
    s1 = simulate(spec, tmp_path / "a.npz", jobs=1, shard=(1, 3), progress=False).output
    s3 = simulate(spec, tmp_path / "c.npz", jobs=1, shard=(3, 3), progress=False).output
    other = simulate(spec.with_overrides(seed=99), tmp_path / "o.npz", jobs=1, shard=(2, 3), progress=False).output
    with pytest.raises(SimulationError, match="gap"):
        merge([s1, s3], tmp_path / "m.npz")
    with pytest.raises(SimulationError, match="different specs"):
        merge([s1, other, s3], tmp_path / "m.npz")
    assert not (tmp_path / "m.npz").exists()


def test_the_snr_screen_bounds_hold_and_change_no_byte(spec_factory, tmp_path, monkeypatch):
    """Candidates surely outside the SNR window are rejected undrawn; the bounds must never be wrong."""
    import galparam.simulate as simulate_module
    from galparam.render import KSpaceRenderer
    from galparam.simulate import SNRScreen
    from galparam.specs import load_spec

    renderer = KSpaceRenderer()
    for spec in (load_spec(DATA / "v1.yaml"), load_spec(DATA / "v3.yaml")):
        screen = SNRScreen(spec, renderer)
        draws = draw_candidates(spec, np.arange(3000), np.zeros(3000, dtype=np.int64))
        lower, upper = screen.norm_bounds(draws)
        images = renderer.images(np.ones(3000), draws.sersic_n, draws.hlr, draws.g1, draws.g2, draws.psf_fwhm)
        norm = np.sqrt(np.sum(images.reshape(3000, -1).astype(np.float64) ** 2, axis=1))
        assert ((lower <= norm) & (norm <= upper)).all()
        snr = draws.flux * norm / draws.sigma
        inside = (snr >= spec.snr_window[0]) & (snr <= spec.snr_window[1])
        skipped = screen.surely_outside(draws)
        assert not (skipped & inside).any() and skipped.sum() > 0.3 * (~inside).sum()
    spec = spec_factory(size=120)
    plain = simulate(spec, tmp_path / "plain.npz", jobs=1, progress=False).output
    monkeypatch.setattr(simulate_module, "SCREEN_MIN_IMAGES", 1)
    screened = simulate(spec, tmp_path / "screened.npz", jobs=2, progress=False).output
    assert plain.read_bytes() == screened.read_bytes()
