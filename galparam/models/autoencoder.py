"""The conditional autoencoder of the reference: image → five labels → noiseless image.

The encoder maps a noisy image to the five labels scaled to [0, 1] (strided convolutions with
LeakyReLU and batch normalization, two dense layers with dropout, a sigmoid output). The decoder
maps the five scaled labels to the noiseless image scaled to [0, 1] (dense, reshape, transposed
convolutions, a sigmoid output): it learns GalSim's deterministic forward model. The autoencoder
joins them with two outputs, ``labels`` and ``image``, and is trained in three stages (encoder,
decoder, then jointly with loss weights 5 : 1).
"""

from __future__ import annotations

from galparam.errors import GalparamError
from galparam.interval import Interval
from galparam.models.family import WHOLE_POSITIVE, Family, Hyperparameter, Stage
from galparam.models.heads import head_units
from galparam.models.losses import refused_by


def _stages(image_size: int) -> int:
    stages = 0
    while image_size > 4 and image_size % 2 == 0:
        image_size //= 2
        stages += 1
    if image_size != 4:
        raise GalparamError("the autoencoder needs a square image whose side is 4 times a power of 2 (e.g. 64)")
    return stages


def build_encoder(input_shape=(64, 64, 1), n_labels: int = 5, *, uncertainty: str = "none", **arguments):
    """Noisy image → labels scaled to [0, 1] (uncompiled; adapt ``normalize_image`` before fitting).

    Parameters
    ----------
    input_shape : tuple of int
        Image shape, side 4 × 2^k.
    n_labels : int
        Outputs.
    uncertainty : {"none", "diagonal", "full"}
        The head (:mod:`galparam.models.heads`): with one, ``labels`` holds the ``n_labels`` means
        (sigmoid, as without) followed by the log-variances or the precision's Cholesky factor.
    **arguments
        The family's builder arguments (the defaults for those not given): ``base_filters``
        (filters of the first convolution, doubled at each halving of the image),
        ``dense_units`` (units of the first dense layer; the second has a quarter) and
        ``dropout_rate`` (after each dense layer).

    Returns
    -------
    keras.Model with input ``image`` and output ``labels``
    """
    import keras
    from keras import layers

    a = FAMILY.check_arguments(arguments)
    base_filters, dense_units, dropout_rate = a["base_filters"], a["dense_units"], a["dropout_rate"]
    image = keras.Input(shape=input_shape, name="image")
    x = layers.Normalization(axis=None, name="normalize_image")(image)
    for stage in range(_stages(input_shape[0])):
        x = layers.Conv2D(base_filters * 2**stage, 4, strides=2, padding="same")(x)
        x = layers.BatchNormalization()(x)
        x = layers.LeakyReLU(0.2)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(dense_units)(x)
    x = layers.Dropout(dropout_rate)(x)
    x = layers.Dense(max(dense_units // 4, n_labels))(x)
    x = layers.LeakyReLU(0.2)(x)
    x = layers.Dropout(dropout_rate)(x)
    if uncertainty == "none":
        labels = layers.Dense(n_labels, activation="sigmoid", name="labels")(x)
    else:
        means = layers.Dense(n_labels, activation="sigmoid", name="means")(x)
        spread = layers.Dense(head_units(uncertainty, n_labels) - n_labels, name="spread")(x)
        labels = layers.Concatenate(name="labels")([means, spread])
    return keras.Model(image, labels, name="encoder")


def build_decoder(n_labels: int = 5, output_shape=(64, 64, 1), **arguments):
    """Labels scaled to [0, 1] → noiseless image scaled to [0, 1] (uncompiled).

    Parameters
    ----------
    n_labels : int
        Inputs.
    output_shape : tuple of int
        Image shape, side 4 × 2^k.
    **arguments
        The family's builder arguments (the defaults for those not given; ``dropout_rate`` is
        the encoder's): ``base_filters`` (filters of the last transposed convolution, doubled at
        each earlier one) and ``dense_units`` (units of the dense layer before the reshape).

    Returns
    -------
    keras.Model with input ``labels`` and output ``image``
    """
    import keras
    from keras import layers

    a = FAMILY.check_arguments(arguments)
    base_filters, dense_units = a["base_filters"], a["dense_units"]
    stages = _stages(output_shape[0])
    labels = keras.Input(shape=(n_labels,), name="labels")
    x = layers.Dense(dense_units)(labels)
    x = layers.LeakyReLU(0.2)(x)
    top = base_filters * 2 ** (stages - 1)
    x = layers.Dense(4 * 4 * top)(x)
    x = layers.LeakyReLU(0.2)(x)
    x = layers.Reshape((4, 4, top))(x)
    for stage in reversed(range(stages)):
        x = layers.Conv2DTranspose(base_filters * 2**stage, 4, strides=2, padding="same")(x)
        x = layers.LeakyReLU(0.2)(x)
    image = layers.Conv2D(output_shape[-1], 3, padding="same", activation="sigmoid", name="image")(x)
    return keras.Model(labels, image, name="decoder")


def build_autoencoder(encoder, decoder):
    """Join an encoder and a decoder: ``noisy_image`` → {``labels``, ``image``}, sharing their weights
    (with an uncertainty head the decoder draws the encoder's means)."""
    import keras
    from keras import layers

    noisy = keras.Input(shape=encoder.input_shape[1:], name="noisy_image")
    labels = encoder(noisy)
    n_labels = decoder.input_shape[-1]
    reconstruction = decoder(labels if labels.shape[-1] == n_labels else labels[:, :n_labels])
    return keras.Model(
        noisy,
        {"labels": layers.Identity(name="labels")(labels), "image": layers.Identity(name="image")(reconstruction)},
        name="autoencoder",
    )


def new_encoder(arguments: dict, context):
    """A new encoder with the experiment's head, its normalization adapted."""
    model = build_encoder(context.input_shape, uncertainty=context.uncertainty, **arguments)
    context.adapt(model)
    return model


def new_decoder(arguments: dict, context):
    """A new decoder (``dropout_rate`` is the encoder's alone)."""
    return build_decoder(
        output_shape=context.input_shape,
        base_filters=arguments["base_filters"],
        dense_units=arguments["dense_units"],
    )


def _build(stage: str, arguments: dict, context, trained: dict):
    """A stage's model from the parts trained so far (the joint stage after the encoder and the
    decoder stages starts from them; a part not trained yet is new)."""
    parts = _parts(trained)
    if stage == "encoder":
        return parts["encoder"] or new_encoder(arguments, context)
    if stage == "decoder":
        return parts["decoder"] or new_decoder(arguments, context)
    first = parts["encoder"] or new_encoder(arguments, context)
    return build_autoencoder(first, parts["decoder"] or new_decoder(arguments, context))


def _parts(trained: dict) -> dict:
    if "joint" in trained:
        joint = trained["joint"]
        return {"encoder": joint.get_layer("encoder"), "decoder": joint.get_layer("decoder")}
    return {"encoder": trained.get("encoder"), "decoder": trained.get("decoder")}


def _finish(trained: dict, arguments: dict, context):
    parts = _parts(trained)
    first = parts["encoder"] or new_encoder(arguments, context)
    return build_autoencoder(first, parts["decoder"] or new_decoder(arguments, context))


FAMILY = Family(
    name="autoencoder",
    summary="the conditional autoencoder: noisy image → the five labels → noiseless image",
    hyperparameters=(
        Hyperparameter("base_filters", 32, (8, 16, 32, 64), WHOLE_POSITIVE, whole=True),
        Hyperparameter("dense_units", 256, (64, 128, 256, 512), WHOLE_POSITIVE, whole=True),
        Hyperparameter("dropout_rate", 0.5, (0.0, 0.25, 0.5), Interval(0.0, 1.0, True, False)),
    ),
    stages=(
        Stage("encoder", inputs={"image": "images"}, targets={"labels": "labels"}, losses={"labels": "labels"}),
        Stage("decoder", inputs={"labels": "labels"}, targets={"image": "clean_scaled"}, losses={"image": "spec"}),
        Stage(
            "joint",
            inputs={"noisy_image": "images"},
            targets={"labels": "labels", "image": "clean_scaled"},
            losses={"labels": "labels", "image": "spec"},
            plateau=True,
        ),
    ),
    search_stage="joint",
    default_loss="binary_crossentropy",
    refused_losses=refused_by("autoencoder"),
    keys=("uncertainty", "stages", "loss_weights", "lr_factor", "lr_patience"),
    label_range=(0.0, 1.0),
    scales_images=True,
    predictor="encoder",
    decoder="decoder",
    build=_build,
    finish=_finish,
)
"""The autoencoder family; its defaults are the reference's."""
