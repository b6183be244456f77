"""``galparam-measure`` and ``galparam.measure``: FITS in, a table astronomers read out."""

import json
import subprocess
import sys

import galsim
import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from conftest import REAL

from galparam.cli.measure import main
from galparam.errors import GalparamError
from galparam.measure import Cutout, measure, read_catalog
from galparam.measure.inputs import header_pixel_scale, read_fits, split_hdu

SDSS = REAL / "sdss"
SDSS_NAMES = ("J092800.99+014011.9", "J100247.00+042559.8", "J162123.19+322056.4")
HST_CATALOG = REAL / "hst-aegis" / "AEGIS_F814w_catalog.fits"


def sdss_args(name, *extra):
    stem = str(SDSS / name)
    return [f"{stem}_image.fits", "--psf", f"{stem}_psf.fits", "--sigma", f"{stem}_sigma.fits"] + [
        "--segmap",
        f"{stem}_mask.fits",
        "--pixel-scale",
        "0.396",
        *extra,
    ]


def wcs_header(scale_arcsec, nx, ny, rotation_deg=0.0):
    """A TAN WCS header with square pixels of ``scale_arcsec``, rotated by ``rotation_deg``."""
    c, s = np.cos(np.radians(rotation_deg)), np.sin(np.radians(rotation_deg))
    d = scale_arcsec / 3600
    header = fits.Header()
    header.update(
        CTYPE1="RA---TAN",
        CTYPE2="DEC--TAN",
        CRVAL1=150.0,
        CRVAL2=2.0,
        CRPIX1=(nx + 1) / 2,
        CRPIX2=(ny + 1) / 2,
        CD1_1=-d * c,
        CD1_2=d * s,
        CD2_1=d * s,
        CD2_2=d * c,
    )
    return header


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    """A noiseless GalSim galaxy of known axis ratio, angle and centre, written as FITS with a WCS."""
    folder = tmp_path_factory.mktemp("simulated")
    scale, nx, ny = 0.2, 61, 50
    psf_image = galsim.Moffat(beta=3.0, fwhm=0.7).drawImage(nx=25, ny=25, scale=scale, dtype=float).array
    psf = galsim.InterpolatedImage(galsim.Image(psf_image / psf_image.sum(), scale=scale))  # what the file says
    shear = galsim.Shear(q=0.55, beta=25 * galsim.degrees)
    offset = (2.3, -1.6)
    galaxy = (
        galsim.Sersic(2.2, half_light_radius=0.8, flux=5e3).shear(shear).shift(offset[0] * scale, offset[1] * scale)
    )
    image = galsim.Convolve(galaxy, psf).drawImage(nx=nx, ny=ny, scale=scale, dtype=float, method="no_pixel").array
    header = wcs_header(scale, nx, ny)
    fits.PrimaryHDU(image, header=header).writeto(folder / "galaxy.fits")
    fits.PrimaryHDU(psf_image).writeto(folder / "psf.fits")
    truth = dict(q=0.55, beta=25.0, hlr=0.8, n=2.2, flux=5e3, x=(nx + 1) / 2 + offset[0], y=(ny + 1) / 2 + offset[1])
    return folder, truth, header


def test_a_galaxy_is_measured_in_the_conventions_astronomers_use(simulated):
    folder, truth, header = simulated
    table = measure(
        Cutout(str(folder / "galaxy.fits"), psf=str(folder / "psf.fits"), noise_sigma=0.5, zeropoint=25.0),
        progress=False,
    )
    row = table[0]
    assert row["converged"] and row["flags"] == ""
    assert row["axis_ratio"] == pytest.approx(truth["q"], abs=2e-3)
    assert row["position_angle"] == pytest.approx(truth["beta"], abs=0.2)
    assert row["hlr_arcsec"] == pytest.approx(truth["hlr"], rel=2e-3)
    assert row["hlr_major_arcsec"] == pytest.approx(truth["hlr"] / np.sqrt(truth["q"]), rel=3e-3)
    assert row["hlr_pixels"] == pytest.approx(truth["hlr"] / 0.2, rel=2e-3)
    assert row["sersic_n"] == pytest.approx(truth["n"], abs=5e-3)
    assert (row["x"], row["y"]) == pytest.approx((truth["x"], truth["y"]), abs=5e-3)
    assert row["mag"] == pytest.approx(25.0 - 2.5 * np.log10(truth["flux"]), abs=2e-3)
    assert row["pixel_scale"] == pytest.approx(0.2)  # from the header's CD matrix
    # the sky position of the centre, from the header's WCS
    from astropy.wcs import WCS

    ra, dec = WCS(header).all_pix2world([[truth["x"], truth["y"]]], 1)[0]
    assert (row["ra"], row["dec"]) == pytest.approx((ra, dec), abs=1e-7)
    assert table["hlr_arcsec"].unit == "arcsec" and table["position_angle"].unit == "deg"
    assert "position_angle" in table.meta["conventions"]


def test_the_real_cutouts_are_measured_from_the_console(tmp_path, capsys):
    """The three SDSS galaxies (σ maps, segmentation maps) and GalSim's five HST galaxies all converge."""
    out = tmp_path / "sdss.ecsv"
    args = [str(SDSS / f"{n}_image.fits") for n in SDSS_NAMES]
    for option, suffix in (("--psf", "psf"), ("--sigma", "sigma"), ("--segmap", "mask")):
        args += [option, *(str(SDSS / f"{n}_{suffix}.fits") for n in SDSS_NAMES)]
    args += ["--pixel-scale", "0.396", "--zeropoint", "22.5", "--residuals", str(tmp_path / "res"), "-o", str(out)]
    assert main(args + ["-q"]) == 0
    sdss = Table.read(out)
    hst_out = tmp_path / "hst.fits"
    assert main(["--catalog", str(HST_CATALOG), "-o", str(hst_out)]) == 0
    printed = capsys.readouterr().out
    assert "wrote" in printed and "5 galaxies, 5 converged" in printed
    hst = Table.read(hst_out)
    assert len(sdss) == 3 and len(hst) == 5
    for table in (sdss, hst):
        assert table["converged"].all()
        assert (table["chi2_reduced"] > 0.8).all() and (table["chi2_reduced"] < 2.0).all()
        assert np.isfinite(table["sersic_n_err"]).all() and (table["hlr_arcsec_err"] > 0).all()
    assert sorted(hst["name"]) == sorted(str(i) for i in fits.getdata(HST_CATALOG)["IDENT"])
    assert np.allclose(hst["pixel_scale"], 0.03)
    for name in SDSS_NAMES:
        assert (tmp_path / "res" / f"{name}_image.fits.png").stat().st_size > 10_000
        with fits.open(tmp_path / "res" / f"{name}_image.fits.fits") as hdus:
            assert [h.name for h in hdus] == ["PRIMARY", "MODEL", "RESIDUAL", "WEIGHT"]
            residual = hdus["RESIDUAL"].data
            np.testing.assert_allclose(residual, hdus["PRIMARY"].data - hdus["MODEL"].data, equal_nan=True)
            segmap = fits.getdata(SDSS / f"{name}_mask.fits")
            neighbours = (segmap != 0) & (segmap != segmap[64, 64])  # the target: the segment under the centre
            np.testing.assert_array_equal(hdus["WEIGHT"].data == 0, neighbours)
    # J162123's neighbour is segment 1; its target, under the centre, segment 2
    j162 = sdss[[n.startswith("J162123") for n in sdss["name"]]][0]
    assert abs(j162["x"] - 65.4) < 1.5 and abs(j162["y"] - 65.0) < 1.5  # SExtractor's centre (GalMOSS)
    assert j162["axis_ratio"] == pytest.approx(0.64, abs=0.05)  # and its axis ratio


def test_workers_and_resuming_give_the_same_table(tmp_path, monkeypatch):
    cutouts = read_catalog(HST_CATALOG)[:3]
    one = measure(cutouts, jobs=1, progress=False)
    two = measure(cutouts, jobs=2, progress=False)
    numbers = [c for c in one.colnames if one[c].dtype.kind == "f" and c != "seconds"]
    for column in numbers:
        np.testing.assert_array_equal(one[column], two[column], err_msg=column)
    # interrupted after the first galaxy: the run resumes from OUTPUT.partial
    import galparam.measure as module

    original, calls = module._fit_task, []

    def interrupted(task):
        calls.append(task[0])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(task)

    out = tmp_path / "hst.csv"
    monkeypatch.setattr(module, "_fit_task", interrupted)
    with pytest.raises(KeyboardInterrupt):
        measure(cutouts, output=out, progress=False)
    assert not out.exists() and len((tmp_path / "hst.csv.partial").read_text().splitlines()) == 2
    monkeypatch.setattr(module, "_fit_task", original)
    calls.clear()
    resumed = measure(cutouts, output=out, progress=False)
    assert not (tmp_path / "hst.csv.partial").exists()
    for column in numbers:
        np.testing.assert_array_equal(resumed[column], one[column], err_msg=column)
    assert len(Table.read(out, format="ascii.csv")) == 3


def test_a_catalogue_lists_galaxies_with_files_relative_to_it(tmp_path):
    rows = [
        {
            "image": f"../{SDSS.name}/{n}_image.fits",
            "psf": f"../{SDSS.name}/{n}_psf.fits",
            "sigma": f"../{SDSS.name}/{n}_sigma.fits",
            "segmap": f"../{SDSS.name}/{n}_mask.fits",
            "pixel_scale": 0.396,
            "name": n[:5],
        }
        for n in SDSS_NAMES[1:]
    ]
    folder = tmp_path / "lists"
    folder.mkdir()
    (tmp_path / SDSS.name).symlink_to(SDSS)
    Table(rows=rows).write(folder / "galaxies.ecsv")
    cutouts = read_catalog(folder / "galaxies.ecsv", zeropoint=22.5)
    assert [c.name for c in cutouts] == ["J1002", "J1621"] and cutouts[0].zeropoint == 22.5
    table = measure(cutouts, progress=False)
    assert table["converged"].all() and "mag" in table.colnames
    Table(rows=[{**rows[0], "colour": "red"}]).write(folder / "bad.csv")
    with pytest.raises(GalparamError, match="unknown column.*colour"):
        read_catalog(folder / "bad.csv")


def test_fits_inputs_hdus_and_the_header_pixel_scale(tmp_path):
    path = tmp_path / "multi.fits"
    fits.HDUList(
        [fits.PrimaryHDU(), fits.ImageHDU(np.ones((20, 30)), name="SCI"), fits.ImageHDU(np.zeros((20, 30)), name="WHT")]
    ).writeto(path)
    assert split_hdu("a.fits[2]") == (split_hdu("a.fits")[0], 2) and split_hdu("a.fits[SCI]")[1] == "SCI"
    data, _, name = read_fits(str(path))
    assert data.shape == (20, 30) and data.max() == 1  # the first HDU with an image
    assert read_fits(f"{path}[WHT]")[0].max() == 0 and read_fits(f"{path}[2]")[0].max() == 0
    with pytest.raises(GalparamError, match=r"no HDU 5; the file has 0 \(PRIMARY\), 1 \(SCI\), 2 \(WHT\)"):
        read_fits(f"{path}[5]")
    with pytest.raises(GalparamError, match="the HDU holds no 2-D image"):
        read_fits(f"{path}[0]")
    with pytest.raises(GalparamError, match="no such file"):
        read_fits(str(tmp_path / "missing.fits"))
    (tmp_path / "broken.fits").write_bytes(b"SIMPLE  =                    T" + b"\0" * 50)
    with pytest.raises(GalparamError, match="not a readable FITS file"):
        read_fits(str(tmp_path / "broken.fits"))
    assert header_pixel_scale(wcs_header(0.262, 10, 10, rotation_deg=33)) == pytest.approx(0.262, rel=1e-9)
    cdelt = fits.Header({"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CDELT1": -0.4 / 3600, "CDELT2": 0.4 / 3600})
    assert header_pixel_scale(cdelt) == pytest.approx(0.4)
    assert header_pixel_scale(fits.Header({"PIXSCALE": 0.168})) == pytest.approx(0.168)
    assert header_pixel_scale(fits.Header()) is None
    skewed = fits.Header({"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CDELT1": -0.4 / 3600, "CDELT2": 0.5 / 3600})
    with pytest.raises(GalparamError, match="not square"):
        header_pixel_scale(skewed)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a[:1] + a[3:], "--psf: each image needs its PSF image"),
        (lambda a: [x for x in a if x != "--pixel-scale" and x != "0.396"], "no pixel scale in its header"),
        (lambda a: a + ["--noise-sigma", "0.01"], "give the noise as one of"),
        (lambda a: [x.replace("_sigma.fits", "_sigma.fits[4]") for x in a], r"no HDU 4"),
        (lambda a: [x.replace("_psf.fits", "_nothere.fits") for x in a], r"PSF .*_nothere.fits: no such file"),
        (
            lambda a: [x.replace("_sigma.fits", "_psf.fits") if x.endswith("_sigma.fits") else x for x in a],
            "differs from the image's",
        ),
        (lambda a: a + ["--segment-id", "9"], r"no segment 9; it holds \[1, 2\]"),
        (lambda a: a + ["--mask-bad", "odd"], "mask_bad 'odd': accepted nonzero, zero"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, change, message):
    out = tmp_path / "out.ecsv"
    args = change(sdss_args("J162123.19+322056.4")) + ["-o", str(out), "--residuals", str(tmp_path / "res")]
    done = subprocess.run([sys.executable, "-m", "galparam.cli.measure", *args], capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("galparam-measure: error:"), done.stderr
    assert __import__("re").search(message, lines[0]), lines[0]
    assert list(tmp_path.iterdir()) == []


def test_a_sigma_map_with_zeros_where_the_galaxy_is_is_refused(tmp_path):
    stem = SDSS / "J100247.00+042559.8"
    sigma = fits.getdata(f"{stem}_sigma.fits").copy()
    sigma[64, 64] = 0.0
    fits.PrimaryHDU(sigma).writeto(tmp_path / "sigma.fits")
    cutout = Cutout(f"{stem}_image.fits", psf=f"{stem}_psf.fits", sigma=str(tmp_path / "sigma.fits"), pixel_scale=0.396)
    with pytest.raises(
        GalparamError, match=r"sigma.fits: 1 pixels that count have σ ≤ 0 or not finite \(first at x=65, y=65\)"
    ):
        measure(cutout, progress=False)
    np.testing.assert_array_equal(fits.getdata(tmp_path / "sigma.fits"), sigma)  # the user's file untouched


def test_the_help_shows_examples_and_conventions():
    done = subprocess.run([sys.executable, "-m", "galparam.cli.measure", "--help"], capture_output=True, text=True)
    assert done.returncode == 0
    for text in ("galparam-measure galaxy.fits --psf psf.fits", "--catalog", "position_angle", "sersic_n_at_edge"):
        assert text in done.stdout
    json.dumps(done.stdout)


def test_posterior_summaries_join_the_table(simulated, tmp_path):
    folder, truth, _ = simulated
    cutout = Cutout(str(folder / "galaxy.fits"), psf=str(folder / "psf.fits"), noise_sigma=0.5)
    row = measure(cutout, posterior=True, progress=False)[0]
    assert row["post_method"] == "importance" and row["post_ess"] >= 500
    # a bright galaxy: the posterior is the fit's Laplace approximation
    for name, column in (("flux", "flux"), ("sersic_n", "sersic_n"), ("hlr", "hlr_arcsec"), ("g1", "g1"), ("g2", "g2")):
        err = row[f"{column}_err"]
        assert abs(row[f"{name}_post_mean"] - row[column]) < 0.2 * err, name
        assert 0.85 < row[f"{name}_post_std"] / err < 1.15, name
        assert row[f"{name}_post_q16"] < row[f"{name}_post_median"] < row[f"{name}_post_q84"], name
    assert row["sersic_n_post_median"] == pytest.approx(truth["n"], abs=0.01)
    # the console's --posterior, resumable like the fits: its table holds the same numbers
    out = tmp_path / "post.ecsv"
    args = [str(folder / "galaxy.fits"), "--psf", str(folder / "psf.fits"), "--noise-sigma", "0.5"]
    assert main([*args, "--posterior", "-q", "-o", str(out)]) == 0
    written = Table.read(out)[0]
    assert written["sersic_n_post_mean"] == pytest.approx(row["sersic_n_post_mean"], rel=1e-12)
    assert "posterior" in Table.read(out).meta
