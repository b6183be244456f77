"""Datasets that look like a survey: PSF images from a file, galaxies off-centre on a sky (the stamp
model). Oracles: GalSim's drawImage of each galaxy, the Moffat datasets' own images and bounds, and
byte equality whatever the workers."""

import json
import shutil

import galsim
import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from conftest import DATA, make_spec, tiny_experiment

from galparam.baseline import run_baseline
from galparam.cli.evaluate import main as main_evaluate
from galparam.data import load_dataset
from galparam.errors import GalparamError, SpecError
from galparam.evaluate.crb import dataset_bounds
from galparam.fresh import draw
from galparam.parameters import LABEL_NAMES
from galparam.simulate import simulate
from galparam.specs import load_spec, spec_from_yaml_text
from galparam.train import train

SCALE = 0.2
SIDE = 48
FWHMS = (0.6, 0.9)


def psf_file(path, oversampling=1):
    """Two effective Moffat PSFs (β 3) of different widths, as one FITS file of two image HDUs."""
    scale = SCALE / oversampling
    arrays = [
        galsim.Moffat(beta=3.0, fwhm=f)
        .drawImage(nx=25, ny=25, scale=scale, method="no_pixel" if oversampling > 1 else "auto")
        .array
        for f in FWHMS
    ]
    fits.HDUList([fits.PrimaryHDU()] + [fits.ImageHDU(a) for a in arrays]).writeto(path)
    return path, arrays


def survey_spec(path, size=10, priors=None, **changes):
    """A test-size spec at SIDE² pixels of SCALE″, its PSFs from ``path``, centres ±3 pixels, a sky."""
    survey_priors = {"psf_fwhm": None, "dx": {"uniform": [-3, 3]}, "dy": {"uniform": [-3, 3]}}
    survey_priors["sky"] = {"uniform": [-20, 20]}
    changes.setdefault("psf", {"images": str(path)})
    return make_spec(
        name="survey",
        size=size,
        stamp_size=SIDE,
        pixel_scale=SCALE,
        priors={**survey_priors, **(priors or {})},
        **changes,
    )


def galsim_image(label, dx, dy, sky, psf_array, psf_scale):
    flux, n, hlr, g1, g2 = (float(v) for v in label)
    galaxy = galsim.Sersic(n, half_light_radius=hlr, flux=flux).shear(g1=g1, g2=g2).shift(dx * SCALE, dy * SCALE)
    psf = galsim.InterpolatedImage(galsim.Image(psf_array / psf_array.sum(), scale=psf_scale))
    image = galsim.Convolve(galaxy, psf).drawImage(nx=SIDE, ny=SIDE, scale=SCALE, method="no_pixel", dtype=float)
    return image.array + sky


@pytest.mark.parametrize("oversampling", [1, 2])
def test_survey_like_images_are_galsims_drawing_of_each_galaxy_its_offset_psf_image_and_sky(tmp_path, oversampling):
    path, arrays = psf_file(tmp_path / "psfs.fits", oversampling)
    spec = survey_spec(path, psf={"images": str(path), "oversampling": oversampling})
    simulate(spec, tmp_path / "survey.npz", jobs=1, progress=False)
    ds = load_dataset(tmp_path / "survey.npz")
    centre, sky, which = ds.extra["centre"], ds.extra["sky"], ds.extra["psf_index"]
    assert set(which) == {0, 1} and np.abs(centre).max() <= 3 and np.ptp(centre) > 1 and np.ptp(sky) > 10
    for i in range(len(ds)):
        truth = galsim_image(ds.label[i], *centre[i], sky[i], arrays[which[i]], SCALE / oversampling)
        assert np.abs(ds.img_nonoise[i] - truth).max() <= 1e-4 * truth.max()
        unit = arrays[which[i]] / arrays[which[i]].sum()
        psf = galsim.InterpolatedImage(galsim.Image(unit, scale=SCALE / oversampling))
        drawn = psf.drawImage(nx=SIDE, ny=SIDE, scale=SCALE, method="no_pixel").array
        np.testing.assert_allclose(ds.psf_img[i], drawn, atol=1e-6 * drawn.max())
    # noise is the galaxy's (Poisson) and the read noise; the sky is a level
    residual = (ds.img - ds.img_nonoise).astype(np.float64)
    assert abs(residual.mean()) < 3 * np.sqrt((ds.sigma**2).mean() / residual.size) + 0.5
    # the PSF FWHM column is each image's PSF's, wider for the wider one
    widths = [ds.psf_fwhm[which == k].mean() for k in (0, 1)]
    assert widths[0] < widths[1] and np.ptp(ds.psf_fwhm[which == 0]) == 0


def test_survey_like_datasets_are_the_same_bytes_whatever_the_workers_and_fresh_images_match(tmp_path):
    path, _ = psf_file(tmp_path / "psfs.fits")
    spec = survey_spec(path, size=24)
    simulate(spec, tmp_path / "one.npz", jobs=1, progress=False)
    simulate(spec, tmp_path / "two.npz", jobs=2, progress=False, chunk_size=7)
    assert (tmp_path / "one.npz").read_bytes() == (tmp_path / "two.npz").read_bytes()
    ds = load_dataset(tmp_path / "one.npz")
    fresh = draw(spec, 5, 9)
    np.testing.assert_array_equal(fresh["img"], ds.img[5:9])
    np.testing.assert_array_equal(fresh["psf_img"], ds.psf_img[5:9])
    header = (tmp_path / "one.csv").read_text().splitlines()[0]
    assert header.endswith("dx,dy,sky,psf_index,snr")


def test_a_centred_stamp_model_draws_and_bounds_the_moffat_datasets_galaxies(tmp_path):
    """A fixed centre (dx = dy = 0) switches on the stamp model with the same draws: its images and
    bounds equal the Moffat renderer's (two GalSim-exact models, two code paths)."""
    moffat = make_spec(size=12)
    centred = make_spec(size=12, priors={"dx": {"fixed": 0.0}, "dy": {"fixed": 0.0}})
    assert centred.stamp_model and not moffat.stamp_model
    simulate(moffat, tmp_path / "moffat.npz", jobs=1, progress=False)
    simulate(centred, tmp_path / "centred.npz", jobs=1, progress=False)
    a, b = load_dataset(tmp_path / "moffat.npz"), load_dataset(tmp_path / "centred.npz")
    np.testing.assert_array_equal(a.label, b.label)
    peak = a.img_nonoise.max(axis=(1, 2))
    assert (np.abs(a.img_nonoise - b.img_nonoise).max(axis=(1, 2)) <= 1e-4 * peak).all()
    bound_a, bound_b = dataset_bounds(a, progress=False), dataset_bounds(b, progress=False)
    np.testing.assert_allclose(bound_b.to_numpy(), bound_a.to_numpy(), rtol=2e-3)
    # a free centre and sky can only widen the bounds (marginalized over them); a sky level is
    # partly degenerate with the flux, a centred galaxy's centre with nothing (by symmetry)
    tiny = {"uniform": [-1e-9, 1e-9]}
    free = make_spec(size=12, priors={"dx": tiny, "dy": tiny, "sky": tiny})
    simulate(free, tmp_path / "free.npz", jobs=1, progress=False)
    bound_c = dataset_bounds(load_dataset(tmp_path / "free.npz"), progress=False).to_numpy()
    assert (bound_c >= bound_b.to_numpy() * (1 - 1e-6)).all()
    assert (bound_c[:, 0] > bound_b.to_numpy()[:, 0] * 1.005).all()


def test_a_survey_dataset_reads_without_its_psf_file_and_says_what_needs_it(tmp_path):
    path, _ = psf_file(tmp_path / "psfs.fits")
    simulate(survey_spec(path, size=4), tmp_path / "s.npz", jobs=1, progress=False)
    path.rename(tmp_path / "moved.fits")
    ds = load_dataset(tmp_path / "s.npz")
    assert ds.spec.psf.count == 2 and ds.spec.psf_varies
    with pytest.raises(GalparamError, match="PSF images that drew it.*not here"):
        dataset_bounds(ds, progress=False)
    with pytest.raises(GalparamError, match="fits need the PSF images that drew it"):
        run_baseline(tmp_path / "s.npz", tmp_path / "fits.csv", progress=False)
    with pytest.raises(SpecError, match="psfs.fits: no such file"):
        ds.spec.psf.read(SCALE)  # drawing more galaxies needs the file
    recorded = spec_from_yaml_text(str(np.load(tmp_path / "s.npz")["spec"]), source=str(tmp_path / "s.npz"))
    assert recorded.digest() == ds.spec.digest()
    # a PSF file edited since: the dataset still loads (it holds its PSF images); the bounds say so
    fits.PrimaryHDU(np.ones((5, 5))).writeto(path)
    changed = load_dataset(tmp_path / "s.npz")
    assert not changed.spec.psf.available and changed.spec.digest() == ds.spec.digest()


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"priors": {"psf_fwhm": {"fixed": 0.5}}}, "with psf images the FWHM is each image's"),
        ({"priors": {"dx": {"uniform": [-13, 3]}}}, "reaches beyond 12 pixels from a 48-pixel stamp's centre"),
        ({"priors": {"sky": {"uniform": [-4001, 0]}}}, "reaches beyond 20 σ .200 counts., where fits look"),
        ({"psf": {"images": "nowhere.fits"}}, "nowhere.fits: no such file"),
        ({"psf": {"images": "PSF", "oversampling": 0}}, "oversampling: 0; accepted: a whole number 1 to 16"),
        ({"psf": {"images": "PSF", "colour": 1}}, "unknown key 'colour'"),
        ({"renderer": "galsim"}, "draw with kspace"),
        ({"psf": {"images": "PSF", "sha256": "0" * 64}}, "is not the spec's sha256"),
        ({"psf": {"images": []}}, "is not a file name or a list of them"),
        ({"psf": {"images": "NAN"}}, "PSF 0: the PSF image holds NaN or infinite values"),
    ],
)
def test_survey_spec_mistakes_are_one_line_naming_the_key(tmp_path, changes, message):
    path, _ = psf_file(tmp_path / "psfs.fits")
    if "psf" in changes:
        nan = np.ones((9, 9))
        nan[4, 4] = np.nan
        fits.PrimaryHDU(nan).writeto(tmp_path / "nan.fits")
        names = {"PSF": str(path), "NAN": str(tmp_path / "nan.fits")}
        changes["psf"] = {k: names.get(v, v) if isinstance(v, str) else v for k, v in changes["psf"].items()}
    with pytest.raises(SpecError, match=message):
        survey_spec(path, **changes)


def test_psf_images_from_a_list_of_files_draw_what_one_file_holding_them_draws(tmp_path):
    path, arrays = psf_file(tmp_path / "psfs.fits")
    parts = []
    for k, array in enumerate(arrays):
        parts.append(str(tmp_path / f"psf{k}.fits"))
        fits.PrimaryHDU(array).writeto(parts[-1])
    one, listed = survey_spec(path, size=6), survey_spec(path, size=6, psf={"images": parts})
    assert listed.psf.count == 2 and listed.psf.images == tuple(parts)
    simulate(one, tmp_path / "one.npz", jobs=1, progress=False)
    simulate(listed, tmp_path / "listed.npz", jobs=1, progress=False)
    a, b = load_dataset(tmp_path / "one.npz"), load_dataset(tmp_path / "listed.npz")
    for key in ("img", "img_nonoise", "psf_img"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key))
    assert b.spec.to_dict()["psf"]["images"] == parts


@pytest.mark.parametrize("name", ["hst-like", "sdss-like"])
def test_the_shipped_survey_specs_draw_through_the_real_psfs(tmp_path, name):
    spec = load_spec(DATA / f"{name}.yaml").with_overrides(size=8)
    assert spec.psf.count == 3 and spec.psf_varies
    simulate(spec, tmp_path / "s.npz", jobs=1, progress=False)
    ds = load_dataset(tmp_path / "s.npz")
    expected = (0.08, 0.1) if name == "hst-like" else (0.7, 1.1)  # arcsec: HST/ACS F814W, SDSS r seeing
    assert expected[0] < ds.psf_fwhm.min() and ds.psf_fwhm.max() < expected[1]


def test_a_network_trains_on_a_survey_like_dataset_and_evaluates_against_its_own_bounds(tmp_path):
    path, _ = psf_file(tmp_path / "psfs.fits")
    simulate(survey_spec(path, size=160, validation_fraction=0.25), tmp_path / "s.npz", jobs=1, progress=False)
    run = train(tiny_experiment(tmp_path / "s.npz", epochs=1), tmp_path / "run", verbose=0)
    info = json.loads((run / "run.json").read_text())
    assert "training_range" not in info and info["ood"].startswith("none: the network does not estimate")
    assert info["geometry"]["psf"] == "images"
    # a FITS cutout with one of the file's PSFs: taken as it is (no Moffat-profile check)
    ds_in = load_dataset(tmp_path / "s.npz")
    header = fits.Header({"PIXSCALE": SCALE})
    fits.PrimaryHDU(ds_in.img[0].astype(np.float64), header=header).writeto(tmp_path / "g.fits")
    fits.PrimaryHDU(fits.getdata(path, 1)).writeto(tmp_path / "psf0.fits")
    argv = ["predict", str(run), str(tmp_path / "g.fits"), "--psf", str(tmp_path / "psf0.fits")]
    assert main_evaluate([*argv, "-o", str(tmp_path / "p.csv")]) == 0
    predicted = pd.read_csv(tmp_path / "p.csv")
    assert list(predicted["image"]) == [str(tmp_path / "g.fits")] and np.isfinite(predicted[list(LABEL_NAMES)]).all(
        None
    )
    out = tmp_path / "bounds.csv"
    assert main_evaluate(["crb", "--dataset", str(tmp_path / "s.npz"), "-o", str(out), "--n-images", "6"]) == 0
    ds = load_dataset(tmp_path / "s.npz")
    np.testing.assert_allclose(
        pd.read_csv(out, index_col=0).to_numpy(), dataset_bounds(ds, np.arange(6), progress=False).to_numpy(), rtol=1e-6
    )


@pytest.mark.parametrize("sky", [{"uniform": [-20, 20]}, {"fixed": 100.0}])
def test_the_likelihood_fit_of_a_survey_like_dataset_finds_centre_and_sky_and_its_errors_are_the_bounds(tmp_path, sky):
    """A sky that varies is fitted; a fixed one is known (subtracted), as the bounds take it."""
    path, _ = psf_file(tmp_path / "psfs.fits")
    spec = survey_spec(path, size=12, snr_window=[40, 100], priors={"sky": sky})
    simulate(spec, tmp_path / "s.npz", jobs=1, progress=False)
    fits_table = run_baseline(tmp_path / "s.npz", tmp_path / "fits.csv", jobs=1, progress=False)
    ds = load_dataset(tmp_path / "s.npz")
    bounds = dataset_bounds(ds, progress=False).to_numpy()
    estimate = fits_table[list(LABEL_NAMES)].to_numpy()
    errors = fits_table[[f"{n}_err" for n in LABEL_NAMES]].to_numpy()
    assert fits_table.converged.all()
    assert (np.abs(estimate - ds.label) / bounds < 4.5).all()  # within the bounds' reach
    np.testing.assert_allclose(np.median(errors / bounds, axis=0), 1.0, atol=0.15)
    manifest = json.loads((tmp_path / "fits.csv.json").read_text())
    assert manifest["model"].startswith("stamps")


def test_a_spec_extending_a_survey_spec_finds_the_bases_psf_files(tmp_path):
    """The base's PSF files are relative to the base's folder, not the extending spec's."""
    shutil.copytree(DATA, tmp_path / "data", ignore=shutil.ignore_patterns("*.npz", "*.csv", "*.parts"))
    (tmp_path / "data" / "extends" / "deeper").mkdir(parents=True)
    (tmp_path / "data" / "extends" / "deeper" / "mine.yaml").write_text("base: ../../hst-like.yaml\nname: mine\n")
    spec = load_spec(tmp_path / "data" / "extends" / "deeper" / "mine.yaml")
    assert spec.psf.count == 3 and spec.psf.available
    assert spec.psf.sha256 == load_spec(tmp_path / "data" / "hst-like.yaml").psf.sha256


def test_a_moved_survey_dataset_finds_its_relative_psf_files_from_the_current_folder(tmp_path, monkeypatch):
    psf_file(tmp_path / "psfs.fits")
    monkeypatch.chdir(tmp_path)
    spec = survey_spec("psfs.fits", size=4, psf={"images": "psfs.fits"})  # relative to the spec (here)
    simulate(spec, tmp_path / "s.npz", jobs=1, progress=False)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "s.npz").rename(tmp_path / "elsewhere" / "s.npz")
    ds = load_dataset(tmp_path / "elsewhere" / "s.npz")
    assert ds.spec.psf.images == "psfs.fits" and ds.spec.psf.available
    assert np.isfinite(dataset_bounds(ds, progress=False).to_numpy()).all()
