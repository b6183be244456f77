"""How far to trust each estimate: coverage of predicted intervals, their calibration, shear
calibration biases and efficiency against each image's own bound.

- :func:`coverage` and :func:`coverage_table`: the fraction of true values inside the predicted
  central intervals (68 % and 95 % by default: |y − μ| ≤ z σ with z the normal quantile), by
  parameter and SNR bin; :func:`reliability` over a range of levels (the reliability diagram).
- :func:`calibration_factors`: one scale per parameter that brings the 68 % and 95 % intervals
  closest to their nominal coverage on a calibration split (post-hoc, as temperature scaling does
  for classifiers), or makes the standardized residuals' RMS one; :func:`interval_factors`: one
  per parameter and level, for intervals that cover their level where the residuals are not Gaussian.
- :func:`shear_calibration`: m and c of g_est = (1 + m) g_true + c with their standard errors.
- :func:`efficiency_map`: bias, spread and RMSE in units of each image's own Cramér–Rao bound, by
  bins of a variable (index, radius, flux, SNR, PSF FWHM).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from galparam.parameters import LABEL_NAMES

LEVELS = (0.68, 0.95)
RELIABILITY_LEVELS = tuple(round(0.05 * k, 2) for k in range(1, 20))
SNR_EDGES = (0, 20, 40, 60, 100, np.inf)
LSST_REQUIREMENT = {"m": 1e-3, "c": 1e-4}
"""The coming surveys' shear requirement (LSST): |m| < 1e-3, |c| < 1e-4."""


def _arrays(y_true, mean, std):
    y, m, s = (np.asarray(a, dtype=np.float64) for a in (y_true, mean, std))
    if not (y.shape == m.shape == s.shape) or y.ndim != 2:
        raise ValueError(f"y_true {y.shape}, mean {m.shape} and std {s.shape} must be one (N, K) shape")
    return y, m, s


def z_scores(y_true, mean, std) -> np.ndarray:
    """Standardized residuals (y − μ) / σ."""
    y, m, s = _arrays(y_true, mean, std)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (y - m) / s


def coverage(y_true, mean, std, levels=LEVELS, interval_scale=None) -> pd.DataFrame:
    """Rows: parameters; columns ``coverage_68`` ...: the fraction with |y − μ| ≤ z(level) σ.

    ``interval_scale`` (a level → (K,) factor mapping, :func:`interval_factors` over the spreads'
    own calibration) widens or narrows each level's interval beyond z(level) σ where it is given."""
    z = np.abs(z_scores(y_true, mean, std))
    scale = {} if interval_scale is None else {round(float(k), 6): np.asarray(v) for k, v in interval_scale.items()}
    columns = {
        f"coverage_{round(100 * lv)}": (z <= stats.norm.ppf(0.5 + lv / 2) * scale.get(round(lv, 6), 1.0)).mean(axis=0)
        for lv in levels
    }
    names = list(LABEL_NAMES) if z.shape[1] == len(LABEL_NAMES) else list(range(z.shape[1]))
    return pd.DataFrame(columns, index=pd.Index(names, name="parameter"))


def coverage_table(
    y_true, mean, std, snr, edges=SNR_EDGES, levels=LEVELS, bound=None, interval_scale=None
) -> pd.DataFrame:
    """:func:`coverage` by SNR bin (rows: bin × parameter, the last bin ``all``), with the image
    counts and, given each image's Cramér–Rao ``bound`` (N, 5), the median of σ / bound: below one
    a network claims more precision than any unbiased estimator has. ``interval_scale``: as
    :func:`coverage`."""
    snr = np.asarray(snr, dtype=np.float64)
    bins = pd.cut(snr, np.asarray(edges, dtype=np.float64), right=False)
    y, m, s = _arrays(y_true, mean, std)
    tables = []
    groups = [(str(b), np.asarray(bins == b)) for b in bins.categories] + [("all", np.ones(len(snr), bool))]
    for label, mask in groups:
        if not mask.any():
            continue
        table = coverage(y[mask], m[mask], s[mask], levels, interval_scale).reset_index()
        table.insert(0, "images", int(mask.sum()))
        if bound is not None:
            table["median std/crb"] = np.nanmedian(s[mask] / np.asarray(bound, dtype=np.float64)[mask], axis=0)
        table.insert(0, "snr_bin", label)
        tables.append(table)
    return pd.concat(tables, ignore_index=True)


def reliability(y_true, mean, std, levels=RELIABILITY_LEVELS) -> pd.DataFrame:
    """The reliability diagram's points: per nominal level, each parameter's observed coverage."""
    z = np.abs(z_scores(y_true, mean, std))
    names = list(LABEL_NAMES) if z.shape[1] == len(LABEL_NAMES) else list(range(z.shape[1]))
    rows = [
        {"level": float(lv), **dict(zip(names, (z <= stats.norm.ppf(0.5 + lv / 2)).mean(axis=0), strict=True))}
        for lv in levels
    ]
    return pd.DataFrame(rows)


CALIBRATION_METHODS = ("coverage", "rms")


def calibration_factors(y_true, mean, std, method: str = "coverage", levels=LEVELS) -> np.ndarray:
    """Per parameter, the factor on σ that calibrates the predicted spreads on these images.

    Parameters
    ----------
    y_true, mean, std : array_like, shape (N, K)
        Truths, predicted means and predicted (uncalibrated) standard deviations.
    method : {"coverage", "rms"}
        ``coverage`` (the default): the factor whose central intervals at ``levels`` come closest
        to their nominal coverage, in the sense of the largest deviation in units of each level's
        binomial spread sqrt(p (1 − p)). Standardized residuals that are not Gaussian (a
        flat-topped index error where estimates lean on the prior's box, heavy tails) cannot
        match every level with one factor; this one balances them. ``rms``: the factor that makes
        the RMS of (y − μ) / σ one, exact only for Gaussian residuals (a flat-topped distribution
        then covers too little at 68 %).
    levels : sequence of float
        The nominal levels ``coverage`` matches (default 68 % and 95 %).

    Returns
    -------
    numpy.ndarray, shape (K,)
        The factors; σ × factor is the calibrated spread.
    """
    z = np.abs(z_scores(y_true, mean, std))
    finite = np.isfinite(z)
    if method == "rms":
        return np.sqrt(np.where(finite, z**2, 0.0).sum(axis=0) / finite.sum(axis=0))
    if method != "coverage":
        raise ValueError(f"calibration method {method!r}: one of {', '.join(CALIBRATION_METHODS)} is accepted")
    levels = np.asarray(levels, dtype=np.float64)
    quantiles = stats.norm.ppf(0.5 + levels / 2)
    weights = 1 / np.sqrt(levels * (1 - levels))
    factors = np.empty(z.shape[1])
    for k in range(z.shape[1]):
        sorted_z = np.sort(z[finite[:, k], k])
        # each level's exact factor is its empirical quantile over the normal one; the balance lies between
        exact = np.quantile(sorted_z, levels) / quantiles
        candidates = np.geomspace(exact.min(), exact.max(), 2001) if exact.max() > exact.min() else exact[:1]
        covered = np.searchsorted(sorted_z, candidates[:, None] * quantiles, side="right") / sorted_z.size
        worst = (np.abs(covered - levels) * weights).max(axis=1)
        factors[k] = candidates[np.argmin(worst)]
    return factors


def interval_factors(y_true, mean, std, levels=LEVELS) -> dict[float, np.ndarray]:
    """Per level and parameter, the factor on σ whose central interval covers exactly that level
    of these images: the level's quantile of |y − μ| / σ over the normal one.

    One factor per parameter (:func:`calibration_factors`) cannot match every level where the
    standardized residuals are not Gaussian; the index's are flat-topped where the image leaves it
    to the prior's box (a uniform's 68 % interval is 1.17 of its σ, a normal's 0.99), so its
    calibrated σ covers too little at 68 % and too much at 95 %. These factors, one per level,
    give each interval its own width (``<label>_ci68`` and ``<label>_ci95`` of a prediction).

    Returns
    -------
    dict
        level → ndarray of shape (K,).
    """
    z = np.abs(z_scores(y_true, mean, std))
    return {
        float(lv): np.array([np.quantile(col[np.isfinite(col)], lv) for col in z.T]) / stats.norm.ppf(0.5 + lv / 2)
        for lv in levels
    }


def fit_calibration(y_true, mean, std) -> tuple[np.ndarray, dict[float, np.ndarray]]:
    """A model's calibration on images of known truth: :func:`calibration_factors` (one factor per
    label on the spreads) and :func:`interval_factors` (one per level), both on the uncalibrated
    spreads ``std`` (N, K); what a run's ``calibration.json`` and a calibrated ensemble hold."""
    return calibration_factors(y_true, mean, std, method="coverage"), interval_factors(y_true, mean, std)


def shear_calibration(g_true, g_est) -> dict:
    """Multiplicative and additive bias of a shear estimate by least squares: g_est = (1 + m) g_true + c.

    Returns
    -------
    dict
        ``m``, ``c``, their standard errors ``m_err``, ``c_err`` (from the residual scatter) and ``images``.
    """
    x, y = np.asarray(g_true, dtype=np.float64), np.asarray(g_est, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or len(x) < 3:
        raise ValueError(f"g_true {x.shape} and g_est {y.shape} must be one 1-d shape of at least 3 values")
    design = np.stack([x, np.ones_like(x)], axis=1)
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    residual = y - design @ coef
    dof = len(x) - 2
    cov = np.linalg.inv(design.T @ design) * (residual @ residual) / dof
    return {
        "m": float(coef[0] - 1.0),
        "m_err": float(np.sqrt(cov[0, 0])),
        "c": float(coef[1]),
        "c_err": float(np.sqrt(cov[1, 1])),
        "images": len(x),
    }


def shear_table(g_true, g_est, snr=None, edges=SNR_EDGES) -> pd.DataFrame:
    """m, c and their errors for g1 and g2 (columns 3 and 4 of (N, 5) labels), overall and by SNR bin,
    with how many times the LSST requirement each is (``|m| / 1e-3``, ``|c| / 1e-4``)."""
    g_true, g_est = np.asarray(g_true, dtype=np.float64), np.asarray(g_est, dtype=np.float64)
    groups = [("all", np.ones(len(g_true), bool))]
    if snr is not None:
        bins = pd.cut(np.asarray(snr, dtype=np.float64), np.asarray(edges, dtype=np.float64), right=False)
        groups = [(str(b), np.asarray(bins == b)) for b in bins.categories] + groups
    rows = []
    for label, mask in groups:
        if mask.sum() < 3:
            continue
        for k, name in ((3, "g1"), (4, "g2")):
            fit = shear_calibration(g_true[mask, k], g_est[mask, k])
            rows.append(
                {
                    "snr_bin": label,
                    "component": name,
                    **fit,
                    "|m| / requirement": abs(fit["m"]) / LSST_REQUIREMENT["m"],
                    "|c| / requirement": abs(fit["c"]) / LSST_REQUIREMENT["c"],
                }
            )
    return pd.DataFrame(rows)


def efficiency_map(
    truth, estimate, bound, values, edges, *, name: str = "bin", spread=None, bayes=None
) -> pd.DataFrame:
    """Bias, spread and RMSE of an estimator in units of each image's own bound, by bins of ``values``.

    Parameters
    ----------
    truth, estimate, bound : array_like of shape (N, 5)
        True labels, estimates, and each image's Cramér–Rao standard deviations.
    values : array_like of shape (N,)
        What to bin by (a label, the SNR, the PSF FWHM).
    edges : sequence of float
        Bin edges (left-closed).
    name : str
        The binned variable's name (the first column's header).
    spread : array_like of shape (N, 5), optional
        The estimator's own predicted standard deviations (an uncertainty head's, a fit's
        inverse-Fisher errors): adds ``claimed std/crb``, their median over the bound. Below one
        where ``mean err/crb`` is near zero, the estimator claims more than any unbiased one can.
    bayes : pair of arrays ((M,), (M, 5)), optional
        Posteriors of M images drawn from the prior: what they are binned by (as ``values``) and
        their posterior variances. Adds ``rms err/√MMSE``: the estimator's RMSE in the bin over the
        root of the mean posterior variance of the posteriors' images in the same bin (the Bayes
        risk there: 1 is the best any estimator can do given the prior).

    Returns
    -------
    DataFrame
        Rows bin × parameter: ``images``, and of each image's error over its own bound,
        err/crb = (estimate − truth) / bound: ``mean err/crb``, ``std err/crb`` and ``rms err/crb``
        (named so because they are not the bias, spread and RMSE of :func:`~galparam.evaluate.metrics.estimator_metrics`
        over one bound: on images of different bounds the two differ), and with ``spread``
        ``claimed std/crb``.
    """
    t, e, b = (np.asarray(a, dtype=np.float64) for a in (truth, estimate, bound))
    if not (t.shape == e.shape == b.shape) or t.ndim != 2:
        raise ValueError(f"truth {t.shape}, estimate {e.shape} and bound {b.shape} must be one (N, 5) shape")
    u = (e - t) / b
    claimed = None if spread is None else np.asarray(spread, dtype=np.float64) / b
    if claimed is not None and claimed.shape != b.shape:
        raise ValueError(f"spread {claimed.shape} must have the bound's shape {b.shape}")
    bins = pd.cut(np.asarray(values, dtype=np.float64), np.asarray(edges, dtype=np.float64), right=False)
    if bayes is not None:
        bayes_values, bayes_var = (np.asarray(a, dtype=np.float64) for a in bayes)
        bayes_bins = pd.cut(bayes_values, np.asarray(edges, dtype=np.float64), right=False)
    rows = []
    for category in bins.categories:
        mask = np.asarray(bins == category)
        if not mask.any():
            continue
        for k, label in enumerate(LABEL_NAMES):
            x = u[mask, k]
            rows.append(
                {
                    name: str(category),
                    "parameter": label,
                    "images": int(mask.sum()),
                    "mean err/crb": float(x.mean()),
                    "std err/crb": float(x.std(ddof=1)) if len(x) > 1 else np.nan,
                    "rms err/crb": float(np.sqrt((x**2).mean())),
                }
            )
            if claimed is not None:
                rows[-1]["claimed std/crb"] = float(np.median(claimed[mask, k]))
            if bayes is not None:
                in_bin = np.asarray(bayes_bins == category)
                mmse = bayes_var[in_bin, k].mean() if in_bin.any() else np.nan
                rmse = np.sqrt(np.mean((e[mask, k] - t[mask, k]) ** 2))
                rows[-1]["rms err/√MMSE"] = float(rmse / np.sqrt(mmse))
    return pd.DataFrame(rows)
