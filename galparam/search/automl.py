"""AutoKeras: an image regressor searched over vanilla, ResNet and Xception blocks.

AutoKeras 3.0.0 runs with Keras 3.12.4 (pinned in ``setup.cfg``; newer Keras rejects its
regression head). Its ``ImageBlock`` may pick ImageNet-pretrained weights (a download) and
224-pixel resizing, and searches EfficientNet too; :class:`ImageBlock` below is the documented
shim: the same block restricted to the configured block types, never pretrained, never augmented,
never enlarged to ImageNet size, with input normalization.

The best model is exported as a galparam run folder (``best/``: ``model.keras``, ``scaler.json``,
``run.json``), so ``galparam.load_estimator``, ``galparam-evaluate predict`` and ``report`` take it.
"""

from __future__ import annotations

import numpy as np

from galparam.backend import require_tensorflow
from galparam.data import with_channel
from galparam.evaluate.metrics import estimator_metrics
from galparam.io import atomic_path, write_json_atomic
from galparam.models import FAMILIES
from galparam.parameters import LABEL_NAMES
from galparam.runs import AUTOKERAS_FAMILY, ExperimentData, RunFolder
from galparam.search.common import BEST_FILE, open_results
from galparam.specs import SearchSpec
from galparam.train import Scalers

PROJECT = "autokeras"
BEST_RUN = "best"
"""The results folder's subfolder that holds the best model as a galparam run folder."""


def _image_block_class():
    import autokeras as ak
    from autokeras.blocks import basic, preprocessing

    class ImageBlock(ak.ImageBlock):
        """``ak.ImageBlock`` over ``block_types`` only; no pretrained weights, augmentation or 224-px resizing."""

        def __init__(self, block_types=("vanilla", "resnet", "xception"), **kwargs):
            super().__init__(normalize=True, augment=False, **kwargs)
            self.block_types = list(block_types)

        def get_config(self):
            return {**super().get_config(), "block_types": self.block_types}

        def build(self, hp, inputs=None):
            node = preprocessing.Normalization().build(hp, inputs[0] if isinstance(inputs, list) else inputs)
            block_type = hp.Choice("block_type", self.block_types)
            blocks = {
                "vanilla": basic.ConvBlock,
                "resnet": lambda: basic.ResNetBlock(pretrained=False),
                "xception": lambda: basic.XceptionBlock(pretrained=False),
            }
            with hp.conditional_scope("block_type", [block_type]):
                block = blocks[block_type]()
                if block_type != "vanilla":
                    with hp.name_scope(block.name):
                        hp.Fixed("imagenet_size", False)
                return block.build(hp, node)

    return ImageBlock


def run_autokeras(spec: SearchSpec, output, *, overwrite: bool = False, verbose=0) -> dict:
    """Run (or resume) the AutoKeras search of ``spec``; write the best hyperparameters and model.

    Returns
    -------
    dict
        The best trial's hyperparameters and ``val_loss`` (also in ``best_hyperparameters.json``).

    Raises
    ------
    TrainingError
        On a Keras backend other than TensorFlow (AutoKeras needs ``tf.data``).
    """
    require_tensorflow("the AutoKeras search (galparam-search autokeras)")
    import autokeras as ak
    import keras

    experiment = spec.experiment
    data = ExperimentData(experiment)
    folder = open_results(output, spec, overwrite=overwrite)
    scaler = Scalers.fit(FAMILIES["xception"], data).label  # the regressor's scaling: labels to [-1, 1]
    x_train, x_val = (with_channel(data.images[i]) for i in (data.train, data.val))
    y_train, y_val = (scaler.transform(data.dataset.label[i]) for i in (data.train, data.val))

    keras.utils.set_random_seed(experiment.seed)
    head = ak.RegressionHead(output_dim=len(LABEL_NAMES), loss="mean_squared_error", metrics=[])
    node = ak.ImageInput()
    auto = ak.AutoModel(
        inputs=node,
        outputs=head(_image_block_class()(spec.block_types)(node)),
        project_name=PROJECT,
        directory=str(folder),
        max_trials=spec.max_trials,
        tuner=spec.tuner,
        objective="val_loss",
        overwrite=False,
        seed=experiment.seed,
    )
    callbacks = [keras.callbacks.EarlyStopping(patience=experiment.patience)] if experiment.patience else []
    auto.fit(
        x_train,
        y_train,
        validation_data=(x_val, y_val),
        epochs=experiment.epochs,
        batch_size=experiment.batch_size,
        callbacks=callbacks,
        verbose=verbose,
    )
    best_trial = auto.tuner.oracle.get_best_trials(1)[0]
    best = {
        "search": "autokeras",
        "tuner": spec.tuner,
        "hyperparameters": dict(best_trial.hyperparameters.values),
        "val_loss": best_trial.score,
        "trial": best_trial.trial_id,
    }
    model = auto.export_model()
    run = RunFolder(folder / BEST_RUN)
    best["model"] = f"{BEST_RUN}/{run.model_path.name}"
    with atomic_path(run.model_path, suffix=".keras") as tmp:
        model.save(tmp)
    scaler.save(run.scaler_path)
    predicted = scaler.inverse_transform(np.asarray(model.predict(x_val, verbose=0)))
    table = estimator_metrics(data.dataset.label[data.val], predicted)
    run.write_metrics({name: {k: float(v) for k, v in row.items()} for name, row in table.iterrows()}, len(x_val))
    run.write_info(
        name=f"{spec.name}-best",
        family=AUTOKERAS_FAMILY,
        data=data,
        hyperparameters=best["hyperparameters"],
        model=model,
    )
    write_json_atomic(folder / BEST_FILE, best)
    return best
