"""Model builders: shapes, the reference's parameter counts, the search spaces."""

import json

import keras_tuner
import numpy as np
import pytest

from galparam.errors import GalparamError
from galparam.models import FAMILIES
from galparam.models.autoencoder import build_autoencoder, build_decoder, build_encoder
from galparam.models.compile import CompileSettings
from galparam.models.heads import loss_for
from galparam.models.hypermodel import FamilyHyperModel, hypermodel
from galparam.models.xception import build_xception
from galparam.specs import experiment_from_dict


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
    hm = FamilyHyperModel("xception", fixed={"num_residual_blocks": 1, "sep_num_filters": 8, "conv2d_num_filters": 4})
    hp = keras_tuner.HyperParameters()
    model = hm.build(hp)
    assert model.optimizer is not None and set(hp.values) >= {"learning_rate", "kernel_size", "activation"}
    assert hp.values["num_residual_blocks"] == 1
    # what is not fixed starts at the family's default, among its search choices
    family = FAMILIES["xception"]
    for h in family.hyperparameters:
        if h.name not in hm.fixed:
            assert hp.values[h.name] == h.default and h.default in h.choices, h.name
    with pytest.raises(GalparamError, match="unknown xception hyperparameters"):
        FamilyHyperModel("xception", fixed={"filters": 3})


class _Data:
    """What :func:`galparam.models.hypermodel` reads of an experiment's data."""

    image_shape = (64, 64, 1)
    psf_input = False

    def adapt_samples(self):
        return {"normalize_image": np.random.default_rng(0).normal(size=(4, 64, 64, 1)).astype(np.float32)}


@pytest.mark.parametrize(
    "family, settings, loss, weights",
    [
        ("xception", {"optimizer": "rmsprop", "learning_rate": 0.003, "loss": "mae"}, "mae", None),
        (
            "autoencoder",
            {"optimizer": "sgd", "learning_rate": 0.02, "loss": "mse", "loss_weights": [2.0, 3.0]},
            {"labels": "mse", "image": "mse"},
            {"labels": 2.0, "image": 3.0},
        ),
    ],
)
def test_a_tune_trial_compiles_with_the_specs_optimizer_rate_loss_and_weights(family, settings, loss, weights):
    """KerasTuner's trials used to hard-code Adam, the family's loss and 5:1 weights, whatever the spec said."""
    small = {"xception": {"num_residual_blocks": 1, "sep_num_filters": 8}, "autoencoder": {"base_filters": 4}}
    spec = experiment_from_dict(
        {"name": "t", "family": family, "dataset": "x.npz", "hyperparameters": small[family], **settings}
    )
    model = hypermodel(spec, _Data()).build(keras_tuner.HyperParameters())
    config = model.get_compile_config()
    assert type(model.optimizer).__name__.lower() == settings["optimizer"]
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(settings["learning_rate"])
    assert config["loss"] == loss and config["loss_weights"] == weights


def test_the_learning_rate_is_searched_only_where_the_spec_leaves_it_open():
    small = {"num_residual_blocks": 1, "sep_num_filters": 8}
    kinds = {}
    for rate in (None, 0.01):
        spec = experiment_from_dict({"name": "t", "family": "xception", "dataset": "x.npz", "learning_rate": rate})
        hp = keras_tuner.HyperParameters()
        hypermodel(spec, _Data(), fixed=small).build(hp)
        kinds[rate] = {type(p).__name__ for p in hp.space if p.name == "learning_rate"}
    assert kinds == {None: {"Float"}, 0.01: {"Fixed"}}


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


def test_autoencoder_stages_compile_their_own_losses():
    hm = FamilyHyperModel("autoencoder", fixed={"base_filters": 4, "dense_units": 16})
    hp = keras_tuner.HyperParameters()
    encoder = hm.build_stage("encoder", hp)
    decoder = hm.build_stage("decoder", hp)
    joint = hm.build_stage("joint", hp, {"encoder": encoder, "decoder": decoder})
    assert encoder.name == "encoder" and decoder.name == "decoder"
    assert encoder.get_compile_config()["loss"] == "binary_crossentropy"
    config = joint.get_compile_config()
    assert config["loss"] == {"labels": "binary_crossentropy", "image": "binary_crossentropy"}
    assert config["loss_weights"] == {"labels": 5.0, "image": 1.0}  # the reference's weights by default
    assert joint.get_layer("encoder") is encoder and joint.get_layer("decoder") is decoder


@pytest.mark.parametrize("kind, units", [("diagonal", 10), ("full", 20)])
def test_an_autoencoder_with_an_uncertainty_head_decodes_its_means(kind, units):
    encoder = build_encoder(base_filters=4, dense_units=16, uncertainty=kind)
    decoder = build_decoder(base_filters=4, dense_units=16)
    ae = build_autoencoder(encoder, decoder)
    images = np.random.default_rng(1).normal(size=(3, 64, 64, 1)).astype(np.float32)
    out = ae.predict(images, verbose=0)
    assert out["labels"].shape == (3, units) and out["image"].shape == (3, 64, 64, 1)
    means = out["labels"][:, :5]
    assert ((means >= 0) & (means <= 1)).all()
    # the image is the decoder's of the means alone
    np.testing.assert_allclose(out["image"], decoder.predict(means, verbose=0), atol=1e-5)
    hm = FamilyHyperModel(
        "autoencoder", fixed={"base_filters": 4, "dense_units": 16}, settings=CompileSettings(uncertainty=kind)
    )
    hp = keras_tuner.HyperParameters()
    stage = hm.build_stage("encoder", hp)
    assert stage.output.shape[-1] == units and stage.loss is loss_for(kind)
    joint = hm.build_stage("joint", hp, {"encoder": stage, "decoder": hm.build_stage("decoder", hp)})
    assert (
        joint.loss["labels"] is loss_for(kind) and joint.get_compile_config()["loss"]["image"] == "binary_crossentropy"
    )


NEW_FAMILY = """
import sys
from galparam import models
from galparam.interval import Interval
from galparam.models.family import Family, Hyperparameter, Stage


def build(stage, arguments, context, trained):
    import keras
    from keras import layers

    image = keras.Input(shape=context.input_shape, name="image")
    x = layers.Flatten()(layers.Normalization(axis=None, name="normalize_image")(image))
    x = layers.Dense(arguments["units"], activation="relu")(x)
    model = keras.Model(image, layers.Dense(5, name="labels")(x), name="dense")
    context.adapt(model)
    return model


FAMILY = Family(
    name="dense",
    summary="a dense regressor: the image, flattened, through one hidden layer",
    hyperparameters=(Hyperparameter("units", 16, (8, 16, 32), Interval(1, float("inf")), whole=True),),
    stages=(Stage("dense", inputs={"image": "measured_images"}, targets={"labels": "labels"}, losses={"labels": "labels"}),),
    search_stage="dense",
    default_loss="mse",
    label_range=(-1.0, 1.0),
    build=build,
    finish=lambda trained, arguments, context: trained["dense"],
)
models.FAMILIES[FAMILY.name] = FAMILY  # the registry's line

from galparam.estimator import load_estimator  # what the rest of galparam reads, loaded after it
from galparam.specs import experiment_from_dict
from galparam.train import train

spec = experiment_from_dict(
    {"name": "d", "family": "dense", "dataset": sys.argv[1], "hyperparameters": {"units": 8}, "epochs": 1, "max_images": 200}
)
run = train(spec, sys.argv[2], verbose=0)
print(load_estimator(run).predict(__import__("numpy").zeros((2, 64, 64))).shape)
"""


@pytest.mark.slow  # a process that loads TensorFlow and trains
def test_a_new_family_is_its_declaration_and_a_line_in_the_registry(datasets, tmp_path):
    """What docs/contributing.md shows: a family declared in its own module and registered trains,
    is checked by the spec loader and predicts through the estimator, with nothing else edited."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", NEW_FAMILY, str(datasets["fixed"]), str(tmp_path / "run")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "(2, 5)"
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["family"] == "dense" and info["hyperparameters"] == {"units": 8}
