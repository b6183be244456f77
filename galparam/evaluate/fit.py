"""Maximum-likelihood fits: one API (:class:`Fit`: ``fit(images, psf_fwhm, sigma) -> self``,
results in ``theta_``, ``covariance_``, ...), and the batched fit on the k-space model.

Each image is still its own bounded L-BFGS-B problem (``scipy.optimize.minimize``), but the
problems run side by side in threads and every round of their value-and-gradient requests is
answered by one call of the batched renderer (:func:`galparam.kspace.render_numpy` with its exact
gradient), each image drawn on a grid held through its fit so that its likelihood is smooth. The
likelihood is :mod:`galparam.evaluate.likelihood`'s, within the
:class:`~galparam.evaluate.fitbox.FitBox`; the fit stops within a few thousandths of the bound of its
maximum (:data:`FTOL`, :data:`GTOL`).

The variables are measured in units of the bound: each is divided by its Cramér–Rao standard
deviation at the start point, so a unit step is about one standard deviation whatever the
parameter's units, and L-BFGS-B's first steps (identity Hessian) stay near the start instead of
leaping to a corner of the box. At the estimate, the inverse Fisher matrix gives each fit's
uncertainty and the correlations of its parameters.

The GalSim-path fit (:class:`~galparam.evaluate.galsim_fit.GalSimFit`, one GalSim fit an image)
has the same API; it is the reference the tests compare this fit with.
"""

from __future__ import annotations

import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize

from galparam.errors import GalparamError
from galparam.evaluate.crb import covariances, fisher_matrices
from galparam.evaluate.fitbox import FitBox
from galparam.evaluate.likelihood import nll_and_weights
from galparam.evaluate.start import initial_guesses
from galparam.parameters import PARAMETERS
from galparam.render import KSpaceRenderer, renderer_for

__all__ = ["BatchedFit", "ConvergenceWarning", "Fit", "FitResult"]


SCORING_STEPS = 4
"""Fisher-scoring steps tried from the start before L-BFGS-B (each kept only if it lowers the NLL)."""

FTOL = 1e-6
"""L-BFGS-B's ``ftol``: it stops when an iteration lowers NLL − NLL(start) by less than this
fraction of max(|NLL − NLL(start)|, 1) (the NLL itself, ~1e4, would stop it ~0.05 bound short)."""

GTOL = 2e-3
"""L-BFGS-B's ``gtol``: it stops when no component of the projected gradient (in bound units)
exceeds this; near the maximum that is within about this many bounds of it (a few times more
along the flux–index–radius degeneracy)."""

REGRIDS = 3
"""How often a fit may start again on a larger grid when its estimate needs one."""


class Rounds:
    """Collects the value-and-gradient requests of the running fits; the last to ask answers all
    of them with one batched evaluation, in the order of the fits' keys.

    Each round holds every running fit's request, whatever the threads' timing: a fit that ends
    while ``waiting`` fits are still to begin hands its place to the next (the round waits for that
    one's first request), so which images are drawn together, and so every digit of a fit, is the
    same from run to run. (Letting a round go without the newcomer changed the last digit of one
    fit in sixty, one run in two.)
    """

    def __init__(self, evaluate, running: int, waiting: int):
        self.evaluate = evaluate
        self.running = running
        self.waiting = waiting
        self.pending: dict = {}
        self.answers: dict = {}
        self.error = None
        self.rounds = 0
        self.cond = threading.Condition()

    def ask(self, key, x):
        with self.cond:
            if self.error is not None:
                raise self.error
            self.pending[key] = x
            self._answer_if_all_asked()
            while key not in self.answers and self.error is None:
                self.cond.wait()
            if self.error is not None:
                raise self.error
            return self.answers.pop(key)

    def finished(self) -> None:
        with self.cond:
            if self.waiting:
                self.waiting -= 1  # the next fit takes this place
            else:
                self.running -= 1
                self._answer_if_all_asked()

    def _answer_if_all_asked(self) -> None:
        if self.pending and len(self.pending) >= self.running:
            keys = sorted(self.pending)
            try:
                results = self.evaluate(keys, np.array([self.pending[k] for k in keys]))
            except Exception as exc:  # every waiting fit raises it
                self.error = exc
                self.cond.notify_all()
                return
            self.pending.clear()
            self.answers.update(zip(keys, results, strict=True))
            self.rounds += 1
            self.cond.notify_all()


class ConvergenceWarning(UserWarning):
    """The optimizer stopped before meeting its convergence criterion."""


@dataclass
class FitResult:
    """One fit: the estimate, whether L-BFGS-B converged, the NLL there, its work and time, and
    (batched fits) the inverse Fisher matrix at the estimate and whether it started from the
    given starting point."""

    theta: np.ndarray
    converged: bool
    nll: float
    iterations: int
    evaluations: int
    seconds: float
    message: str
    covariance: np.ndarray | None = None
    from_init: bool = False


class Fit:
    """What every likelihood fit of galparam gives, scikit-learn's way: ``fit(...)`` returns the
    fitter, whose attributes ending in ``_`` hold the results, one row per image.

    Attributes
    ----------
    theta_ : ndarray of shape (N, K)
        The estimates: flux, sersic_n, hlr, g1, g2 (and a stamp fit's dx, dy, sky).
    covariance_ : ndarray of shape (N, K, K)
        The inverse Fisher matrix at each estimate (NaN where the image does not constrain θ).
    converged_ : ndarray of shape (N,), bool
        Whether L-BFGS-B met its convergence criterion.
    nll_ : ndarray of shape (N,)
        The negative log-likelihood at the estimate.
    n_iter_, n_evaluations_ : ndarray of shape (N,), int
        L-BFGS-B's iterations and likelihood evaluations.
    from_init_ : ndarray of shape (N,), bool
        Whether the fit started from the given starting point (rather than the moments').
    seconds_ : float
        Time a fit took, on average over the call.
    results_ : list of FitResult
        The same, image by image.
    """

    def _keep(self, results: list[FitResult]) -> None:
        self.results_ = list(results)
        K = len(results[0].theta) if results else 5
        self.theta_ = np.array([r.theta for r in results]).reshape(len(results), K)
        self.covariance_ = np.array([r.covariance for r in results]).reshape(len(results), K, K)
        self.converged_ = np.array([r.converged for r in results], dtype=bool)
        self.nll_ = np.array([r.nll for r in results], dtype=np.float64)
        self.n_iter_ = np.array([r.iterations for r in results], dtype=np.int64)
        self.n_evaluations_ = np.array([r.evaluations for r in results], dtype=np.int64)
        self.from_init_ = np.array([r.from_init for r in results], dtype=bool)
        self.seconds_ = float(np.mean([r.seconds for r in results])) if results else 0.0
        failed = int((~self.converged_).sum())
        if failed:
            warnings.warn(f"{failed} of {len(results)} fits did not converge", ConvergenceWarning, stacklevel=3)

    @property
    def std_(self) -> np.ndarray:
        """(N, K): each estimate's inverse-Fisher standard deviation."""
        return np.sqrt(np.clip(np.diagonal(self.covariance_, axis1=1, axis2=2), 0.0, None))


def check_images(images, psf_fwhm, sigma, init, shape) -> tuple:
    """``images`` (N, S, S) float64, ``psf_fwhm`` and ``sigma`` (N,), ``init`` (N, 5) or None, checked.

    Raises
    ------
    GalparamError
        Images of another shape, NaN values, a PSF FWHM or σ outside its range, bad starting points.
    """
    images = np.asarray(images, dtype=np.float64)
    if images.ndim == 2:
        images = images[None]
    if images.ndim != 3 or images.shape[1:] != tuple(shape):
        raise GalparamError(f"images of shape {images.shape}: expected (N, {shape[0]}, {shape[1]})")
    B = len(images)
    if not np.isfinite(images).all():
        bad = int(np.flatnonzero(~np.isfinite(images).reshape(B, -1).all(axis=1))[0])
        raise GalparamError(f"image {bad} holds NaN or infinite values")
    psf_fwhm = np.broadcast_to(np.asarray(psf_fwhm, dtype=np.float64), (B,)).copy()
    sigma = np.broadcast_to(np.asarray(sigma, dtype=np.float64), (B,)).copy()
    for name, values in (("psf_fwhm", psf_fwhm), ("sigma", sigma)):
        for value in np.unique(values):
            PARAMETERS[name].check(value)
    if init is not None:
        init = np.asarray(init, dtype=np.float64)
        if init.ndim == 1:
            init = init[None]
        if init.shape != (B, 5) or not np.isfinite(init).all():
            raise GalparamError(f"starting points of shape {init.shape}: expected ({B}, 5) finite values")
    return images, psf_fwhm, sigma, init


class BatchedFit(Fit):
    """Fits (flux, sersic_n, hlr, g1, g2) to many images by maximum likelihood, side by side.

    Parameters
    ----------
    box : FitBox, optional
        Where to search (default the training prior; for a dataset :meth:`FitBox.from_spec`).
    poisson : bool
        Whether the images have Poisson noise on the galaxy light.
    renderer : galparam.render.KSpaceRenderer, optional
        The forward model (its geometry must be the images'; default the reference geometry's).
    max_iter : int
        L-BFGS-B iterations at most, per image.
    scoring_steps : int
        Fisher-scoring steps tried from the start before L-BFGS-B, each kept only where it lowers
        the NLL (near the maximum they land within a few hundredths of the bound of it, which
        L-BFGS-B, starting from an identity Hessian, takes ~10 iterations to reach).
    ftol, gtol : float
        L-BFGS-B's stopping rule (:data:`FTOL`, :data:`GTOL`), on the NLL less its value at the
        start and on the gradient in bound units.

    Notes
    -----
    L-BFGS-B draws each image on one grid (:func:`galparam.kspace.choose_grid`'s FFT size and
    k-box, chosen at its start), so the model it maximizes is smooth in the parameters: on the
    galaxy's own grid, which changes with them, it would jump where the grid does (e.g. at
    n = 3.25). Where the estimate needs a larger grid than the start did, the fit starts again
    from it on the grid that encloses both (:func:`galparam.kspace.enclosing_grid`): the estimate
    is a maximum of a model as accurate as the galaxy's own.
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
    ):
        self.box = box or FitBox.training_prior()
        self.poisson = bool(poisson)
        self.renderer = renderer or renderer_for(KSpaceRenderer.NAME)
        self.max_iter = int(max_iter)
        self.scoring_steps = int(scoring_steps)
        self.ftol = float(ftol)
        self.gtol = float(gtol)

    # -- the batched model ------------------------------------------------------------------------
    def model_and_jacobian(self, theta, psf_fwhm):
        """Model images (B, S, S) and their derivatives (B, 5, S, S) by (flux, n, hlr, g1, g2), float64."""
        theta = np.asarray(theta, dtype=np.float64)
        return self.renderer.images_and_jacobians(*theta.T, psf_fwhm)

    def _variables_jacobian(self, x, jac_theta):
        """Derivatives by the fit variables (flux, n, hlr, u1, u2) from those by θ."""
        out = jac_theta.copy()
        for b in range(len(x)):
            _, dg_du = self.box.shear(x[b, 3], x[b, 4])
            out[b, 3:] = np.tensordot(dg_du.T, jac_theta[b, 3:], axes=1)
        return out

    def _variables_gradient(self, x, grad_theta):
        """A gradient by the fit variables (flux, n, hlr, u1, u2) from that by θ."""
        out = grad_theta.copy()
        for b in range(len(x)):
            _, dg_du = self.box.shear(x[b, 3], x[b, 4])
            out[b, 3:] = grad_theta[b, 3:] @ dg_du
        return out

    def bounds(self, theta, psf_fwhm, sigma) -> np.ndarray:
        """(B, 5, 5) inverse Fisher matrices at ``theta`` (NaN where the image does not constrain θ)."""
        mu, jac = self.model_and_jacobian(theta, psf_fwhm)
        return covariances(fisher_matrices(mu, jac, sigma, poisson=self.poisson))

    # -- fitting --------------------------------------------------------------------------------
    def fit(self, images, psf_fwhm, sigma, init=None, *, psf_images=None, concurrency: int = 32) -> BatchedFit:
        """Fit each image; start from :func:`~galparam.evaluate.start.initial_guess` (adaptive
        moments) or from ``init``.

        Parameters
        ----------
        images : ndarray of shape (B, S, S)
            The observed images, counts.
        psf_fwhm, sigma : array_like of shape (B,) or scalars
            Each image's PSF FWHM (arcsec) and Gaussian noise (counts).
        init : ndarray of shape (B, 5), optional
            Starting points, e.g. a network's estimates (a start outside the box is moved onto
            its edge). Each is used where its likelihood is higher than at the moments' start.
        psf_images : ndarray of shape (B, S, S), optional
            The PSF images the moment-based start needs (default: drawn).
        concurrency : int
            Fits under way at once: each round evaluates up to this many images together, and a
            fit that finishes hands its place to the next image.

        Returns
        -------
        BatchedFit
            This fitter, its results in the attributes of :class:`Fit` (``theta_``,
            ``covariance_``: the inverse Fisher matrix at each estimate, ...).

        Raises
        ------
        GalparamError
            Images of another shape, NaN values, a PSF FWHM or σ outside its range, bad starting points.

        Warns
        -----
        ConvergenceWarning
            Once, with the count, if some fits stopped without converging.
        """
        t0 = time.perf_counter()
        images, psf_fwhm, sigma, init = check_images(images, psf_fwhm, sigma, init, self.renderer.geometry.shape)
        B = len(images)
        x0, unit, from_init = self._start(images, psf_fwhm, sigma, init, psf_images)
        lo, hi = self.box.low, self.box.high
        # each image's grid, held while L-BFGS-B runs: the one its start needs
        grid_N, grid_h = self.renderer.grid(*self._thetas(x0).T, psf_fwhm)
        offset = np.full(B, np.nan)  # each fit's NLL at its start: L-BFGS-B minimizes the NLL less it

        def evaluate(keys, z):
            rows = np.array(keys)
            x = x0[rows] + z * unit[rows]
            model, vjp = self.renderer.images_and_vjp(
                *self._thetas(x).T, psf_fwhm[rows], grid=(grid_N[rows], grid_h[rows])
            )
            nll, weights = nll_and_weights(images[rows], model, sigma[rows], poisson=self.poisson)
            grad = self._variables_gradient(x, vjp(weights))
            offset[rows] = np.where(np.isnan(offset[rows]), nll, offset[rows])
            return [(float(v - offset[r]), g * unit[r]) for v, g, r in zip(nll, grad, rows, strict=True)]

        wave = min(B, int(concurrency))
        rounds = Rounds(evaluate, wave, B - wave)

        def solve(b):
            try:
                z, iterations, evaluations = np.zeros(5), 0, 0
                for _ in range(REGRIDS + 1):
                    s = minimize(
                        lambda z: rounds.ask(b, z),
                        z,
                        jac=True,
                        method="L-BFGS-B",
                        bounds=list(zip((lo - x0[b]) / unit[b], (hi - x0[b]) / unit[b], strict=True)),
                        options={"maxiter": self.max_iter - iterations, "ftol": self.ftol, "gtol": self.gtol},
                    )
                    z, iterations, evaluations = s.x, iterations + s.nit, evaluations + s.nfev
                    # the estimate's own grid: a fit that moved to a larger galaxy starts again on one
                    # that encloses both (the model is as accurate as on the galaxy's own grid)
                    theta = self._thetas(np.clip(x0[b] + z * unit[b], lo, hi)[None])
                    N, h = self.renderer.enclosing_grid((grid_N[b : b + 1], grid_h[b : b + 1]), *theta.T, psf_fwhm[b])
                    if (N[0], h[0]) == (grid_N[b], grid_h[b]) or iterations >= self.max_iter:
                        break
                    grid_N[b], grid_h[b] = N[0], h[0]
                s.nit, s.nfev, s.fun = iterations, evaluations, s.fun + offset[b]
                return s
            finally:
                rounds.finished()

        with ThreadPoolExecutor(max_workers=wave) as pool:
            solutions = list(pool.map(solve, range(B)))
        x = np.array(
            [
                x0[b] + np.clip(s.x, (lo - x0[b]) / unit[b], (hi - x0[b]) / unit[b]) * unit[b]
                for b, s in enumerate(solutions)
            ]
        )
        x = np.clip(x, lo, hi)
        theta = self._thetas(x)
        covariance = self.bounds(theta, psf_fwhm, sigma)
        seconds = (time.perf_counter() - t0) / B
        self._keep(
            [
                FitResult(
                    theta[b],
                    bool(s.success),
                    float(s.fun),
                    int(s.nit),
                    int(s.nfev),
                    seconds,
                    str(s.message),
                    c,
                    from_init[b],
                )
                for b, (s, c) in enumerate(zip(solutions, covariance, strict=True))
            ]
        )
        return self

    def _start(self, images, psf_fwhm, sigma, init, psf_images):
        """Where each fit starts and its unit step: the moments' start (or ``init`` where likelier),
        moved by Fisher-scoring steps while they lower the NLL; each variable's bound there.

        Returns
        -------
        x0 : ndarray (B, 5), the fit variables; unit : ndarray (B, 5); from_init : bool ndarray (B,)
        """
        B = len(images)
        if psf_images is None:
            psf_images = self.renderer.psf_images(psf_fwhm)
        scale = self.renderer.geometry.pixel_scale
        moments = initial_guesses(images, psf_images, pixel_scale=scale, box=self.box, moments=self._moments(images))

        lo, hi = self.box.low, self.box.high
        x0 = np.array([self.box.to_variables(t) for t in moments])
        from_init = np.zeros(B, dtype=bool)
        if init is not None:
            # a given start (a network's estimate) is taken where it is likelier than the moments'
            # one: a poor estimate cannot make the fit slower than a plain one
            given = np.array([self.box.to_variables(t) for t in init])
            from_init = self._nll(images, given, psf_fwhm, sigma) <= self._nll(images, x0, psf_fwhm, sigma)
            x0[from_init] = given[from_init]
        # Fisher-scoring steps from the start while they lower the NLL, then each variable in
        # units of its bound there (the box's width where unconstrained)
        moving = np.ones(B, dtype=bool)
        cov = np.empty((B, 5, 5))
        current = np.zeros(B, dtype=bool)  # cov is the inverse Fisher matrix at x0
        for _ in range(self.scoring_steps):
            rows = np.flatnonzero(moving)
            if not len(rows):
                break
            nll0, grad, fisher = self._assess(images[rows], x0[rows], psf_fwhm[rows], sigma[rows])
            cov[rows] = covariances(fisher)
            x0[rows], moving[rows] = self._scoring_step(
                images[rows], sigma[rows], psf_fwhm[rows], x0[rows], nll0, grad, cov[rows]
            )
            current[rows] = ~moving[rows]  # a rejected step leaves x0 where its matrix was taken
        stale = np.flatnonzero(~current)
        if len(stale):
            cov[stale] = covariances(self._assess(images[stale], x0[stale], psf_fwhm[stale], sigma[stale])[2])
        with np.errstate(invalid="ignore"):  # a start the image hardly constrains: the box's width
            unit = np.sqrt(np.diagonal(cov, axis1=1, axis2=2))
        unit = np.where(np.isfinite(unit) & (unit > 0), np.minimum(unit, hi - lo), hi - lo)
        return x0, unit, from_init

    def _moments(self, images) -> list | None:
        """The images' adaptive moments for the start, or None to measure them image by image
        (:func:`~galparam.evaluate.start.adaptive_moments`)."""
        return None

    def _assess(self, images, x, psf_fwhm, sigma):
        """At fit variables x (B, 5), each image on its own grid: the NLL (B,), its gradient by the
        variables (B, 5) and their Fisher matrices (B, 5, 5)."""
        mu, jac = self.model_and_jacobian(self._thetas(x), psf_fwhm)
        jac_x = self._variables_jacobian(x, jac)
        nll, weights = nll_and_weights(images, mu, sigma, poisson=self.poisson)
        grad = np.einsum("bkij,bij->bk", jac_x, weights)
        return nll, grad, fisher_matrices(mu, jac_x, sigma, poisson=self.poisson)

    def _nll(self, images, x, psf_fwhm, sigma) -> np.ndarray:
        """The NLL (B,) at fit variables x (B, 5), each image on its own grid."""
        return nll_and_weights(images, self._model(x, psf_fwhm), sigma, poisson=self.poisson)[0]

    def _scoring_step(self, images, sigma, psf_fwhm, x0, nll0, grad, cov) -> np.ndarray:
        """The start moved by one Fisher-scoring step, −F⁻¹∇NLL (clipped into the box), where that
        lowers the NLL; and where it did."""
        step = -np.einsum("bij,bj->bi", np.nan_to_num(cov), grad)
        x1 = np.clip(x0 + step, self.box.low, self.box.high)
        nll1 = self._nll(images, x1, psf_fwhm, sigma)
        better = np.isfinite(nll1) & (nll1 < nll0)
        retry = np.flatnonzero(~better)
        if len(retry):  # a full step that overshoots (far from the maximum): half of it
            half = np.clip(x0[retry] + step[retry] / 2, self.box.low, self.box.high)
            nll_half = self._nll(images[retry], half, psf_fwhm[retry], sigma[retry])
            kept = np.isfinite(nll_half) & (nll_half < nll0[retry])
            x1[retry] = np.where(kept[:, None], half, x0[retry])
            better[retry] = kept
        return np.where(better[:, None], x1, x0), better

    def _model(self, x, psf_fwhm) -> np.ndarray:
        return self.renderer.images(*self._thetas(x).T, psf_fwhm, dtype=np.float64)

    def _thetas(self, x) -> np.ndarray:
        return np.array([self.box.to_theta(row) for row in x])
