"""Specs: YAML files → validated, immutable :class:`DatasetSpec`, :class:`ExperimentSpec`, :class:`SearchSpec`.

A spec is data. Each spec's keys are declared once, as a table of named :class:`Setting` rows
(:data:`DATASET_SETTINGS`, :data:`EXPERIMENT_SETTINGS`, :data:`SEARCH_SETTINGS`); each parameter's
prior kinds in :data:`PRIOR_KINDS` and its valid range in :data:`galparam.parameters.PARAMETERS`.
The loader reads those declarations, so an error always names the file, the key, the value and
what is accepted.

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
    renderer: kspace        # or galsim (GalSim's drawImage, the exact reference)
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

import copy
import hashlib
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import yaml

from galparam.errors import SpecError
from galparam.kspace import N_RANGE as KSPACE_SERSIC_RANGE
from galparam.parameters import PARAMETERS, sersic_grid

INF = math.inf
REQUIRED = object()
"""The default of a setting the spec must give."""


@dataclass(frozen=True)
class Setting:
    """One key of a spec, declared once: the loader, its error messages and the docs read it.

    Attributes
    ----------
    type : type or None
        ``int``, ``float``, ``str``, ``bool``, ``list`` or ``dict``; None for a choice among values
        of mixed types (``choices``).
    default : object
        The value when the key is absent, or :data:`REQUIRED`. A setting whose default is None
        also takes an explicit null.
    help : str
        What the key means (units included).
    low, high : float, optional
        Range of a number.
    low_inclusive, high_inclusive : bool
        Whether the range's ends are accepted.
    choices : tuple, optional
        The accepted values.
    raw : bool
        Passed on unchecked: the spec's own code validates it (a mapping, a pair).
    families : tuple of str, optional
        The model families the key applies to (experiment specs); giving it for another is an error.
    """

    type: type | None
    default: object = REQUIRED
    help: str = ""
    low: float | None = None
    high: float | None = None
    low_inclusive: bool = True
    high_inclusive: bool = True
    choices: tuple | None = None
    raw: bool = False
    families: tuple | None = None


DATASET_SETTINGS = {
    "name": Setting(str, help="dataset name"),
    "size": Setting(int, help="number of images", low=1, high=100_000_000),
    "seed": Setting(int, help="random seed", low=0, high=2**63 - 1),
    "validation_fraction": Setting(
        float, 0.1, "fraction held out for validation", low=0.0, high=1.0, high_inclusive=False
    ),
    "stamp_size": Setting(int, 64, "image side in pixels", low=8, high=1024),
    "pixel_scale": Setting(float, 0.23, "arcsec per pixel", low=0.0, high=10.0, low_inclusive=False),
    "psf_beta": Setting(float, 2.0, "Moffat beta of the PSF", low=1.1, high=10.0),
    "sersic_grid_size": Setting(int, 1000, "values of a discretized Sérsic prior", low=2, high=1_000_000),
    "poisson_noise": Setting(bool, True, "Poisson noise on the galaxy light"),
    "snr_window": Setting(list, None, "[min, max] SNR kept, or null", raw=True),
    "renderer": Setting(
        str,
        "kspace",
        "the forward model: kspace (batched, from GalSim's tables) or galsim (drawImage, the exact reference)",
        choices=("kspace", "galsim"),
    ),
    "priors": Setting(dict, help="the parameters' priors", raw=True),
}
"""The keys of a dataset spec."""

PRIOR_KINDS = {
    "flux": ("fixed", "uniform"),
    "sersic_n": ("fixed", "uniform", "discretized"),
    "hlr": ("fixed", "uniform"),
    "shear_amplitude": ("fixed", "uniform"),
    "shear_angle": ("fixed", "uniform"),
    "g1": ("fixed", "uniform"),
    "g2": ("fixed", "uniform"),
    "psf_fwhm": ("fixed", "uniform"),
    "sigma": ("fixed", "integers"),
}
"""The prior kinds each parameter takes; the accepted values are the parameter's valid range
(:data:`galparam.parameters.PARAMETERS`)."""

AUTOENCODER_STAGES = ("encoder", "decoder", "joint")
_AE = ("autoencoder",)
DENOISER_FAMILIES = ("edsr", "rdn")
UNCERTAINTY_KINDS = ("none", "diagonal", "full")
"""The uncertainty heads of the Xception and the autoencoder's encoder (:mod:`galparam.models.heads`)."""
"""Families that restore noisy images to noiseless ones (:mod:`galparam.models.denoise`)."""

EXPERIMENT_SETTINGS = {
    "name": Setting(str, help="experiment name (the default run folder is runs/NAME)"),
    "family": Setting(
        str,
        help="model family: the Xception regressor, the conditional autoencoder, or a denoiser (EDSR, RDN)",
        choices=("xception", "autoencoder", *DENOISER_FAMILIES),
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
        "a finished denoiser run (edsr or rdn) whose restored images the Xception trains and predicts on; "
        "relative to the spec's folder",
        families=("xception",),
    ),
    "uncertainty": Setting(
        str,
        "none",
        "the uncertainty head of the Xception or the autoencoder's encoder: none, diagonal (a log-variance "
        "per label) or full (a covariance through a Cholesky factor), trained with the Gaussian negative "
        "log-likelihood (the autoencoder's image keeps the spec's loss)",
        choices=UNCERTAINTY_KINDS,
        families=("xception", "autoencoder"),
    ),
    "joint": Setting(
        bool,
        False,
        "train the denoiser (started from its run) and the Xception together, loss weights [labels, image]",
        families=("xception",),
    ),
    "psf_input": Setting(
        None, "auto", "PSF image as a second input (auto: where the PSF varies)", choices=("auto", True, False)
    ),
    "hyperparameters": Setting(None, None, "builder arguments, or a JSON file a search wrote", raw=True),
    "optimizer": Setting(str, "adam", "Keras optimizer", choices=("adam", "adamw", "rmsprop", "sgd")),
    "learning_rate": Setting(
        float, None, "initial learning rate (default 0.001, or searched)", low=0.0, high=1.0, low_inclusive=False
    ),
    "batch_size": Setting(int, 32, "images per batch", low=1, high=65536),
    "epochs": Setting(int, 100, "most epochs (per stage for the autoencoder)", low=1, high=100_000),
    "patience": Setting(int, 20, "early-stopping patience in epochs, 0 for none", low=0, high=100_000),
    "validation_fraction": Setting(
        float,
        None,
        "fraction held out (default: the dataset's)",
        low=0.0,
        high=1.0,
        low_inclusive=False,
        high_inclusive=False,
    ),
    "max_images": Setting(int, None, "use only the first N images of the dataset", low=2, high=100_000_000),
    "seed": Setting(int, 0, "seed of weights, shuffling and dropout", low=0, high=2**31 - 1),
    "strategy": Setting(None, None, "tf.distribute strategy", choices=(None, "mirrored", "multi_worker")),
    "keep_checkpoints": Setting(int, 3, "epoch checkpoints kept (besides the best)", low=1, high=100_000),
    "stages": Setting(list, list(AUTOENCODER_STAGES), "autoencoder stages, in order", raw=True, families=_AE),
    "loss": Setting(
        str,
        None,
        "loss (default: mse for the Xception's [-1, 1] labels, binary_crossentropy for the autoencoder's "
        "[0, 1] targets, mae for a denoiser's images)",
        choices=("binary_crossentropy", "mse", "mae", "huber"),
    ),
    "loss_weights": Setting(
        list,
        [5.0, 1.0],
        "joint weights of labels and image (the autoencoder's joint stage, the joint denoiser and Xception)",
        raw=True,
        families=(*_AE, "xception"),
    ),
    "lr_factor": Setting(
        float,
        0.5,
        "joint-stage learning-rate factor on a plateau",
        low=0.0,
        high=1.0,
        low_inclusive=False,
        high_inclusive=False,
        families=_AE,
    ),
    "lr_patience": Setting(
        int, 2, "joint-stage epochs without improvement before it", low=1, high=100_000, families=_AE
    ),
}
"""The keys of an experiment spec."""

FAMILIES = EXPERIMENT_SETTINGS["family"].choices
DEFAULT_LOSS = {"xception": "mse", "autoencoder": "binary_crossentropy", "edsr": "mae", "rdn": "mae"}
"""Each family's loss when the spec gives none."""

AUTOKERAS_BLOCKS = ("vanilla", "resnet", "xception")
TUNERS = {"tune": ("bayesian", "hyperband", "random"), "autokeras": ("bayesian", "greedy", "hyperband", "random")}

SEARCH_SETTINGS = {
    "search": Setting(str, help="which search", choices=("grid", "tune", "autokeras")),
    "grid": Setting(dict, None, "grid search: builder argument → list of values", raw=True),
    "tuner": Setting(str, None, "KerasTuner or AutoKeras tuner (default bayesian, or greedy for AutoKeras)", raw=True),
    "max_trials": Setting(int, 10, "trials of a tuner search", low=1, high=1_000_000),
    "block_types": Setting(list, list(AUTOKERAS_BLOCKS), "AutoKeras image blocks searched", raw=True),
}
"""The keys of a search spec besides the experiment's (every other key is an experiment key)."""
SEARCHES = SEARCH_SETTINGS["search"].choices

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
    """A validated dataset spec; see the module docstring for the YAML form and
    :data:`DATASET_SETTINGS` for each key's meaning and default (made by :func:`spec_from_dict`)."""

    name: str
    size: int
    seed: int
    validation_fraction: float
    stamp_size: int
    pixel_scale: float
    psf_beta: float
    sersic_grid_size: int
    poisson_noise: bool
    snr_window: tuple | None
    renderer: str
    priors: dict = field(repr=False)
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
                changes[key] = _check_setting(self.source, key, value, DATASET_SETTINGS[key])
        return replace(self, **changes)

    def to_dict(self) -> dict:
        """The resolved spec, key by key in :data:`DATASET_SETTINGS`'s order (its digest depends on it)."""
        out = {key: getattr(self, key) for key in DATASET_SETTINGS}
        out["snr_window"] = list(self.snr_window) if self.snr_window else None
        out["priors"] = {k: v.to_yaml() for k, v in self.priors.items()}
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


def _check_setting(source: str, key: str, value, setting: Setting):
    where = f"{source}: {key}"
    typ = setting.type
    choices = setting.choices
    if typ is None:  # a choice among values of mixed types
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
    if typ in (int, float) and setting.low is not None:
        bounds = (setting.low, setting.high, setting.low_inclusive, setting.high_inclusive)
        if not _in_range(value, *bounds):
            raise SpecError(f"{where}: {value!r} is outside {_range_text(*bounds)}")
    if typ is str and not value.strip():
        raise SpecError(f"{where}: must not be empty")
    if choices is not None and value not in choices:
        raise SpecError(f"{where}: {value!r} is not accepted; accepted: {', '.join(map(_yaml_text, choices))}")
    return value


def _yaml_text(value) -> str:
    return {None: "null", True: "true", False: "false"}.get(value, str(value)) if not isinstance(value, str) else value


def _parse_prior(source: str, name: str, raw, grid_size: int) -> Prior:
    kinds = PRIOR_KINDS[name]
    parameter = PARAMETERS[name]
    low, high, low_incl, high_incl = parameter.low, parameter.high, parameter.low_inclusive, parameter.high_inclusive
    where = f"{source}: priors.{name}"
    accepted = ", ".join(f"{{{k}: ...}}" for k in kinds)
    if not isinstance(raw, dict) or len(raw) != 1:
        raise SpecError(f"{where}: {raw!r} is not a prior; accepted: {accepted}")
    ((kind, value),) = raw.items()
    if kind not in kinds:
        raise SpecError(f"{where}: prior kind {kind!r} is not accepted; accepted: {accepted}")
    allowed = parameter.range_text
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


def _read_settings(raw, table: dict, source: str, what: str) -> dict:
    """Each declared setting of ``raw``, checked (or its default); ``raw`` settings are passed as they are.

    A setting whose default is None also takes an explicit null.
    """
    if not isinstance(raw, dict):
        raise SpecError(f"{source}: {what} is a mapping of settings, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(table))
    if unknown:
        raise SpecError(f"{source}: unknown key {unknown[0]!r}; accepted keys: {', '.join(table)}")
    values = {}
    for key, setting in table.items():
        if key not in raw:
            if setting.default is REQUIRED:
                raise SpecError(f"{source}: missing key {key!r} ({setting.help})")
            values[key] = copy.deepcopy(setting.default)
        elif raw[key] is None and setting.default is None:
            values[key] = None
        elif setting.raw:
            values[key] = raw[key]
        else:
            values[key] = _check_setting(source, key, raw[key], setting)
    return values


def spec_from_dict(raw, source: str = "<spec>") -> DatasetSpec:
    """Validate a mapping (as read from YAML) into a :class:`DatasetSpec`.

    Raises
    ------
    SpecError
        On an unknown or missing key, a wrong type, a value out of range or an inverted range.
    """
    values = _read_settings(raw, DATASET_SETTINGS, source, "a dataset spec")

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
    unknown = sorted(set(raw_priors) - set(PRIOR_KINDS))
    if unknown:
        raise SpecError(f"{source}: priors: unknown parameter {unknown[0]!r}; accepted: {', '.join(PRIOR_KINDS)}")
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
    n_prior = priors["sersic_n"]
    low, high = KSPACE_SERSIC_RANGE  # the indices the k-space renderer's tables hold
    if values["renderer"] == "kspace" and not (low <= n_prior.low and n_prior.high <= high):
        raise SpecError(
            f"{source}: priors.sersic_n: [{n_prior.low:g}, {n_prior.high:g}] reaches beyond [{low:g}, {high:g}], "
            "the indices the kspace renderer draws; narrow the prior or set renderer: galsim"
        )
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
    source: str = field(default="<experiment>", compare=False)

    def to_dict(self) -> dict:
        """The resolved spec (dataset as an absolute path, hyperparameters inline)."""
        out = {k: getattr(self, k) for k in EXPERIMENT_SETTINGS}
        out["dataset"] = {"spec": str(self.dataset), "on_the_fly": True} if self.on_the_fly else str(self.dataset)
        out["stages"] = list(self.stages)
        out["loss_weights"] = list(self.loss_weights)
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


def experiment_from_dict(raw, source: str = "<experiment>", base_dir=".") -> ExperimentSpec:
    """Validate a mapping (as read from YAML) into an :class:`ExperimentSpec`.

    Raises
    ------
    SpecError
        On an unknown or missing key, a wrong type or choice, a value out of range, or a
        hyperparameters file that is missing or not a JSON mapping.
    """
    values = _read_settings(raw, EXPERIMENT_SETTINGS, source, "an experiment spec")
    family = values["family"]
    for key, setting in EXPERIMENT_SETTINGS.items():
        # a resolved spec (a run's experiment.yaml) carries every key at its default: that is no misuse
        if setting.families and family not in setting.families and values[key] != setting.default:
            raise SpecError(f"{source}: {key}: applies to the {' and '.join(setting.families)} family, not to {family}")
    if values["loss"] is None:
        values["loss"] = DEFAULT_LOSS[family]
    elif family == "xception" and values["loss"] == "binary_crossentropy":
        raise SpecError(
            f"{source}: loss: binary_crossentropy needs [0, 1] targets; the Xception's labels are in [-1, 1]"
        )
    elif family in DENOISER_FAMILIES and values["loss"] == "binary_crossentropy":
        raise SpecError(f"{source}: loss: a denoiser restores images with mae, mse or huber, not binary_crossentropy")
    if family in DENOISER_FAMILIES:
        if values["images"] != "noisy":
            raise SpecError(f"{source}: images: a denoiser learns noisy → noiseless; leave images at noisy")
        if values["psf_input"] is True:
            raise SpecError(f"{source}: psf_input: a denoiser takes no PSF input")
    if family == "xception" and not values["joint"] and list(values["loss_weights"]) != [5.0, 1.0]:
        raise SpecError(f"{source}: loss_weights: applies to the joint denoiser and Xception (joint: true)")
    if family == "xception" and values["uncertainty"] != "none" and values["loss"] != "mse":
        raise SpecError(
            f"{source}: loss: an uncertainty head trains with the Gaussian negative log-likelihood; leave loss out"
        )
    if values["joint"] and values["denoiser"] is None:
        raise SpecError(f"{source}: joint: true needs denoiser: RUN_DIR (the denoiser it starts from)")
    if values["denoiser"] is not None:
        values["denoiser"] = (Path(base_dir) / values["denoiser"]).resolve()
        if values["images"] != "noisy":
            raise SpecError(f"{source}: denoiser: restores noisy images; leave images at noisy")

    base_dir = Path(base_dir)
    values["dataset"], values["on_the_fly"] = _read_dataset(source, values["dataset"], base_dir)
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


DATASET_SOURCE_KEYS = ("spec", "on_the_fly")
"""The keys of an experiment's ``dataset`` mapping."""


def _read_dataset(source: str, value, base_dir: Path) -> tuple[Path, bool]:
    """``dataset: FILE.npz`` → (file, False); ``{spec: DATA.yaml, on_the_fly: true}`` → (spec file, True);
    ``{spec: DATA.yaml, on_the_fly: false}`` → (the spec's dataset file DATA.npz, False)."""
    if isinstance(value, str) and value:
        return (base_dir / value).resolve(), False
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
    path = (base_dir / spec).resolve()
    return (path, True) if fly else (path.with_suffix(".npz"), False)


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


@dataclass(frozen=True)
class SearchSpec:
    """A validated architecture search: what to search and the experiment each trial trains.

    ``experiment`` carries the dataset, family, training settings and, as ``hyperparameters``,
    the builder arguments held fixed; ``grid`` maps builder arguments to their values (grid
    search); ``tuner`` and ``max_trials`` drive KerasTuner and AutoKeras; ``block_types`` the
    AutoKeras image blocks searched (:data:`SEARCH_SETTINGS`).
    """

    search: str
    experiment: ExperimentSpec
    grid: dict
    tuner: str
    max_trials: int
    block_types: tuple
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
    mine = {k: v for k, v in raw.items() if k in SEARCH_SETTINGS}
    values = _read_settings(mine, SEARCH_SETTINGS, source, "a search spec")
    experiment = experiment_from_dict(
        {k: v for k, v in raw.items() if k not in SEARCH_SETTINGS}, source=source, base_dir=base_dir
    )
    search, grid, tuner, blocks = values["search"], values["grid"], values["tuner"], values["block_types"]
    if search == "grid":
        if not isinstance(grid, dict) or not grid:
            raise SpecError(f"{source}: grid: give a mapping of builder argument to a non-empty list of values")
        for key, choices in grid.items():
            if not isinstance(choices, list) or not choices:
                raise SpecError(f"{source}: grid.{key}: {choices!r} is not a non-empty list of values")
    elif grid is not None:
        raise SpecError(f"{source}: grid: only a grid search takes a grid")
    if tuner is None:
        tuner = "bayesian" if search == "tune" else "greedy"
    if search != "grid" and tuner not in TUNERS[search]:
        raise SpecError(f"{source}: tuner: {tuner!r} is not accepted; accepted: {', '.join(TUNERS[search])}")
    if not isinstance(blocks, list) or not blocks or any(b not in AUTOKERAS_BLOCKS for b in blocks):
        raise SpecError(f"{source}: block_types: {blocks!r}; accepted: some of {', '.join(AUTOKERAS_BLOCKS)}")
    return SearchSpec(
        search=search,
        experiment=experiment,
        grid=dict(grid or {}),
        tuner=tuner,
        max_trials=values["max_trials"],
        block_types=tuple(blocks),
        source=source,
    )


def load_search(path) -> SearchSpec:
    """Read and validate a search spec (YAML); relative paths in it are taken from its folder."""
    path = Path(path)
    raw = _read_yaml(path, "search spec")
    return search_from_dict(raw, source=str(path), base_dir=path.parent)
