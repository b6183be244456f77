"""The Xception CNN regressor of the reference, as a plain builder and as a KerasTuner HyperModel.

Architecture (Chollet 2017, as in KerasTuner 1.0's ``applications.xception`` that the reference
used): an input ``Normalization`` layer, an entry convolution, ``num_residual_blocks`` residual
blocks of two separable convolutions, an exit block with twice the filters and max pooling, global
pooling, and a dense head of five outputs. With ``psf_input`` the PSF image enters as a second,
separately normalized channel (the v3 dataset, where the PSF varies).

With the reference's arguments the builder reproduces its parameter counts exactly: 109,304 for
(conv2d_num_filters=16, sep_num_filters=64, 8 blocks) and 3,479,224 for (16, 384, 8 blocks).

The family trains in one stage, ``xception`` (labels scaled to [-1, 1]); with a finished denoiser
(an experiment's ``denoiser``) it measures that denoiser's restored images, and with ``joint: true``
it trains together with the denoiser instead (stage ``denoiser_xception``, :mod:`galparam.models.denoise`).
"""

from __future__ import annotations

from galparam.interval import Interval
from galparam.models.denoise import build_joint
from galparam.models.family import GIVEN, WHOLE_POSITIVE, Family, Hyperparameter, Rule, Stage
from galparam.models.heads import head_units

ACTIVATIONS = ("relu", "selu")
POOLINGS = ("avg", "max", "flatten")


def _conv(x, filters, kernel_size, activation, strides):
    from keras import layers

    if activation == "selu":
        return layers.Conv2D(
            filters, kernel_size, strides=strides, padding="same", activation="selu", kernel_initializer="lecun_normal"
        )(x)
    x = layers.Conv2D(filters, kernel_size, strides=strides, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    return layers.Activation("relu")(x)


def _sep_conv(x, filters, kernel_size, activation):
    from keras import layers

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
    from keras import layers

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


def build_xception(input_shape=(64, 64, 1), n_outputs: int = 5, *, psf_input: bool = False, **arguments):
    """Build the Xception regressor (uncompiled; adapt its ``Normalization`` layers before fitting).

    Parameters
    ----------
    input_shape : tuple of int
        (height, width, channels) of the galaxy image.
    n_outputs : int
        Regression outputs (the five labels, or a head's means and spreads).
    psf_input : bool
        Take the PSF image (same shape) as a second input, named ``psf``.
    **arguments
        The family's builder arguments (:data:`FAMILY`'s hyperparameters; the defaults for those
        not given): ``conv2d_num_filters`` (filters of the entry convolution), ``sep_num_filters``
        (of the separable convolutions; twice as many in the exit block), ``num_residual_blocks``,
        ``kernel_size`` (of the entry convolution; the separable ones use 3, as the reference),
        ``initial_strides`` (of the entry convolution), ``activation`` (``relu`` with batch
        normalization, or ``selu``: self-normalizing, LeCun initialization), ``pooling`` (how the
        last feature map becomes a vector) and ``dropout_rate`` (before the dense head).

    Returns
    -------
    keras.Model
        Inputs ``image`` (and ``psf``), output ``labels`` of shape (batch, n_outputs).

    Raises
    ------
    GalparamError
        An unknown argument, or a value outside what it accepts.
    """
    import keras
    from keras import layers

    a = FAMILY.check_arguments(arguments)
    image = keras.Input(shape=input_shape, name="image")
    x = layers.Normalization(axis=None, name="normalize_image")(image)
    inputs = [image]
    if psf_input:
        psf = keras.Input(shape=input_shape, name="psf")
        inputs.append(psf)
        x = layers.Concatenate(name="image_and_psf")([x, layers.Normalization(axis=None, name="normalize_psf")(psf)])
    x = _conv(x, a["conv2d_num_filters"], a["kernel_size"], a["activation"], a["initial_strides"])
    for _ in range(a["num_residual_blocks"]):
        x = _residual(x, a["sep_num_filters"], a["activation"], max_pooling=False)
    x = _residual(x, 2 * a["sep_num_filters"], a["activation"], max_pooling=True)
    pooling = {"avg": layers.GlobalAveragePooling2D, "max": layers.GlobalMaxPooling2D, "flatten": layers.Flatten}
    x = pooling[a["pooling"]]()(x)
    if a["dropout_rate"] > 0:
        x = layers.Dropout(a["dropout_rate"])(x)
    outputs = layers.Dense(n_outputs, name="labels")(x)
    return keras.Model(inputs if psf_input else image, outputs, name="xception")


def regressor(arguments: dict, context):
    """A new Xception of these builder arguments with the experiment's head and PSF input, its
    normalization adapted (uncompiled)."""
    model = build_xception(
        context.input_shape, head_units(context.uncertainty), psf_input=context.psf_input, **arguments
    )
    context.adapt(model)
    return model


def _build(stage: str, arguments: dict, context, trained: dict):
    if stage == "xception":
        return regressor(arguments, context)
    # denoiser_xception: the denoiser (a copy of its trained model, not the one its Estimator holds) and
    # a new Xception, trained together under one optimizer
    import keras

    denoiser = context.denoiser
    restorer = keras.models.clone_model(denoiser.model)
    restorer.set_weights(denoiser.model.get_weights())
    restorer.trainable = True
    return build_joint(restorer, regressor(arguments, context), denoiser.image_scaler, psf_input=context.psf_input)


def _finish(trained: dict, arguments: dict, context):
    (model,) = trained.values()
    return model


FAMILY = Family(
    name="xception",
    summary="the Xception CNN regressor: image (and PSF image) → the five labels",
    hyperparameters=(
        Hyperparameter("conv2d_num_filters", 16, (4, 8, 16, 32, 64, 128), WHOLE_POSITIVE, whole=True),
        Hyperparameter("sep_num_filters", 64, (4, 8, 16, 32, 64, 128, 256, 384), WHOLE_POSITIVE, whole=True),
        Hyperparameter("num_residual_blocks", 8, (2, 4, 6, 8), Interval(0, float("inf")), whole=True),
        Hyperparameter("kernel_size", 5, (3, 5), WHOLE_POSITIVE, whole=True),
        Hyperparameter("initial_strides", 2, (2, 4), WHOLE_POSITIVE, whole=True),
        Hyperparameter("activation", "selu", ACTIVATIONS, ACTIVATIONS),
        Hyperparameter("pooling", "avg", POOLINGS, POOLINGS),
        Hyperparameter("dropout_rate", 0.0, (0.0, 0.25, 0.5), Interval(0.0, 1.0, True, False)),
    ),
    stages=(
        Stage(
            "xception",
            inputs={"image": "measured_images"},
            targets={"labels": "labels"},
            losses={"labels": "labels"},
            takes_psf=True,
        ),
        Stage(
            "denoiser_xception",
            inputs={"image": "images"},
            targets={"labels": "labels", "denoised": "clean_in_image_units"},
            losses={"labels": "labels", "denoised": "mae"},
            takes_psf=True,
            when=("joint", True),
        ),
    ),
    search_stage="xception",
    default_loss="mse",
    refused_losses={
        "binary_crossentropy": "binary_crossentropy needs [0, 1] targets; the Xception's labels are in [-1, 1]"
    },
    keys=("denoiser", "joint", "uncertainty", "loss_weights", "noise_replicas"),
    rules=(
        Rule(
            "loss_weights",
            "loss_weights: applies to the joint denoiser and Xception (joint: true)",
            unless=("joint", True),
        ),
        Rule(
            "loss",
            "loss: an uncertainty head trains with the Gaussian negative log-likelihood; leave loss out",
            unless=("uncertainty", "none"),
        ),
        Rule(
            "noise_replicas",
            "noise_replicas: applies to loss: bias_penalized_mse",
            unless=("loss", "bias_penalized_mse"),
        ),
        Rule("joint", "joint: true needs denoiser: RUN_DIR (the denoiser it starts from)", unless=("denoiser", GIVEN)),
        Rule("images", "denoiser: restores noisy images; leave images at noisy", unless=("denoiser", None)),
    ),
    label_range=(-1.0, 1.0),
    build=_build,
    finish=_finish,
)
"""The Xception family; :data:`FAMILY`'s defaults are the reference's best model (grid search on v1):
109,304 parameters."""
