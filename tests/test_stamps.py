"""Any stamp, GalSim-exact: the PSF models and the k-space stamp renderer against GalSim itself."""

import galsim
import numpy as np
import pytest
from conftest import REAL

from galparam.errors import GalparamError
from galparam.frame import Frame
from galparam.kspace.stamps import STAMP_PARAMETERS, draw_stamps, galsim_axes, stamp_grid, wide_tables
from galparam.parameters import ParameterError
from galparam.psf import ImagePSF, MoffatPSF

MOFFAT = galsim.Moffat(beta=2.5, fwhm=0.7)


@pytest.fixture(scope="module")
def tables():
    return wide_tables()


def galsim_stamp(theta, frame):
    """What the renderer must equal: GalSim's drawing of the shifted, sheared Sérsic through the PSF."""
    flux, n, hlr, g1, g2, dx, dy, sky = theta
    s = frame.pixel_scale
    galaxy = galsim.Sersic(n, half_light_radius=hlr, flux=flux).shear(g1=g1, g2=g2).shift(dx * s, dy * s)
    method = "no_pixel" if frame.psf.includes_pixel else "auto"
    ny, nx = frame.shape
    drawn = galsim.Convolve(galaxy, frame.psf.to_galsim()).drawImage(nx=nx, ny=ny, scale=s, method=method, dtype=float)
    return drawn.array + sky


def psfs_at(scale):
    """The PSFs of the issue's cases at a pixel scale: effective, oversampled ×3, without the pixel, Moffat."""
    side = 25 if scale >= 0.2 else 101
    effective = MOFFAT.drawImage(nx=side, ny=side, scale=scale).array
    oversampled = galsim.Convolve(MOFFAT, galsim.Pixel(scale)).drawImage(
        nx=3 * side, ny=3 * side, scale=scale / 3, method="no_pixel"
    )
    bare = MOFFAT.drawImage(nx=side - 2, ny=side, scale=scale, method="no_pixel").array
    return {
        "effective image": ImagePSF(effective, scale),
        "oversampled image": ImagePSF(oversampled.array, scale / 3, oversampling=3),
        "image without the pixel": ImagePSF(bare, scale, includes_pixel=False),
        "Moffat": MoffatPSF(0.7 if scale >= 0.2 else 0.12, 3.1),
    }


@pytest.mark.parametrize("scale", [0.03, 0.2, 0.396])
def test_stamps_equal_galsim_for_any_shape_scale_offset_and_psf(tables, scale):
    worst = 0.0
    for name, psf in psfs_at(scale).items():
        for shape in [(64, 64), (47, 33), (96, 128)]:  # square; odd and non-square; even and non-square
            frame = Frame(shape, scale, psf)
            for n, hlr_pixels, offset in [(1.0, 4.0, (0.0, 0.0)), (4.3, 2.4, (1.3, -2.7)), (2.5, 9.0, (-0.6, 2.2))]:
                theta = np.array([2.0e4, n, hlr_pixels * scale, 0.25, -0.3, *offset, 3.0])
                reference = galsim_stamp(theta, frame)
                drawn = draw_stamps(tables, frame, theta[None])[0]
                error = np.abs(drawn - reference).max() / (reference - 3.0).max()
                worst = max(worst, error)
                # the posterior's float32 arithmetic: the float64 drawing within float32 rounding
                single = draw_stamps(tables, frame, theta[None], compute_dtype=np.float32)[0]
                assert np.abs(single - drawn).max() < 1e-6 * (reference - 3.0).max(), (name, shape, n)
                assert not np.array_equal(single, drawn)  # float32 arithmetic indeed
                assert error < 1e-4, (name, shape, n, error)
    assert worst < 1e-6  # in fact ~1e-9: GalSim's own N, k-box and PSF transform


def test_the_grid_is_galsims_own(tables):
    seen = {}
    original = galsim.GSObject.drawFFT_makeKImage

    def recording(self, image):
        kimage, N = original(self, image)
        seen.update(N=N, h=kimage.bounds.xmax)
        return kimage, N

    galsim.GSObject.drawFFT_makeKImage = recording
    try:
        for scale, psf in [(0.396, ImagePSF(MOFFAT.drawImage(nx=25, ny=25, scale=0.396).array, 0.396))] + [
            (0.2, p) for p in psfs_at(0.2).values()
        ]:
            for theta in ([1e4, 2.5, 10 * scale, 0.2, -0.1, 0, 0, 0], [1e4, 0.8, 3 * scale, -0.5, 0.3, 4.2, -3.1, 0]):
                frame = Frame((64, 47), scale, psf)
                galsim_stamp(np.array(theta), frame)
                N, h = stamp_grid(tables, frame, np.array([theta]))
                assert (N[0], h[0]) == (seen["N"], seen["h"]), (theta, seen)
    finally:
        galsim.GSObject.drawFFT_makeKImage = original


def test_shear_axes_are_galsims_bit_for_bit():
    rng = np.random.default_rng(1)
    g, angle = rng.uniform(0, 0.9, 300), rng.uniform(0, 2 * np.pi, 300)
    g1, g2 = g * np.cos(angle), g * np.sin(angle)
    major, minor = galsim_axes(g1, g2)
    for i in range(300):
        transformation = galsim.Sersic(1.0, half_light_radius=1.0).shear(g1=g1[i], g2=g2[i])
        transformation._major_minor()
        assert (major[i], minor[i]) == (transformation._major, transformation._minor)


def test_image_psf_is_galsims_interpolated_image():
    psf_images = {
        "SDSS PSF 41×41": (REAL / "sdss" / "J162123.19+322056.4_psf.fits", 0.396),
        "HST PSF 20×20": (REAL / "hst-aegis" / "AEGIS_F814w_PSF_images_01.fits", 0.03),
    }
    from astropy.io import fits

    arrays = {name: (fits.getdata(path).astype(float), scale) for name, (path, scale) in psf_images.items()}
    arrays["Moffat 24×31, off-centre"] = (
        MOFFAT.shift(0.05, -0.03).drawImage(nx=31, ny=24, scale=0.2, dtype=float).array,
        0.2,
    )
    for name, (array, scale) in arrays.items():
        ours = ImagePSF(array, scale)
        reference = galsim.InterpolatedImage(galsim.Image(array / array.sum(), scale=scale))
        assert ours.maxk == reference.maxk and ours.stepk == reference.stepk, name
        kx = np.linspace(0, 1.3 * np.pi / scale, 23)
        ky = np.linspace(-1.3 * np.pi / scale, 1.3 * np.pi / scale, 29)
        expected = np.array([[reference.kValue(x, y) for x in kx] for y in ky])
        np.testing.assert_allclose(ours.kvalue(kx, ky), expected, rtol=0, atol=1e-13, err_msg=name)


def test_moffat_psf_is_galsims_for_any_beta():
    for beta in (1.5, 2.0, 3.3, 4.765):
        ours, reference = MoffatPSF(0.8, beta), galsim.Moffat(beta=beta, fwhm=0.8)
        k = np.array([0.0, 0.1, 1.0, 3.0, 10.0, 40.0])
        np.testing.assert_allclose(ours.kvalue(k, [0.0])[0], [reference.kValue(x, 0).real for x in k], atol=1e-14)
        assert ours.half_light_radius == pytest.approx(reference.half_light_radius, rel=1e-12)


def test_derivatives_are_the_drawn_models_own(tables):
    """Every parameter's derivative against central differences on the held grid, and the
    weighted contraction (a likelihood's gradient) against the full Jacobian."""
    for psf in (ImagePSF(MOFFAT.drawImage(nx=31, ny=24, scale=0.2).array, 0.2), MoffatPSF(0.7, 2.5)):
        frame = Frame((47, 52), 0.2, psf)
        theta = np.array([[1e4, 2.3, 0.6, 0.2, -0.15, 1.3, -0.7, 0.3], [5e3, 1.1, 0.9, -0.3, 0.1, -2.2, 0.4, -0.1]])
        grid = stamp_grid(tables, frame, theta)
        image, jacobian = draw_stamps(tables, frame, theta, grid=grid, derivatives="jacobian")
        steps = [1.0, 1e-4, 1e-5, 1e-6, 1e-6, 1e-5, 1e-5, 1e-4]
        for p, step in enumerate(steps):
            up, down = theta.copy(), theta.copy()
            up[:, p] += step
            down[:, p] -= step
            central = (draw_stamps(tables, frame, up, grid=grid) - draw_stamps(tables, frame, down, grid=grid)) / (
                2 * step
            )
            scale = np.abs(jacobian[:, p]).max()
            assert np.abs(central - jacobian[:, p]).max() < 1e-6 * scale, STAMP_PARAMETERS[p]
        weights = np.random.default_rng(0).normal(size=image.shape)
        same, vjp = draw_stamps(tables, frame, theta, grid=grid, derivatives="vjp")
        np.testing.assert_array_equal(same, image)
        expected = np.einsum("bpij,bij->bp", jacobian, weights)
        np.testing.assert_allclose(vjp(weights), expected, rtol=0, atol=1e-12 * np.abs(expected).max())


def test_a_galaxy_beyond_the_tables_is_refused(tables):
    frame = Frame((128, 128), 0.03, MoffatPSF(0.1, 3.0))
    with pytest.raises(ParameterError, match="too large for the k-space tables"):
        draw_stamps(tables, frame, np.array([[1e4, 5.5, 4.0, 0.5, 0.0, 0, 0, 0]]))


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: ImagePSF(np.zeros((9, 9)), 0.2), "sums to 0"),
        (lambda: ImagePSF(np.full((9, 9), np.nan), 0.2), "NaN"),
        (lambda: ImagePSF(np.ones(9), 0.2), "2-D"),
        (lambda: MoffatPSF(-1.0), "positive"),
        (lambda: Frame((8, 64), 0.2, MoffatPSF(0.7)), r"each side must be in \[16, 512\]"),
        (lambda: Frame((64, 64), 3.0, MoffatPSF(0.7)), r"pixel scale 3 arcsec: accepted \[0.01, 2\]"),
    ],
)
def test_bad_psfs_and_frames_are_refused_in_one_line(make, message):
    with pytest.raises(GalparamError, match=message):
        make()
