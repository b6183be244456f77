"""Bias, spread and RMSE of an estimator per label, in physical units and relative to the bound."""

from __future__ import annotations

import numpy as np
import pandas as pd

from galparam.parameters import LABEL_NAMES


def estimator_metrics(y_true, y_pred, bound=None) -> pd.DataFrame:
    """Per-label bias, standard deviation, RMSE and explained variance of ``y_pred``.

    Parameters
    ----------
    y_true, y_pred : array_like of shape (N, 5)
        True and estimated labels, columns :data:`galparam.parameters.LABEL_NAMES`.
    bound : array_like of shape (5,) or (N, 5), optional
        Cramér–Rao bound on each label's standard deviation (one per image on mixed datasets,
        where the ratios use the root mean square of the bounds).

    Returns
    -------
    DataFrame indexed by label with columns ``bias``, ``std``, ``rmse``, ``explained_variance``
    (NaN where the truth does not vary) and, with ``bound``, ``crb``, ``bias/crb``, ``std/crb``,
    ``rmse/crb``.
    """
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    if y_true.shape != y_pred.shape or y_true.ndim != 2 or y_true.shape[1] != len(LABEL_NAMES):
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} must both be (N, {len(LABEL_NAMES)})")
    error = y_pred - y_true
    var_true = y_true.var(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        explained = np.where(var_true > 0, 1 - error.var(axis=0) / var_true, np.nan)
    table = pd.DataFrame(
        {
            "bias": error.mean(axis=0),
            "std": error.std(axis=0, ddof=1) if len(error) > 1 else np.full(5, np.nan),
            "rmse": np.sqrt((error**2).mean(axis=0)),
            "explained_variance": explained,
        },
        index=pd.Index(LABEL_NAMES, name="label"),
    )
    if bound is not None:
        bound = np.asarray(bound, dtype=np.float64)
        crb = np.sqrt((bound**2).mean(axis=0)) if bound.ndim == 2 else bound
        table["crb"] = crb
        for col in ("bias", "std", "rmse"):
            table[f"{col}/crb"] = table[col] / crb
    return table
