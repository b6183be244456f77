"""Dataset specs: YAML files → validated, immutable :class:`DatasetSpec`.

A spec is data. Each setting is declared once in ``_SETTINGS`` and each parameter's allowed prior
kinds and range once in ``_PRIORS``; the loader reads those declarations, so an error always names
the file, the key, the value and what is accepted.

Example (``data/v1.yaml``)::

    name: v1
    size: 200000
    seed: 1
    validation_fraction: 0.1
    stamp_size: 64          # pixels
    pixel_scale: 0.23       # arcsec / pixel
    psf_beta: 2.0
    sersic_grid_size: 1000
    poisson_noise: true
    snr_window: [10, 100]   # or null for no rejection
    priors:
      flux: {uniform: [3.0e4, 4.0e5]}          # counts
      sersic_n: {discretized: [0.5, 6.0]}      # sersic_grid_size equally spaced values
      hlr: {uniform: [0.1, 0.6]}               # arcsec
      shear_amplitude: {uniform: [0.0, 0.67]}  # g1 = A cos 2β, g2 = A sin 2β
      shear_angle: {uniform: [0.0, 3.141592653589793]}   # β, radians
      psf_fwhm: {fixed: 0.5}                   # arcsec
      sigma: {fixed: 200}                      # or {integers: [200, 400]}, counts

Instead of ``shear_amplitude`` and ``shear_angle`` a spec may give ``g1`` and ``g2`` directly.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import yaml

from galparam.errors import SpecError
from galparam.render import SERSIC_N_LIMITS, sersic_grid

INF = math.inf

# name: (python type, low, high, low inclusive, high inclusive, default or REQUIRED, help)
REQUIRED = object()
_SETTINGS = {
    "name": (str, None, None, True, True, REQUIRED, "dataset name"),
    "size": (int, 1, 100_000_000, True, True, REQUIRED, "number of images"),
    "seed": (int, 0, 2**63 - 1, True, True, REQUIRED, "random seed"),
    "validation_fraction": (float, 0.0, 1.0, True, False, 0.1, "fraction held out for validation"),
    "stamp_size": (int, 8, 1024, True, True, 64, "image side in pixels"),
    "pixel_scale": (float, 0.0, 10.0, False, True, 0.23, "arcsec per pixel"),
    "psf_beta": (float, 1.1, 10.0, True, True, 2.0, "Moffat beta of the PSF"),
    "sersic_grid_size": (int, 2, 1_000_000, True, True, 1000, "values of a discretized Sérsic prior"),
    "poisson_noise": (bool, None, None, True, True, True, "Poisson noise on the galaxy light"),
    "snr_window": (list, 0.0, INF, True, False, None, "[min, max] SNR kept, or null"),
    "priors": (dict, None, None, True, True, REQUIRED, "the parameters' priors"),
}

# parameter: (allowed prior kinds, low, high, low inclusive, high inclusive, unit)
_PRIORS = {
    "flux": (("fixed", "uniform"), 0.0, INF, False, False, "counts"),
    "sersic_n": (("fixed", "uniform", "discretized"), *SERSIC_N_LIMITS, True, True, ""),
    "hlr": (("fixed", "uniform"), 0.0, 20.0, False, True, "arcsec"),
    "shear_amplitude": (("fixed", "uniform"), 0.0, 1.0, True, False, ""),
    "shear_angle": (("fixed", "uniform"), 0.0, math.pi, True, True, "radians"),
    "g1": (("fixed", "uniform"), -1.0, 1.0, False, False, ""),
    "g2": (("fixed", "uniform"), -1.0, 1.0, False, False, ""),
    "psf_fwhm": (("fixed", "uniform"), 0.0, 20.0, False, True, "arcsec"),
    "sigma": (("fixed", "integers"), 0.0, INF, False, False, "counts"),
}
FAMILIES = ("xception", "autoencoder")
AUTOENCODER_STAGES = ("encoder", "decoder", "joint")

# Experiment settings, declared like _SETTINGS (type None: one of _CHOICES, whatever its type).
_EXPERIMENT = {
    "name": (str, None, None, True, True, REQUIRED, "experiment name (the default run folder is runs/NAME)"),
    "family": (str, None, None, True, True, REQUIRED, "model family"),
    "dataset": (str, None, None, True, True, REQUIRED, "npz dataset, relative to the spec's folder"),
    "images": (str, None, None, True, True, "noisy", "train on the noisy or the noiseless images"),
    "psf_input": (None, None, None, True, True, "auto", "PSF image as a second input (auto: where the PSF varies)"),
    "hyperparameters": (None, None, None, True, True, None, "builder arguments, or a JSON file a search wrote"),
    "optimizer": (str, None, None, True, True, "adam", "Keras optimizer"),
    "learning_rate": (float, 0.0, 1.0, False, True, None, "initial learning rate (default 0.001)"),
    "batch_size": (int, 1, 65536, True, True, 32, "images per batch"),
    "epochs": (int, 1, 100_000, True, True, 100, "most epochs (per stage for the autoencoder)"),
    "patience": (int, 0, 100_000, True, True, 20, "early-stopping patience in epochs, 0 for none"),
    "validation_fraction": (float, 0.0, 1.0, False, False, None, "fraction held out (default: the dataset's)"),
    "max_images": (int, 2, 100_000_000, True, True, None, "use only the first N images of the dataset"),
    "seed": (int, 0, 2**31 - 1, True, True, 0, "seed of weights, shuffling and dropout"),
    "strategy": (None, None, None, True, True, None, "tf.distribute strategy"),
    "keep_checkpoints": (int, 1, 100_000, True, True, 3, "epoch checkpoints kept (besides the best)"),
    "stages": (list, None, None, True, True, list(AUTOENCODER_STAGES), "autoencoder stages, in order"),
    "loss": (str, None, None, True, True, "binary_crossentropy", "autoencoder loss on [0, 1] targets"),
    "loss_weights": (list, None, None, True, True, [5.0, 1.0], "joint-stage weights of labels and image"),
    "lr_factor": (float, 0.0, 1.0, False, False, 0.5, "joint-stage learning-rate factor on a plateau"),
    "lr_patience": (int, 1, 100_000, True, True, 2, "joint-stage epochs without improvement before it"),
}
_CHOICES = {
    "family": FAMILIES,
    "images": ("noisy", "noiseless"),
    "psf_input": ("auto", True, False),
    "optimizer": ("adam", "adamw", "rmsprop", "sgd"),
    "strategy": (None, "mirrored", "multi_worker"),
    "loss": ("binary_crossentropy", "mse"),
}

_COMMON_PRIORS = ("flux", "sersic_n", "hlr", "psf_fwhm", "sigma")
_SHEAR_FORMS = (("shear_amplitude", "shear_angle"), ("g1", "g2"))

DRAW_ORDER = ("flux", "sersic_n", "hlr", "shear_a", "shear_b", "psf_fwhm", "sigma")
"""The order in which a candidate consumes its uniform deviates (shear_a/b: amplitude and angle,
or g1 and g2). Fixed, so that changing one prior never shifts another's random numbers."""


def _range_text(low, high, low_incl, high_incl) -> str:
    left = "[" if low_incl else "("
    right = "]" if high_incl else ")"
    return f"{left}{low:g}, {high:g}{right}"


def _in_range(value, low, high, low_incl, high_incl) -> bool:
    above = value >= low if low_incl else value > low
    below = value <= high if high_incl else value < high
    return above and below


@dataclass(frozen=True)
class Prior:
    """One parameter's prior.

    ``kind`` is ``fixed`` (``low == high``), ``uniform`` on [low, high), ``discretized`` (uniform
    over ``steps`` equally spaced values from low to high) or ``integers`` (uniform over the
    integers low..high inclusive).
    """

    kind: str
    low: float
    high: float
    steps: int = 0

    @property
    def is_fixed(self) -> bool:
        return self.kind == "fixed"

    def grid(self) -> np.ndarray:
        """The values of a discretized prior."""
        return sersic_grid(self.low, self.high, self.steps)

    def transform(self, u: np.ndarray) -> np.ndarray:
        """Map uniform deviates u ∈ [0, 1) to draws from this prior (vectorized)."""
        u = np.asarray(u, dtype=np.float64)
        if self.kind == "fixed":
            return np.full_like(u, self.low)
        if self.kind == "uniform":
            return self.low + (self.high - self.low) * u
        if self.kind == "discretized":
            index = np.minimum((u * self.steps).astype(np.int64), self.steps - 1)
            return self.grid()[index]
        count = int(self.high) - int(self.low) + 1
        return int(self.low) + np.minimum(np.floor(u * count), count - 1)

    def to_yaml(self):
        if self.kind == "fixed":
            return {"fixed": self.low}
        return {self.kind: [self.low, self.high]}


@dataclass(frozen=True)
class DatasetSpec:
    """A validated dataset spec; see the module docstring for the YAML form."""

    name: str
    size: int
    seed: int
    priors: dict = field(repr=False)
    validation_fraction: float = 0.1
    stamp_size: int = 64
    pixel_scale: float = 0.23
    psf_beta: float = 2.0
    sersic_grid_size: int = 1000
    poisson_noise: bool = True
    snr_window: tuple | None = None
    source: str = field(default="<spec>", compare=False)

    @property
    def shear_form(self) -> tuple[str, str]:
        """``("shear_amplitude", "shear_angle")`` or ``("g1", "g2")``."""
        return _SHEAR_FORMS[0] if "shear_amplitude" in self.priors else _SHEAR_FORMS[1]

    @property
    def psf_varies(self) -> bool:
        return not self.priors["psf_fwhm"].is_fixed

    @property
    def draw_priors(self) -> tuple[Prior, ...]:
        """The priors in :data:`DRAW_ORDER`."""
        a, b = self.shear_form
        p = self.priors
        return (p["flux"], p["sersic_n"], p["hlr"], p[a], p[b], p["psf_fwhm"], p["sigma"])

    def with_overrides(self, *, size: int | None = None, seed: int | None = None) -> DatasetSpec:
        """A copy with ``size`` and/or ``seed`` replaced (checked like the file's values)."""
        changes = {}
        for key, value in (("size", size), ("seed", seed)):
            if value is not None:
                changes[key] = _check_setting(self.source, key, value)
        return replace(self, **changes)

    def to_dict(self) -> dict:
        out = {
            "name": self.name,
            "size": self.size,
            "seed": self.seed,
            "validation_fraction": self.validation_fraction,
            "stamp_size": self.stamp_size,
            "pixel_scale": self.pixel_scale,
            "psf_beta": self.psf_beta,
            "sersic_grid_size": self.sersic_grid_size,
            "poisson_noise": self.poisson_noise,
            "snr_window": list(self.snr_window) if self.snr_window else None,
            "priors": {k: v.to_yaml() for k, v in self.priors.items()},
        }
        return out

    def to_yaml(self) -> str:
        """The resolved spec as YAML text (what a dataset records as its provenance)."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def digest(self) -> str:
        """SHA-256 of :meth:`to_yaml`: two specs that make the same data share it."""
        return hashlib.sha256(self.to_yaml().encode()).hexdigest()


def _type_name(t) -> str:
    return {
        int: "an integer",
        float: "a number",
        str: "a string",
        bool: "true or false",
        list: "a list",
        dict: "a mapping",
    }[t]


def _yaml_number(value):
    """PyYAML reads ``3.0e4`` (no exponent sign) as a string; take it as the number it means."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _check_setting(source: str, key: str, value, settings=None):
    typ, low, high, low_incl, high_incl, _default, _help = (settings or _SETTINGS)[key]
    where = f"{source}: {key}"
    if typ is None:  # a choice among values of mixed types (see _CHOICES)
        choices = _CHOICES[key]
        if not any(value == c and type(value) is type(c) for c in choices):
            raise SpecError(f"{where}: {value!r} is not accepted; accepted: {', '.join(map(_yaml_text, choices))}")
        return value
    if typ in (int, float):
        value = _yaml_number(value)
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if typ is int and isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, typ) or (typ is not bool and isinstance(value, bool)):
        raise SpecError(f"{where}: {value!r} is not {_type_name(typ)}")
    if typ in (int, float) and not _in_range(value, low, high, low_incl, high_incl):
        raise SpecError(f"{where}: {value!r} is outside {_range_text(low, high, low_incl, high_incl)}")
    if key == "name" and not value.strip():
        raise SpecError(f"{where}: the name must not be empty")
    if key in _CHOICES and value not in _CHOICES[key]:
        raise SpecError(f"{where}: {value!r} is not accepted; accepted: {', '.join(map(_yaml_text, _CHOICES[key]))}")
    return value


def _yaml_text(value) -> str:
    return {None: "null", True: "true", False: "false"}.get(value, str(value)) if not isinstance(value, str) else value


def _parse_prior(source: str, name: str, raw, grid_size: int) -> Prior:
    kinds, low, high, low_incl, high_incl, unit = _PRIORS[name]
    where = f"{source}: priors.{name}"
    accepted = ", ".join(f"{{{k}: ...}}" for k in kinds)
    if not isinstance(raw, dict) or len(raw) != 1:
        raise SpecError(f"{where}: {raw!r} is not a prior; accepted: {accepted}")
    ((kind, value),) = raw.items()
    if kind not in kinds:
        raise SpecError(f"{where}: prior kind {kind!r} is not accepted; accepted: {accepted}")
    allowed = _range_text(low, high, low_incl, high_incl) + (f" {unit}" if unit else "")
    if kind == "fixed":
        values = [value]
    elif not isinstance(value, list) or len(value) != 2:
        raise SpecError(f"{where}: {kind} takes [low, high], got {value!r}")
    else:
        values = value
    values = [_yaml_number(v) for v in values]
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise SpecError(f"{where}: {v!r} is not a finite number")
        if not _in_range(v, low, high, low_incl, high_incl):
            raise SpecError(f"{where}: {v!r} is outside the accepted range {allowed}")
    if kind == "integers" and not all(float(v).is_integer() for v in values):
        raise SpecError(f"{where}: integers takes whole numbers, got {values!r}")
    if kind != "fixed" and not values[0] < values[1]:
        raise SpecError(f"{where}: range {values!r} is empty or inverted; give [low, high] with low < high")
    if kind == "fixed":
        return Prior("fixed", float(values[0]), float(values[0]))
    return Prior(kind, float(values[0]), float(values[1]), grid_size if kind == "discretized" else 0)


def _read_settings(raw, table: dict, source: str, what: str, *, raw_keys=()) -> dict:
    """Each declared setting of ``raw``, checked (or its default); ``raw_keys`` are passed as they are.

    A setting whose default is None also takes an explicit null.
    """
    if not isinstance(raw, dict):
        raise SpecError(f"{source}: {what} is a mapping of settings, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(table))
    if unknown:
        raise SpecError(f"{source}: unknown key {unknown[0]!r}; accepted keys: {', '.join(table)}")
    values = {}
    for key, (*_declared, default, help_text) in table.items():
        if key not in raw:
            if default is REQUIRED:
                raise SpecError(f"{source}: missing key {key!r} ({help_text})")
            values[key] = default
        elif raw[key] is None and default is None:
            values[key] = None
        elif key in raw_keys:
            values[key] = raw[key]
        else:
            values[key] = _check_setting(source, key, raw[key], table)
    return values


def spec_from_dict(raw, source: str = "<spec>") -> DatasetSpec:
    """Validate a mapping (as read from YAML) into a :class:`DatasetSpec`.

    Raises
    ------
    SpecError
        On an unknown or missing key, a wrong type, a value out of range or an inverted range.
    """
    values = _read_settings(raw, _SETTINGS, source, "a dataset spec", raw_keys=("snr_window", "priors"))

    window = values["snr_window"]
    if window is not None:
        if (
            not isinstance(window, list)
            or len(window) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in window)
            or not 0 <= window[0] < window[1]
        ):
            raise SpecError(f"{source}: snr_window: {window!r} is not [min, max] with 0 <= min < max, or null")
        values["snr_window"] = (float(window[0]), float(window[1]))

    raw_priors = values["priors"]
    if not isinstance(raw_priors, dict):
        raise SpecError(f"{source}: priors: expected a mapping of parameter to prior, got {raw_priors!r}")
    unknown = sorted(set(raw_priors) - set(_PRIORS))
    if unknown:
        raise SpecError(f"{source}: priors: unknown parameter {unknown[0]!r}; accepted: {', '.join(_PRIORS)}")
    for name in _COMMON_PRIORS:
        if name not in raw_priors:
            raise SpecError(f"{source}: priors: missing {name!r}")
    forms = [f for f in _SHEAR_FORMS if any(k in raw_priors for k in f)]
    if len(forms) != 1 or not all(k in raw_priors for k in forms[0]):
        raise SpecError(
            f"{source}: priors: give the shear as shear_amplitude and shear_angle, or as g1 and g2 (one pair, both keys)"
        )
    priors = {
        name: _parse_prior(source, name, raw_priors[name], values["sersic_grid_size"])
        for name in (*_COMMON_PRIORS, *forms[0])
    }
    for name, prior in priors.items():
        if prior.kind == "discretized" and name != "sersic_n":
            raise SpecError(f"{source}: priors.{name}: only sersic_n takes a discretized prior")
    if forms[0] == ("g1", "g2"):
        g1, g2 = priors["g1"], priors["g2"]
        g_max = math.hypot(max(abs(g1.low), abs(g1.high)), max(abs(g2.low), abs(g2.high)))
        if g_max >= 1:
            raise SpecError(f"{source}: priors: g1 and g2 can reach |g| = {g_max:.3g}; the shear must stay below 1")
    values["priors"] = priors
    return DatasetSpec(source=source, **values)


def _read_yaml(path: Path, what: str):
    """The YAML document of a spec file, or one SpecError naming the file."""
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SpecError(f"{path}: no such {what}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: cannot read the {what} ({exc})") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None


def load_spec(path) -> DatasetSpec:
    """Read and validate a dataset spec from a YAML file.

    Raises
    ------
    SpecError
        If the file is missing, not YAML, or not a valid spec (see :func:`spec_from_dict`).
    """
    path = Path(path)
    return spec_from_dict(_read_yaml(path, "spec file"), source=str(path))


def spec_from_yaml_text(text: str, source: str = "<dataset>") -> DatasetSpec:
    """Validate a spec from YAML text (as recorded inside a dataset)."""
    return spec_from_dict(yaml.safe_load(text), source=source)


@dataclass(frozen=True)
class ExperimentSpec:
    """A validated training experiment; see ``experiments/*.yaml`` and :func:`load_experiment`.

    ``dataset`` is resolved against the spec's folder; ``hyperparameters`` is a mapping of builder
    arguments (a JSON file named in the YAML is read at load).
    """

    name: str
    family: str
    dataset: Path
    images: str = "noisy"
    psf_input: object = "auto"
    hyperparameters: dict = field(default_factory=dict)
    optimizer: str = "adam"
    learning_rate: float | None = None
    batch_size: int = 32
    epochs: int = 100
    patience: int = 20
    validation_fraction: float | None = None
    max_images: int | None = None
    seed: int = 0
    strategy: str | None = None
    keep_checkpoints: int = 3
    stages: tuple = AUTOENCODER_STAGES
    loss: str = "binary_crossentropy"
    loss_weights: tuple = (5.0, 1.0)
    lr_factor: float = 0.5
    lr_patience: int = 2
    source: str = field(default="<experiment>", compare=False)

    def to_dict(self) -> dict:
        """The resolved spec (dataset as an absolute path, hyperparameters inline)."""
        out = {k: getattr(self, k) for k in _EXPERIMENT}
        out["dataset"] = str(self.dataset)
        out["stages"] = list(self.stages)
        out["loss_weights"] = list(self.loss_weights)
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def experiment_from_dict(raw, source: str = "<experiment>", base_dir=".") -> ExperimentSpec:
    """Validate a mapping (as read from YAML) into an :class:`ExperimentSpec`.

    Raises
    ------
    SpecError
        On an unknown or missing key, a wrong type or choice, a value out of range, or a
        hyperparameters file that is missing or not a JSON mapping.
    """
    values = _read_settings(raw, _EXPERIMENT, source, "an experiment spec", raw_keys=("hyperparameters",))

    base_dir = Path(base_dir)
    values["dataset"] = (base_dir / values["dataset"]).resolve()
    values["hyperparameters"] = _read_hyperparameters(source, values["hyperparameters"], base_dir)
    stages = values["stages"]
    if (
        not stages
        or any(s not in AUTOENCODER_STAGES for s in stages)
        or list(stages) != sorted(set(stages), key=AUTOENCODER_STAGES.index)
    ):
        raise SpecError(
            f"{source}: stages: {stages!r} is not accepted; give some of {list(AUTOENCODER_STAGES)}, in that order"
        )
    values["stages"] = tuple(stages)
    weights = values["loss_weights"]
    if len(weights) != 2 or not all(
        isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0 for w in weights
    ):
        raise SpecError(f"{source}: loss_weights: {weights!r} is not [labels, image] with two numbers >= 0")
    values["loss_weights"] = tuple(float(w) for w in weights)
    return ExperimentSpec(source=source, **values)


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


def load_experiment(path) -> ExperimentSpec:
    """Read and validate an experiment spec (YAML); relative paths in it are taken from its folder.

    Raises
    ------
    SpecError
        If the file is missing, not YAML, or not a valid experiment (see :func:`experiment_from_dict`).
    """
    path = Path(path)
    raw = _read_yaml(path, "experiment spec")
    return experiment_from_dict(raw, source=str(path), base_dir=path.parent)


SEARCHES = ("grid", "tune", "autokeras")
TUNERS = {"tune": ("bayesian", "hyperband", "random"), "autokeras": ("bayesian", "greedy", "hyperband", "random")}
AUTOKERAS_BLOCKS = ("vanilla", "resnet", "xception")


@dataclass(frozen=True)
class SearchSpec:
    """A validated architecture search: what to search and the experiment each trial trains.

    ``experiment`` carries the dataset, family, training settings and, as ``hyperparameters``,
    the builder arguments held fixed; ``grid`` maps builder arguments to their values (grid
    search); ``tuner`` and ``max_trials`` drive KerasTuner and AutoKeras; ``block_types`` the
    AutoKeras image blocks searched.
    """

    search: str
    experiment: ExperimentSpec
    grid: dict = field(default_factory=dict)
    tuner: str = "bayesian"
    max_trials: int = 10
    block_types: tuple = AUTOKERAS_BLOCKS
    source: str = field(default="<search>", compare=False)

    @property
    def name(self) -> str:
        return self.experiment.name

    def to_dict(self) -> dict:
        out = {"search": self.search, **self.experiment.to_dict()}
        out.update(grid=self.grid, tuner=self.tuner, max_trials=self.max_trials, block_types=list(self.block_types))
        return out

    def digest(self) -> str:
        """SHA-256 of the resolved spec: a results folder belongs to one search."""
        return hashlib.sha256(yaml.safe_dump(self.to_dict(), sort_keys=True).encode()).hexdigest()


def search_from_dict(raw, source: str = "<search>", base_dir=".") -> SearchSpec:
    """Validate a mapping (as read from YAML) into a :class:`SearchSpec`.

    The keys ``search``, ``grid``, ``tuner``, ``max_trials`` and ``block_types`` are the search's;
    every other key is an experiment key (see :func:`experiment_from_dict`), with ``hyperparameters``
    the builder arguments held fixed.

    Raises
    ------
    SpecError
        On an unknown search, tuner or block type, an empty grid or a grid value that is not a list.
    """
    if not isinstance(raw, dict):
        raise SpecError(f"{source}: a search spec is a mapping of settings, got {type(raw).__name__}")
    raw = dict(raw)
    search = raw.pop("search", None)
    if search not in SEARCHES:
        raise SpecError(f"{source}: search: {search!r} is not accepted; accepted: {', '.join(SEARCHES)}")
    grid = raw.pop("grid", None)
    tuner = raw.pop("tuner", "bayesian" if search == "tune" else "greedy")
    max_trials = raw.pop("max_trials", 10)
    blocks = raw.pop("block_types", list(AUTOKERAS_BLOCKS))
    experiment = experiment_from_dict(raw, source=source, base_dir=base_dir)
    if search == "grid":
        if not isinstance(grid, dict) or not grid:
            raise SpecError(f"{source}: grid: give a mapping of builder argument to a non-empty list of values")
        for key, values in grid.items():
            if not isinstance(values, list) or not values:
                raise SpecError(f"{source}: grid.{key}: {values!r} is not a non-empty list of values")
    elif grid is not None:
        raise SpecError(f"{source}: grid: only a grid search takes a grid")
    if search != "grid":
        if tuner not in TUNERS[search]:
            raise SpecError(f"{source}: tuner: {tuner!r} is not accepted; accepted: {', '.join(TUNERS[search])}")
        if isinstance(max_trials, bool) or not isinstance(max_trials, int) or max_trials < 1:
            raise SpecError(f"{source}: max_trials: {max_trials!r} is not a whole number >= 1")
    if not isinstance(blocks, list) or not blocks or any(b not in AUTOKERAS_BLOCKS for b in blocks):
        raise SpecError(f"{source}: block_types: {blocks!r}; accepted: some of {', '.join(AUTOKERAS_BLOCKS)}")
    return SearchSpec(search, experiment, dict(grid or {}), tuner, max_trials, tuple(blocks), source)


def load_search(path) -> SearchSpec:
    """Read and validate a search spec (YAML); relative paths in it are taken from its folder."""
    path = Path(path)
    raw = _read_yaml(path, "search spec")
    return search_from_dict(raw, source=str(path), base_dir=path.parent)
