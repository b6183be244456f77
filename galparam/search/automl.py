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

import hashlib
from pathlib import Path

import numpy as np

from galparam import __version__
from galparam.data import MinMaxScaler, with_channel
from galparam.io import atomic_path, write_json_atomic
from galparam.render import LABEL_NAMES
from galparam.search.common import BEST_FILE, open_results
from galparam.specs import SearchSpec

PROJECT = "autokeras"


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


def run_autokeras(spec: SearchSpec, output, *, force: bool = False, verbose=0) -> dict:
    """Run (or resume) the AutoKeras search of ``spec``; write the best hyperparameters and model.

    Returns
    -------
    dict
        The best trial's hyperparameters and ``val_loss`` (also in ``best_hyperparameters.json``).
    """
    import autokeras as ak
    import keras

    from galparam.train import _Data

    experiment = spec.experiment
    data = _Data(experiment)
    folder = open_results(output, spec, force=force)
    scaler = MinMaxScaler((-1.0, 1.0), names=LABEL_NAMES).fit(data.dataset.label[data.train])
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
        "model": "best/model.keras",
    }
    model = auto.export_model()
    run_dir = folder / "best"
    with atomic_path(run_dir / "model.keras", suffix=".keras") as tmp:
        model.save(tmp)
    scaler.save(run_dir / "scaler.json")
    write_json_atomic(
        run_dir / "run.json",
        {
            "complete": True,
            "galparam_version": __version__,
            "name": f"{spec.name}-best",
            "family": "autokeras",
            "psf_input": False,
            "images": experiment.images,
            "image_shape": list(data.images.shape[1:]),
            "label_names": list(LABEL_NAMES),
            "hyperparameters": best["hyperparameters"],
            "parameters": int(model.count_params()),
            "dataset": data.describe(),
            "model_sha256": hashlib.sha256((run_dir / "model.keras").read_bytes()).hexdigest(),
        },
    )
    _write_validation_metrics(run_dir, model, scaler, x_val, data.dataset.label[data.val])
    write_json_atomic(folder / BEST_FILE, best)
    return best


def _write_validation_metrics(run_dir: Path, model, scaler, x_val, y_val) -> None:
    from galparam.evaluate.metrics import estimator_metrics

    predicted = scaler.inverse_transform(np.asarray(model.predict(x_val, verbose=0)))
    table = estimator_metrics(y_val, predicted)
    labels = {name: {k: float(v) for k, v in row.items()} for name, row in table.iterrows()}
    write_json_atomic(run_dir / "metrics.json", {"split": "validation", "n_images": len(x_val), "labels": labels})
