"""Model builders: shapes, the reference's parameter counts, the search spaces."""

import keras
import keras_tuner
import numpy as np
import pytest

from galparam.errors import GalparamError
from galparam.models.autoencoder import AutoencoderHyperModel, build_autoencoder, build_decoder, build_encoder
from galparam.models.xception import XceptionHyperModel, build_xception


@pytest.mark.parametrize("sep, expected", [(64, 109_304), (384, 3_479_224)])
def test_xception_parameter_counts_match_the_reference(sep, expected):
    model = build_xception(conv2d_num_filters=16, sep_num_filters=sep, num_residual_blocks=8)
    assert model.count_params() == expected


def test_xception_shapes_with_and_without_psf():
    model = build_xception(
        conv2d_num_filters=4, sep_num_filters=8, num_residual_blocks=1, activation="relu", pooling="max"
    )
    out = model.predict(np.zeros((3, 64, 64, 1), np.float32), verbose=0)
    assert out.shape == (3, 5)
    with_psf = build_xception(conv2d_num_filters=4, sep_num_filters=8, num_residual_blocks=1, psf_input=True)
    assert [i.name for i in with_psf.inputs] == ["image", "psf"]
    out = with_psf.predict({"image": np.zeros((2, 64, 64, 1)), "psf": np.zeros((2, 64, 64, 1))}, verbose=0)
    assert out.shape == (2, 5)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"activation": "tanh"}, "activation"),
        ({"pooling": "sum"}, "pooling"),
        ({"dropout_rate": 1.0}, "dropout_rate"),
        ({"kernel_size": 0}, "kernel_size"),
    ],
)
def test_xception_rejects_bad_arguments(kwargs, words):
    with pytest.raises(GalparamError, match=words):
        build_xception(**kwargs)


def test_xception_hypermodel_builds_from_its_space():
    hm = XceptionHyperModel(fixed={"num_residual_blocks": 1, "sep_num_filters": 8, "conv2d_num_filters": 4})
    hp = keras_tuner.HyperParameters()
    model = hm.build(hp)
    assert model.optimizer is not None and set(hp.values) >= {"learning_rate", "kernel_size", "activation"}
    assert hp.values["num_residual_blocks"] == 1
    with pytest.raises(GalparamError, match="unknown Xception hyperparameters"):
        XceptionHyperModel(fixed={"filters": 3})


def test_autoencoder_shapes_and_shared_weights():
    encoder = build_encoder(base_filters=4, dense_units=16)
    decoder = build_decoder(base_filters=4, dense_units=16)
    ae = build_autoencoder(encoder, decoder)
    out = ae.predict(np.random.default_rng(0).normal(size=(2, 64, 64, 1)).astype(np.float32), verbose=0)
    assert out["labels"].shape == (2, 5) and out["image"].shape == (2, 64, 64, 1)
    assert (
        (out["labels"] >= 0).all()
        and (out["labels"] <= 1).all()
        and (out["image"] >= 0).all()
        and (out["image"] <= 1).all()
    )
    assert ae.count_params() == encoder.count_params() + decoder.count_params()
    with pytest.raises(GalparamError, match="power of 2"):
        build_encoder((60, 60, 1))


def test_autoencoder_hypermodel_compiles_two_weighted_losses():
    model = AutoencoderHyperModel(fixed={"base_filters": 4, "dense_units": 16}).build(keras_tuner.HyperParameters())
    assert isinstance(model, keras.Model) and model.optimizer is not None
    assert set(model.output.keys() if isinstance(model.output, dict) else []) == {"labels", "image"}
