"""Screening: candidates surely outside the SNR window need not be drawn."""

from __future__ import annotations

import numpy as np

from galparam.render import KSpaceRenderer
from galparam.schema import Draws
from galparam.specs import DatasetSpec

SCREEN_MIN_IMAGES = 10_000
"""Datasets (or shards) at least this large screen their candidates (building the screen costs seconds)."""


class SNRScreen:
    """Which candidates are surely outside the SNR window, so that they need not be drawn.

    A candidate's SNR is ``flux · u / σ`` with ``u`` the norm of its unit-flux image, a function
    of (n, hlr, |g|, PSF FWHM) that decreases with the radius, the shear and the PSF width. ``u``
    is tabulated on nodes spanning the spec's prior; a candidate's ``u`` lies between the table's
    value at the cell corner of smaller radius, shear and PSF (an upper bound) and at the opposite
    corner (a lower bound), taking the extreme of the two bracketing indices, with a 5 % margin
    for what the nodes do not see. Candidates whose bounds put the SNR outside the window are
    rejected without being drawn; every other candidate keeps the exact check, so a dataset's
    bytes do not depend on the screen (a test compares the bounds with exact norms).
    """

    MARGIN = 1.05
    SHEAR_NODES = (0.0, 0.25, 0.45, 0.6, 0.7, 0.8, 0.9, 0.95)

    def __init__(self, spec: DatasetSpec, renderer: KSpaceRenderer):
        p = spec.priors
        n_lo, n_hi = p["sersic_n"].low, p["sersic_n"].high
        self.n = np.unique(np.clip(np.arange(np.floor(n_lo * 4) / 4, n_hi + 0.25, 0.25), *renderer.SERSIC_RANGE))
        h_lo, h_hi = p["hlr"].low, p["hlr"].high
        steps = max(1, int(np.ceil(np.log(h_hi / h_lo) / np.log(1.15)))) if h_hi > h_lo else 0
        self.hlr = h_lo * (h_hi / h_lo) ** (np.arange(steps + 1) / max(steps, 1))
        f_lo, f_hi = p["psf_fwhm"].low, p["psf_fwhm"].high
        self.psf = np.linspace(f_lo, f_hi, 4) if f_hi > f_lo else np.array([f_lo])
        g_max = self._largest_shear(spec)
        self.g = np.array([g for g in self.SHEAR_NODES if g < g_max] + [min(g_max, 0.95)])
        grid = np.meshgrid(self.n, self.hlr, self.psf, self.g, indexing="ij")
        n, hlr, psf, g = (a.ravel() for a in grid)
        images = renderer.images(np.ones_like(n), n, hlr, g, np.zeros_like(g), psf)
        self.u = np.sqrt(np.sum(images.reshape(len(n), -1).astype(np.float64) ** 2, axis=1)).reshape(grid[0].shape)
        self.window = spec.snr_window

    @classmethod
    def applies(cls, spec: DatasetSpec) -> bool:
        """Whether the screen can bound this spec's candidates (an SNR window, |g| within its nodes,
        the Moffat's centred galaxies)."""
        return spec.snr_window is not None and not spec.stamp_model and cls._largest_shear(spec) <= cls.SHEAR_NODES[-1]

    @staticmethod
    def _largest_shear(spec: DatasetSpec) -> float:
        a, b = spec.shear_form
        pa, pb = spec.priors[a], spec.priors[b]
        if a == "shear_amplitude":
            return pa.high
        return float(np.hypot(max(abs(pa.low), abs(pa.high)), max(abs(pb.low), abs(pb.high))))

    def norm_bounds(self, draws: Draws) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper bounds of each candidate's unit-flux image norm ``u``."""
        n, hlr, g, psf = draws.sersic_n, draws.hlr, draws.shear, draws.psf_fwhm

        def bracket(nodes, x):
            hi = np.clip(np.searchsorted(nodes, x, side="left"), 0, len(nodes) - 1)
            lo = np.clip(np.searchsorted(nodes, x, side="right") - 1, 0, len(nodes) - 1)
            return lo, hi

        (n0, n1), (h0, h1), (p0, p1), (g0, g1) = (
            bracket(nodes, x) for nodes, x in ((self.n, n), (self.hlr, hlr), (self.psf, psf), (self.g, g))
        )
        upper = np.maximum(self.u[n0, h0, p0, g0], self.u[n1, h0, p0, g0]) * self.MARGIN
        lower = np.minimum(self.u[n0, h1, p1, g1], self.u[n1, h1, p1, g1]) / self.MARGIN
        return lower, upper

    def surely_outside(self, draws: Draws) -> np.ndarray:
        """True for the candidates whose SNR is surely outside the window."""
        lower, upper = self.norm_bounds(draws)
        scale = draws.flux / draws.sigma
        return (scale * upper < self.window[0]) | (scale * lower > self.window[1])
