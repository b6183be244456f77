"""The run folder: its layout, its description (``run.json``), its validation split, and the
experiment's data it was trained on.

A run folder holds::

    experiment.yaml     the resolved spec (written first: the folder is a run from then on)
    scaler.json         label scaling ([-1, 1] for Xception, [0, 1] for the autoencoder; none for a denoiser)
    image_scaler.json   the noiseless-image scaling of the autoencoder and the denoisers
    calibration.json    an Xception with an uncertainty head: one scale per label on its predicted
                        spreads, fitted on the validation split
    denoised-SHA.npy    an Xception on a denoiser's images: the dataset's images it restored
                        (SHA: the first 12 hex digits of the denoiser model's SHA-256)
    checkpoints/STAGE/  epoch-NNN.keras each epoch (the last few and the best), state.json, final.keras
    validation.npz      on the fly (galparam.fresh): the fixed validation set, and its .csv
    history.csv         one row per epoch and stage
    model.keras         the trained model (best validation loss of each stage)
    metrics.json        per label, in physical units, on the validation split (a denoiser:
                        residual RMS, PSNR and SSIM of its images and of the noisy ones)
    run.json            written last: the run is complete only when it exists

Training (:mod:`galparam.train`), the AutoKeras export (:mod:`galparam.search.automl`), the
estimator, the report, the baseline and the study all go through :class:`RunFolder`; no other
module spells these names.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import yaml

from galparam import __version__
from galparam.data import load_dataset, split_indices, spread_sample, with_channel
from galparam.errors import GalparamError, Remedy, TrainingError
from galparam.evaluate.crb import dataset_bounds
from galparam.fresh import FreshImages, validation_spec
from galparam.io import write_json_atomic
from galparam.models import FAMILIES
from galparam.parameters import LABEL_NAMES
from galparam.simulate import simulate
from galparam.specs import load_spec

SPEC_FILE = "experiment.yaml"
SCALER_FILE = "scaler.json"
IMAGE_SCALER_FILE = "image_scaler.json"
CHECKPOINTS = "checkpoints"
HISTORY_FILE = "history.csv"
MODEL_FILE = "model.keras"
METRICS_FILE = "metrics.json"
RUN_FILE = "run.json"
VALIDATION_FILE = "validation.npz"
CALIBRATION_FILE = "calibration.json"

AUTOKERAS_FAMILY = "autokeras"
"""The family of an AutoKeras search's best model exported as a run (an image → labels regressor)."""

RUN_FAMILIES = (*FAMILIES, AUTOKERAS_FAMILY)
"""Families a run folder may hold: the model families, and the best model of an AutoKeras search."""

ADAPT_SAMPLE = 10_000
"""Training images the models' Normalization layers are adapted on."""


class RunFolder:
    """A training run's folder (see the module docstring for what it holds).

    Parameters
    ----------
    path : path-like
        The folder; it need not exist yet.
    """

    def __init__(self, path):
        self.path = Path(path)

    def __fspath__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # -- places ---------------------------------------------------------------------------------
    @property
    def spec_path(self) -> Path:
        return self.path / SPEC_FILE

    @property
    def scaler_path(self) -> Path:
        return self.path / SCALER_FILE

    @property
    def image_scaler_path(self) -> Path:
        return self.path / IMAGE_SCALER_FILE

    @property
    def history_path(self) -> Path:
        return self.path / HISTORY_FILE

    @property
    def validation_path(self) -> Path:
        """The fixed validation set of a run trained on the fly."""
        return self.path / VALIDATION_FILE

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def info_path(self) -> Path:
        return self.path / RUN_FILE

    @property
    def calibration_path(self) -> Path:
        return self.path / CALIBRATION_FILE

    def denoised_path(self, denoiser_sha256: str) -> Path:
        """The dataset's images as restored by the denoiser whose model has this SHA-256."""
        return self.path / f"denoised-{denoiser_sha256[:12]}.npy"

    def stage_dir(self, stage: str) -> Path:
        """Checkpoints and ``state.json`` of one training stage."""
        return self.path / CHECKPOINTS / stage

    @property
    def is_finished(self) -> bool:
        return self.info_path.exists()

    # -- reading --------------------------------------------------------------------------------
    def info(self) -> dict:
        """The run's description (``run.json``).

        Raises
        ------
        GalparamError
            If the folder is missing, the run unfinished, or ``run.json`` not a galparam run's.
        """
        if not self.path.is_dir():
            raise GalparamError(f"{self.path}: no such run folder")
        try:
            info = json.loads(self.info_path.read_text())
        except FileNotFoundError:
            unfinished = (
                " (an unfinished run: train it again with resume to continue it)" if self.spec_path.exists() else ""
            )
            raise GalparamError(f"{self.path}: not a finished galparam run, no {RUN_FILE}{unfinished}") from None
        except ValueError as exc:
            raise GalparamError(f"{self.info_path}: not JSON ({exc})") from None
        if not isinstance(info, dict) or info.get("family") not in RUN_FAMILIES or "dataset" not in info:
            raise GalparamError(f"{self.info_path}: not a galparam run description")
        return info

    def metrics(self) -> dict:
        """Validation metrics per label (``metrics.json``'s ``labels``; empty for a denoiser)."""
        return json.loads(self.metrics_path.read_text())["labels"]

    def restoration_metrics(self) -> dict:
        """A denoiser's validation metrics: ``{"noisy": {...}, "denoised": {...}}`` of residual
        RMS, PSNR and SSIM (``metrics.json``'s ``images``; empty for other runs)."""
        return json.loads(self.metrics_path.read_text()).get("images", {})

    def validation_indices(self, info: dict | None = None) -> np.ndarray:
        """Indices, in the run's dataset, of the images it was validated on (the split's tail)."""
        described = (info or self.info())["dataset"]
        used = described["images_used"]
        return np.arange(used - described["validation"], used)

    def model_sha256(self) -> str:
        return hashlib.sha256(self.model_path.read_bytes()).hexdigest()

    # -- writing --------------------------------------------------------------------------------
    def prepare(self, spec_yaml: str, *, source: str, resume: bool = False, overwrite: bool = False) -> str:
        """Check what the folder holds before training into it.

        Parameters
        ----------
        spec_yaml : str
            The resolved experiment (what ``experiment.yaml`` holds for this run).
        source : str
            The spec's file, for messages.
        resume : bool
            Continue a started run of the same experiment (a finished one is returned as "finished").
        overwrite : bool
            Remove a galparam run that is there and start again.

        Returns
        -------
        {"new", "resume", "finished"}

        Raises
        ------
        TrainingError
            A run is there and neither ``resume`` nor ``overwrite`` says what to do with it, or it is
            a run of another experiment, or the folder holds something else.
        """
        if overwrite and self.spec_path.exists():
            shutil.rmtree(self.path)
        if self.is_finished and not resume:
            raise TrainingError(
                f"{self.path}: a finished run is there", remedy=Remedy("overwrite", "train it again from scratch")
            )
        if self.spec_path.exists():
            if not resume:
                raise TrainingError(
                    f"{self.path}: holds an unfinished run", remedy=Remedy("resume", "continue it from its checkpoint")
                )
            if not same_experiment(self.spec_path.read_text(), spec_yaml):
                raise TrainingError(
                    f"{self.path}: was started from a different experiment (compare {self.spec_path} with {source}); "
                    "give another output folder",
                    remedy=Remedy("overwrite", "replace that run"),
                )
            return "finished" if self.is_finished else "resume"
        if self.path.exists() and any(self.path.iterdir()):
            raise TrainingError(f"{self.path}: exists and is not a galparam run; give another output folder")
        return "new"

    def write_metrics(
        self, labels: dict, n_images: int, *, images: dict | None = None, uncertainty: dict | None = None
    ) -> None:
        """``metrics.json``: per-label validation metrics (name → {rmse, bias, ...}), a
        denoiser's restoration metrics (``images``, see :meth:`restoration_metrics`), and an
        uncertainty head's calibration and coverage (``uncertainty``)."""
        out = {"split": "validation", "n_images": int(n_images), "labels": labels}
        if images is not None:
            out["images"] = images
        if uncertainty is not None:
            out["uncertainty"] = uncertainty
        write_json_atomic(self.metrics_path, out)

    def write_info(
        self, *, name: str, family: str, data: ExperimentData, hyperparameters: dict, model, **extra
    ) -> dict:
        """Write ``run.json`` last, marking the run complete; returns what it wrote.

        ``extra`` adds family-specific entries (learning rate, stages, timing).
        """
        if not self.model_path.exists() or not self.metrics_path.exists():
            raise RuntimeError(f"{self.path}: run.json goes last, after {MODEL_FILE} and {METRICS_FILE}")
        info = {
            "complete": True,
            "galparam_version": __version__,
            "name": name,
            "family": family,
            "psf_input": data.psf_input,
            "images": data.image_kind,
            "image_shape": list(data.images.shape[1:]),
            "label_names": list(LABEL_NAMES),
            "hyperparameters": hyperparameters,
            "parameters": int(model.count_params()),
            "dataset": data.describe(),
            **extra,
            "model_sha256": self.model_sha256(),
        }
        write_json_atomic(self.info_path, info)
        return info


def same_experiment(recorded_yaml: str, spec_yaml: str) -> bool:
    """Whether a run folder's ``experiment.yaml`` records the same experiment as ``spec_yaml``.

    Runs of the Xception started before galparam resolved each family's loss recorded the unused
    ``loss: binary_crossentropy`` (they trained with mse, as now); they still resume.
    """
    if recorded_yaml == spec_yaml:
        return True
    recorded, spec = yaml.safe_load(recorded_yaml), yaml.safe_load(spec_yaml)
    if (
        isinstance(recorded, dict)
        and recorded.get("family") == "xception"
        and recorded.get("loss") == "binary_crossentropy"
    ):
        recorded["loss"] = "mse"
    return recorded == spec


class ExperimentData:
    """An experiment's data: its dataset (memory-mapped), the train/validation split, the model inputs.

    A dataset file is split by :func:`galparam.data.split_indices`. On the fly (an experiment's
    ``dataset: {spec: ..., on_the_fly: true}``), the training images are drawn fresh each epoch
    (:attr:`fresh`) and the dataset is the fixed validation set, which :meth:`materialize` simulates
    into the run folder (its first call resumes an interrupted one).

    Parameters
    ----------
    spec : ExperimentSpec
        The experiment (its dataset, images, PSF input, image limit and validation fraction).
    on_the_fly : bool
        Whether the caller trains on fresh images (galparam-train does; a search trains on a file).

    Attributes
    ----------
    dataset : galparam.data.Dataset
        The dataset file, or on the fly the fixed validation set (after :meth:`materialize`).
    n : int
        Images used (the first ``n`` of the dataset, or on the fly of the spec's samples).
    train, val : ndarray of int
        Indices of the training and validation images in :attr:`dataset` (on the fly, ``train``
        is empty: :attr:`fresh` draws the training images).
    fit_rows : ndarray of int
        The images scalers and normalization layers are fitted on: the training split, or on the
        fly the fixed set (drawn from the same prior, never trained on).
    fresh : galparam.fresh.FreshImages or None
        The fresh training images of an on-the-fly experiment.
    images : ndarray of shape (N, S, S)
        The noisy or noiseless images, as the spec says.
    denoised : ndarray of shape (n, S, S) or None
        With a ``denoiser``: the first :attr:`n` images as it restored them (:meth:`use_denoised`).
    psf_input : bool
        Whether the model takes the PSF image as a second input.

    Raises
    ------
    GalparamError
        A missing or invalid dataset or dataset spec (naming how to make it), too few images for
        the split, a PSF input asked of a dataset whose PSF does not vary, or of the autoencoder,
        on-the-fly data asked of a search.
    """

    def __init__(self, spec, *, on_the_fly: bool = False):
        self.spec = spec
        self.image_kind = spec.images
        self.image_key = "img" if spec.images == "noisy" else "img_nonoise"
        self.fresh = None
        self.dataset = None
        self.denoised = None
        self._label_bound = None
        self.show_progress = True  # the bounds of label_bound
        if spec.on_the_fly and getattr(spec, "denoiser", None) is not None:
            raise GalparamError(
                f"{spec.source}: denoiser: needs a dataset file (its images are restored once, before training); "
                "on-the-fly images are not"
            )
        if spec.on_the_fly:
            if not on_the_fly:
                raise GalparamError(
                    f"{spec.source}: dataset: on_the_fly data is for galparam-train; a search trains on a "
                    f"file: give dataset: {spec.dataset.with_suffix('.npz').name} "
                    f"(made by galparam-simulate {spec.dataset.name})"
                )
            self._plan_fresh(spec)
            return
        try:
            ds = load_dataset(spec.dataset, mmap=True)
        except GalparamError as exc:
            recipe = spec.dataset.with_suffix(".yaml")
            hint = (
                f"; make it with: galparam-simulate {recipe}" if not spec.dataset.exists() and recipe.exists() else ""
            )
            raise GalparamError(f"{spec.source}: dataset: {exc}{hint}") from None
        self.dataset_spec = ds.spec
        self._split(len(ds))
        self._resolve_psf_input(ds.psf_varies)
        self._use(ds)
        self.fit_rows = self.train

    def _plan_fresh(self, spec) -> None:
        try:
            self.dataset_spec = load_spec(spec.dataset)
        except GalparamError as exc:
            raise GalparamError(f"{spec.source}: dataset: {exc}") from None
        if spec.loss == "bound_scaled_mse" and self.dataset_spec.stamp_model:
            raise GalparamError(
                f"{spec.source}: loss: bound_scaled_mse on fresh images needs a spec without PSF images, centre "
                f"or sky priors ({spec.dataset.name} has them); train on its dataset file instead"
            )
        self._split(self.dataset_spec.size)
        self._resolve_psf_input(self.dataset_spec.psf_varies)
        replicas = spec.noise_replicas if spec.loss == "bias_penalized_mse" else 1
        self.fresh = FreshImages(self.dataset_spec, len(self.train), spec.batch_size, replicas=replicas)
        self.train, self.val = np.arange(0), np.arange(len(self.val))
        self.fit_rows = self.val

    def _split(self, available: int) -> None:
        """The first ``n`` of ``available`` images (``max_images``), split by the experiment's
        validation fraction or the dataset spec's."""
        spec = self.spec
        self.n = min(available, spec.max_images or available)
        fraction = spec.validation_fraction
        if fraction is None:
            fraction = self.dataset_spec.validation_fraction
        self.train, self.val = split_indices(self.n, fraction)
        if len(self.val) == 0 or len(self.train) < 2:
            raise GalparamError(
                f"{self.spec.source}: {self.n} images with validation fraction {fraction} leave "
                f"{len(self.train)} to train and {len(self.val)} to validate; both need images"
            )

    def _resolve_psf_input(self, psf_varies: bool) -> None:
        spec = self.spec  # a psf_input its family does not take was refused with the spec
        psf = spec.psf_input if spec.psf_input != "auto" else (psf_varies and FAMILIES[spec.family].takes_psf)
        if psf and not psf_varies:
            raise GalparamError(
                f"{spec.source}: psf_input is true but {spec.dataset.name} has one PSF for all images "
                "(a PSF input needs a dataset whose PSF varies, like v3)"
            )
        self.psf_input = bool(psf)

    def _use(self, ds) -> None:
        self.dataset = ds
        self.images = ds.img if self.image_key == "img" else ds.img_nonoise

    def use_denoised(self, denoised: np.ndarray) -> None:
        """Give the first :attr:`n` images as restored by a denoiser (:attr:`denoised`): the
        Xception's normalization adapts on them, and a two-stage run trains on them."""
        if len(denoised) < self.n or denoised.shape[1:] != self.images.shape[1:]:
            raise GalparamError(
                f"denoised images of shape {denoised.shape} for {self.n} images of {self.images.shape[1:]}"
            )
        self.denoised = denoised

    def materialize(self, folder, *, progress: bool = True) -> None:
        """On the fly: simulate (or resume, or open) the fixed validation set in the run ``folder``.

        A dataset file needs nothing; this returns at once.
        """
        if self.fresh is None:
            return
        path = RunFolder(Path(folder).resolve()).validation_path
        wanted = validation_spec(self.dataset_spec, len(self.val))
        if not path.exists():
            simulate(wanted, path, progress=progress)
        ds = load_dataset(path, mmap=True)
        if ds.spec.digest() != wanted.digest():
            raise TrainingError(f"{path}: holds another validation set than {self.spec.dataset.name} draws; remove it")
        self._use(ds)

    @property
    def spec_digest(self) -> str:
        """SHA-256 of the dataset's spec (the spec file's, on the fly)."""
        return self.dataset_spec.digest()

    def column(self, key: str) -> np.ndarray:
        """The dataset's array ``key``: ``img``, ``img_nonoise``, ``psf_img`` or ``label``,
        ``denoised`` (:attr:`denoised`), or a label loss's target (:mod:`galparam.models.losses`):
        ``label_bound`` (the labels, then each image's bound, computed once for the first :attr:`n`
        images) or ``label_replicas`` (the labels, then 1: a file's images are one realization each)."""
        if key == "denoised":
            return self.denoised
        if key == "label_bound":
            if self._label_bound is None:
                self._label_bound = self._compute_label_bound()
            return self._label_bound
        if key == "label_replicas":
            label = self.dataset.label
            return np.hstack([label, np.ones((len(label), 1), label.dtype)])
        return getattr(self.dataset, key)

    def _compute_label_bound(self) -> np.ndarray:
        rows = np.arange(self.n if self.fresh is None else len(self.dataset))
        bounds = dataset_bounds(self.dataset, rows, progress=self.show_progress).to_numpy()
        return np.hstack([self.dataset.label[rows], bounds])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(height, width, 1): the model's input shape."""
        return (*self.dataset_spec.geometry.shape, 1)

    def describe(self) -> dict:
        """The dataset entry of ``run.json``."""
        path = self.dataset.path
        out = {
            "path": str(path),
            "name": self.dataset_spec.name,
            "spec_sha256": self.spec_digest,
            "bytes": path.stat().st_size,
            "images_used": int(len(self.dataset) if self.fresh else self.n),
            "train": int(self.fresh.images_per_epoch if self.fresh else len(self.train)),
            "validation": int(len(self.val)),
        }
        if self.fresh is not None:
            out["on_the_fly"] = {
                "spec": str(self.spec.dataset),
                "images_per_epoch": self.fresh.images_per_epoch,
                "seeds": "image j of epoch e: sample j at seed galparam.fresh.epoch_seed(seed, e)",
            }
        return out

    def adapt_samples(self) -> dict:
        """Normalization layer name → the images it is adapted on (a spread sample of :attr:`fit_rows`)."""
        index = np.sort(spread_sample(self.fit_rows, ADAPT_SAMPLE))
        images = self.images if self.denoised is None else self.denoised
        out = {"normalize_image": with_channel(images[index])}
        if self.psf_input:
            out["normalize_psf"] = with_channel(self.dataset.psf_img[index])
        return out

    def close(self) -> None:
        """Stop drawing fresh images (if any)."""
        if self.fresh is not None:
            self.fresh.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
