"""How a model is compiled from an experiment: the optimizers and losses a spec may name, the
compile settings, and galparam's own losses (registered with Keras so saved models load).

This module imports Keras only when a model is compiled or loaded.
"""

from __future__ import annotations

from dataclasses import dataclass

from galparam import backend
from galparam.models.heads import gaussian_nll_diagonal, gaussian_nll_full
from galparam.models.losses import LOSS_FUNCTIONS

DEFAULT_LEARNING_RATE = 1e-3

OPTIMIZERS = {"adam": "Adam", "adamw": "AdamW", "rmsprop": "RMSprop", "sgd": "SGD"}
"""The optimizers an experiment may name → their ``keras.optimizers`` class."""

LOSSES = ("binary_crossentropy", "mse", "mae", "huber", *LOSS_FUNCTIONS)
"""The losses an experiment may name: Keras's names, then galparam's label losses
(:mod:`galparam.models.losses`)."""


@dataclass(frozen=True)
class CompileSettings:
    """How a model is compiled: the experiment's optimizer, learning rate (None: searched, or
    :data:`DEFAULT_LEARNING_RATE`), loss, the joint loss weights (labels, image) and the
    uncertainty head (:mod:`galparam.models.heads`)."""

    optimizer: str = "adam"
    learning_rate: float | None = None
    loss: str | None = None
    loss_weights: tuple[float, float] = (5.0, 1.0)
    uncertainty: str = "none"

    @classmethod
    def of(cls, experiment) -> CompileSettings:
        """The settings of an :class:`~galparam.specs.ExperimentSpec`."""
        return cls(
            experiment.optimizer,
            experiment.learning_rate,
            experiment.loss,
            tuple(experiment.loss_weights),
            getattr(experiment, "uncertainty", "none"),
        )

    def optimizer_for(self, learning_rate: float):
        """A new optimizer of this kind."""
        import keras

        return getattr(keras.optimizers, OPTIMIZERS[self.optimizer])(learning_rate=learning_rate)


def pixel_binary_crossentropy(y_true, y_pred):
    """Binary cross-entropy of values in [0, 1] (sigmoid outputs), mean over the last axis, as
    Keras's ``binary_crossentropy`` but with a floor of 1e-30 instead of 1e-7.

    Keras clips predictions to [1e-7, 1 - 1e-7], and only its TensorFlow backend escapes the clip
    (it reads the sigmoid's logits). On JAX a decoder whose background pixels fall below 1e-7
    then gets no gradient from them and stalls (measured: the tiny autoencoder's decoder stuck at
    a loss of 0.047 with a flat reconstruction, where TensorFlow's reaches 0.018 in 3 epochs).
    """
    from keras import ops

    p = ops.clip(y_pred, 1e-30, 1.0 - 1e-7)
    bce = -(y_true * ops.log(p) + (1.0 - y_true) * ops.log1p(-p))
    return ops.mean(bce, axis=-1)


def backend_loss(name: str):
    """The loss ``compile`` is given for a spec's loss ``name``: the name itself, except
    ``binary_crossentropy`` off TensorFlow (:func:`pixel_binary_crossentropy`) and galparam's own
    label losses (their functions)."""
    if name in LOSS_FUNCTIONS:
        return LOSS_FUNCTIONS[name]
    if name == "binary_crossentropy" and not backend.is_tensorflow():
        return pixel_binary_crossentropy
    return name


def register_losses() -> None:
    """Make galparam's own losses known to Keras (idempotent): a model compiled with one is saved
    under its registered name and loads back only once it is registered."""
    import keras

    for loss in (pixel_binary_crossentropy, gaussian_nll_diagonal, gaussian_nll_full, *LOSS_FUNCTIONS.values()):
        keras.saving.register_keras_serializable(package="galparam")(loss)
