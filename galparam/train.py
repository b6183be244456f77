"""Training runs: an experiment spec in, a self-contained run folder out.

A run folder holds::

    experiment.yaml     the resolved spec (written first: the folder is a run from then on)
    scaler.json         label scaling ([-1, 1] for Xception, [0, 1] for the autoencoder)
    image_scaler.json   the autoencoder's noiseless-image scaling
    checkpoints/STAGE/  epoch-NNN.keras each epoch (the last few and the best), state.json, final.keras
    history.csv         one row per epoch and stage
    model.keras         the trained model (best validation loss of each stage)
    metrics.json        per label, in physical units, on the validation split
    run.json            written last: the run is complete only when it exists

Xception trains in one stage (``xception``); the autoencoder in up to three, as the reference
did: ``encoder`` (noisy image → labels), ``decoder`` (labels → noiseless image), ``joint``
(the autoencoder, loss weights 5 : 1, learning rate reduced on plateaus). Each stage checkpoints
every epoch and resumes from its last checkpoint; each epoch's shuffling is drawn from (seed,
epoch), so a resumed run sees the same batches as one that never stopped.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd

from galparam import __version__
from galparam.data import (
    MinMaxScaler,
    column_range,
    load_dataset,
    split_indices,
    spread_sample,
    tf_dataset,
    with_channel,
)
from galparam.errors import GalparamError, SpecError
from galparam.estimator import IMAGE_SCALER_FILE, MODEL_FILE, RUN_FILE, SCALER_FILE, Estimator
from galparam.io import atomic_path, write_json_atomic, write_text_atomic
from galparam.render import LABEL_NAMES
from galparam.specs import ExperimentSpec

SPEC_FILE = "experiment.yaml"
HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"
CHECKPOINTS = "checkpoints"
ADAPT_SAMPLE = 10_000  # images the Normalization layers are adapted on


class TrainingError(GalparamError):
    """Training could not go on (diverged to NaN, a run folder in the way)."""


# ----------------------------------------------------------------------------- preparation


def default_run_dir(spec: ExperimentSpec) -> Path:
    """``runs/NAME`` in the working folder."""
    return Path("runs") / spec.name


def resolve_hyperparameters(spec: ExperimentSpec) -> tuple[dict, float]:
    """The builder arguments and learning rate of an experiment, checked against its family.

    A learning rate in the hyperparameters (a search's result) is used unless the spec gives one.

    Raises
    ------
    SpecError
        On a hyperparameter the family's builder does not take.
    """
    from galparam.models import autoencoder, xception

    defaults = (xception if spec.family == "xception" else autoencoder).DEFAULTS
    hp = dict(spec.hyperparameters)
    unknown = sorted(set(hp) - set(defaults) - {"learning_rate"})
    if unknown:
        raise SpecError(
            f"{spec.source}: hyperparameters: unknown {spec.family} argument {unknown[0]!r}; "
            f"accepted: {', '.join([*defaults, 'learning_rate'])}"
        )
    lr = hp.pop("learning_rate", None)
    if spec.learning_rate is not None:
        lr = spec.learning_rate
    lr = 1e-3 if lr is None else float(lr)
    if not 0 < lr <= 1:
        raise SpecError(f"{spec.source}: learning_rate {lr}: accepted (0, 1]")
    return {**defaults, **hp}, lr


class _Data:
    """The experiment's dataset (memory-mapped), split and checked against the model."""

    def __init__(self, spec: ExperimentSpec):
        try:
            ds = load_dataset(spec.dataset, mmap=True)
        except GalparamError as exc:
            recipe = spec.dataset.with_suffix(".yaml")
            hint = (
                f"; make it with: galparam-simulate {recipe}" if not spec.dataset.exists() and recipe.exists() else ""
            )
            raise GalparamError(f"{spec.source}: dataset: {exc}{hint}") from None
        self.dataset = ds
        self.n = min(len(ds), spec.max_images or len(ds))
        fraction = spec.validation_fraction if spec.validation_fraction is not None else ds.spec.validation_fraction
        self.train, self.val = split_indices(self.n, fraction)
        if len(self.val) == 0 or len(self.train) < 2:
            raise GalparamError(
                f"{spec.source}: {self.n} images with validation fraction {fraction} leave "
                f"{len(self.train)} to train and {len(self.val)} to validate; both need images"
            )
        self.images = ds.img if spec.images == "noisy" else ds.img_nonoise
        if spec.family == "autoencoder" and spec.psf_input is True:
            raise GalparamError(f"{spec.source}: psf_input: the autoencoder takes no PSF input")
        psf = spec.psf_input if spec.psf_input != "auto" else (ds.psf_varies and spec.family == "xception")
        if psf and not ds.psf_varies:
            raise GalparamError(
                f"{spec.source}: psf_input is true but {spec.dataset.name} has one PSF for all images "
                "(a PSF input needs a dataset whose PSF varies, like v3)"
            )
        self.psf_input = bool(psf)

    def describe(self) -> dict:
        path = self.dataset.path
        return {
            "path": str(path),
            "name": self.dataset.spec.name,
            "spec_sha256": self.dataset.spec.digest(),
            "bytes": path.stat().st_size,
            "images_used": int(self.n),
            "train": int(len(self.train)),
            "validation": int(len(self.val)),
        }


def _prepare_run_dir(run_dir: Path, spec: ExperimentSpec, resume: bool) -> str:
    """Check what the folder holds: "new", "resume" (a started run to continue) or "finished"."""
    spec_file = run_dir / SPEC_FILE
    finished = (run_dir / RUN_FILE).exists()
    if finished and not resume:
        raise TrainingError(f"{run_dir}: a finished run is there; choose another --output or remove it")
    if spec_file.exists():
        if not resume:
            raise TrainingError(f"{run_dir}: holds an unfinished run; pass --resume to continue it, or remove it")
        if spec_file.read_text() != spec.to_yaml():
            raise TrainingError(
                f"{run_dir}: was started from a different experiment (compare {spec_file} with {spec.source}); "
                "choose another --output"
            )
        return "finished" if finished else "resume"
    if run_dir.exists() and any(run_dir.iterdir()):
        raise TrainingError(f"{run_dir}: exists and is not a galparam run; choose another --output")
    return "new"


def _strategy(name: str | None):
    import os

    import tensorflow as tf

    if name is None:
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if "TF_CONFIG" not in os.environ:
        raise TrainingError("strategy multi_worker needs TF_CONFIG describing the cluster (see tf.distribute)")
    return tf.distribute.MultiWorkerMirroredStrategy()


def _optimizer(spec: ExperimentSpec, lr: float):
    import keras

    return {
        "adam": keras.optimizers.Adam,
        "adamw": keras.optimizers.AdamW,
        "rmsprop": keras.optimizers.RMSprop,
        "sgd": keras.optimizers.SGD,
    }[spec.optimizer](learning_rate=lr)


def _compile_joint(model, spec: ExperimentSpec, lr: float):
    """The joint autoencoder: the spec's loss on both outputs, weighted labels : image."""
    model.compile(
        optimizer=_optimizer(spec, lr),
        loss={"labels": spec.loss, "image": spec.loss},
        loss_weights=dict(zip(("labels", "image"), spec.loss_weights, strict=True)),
    )
    return model


def _save_model(model, path: Path) -> None:
    with atomic_path(path, suffix=".keras") as tmp:
        model.save(tmp)


# ----------------------------------------------------------------------------- stages


class _EpochCheckpoint:
    """Per-epoch bookkeeping of one stage: checkpoint, history, early stopping, plateau schedule.

    Everything lives in ``state.json`` (written last each epoch), so a resumed stage continues
    with the same best loss, patience count and learning rate as one that never stopped.
    """

    def __init__(self, stage: str, stage_dir: Path, state: dict, spec: ExperimentSpec, history, *, plateau: bool):
        import keras

        outer = self

        class Callback(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                outer._start = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                outer.end_epoch(self.model, epoch, logs or {})

        self.callback = Callback()
        self.stage, self.dir, self.state, self.spec, self.history, self.plateau = (
            stage,
            stage_dir,
            state,
            spec,
            history,
            plateau,
        )
        self.diverged = False
        self._start = time.perf_counter()

    def end_epoch(self, model, epoch: int, logs: dict) -> None:

        losses = [logs.get("loss"), logs.get("val_loss")]
        if any(v is None or not math.isfinite(v) for v in losses):
            self.diverged = True
            model.stop_training = True
            return
        s, done = self.state, epoch + 1
        lr = float(model.optimizer.learning_rate.numpy())
        row = {"stage": self.stage, "epoch": done, **{k: float(v) for k, v in logs.items()}}
        row.update(learning_rate=lr, seconds=round(time.perf_counter() - self._start, 3))
        if logs["val_loss"] < s["best"]:
            s.update(best=float(logs["val_loss"]), best_epoch=done, wait=0, lr_wait=0)
        else:
            s["wait"] += 1
            s["lr_wait"] += 1
            if self.plateau and s["lr_wait"] >= self.spec.lr_patience:
                model.optimizer.learning_rate.assign(lr * self.spec.lr_factor)
                s["lr_wait"] = 0
        _save_model(model, self.dir / f"epoch-{done:03d}.keras")
        self.history.append(row)
        _write_history(self.dir.parent.parent, self.history)
        s["epochs_done"] = done
        write_json_atomic(self.dir / "state.json", s)
        keep = {f"epoch-{s['best_epoch']:03d}.keras"} | {
            f"epoch-{e:03d}.keras" for e in range(done - self.spec.keep_checkpoints + 1, done + 1)
        }
        for old in self.dir.glob("epoch-*.keras"):
            if old.name not in keep:
                old.unlink()
        if self.spec.patience and s["wait"] >= self.spec.patience:
            model.stop_training = True


def _write_history(run_dir: Path, rows: list) -> None:
    with atomic_path(run_dir / HISTORY_FILE, suffix=".csv") as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)


def _read_history(run_dir: Path, states: dict) -> list:
    """Rows of committed epochs only (the history is written just before the state)."""
    path = run_dir / HISTORY_FILE
    if not path.exists():
        return []
    rows = pd.read_csv(path).to_dict("records")
    return [
        {k: v for k, v in r.items() if not (isinstance(v, float) and math.isnan(v))}
        for r in rows
        if r["epoch"] <= states.get(r["stage"], {}).get("epochs_done", 0)
    ]


def _read_state(stage_dir: Path) -> dict:
    path = stage_dir / "state.json"
    if path.exists():
        return json.loads(path.read_text())
    return {"epochs_done": 0, "best": math.inf, "best_epoch": 0, "wait": 0, "lr_wait": 0, "done": False}


def _run_stage(stage, run_dir, spec, strategy, build, datasets, history, *, plateau=False, verbose="auto"):
    """Train one stage to its end (or load it if it finished), returning the model with its best weights."""
    import keras

    stage_dir = run_dir / CHECKPOINTS / stage
    stage_dir.mkdir(parents=True, exist_ok=True)
    state = _read_state(stage_dir)
    if state["done"]:
        with strategy.scope():
            return keras.models.load_model(stage_dir / "final.keras")
    start = state["epochs_done"]
    keras.utils.set_random_seed(spec.seed + 1000 * start)
    with strategy.scope():
        model = keras.models.load_model(stage_dir / f"epoch-{start:03d}.keras") if start else build()
    if start < spec.epochs:
        train_ds, val_ds, steps, val_steps = datasets(start)
        checkpoint = _EpochCheckpoint(stage, stage_dir, state, spec, history, plateau=plateau)
        if verbose:
            print(f"stage {stage}: epochs {start + 1}..{spec.epochs}", flush=True)
        model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=spec.epochs,
            initial_epoch=start,
            steps_per_epoch=steps,
            validation_steps=val_steps,
            callbacks=[keras.callbacks.TerminateOnNaN(), checkpoint.callback],
            verbose=verbose,
        )
        if checkpoint.diverged:
            raise TrainingError(
                f"stage {stage} diverged (NaN or infinite loss) in epoch {state['epochs_done'] + 1}; "
                "lower the learning_rate, then run again with --resume"
            )
    with strategy.scope():
        best = keras.models.load_model(stage_dir / f"epoch-{state['best_epoch']:03d}.keras")
    model.set_weights(best.get_weights())
    _save_model(model, stage_dir / "final.keras")
    state["done"] = True
    write_json_atomic(stage_dir / "state.json", state)
    return model


# ----------------------------------------------------------------------------- families


def _adapt(layer, array, indices) -> None:
    sample = spread_sample(indices, ADAPT_SAMPLE)
    layer.adapt(with_channel(array[np.sort(sample)]))


def _xception_parts(spec, data, hp, lr, scaler):
    """The Xception's builder (compiled, normalization adapted) and its pipeline columns."""
    from galparam.models.xception import build_xception

    image_shape = (*data.images.shape[1:], 1)

    def build():
        model = build_xception(image_shape, psf_input=data.psf_input, **hp)
        _adapt(model.get_layer("normalize_image"), data.images, data.train)
        if data.psf_input:
            _adapt(model.get_layer("normalize_psf"), data.dataset.psf_img, data.train)
        model.compile(optimizer=_optimizer(spec, lr), loss="mse")
        return model

    columns = {"image": (data.images, with_channel), "labels": (data.dataset.label, scaler.transform)}
    if data.psf_input:
        columns["psf"] = (data.dataset.psf_img, with_channel)
    return build, columns, ("image", "psf") if data.psf_input else "image", "labels"


def _fit_image_scaler(data) -> MinMaxScaler:
    low, high = column_range(data.dataset.img_nonoise, data.train)
    return MinMaxScaler((0.0, 1.0), names=["pixel"]).fit([[low], [high]])


def _autoencoder_columns(data, scaler, image_scaler) -> dict:
    def scale_image(block):
        flat = image_scaler.transform(block.reshape(-1, 1)).reshape(block.shape)
        return with_channel(np.clip(flat, 0.0, 1.0))

    return {
        "image": (data.images, with_channel),
        "noisy_image": (data.images, with_channel),
        "labels": (data.dataset.label, scaler.transform),
        "clean": (data.dataset.img_nonoise, scale_image),
    }


def search_parts(spec: ExperimentSpec, data: _Data, hp: dict, lr: float):
    """What a search trial trains: a builder of the compiled model and its pipelines.

    The Xception as in training; the autoencoder as its joint model (stages are a training
    refinement, not a different architecture).

    Returns
    -------
    build : callable
        Returns a new compiled model.
    pipelines : callable
        ``pipelines(first_epoch)`` → (train, validation, steps, validation steps).
    """
    if spec.family == "xception":
        scaler = MinMaxScaler((-1.0, 1.0), names=LABEL_NAMES).fit(data.dataset.label[data.train])
        build, columns, inputs, targets = _xception_parts(spec, data, hp, lr, scaler)
    else:
        from galparam.models.autoencoder import build_autoencoder, build_decoder, build_encoder

        scaler = MinMaxScaler((0.0, 1.0), names=LABEL_NAMES).fit(data.dataset.label[data.train])
        columns = _autoencoder_columns(data, scaler, _fit_image_scaler(data))
        columns["image"] = columns["clean"]
        inputs, targets = "noisy_image", ("labels", "image")
        image_shape = (*data.images.shape[1:], 1)

        def build():
            encoder = build_encoder(image_shape, **hp)
            _adapt(encoder.get_layer("normalize_image"), data.images, data.train)
            decoder = build_decoder(
                output_shape=image_shape, base_filters=hp["base_filters"], dense_units=hp["dense_units"]
            )
            return _compile_joint(build_autoencoder(encoder, decoder), spec, lr)

    return build, lambda first_epoch=0: _pipelines(spec, columns, inputs, targets, data, first_epoch)


def _train_xception(spec, run_dir, data, strategy, hp, lr, history, verbose):
    scaler = _label_scaler(run_dir, data, (-1.0, 1.0))
    build, columns, inputs, targets = _xception_parts(spec, data, hp, lr, scaler)

    def datasets(first_epoch):
        return _pipelines(spec, columns, inputs, targets, data, first_epoch)

    model = _run_stage("xception", run_dir, spec, strategy, build, datasets, history, verbose=verbose)
    estimator = Estimator(model, "xception", scaler, psf_input=data.psf_input)
    return model, estimator, {"xception": _read_state(run_dir / CHECKPOINTS / "xception")}


def _train_autoencoder(spec, run_dir, data, strategy, hp, lr, history, verbose):
    from galparam.models.autoencoder import build_autoencoder, build_decoder, build_encoder

    scaler = _label_scaler(run_dir, data, (0.0, 1.0))
    image_scaler_path = run_dir / IMAGE_SCALER_FILE
    if image_scaler_path.exists():
        image_scaler = MinMaxScaler.load(image_scaler_path)
    else:
        image_scaler = _fit_image_scaler(data)
        image_scaler.save(image_scaler_path)
    image_shape = (*data.images.shape[1:], 1)
    loss = spec.loss
    columns = _autoencoder_columns(data, scaler, image_scaler)
    args = {k: hp[k] for k in ("base_filters", "dense_units")}

    def build_enc():
        encoder = build_encoder(image_shape, **hp)
        _adapt(encoder.get_layer("normalize_image"), data.images, data.train)
        return encoder

    models = {"encoder": None, "decoder": None}

    def encoder():
        return build_enc() if models["encoder"] is None else models["encoder"]

    def decoder():
        return build_decoder(output_shape=image_shape, **args) if models["decoder"] is None else models["decoder"]

    def encoder_stage():
        model = encoder()
        model.compile(optimizer=_optimizer(spec, lr), loss=loss)
        return model

    def decoder_stage():
        model = decoder()
        model.compile(optimizer=_optimizer(spec, lr), loss=loss)
        return model

    def joint_stage():
        return _compile_joint(build_autoencoder(encoder(), decoder()), spec, lr)

    plan = {
        "encoder": (encoder_stage, "image", "labels"),
        "decoder": (decoder_stage, "labels", "clean"),
        "joint": (joint_stage, "noisy_image", ("labels", "clean")),
    }
    for stage in spec.stages:
        build, inputs, targets = plan[stage]
        stage_columns = dict(columns)
        if stage == "decoder":  # the decoder's input is the scaled truth, its output the image
            stage_columns = {"labels": columns["labels"], "image": columns["clean"]}
            targets = "image"
        elif stage == "joint":
            stage_columns["image"] = columns["clean"]
            targets = ("labels", "image")

        def datasets(first_epoch, c=stage_columns, i=inputs, t=targets):
            return _pipelines(spec, c, i, t, data, first_epoch)

        model = _run_stage(
            stage, run_dir, spec, strategy, build, datasets, history, plateau=stage == "joint", verbose=verbose
        )
        if stage == "joint":
            models["encoder"], models["decoder"] = model.get_layer("encoder"), model.get_layer("decoder")
        else:
            models[stage] = model
    with strategy.scope():
        model = build_autoencoder(encoder(), decoder())
    estimator = Estimator(model, "autoencoder", scaler, image_scaler)
    return model, estimator, {s: _read_state(run_dir / CHECKPOINTS / s) for s in spec.stages}


def _label_scaler(run_dir: Path, data: _Data, feature_range) -> MinMaxScaler:
    path = run_dir / SCALER_FILE
    if path.exists():
        return MinMaxScaler.load(path)
    scaler = MinMaxScaler(feature_range, names=LABEL_NAMES).fit(data.dataset.label[data.train])
    scaler.save(path)
    return scaler


def _pipelines(spec, columns, inputs, targets, data, first_epoch):
    train_ds = tf_dataset(
        columns, inputs, targets, data.train, spec.batch_size, shuffle_seed=spec.seed, first_epoch=first_epoch
    )
    val_ds = tf_dataset(columns, inputs, targets, data.val, spec.batch_size)
    steps = math.ceil(len(data.train) / spec.batch_size), math.ceil(len(data.val) / spec.batch_size)
    return train_ds, val_ds, *steps


# ----------------------------------------------------------------------------- the run


def validation_metrics(estimator: Estimator, data: _Data) -> dict:
    """Per-label RMSE, bias, standard deviation and explained variance on the validation split."""
    from galparam.evaluate.metrics import estimator_metrics

    psf = data.dataset.psf_img[data.val] if estimator.psf_input else None
    predicted = estimator.predict(data.images[data.val], psf)
    table = estimator_metrics(data.dataset.label[data.val], predicted.to_numpy())
    return {name: {k: float(v) for k, v in row.items()} for name, row in table.iterrows()}


def train(spec: ExperimentSpec, output=None, *, resume: bool = False, verbose="auto") -> Path:
    """Train an experiment into a run folder (see the module docstring for what it holds).

    Parameters
    ----------
    spec : ExperimentSpec
        The experiment (:func:`galparam.specs.load_experiment`).
    output : path-like, optional
        The run folder; default ``runs/NAME``.
    resume : bool
        Continue an interrupted run in ``output`` from its last checkpoint; a run of the same
        experiment that has finished there is returned as it is (nothing is trained).
    verbose : {"auto", 0, 1, 2}
        Keras' progress output.

    Returns
    -------
    Path
        The finished run folder.

    Raises
    ------
    GalparamError
        Before any training: a spec whose hyperparameters the family does not take, a missing
        or invalid dataset, a PSF input without PSF images, too few images, a folder in the way.
        During training: a loss that turns NaN.
    """
    import tensorflow as tf

    run_dir = Path(output) if output is not None else default_run_dir(spec)
    hp, lr = resolve_hyperparameters(spec)
    data = _Data(spec)
    state = _prepare_run_dir(run_dir, spec, resume)
    if state == "finished":
        trained_on = json.loads((run_dir / RUN_FILE).read_text())["dataset"]["spec_sha256"]
        if trained_on != data.dataset.spec.digest():
            raise TrainingError(
                f"{run_dir}: finished on another version of {data.dataset.path.name} (its spec differs); "
                "choose another --output"
            )
        return run_dir
    resuming = state == "resume"
    strategy = _strategy(spec.strategy)
    tf.config.experimental.enable_op_determinism()
    started = time.perf_counter()
    if not resuming:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / SPEC_FILE, spec.to_yaml())
    stage_names = ("xception",) if spec.family == "xception" else spec.stages
    history = _read_history(run_dir, {s: _read_state(run_dir / CHECKPOINTS / s) for s in stage_names})
    family = _train_xception if spec.family == "xception" else _train_autoencoder
    model, estimator, states = family(spec, run_dir, data, strategy, hp, lr, history, verbose)

    _save_model(model, run_dir / MODEL_FILE)
    metrics = validation_metrics(estimator, data)
    write_json_atomic(run_dir / METRICS_FILE, {"split": "validation", "n_images": len(data.val), "labels": metrics})
    info = {
        "complete": True,
        "galparam_version": __version__,
        "name": spec.name,
        "family": spec.family,
        "psf_input": data.psf_input,
        "images": spec.images,
        "image_shape": list(data.images.shape[1:]),
        "label_names": list(LABEL_NAMES),
        "hyperparameters": hp,
        "learning_rate": lr,
        "parameters": int(model.count_params()),
        "dataset": data.describe(),
        "stages": {
            s: {"epochs": st["epochs_done"], "best_epoch": st["best_epoch"], "best_val_loss": st["best"]}
            for s, st in states.items()
        },
        "seconds_this_session": round(time.perf_counter() - started, 1),
        "model_sha256": hashlib.sha256((run_dir / MODEL_FILE).read_bytes()).hexdigest(),
    }
    write_json_atomic(run_dir / RUN_FILE, info)
    return run_dir
