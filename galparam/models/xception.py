"""The Xception CNN regressor of the reference, as a plain builder and as a KerasTuner HyperModel.

Architecture (Chollet 2017, as in KerasTuner 1.0's ``applications.xception`` that the reference
used): an input ``Normalization`` layer, an entry convolution, ``num_residual_blocks`` residual
blocks of two separable convolutions, an exit block with twice the filters and max pooling, global
pooling, and a dense head of five outputs. With ``psf_input`` the PSF image enters as a second,
separately normalized channel (the v3 dataset, where the PSF varies).

With the reference's arguments the builder reproduces its parameter counts exactly: 109,304 for
(conv2d_num_filters=16, sep_num_filters=64, 8 blocks) and 3,479,224 for (16, 384, 8 blocks).
"""

from __future__ import annotations

import keras
from keras import layers

from galparam.errors import GalparamError
from galparam.models.common import FamilyHyperModel

ACTIVATIONS = ("relu", "selu")
POOLINGS = ("avg", "max", "flatten")

DEFAULTS = {
    "conv2d_num_filters": 16,
    "sep_num_filters": 64,
    "num_residual_blocks": 8,
    "kernel_size": 5,
    "initial_strides": 2,
    "activation": "selu",
    "pooling": "avg",
    "dropout_rate": 0.0,
}
"""The reference's best model (grid search on v1): 109,304 parameters."""


def _conv(x, filters, kernel_size, activation, strides):
    if activation == "selu":
        return layers.Conv2D(
            filters, kernel_size, strides=strides, padding="same", activation="selu", kernel_initializer="lecun_normal"
        )(x)
    x = layers.Conv2D(filters, kernel_size, strides=strides, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    return layers.Activation("relu")(x)


def _sep_conv(x, filters, kernel_size, activation):
    if activation == "selu":
        return layers.SeparableConv2D(
            filters,
            kernel_size,
            padding="same",
            activation="selu",
            depthwise_initializer="lecun_normal",
            pointwise_initializer="lecun_normal",
        )(x)
    x = layers.SeparableConv2D(filters, kernel_size, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    return layers.Activation("relu")(x)


def _residual(x, filters, activation, *, max_pooling, kernel_size=3):
    if max_pooling:
        shortcut = layers.Conv2D(filters, 1, strides=2, padding="same")(x)
    elif x.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, padding="same")(x)
    else:
        shortcut = x
    x = _sep_conv(x, filters, kernel_size, activation)
    x = _sep_conv(x, filters, kernel_size, activation)
    if max_pooling:
        x = layers.MaxPooling2D(kernel_size, strides=2, padding="same")(x)
    return layers.add([x, shortcut])


def build_xception(
    input_shape=(64, 64, 1),
    n_outputs: int = 5,
    *,
    psf_input: bool = False,
    conv2d_num_filters: int = DEFAULTS["conv2d_num_filters"],
    sep_num_filters: int = DEFAULTS["sep_num_filters"],
    num_residual_blocks: int = DEFAULTS["num_residual_blocks"],
    kernel_size: int = DEFAULTS["kernel_size"],
    initial_strides: int = DEFAULTS["initial_strides"],
    activation: str = DEFAULTS["activation"],
    pooling: str = DEFAULTS["pooling"],
    dropout_rate: float = DEFAULTS["dropout_rate"],
) -> keras.Model:
    """Build the Xception regressor (uncompiled; adapt its ``Normalization`` layers before fitting).

    Parameters
    ----------
    input_shape : tuple of int
        (height, width, channels) of the galaxy image.
    n_outputs : int
        Regression outputs (the five labels).
    psf_input : bool
        Take the PSF image (same shape) as a second input, named ``psf``.
    conv2d_num_filters : int
        Filters of the entry convolution.
    sep_num_filters : int
        Filters of the separable convolutions (twice as many in the exit block).
    num_residual_blocks : int
        Residual blocks between the entry and the exit.
    kernel_size : int
        Kernel of the entry convolution (the separable convolutions use 3, as in the reference).
    initial_strides : int
        Stride of the entry convolution.
    activation : {"relu", "selu"}
        ReLU with batch normalization, or SELU (self-normalizing, LeCun initialization).
    pooling : {"avg", "max", "flatten"}
        How the last feature map becomes a vector.
    dropout_rate : float
        Dropout before the dense head, in [0, 1).

    Returns
    -------
    keras.Model
        Inputs ``image`` (and ``psf``), output ``labels`` of shape (batch, n_outputs).

    Raises
    ------
    GalparamError
        If an argument is out of range.
    """
    checks = [
        (activation in ACTIVATIONS, f"activation {activation!r}: accepted {ACTIVATIONS}"),
        (pooling in POOLINGS, f"pooling {pooling!r}: accepted {POOLINGS}"),
        (0 <= dropout_rate < 1, f"dropout_rate {dropout_rate}: accepted [0, 1)"),
        (num_residual_blocks >= 0, f"num_residual_blocks {num_residual_blocks}: accepted 0 or more"),
    ]
    for name in ("conv2d_num_filters", "sep_num_filters", "kernel_size", "initial_strides"):
        value = locals()[name]
        checks.append((isinstance(value, int) and value >= 1, f"{name} {value!r}: accepted whole numbers >= 1"))
    for ok, message in checks:
        if not ok:
            raise GalparamError(message)

    image = keras.Input(shape=input_shape, name="image")
    x = layers.Normalization(axis=None, name="normalize_image")(image)
    inputs = [image]
    if psf_input:
        psf = keras.Input(shape=input_shape, name="psf")
        inputs.append(psf)
        x = layers.Concatenate(name="image_and_psf")([x, layers.Normalization(axis=None, name="normalize_psf")(psf)])
    x = _conv(x, conv2d_num_filters, kernel_size, activation, initial_strides)
    for _ in range(num_residual_blocks):
        x = _residual(x, sep_num_filters, activation, max_pooling=False)
    x = _residual(x, 2 * sep_num_filters, activation, max_pooling=True)
    x = {"avg": layers.GlobalAveragePooling2D, "max": layers.GlobalMaxPooling2D, "flatten": layers.Flatten}[pooling]()(
        x
    )
    if dropout_rate > 0:
        x = layers.Dropout(dropout_rate)(x)
    outputs = layers.Dense(n_outputs, name="labels")(x)
    return keras.Model(inputs if psf_input else image, outputs, name="xception")


class XceptionHyperModel(FamilyHyperModel):
    """The Xception, built and compiled: the search space of the reference's AutoKeras Xception
    block, plus the learning rate.

    Parameters
    ----------
    input_shape : tuple of int
        Image shape.
    psf_input : bool
        Whether models take the PSF image too.
    **kwargs
        ``fixed``, ``adapt`` (``normalize_image``, ``normalize_psf``), ``settings``: see
        :class:`~galparam.models.common.FamilyHyperModel`.
    """

    FAMILY = "xception"
    DEFAULT_LOSS = "mse"
    SPACE = {
        "conv2d_num_filters": [4, 8, 16, 32, 64, 128],
        "sep_num_filters": [4, 8, 16, 32, 64, 128, 256, 384],
        "num_residual_blocks": [2, 4, 6, 8],
        "kernel_size": [3, 5],
        "initial_strides": [2, 4],
        "activation": list(ACTIVATIONS),
        "pooling": list(POOLINGS),
        "dropout_rate": [0.0, 0.25, 0.5],
    }

    def __init__(self, input_shape=(64, 64, 1), *, psf_input: bool = False, **kwargs):
        super().__init__(input_shape, **kwargs)
        self.psf_input = psf_input

    @property
    def loss(self):
        """The uncertainty head's Gaussian NLL, or the spec's loss (default mse)."""
        from galparam.models.heads import loss_for

        return loss_for(self.settings.uncertainty) or super().loss

    def regressor(self, args: dict) -> keras.Model:
        """A new Xception of these builder arguments with the spec's head, its normalization adapted (uncompiled)."""
        from galparam.models.heads import head_units

        model = build_xception(
            self.input_shape, head_units(self.settings.uncertainty), psf_input=self.psf_input, **args
        )
        self.adapt_layers(model)
        return model

    def build(self, hp):
        args, lr = self.choose(hp)
        return self.compile(self.regressor(args), lr)


HyperModel = XceptionHyperModel
"""This family's HyperModel (see :mod:`galparam.models`)."""
