"""Label losses that aim at the bounds, and the targets they read (issue 26).

Each is a Keras loss over ``keras.ops`` (both backends) whose target carries more than the five
scaled labels; the model still predicts five values:

- ``bound_scaled_mse``: the squared error of each label over the image's own Cramér–Rao bound,
  ``mean_k ((ŷ_k − y_k) / σ_k)²``. Target: the labels, then the bounds (both in the label scaling,
  so the ratio is the physical one); a bound that does not exist (an image that does not constrain
  every label) is infinite and weighs nothing. Plain MSE spends its capacity where the errors are
  large (faint, large galaxies); this one asks for the same fraction of the floor everywhere.
- ``bias_penalized_mse``: consecutive images of a batch are ``K`` noise realizations of one galaxy
  (fresh images drawn with ``noise_replicas: K``, :class:`galparam.fresh.FreshImages`); with ``ē``
  the mean error of an image's group, ``mean_k (e_k² + λ ē_k²)``, λ = :data:`BIAS_WEIGHT`. Over the
  noise, ``E[ē²] = bias² + variance / K``, so the loss is on average ``(1 + λ) bias² + (1 + λ/K)
  variance`` per galaxy: bounded below for any λ, and bias costs ``(1 + λ) / (1 + λ/K)`` times what
  spread costs (3.3 at λ = 4, K = 8), which plain MSE weighs equally. Target: the labels, then
  ``K`` (1 for images that are not replicas, such as the validation set's: there the loss is
  ``(1 + λ)`` times the MSE).
"""

from __future__ import annotations

import numpy as np

from galparam.parameters import LABEL_NAMES

N_LABELS = len(LABEL_NAMES)

BIAS_WEIGHT = 4.0
"""λ of ``bias_penalized_mse``: the weight of the squared mean error of a galaxy's noise realizations."""

TARGET_KEYS = {"bound_scaled_mse": "label_bound", "bias_penalized_mse": "label_replicas"}
"""Each of these losses → the data column its target is made of: ``label_bound`` (N, 10), the
labels then each image's bound on their standard deviation (physical units, NaN where there is
none); ``label_replicas``
(N, 6), the labels then the number of noise realizations the image's galaxy has in its batch."""


def bound_scaled_mse(y_true, y_pred):
    """Mean over the labels of the squared error over each image's bound (see the module docstring)."""
    from keras import ops

    y_true = ops.cast(y_true, y_pred.dtype)
    labels, bounds = y_true[:, :N_LABELS], y_true[:, N_LABELS : 2 * N_LABELS]
    return ops.mean(ops.square((y_pred - labels) / bounds), axis=-1)


def bias_penalized_mse(y_true, y_pred):
    """Squared error plus :data:`BIAS_WEIGHT` × the squared mean error of the image's group of
    noise realizations (consecutive rows ``K`` at a time, ``K`` the target's last column)."""
    from keras import ops

    y_true = ops.cast(y_true, y_pred.dtype)
    error = y_pred - y_true[:, :N_LABELS]
    replicas = y_true[:, N_LABELS]
    row = ops.cumsum(ops.ones_like(replicas)) - 1.0
    group = ops.floor(row / replicas)
    same = ops.cast(ops.equal(group[:, None], group[None, :]), error.dtype)
    group_mean = ops.matmul(same, error) / ops.sum(same, axis=1, keepdims=True)
    return ops.mean(ops.square(error) + BIAS_WEIGHT * ops.square(group_mean), axis=-1)


LOSS_FUNCTIONS = {"bound_scaled_mse": bound_scaled_mse, "bias_penalized_mse": bias_penalized_mse}
"""galparam's label losses by the name an experiment gives."""


def target_transform(loss: str, label_scaler):
    """The transform of a ``loss``'s target column (:data:`TARGET_KEYS`) into its training target:
    the labels in ``label_scaler``'s scaling, then the bounds in the same scaling (or ``K`` as it is)."""

    def transform(block):
        block = np.asarray(block, dtype=np.float64)
        labels = label_scaler.transform(block[:, :N_LABELS])
        extra = block[:, N_LABELS:]
        if loss == "bound_scaled_mse":  # a bound that does not exist (NaN) weighs nothing
            extra = np.where(np.isfinite(extra), extra, np.inf) * label_scaler.affine()[0]
        return np.hstack([labels, extra]).astype(np.float32)

    return transform


def refused_by(family: str) -> dict:
    """``refused_losses`` entries of a family that does not regress labels alone (these losses read
    targets only the Xception's labels have)."""
    return {
        name: f"{name} is a loss of the Xception's labels (its target carries {TARGET_KEYS[name]}); "
        f"the {family} family does not take it"
        for name in LOSS_FUNCTIONS
    }
