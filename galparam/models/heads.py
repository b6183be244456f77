"""Output heads that give each estimate an uncertainty, and their Gaussian negative log-likelihoods.

``uncertainty`` (the key of an Xception or autoencoder experiment) chooses the head of the ``labels``
output (the autoencoder's encoder: its means through a sigmoid, as without a head):

- ``none``: five values, the labels (trained with the spec's loss, mse by default);
- ``diagonal``: the five labels, then five log-variances (a heteroscedastic head, Kendall & Gal
  2017), trained with the Gaussian negative log-likelihood;
- ``full``: the five labels, then the 15 entries of the lower-triangular Cholesky factor P of the
  precision matrix Σ⁻¹ = P Pᵀ (its diagonal as logarithms), so the NLL needs no matrix inverse:
  ½‖Pᵀ(y − μ)‖² − Σᵢ log Pᵢᵢ. Flux, index and radius are strongly correlated at these SNRs.

Everything is in the label scaler's units; :func:`decode` turns the outputs into means and
covariance matrices (numpy), which :class:`galparam.estimator.Estimator` maps to physical units.
"""

from __future__ import annotations

import numpy as np

from galparam.parameters import LABEL_NAMES

UNCERTAINTY_KINDS = ("none", "diagonal", "full")
"""The heads an experiment's ``uncertainty`` key may name."""

N_LABELS = len(LABEL_NAMES)
LOG_SCALE_LIMIT = 8.0  # |log σ| at most this in scaled units: keeps the NLL finite early in training
_ROWS, _COLS = np.tril_indices(N_LABELS, -1)  # the 10 off-diagonal entries of P, row-major


def head_units(kind: str, n_labels: int = N_LABELS) -> int:
    """Outputs of the ``labels`` layer for an uncertainty kind (:data:`UNCERTAINTY_KINDS`)."""
    return {"none": n_labels, "diagonal": 2 * n_labels, "full": n_labels + n_labels * (n_labels + 1) // 2}[kind]


def _off_diagonal_basis() -> np.ndarray:
    basis = np.zeros((len(_ROWS), N_LABELS, N_LABELS), np.float32)
    basis[np.arange(len(_ROWS)), _ROWS, _COLS] = 1.0
    return basis


def gaussian_nll_diagonal(y_true, y_pred):
    """Gaussian NLL (less ½ log 2π) of the labels under the head's means and log-variances."""
    import keras

    mean, log_var = y_pred[:, :N_LABELS], y_pred[:, N_LABELS : 2 * N_LABELS]
    log_var = keras.ops.clip(log_var, -2 * LOG_SCALE_LIMIT, 2 * LOG_SCALE_LIMIT)
    residual = keras.ops.cast(y_true, mean.dtype) - mean
    return keras.ops.mean(0.5 * (log_var + residual**2 * keras.ops.exp(-log_var)), axis=-1)


def gaussian_nll_full(y_true, y_pred):
    """Gaussian NLL (less ½ log 2π, divided by the 5 labels) under a mean and a precision Cholesky factor."""
    import keras

    mean = y_pred[:, :N_LABELS]
    log_diag = keras.ops.clip(y_pred[:, N_LABELS : 2 * N_LABELS], -LOG_SCALE_LIMIT, LOG_SCALE_LIMIT)
    off = y_pred[:, 2 * N_LABELS :]
    factor = keras.ops.einsum("bk,kij->bij", off, keras.ops.convert_to_tensor(_off_diagonal_basis(), dtype=off.dtype))
    factor = factor + keras.ops.einsum("bi,ij->bij", keras.ops.exp(log_diag), keras.ops.eye(N_LABELS, dtype=off.dtype))
    residual = keras.ops.cast(y_true, mean.dtype) - mean
    whitened = keras.ops.einsum("bij,bi->bj", factor, residual)  # Pᵀ r
    return (0.5 * keras.ops.sum(whitened**2, axis=-1) - keras.ops.sum(log_diag, axis=-1)) / N_LABELS


def loss_for(kind: str):
    """The loss an uncertainty head trains with (None: the spec's own loss)."""
    return {"none": None, "diagonal": gaussian_nll_diagonal, "full": gaussian_nll_full}[kind]


def decode(outputs, kind: str) -> tuple[np.ndarray, np.ndarray | None]:
    """The head's outputs as means (N, 5) and covariance matrices (N, 5, 5), in scaled units.

    ``kind`` ``none`` gives no covariance (None).
    """
    outputs = np.asarray(outputs, dtype=np.float64)
    mean = outputs[:, :N_LABELS]
    if kind == "none":
        return mean, None
    if kind == "diagonal":
        log_var = np.clip(outputs[:, N_LABELS : 2 * N_LABELS], -2 * LOG_SCALE_LIMIT, 2 * LOG_SCALE_LIMIT)
        cov = np.zeros((len(mean), N_LABELS, N_LABELS))
        cov[:, np.arange(N_LABELS), np.arange(N_LABELS)] = np.exp(log_var)
        return mean, cov
    factor = np.zeros((len(mean), N_LABELS, N_LABELS))
    idx = np.arange(N_LABELS)
    factor[:, idx, idx] = np.exp(np.clip(outputs[:, N_LABELS : 2 * N_LABELS], -LOG_SCALE_LIMIT, LOG_SCALE_LIMIT))
    factor[:, _ROWS, _COLS] = outputs[:, 2 * N_LABELS :]
    precision = factor @ np.swapaxes(factor, 1, 2)
    return mean, np.linalg.inv(precision)
