"""EDSR (Lim et al. 2017) as a same-size denoiser, as a plain builder and a KerasTuner HyperModel.

A head convolution, ``num_res_blocks`` residual blocks (convolution, ReLU, convolution, scaled by
``res_scaling``, added to the block's input, no batch normalization), a convolution closing the
body with a skip from the head, and a convolution to the correction that is added to the noisy
input (:mod:`galparam.models.denoise`). The upsampler of super-resolution is left out.

Parameters: 10F + B·2(9F² + F) + 9F² + F + 9F + 1 for F filters and B blocks (3×3 kernels):
628,993 at the default F = 64, B = 8, and 19,477,505 at the reference's run (F = 256, B = 16,
residual scaling 0.1).
"""

from __future__ import annotations

from galparam.interval import Interval
from galparam.models.denoise import denoiser_family, restoration_input, restoration_output
from galparam.models.family import WHOLE_POSITIVE, Hyperparameter

REFERENCE_RUN = {"num_filters": 256, "num_res_blocks": 16, "res_scaling": 0.1}
"""The configuration the reference trained (MAE, Adam 1e-4)."""


def _res_block(x, filters, scaling, index):
    from keras import layers

    y = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"block{index}_conv1")(x)
    y = layers.Conv2D(filters, 3, padding="same", name=f"block{index}_conv2")(y)
    if scaling:
        y = layers.Rescaling(scaling, name=f"block{index}_scale")(y)
    return layers.Add(name=f"block{index}_add")([x, y])


def build_edsr(input_shape=(64, 64, 1), **arguments):
    """Build the EDSR denoiser (uncompiled).

    Parameters
    ----------
    input_shape : tuple of int
        (height, width, 1) of the image.
    **arguments
        The family's builder arguments (the defaults for those not given): ``num_filters``
        (feature maps of every convolution but the last), ``num_res_blocks`` (residual blocks in
        the body), ``res_scaling`` (factor on each block's residual before it is added, 0: none,
        in [0, 1]; EDSR used 0.1 for its widest models to keep training stable).

    Returns
    -------
    keras.Model
        Input ``image``, output ``denoised`` of the same shape.

    Raises
    ------
    GalparamError
        An unknown argument, or a value outside what it accepts.
    """
    import keras
    from keras import layers

    a = FAMILY.check_arguments(arguments)
    image = restoration_input(input_shape)
    head = layers.Conv2D(a["num_filters"], 3, padding="same", name="head")(image)
    x = head
    for i in range(a["num_res_blocks"]):
        x = _res_block(x, a["num_filters"], a["res_scaling"], i)
    x = layers.Conv2D(a["num_filters"], 3, padding="same", name="body_end")(x)
    x = layers.Add(name="body_skip")([head, x])
    return keras.Model(image, restoration_output(image, x), name="edsr")


FAMILY = denoiser_family(
    "edsr",
    "EDSR (Lim et al. 2017) as a same-size denoiser: noisy → noiseless image",
    (
        Hyperparameter("num_filters", 64, (16, 32, 64, 128, 256), WHOLE_POSITIVE, whole=True),
        Hyperparameter("num_res_blocks", 8, (2, 4, 8, 16), WHOLE_POSITIVE, whole=True),
        Hyperparameter("res_scaling", 0.0, (0.0, 0.1), Interval.closed(0.0, 1.0)),
    ),
    build_edsr,
)
"""The EDSR family; its defaults are the EDSR baseline's size (64 filters, 8 blocks) that the
reference's code defaults to, ``res_scaling`` 0 meaning none (its full run: :data:`REFERENCE_RUN`)."""
