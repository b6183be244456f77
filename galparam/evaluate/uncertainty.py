"""How far to trust each estimate: coverage of predicted intervals, their calibration, shear
calibration biases and efficiency against each image's own bound.

- :func:`coverage` and :func:`coverage_table`: the fraction of true values inside the predicted
  central intervals (68 % and 95 % by default: |y − μ| ≤ z σ with z the normal quantile), by
  parameter and SNR bin; :func:`reliability` over a range of levels (the reliability diagram).
- :func:`calibration_factors`: one scale per parameter that makes the standardized residuals'
  RMS one on a calibration split (post-hoc, as temperature scaling does for classifiers).
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


def coverage(y_true, mean, std, levels=LEVELS) -> pd.DataFrame:
    """Rows: parameters; columns ``coverage_68`` ...: the fraction with |y − μ| ≤ z(level) σ."""
    z = np.abs(z_scores(y_true, mean, std))
    columns = {f"coverage_{round(100 * lv)}": (z <= stats.norm.ppf(0.5 + lv / 2)).mean(axis=0) for lv in levels}
    names = list(LABEL_NAMES) if z.shape[1] == len(LABEL_NAMES) else list(range(z.shape[1]))
    return pd.DataFrame(columns, index=pd.Index(names, name="parameter"))


def coverage_table(y_true, mean, std, snr, edges=SNR_EDGES, levels=LEVELS, bound=None) -> pd.DataFrame:
    """:func:`coverage` by SNR bin (rows: bin × parameter, the last bin ``all``), with the image
    counts and, given each image's Cramér–Rao ``bound`` (N, 5), the median of σ / bound: below one
    a network claims more precision than any unbiased estimator has."""
    snr = np.asarray(snr, dtype=np.float64)
    bins = pd.cut(snr, np.asarray(edges, dtype=np.float64), right=False)
    y, m, s = _arrays(y_true, mean, std)
    tables = []
    groups = [(str(b), np.asarray(bins == b)) for b in bins.categories] + [("all", np.ones(len(snr), bool))]
    for label, mask in groups:
        if not mask.any():
            continue
        table = coverage(y[mask], m[mask], s[mask], levels).reset_index()
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


def calibration_factors(y_true, mean, std) -> np.ndarray:
    """Per parameter, the factor on σ that makes the RMS of (y − μ) / σ one on these images."""
    z = z_scores(y_true, mean, std)
    finite = np.isfinite(z)
    return np.sqrt(np.where(finite, z**2, 0.0).sum(axis=0) / finite.sum(axis=0))


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


def efficiency_map(truth, estimate, bound, values, edges, *, name: str = "bin") -> pd.DataFrame:
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

    Returns
    -------
    DataFrame
        Rows bin × parameter: ``images``, ``bias/crb`` (mean of (estimate − truth) / bound),
        ``std/crb`` (their standard deviation) and ``rmse/crb`` (their root mean square).
    """
    t, e, b = (np.asarray(a, dtype=np.float64) for a in (truth, estimate, bound))
    if not (t.shape == e.shape == b.shape) or t.ndim != 2:
        raise ValueError(f"truth {t.shape}, estimate {e.shape} and bound {b.shape} must be one (N, 5) shape")
    u = (e - t) / b
    bins = pd.cut(np.asarray(values, dtype=np.float64), np.asarray(edges, dtype=np.float64), right=False)
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
                    "bias/crb": float(x.mean()),
                    "std/crb": float(x.std(ddof=1)) if len(x) > 1 else np.nan,
                    "rmse/crb": float(np.sqrt((x**2).mean())),
                }
            )
    return pd.DataFrame(rows)
