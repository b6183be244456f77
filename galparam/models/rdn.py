"""RDN (Zhang et al. 2018), the residual dense network, as a same-size denoiser: a plain builder
and a KerasTuner HyperModel.

Two shallow convolutions; ``num_blocks`` residual dense blocks, each of ``num_layers``
densely connected convolutions (3×3, ReLU, ``growth_rate`` maps each), a 1×1 local fusion back to
``num_features`` maps and a local residual; global feature fusion (1×1 over all blocks' outputs,
then 3×3) with a skip from the first convolution; and a convolution to the correction added to
the noisy input (:mod:`galparam.models.denoise`). No upsampler.

The reference's configuration (20 blocks of 6 convolutions, growth 32, 64 maps) has 5,466,497
parameters here (1 channel, no upsampler): per block 9G·(C·G0 + G·C(C−1)/2) + C·G + (G0 + C·G)·G0 + G0.
"""

from __future__ import annotations

from galparam.models.denoise import denoiser_family, restoration_input, restoration_output
from galparam.models.family import WHOLE_POSITIVE, Hyperparameter

REFERENCE_RUN = {"num_features": 64, "num_blocks": 20, "num_layers": 6, "growth_rate": 32}
"""The configuration the reference trained."""


def _dense_block(x, features, layers_per_block, growth, index):
    from keras import layers

    inputs = [x]
    for c in range(layers_per_block):
        joined = inputs[0] if len(inputs) == 1 else layers.Concatenate(name=f"rdb{index}_cat{c}")(inputs)
        inputs.append(layers.Conv2D(growth, 3, padding="same", activation="relu", name=f"rdb{index}_conv{c}")(joined))
    fused = layers.Conv2D(features, 1, name=f"rdb{index}_fusion")(layers.Concatenate(name=f"rdb{index}_cat")(inputs))
    return layers.Add(name=f"rdb{index}_add")([x, fused])


def build_rdn(input_shape=(64, 64, 1), **arguments):
    """Build the RDN denoiser (uncompiled).

    Parameters
    ----------
    input_shape : tuple of int
        (height, width, 1) of the image.
    **arguments
        The family's builder arguments (the defaults for those not given): ``num_features``
        (feature maps between blocks, G0), ``num_blocks`` (residual dense blocks, D),
        ``num_layers`` (convolutions in each block, C), ``growth_rate`` (maps each convolution of
        a block adds, G).

    Returns
    -------
    keras.Model
        Input ``image``, output ``denoised`` of the same shape.

    Raises
    ------
    GalparamError
        An unknown argument, or a value that is not a whole number >= 1.
    """
    import keras
    from keras import layers

    a = FAMILY.check_arguments(arguments)
    features = a["num_features"]
    image = restoration_input(input_shape)
    shallow = layers.Conv2D(features, 3, padding="same", name="shallow1")(image)
    x = layers.Conv2D(features, 3, padding="same", name="shallow2")(shallow)
    outputs = []
    for d in range(a["num_blocks"]):
        x = _dense_block(x, features, a["num_layers"], a["growth_rate"], d)
        outputs.append(x)
    joined = outputs[0] if a["num_blocks"] == 1 else layers.Concatenate(name="global_cat")(outputs)
    x = layers.Conv2D(features, 1, name="global_fusion1")(joined)
    x = layers.Conv2D(features, 3, padding="same", name="global_fusion2")(x)
    x = layers.Add(name="global_skip")([shallow, x])
    return keras.Model(image, restoration_output(image, x), name="rdn")


FAMILY = denoiser_family(
    "rdn",
    "RDN (Zhang et al. 2018), the residual dense network, as a same-size denoiser",
    (
        Hyperparameter("num_features", 32, (16, 32, 64), WHOLE_POSITIVE, whole=True),
        Hyperparameter("num_blocks", 4, (2, 4, 8, 20), WHOLE_POSITIVE, whole=True),
        Hyperparameter("num_layers", 4, (3, 4, 6), WHOLE_POSITIVE, whole=True),
        Hyperparameter("growth_rate", 16, (8, 16, 32), WHOLE_POSITIVE, whole=True),
    ),
    build_rdn,
)
"""The RDN family; its defaults are a size a CPU trains in minutes (the reference's: :data:`REFERENCE_RUN`)."""
