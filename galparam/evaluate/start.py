"""Where a fit starts: the flux from the image sum, the size and shear from adaptive moments."""

from __future__ import annotations

import numpy as np

from galparam.evaluate.fitbox import FitBox


def initial_guess(image, psf_image, *, pixel_scale: float, box: FitBox | None = None) -> np.ndarray:
    """A robust start: flux from the image sum, size and shear from adaptive moments (:func:`adaptive_moments`).

    The PSF's moments are subtracted from the galaxy's (as for Gaussians); where the moments fail
    (very faint images) the middle of the box is used. Sérsic index: 2.

    Returns
    -------
    ndarray of shape (5,): flux, sersic_n, hlr, g1, g2, inside ``box``
    """
    return _guess(image, adaptive_moments(image), adaptive_moments(psf_image), pixel_scale, box)


def initial_guesses(
    images, psf_images, *, pixel_scale: float, box: FitBox | None = None, moments: list | None = None
) -> np.ndarray:
    """:func:`initial_guess` of many images (B, S, S) with their PSF images: (B, 5), each PSF's
    moments measured once (a test set shares one PSF).

    ``moments``, the images' :func:`adaptive_moments` measured elsewhere (a list of (sigma, g1, g2)
    or None; e.g. on the device), is used instead of measuring them here.
    """
    psf_moments: dict = {}
    out = np.empty((len(images), 5))
    for b, (image, psf) in enumerate(zip(images, psf_images, strict=True)):
        psf = np.ascontiguousarray(psf, dtype=np.float64)
        key = psf.tobytes()
        if key not in psf_moments:
            psf_moments[key] = adaptive_moments(psf)
        gal = adaptive_moments(image) if moments is None else moments[b]
        out[b] = _guess(image, gal, psf_moments[key], pixel_scale, box)
    return out


def galsim_installed() -> bool:
    """Whether GalSim's HSM measures the moments (else numpy's iteration, :func:`adaptive_moments`)."""
    try:
        import galsim  # noqa: F401
    except ImportError:
        return False
    return True


def _guess(image, gal, psf, pixel_scale: float, box: FitBox | None) -> np.ndarray:
    box = box or FitBox.training_prior()
    lo, hi = box.low, box.high
    guess = (lo + hi) / 2
    guess[0] = float(np.sum(image))
    guess[1] = 2.0
    guess[3:] = 0.0
    if gal is not None and psf is not None:
        size2 = gal[0] ** 2 - psf[0] ** 2
        if size2 > 0:
            # Gaussian: hlr = 1.1774 sigma; Sérsic profiles of moderate n come out ~1.3x larger.
            guess[2] = 1.3 * 1.1774 * np.sqrt(size2) * pixel_scale
            dilution = gal[0] ** 2 / size2
            guess[3], guess[4] = gal[1] * dilution, gal[2] * dilution
    margin = 1e-6 * (hi - lo)
    guess[:3] = np.clip(guess[:3], lo[:3] + margin[:3], hi[:3] - margin[:3])
    return box.to_theta(box.to_variables(guess))


def adaptive_moments(image) -> tuple[float, float, float] | None:
    """The adaptive moments of an image: GalSim's ``hsm.FindAdaptiveMom`` where GalSim is installed,
    else the same elliptical-Gaussian-weight iteration in numpy (it agrees with GalSim's to 1e-4
    in size and shear on this project's galaxies, noisy or not).

    Returns
    -------
    (sigma, g1, g2) or None
        The matched Gaussian's size in pixels (``moments_sigma``) and its reduced shear
        (``observed_shape``); None where the iteration fails (a very faint image).
    """
    image = np.asarray(image, np.float64)
    if not galsim_installed():
        return _numpy_adaptive_moments(image)
    import galsim

    try:
        m = galsim.hsm.FindAdaptiveMom(galsim.Image(image, scale=1.0))
    except (galsim.GalSimHSMError, galsim.GalSimError):
        return None
    return float(m.moments_sigma), float(m.observed_shape.g1), float(m.observed_shape.g2)


def _numpy_adaptive_moments(image, max_iter: int = 200, tol: float = 1e-6):
    ny, nx = image.shape
    y, x = np.mgrid[0:ny, 0:nx].astype(np.float64)
    cx, cy = (nx - 1) / 2, (ny - 1) / 2
    cov = np.diag([4.0, 4.0])  # the weight's covariance (pixels²), matched to the object's
    for _ in range(max_iter):
        dx, dy = x - cx, y - cy
        inv = np.linalg.inv(cov)
        w = image * np.exp(-0.5 * (inv[0, 0] * dx * dx + 2 * inv[0, 1] * dx * dy + inv[1, 1] * dy * dy))
        total = w.sum()
        if not np.isfinite(total) or total <= 0:
            return None
        cx, cy = cx + (w * dx).sum() / total, cy + (w * dy).sum() / total
        dx, dy = x - cx, y - cy
        moments = np.array([[(w * dx * dx).sum(), (w * dx * dy).sum()], [0.0, (w * dy * dy).sum()]]) / total
        moments[1, 0] = moments[0, 1]
        new = 2.0 * moments  # a Gaussian weighted by its matched Gaussian has half its covariance
        if np.linalg.det(new) <= 0 or not (0 <= cx < nx and 0 <= cy < ny):
            return None
        converged = np.abs(new - cov).max() < tol * np.trace(cov)
        cov = new
        if converged:
            break
    else:
        return None
    return moments_of(cov)


def moments_of(cov) -> tuple[float, float, float]:
    """(sigma, g1, g2) of a converged weight covariance (2, 2), pixels²: the matched Gaussian's size
    and its reduced shear."""
    sigma = np.linalg.det(cov) ** 0.25
    trace = cov[0, 0] + cov[1, 1]
    e1, e2 = (cov[0, 0] - cov[1, 1]) / trace, 2 * cov[0, 1] / trace
    e = np.hypot(e1, e2)
    factor = 1.0 / (1.0 + np.sqrt(max(1.0 - e * e, 0.0)))  # distortion → reduced shear
    return float(sigma), float(e1 * factor), float(e2 * factor)
