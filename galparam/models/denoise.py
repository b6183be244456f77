"""What the denoiser families (:mod:`~galparam.models.edsr`, :mod:`~galparam.models.rdn`) share.

A denoiser restores a noisy image to the noiseless one at the same size (no upsampling), after
Madireddy et al. (2019) as the reference tried it. It works in the run's image scaling: the noisy
image and the noiseless target are both mapped by the noiseless images' min-max scaler (fitted on
the training split, noiseless range → [0, 1]), so the noise keeps its shape and the network's
output is read back in counts by the same scaler. The network predicts a correction added to its
input (global residual learning): the identity is where it starts, and what it must beat.
"""

from __future__ import annotations

import keras
from keras import layers

from galparam.errors import GalparamError
from galparam.models.common import FamilyHyperModel

INPUT_NAME = "image"
OUTPUT_NAME = "denoised"


def check_whole(**values) -> None:
    """Raise :class:`GalparamError` unless every value is a whole number >= 1."""
    for name, value in values.items():
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            raise GalparamError(f"{name} {value!r}: accepted whole numbers >= 1")


def restoration_input(input_shape):
    """The denoiser's input (the noisy image in the run's image scaling)."""
    if len(input_shape) != 3 or input_shape[-1] != 1:
        raise GalparamError(f"input_shape {tuple(input_shape)}: a denoiser takes (height, width, 1)")
    return keras.Input(shape=tuple(input_shape), name=INPUT_NAME)


def restoration_output(image, features, kernel_size: int = 3):
    """The restored image: one convolution of ``features`` to a correction, added to the input."""
    correction = layers.Conv2D(1, kernel_size, padding="same", name="correction")(features)
    return layers.Add(name=OUTPUT_NAME)([image, correction])


class DenoiserHyperModel(FamilyHyperModel):
    """Base of the denoisers' HyperModels: MAE (the EDSR paper's loss) unless the spec says mse.

    Subclasses set ``FAMILY``, ``SPACE`` and ``BUILDER`` (the plain builder).
    """

    DEFAULT_LOSS = "mae"
    BUILDER = None

    def build(self, hp):
        args, lr = self.choose(hp)
        model = type(self).BUILDER(self.input_shape, **args)
        return self.compile(model, lr)


def build_joint(denoiser: keras.Model, regressor: keras.Model, image_scaler, *, psf_input: bool = False) -> keras.Model:
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
