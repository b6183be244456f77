import galsim
import numpy as np
import pytest

from galparam.errors import SpecError
from galparam.geometry import Geometry
from galparam.parameters import ParameterError, sersic_grid
from galparam.render import GalSimRenderer

CASES = [
    (1.0e5, 3.0, 0.3, -0.069, 0.15, 0.5),
    (4.0e5, 0.5, 0.1, 0.5, -0.3, 0.7),
    (3.0e4, 5.5, 0.6, 0.0, 0.0, 1.0),
]


@pytest.mark.parametrize("flux,n,hlr,g1,g2,fwhm", CASES)
def test_image_equals_galsims_own_drawing(flux, n, hlr, g1, g2, fwhm):
    ours = GalSimRenderer().image(flux, n, hlr, g1, g2, fwhm)
    galaxy = galsim.Sersic(n, half_light_radius=hlr, flux=flux).shear(g1=g1, g2=g2)
    theirs = galsim.Convolve(galaxy, galsim.Moffat(beta=2.0, fwhm=fwhm)).drawImage(nx=64, ny=64, scale=0.23).array
    assert ours.dtype == np.float32 and ours.shape == (64, 64)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6 * theirs.max())


def test_noiseless_image_sums_to_flux_within_stamp_loss():
    flux, n, hlr, g1, g2, fwhm = 1.0e5, 4.0, 0.6, 0.2, 0.1, 0.8
    stamp = GalSimRenderer().image(flux, n, hlr, g1, g2, fwhm)
    # The light outside a 64-pixel stamp, measured on a 512-pixel stamp of the same profile.
    wide = GalSimRenderer(Geometry(stamp_size=512)).image(flux, n, hlr, g1, g2, fwhm, dtype=np.float64)
    inside = wide[224:288, 224:288].sum()
    assert stamp.sum() <= flux
    assert stamp.sum() == pytest.approx(inside, rel=2e-3)
    assert 0.9 * flux < stamp.sum() < 0.99 * flux  # a real loss for this wide profile, and a small one


def test_retained_profiles_survive_galsim_cache_eviction():
    renderer = GalSimRenderer()
    first = renderer.image(1e5, 0.5, 0.3, 0.1, 0.0, 0.5)
    for n in np.linspace(0.6, 1.4, 120):  # more indices than GalSim's 100-entry cache
        renderer.image(1e5, n, 0.3, 0.1, 0.0, 0.5)
    assert len(renderer._unit_sersic) == 121
    np.testing.assert_array_equal(renderer.image(1e5, 0.5, 0.3, 0.1, 0.0, 0.5), first)


def test_psf_image_has_unit_flux_and_is_centred():
    psf = GalSimRenderer().psf_image(0.5)
    assert 0.99 < psf.sum() <= 1.0  # a beta = 2 Moffat has wide wings
    assert np.unravel_index(psf.argmax(), psf.shape) in {(31, 31), (31, 32), (32, 31), (32, 32)}


def test_sersic_grid():
    grid = sersic_grid(0.5, 6.0, 1000)
    assert grid[0] == 0.5 and grid[-1] == 6.0 and len(grid) == 1000
    np.testing.assert_allclose(np.diff(grid), 5.5 / 999)
    with pytest.raises(SpecError, match=r"0.3 <= n_min < n_max <= 6.2"):
        sersic_grid(0.1, 6.0, 10)


@pytest.mark.parametrize(
    "theta,words",
    [
        ((-1.0, 3.0, 0.3, 0.0, 0.0), r"flux -1 is outside the valid range \(0, inf\) counts"),
        ((1e5, 7.0, 0.3, 0.0, 0.0), r"sersic_n 7 is outside the valid range \[0.3, 6.2\]"),
        ((1e5, 3.0, 0.0, 0.0, 0.0), r"hlr 0 is outside the valid range \(0, 20\] arcsec"),
        ((1e5, 3.0, 0.3, 0.8, 0.7), r"\|g\| = 1.06 .* outside the valid range \[0, 1\)"),
    ],
)
def test_out_of_range_galaxies_are_refused_naming_value_and_range(theta, words):
    with pytest.raises(ParameterError, match=words):
        GalSimRenderer().image(*theta, 0.5)
