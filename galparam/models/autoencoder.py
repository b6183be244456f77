"""The conditional autoencoder of the reference: image → five labels → noiseless image.

The encoder maps a noisy image to the five labels scaled to [0, 1] (strided convolutions with
LeakyReLU and batch normalization, two dense layers with dropout, a sigmoid output). The decoder
maps the five scaled labels to the noiseless image scaled to [0, 1] (dense, reshape, transposed
convolutions, a sigmoid output): it learns GalSim's deterministic forward model. The autoencoder
joins them with two outputs, ``labels`` and ``image``, and is trained in three stages (encoder,
decoder, then jointly with loss weights 5 : 1).
"""

from __future__ import annotations

import keras
from keras import layers

from galparam.errors import GalparamError
from galparam.models.common import FamilyHyperModel

DEFAULTS = {"base_filters": 32, "dense_units": 256, "dropout_rate": 0.5}


def _check(base_filters, dense_units, dropout_rate):
    if not (isinstance(base_filters, int) and base_filters >= 1):
        raise GalparamError(f"base_filters {base_filters!r}: accepted whole numbers >= 1")
    if not (isinstance(dense_units, int) and dense_units >= 1):
        raise GalparamError(f"dense_units {dense_units!r}: accepted whole numbers >= 1")
    if not 0 <= dropout_rate < 1:
        raise GalparamError(f"dropout_rate {dropout_rate}: accepted [0, 1)")


def _stages(image_size: int) -> int:
    stages = 0
    while image_size > 4 and image_size % 2 == 0:
        image_size //= 2
        stages += 1
    if image_size != 4:
        raise GalparamError("the autoencoder needs a square image whose side is 4 times a power of 2 (e.g. 64)")
    return stages


def build_encoder(
    input_shape=(64, 64, 1),
    n_labels: int = 5,
    *,
    base_filters: int = DEFAULTS["base_filters"],
    dense_units: int = DEFAULTS["dense_units"],
    dropout_rate: float = DEFAULTS["dropout_rate"],
    uncertainty: str = "none",
) -> keras.Model:
    """Noisy image → labels scaled to [0, 1] (uncompiled; adapt ``normalize_image`` before fitting).

    Parameters
    ----------
    input_shape : tuple of int
        Image shape, side 4 × 2^k.
    n_labels : int
        Outputs.
    base_filters : int
        Filters of the first convolution; doubled at each halving of the image.
    dense_units : int
        Units of the first dense layer (the second has a quarter).
    dropout_rate : float
        Dropout after each dense layer.
    uncertainty : {"none", "diagonal", "full"}
        The head (:mod:`galparam.models.heads`): with one, ``labels`` holds the ``n_labels`` means
        (sigmoid, as without) followed by the log-variances or the precision's Cholesky factor.

    Returns
    -------
    keras.Model with input ``image`` and output ``labels``
    """
    from galparam.models.heads import head_units

    _check(base_filters, dense_units, dropout_rate)
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


def build_decoder(
    n_labels: int = 5,
    output_shape=(64, 64, 1),
    *,
    base_filters: int = DEFAULTS["base_filters"],
    dense_units: int = DEFAULTS["dense_units"],
) -> keras.Model:
    """Labels scaled to [0, 1] → noiseless image scaled to [0, 1] (uncompiled).

    Parameters
    ----------
    n_labels : int
        Inputs.
    output_shape : tuple of int
        Image shape, side 4 × 2^k.
    base_filters : int
        Filters of the last transposed convolution; doubled at each earlier one.
    dense_units : int
        Units of the dense layer before the reshape.

    Returns
    -------
    keras.Model with input ``labels`` and output ``image``
    """
    _check(base_filters, dense_units, 0.0)
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


def build_autoencoder(encoder: keras.Model, decoder: keras.Model) -> keras.Model:
    """Join an encoder and a decoder: ``noisy_image`` → {``labels``, ``image``}, sharing their weights
    (with an uncertainty head the decoder draws the encoder's means)."""
    noisy = keras.Input(shape=encoder.input_shape[1:], name="noisy_image")
    labels = encoder(noisy)
    n_labels = decoder.input_shape[-1]
    reconstruction = decoder(labels if labels.shape[-1] == n_labels else labels[:, :n_labels])
    return keras.Model(
        noisy,
        {"labels": layers.Identity(name="labels")(labels), "image": layers.Identity(name="image")(reconstruction)},
        name="autoencoder",
    )


class AutoencoderHyperModel(FamilyHyperModel):
    """The autoencoder, built and compiled: filters, dense units, dropout and the learning rate.

    :meth:`build` gives the joint model (what a search trains); :meth:`build_stage` each stage
    of the three-stage training. ``adapt`` may hold ``normalize_image``, the encoder's sample.
    """

    FAMILY = "autoencoder"
    DEFAULT_LOSS = "binary_crossentropy"
    SPACE = {"base_filters": [8, 16, 32, 64], "dense_units": [64, 128, 256, 512], "dropout_rate": [0.0, 0.25, 0.5]}

    @property
    def labels_loss(self):
        """The labels' loss: the uncertainty head's Gaussian NLL, or the spec's loss."""
        from galparam.models.heads import loss_for

        return loss_for(self.settings.uncertainty) or self.loss

    def encoder(self, args: dict) -> keras.Model:
        """A new encoder with the spec's head, its normalization adapted."""
        encoder = build_encoder(self.input_shape, uncertainty=self.settings.uncertainty, **args)
        self.adapt_layers(encoder)
        return encoder

    def decoder(self, args: dict) -> keras.Model:
        return build_decoder(
            output_shape=self.input_shape, base_filters=args["base_filters"], dense_units=args["dense_units"]
        )

    def build_stage(self, stage: str, hp, *, encoder=None, decoder=None):
        """The compiled model of one stage: ``encoder`` (image → labels), ``decoder`` (labels →
        image) or ``joint`` (the autoencoder, the spec's loss on both outputs, weighted labels : image);
        given trained parts are used, missing ones are built new."""
        args, lr = self.choose(hp)
        encoder = encoder or (self.encoder(args) if stage != "decoder" else None)
        decoder = decoder or (self.decoder(args) if stage != "encoder" else None)
        if stage == "encoder":
            return self.compile(encoder, lr, loss=self.labels_loss)
        if stage == "decoder":
            return self.compile(decoder, lr)
        weights = dict(zip(("labels", "image"), self.settings.loss_weights, strict=True))
        loss = {"labels": self.labels_loss, "image": self.loss}
        return self.compile(build_autoencoder(encoder, decoder), lr, loss=loss, loss_weights=weights)

    def build(self, hp):
        return self.build_stage("joint", hp)


HyperModel = AutoencoderHyperModel
"""This family's HyperModel (see :mod:`galparam.models`)."""
