"""Experiment specs: what to train, on which data, how (``experiments/*.yaml``).

An experiment's keys are one table, :data:`EXPERIMENT_SETTINGS`. What depends on the model family
is not written here but read from the family's declaration (:data:`galparam.models.FAMILIES`): the
families accepted, each family's default loss and the losses it refuses, which optional keys it
takes, the rules among them, whether it takes a PSF image, and its builder arguments, checked at
load. A spec may extend another and give only what it changes (``base: xception-v1.yaml``,
:mod:`galparam.specs.files`); the resolved spec is what a run records.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from galparam.errors import SpecError
from galparam.interval import Interval
from galparam.models import FAMILIES
from galparam.models.compile import LOSSES, OPTIMIZERS
from galparam.models.heads import UNCERTAINTY_KINDS
from galparam.models.losses import LOSS_FUNCTIONS
from galparam.settings import Setting, read_settings
from galparam.specs.files import read_spec_file

_STAGED = next(f for f in FAMILIES.values() if "stages" in f.keys)
"""The family trained in a sequence of stages an experiment chooses (``stages``)."""

EXPERIMENT_SETTINGS = {
    "name": Setting(str, help="experiment name (the default run folder is runs/NAME)"),
    "family": Setting(
        str,
        help="model family: " + "; ".join(f"{f.name}, {f.summary}" for f in FAMILIES.values()),
        choices=tuple(FAMILIES),
    ),
    "dataset": Setting(
        None,
        help="npz dataset, or {spec: DATASET.yaml, on_the_fly: true} for fresh images each epoch; "
        "relative to the spec's folder",
        raw=True,
    ),
    "images": Setting(
        str,
        "noisy",
        "train on the noisy or the noiseless images (a denoiser always restores the noisy ones)",
        choices=("noisy", "noiseless"),
    ),
    "denoiser": Setting(
        str,
        None,
        "a finished denoiser run ("
        + " or ".join(f.name for f in FAMILIES.values() if f.restores_images)
        + ") whose restored images the Xception trains and predicts on; relative to the spec's folder",
    ),
    "uncertainty": Setting(
        str,
        "none",
        "the uncertainty head of the Xception or the autoencoder's encoder: none, diagonal (a log-variance "
        "per label) or full (a covariance through a Cholesky factor), trained with the Gaussian negative "
        "log-likelihood (the autoencoder's image keeps the spec's loss)",
        choices=UNCERTAINTY_KINDS,
    ),
    "joint": Setting(
        bool,
        False,
        "train the denoiser (started from its run) and the Xception together, loss weights [labels, image]",
    ),
    "psf_input": Setting(
        None, "auto", "PSF image as a second input (auto: where the PSF varies)", choices=("auto", True, False)
    ),
    "hyperparameters": Setting(None, None, "builder arguments, or a JSON file a search wrote", raw=True),
    "optimizer": Setting(str, "adam", "Keras optimizer", choices=tuple(OPTIMIZERS)),
    "learning_rate": Setting(
        float, None, "initial learning rate (default 0.001, or searched)", range=Interval(0.0, 1.0, False, True)
    ),
    "batch_size": Setting(int, 32, "images per batch", range=Interval.closed(1, 65536)),
    "epochs": Setting(int, 100, "most epochs (per stage for the autoencoder)", range=Interval.closed(1, 100_000)),
    "patience": Setting(int, 20, "early-stopping patience in epochs, 0 for none", range=Interval.closed(0, 100_000)),
    "validation_fraction": Setting(
        float, None, "fraction held out (default: the dataset's)", range=Interval.open(0.0, 1.0)
    ),
    "max_images": Setting(
        int, None, "use only the first N images of the dataset", range=Interval.closed(2, 100_000_000)
    ),
    "seed": Setting(int, 0, "seed of weights, shuffling and dropout", range=Interval.closed(0, 2**31 - 1)),
    "strategy": Setting(
        None,
        None,
        "several devices: mirrored or multi_worker (tf.distribute, TensorFlow), data_parallel (keras.distribution, JAX)",
        choices=(None, "mirrored", "multi_worker", "data_parallel"),
    ),
    "keep_checkpoints": Setting(int, 3, "epoch checkpoints kept (besides the best)", range=Interval.closed(1, 100_000)),
    "stages": Setting(list, list(_STAGED.stage_names), f"{_STAGED.name} stages, in order", raw=True),
    "loss": Setting(
        str,
        None,
        "loss (default: the family's: " + ", ".join(f"{f.default_loss} for {f.name}" for f in FAMILIES.values()) + ")",
        choices=LOSSES,
    ),
    "noise_replicas": Setting(
        int,
        8,
        "loss bias_penalized_mse: noise realizations of each fresh galaxy, consecutive in a batch "
        "(batch_size a multiple of it)",
        range=Interval.closed(2, 1024),
    ),
    "loss_weights": Setting(
        list,
        [5.0, 1.0],
        "joint weights of labels and image (the autoencoder's joint stage, the joint denoiser and Xception)",
        raw=True,
    ),
    "lr_factor": Setting(float, 0.5, "joint-stage learning-rate factor on a plateau", range=Interval.open(0.0, 1.0)),
    "lr_patience": Setting(
        int, 2, "joint-stage epochs without improvement before it", range=Interval.closed(1, 100_000)
    ),
}
"""The keys of an experiment spec."""

FAMILY_KEYS = tuple(key for key in EXPERIMENT_SETTINGS if any(key in f.keys for f in FAMILIES.values()))
"""The keys that only some families take (each family's declaration lists its own)."""


@dataclass(frozen=True)
class ExperimentSpec:
    """A validated training experiment; see ``experiments/*.yaml``, :func:`load_experiment` and
    :data:`EXPERIMENT_SETTINGS` for each key's meaning and default.

    ``dataset`` is resolved against the spec's folder; ``hyperparameters`` is a mapping of builder
    arguments (a JSON file named in the YAML is read at load); ``loss`` is resolved to the family's.
    """

    name: str
    family: str
    dataset: Path
    images: str
    psf_input: object
    hyperparameters: dict
    optimizer: str
    learning_rate: float | None
    batch_size: int
    epochs: int
    patience: int
    validation_fraction: float | None
    max_images: int | None
    seed: int
    strategy: str | None
    keep_checkpoints: int
    stages: tuple
    loss: str
    loss_weights: tuple
    lr_factor: float
    lr_patience: int
    denoiser: Path | None = None
    joint: bool = False
    uncertainty: str = "none"
    on_the_fly: bool = False
    draw_on: str = "host"
    noise_replicas: int = 8
    source: str = field(default="<experiment>", compare=False)

    def to_dict(self) -> dict:
        """The resolved spec (dataset as an absolute path, hyperparameters inline)."""
        out = {k: getattr(self, k) for k in EXPERIMENT_SETTINGS}
        out["dataset"] = {"spec": str(self.dataset), "on_the_fly": True} if self.on_the_fly else str(self.dataset)
        if self.draw_on != "host":  # older runs' experiment.yaml (and digests) stay as they were
            out["dataset"]["draw_on"] = self.draw_on
        out["stages"] = list(self.stages)
        out["loss_weights"] = list(self.loss_weights)
        if self.loss != "bias_penalized_mse":  # runs made before it resume: their experiment.yaml lacks it
            out.pop("noise_replicas")
        if self.uncertainty == "none":  # runs made before the heads resume: their experiment.yaml lacks it
            out.pop("uncertainty")
        if self.denoiser is None:  # runs made before denoisers resume: their experiment.yaml lacks both keys
            out.pop("denoiser")
            out.pop("joint")
        else:
            out["denoiser"] = str(self.denoiser)
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _default(family, key: str):
    """A key's default for a family (the loss's is the family's own)."""
    return family.default_loss if key == "loss" else EXPERIMENT_SETTINGS[key].default


def experiment_from_dict(raw, source: str = "<experiment>", base_dir=".") -> ExperimentSpec:
    """Validate a mapping (as read from YAML) into an :class:`ExperimentSpec`.

    Raises
    ------
    SpecError
        On an unknown or missing key, a wrong type or choice, a value out of range, a key or
        value the family's declaration refuses, or a hyperparameters file that is missing or not
        a JSON mapping.
    """
    values = read_settings(raw, EXPERIMENT_SETTINGS, source, "an experiment spec")
    family = FAMILIES[values["family"]]
    for key in FAMILY_KEYS:
        # a resolved spec (a run's experiment.yaml) carries every key at its default: that is no misuse
        if key not in family.keys and values[key] != EXPERIMENT_SETTINGS[key].default:
            takers = " and ".join(f.name for f in FAMILIES.values() if key in f.keys)
            raise SpecError(f"{source}: {key}: applies to the {takers} family, not to {family.name}")
    if values["loss"] is None:
        values["loss"] = family.default_loss
    elif values["loss"] in family.refused_losses:
        raise SpecError(f"{source}: loss: {family.refused_losses[values['loss']]}")
    if values["psf_input"] is True and not family.takes_psf:
        raise SpecError(f"{source}: psf_input: the {family.name} family takes no PSF input")
    for rule in family.rules:
        if rule.applies(values) and values[rule.key] != _default(family, rule.key):
            raise SpecError(f"{source}: {rule.message}")
    base_dir = Path(base_dir)
    if values["denoiser"] is not None:
        values["denoiser"] = (base_dir / values["denoiser"]).resolve()
    values["dataset"], values["on_the_fly"], values["draw_on"] = _read_dataset(source, values["dataset"], base_dir)
    _check_label_loss(source, values)
    values["hyperparameters"] = _read_hyperparameters(source, values["hyperparameters"], base_dir)
    family.check_arguments(values["hyperparameters"], source=source)
    stages = values["stages"]
    names = family.stage_names if "stages" in family.keys else _STAGED.stage_names
    if not stages or any(s not in names for s in stages) or list(stages) != sorted(set(stages), key=names.index):
        raise SpecError(f"{source}: stages: {stages!r} is not accepted; give some of {list(names)}, in that order")
    values["stages"] = tuple(stages)
    weights = values["loss_weights"]
    if len(weights) != 2 or not all(
        isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0 for w in weights
    ):
        raise SpecError(f"{source}: loss_weights: {weights!r} is not [labels, image] with two numbers >= 0")
    values["loss_weights"] = tuple(float(w) for w in weights)
    return ExperimentSpec(source=source, **values)


def _check_label_loss(source: str, values: dict) -> None:
    """What galparam's label losses need of the data (:mod:`galparam.models.losses`): targets the
    host draws (each image's bound, or several noise realizations of each galaxy)."""
    loss = values["loss"]
    if loss not in LOSS_FUNCTIONS:
        return
    if values["draw_on"] != "host":
        raise SpecError(f"{source}: loss: {loss} reads targets the host draws; use dataset: draw_on: host")
    if loss != "bias_penalized_mse":
        return
    if not values["on_the_fly"]:
        raise SpecError(
            f"{source}: loss: bias_penalized_mse needs several noise realizations of each galaxy, which fresh "
            "images give: dataset: {spec: DATA.yaml, on_the_fly: true}"
        )
    if values["batch_size"] % values["noise_replicas"]:
        raise SpecError(
            f"{source}: batch_size {values['batch_size']} is not a multiple of noise_replicas "
            f"{values['noise_replicas']} (a galaxy's realizations share a batch)"
        )


DATASET_SOURCE_KEYS = ("spec", "on_the_fly", "draw_on")
"""The keys of an experiment's ``dataset`` mapping."""

DRAW_ON = ("host", "device")
"""Where fresh images are drawn: CPU processes (numpy, the default) or the device, inside the
compiled training step (Keras's JAX backend; :mod:`galparam.device_draw`)."""


def _read_dataset(source: str, value, base_dir: Path) -> tuple[Path, bool, str]:
    """``dataset: FILE.npz`` → (file, False, host); ``{spec: DATA.yaml, on_the_fly: true}`` → (spec
    file, True, draw_on: host or device); ``{spec: DATA.yaml, on_the_fly: false}`` → (the spec's
    dataset file DATA.npz, False, host)."""
    if isinstance(value, str) and value:
        return (base_dir / value).resolve(), False, "host"
    accepted = "a dataset file (data/v1.npz) or {spec: data/v1.yaml, on_the_fly: true}"
    if not isinstance(value, dict):
        raise SpecError(f"{source}: dataset: {value!r} is not {accepted}")
    unknown = sorted(set(map(str, value)) - set(DATASET_SOURCE_KEYS))
    if unknown:
        raise SpecError(f"{source}: dataset: unknown key {unknown[0]!r}; accepted: {', '.join(DATASET_SOURCE_KEYS)}")
    spec, fly = value.get("spec"), value.get("on_the_fly", True)
    if not isinstance(spec, str) or not spec.endswith((".yaml", ".yml")):
        raise SpecError(f"{source}: dataset: spec: {spec!r} is not a dataset spec file (.yaml); {accepted}")
    if not isinstance(fly, bool):
        raise SpecError(f"{source}: dataset: on_the_fly: {fly!r} is not true or false")
    draw_on = value.get("draw_on", "host")
    if draw_on not in DRAW_ON:
        raise SpecError(f"{source}: dataset: draw_on: {draw_on!r} is not one of {', '.join(DRAW_ON)}")
    if draw_on == "device" and not fly:
        raise SpecError(f"{source}: dataset: draw_on: device draws fresh images; it needs on_the_fly: true")
    path = (base_dir / spec).resolve()
    return (path, True, draw_on) if fly else (path.with_suffix(".npz"), False, "host")


def _read_hyperparameters(source: str, value, base_dir: Path) -> dict:
    if value is None:
        return {}
    if isinstance(value, str):
        path = base_dir / value
        try:
            value = json.loads(path.read_text())
        except FileNotFoundError:
            raise SpecError(f"{source}: hyperparameters: {path}: no such file") from None
        except ValueError as exc:
            raise SpecError(f"{source}: hyperparameters: {path}: not JSON ({exc})") from None
        # A search's file: {"hyperparameters": {...}, ...}, or the mapping itself.
        if isinstance(value, dict) and isinstance(value.get("hyperparameters"), dict):
            value = value["hyperparameters"]
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise SpecError(f"{source}: hyperparameters: expected a mapping of builder arguments or a JSON file name")
    return dict(value)


PATH_KEYS = ("dataset", "denoiser", "hyperparameters")
"""The keys whose values may be paths relative to the spec's folder."""


def relocate_paths(raw: dict, folder: Path) -> dict:
    """``raw`` with its relative paths made absolute from ``folder`` (a base spec's: they keep
    naming the same files from the spec that extends it)."""
    out = dict(raw)
    for key in PATH_KEYS:
        value = out.get(key)
        if isinstance(value, str) and (key != "hyperparameters" or value):
            out[key] = str((folder / value).resolve())
        elif key == "dataset" and isinstance(value, dict) and isinstance(value.get("spec"), str):
            out[key] = {**value, "spec": str((folder / value["spec"]).resolve())}
    return out


def load_experiment(path) -> ExperimentSpec:
    """Read and validate an experiment spec (YAML, perhaps extending another: ``base:``); relative
    paths in it are taken from its folder.

    Raises
    ------
    SpecError
        If the file is missing, not YAML, or not a valid experiment (see :func:`experiment_from_dict`).
    """
    path = Path(path)
    raw = read_spec_file(path, "experiment spec", relocate_paths)
    return experiment_from_dict(raw, source=str(path), base_dir=path.parent)
