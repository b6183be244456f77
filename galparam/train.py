"""Training runs: an experiment spec in, a self-contained run folder out (see :mod:`galparam.runs`).

One loop trains every family: the stages its declaration lists (:mod:`galparam.models`), each
built and compiled by the family's HyperModel as in a search, each fed the data columns its
stage declares. The Xception trains in one stage (``xception``, or ``denoiser_xception`` together
with a denoiser under ``joint: true``; with a ``denoiser`` run it measures that denoiser's restored
images, kept in the run folder); the autoencoder in up to three, as the reference did: ``encoder``
(noisy image → labels), ``decoder`` (labels → noiseless image), ``joint`` (loss weights 5 : 1,
learning rate reduced on plateaus); a denoiser (EDSR, RDN) in one, ``denoiser`` (noisy → noiseless
image). Each stage checkpoints every epoch and resumes from its last checkpoint; each epoch's
shuffling is drawn from (seed, epoch), so a resumed run sees the same batches as one that never
stopped.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from galparam import backend, pipelines
from galparam.data import MinMaxScaler, column_range, with_channel
from galparam.device_draw import DeviceDrawer
from galparam.errors import GalparamError, TrainingError
from galparam.estimator import Denoiser, Estimator, load_denoiser
from galparam.evaluate import ood
from galparam.evaluate.fitbox import FitBox
from galparam.evaluate.metrics import estimator_metrics
from galparam.evaluate.restoration import restoration_metrics
from galparam.evaluate.uncertainty import coverage, fit_calibration
from galparam.io import atomic_path, write_json_atomic, write_text_atomic
from galparam.models import FAMILIES, resolve_hyperparameters
from galparam.models.compile import register_losses
from galparam.models.family import Family, Stage
from galparam.models.hypermodel import hypermodel
from galparam.models.losses import TARGET_KEYS, target_transform
from galparam.parameters import LABEL_NAMES
from galparam.pipelines import batches, column_names, generator_batches
from galparam.runs import ExperimentData, RunFolder
from galparam.specs import ExperimentSpec


def default_run_dir(spec: ExperimentSpec) -> Path:
    """``runs/NAME`` in the working folder."""
    return Path("runs") / spec.name


def _save_model(model, path: Path) -> None:
    with atomic_path(path, suffix=".keras") as tmp:
        model.save(tmp)


# ----------------------------------------------------------------------------- stages


class _EpochCheckpoint:
    """Per-epoch bookkeeping of one stage: checkpoint, history, early stopping, plateau schedule.

    Everything lives in ``state.json`` (written last each epoch), so a resumed stage continues
    with the same best loss, patience count and learning rate as one that never stopped.
    """

    def __init__(
        self,
        stage: str,
        run: RunFolder,
        state: dict,
        spec: ExperimentSpec,
        history,
        *,
        plateau: bool,
        deadline: float | None = None,
    ):
        import keras

        outer = self

        class Callback(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                outer._start = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                outer.end_epoch(self.model, epoch, logs or {})

        self.callback = Callback()
        self.stage, self.run, self.state, self.spec, self.history, self.plateau = (
            stage,
            run,
            state,
            spec,
            history,
            plateau,
        )
        self.dir = run.stage_dir(stage)
        self.deadline = deadline
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
        _write_history(self.run, self.history)
        s["epochs_done"] = done
        patience_out = bool(self.spec.patience) and s["wait"] >= self.spec.patience
        # another epoch as long as this one would end past the deadline: stop at a whole epoch
        if self.deadline is not None and not patience_out and done < self.spec.epochs:
            if time.monotonic() + (time.perf_counter() - self._start) > self.deadline:
                s["stopped_by_deadline"] = True
        write_json_atomic(self.dir / "state.json", s)
        keep = {f"epoch-{s['best_epoch']:03d}.keras"} | {
            f"epoch-{e:03d}.keras" for e in range(done - self.spec.keep_checkpoints + 1, done + 1)
        }
        for old in self.dir.glob("epoch-*.keras"):
            if old.name not in keep:
                old.unlink()
        if patience_out or s.get("stopped_by_deadline"):
            model.stop_training = True


def _write_history(run: RunFolder, rows: list) -> None:
    with atomic_path(run.history_path, suffix=".csv") as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)


def _read_history(run: RunFolder, states: dict) -> list:
    """Rows of committed epochs only (the history is written just before the state)."""
    path = run.history_path
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


def _run_stage(
    stage, run, spec, strategy, build, datasets, history, *, plateau=False, verbose="auto", deadline=None, prepare=None
):
    """Train one stage to its end (or load it if it finished), returning the model with its best weights.

    ``prepare(model)``, if given, is called on the built or reloaded model before it trains (images
    drawn on the device: :meth:`galparam.device_draw.DeviceDrawer.attach`)."""
    import keras

    register_losses()  # a checkpoint compiled with one of galparam's losses loads only once it is known
    stage_dir = run.stage_dir(stage)
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
        state.pop("stopped_by_deadline", None)  # a resumed stage has a new deadline, or none
        train_ds, val_ds, steps, val_steps = datasets(start)
        checkpoint = _EpochCheckpoint(stage, run, state, spec, history, plateau=plateau, deadline=deadline)
        if prepare is not None:
            prepare(model)
        if verbose:
            print(f"stage {stage}: epochs {start + 1}..{spec.epochs}", flush=True)
        model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=spec.epochs,
            initial_epoch=start,
            steps_per_epoch=steps,
            validation_steps=val_steps,
            shuffle=False,  # the pipelines shuffle, reproducibly; Keras would reorder a PyDataset's batches
            # a non-TensorFlow pipeline learns each epoch's number from its callbacks
            callbacks=[keras.callbacks.TerminateOnNaN(), checkpoint.callback, *getattr(train_ds, "callbacks", [])],
            verbose=verbose,
        )
        backend.restore_allocator()
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


# ----------------------------------------------------------------------------- data


@dataclass
class Scalers:
    """The label scaler (to the family's label range) and the noiseless-image scaler (families that
    scale images), fitted on the training split."""

    label: MinMaxScaler | None
    image: MinMaxScaler | None = None

    @classmethod
    def fit(cls, family: Family, data: ExperimentData) -> Scalers:
        label = None
        if family.label_range is not None:
            label = MinMaxScaler(family.label_range, names=LABEL_NAMES).fit(data.dataset.label[data.fit_rows])
        image = None
        if family.scales_images:
            low, high = column_range(data.dataset.img_nonoise, data.fit_rows)
            image = MinMaxScaler((0.0, 1.0), names=["pixel"]).fit([[low], [high]])
        return cls(label, image)

    @classmethod
    def for_run(
        cls, run: RunFolder, family: Family, data: ExperimentData, *, image: MinMaxScaler | None = None
    ) -> Scalers:
        """The run's saved scalers, or new ones saved into it (a resumed run keeps its scaling).

        ``image`` gives the image scaler instead of fitting one (a joint run takes its denoiser's).
        """
        label_path = run.scaler_path if family.label_range is not None else None
        if (label_path or run.image_scaler_path).exists():
            saved = MinMaxScaler.load(run.image_scaler_path) if run.image_scaler_path.exists() else None
            return cls(MinMaxScaler.load(label_path) if label_path else None, saved)
        scalers = cls.fit(family, data)
        if image is not None:
            scalers.image = image
        if scalers.image is not None:
            scalers.image.save(run.image_scaler_path)
        if label_path:
            scalers.label.save(label_path)
        return scalers


def label_target(loss: str, scalers: Scalers) -> tuple:
    """The data key and transform of the ``labels`` target: the scaled labels, or for galparam's
    label losses the labels with what the loss reads besides (:mod:`galparam.models.losses`)."""
    if loss in TARGET_KEYS:
        return TARGET_KEYS[loss], target_transform(loss, scalers.label)
    return "label", scalers.label.transform if scalers.label is not None else None


def stage_columns(stage: Stage, data: ExperimentData, scalers: Scalers):
    """A stage's pipeline columns (model input or output name → the data's key and a transform),
    and its inputs and targets (a name, or a tuple of names where there are several).

    The columns a stage declares (:class:`~galparam.models.family.Stage`):

    * ``images``: the experiment's images (noisy, or noiseless with ``images: noiseless``);
    * ``measured_images``: what the regressor measures: a two-stage run's restored images, else ``images``;
    * ``images_in_image_units``, ``clean_in_image_units``: the images and the noiseless images in the
      run's image scaling, unclipped (a denoiser's: the noise keeps its shape);
    * ``clean_scaled``: the noiseless images in the image scaling, clipped to [0, 1] (a sigmoid's range);
    * ``labels``: the labels in the label scaling; ``psf``: the PSF images.
    """

    def scale_image(block, clip=True):
        flat = scalers.image.transform(block.reshape(-1, 1)).reshape(block.shape)
        return with_channel(np.clip(flat, 0.0, 1.0) if clip else flat)

    images = (data.image_key, with_channel)
    unclipped = partial(scale_image, clip=False)
    sources = {
        "images": images,
        "measured_images": ("denoised", with_channel) if data.denoised is not None else images,
        "images_in_image_units": (data.image_key, unclipped),
        "clean_in_image_units": ("img_nonoise", unclipped),
        "clean_scaled": ("img_nonoise", scale_image),
        "labels": label_target(data.spec.loss, scalers),
        "psf": ("psf_img", with_channel),
    }
    inputs = dict(stage.inputs)
    if stage.takes_psf and data.psf_input:
        inputs["psf"] = "psf"
    columns = {name: sources[kind] for name, kind in (*inputs.items(), *stage.targets.items())}

    def names(mapping):
        return next(iter(mapping)) if len(mapping) == 1 else tuple(mapping)

    return columns, names(inputs), names(stage.targets)


def stage_pipelines(stage: Stage, spec: ExperimentSpec, data: ExperimentData, scalers: Scalers, first_epoch: int = 0):
    """The training and validation pipelines of one stage (``tf.data`` under TensorFlow, see
    :func:`galparam.pipelines.batches`).

    Training images come from the dataset's training split (shuffled each epoch) or, on the fly,
    fresh from its spec (:mod:`galparam.fresh`); validation images from the fixed split.

    Returns
    -------
    train, validation : tf.data.Dataset or iterator of batches
    steps, validation_steps : int
    """
    columns, inputs, targets = stage_columns(stage, data, scalers)
    arrays = {name: (data.column(key), transform) for name, (key, transform) in columns.items()}
    val_ds = batches(arrays, inputs, targets, data.val, spec.batch_size)
    val_steps = math.ceil(len(data.val) / spec.batch_size)
    if data.fresh is not None and spec.draw_on == "device":  # keys only: the step draws the images
        train_ds = pipelines.SampleBatches(data.fresh.images_per_epoch, spec.batch_size, first_epoch=first_epoch)
        return train_ds, val_ds, data.fresh.steps_per_epoch, val_steps
    if data.fresh is not None:
        ordered = {name: columns[name] for name in column_names(inputs, targets)}
        shapes = [transform(data.column(key)[:1]).shape[1:] for key, transform in ordered.values()]
        train_ds = generator_batches(
            lambda: data.fresh.batches(ordered, first_epoch),
            shapes,
            inputs,
            targets,
            steps=data.fresh.steps_per_epoch,
            first_epoch=first_epoch,
        )
        return train_ds, val_ds, data.fresh.steps_per_epoch, val_steps
    train_ds = batches(
        arrays, inputs, targets, data.train, spec.batch_size, shuffle_seed=spec.seed, first_epoch=first_epoch
    )
    return train_ds, val_ds, math.ceil(len(data.train) / spec.batch_size), val_steps


def search_pipelines(spec: ExperimentSpec, data: ExperimentData):
    """``pipelines(first_epoch)`` of a search trial: the family's search stage (scalers fitted on
    the training split)."""
    family = FAMILIES[spec.family]
    scalers = Scalers.fit(family, data)
    stage = family.stage(family.search_stage)
    return lambda first_epoch=0: stage_pipelines(stage, spec, data, scalers, first_epoch)


# ----------------------------------------------------------------------------- the run


def _device_drawer(spec: ExperimentSpec, family: Family, data: ExperimentData) -> DeviceDrawer | None:
    """The drawer of an experiment whose fresh images are drawn on the device (``draw_on: device``),
    checked: Keras's JAX backend, a spec the device draws, stages that take images to labels."""
    if spec.draw_on != "device":
        return None
    for stage in family.stages_of(spec):
        kinds = set(stage.inputs.values()) | set(stage.targets.values())
        if kinds - {"images", "measured_images", "labels"} or (stage.takes_psf and data.psf_input):
            raise TrainingError(
                f"{spec.source}: dataset: draw_on: device draws images and labels; stage {stage.name} also needs "
                f"{', '.join(sorted(kinds - {'images', 'measured_images', 'labels'}) or ['PSF images'])} "
                "(use draw_on: host)"
            )
    try:
        return DeviceDrawer(data.dataset_spec, data.dataset_spec.seed)
    except GalparamError as exc:
        raise TrainingError(f"{spec.source}: dataset: draw_on: device: {exc}") from None


def _check_replicas(strategy, spec: ExperimentSpec, data: ExperimentData) -> None:
    """Refuse a batch that the devices cannot share evenly (each gets an equal slice of every batch)."""
    replicas = strategy.num_replicas_in_sync
    if replicas == 1 or spec.strategy != "data_parallel":
        return
    sizes = {"batch_size": spec.batch_size, "the validation split's last batch": len(data.val) % spec.batch_size}
    if data.fresh is None:
        sizes["the training split's last batch"] = len(data.train) % spec.batch_size
    else:
        sizes["an epoch's last batch of fresh images"] = data.fresh.images_per_epoch % spec.batch_size
    for what, size in sizes.items():
        if size % replicas:
            raise TrainingError(
                f"strategy data_parallel over {replicas} devices: {what} is {size} images, not a multiple of "
                f"{replicas}; choose batch_size (and max_images) so that every batch splits evenly"
            )


def restoration_validation(denoiser, data: ExperimentData) -> dict:
    """A denoiser's validation metrics: residual RMS, PSNR and SSIM of the restored and the noisy images."""
    noisy, clean = data.images[data.val], data.dataset.img_nonoise[data.val]
    return restoration_metrics(noisy, denoiser.denoise(noisy), clean)


def restore_dataset(run: RunFolder, data: ExperimentData, denoiser, *, progress: bool = True) -> None:
    """Restore the experiment's images by ``denoiser`` once, into the run folder (reused on
    resume), and give them to ``data``.

    Raises
    ------
    TrainingError
        If the run started on another denoiser model (the denoiser was trained again since).
    """
    path = run.denoised_path(denoiser.model_sha256)
    others = [p for p in run.path.glob("denoised-*.npy") if p != path]
    if others:
        raise TrainingError(
            f"{run.path}: started on another denoiser model ({others[0].name}); {denoiser.name} has changed "
            "since: train this run again (overwrite)"
        )
    if not path.exists():
        images = denoiser.denoise(data.images[: data.n], progress=progress)
        with atomic_path(path, suffix=".npy") as tmp:
            np.save(tmp, images, allow_pickle=False)
    data.use_denoised(np.load(path, mmap_mode="r", allow_pickle=False))


def validation_predictions(estimator: Estimator, data: ExperimentData):
    """The network's estimates (N, 5) of the validation split and, with an uncertainty head, their
    uncalibrated covariances (else None): predicted once for the metrics, the calibration and the
    training range."""
    psf = data.dataset.psf_images(data.val) if estimator.psf_input else None
    return estimator.predict_distribution(data.images[data.val], psf, calibrated=False)


def validation_metrics(estimates, data: ExperimentData) -> dict:
    """Per-label RMSE, bias, standard deviation and explained variance of the validation split's ``estimates``."""
    table = estimator_metrics(data.dataset.label[data.val], estimates)
    return {name: {k: float(v) for k, v in row.items()} for name, row in table.iterrows()}


def training_range(estimates, data: ExperimentData) -> dict:
    """What the out-of-distribution flags compare with (:mod:`galparam.evaluate.ood`): the training
    images' noise σ, PSF FWHM and SNR ranges, and the validation images' χ² per pixel under the
    model re-drawn from the network's ``estimates`` (its 99th percentile)."""
    ds, val = data.dataset, data.val
    box = FitBox.from_spec(data.dataset_spec)
    models = ood.redraw(estimates, ds.psf_fwhm[val], data.dataset_spec.geometry, box)
    poisson = data.dataset_spec.poisson_noise
    chi2 = ood.chi2_per_pixel(ds.img[val], models, ds.sigma[val], poisson=poisson)
    measured = ood.chi2_per_pixel(ds.img[val], models, ood.border_sigma(ds.img[val]), poisson=poisson)
    return ood.training_range(ds, data.fit_rows, chi2, box, chi2_border_sigma=measured)


def geometry(data: ExperimentData) -> dict:
    """The images' geometry and noise model (``run.json``'s ``geometry``)."""
    spec = data.dataset_spec
    psf = {} if spec.psf is None else {"psf": "images"}  # trained on a file's PSF images, not the Moffat
    return {**spec.geometry.to_dict(), "poisson_noise": spec.poisson_noise, **psf}


def calibrate(run: RunFolder, estimator: Estimator, data: ExperimentData, mean, cov) -> dict:
    """Fit the run's calibration (one factor per label on the predicted spreads ``cov``, uncalibrated,
    of the validation split), save ``calibration.json`` and give it to ``estimator``; return the
    coverage of the validation split before and after (what ``metrics.json``'s ``uncertainty`` holds)."""
    truth = data.dataset.label[data.val]
    std = np.sqrt(np.diagonal(cov, axis1=1, axis2=2))
    factors, intervals = fit_calibration(truth, mean, std)
    write_json_atomic(
        run.calibration_path,
        {
            "method": (
                "one factor per label on the predicted standard deviations: the one whose 68 % and 95 %"
                " intervals come closest to their nominal coverage (largest deviation over sqrt(p (1 - p)))"
            ),
            "split": "validation",
            "n_images": len(data.val),
            "factors": dict(zip(LABEL_NAMES, map(float, factors), strict=True)),
            "intervals": {
                f"{round(100 * level)}": dict(zip(LABEL_NAMES, map(float, f), strict=True))
                for level, f in intervals.items()
            },
            "intervals_method": "per level, the factor on the uncalibrated std whose central interval covers that level",
        },
    )
    estimator.calibration, estimator.interval_calibration = factors, intervals
    before, after = coverage(truth, mean, std), coverage(truth, mean, std * factors)
    per_level = coverage(truth, mean, std * factors, interval_scale=estimator.interval_scale)
    return {
        "kind": estimator.uncertainty,
        "calibration_factors": dict(zip(LABEL_NAMES, map(float, factors), strict=True)),
        "coverage_uncalibrated": before.to_dict(orient="index"),
        "coverage_calibrated_on_this_split": after.to_dict(orient="index"),
        "coverage_of_the_calibrated_intervals_on_this_split": per_level.to_dict(orient="index"),
    }


def train(
    spec: ExperimentSpec,
    output=None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    verbose="auto",
    deadline: float | None = None,
) -> Path:
    """Train an experiment into a run folder (see :mod:`galparam.runs` for what it holds).

    Parameters
    ----------
    spec : ExperimentSpec
        The experiment (:func:`galparam.specs.load_experiment`).
    output : path-like, optional
        The run folder; default ``runs/NAME``.
    resume : bool
        Continue an interrupted run in ``output`` from its last checkpoint; a run of the same
        experiment that has finished there is returned as it is (nothing is trained).
    overwrite : bool
        Remove a run that is in ``output`` and train from scratch.
    verbose : {"auto", 0, 1, 2}
        Keras' progress output.
    deadline : float, optional
        A :func:`time.monotonic` time: a stage begins no epoch that would end past it (judged by
        the epoch before), and finishes with its best epoch so far, as early stopping does
        (``stopped_by_deadline`` in ``run.json``'s stages). Each stage trains at least one epoch.
        The run is then finished: ``resume`` returns it as it is.

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
    run = RunFolder(output if output is not None else default_run_dir(spec))
    family = FAMILIES[spec.family]
    hp, lr = resolve_hyperparameters(spec)
    data = ExperimentData(spec, on_the_fly=True)
    denoiser = None
    if spec.denoiser is not None:  # checked before the folder is touched
        denoiser = load_denoiser(spec.denoiser)
    strategy = backend.strategy(spec.strategy)
    _check_replicas(strategy, spec, data)  # before the run folder is touched
    drawer = _device_drawer(spec, family, data)  # before the run folder is touched
    state = run.prepare(spec.to_yaml(), source=spec.source, resume=resume, overwrite=overwrite)
    if state == "finished":
        if run.info()["dataset"]["spec_sha256"] != data.spec_digest:
            raise TrainingError(
                f"{run.path}: finished on another version of {spec.dataset.name} (its spec differs); "
                "give another output folder"
            )
        return run.path
    backend.make_deterministic()
    started = time.perf_counter()
    if state == "new":
        run.path.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run.spec_path, spec.to_yaml())
    stages = family.stages_of(spec)
    history = _read_history(run, {s.name: _read_state(run.stage_dir(s.name)) for s in stages})
    extra = {}
    with data:
        data.show_progress = verbose != 0
        data.materialize(run.path, progress=verbose != 0)
        if denoiser is not None:
            restore_dataset(run, data, denoiser, progress=verbose != 0)
            extra = {"denoiser": denoiser.describe(spec.denoiser), "joint": spec.joint}
        hm = hypermodel(spec, data, fixed={**hp, "learning_rate": lr}, denoiser=denoiser)
        scalers = Scalers.for_run(run, family, data, image=denoiser.image_scaler if spec.joint else None)
        trained = {}
        with backend.distributing(strategy):
            for stage in stages:
                trained[stage.name] = _run_stage(
                    stage.name,
                    run,
                    spec,
                    strategy,
                    partial(hm.build_fixed, stage.name, dict(trained)),
                    partial(stage_pipelines, stage, spec, data, scalers),
                    history,
                    plateau=stage.plateau,
                    verbose=verbose,
                    deadline=deadline,
                    prepare=None
                    if drawer is None
                    else partial(drawer.attach, image_key=data.image_key, label_affine=scalers.label.affine()),
                )
        with strategy.scope():
            model = hm.finish(trained)
        _save_model(model, run.model_path)
        if family.restores_images:
            restorer = Denoiser(model, scalers.image, name=spec.name, family=spec.family)
            run.write_metrics({}, len(data.val), images=restoration_validation(restorer, data))
        else:
            estimator = Estimator(
                model,
                family.name,
                scalers.label,
                scalers.image if family.decoder else None,
                psf_input=data.psf_input,
                denoiser=None if spec.joint else denoiser,
                uncertainty=spec.uncertainty,
            )
            uncertainty = None
            estimates, cov = validation_predictions(estimator, data)
            if cov is not None:
                uncertainty = calibrate(run, estimator, data, estimates, cov)
                extra["uncertainty"] = spec.uncertainty
            run.write_metrics(validation_metrics(estimates, data), len(data.val), uncertainty=uncertainty)
            extra.update(geometry=geometry(data))
            if data.dataset_spec.stamp_model:  # the model re-drawn from an estimate needs a centre and sky
                extra.update(ood="none: the network does not estimate the stamp model's centre and sky")
            else:
                extra.update(training_range=training_range(estimates, data))
    states = {s.name: _read_state(run.stage_dir(s.name)) for s in stages}
    run.write_info(
        name=spec.name,
        family=spec.family,
        data=data,
        hyperparameters=hp,
        model=model,
        learning_rate=lr,
        stages={
            s: {
                "epochs": st["epochs_done"],
                "best_epoch": st["best_epoch"],
                "best_val_loss": st["best"],
                "stopped_by_deadline": bool(st.get("stopped_by_deadline", False)),
            }
            for s, st in states.items()
        },
        seconds_this_session=round(time.perf_counter() - started, 1),
        **extra,
    )
    return run.path
