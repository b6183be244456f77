#!/usr/bin/env python
"""Fit a single Sérsic profile to each stamp of a stack with a peer fitter.

This script runs inside the peer fitters' own virtual environment, never in
galparam's: it imports only the standard library, numpy and the peer package
(``pysersic`` 0.1.5 or ``astrophot`` 0.18.x).  It reads a stack of stamps,
fits each one with the tool's standard approach, times every fit, converts the
tool's parameters to galparam's conventions and writes one JSON file.

Usage::

    python peer_worker.py --tool {pysersic,astrophot,pysersic-nuts} --stamps A.npz [B.npz ...] \\
        --out A.json [B.json ...] [--threads 1]

``benchmarks/bench_peers.py`` runs it; each stack gets its own results file.

Input (``np.load(..., allow_pickle=False)``):

``images``  (N, ny, nx) float64, sky-subtracted pixel values.
``sigma``   (N, ny, nx) float64, per-pixel noise sigma.
``mask``    (N, ny, nx) bool, True where the pixel is USED (good).
``psf``     (N, py, px) float64, effective PSF images (pixel response
            included) at the data's pixel scale, each summing to 1 and
            centred on the array's true centre ((px-1)/2, (py-1)/2)
            zero-based; odd or even sizes.
``pixel_scale`` scalar, arcsec per pixel.
``names``   (N,) unicode.

Output: ``{"tool", "version", "startup_seconds", ..., "stamps": [...]}``;
each stamp row has ``name``, ``converted`` values in galparam's conventions
under ``galparam`` (``flux`` in image units, ``sersic_n``, ``hlr_arcsec`` the
circularized half-light radius, reduced shear ``g1``/``g2`` with the angle
counter-clockwise from the +x (column) axis, and one-based FITS ``x``/``y``),
the tool's raw parameters under ``params``, ``converged``, ``seconds`` and
``error``.  A fit that raises becomes a row with ``converged`` false and the
error message; it never stops the run.

Fitting choices (the conversions are checked on noiseless stamps by bench_peers.py):

* pysersic: ``autoprior(image, "sersic", mask)`` then
  ``FitSingle(...).find_MAP()``, sky fixed at 0 (``sky_type="none"``).
  pysersic 0.1.5 only renders square images, so non-square stamps are padded
  at their high-index ends with masked pixels (pixel indices unchanged).
* pysersic-nuts: the same model and prior sampled by ``FitSingle(...).sample()``,
  pysersic's headline posterior (numpyro NUTS, its defaults: 2 chains of 1,000
  warm-up and 1,000 draws, one after the other on one CPU); the values are the
  posterior means, ``info`` holds each parameter's posterior standard deviation,
  the smallest bulk ESS and the largest R-hat (ArviZ's summary).
* AstroPhot: a ``"sersic galaxy model"`` started from adaptive moments of the
  masked image (centre, axis ratio, angle) and a curve of growth (flux,
  half-light radius), n = 2, fitted with ``astrophot.fit.LM``; no sky model.
  AstroPhot integrates its model over pixels, so the pixel response is divided
  out of the effective PSF first (``--astrophot-sampling deconvolved``, the
  default: it is not applied twice); ``midpoint`` point-samples the model at
  pixel centres with the effective PSF instead.  AstroPhot needs odd PSF sizes,
  so even PSFs are shifted by half a pixel (Fourier shift) onto an odd grid.

Timing: the tool is imported and, unless ``--warmup none``, one untimed
warm-up fit of the first stamp is run to pay the one-off JIT / start-up cost;
then every stamp is fitted and timed (wall seconds, including the tool's own
initial-guess step).  ``startup_seconds`` = import time + warm-up time - the
timed time of the same stamp.
"""

import argparse
import hashlib
import json
import os
import sys
import time

TOOLS = ("pysersic", "astrophot", "pysersic-nuts")


def parse_args(argv=None):
    """Parse the command line.

    Parameters
    ----------
    argv : list of str, optional
        Arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    argparse.Namespace
        The parsed options.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tool", required=True, choices=TOOLS)
    parser.add_argument("--stamps", required=True, nargs="+", help="input .npz stacks")
    parser.add_argument("--out", required=True, nargs="+", help="output .json files, one a stack")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    parser.add_argument(
        "--warmup",
        choices=("first", "per-shape", "none"),
        default="first",
        help="untimed warm-up fit: of the first stamp (default), of the first stamp "
        "of each (image, PSF) shape, or none",
    )
    parser.add_argument(
        "--astrophot-sampling",
        choices=("deconvolved", "midpoint", "default"),
        default="deconvolved",
        help="AstroPhot pixel sampling: 'deconvolved' (its own pixel integration, the pixel "
        "response divided out of the effective PSF; default), 'midpoint' (point samples "
        "with the effective PSF) or 'default' (its integration with the effective PSF: "
        "the pixel counted twice)",
    )
    parser.add_argument("--seed", type=int, default=0, help="pysersic PRNG seed")
    parser.add_argument("--limit", type=int, default=None, help="fit only the first N stamps")
    return parser.parse_args(argv)


def limit_threads(threads):
    """Limit the thread pools of BLAS, OpenMP and XLA through the environment.

    Must run before numpy, jax or torch are imported.

    Parameters
    ----------
    threads : int
        Number of threads to allow.
    """
    n = str(int(threads))
    for var in (
        "OMP_NUM_THREADS",
        "MKL_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "VECLIB_MAXIMUM_THREADS",
        "NUMEXPR_NUM_THREADS",
    ):
        os.environ[var] = n
    if int(threads) == 1:
        os.environ["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    else:
        os.environ["XLA_FLAGS"] = f"--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads={n}"
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ.setdefault("CASKADE_BACKEND", "torch")  # AstroPhot's default backend
    os.environ["TQDM_DISABLE"] = "1"  # pysersic's per-step progress bars


def _package_version(name):
    """Installed version of a distribution, or "unknown"."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


# numpy is imported only after the thread limits are set (see main()).
np = None


def load_stamps(path):
    """Read and check a stamp stack.

    Parameters
    ----------
    path : str
        Path of the ``.npz`` file.

    Returns
    -------
    dict
        ``images``, ``sigma``, ``mask`` (True = good), ``psf`` as native-endian
        arrays, ``pixel_scale`` (float) and ``names`` (list of str).

    Raises
    ------
    ValueError
        If arrays are missing or their shapes disagree.
    """
    with np.load(path, allow_pickle=False) as data:
        missing = {"images", "sigma", "mask", "psf", "pixel_scale", "names"} - set(data.files)
        if missing:
            raise ValueError(f"{path}: missing arrays {sorted(missing)}")
        stamps = {
            "images": np.asarray(data["images"], dtype=np.float64),
            "sigma": np.asarray(data["sigma"], dtype=np.float64),
            "mask": np.asarray(data["mask"], dtype=bool),
            "psf": np.asarray(data["psf"], dtype=np.float64),
            "pixel_scale": float(data["pixel_scale"]),
            "names": [str(s) for s in np.atleast_1d(data["names"])],
        }
    n = stamps["images"].shape[0]
    if stamps["images"].ndim != 3 or stamps["psf"].ndim != 3:
        raise ValueError("images and psf must be 3-D stacks")
    for key in ("sigma", "mask"):
        if stamps[key].shape != stamps["images"].shape:
            raise ValueError(f"{key} shape {stamps[key].shape} != images {stamps['images'].shape}")
    if stamps["psf"].shape[0] != n or len(stamps["names"]) != n:
        raise ValueError("psf and names must have one entry per image")
    return stamps


def clean_stamp(image, sigma, good):
    """Make a stamp safe to fit: bad pixels are masked and given finite values.

    Parameters
    ----------
    image, sigma : ndarray
        Pixel values and noise sigma.
    good : ndarray of bool
        True where the pixel is used.

    Returns
    -------
    image, sigma, good : ndarray
        Copies where non-finite pixels and pixels with sigma <= 0 are masked,
        masked pixels hold 0 and a finite positive sigma.
    """
    good = good & np.isfinite(image) & np.isfinite(sigma) & (sigma > 0)
    if not good.any():
        raise ValueError("no usable pixel in the stamp")
    fill = float(np.median(sigma[good]))
    return np.where(good, image, 0.0), np.where(good, sigma, fill), good


def reduced_shear(q, beta):
    """Reduced shear of an ellipse.

    Parameters
    ----------
    q : float
        Axis ratio b/a.
    beta : float
        Angle of the major axis, radians, counter-clockwise from +x (columns).

    Returns
    -------
    g1, g2 : float
        ``|g| cos 2beta`` and ``|g| sin 2beta`` with ``|g| = (1-q)/(1+q)``.
    """
    g = (1.0 - q) / (1.0 + q)
    return g * np.cos(2.0 * beta), g * np.sin(2.0 * beta)


def galparam_row(flux, n, r_major_pix, q, beta, x0, y0, pixel_scale):
    """Express a Sérsic fit in galparam's conventions.

    Parameters
    ----------
    flux : float
        Total flux in image units.
    n : float
        Sérsic index.
    r_major_pix : float
        Semi-major-axis half-light radius, pixels.
    q : float
        Axis ratio b/a.
    beta : float
        Major-axis angle, radians, counter-clockwise from +x.
    x0, y0 : float
        Zero-based centre: column and row of the pixel-centre grid.
    pixel_scale : float
        Arcsec per pixel.

    Returns
    -------
    dict
        ``flux``, ``sersic_n``, ``hlr_arcsec`` (= r_major * sqrt(q) *
        pixel_scale), ``g1``, ``g2``, ``x``, ``y`` (one-based FITS).
    """
    g1, g2 = reduced_shear(q, beta)
    return {
        "flux": float(flux),
        "sersic_n": float(n),
        "hlr_arcsec": float(r_major_pix * np.sqrt(q) * pixel_scale),
        "g1": float(g1),
        "g2": float(g2),
        "x": float(x0 + 1.0),
        "y": float(y0 + 1.0),
    }


def adaptive_moments(image, good, sigma0=2.0, max_iter=200, tol=1e-5):
    """Centre and second moments from elliptical-Gaussian-weighted moments.

    The weight is iterated to match the object (as in HSM adaptive moments):
    with weight covariance ``M``, the weighted second moments of a Gaussian of
    covariance ``M`` are ``M / 2``, so ``M <- 2 * weighted moments``.

    Parameters
    ----------
    image : ndarray
        Pixel values (masked pixels may hold anything).
    good : ndarray of bool
        True where the pixel is used.
    sigma0 : float
        Starting Gaussian weight sigma, pixels.
    max_iter : int
        Iteration limit.
    tol : float
        Convergence tolerance on centre and moments, pixels / pixels^2.

    Returns
    -------
    dict
        ``x``, ``y`` zero-based column / row of the centre, ``mxx``, ``mxy``,
        ``myy`` (pixels^2; x = column, y = row) and ``converged``.
    """
    ny, nx = image.shape
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float64)
    data = np.where(good, image, 0.0)
    # Start at the peak of a 3x3 box-smoothed image, nearest the stamp centre on ties.
    padded = np.pad(data, 1)
    smooth = sum(padded[i : i + ny, j : j + nx] for i in range(3) for j in range(3))
    smooth = np.where(good, smooth, -np.inf)
    dist2 = (xx - (nx - 1) / 2.0) ** 2 + (yy - (ny - 1) / 2.0) ** 2
    peak = np.lexsort((dist2.ravel(), -smooth.ravel()))[0]
    yc, xc = float(yy.ravel()[peak]), float(xx.ravel()[peak])
    mxx = myy = sigma0**2
    mxy = 0.0
    max_m = float(max(nx, ny)) ** 2
    converged = False
    for _ in range(max_iter):
        dx, dy = xx - xc, yy - yc
        det = mxx * myy - mxy * mxy
        rho2 = (myy * dx * dx - 2.0 * mxy * dx * dy + mxx * dy * dy) / det
        w = np.where(good, np.exp(-0.5 * np.minimum(rho2, 200.0)), 0.0) * data
        s = w.sum()
        if not s > 0:
            break
        ddx, ddy = (w * dx).sum() / s, (w * dy).sum() / s
        nxx = 2.0 * (w * (dx - ddx) ** 2).sum() / s
        nyy = 2.0 * (w * (dy - ddy) ** 2).sum() / s
        nxy = 2.0 * (w * (dx - ddx) * (dy - ddy)).sum() / s
        # keep the weight a sensible, positive-definite ellipse
        nxx = min(max(nxx, 0.25), max_m)
        nyy = min(max(nyy, 0.25), max_m)
        nxy = float(np.clip(nxy, -0.95 * np.sqrt(nxx * nyy), 0.95 * np.sqrt(nxx * nyy)))
        change = max(abs(ddx), abs(ddy), abs(nxx - mxx), abs(nyy - myy), abs(nxy - mxy))
        xc = float(np.clip(xc + ddx, 0, nx - 1))
        yc = float(np.clip(yc + ddy, 0, ny - 1))
        mxx, myy, mxy = nxx, nyy, nxy
        if change < tol:
            converged = True
            break
    return {"x": xc, "y": yc, "mxx": mxx, "mxy": mxy, "myy": myy, "converged": converged}


def half_light_radius_psf(psf):
    """Half-light radius of a PSF image, pixels (circular curve of growth).

    Parameters
    ----------
    psf : ndarray
        PSF image centred on its true centre ((p-1)/2).

    Returns
    -------
    float
        Radius enclosing half of the PSF's sum.
    """
    py, px = psf.shape
    yy, xx = np.mgrid[0:py, 0:px].astype(np.float64)
    r = np.hypot(xx - (px - 1) / 2.0, yy - (py - 1) / 2.0).ravel()
    order = np.argsort(r)
    cum = np.cumsum(psf.ravel()[order])
    return float(r[order][np.searchsorted(cum, 0.5 * cum[-1])])


def moments_start(image, good, psf=None):
    """Initial Sérsic geometry and size from moments and a curve of growth.

    The half-light radius of the curve of growth includes the PSF; when a PSF
    is given, its half-light radius is removed in quadrature.

    Parameters
    ----------
    image : ndarray
        Pixel values.
    good : ndarray of bool
        True where the pixel is used.
    psf : ndarray, optional
        PSF image.

    Returns
    -------
    dict
        ``x``, ``y`` (zero-based column / row), ``q``, ``beta`` (radians,
        counter-clockwise from +x), ``r_major`` (semi-major half-light radius,
        pixels) and ``flux`` (image units), plus ``moments_converged``.
    """
    m = adaptive_moments(image, good)
    mxx, mxy, myy = m["mxx"], m["mxy"], m["myy"]
    half_tr = 0.5 * (mxx + myy)
    root = np.sqrt(0.25 * (mxx - myy) ** 2 + mxy**2)
    lam_max, lam_min = half_tr + root, max(half_tr - root, 1e-6)
    q = float(np.sqrt(lam_min / lam_max))
    beta = float(0.5 * np.arctan2(2.0 * mxy, mxx - myy))
    sig_major = float(np.sqrt(lam_max))
    # Curve of growth in elliptical apertures of the moments' shape.
    ny, nx = image.shape
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float64)
    dx, dy = xx - m["x"], yy - m["y"]
    u = dx * np.cos(beta) + dy * np.sin(beta)
    v = -dx * np.sin(beta) + dy * np.cos(beta)
    r_ell = np.sqrt(u**2 + (v / q) ** 2)
    inside = good & (r_ell < 6.0 * sig_major)
    order = np.argsort(r_ell[inside])
    cum = np.cumsum(image[inside][order])
    flux = float(cum[-1]) if cum.size else 0.0
    if flux > 0:
        r_major = float(r_ell[inside][order][np.searchsorted(cum, 0.5 * flux)])
        if psf is not None:  # remove the PSF's size in quadrature (circularized)
            r_psf = half_light_radius_psf(psf)
            r_circ2 = r_major**2 * q - r_psf**2
            r_major = np.sqrt(max(r_circ2, 0.25) / q)
        r_major = max(float(r_major), 0.5)
    else:  # noise-dominated: fall back to a Gaussian of the moments' size
        flux = float(np.clip(image[good], 0, None).sum()) or 1.0
        r_major = 1.1774 * sig_major
    return {
        "x": m["x"],
        "y": m["y"],
        "q": q,
        "beta": beta,
        "r_major": r_major,
        "flux": flux,
        "moments_converged": m["converged"],
    }


def odd_psf(psf):
    """Return the PSF on an odd-sized grid, centred on its central pixel.

    An even-sized PSF is centred on a pixel corner ((p-1)/2); it is padded by
    one row and column and shifted by +1/2 pixel in x and y with the Fourier
    shift theorem, so its centre lands on pixel p/2 of the (p+1)-sized grid.
    Odd-sized axes are returned unchanged.  The result is renormalized to sum 1.

    Parameters
    ----------
    psf : ndarray
        PSF image (py, px).

    Returns
    -------
    ndarray
        PSF with odd sizes.
    """
    out = np.asarray(psf, dtype=np.float64)
    for axis in (0, 1):
        if out.shape[axis] % 2 == 1:
            continue
        pad = [(0, 0), (0, 0)]
        pad[axis] = (0, 1)
        out = np.pad(out, pad)
        n = out.shape[axis]
        freq = np.fft.fftfreq(n)
        phase = np.exp(-2j * np.pi * freq * 0.5)
        shape = [1, 1]
        shape[axis] = n
        out = np.fft.ifft(np.fft.fft(out, axis=axis) * phase.reshape(shape), axis=axis).real
    return out / out.sum()


def remove_pixel_response(psf):
    """Divide the unit pixel response out of an effective PSF (Fourier space).

    An effective PSF is the optical PSF convolved with the pixel's box and
    sampled at pixel centres; its DFT is the optical PSF's (aliased)
    transform times ``sinc(fx) sinc(fy)``, which has no zero inside the
    band (|f| <= 1/2 cycle per pixel; smallest value (2/pi)^2 at the corner).
    Dividing it out gives the optical PSF sampled at pixel centres, which is
    what a fitter that integrates the model over pixels expects.

    Parameters
    ----------
    psf : ndarray
        Odd-sized effective PSF centred on its central pixel.

    Returns
    -------
    ndarray
        The pixel-deconvolved PSF, renormalized to sum 1.
    """
    py, px = psf.shape
    centred = np.fft.ifftshift(psf)  # centre pixel -> index (0, 0)
    fy = np.fft.fftfreq(py)[:, None]
    fx = np.fft.fftfreq(px)[None, :]
    out = np.fft.fftshift(np.fft.ifft2(np.fft.fft2(centred) / (np.sinc(fy) * np.sinc(fx))).real)
    return out / out.sum()


class PysersicFitter:
    """pysersic 0.1.5: autoprior + ``FitSingle.find_MAP`` (MAP with SVI/Adam).

    Parameters
    ----------
    pixel_scale : float
        Arcsec per pixel.
    seed : int
        PRNG seed for ``find_MAP``.
    """

    tool = "pysersic"
    bounds = {"ellip": (0.0, 0.9), "n": (0.65, 8.0)}

    def __init__(self, pixel_scale, seed=0):
        import jax
        import pysersic
        from pysersic.priors import autoprior

        self._jax = jax
        self._pysersic = pysersic
        self._autoprior = autoprior
        self.pixel_scale = pixel_scale
        self.seed = seed
        self.version = _package_version("pysersic")

    def fit(self, image, sigma, good, psf):
        """Fit one stamp.

        Parameters
        ----------
        image, sigma : ndarray
            Pixel values and noise sigma (ny, nx).
        good : ndarray of bool
            True where the pixel is used.
        psf : ndarray
            Effective PSF (any size smaller than the stamp, sum 1).

        Returns
        -------
        params : dict
            pysersic's MAP values: ``flux``, ``xc``, ``yc``, ``r_eff``,
            ``ellip``, ``theta``, ``n``.
        galparam : dict
            The same in galparam's conventions.
        converged : bool
            True when all values are finite (``find_MAP`` reports no status).
        info : dict
            Padding applied and parameters found at a prior bound.
        """
        fitter, info = self._single(image, sigma, good, psf)
        res = fitter.find_MAP(rkey=self._jax.random.PRNGKey(self.seed), return_model=False)
        params = {k: float(res[k]) for k in ("flux", "xc", "yc", "r_eff", "ellip", "theta", "n")}
        info["at_bound"] = [
            k for k, (lo, hi) in self.bounds.items() if min(abs(params[k] - lo), abs(params[k] - hi)) < 1e-3
        ]
        converged = bool(np.all(np.isfinite(list(params.values()))))
        return params, self.to_galparam(params, self.pixel_scale), converged, info

    def _single(self, image, sigma, good, psf):
        """pysersic's ``FitSingle`` of a stamp with its ``autoprior`` (sky fixed at 0), and ``info``
        with the padding applied (pysersic 0.1.5 renders square images only)."""
        image, sigma, good = clean_stamp(image, sigma, good)
        ny, nx = image.shape
        size = max(ny, nx)
        info = {}
        if ny != nx:
            img = np.zeros((size, size))
            sig = np.full((size, size), float(np.median(sigma[good])))
            ok = np.zeros((size, size), bool)
            img[:ny, :nx], sig[:ny, :nx], ok[:ny, :nx] = image, sigma, good
            image, sigma, good = img, sig, ok
            info["padded_to"] = [size, size]
        masked = ~good  # pysersic: True / 1 = masked
        prior = self._autoprior(image, "sersic", mask=masked, sky_type="none")
        return self._pysersic.FitSingle(data=image, rms=sigma, psf=psf, prior=prior, mask=masked), info

    @staticmethod
    def to_galparam(params, pixel_scale):
        """Convert pysersic's parameters to galparam's conventions.

        ``xc``/``yc`` are zero-based column/row of pixel centres; ``r_eff`` is
        the semi-major-axis half-light radius in pixels; ``ellip = 1 - q``;
        ``theta`` is the major axis counter-clockwise from +y, so the angle
        from +x is ``theta + pi/2``; ``flux`` is the total flux.

        Parameters
        ----------
        params : dict
            pysersic's values.
        pixel_scale : float
            Arcsec per pixel.

        Returns
        -------
        dict
            galparam's values (see :func:`galparam_row`).
        """
        q = 1.0 - params["ellip"]
        return galparam_row(
            params["flux"],
            params["n"],
            params["r_eff"],
            q,
            params["theta"] + np.pi / 2.0,
            params["xc"],
            params["yc"],
            pixel_scale,
        )


class PysersicNutsFitter(PysersicFitter):
    """pysersic 0.1.5's posterior: autoprior + ``FitSingle.sample`` (numpyro NUTS, its defaults)."""

    tool = "pysersic-nuts"

    def fit(self, image, sigma, good, psf):
        """Sample one stamp's posterior; returns as :meth:`PysersicFitter.fit`, the values the
        posterior means, ``info`` the posterior standard deviations (``std``), the smallest bulk
        effective sample size (``ess_bulk_min``) and the largest R-hat (``r_hat_max``)."""
        fitter, info = self._single(image, sigma, good, psf)
        result = fitter.sample(rkey=self._jax.random.PRNGKey(self.seed), return_model=False)
        summary = result.summary()
        keys = ("flux", "xc", "yc", "r_eff", "ellip", "theta", "n")
        params = {k: float(summary.loc[k, "mean"]) for k in keys}
        info.update(
            std={k: float(summary.loc[k, "sd"]) for k in keys},
            ess_bulk_min=float(summary.loc[list(keys), "ess_bulk"].min()),
            r_hat_max=float(summary.loc[list(keys), "r_hat"].max()),
        )
        converged = bool(np.all(np.isfinite(list(params.values())))) and info["r_hat_max"] < 1.05
        return params, self.to_galparam(params, self.pixel_scale), converged, info


class AstrophotFitter:
    """AstroPhot 0.18: ``"sersic galaxy model"`` fitted with ``fit.LM``.

    Parameters
    ----------
    pixel_scale : float
        Arcsec per pixel.
    sampling : {"midpoint", "default"}
        ``"midpoint"`` point-samples the model at pixel centres (right for
        effective PSFs); ``"default"`` keeps AstroPhot's pixel integration.
    threads : int
        torch intra-op threads.
    """

    tool = "astrophot"

    def __init__(self, pixel_scale, sampling="midpoint", threads=1):
        import logging

        # AstroPhot calls logging.basicConfig(filename="AstroPhot.log") on import;
        # a root handler set beforehand makes that a no-op (no stray log file).
        root = logging.getLogger()
        if not root.handlers:
            root.addHandler(logging.NullHandler())
        import torch

        torch.set_num_threads(int(threads))
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # already set
            pass
        import astrophot as ap
        from astrophot.utils.conversions.functions import (
            sersic_flux_to_Ie_np,
            sersic_Ie_to_flux_np,
        )

        ap.config.set_logging_output(stdout=False, filename=None)
        self._ap = ap
        self._ie_to_flux = sersic_Ie_to_flux_np
        self._flux_to_ie = sersic_flux_to_Ie_np
        self.pixel_scale = pixel_scale
        self.sampling = sampling
        self.version = _package_version("astrophot")

    def fit(self, image, sigma, good, psf):
        """Fit one stamp.

        Parameters
        ----------
        image, sigma : ndarray
            Pixel values and noise sigma (ny, nx).
        good : ndarray of bool
            True where the pixel is used.
        psf : ndarray
            Effective PSF (sum 1); made odd-sized if needed.

        Returns
        -------
        params : dict
            AstroPhot's values: ``center_x``, ``center_y`` (arcsec), ``q``,
            ``PA`` (radians), ``n``, ``Re`` (arcsec), ``Ie`` (flux/arcsec^2).
        galparam : dict
            The same in galparam's conventions.
        converged : bool
            True when LM's message is exactly ``"success"``.
        info : dict
            LM's message, iterations, final chi^2/dof, the start used.
        """
        ap = self._ap
        scale = self.pixel_scale
        image, sigma, good = clean_stamp(image, sigma, good)
        start = moments_start(image, good, psf)
        q0 = float(np.clip(start["q"], 0.1, 0.95))
        pa0 = float((start["beta"] - np.pi / 2.0) % np.pi)
        n0 = 2.0
        re0 = start["r_major"] * scale
        ie0 = float(self._flux_to_ie(start["flux"], n0, re0, q0))
        psf_odd = odd_psf(psf)
        if self.sampling == "deconvolved":
            psf_odd = remove_pixel_response(psf_odd)
        target = ap.TargetImage(
            data=image,
            pixelscale=scale,
            variance=sigma**2,
            mask=~good,  # AstroPhot: True = ignore the pixel
            psf=ap.PSFImage(data=psf_odd),
        )
        options = {}
        if self.sampling == "midpoint":
            options = {"sampling_mode": "midpoint", "integrate_mode": "none"}
        model = ap.Model(
            name="sersic",
            model_type="sersic galaxy model",
            target=target,
            center=[start["x"] * scale, start["y"] * scale],
            q=q0,
            PA=pa0,
            n=n0,
            Re=re0,
            Ie=ie0,
            **options,
        )
        model.initialize()
        lm = ap.fit.LM(model, verbose=0).fit()
        center = model.center.value.detach().cpu().numpy()
        params = {
            "center_x": float(center[0]),
            "center_y": float(center[1]),
            "q": float(model.q.value.item()),
            "PA": float(model.PA.value.item()),
            "n": float(model.n.value.item()),
            "Re": float(model.Re.value.item()),
            "Ie": float(model.Ie.value.item()),
        }
        info = {
            "message": lm.message,
            "iterations": len(lm.loss_history) - 1,
            "chi2_ndf": float(np.nanmin(lm.loss_history)),
            "start": {k: (float(v) if not isinstance(v, bool) else v) for k, v in start.items()},
        }
        converged = lm.message == "success" and bool(np.all(np.isfinite(list(params.values()))))
        return params, self.to_galparam(params, scale), converged, info

    @staticmethod
    def to_galparam(params, pixel_scale):
        """Convert AstroPhot's parameters to galparam's conventions.

        With ``TargetImage(pixelscale=s)`` (CD = diag(s, s), crpix = crtan =
        0) the tangent-plane coordinates are ``(column, row) * s`` of pixel
        centres, so ``x0 = center_x / s``; ``Re`` is the semi-major-axis
        half-light radius in arcsec; ``PA`` is the major axis counter-clockwise
        from +y, so the angle from +x is ``PA + pi/2``; the total flux is
        ``2 pi n Re^2 q Ie e^b b^(-2n) Gamma(2n)`` (AstroPhot's
        ``sersic_Ie_to_flux_np``, same b(n) as its model).

        Parameters
        ----------
        params : dict
            AstroPhot's values.
        pixel_scale : float
            Arcsec per pixel.

        Returns
        -------
        dict
            galparam's values (see :func:`galparam_row`).
        """
        from astrophot.utils.conversions.functions import sersic_Ie_to_flux_np

        flux = sersic_Ie_to_flux_np(params["Ie"], params["n"], params["Re"], params["q"])
        return galparam_row(
            flux,
            params["n"],
            params["Re"] / pixel_scale,
            params["q"],
            params["PA"] + np.pi / 2.0,
            params["center_x"] / pixel_scale,
            params["center_y"] / pixel_scale,
            pixel_scale,
        )


def fit_row(fitter, stamps, i):
    """Fit stamp ``i`` and build its output row; an exception becomes a failed row.

    Parameters
    ----------
    fitter : PysersicFitter or AstrophotFitter
        The tool's fitter.
    stamps : dict
        Output of :func:`load_stamps`.
    i : int
        Stamp index.

    Returns
    -------
    dict
        ``name``, ``converged``, ``seconds``, ``error``, ``params``,
        ``galparam`` and ``info``.
    """
    row = {
        "name": stamps["names"][i],
        "converged": False,
        "seconds": 0.0,
        "error": "",
        "params": {},
        "galparam": {k: None for k in ("flux", "sersic_n", "hlr_arcsec", "g1", "g2", "x", "y")},
        "info": {},
    }
    t0 = time.perf_counter()
    try:
        params, gp, converged, info = fitter.fit(
            stamps["images"][i], stamps["sigma"][i], stamps["mask"][i], stamps["psf"][i]
        )
        row.update(params=params, galparam=gp, converged=bool(converged), info=info)
    except Exception as exc:  # a failed fit is a result, not a crash
        row["error"] = f"{type(exc).__name__}: {exc}"
    row["seconds"] = time.perf_counter() - t0
    return row


def _json_safe(obj):
    """Replace non-finite floats by None, recursively, for strict JSON."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def main(argv=None):
    """Run the worker: load, warm up, fit and time every stamp, write JSON.

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments.

    Returns
    -------
    int
        Exit status (0 on success, even if some fits failed).
    """
    global np
    args = parse_args(argv)
    if len(args.stamps) != len(args.out):
        raise SystemExit("peer_worker: give one --out file for each --stamps file")
    limit_threads(args.threads)
    import numpy

    np = numpy
    t0 = time.perf_counter()
    if args.tool == "pysersic":
        fitter = PysersicFitter(1.0, seed=args.seed)
    elif args.tool == "pysersic-nuts":
        fitter = PysersicNutsFitter(1.0, seed=args.seed)
    else:
        fitter = AstrophotFitter(1.0, sampling=args.astrophot_sampling, threads=args.threads)
    import_seconds = time.perf_counter() - t0
    for stamps_path, out_path in zip(args.stamps, args.out, strict=True):
        stamps = load_stamps(stamps_path)
        fitter.pixel_scale = stamps["pixel_scale"]
        run_stack(args, fitter, stamps, stamps_path, out_path, import_seconds)
        import_seconds = 0.0  # paid once, by the first stack
    return 0


def run_stack(args, fitter, stamps, stamps_path, out_path, import_seconds):
    """Warm up, fit and time every stamp of one stack and write its JSON (atomically)."""
    n_fit = len(stamps["names"]) if args.limit is None else min(args.limit, len(stamps["names"]))
    warm = {}  # stamp index -> warm-up seconds
    if args.warmup != "none" and n_fit:
        seen = set()
        for i in range(n_fit):
            key = (stamps["images"][i].shape, stamps["psf"][i].shape)
            if key in seen:
                continue
            seen.add(key)
            warm[i] = fit_row(fitter, stamps, i)["seconds"]
            if args.warmup == "first":
                break

    rows = []
    for i in range(n_fit):
        rows.append(fit_row(fitter, stamps, i))
        print(
            f"[{args.tool}] {rows[-1]['name']}: {rows[-1]['seconds']:.2f} s "
            f"converged={rows[-1]['converged']} {rows[-1]['error']}",
            file=sys.stderr,
        )

    compile_seconds = sum(max(0.0, w - rows[i]["seconds"]) for i, w in warm.items())
    with open(stamps_path, "rb") as fh:
        digest = hashlib.sha256(fh.read()).hexdigest()
    out = {
        "tool": args.tool,
        "version": fitter.version,
        "threads": args.threads,
        "stamps_sha256": digest,
        "startup_seconds": import_seconds + compile_seconds,
        "import_seconds": import_seconds,
        "warmup_seconds": float(sum(warm.values())),
        "warmup": args.warmup,
        "options": {"astrophot_sampling": args.astrophot_sampling} if args.tool == "astrophot" else {"seed": args.seed},
        "pixel_scale": stamps["pixel_scale"],
        "stamps": rows,
    }
    partial = out_path + ".partial"
    with open(partial, "w") as fh:
        json.dump(_json_safe(out), fh, indent=1)
    os.replace(partial, out_path)


if __name__ == "__main__":
    sys.exit(main())
