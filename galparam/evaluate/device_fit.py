"""Maximum-likelihood fits and Cramér–Rao bounds solved on the device (Keras's JAX backend).

:class:`DeviceFit` fits what :class:`~galparam.evaluate.fit.BatchedFit` fits, with the same start
(adaptive moments — measured on the device where GalSim is missing —, or a given start where it is
likelier, then Fisher-scoring steps while they lower the NLL), the same
:class:`~galparam.evaluate.fitbox.FitBox` and square-to-disc shear variables, each image held on
the grid its start needs (and started again on the enclosing grid where its estimate needs a larger
one), the same likelihood (:mod:`galparam.evaluate.likelihood`) and the same stopping rule
(:data:`~galparam.evaluate.fit.FTOL` on the NLL less its start value,
:data:`~galparam.evaluate.fit.GTOL` on the projected gradient in units of the start's bound). The
model is the ``keras.ops`` k-space renderer (:class:`galparam.kspace.KerasRenderer`, float64), its
exact Jacobian by the five fit variables from forward-mode derivatives (``jax.linearize``), and the
solver a projected Levenberg–Marquardt iteration, all images of one grid at once inside one
compiled ``jax.lax.while_loop``:

    F, g     = Fisher matrix and NLL gradient at x (the same Jacobian gives both)
    free     = variables not held at a bound of the box by their gradient
    D        = sqrt(diag F)                              (the step in units of each bound)
    δ        = −D⁻¹ (D⁻¹ F D⁻¹ + λ I)⁻¹ D⁻¹ g            (free variables; 0 for the others)
    x'       = clip(x + δ, box)
    if NLL(x') < NLL(x):  x ← x', λ ← λ/3               (Fisher scoring as λ → 0)
    else:                 λ ← 10 λ                      (towards a short gradient step)
    stop when |projected g|·bound < GTOL, or NLL falls by ≤ FTOL of its fall so far

The bounds (:meth:`DeviceFit.bounds`, :func:`device_bounds`) come from the same Jacobians by the
physical parameters, each galaxy on its own grid, as :func:`galparam.evaluate.crb.batch_bounds`.
On the JAX CPU backend they reach BatchedFit's maxima (tests/test_device_fit.py); on a GPU the
images of a grid are solved together, without host round trips inside a fit.
"""

from __future__ import annotations

import time

import numpy as np

from galparam import backend
from galparam.errors import GalparamError
from galparam.evaluate.crb import covariances, fisher_matrices
from galparam.evaluate.fit import FTOL, GTOL, REGRIDS, SCORING_STEPS, BatchedFit, FitResult, check_images
from galparam.evaluate.fitbox import FitBox
from galparam.evaluate.likelihood import nll_and_weights
from galparam.evaluate.start import galsim_installed, moments_of
from galparam.kspace import KerasRenderer
from galparam.render import KSpaceRenderer, renderer_for

__all__ = ["DeviceFit", "device_adaptive_moments", "device_bounds"]

LAMBDA_START = 1e-3
"""Levenberg–Marquardt's damping at the start (relative to the Fisher matrix's unit diagonal)."""

LAMBDA_STALLED = 1e10
"""A damping this large means no step lowers the NLL any more: the fit stops, not converged."""

ROUND = 8
"""Solver iterations per device call; between calls the host drops the images whose fits have ended."""

BATCH = 1024
"""Images solved together in one compiled loop (padded to a power of two ≥ 8: few shapes compile)."""

GROUP_BOX_STEP = 8
"""Images are drawn together where their FFT sizes are equal and their k-boxes round up to the same
multiple of this (each image keeps its own box inside: the same images; fewer shapes to compile)."""


def require_jax(what: str) -> None:
    """Refuse, in one line, a device path in a process whose Keras backend is not JAX."""
    if backend.name() != "jax":
        raise GalparamError(
            f"{what} runs on Keras's JAX backend (KERAS_BACKEND=jax); this process uses {backend.name()}"
        )


class _Device:
    """The float64 ``keras.ops`` renderer of a geometry and its compiled functions, per grid (N, H)
    and whatever else they depend on (one per geometry and process: :func:`_device`)."""

    def __init__(self, renderer: KSpaceRenderer):
        import jax

        with jax.enable_x64(True):
            self.model = KerasRenderer(renderer.tables, dtype="float64")
        self.compiled: dict = {}

    def function(self, key, build):
        fn = self.compiled.get(key)
        if fn is None:
            fn = self.compiled[key] = build()
        return fn


_DEVICES: dict = {}


def _device(renderer: KSpaceRenderer) -> _Device:
    """This process's :class:`_Device` of the renderer's geometry (XLA compiles each function once)."""
    key = renderer.geometry
    if key not in _DEVICES:
        _DEVICES[key] = _Device(renderer)
    return _DEVICES[key]


def _groups(N: np.ndarray, h: np.ndarray, box_step: int, batch: int):
    """(N, H, rows) of the images drawn together: one grid size N and padded k-box H, ≤ ``batch`` rows."""
    H = -(-h // box_step) * box_step
    keys = np.stack([N, H], axis=1)
    for key in np.unique(keys, axis=0):
        rows = np.flatnonzero((keys == key).all(axis=1))
        for start in range(0, len(rows), batch):
            yield int(key[0]), int(key[1]), rows[start : start + batch]


def _padded(rows: np.ndarray, batch: int = BATCH) -> np.ndarray:
    """``rows`` (at most ``batch``) repeated at their first to a power of two ≥ 8, or ``batch`` rows
    (few compiled shapes; an image does not depend on its batch-mates)."""
    size = min(max(8, 1 << (len(rows) - 1).bit_length()), max(batch, len(rows)))
    return np.concatenate([rows, np.full(size - len(rows), rows[0])])


def _linearized(model, x):
    """The model at x (B, K) and its Jacobian (B, K, S, S) by the K columns of x, forward mode."""
    import jax
    import jax.numpy as jnp

    mu, tangent = jax.linearize(model, x)
    K = x.shape[1]
    basis = jnp.broadcast_to(jnp.eye(K, dtype=x.dtype)[:, None, :], (K, *x.shape))
    return mu, jnp.moveaxis(jax.vmap(tangent)(basis), 0, 1)


def device_bounds(theta, psf_fwhm, sigma, *, poisson: bool = True, renderer=None, batch: int = BATCH) -> np.ndarray:
    """Cramér–Rao covariances of many galaxies, their Fisher matrices computed on the device.

    The same bounds as :func:`galparam.evaluate.crb.batch_bounds` (each galaxy on its own grid,
    the model's exact Jacobian, the likelihood's pixel variance), from the ``keras.ops`` renderer
    on Keras's JAX backend.

    Parameters
    ----------
    theta : array_like of shape (B, 5)
        flux, sersic_n, hlr, g1, g2 of each galaxy.
    psf_fwhm : array_like of shape (B,) or scalar
        PSF FWHM, arcsec.
    sigma : array_like of shape (B,) or scalar
        Gaussian noise per pixel, counts.
    poisson : bool
        Whether the model's Poisson variance adds to σ².
    renderer : KSpaceRenderer, optional
        Its geometry and tables (default the reference geometry's).
    batch : int
        Galaxies per device call.

    Returns
    -------
    ndarray of shape (B, 5, 5): the inverse Fisher matrices (NaN where singular).

    Raises
    ------
    GalparamError
        Outside Keras's JAX backend; ParameterError for parameters that cannot be drawn.
    """
    require_jax("device_bounds")
    renderer = renderer or renderer_for(KSpaceRenderer.NAME)
    return covariances(
        _device_fisher(_device(renderer), renderer, theta, psf_fwhm, sigma, poisson=poisson, batch=batch)
    )


def _device_fisher(device: _Device, renderer, theta, psf_fwhm, sigma, *, poisson: bool, batch: int) -> np.ndarray:
    import jax
    import jax.numpy as jnp

    theta = np.atleast_2d(np.asarray(theta, dtype=np.float64))
    B = len(theta)
    psf_fwhm = np.broadcast_to(np.asarray(psf_fwhm, dtype=np.float64), (B,))
    sigma = np.broadcast_to(np.asarray(sigma, dtype=np.float64), (B,))
    N, h = renderer.grid(*theta.T, psf_fwhm)
    out = np.empty((B, 5, 5))
    with jax.enable_x64(True):
        for N_, H_, rows in _groups(N, h, GROUP_BOX_STEP, batch):

            def build(N_=N_, H_=H_):
                draw = device.model.group_function(N_, H_)

                def fisher(theta, fw, hh, sig):
                    mu, jac = _linearized(lambda t: draw(*t.T, fw, hh), theta)
                    return fisher_matrices(mu, jac, sig, poisson=poisson, xp=jnp)

                return jax.jit(fisher)

            fn = device.function(("fisher", poisson, N_, H_), build)
            p = _padded(rows, batch)
            out[rows] = np.asarray(fn(theta[p], psf_fwhm[p], h[p].astype(np.int32), sigma[p]))[: len(rows)]
    return out


def device_adaptive_moments(images, *, max_iter: int = 200, tol: float = 1e-6, batch: int = 4096) -> list:
    """The numpy adaptive moments (:func:`galparam.evaluate.start.adaptive_moments` without GalSim)
    of many images (B, ny, nx) at once on the device, float64: the same iteration, each image
    stopping where it would alone. A list of (sigma, g1, g2), or None where the iteration fails.
    """
    import jax

    images = np.asarray(images, dtype=np.float64)
    out: list = []
    with jax.enable_x64(True):
        fn = jax.jit(lambda imgs: _moments_loop(imgs, max_iter, tol))
        for start in range(0, len(images), batch):
            rows = np.arange(start, min(start + batch, len(images)))
            cov, ok = (np.asarray(v)[: len(rows)] for v in fn(images[_padded(rows, batch)]))
            out += [moments_of(c) if good else None for c, good in zip(cov, ok, strict=True)]
    return out


def _moments_loop(images, max_iter, tol):
    """The elliptical-Gaussian-weight iteration of ``start._numpy_adaptive_moments``, all images
    together: each one's weight covariance (B, 2, 2) and whether it converged (B,)."""
    import jax
    import jax.numpy as jnp

    B, ny, nx = images.shape
    y, x = jnp.mgrid[0:ny, 0:nx].astype(images.dtype)
    state = (
        0,
        jnp.full((B,), (nx - 1) / 2),
        jnp.full((B,), (ny - 1) / 2),
        jnp.broadcast_to(jnp.diag(jnp.array([4.0, 4.0])), (B, 2, 2)),
        jnp.ones((B,), bool),
        jnp.zeros((B,), bool),
    )

    def going(state):
        return (state[0] < max_iter) & jnp.any(state[4])

    def step(state):
        it, cx, cy, cov, run, ok = state
        dx, dy = x - cx[:, None, None], y - cy[:, None, None]
        inv = jnp.linalg.inv(cov)
        a, b, d = (inv[:, i, j, None, None] for i, j in ((0, 0), (0, 1), (1, 1)))
        w = images * jnp.exp(-0.5 * (a * dx * dx + 2 * b * dx * dy + d * dy * dy))
        total = w.sum(axis=(1, 2))
        bad = ~jnp.isfinite(total) | (total <= 0)
        total = jnp.where(bad, 1.0, total)
        ncx = cx + (w * dx).sum(axis=(1, 2)) / total
        ncy = cy + (w * dy).sum(axis=(1, 2)) / total
        dx, dy = x - ncx[:, None, None], y - ncy[:, None, None]
        xx = (w * dx * dx).sum(axis=(1, 2)) / total
        xy = (w * dx * dy).sum(axis=(1, 2)) / total
        yy = (w * dy * dy).sum(axis=(1, 2)) / total
        new = 2.0 * jnp.stack([jnp.stack([xx, xy], -1), jnp.stack([xy, yy], -1)], -2)
        bad = bad | (jnp.linalg.det(new) <= 0) | ~((0 <= ncx) & (ncx < nx) & (0 <= ncy) & (ncy < ny))
        converged = jnp.abs(new - cov).max(axis=(1, 2)) < tol * (cov[:, 0, 0] + cov[:, 1, 1])
        move = run & ~bad
        cx, cy = jnp.where(move, ncx, cx), jnp.where(move, ncy, cy)
        cov = jnp.where(move[:, None, None], new, cov)
        ok = ok | (move & converged)
        return it + 1, cx, cy, cov, run & ~bad & ~converged, ok

    _, _, _, cov, _, ok = jax.lax.while_loop(going, step, state)
    return cov, ok


class DeviceFit(BatchedFit):
    """Fits (flux, sersic_n, hlr, g1, g2) to many images by maximum likelihood, on the device.

    The device counterpart of :class:`~galparam.evaluate.fit.BatchedFit`: the same start (its
    moments, given starts and Fisher-scoring steps, evaluated on the device), grids, box, likelihood
    and stopping rule, the module docstring's solver in place of L-BFGS-B; the same API and results.

    Parameters
    ----------
    box : FitBox, optional
        Where to search (default the training prior; for a dataset :meth:`FitBox.from_spec`).
    poisson : bool
        Whether the images have Poisson noise on the galaxy light.
    renderer : KSpaceRenderer, optional
        The geometry and tables (default the reference geometry's).
    max_iter : int
        Levenberg–Marquardt iterations at most, per image.
    scoring_steps : int
        Fisher-scoring steps tried from the start, as BatchedFit's.
    ftol, gtol : float
        The stopping rule, as BatchedFit's.
    batch : int
        Images solved together in one compiled loop.

    Raises
    ------
    GalparamError
        Outside Keras's JAX backend.
    """

    def __init__(
        self,
        *,
        box: FitBox | None = None,
        poisson: bool = True,
        renderer=None,
        max_iter: int = 200,
        scoring_steps: int = SCORING_STEPS,
        ftol: float = FTOL,
        gtol: float = GTOL,
        batch: int = BATCH,
    ):
        require_jax("DeviceFit")
        super().__init__(
            box=box,
            poisson=poisson,
            renderer=renderer,
            max_iter=max_iter,
            scoring_steps=scoring_steps,
            ftol=ftol,
            gtol=gtol,
        )
        self.batch = int(batch)
        self._device = _device(self.renderer)

    def bounds(self, theta, psf_fwhm, sigma) -> np.ndarray:
        """(B, 5, 5) inverse Fisher matrices at ``theta``, from the device (NaN where singular)."""
        fisher = _device_fisher(
            self._device, self.renderer, theta, psf_fwhm, sigma, poisson=self.poisson, batch=self.batch
        )
        return covariances(fisher)

    def fit(self, images, psf_fwhm, sigma, init=None, *, psf_images=None) -> DeviceFit:
        """Fit each image as :meth:`BatchedFit.fit` does (its parameters but ``concurrency``, its
        start, results, errors and warning), solved on the device; returns this fitter."""
        t0 = time.perf_counter()
        images, psf_fwhm, sigma, init = check_images(images, psf_fwhm, sigma, init, self.renderer.geometry.shape)
        B = len(images)
        x, unit, from_init = self._start(images, psf_fwhm, sigma, init, psf_images)
        grid_N, grid_h = self.renderer.grid(*self._thetas(x).T, psf_fwhm)
        nll, nll0 = np.full(B, np.nan), np.full(B, np.nan)
        iterations = np.zeros(B, dtype=np.int64)
        evaluations = np.zeros(B, dtype=np.int64)
        converged = np.zeros(B, dtype=bool)
        todo = np.arange(B)
        for _ in range(REGRIDS + 1):
            x[todo], nll[todo], nll0[todo], its, converged[todo] = self._solve(
                images[todo],
                sigma[todo],
                psf_fwhm[todo],
                grid_N[todo],
                grid_h[todo],
                x[todo],
                unit[todo],
                nll0[todo],
                iterations[todo],
            )
            iterations[todo] += its
            evaluations[todo] += its + 1
            # an estimate that needs a larger grid than its start goes on from there, on one enclosing both
            N, h = self.renderer.enclosing_grid((grid_N[todo], grid_h[todo]), *self._thetas(x[todo]).T, psf_fwhm[todo])
            grown = ((N != grid_N[todo]) | (h != grid_h[todo])) & (iterations[todo] < self.max_iter)
            grid_N[todo], grid_h[todo] = N, h
            todo = todo[grown]
            if not len(todo):
                break
        theta = self._thetas(x)
        covariance = self.bounds(theta, psf_fwhm, sigma)
        seconds = (time.perf_counter() - t0) / B
        message = np.where(converged, "converged", "stopped: no step lowers the NLL, or max_iter reached")
        self._keep(
            [
                FitResult(
                    theta[b],
                    bool(converged[b]),
                    float(nll[b]),
                    int(iterations[b]),
                    int(evaluations[b]),
                    seconds,
                    str(message[b]),
                    covariance[b],
                    bool(from_init[b]),
                )
                for b in range(B)
            ]
        )
        return self

    # -- device work ----------------------------------------------------------------------------
    @property
    def _settings(self) -> tuple:
        """What the compiled functions depend on besides the grid."""
        return (self.box, self.poisson, self.ftol, self.gtol)

    def _moments(self, images) -> list | None:
        """GalSim's HSM image by image where GalSim is installed (as BatchedFit); else the numpy
        moments of all images at once on the device (a GPU machine has no GalSim)."""
        return None if galsim_installed() else device_adaptive_moments(images)

    def _shear(self, x):
        """(flux, n, hlr, g1, g2) columns of fit variables (B, 5), traced (the box's square-to-disc map)."""
        import jax.numpy as jnp

        return (x[:, 0], x[:, 1], x[:, 2], *self.box.disc(x[:, 3], x[:, 4], xp=jnp))

    def _on_own_grids(self, kind, images, x, psf_fwhm, sigma, outputs):
        """A compiled function of each image at fit variables x, on each one's own grid."""
        import jax

        N, h = self.renderer.grid(*self._thetas(x).T, psf_fwhm)
        out = [np.empty((len(x), *shape)) for shape in outputs]
        with jax.enable_x64(True):
            for N_, H_, rows in _groups(N, h, GROUP_BOX_STEP, self.batch):
                fn = self._device.function(
                    (*kind, *self._settings, N_, H_), lambda N_=N_, H_=H_: self._compile(N_, H_)[kind[0]]
                )
                p = _padded(rows, self.batch)
                values = fn(images[p], sigma[p], psf_fwhm[p], h[p].astype(np.int32), x[p])
                for o, v in zip(out, values, strict=True):
                    o[rows] = np.asarray(v)[: len(rows)]
        return out

    def _assess(self, images, x, psf_fwhm, sigma):
        return self._on_own_grids(("assess",), images, x, psf_fwhm, sigma, [(), (5,), (5, 5)])

    def _nll(self, images, x, psf_fwhm, sigma) -> np.ndarray:
        return self._on_own_grids(("nll",), images, x, psf_fwhm, sigma, [()])[0]

    def _solve(self, images, sigma, psf_fwhm, grid_N, grid_h, x0, unit, nll0, spent):
        """Levenberg–Marquardt from x0 on the given grids: (x, nll, nll at the first start, iterations,
        converged).

        Each device call runs up to :data:`ROUND` iterations of the images still going; the host
        then drops the finished ones, so a few slow fits do not keep the whole batch iterating."""
        import jax

        B = len(x0)
        x, nll, nll0 = np.array(x0, dtype=np.float64), np.empty(B), np.array(nll0, dtype=np.float64)
        its = np.zeros(B, dtype=np.int64)
        converged, done = np.zeros(B, dtype=bool), np.zeros(B, dtype=bool)
        lam = np.full(B, LAMBDA_START)
        hh = grid_h.astype(np.int32)
        with jax.enable_x64(True):
            for N_, H_, rows in _groups(grid_N, grid_h, GROUP_BOX_STEP, self.batch):
                iterate = self._device.function(
                    ("iterate", N_, H_), lambda N_=N_, H_=H_: self._compile(N_, H_)["iterate"]
                )
                while len(rows):
                    p = _padded(rows, self.batch)
                    budget = self.max_iter - spent[p] - its[p]
                    out = iterate(images[p], sigma[p], psf_fwhm[p], hh[p], x[p], lam[p], nll0[p], unit[p], budget)
                    n = len(rows)
                    x[rows], nll[rows], nll0[rows], lam[rows], it, conv, done[rows] = (np.asarray(o)[:n] for o in out)
                    its[rows] += it
                    converged[rows] = conv
                    rows = rows[~done[rows]]
        return x, nll, nll0, its, converged

    def _compile(self, N: int, H: int) -> dict:
        """The compiled functions of one grid (N, H): ``nll`` and ``assess`` (NLL, gradient and
        Fisher matrix) at x, and ``iterate``, :data:`ROUND` iterations of the solver."""
        import jax
        import jax.numpy as jnp

        lo, hi = self.box.low, self.box.high
        poisson, ftol, gtol = self.poisson, self.ftol, self.gtol
        eye = np.eye(5)
        draw = self._device.model.group_function(N, H)

        def nll(images, sigma, fw, hh, x):
            return (nll_and_weights(images, draw(*self._shear(x), fw, hh), sigma, poisson=poisson, xp=jnp)[0],)

        def assess(images, sigma, fw, hh, x):
            mu, jac = _linearized(lambda x: draw(*self._shear(x), fw, hh), x)
            value, weights = nll_and_weights(images, mu, sigma, poisson=poisson, xp=jnp)
            grad = jnp.einsum("bkij,bij->bk", jac, weights)
            return value, grad, fisher_matrices(mu, jac, sigma, poisson=poisson, xp=jnp)

        def iterate(images, sigma, fw, hh, x, lam, nll0, unit, budget):
            value, g, F = assess(images, sigma, fw, hh, x)
            nll0 = jnp.where(jnp.isnan(nll0), value, nll0)  # the NLL where the fit began
            B = x.shape[0]
            state = (0, x, value, g, F, lam, jnp.zeros((B,), jnp.int64), budget <= 0, jnp.zeros((B,), bool))

            def going(state):
                return (state[0] < ROUND) & jnp.any(~state[7])

            def step(state):
                count, x, value, g, F, lam, it, done, conv = state
                held = ((x <= lo) & (g > 0)) | ((x >= hi) & (g < 0))
                pg = jnp.where(held, 0.0, g)
                small = jnp.max(jnp.abs(pg) * unit, axis=1) < gtol
                d = jnp.sqrt(jnp.clip(jnp.diagonal(F, axis1=1, axis2=2), 1e-300, None))
                free = ~held
                A = jnp.where(free[:, :, None] & free[:, None, :], F / (d[:, :, None] * d[:, None, :]), 0.0)
                A = A + eye * jnp.where(free, lam[:, None], 1.0)[:, None, :]
                delta = -jnp.linalg.solve(A, (pg / d)[..., None])[..., 0] / d
                x1 = jnp.clip(x + delta, lo, hi)
                value1, g1, F1 = assess(images, sigma, fw, hh, x1)
                active = ~done & ~small
                better = active & jnp.isfinite(value1) & (value1 < value)
                scale = jnp.maximum(jnp.maximum(jnp.abs(value - nll0), jnp.abs(value1 - nll0)), 1.0)
                flat = better & (value - value1 <= ftol * scale)
                x = jnp.where(better[:, None], x1, x)
                value = jnp.where(better, value1, value)
                g = jnp.where(better[:, None], g1, g)
                F = jnp.where(better[:, None, None], F1, F)
                lam = jnp.where(better, jnp.maximum(lam / 3, 1e-12), jnp.where(active, lam * 10, lam))
                conv = conv | (~done & small) | flat
                it = it + active
                done = done | small | flat | (it >= budget) | (lam > LAMBDA_STALLED)
                return count + 1, x, value, g, F, lam, it, done, conv

            _, x, value, _, _, lam, it, done, conv = jax.lax.while_loop(going, step, state)
            return x, value, nll0, lam, it, conv, done

        return {"nll": jax.jit(nll), "assess": jax.jit(assess), "iterate": jax.jit(iterate)}
