"""What every model family shares: how a model is compiled from an experiment, and the HyperModel
base whose ``build(hp)`` is the one place a family's model is built and compiled.

``galparam-train`` builds with every hyperparameter fixed; the grid fixes the grid point's; the
tuner lets KerasTuner choose the rest from the family's ``SPACE``. All three go through
:meth:`FamilyHyperModel.build`, so a spec's optimizer, learning rate, loss and loss weights hold
everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import keras_tuner

from galparam.errors import GalparamError

DEFAULT_LEARNING_RATE = 1e-3
OPTIMIZERS = {
    "adam": keras.optimizers.Adam,
    "adamw": keras.optimizers.AdamW,
    "rmsprop": keras.optimizers.RMSprop,
    "sgd": keras.optimizers.SGD,
}


@dataclass(frozen=True)
class CompileSettings:
    """How a model is compiled: the experiment's optimizer, learning rate (None: searched, or
    :data:`DEFAULT_LEARNING_RATE`), loss, the joint loss weights (labels, image) and the Xception's
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
        return OPTIMIZERS[self.optimizer](learning_rate=learning_rate)


@keras.saving.register_keras_serializable(package="galparam")
def pixel_binary_crossentropy(y_true, y_pred):
    """Binary cross-entropy of values in [0, 1] (sigmoid outputs), mean over the last axis, as
    Keras's ``binary_crossentropy`` but with a floor of 1e-30 instead of 1e-7.

    Keras clips predictions to [1e-7, 1 - 1e-7], and only its TensorFlow backend escapes the clip
    (it reads the sigmoid's logits). On JAX a decoder whose background pixels fall below 1e-7
    then gets no gradient from them and stalls (measured: the tiny autoencoder's decoder stuck at
    a loss of 0.047 with a flat reconstruction, where TensorFlow's reaches 0.018 in 3 epochs).
    """
    p = keras.ops.clip(y_pred, 1e-30, 1.0 - 1e-7)
    bce = -(y_true * keras.ops.log(p) + (1.0 - y_true) * keras.ops.log1p(-p))
    return keras.ops.mean(bce, axis=-1)


def backend_loss(name: str):
    """The loss ``compile`` is given for a spec's loss ``name``: the name itself, except
    ``binary_crossentropy`` off TensorFlow (:func:`pixel_binary_crossentropy`)."""
    from galparam import backend

    if name == "binary_crossentropy" and not backend.is_tensorflow():
        return pixel_binary_crossentropy
    return name


class FamilyHyperModel(keras_tuner.HyperModel):
    """Base of the families' HyperModels.

    Parameters
    ----------
    input_shape : tuple of int
        Image shape (height, width, 1).
    fixed : dict, optional
        Builder arguments (and ``learning_rate``) held fixed instead of searched.
    adapt : dict, optional
        Normalization layer name → the sample of training images it is adapted on in every model built.
    settings : CompileSettings, optional
        How models are compiled (default: Adam and the family's loss).

    Subclasses set ``SPACE`` (builder argument → choices), ``DEFAULT_LOSS`` and ``FAMILY`` and
    implement :meth:`build`.
    """

    SPACE: dict = {}
    DEFAULT_LOSS = "mse"
    FAMILY = ""

    def __init__(self, input_shape=(64, 64, 1), *, fixed=None, adapt=None, settings=None, **kwargs):
        super().__init__(**kwargs)
        self.input_shape = tuple(input_shape)
        self.fixed = dict(fixed or {})
        self.adapt = dict(adapt or {})
        self.settings = settings or CompileSettings()
        unknown = set(self.fixed) - set(self.SPACE) - {"learning_rate"}
        if unknown:
            raise GalparamError(
                f"unknown {self.FAMILY} hyperparameters {sorted(unknown)}; accepted {sorted([*self.SPACE, 'learning_rate'])}"
            )

    @property
    def loss(self):
        """The spec's loss (default the family's), as ``compile`` takes it on this backend."""
        return backend_loss(self.settings.loss or self.DEFAULT_LOSS)

    def choose(self, hp) -> tuple[dict, float]:
        """The builder arguments and learning rate of a trial: fixed ones as they are, the rest from ``SPACE``."""
        args = {n: hp.Fixed(n, self.fixed[n]) if n in self.fixed else hp.Choice(n, c) for n, c in self.SPACE.items()}
        if self.settings.learning_rate is not None:
            lr = hp.Fixed("learning_rate", self.settings.learning_rate)
        elif "learning_rate" in self.fixed:
            lr = hp.Fixed("learning_rate", self.fixed["learning_rate"])
        else:
            lr = hp.Float("learning_rate", 1e-4, 1e-2, sampling="log", default=DEFAULT_LEARNING_RATE)
        return args, float(lr)

    def adapt_layers(self, model) -> None:
        """Adapt the model's Normalization layers on their samples."""
        for layer, sample in self.adapt.items():
            model.get_layer(layer).adapt(sample)

    def compile(self, model, learning_rate: float, *, loss=None, loss_weights=None):
        """Compile ``model`` with the settings' optimizer (``loss`` default: the family's)."""
        model.compile(
            optimizer=self.settings.optimizer_for(learning_rate), loss=loss or self.loss, loss_weights=loss_weights
        )
        return model

    def build_fixed(self):
        """The model of the fixed hyperparameters alone (every argument fixed: training)."""
        return self.build(keras_tuner.HyperParameters())
