"""What the denoiser families (:mod:`~galparam.models.edsr`, :mod:`~galparam.models.rdn`) share.

A denoiser restores a noisy image to the noiseless one at the same size (no upsampling), after
Madireddy et al. (2019) as the reference tried it. It works in the run's image scaling: the noisy
image and the noiseless target are both mapped by the noiseless images' min-max scaler (fitted on
the training split, noiseless range → [0, 1]), so the noise keeps its shape and the network's
output is read back in counts by the same scaler. The network predicts a correction added to its
input (global residual learning): the identity is where it starts, and what it must beat.
"""

from __future__ import annotations

from galparam.errors import GalparamError
from galparam.models.family import Family, Rule, Stage
from galparam.models.losses import refused_by

INPUT_NAME = "image"
OUTPUT_NAME = "denoised"

DENOISER_STAGE = Stage(
    "denoiser",
    inputs={INPUT_NAME: "images_in_image_units"},
    targets={OUTPUT_NAME: "clean_in_image_units"},
    losses={OUTPUT_NAME: "spec"},
)
"""A denoiser's one stage: the noisy image to the noiseless one, both in the run's image scaling
(unclipped, so the noise keeps its shape)."""


def restoration_input(input_shape):
    """The denoiser's input (the noisy image in the run's image scaling)."""
    import keras

    if len(input_shape) != 3 or input_shape[-1] != 1:
        raise GalparamError(f"input_shape {tuple(input_shape)}: a denoiser takes (height, width, 1)")
    return keras.Input(shape=tuple(input_shape), name=INPUT_NAME)


def restoration_output(image, features, kernel_size: int = 3):
    """The restored image: one convolution of ``features`` to a correction, added to the input."""
    from keras import layers

    correction = layers.Conv2D(1, kernel_size, padding="same", name="correction")(features)
    return layers.Add(name=OUTPUT_NAME)([image, correction])


def denoiser_family(name: str, summary: str, hyperparameters: tuple, builder) -> Family:
    """The declaration of a denoiser family whose plain builder is ``builder(input_shape, **arguments)``:
    one stage (:data:`DENOISER_STAGE`), MAE (the EDSR paper's loss) unless the spec says mse or
    huber, noiseless images scaled to [0, 1], no labels and no PSF input."""

    def build(stage, arguments, context, trained):
        return builder(context.input_shape, **arguments)

    def finish(trained, arguments, context):
        return trained[DENOISER_STAGE.name]

    return Family(
        name=name,
        summary=summary,
        hyperparameters=hyperparameters,
        stages=(DENOISER_STAGE,),
        search_stage=DENOISER_STAGE.name,
        default_loss="mae",
        refused_losses={
            "binary_crossentropy": "a denoiser restores images with mae, mse or huber, not binary_crossentropy",
            **refused_by(name),
        },
        rules=(Rule("images", "images: a denoiser learns noisy → noiseless; leave images at noisy"),),
        scales_images=True,
        restores_images=True,
        build=build,
        finish=finish,
    )


def build_joint(denoiser, regressor, image_scaler, *, psf_input: bool = False):
    """The denoiser and the regressor as one model, trained together (the reference's proposal).

    The noisy image in counts is scaled as the denoiser was trained, restored, read back in counts
    and measured by the regressor; both the restored image and the labels are outputs, so the
    training can weight a loss on each.

    Parameters
    ----------
    denoiser : keras.Model
        A denoiser (input ``image``, output ``denoised``, in ``image_scaler``'s units), usually trained.
    regressor : keras.Model
        The Xception (input ``image`` in counts, and ``psf`` with ``psf_input``).
    image_scaler : galparam.data.MinMaxScaler
        The denoiser's image scaling.
    psf_input : bool
        Whether the regressor takes the PSF image.

    Returns
    -------
    keras.Model
        Inputs ``image`` (and ``psf``); outputs ``labels`` and ``denoised`` (a mapping).
    """
    import keras
    from keras import layers

    scale, offset = (float(v[0]) for v in image_scaler.affine())
    image = keras.Input(shape=denoiser.input_shape[1:], name="image")
    restored = denoiser(layers.Rescaling(scale, offset, name="to_denoiser_units")(image))
    counts = layers.Rescaling(1.0 / scale, -offset / scale, name="to_counts")(restored)
    inputs = image
    if psf_input:
        psf = keras.Input(shape=denoiser.input_shape[1:], name="psf")
        inputs = [image, psf]
        labels = regressor([counts, psf])
    else:
        labels = regressor(counts)
    outputs = {
        "labels": layers.Identity(name="labels")(labels),
        OUTPUT_NAME: layers.Identity(name=OUTPUT_NAME)(restored),
    }
    return keras.Model(inputs, outputs, name="denoised_xception")
