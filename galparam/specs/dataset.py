"""Dataset specs: YAML files → validated, immutable :class:`DatasetSpec`.

A spec is data. Its keys are declared once, as a table of named
:class:`~galparam.settings.Setting` rows (:data:`DATASET_SETTINGS`, the geometry's from
:data:`galparam.geometry.GEOMETRY_SETTINGS`, the renderers' names and drawable indices from
:data:`galparam.render.RENDERERS`); each parameter's prior kinds in :data:`PRIOR_KINDS` and its
valid range in :data:`galparam.parameters.PARAMETERS`. The loader reads those declarations, so an
error always names the file, the key, the value and what is accepted.

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

A spec may also make images that look like a survey's (the stamp model, :mod:`galparam.kspace.stamps`):
priors on the galaxy's centre ``dx``, ``dy`` (pixels from the stamp's centre) and a constant ``sky``
(counts per pixel), and PSF images instead of the Moffat, each galaxy taking one of the file's PSFs
at random (:mod:`galparam.psf_file`; ``psf_fwhm`` then comes from the images)::

    psf: {images: psfs.fits}                   # relative to the spec; oversampling, includes_pixel
    priors:
      dx: {uniform: [-3, 3]}                   # pixels
      dy: {uniform: [-3, 3]}
      sky: {uniform: [-5, 5]}                  # counts per pixel
A spec may extend another (``base: v1.yaml``, :mod:`galparam.specs.files`).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import yaml

from galparam.errors import SpecError
from galparam.frame import PIXEL_SCALE, STAMP_SIDE
from galparam.geometry import GEOMETRY_SETTINGS, Geometry
from galparam.interval import Interval
from galparam.parameters import PARAMETERS, sersic_grid
from galparam.psf_file import PSFImagesSpec, file_names, parse_psf_images
from galparam.render import DEFAULT_RENDERER, RENDERERS
from galparam.settings import Setting, check_setting, read_settings, yaml_number
from galparam.specs.files import read_spec_file
from galparam.stamp import SKY_RANGE_SIGMAS, offset_limit

DATASET_SETTINGS = {
    "name": Setting(str, help="dataset name"),
    "size": Setting(int, help="number of images", range=Interval.closed(1, 100_000_000)),
    "seed": Setting(int, help="random seed", range=Interval.closed(0, 2**63 - 1)),
    "validation_fraction": Setting(
        float, 0.1, "fraction held out for validation", range=Interval(0.0, 1.0, True, False)
    ),
    **GEOMETRY_SETTINGS,
    "sersic_grid_size": Setting(int, 1000, "values of a discretized Sérsic prior", range=Interval.closed(2, 1_000_000)),
    "poisson_noise": Setting(bool, True, "Poisson noise on the galaxy light"),
    "snr_window": Setting(list, None, "[min, max] SNR kept, or null", raw=True),
    "renderer": Setting(
        str,
        DEFAULT_RENDERER,
        "the forward model: kspace (batched, from GalSim's tables) or galsim (drawImage, the exact reference)",
        choices=tuple(RENDERERS),
    ),
    "priors": Setting(dict, help="the parameters' priors", raw=True),
    "psf": Setting(dict, None, "PSF images instead of the Moffat: {images: FILE} (galparam.psf_file)", raw=True),
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
    "dx": ("fixed", "uniform"),
    "dy": ("fixed", "uniform"),
    "sky": ("fixed", "uniform"),
}
"""The prior kinds each parameter takes; the accepted values are the parameter's valid range
(:data:`galparam.parameters.PARAMETERS`)."""

_COMMON_PRIORS = ("flux", "sersic_n", "hlr", "psf_fwhm", "sigma")
STAMP_PRIORS = ("dx", "dy", "sky")
"""Priors of the stamp model only (a spec without them draws centred galaxies on no sky)."""
STAMP_DRAW_ORDER = ("dx", "dy", "sky", "psf_index")
"""The stamp model's deviates, from their own stream (so the others' numbers are those of a spec
without them)."""
_SHEAR_FORMS = (("shear_amplitude", "shear_angle"), ("g1", "g2"))

DRAW_ORDER = ("flux", "sersic_n", "hlr", "shear_a", "shear_b", "psf_fwhm", "sigma")
"""The order in which a candidate consumes its uniform deviates (shear_a/b: amplitude and angle,
or g1 and g2). Fixed, so that changing one prior never shifts another's random numbers."""


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

    def transform(self, u: np.ndarray, xp=np) -> np.ndarray:
        """Map uniform deviates u ∈ [0, 1) to draws from this prior (vectorized; ``xp`` the array
        library: numpy, or ``jax.numpy`` for draws on the device)."""
        u = np.asarray(u, dtype=np.float64) if xp is np else u
        if self.kind == "fixed":
            return xp.full_like(u, self.low)
        if self.kind == "uniform":
            return self.low + (self.high - self.low) * u
        if self.kind == "discretized":
            index = xp.minimum((u * self.steps).astype(np.int64 if xp is np else "int32"), self.steps - 1)
            return xp.asarray(self.grid(), dtype=u.dtype)[index] if xp is not np else self.grid()[index]
        count = int(self.high) - int(self.low) + 1
        return int(self.low) + xp.minimum(xp.floor(u * count), count - 1)

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
    geometry: Geometry
    sersic_grid_size: int
    poisson_noise: bool
    snr_window: tuple | None
    renderer: str
    priors: dict = field(repr=False)
    source: str = field(default="<spec>", compare=False)
    psf: PSFImagesSpec | None = None

    @property
    def stamp_model(self) -> bool:
        """Whether the images need the stamp model: PSF images, or a centre or sky prior."""
        return self.psf is not None or any(name in self.priors for name in STAMP_PRIORS)

    @property
    def shear_form(self) -> tuple[str, str]:
        """``("shear_amplitude", "shear_angle")`` or ``("g1", "g2")``."""
        return _SHEAR_FORMS[0] if "shear_amplitude" in self.priors else _SHEAR_FORMS[1]

    @property
    def psf_varies(self) -> bool:
        """Whether images differ in their PSF (a PSF image each is stored then)."""
        if self.psf is not None:
            return self.psf_count > 1
        return not self.priors["psf_fwhm"].is_fixed

    @property
    def psf_count(self) -> int:
        """How many PSF images the spec's file holds (0 for a Moffat spec)."""
        if self.psf is None:
            return 0
        return self.psf.count

    def varies(self, name: str) -> bool:
        """Whether the spec draws ``name`` from a range (a prior it lacks, or a fixed one, does not)."""
        return name in self.priors and not self.priors[name].is_fixed

    def stamp_priors(self) -> tuple[Prior, ...]:
        """The priors in :data:`STAMP_DRAW_ORDER` but the PSF index (fixed at 0 where not given)."""
        return tuple(self.priors.get(name, Prior("fixed", 0.0, 0.0)) for name in STAMP_PRIORS)

    @property
    def draw_priors(self) -> tuple[Prior, ...]:
        """The priors in :data:`DRAW_ORDER`."""
        a, b = self.shear_form
        p = self.priors
        # with PSF images, the FWHM is that of the image drawn (its deviate is left unused)
        fwhm = p["psf_fwhm"] if self.psf is None else Prior("fixed", 0.0, 0.0)
        return (p["flux"], p["sersic_n"], p["hlr"], p[a], p[b], fwhm, p["sigma"])

    def parameters_of(self, u, xp=np) -> tuple:
        """Galaxy parameters (flux, sersic_n, hlr, g1, g2, psf_fwhm, sigma), each (B,), of uniform
        deviates u (B, 7) in :data:`DRAW_ORDER`: each prior's transform, and the shear from its
        amplitude and angle where the spec draws those (``xp``: numpy, or ``jax.numpy`` on the device)."""
        flux, n, hlr, a, b, fwhm, sigma = (prior.transform(u[:, j], xp=xp) for j, prior in enumerate(self.draw_priors))
        if self.shear_form == ("shear_amplitude", "shear_angle"):
            a, b = a * xp.cos(2 * b), a * xp.sin(2 * b)
        return flux, n, hlr, a, b, fwhm, sigma

    def with_overrides(self, *, size: int | None = None, seed: int | None = None) -> DatasetSpec:
        """A copy with ``size`` and/or ``seed`` replaced (checked like the file's values)."""
        changes = {}
        for key, value in (("size", size), ("seed", seed)):
            if value is not None:
                changes[key] = check_setting(self.source, key, value, DATASET_SETTINGS[key])
        return replace(self, **changes)

    def to_dict(self) -> dict:
        """The resolved spec, key by key in :data:`DATASET_SETTINGS`'s order (its digest depends on it)."""
        out = {key: getattr(self.geometry if key in GEOMETRY_SETTINGS else self, key) for key in DATASET_SETTINGS}
        out["snr_window"] = list(self.snr_window) if self.snr_window else None
        out["priors"] = {k: v.to_yaml() for k, v in self.priors.items()}
        if self.psf is None:
            del out["psf"]  # the specs of before PSF images keep their digests
        else:
            out["psf"] = self.psf.to_dict()
        return out

    def to_yaml(self) -> str:
        """The resolved spec as YAML text (what a dataset records as its provenance)."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def digest(self) -> str:
        """SHA-256 of :meth:`to_yaml`: two specs that make the same data share it."""
        return hashlib.sha256(self.to_yaml().encode()).hexdigest()


def _parse_prior(source: str, name: str, raw, grid_size: int) -> Prior:
    kinds = PRIOR_KINDS[name]
    parameter = PARAMETERS[name]
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
    values = [yaml_number(v) for v in values]
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise SpecError(f"{where}: {v!r} is not a finite number")
        if not parameter.valid.contains(v):
            raise SpecError(f"{where}: {v!r} is outside the accepted range {allowed}")
    if kind == "integers" and not all(float(v).is_integer() for v in values):
        raise SpecError(f"{where}: integers takes whole numbers, got {values!r}")
    if kind != "fixed" and not values[0] < values[1]:
        raise SpecError(f"{where}: range {values!r} is empty or inverted; give [low, high] with low < high")
    if kind == "fixed":
        return Prior("fixed", float(values[0]), float(values[0]))
    return Prior(kind, float(values[0]), float(values[1]), grid_size if kind == "discretized" else 0)


def spec_from_dict(raw, source: str = "<spec>", *, recorded: bool = False) -> DatasetSpec:
    """Validate a mapping (as read from YAML) into a :class:`DatasetSpec`.

    Raises
    ------
    SpecError
        On an unknown or missing key, a wrong type, a value out of range or an inverted range.

    A ``recorded`` spec (a dataset's) may name PSF images that are not here
    (:func:`~galparam.psf_file.parse_psf_images`).
    """
    values = read_settings(raw, DATASET_SETTINGS, source, "a dataset spec")
    if values["psf"] is not None:
        values["psf"] = parse_psf_images(values["psf"], source, recorded=recorded)

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
        if name == "psf_fwhm" and values["psf"] is not None:
            if name in raw_priors:
                raise SpecError(f"{source}: priors.psf_fwhm: with psf images the FWHM is each image's; remove it")
            continue
        if name not in raw_priors:
            raise SpecError(f"{source}: priors: missing {name!r}")
    forms = [f for f in _SHEAR_FORMS if any(k in raw_priors for k in f)]
    if len(forms) != 1 or not all(k in raw_priors for k in forms[0]):
        raise SpecError(
            f"{source}: priors: give the shear as shear_amplitude and shear_angle, or as g1 and g2 (one pair, both keys)"
        )
    priors = {
        name: _parse_prior(source, name, raw_priors[name], values["sersic_grid_size"])
        for name in (*_COMMON_PRIORS, *forms[0], *STAMP_PRIORS)
        if name in raw_priors
    }
    for name, prior in priors.items():
        if prior.kind == "discretized" and name != "sersic_n":
            raise SpecError(f"{source}: priors.{name}: only sersic_n takes a discretized prior")
    n_prior = priors["sersic_n"]
    low, high = RENDERERS[values["renderer"]].SERSIC_RANGE
    if not (low <= n_prior.low and n_prior.high <= high):
        wider = max(RENDERERS, key=lambda name: RENDERERS[name].SERSIC_RANGE[1] - RENDERERS[name].SERSIC_RANGE[0])
        raise SpecError(
            f"{source}: priors.sersic_n: [{n_prior.low:g}, {n_prior.high:g}] reaches beyond [{low:g}, {high:g}], "
            f"the indices the {values['renderer']} renderer draws; narrow the prior or set renderer: {wider}"
        )
    if forms[0] == ("g1", "g2"):
        g1, g2 = priors["g1"], priors["g2"]
        g_max = math.hypot(max(abs(g1.low), abs(g1.high)), max(abs(g2.low), abs(g2.high)))
        if g_max >= 1:
            raise SpecError(f"{source}: priors: g1 and g2 can reach |g| = {g_max:.3g}; the shear must stay below 1")
    values["priors"] = priors
    geometry = Geometry(**{key: values.pop(key) for key in GEOMETRY_SETTINGS})
    spec = DatasetSpec(source=source, geometry=geometry, **values)
    if spec.stamp_model:
        _check_stamp_model(spec)
    return spec


def _check_stamp_model(spec: DatasetSpec) -> None:
    """The stamp model's limits: its renderer, the stamp's sides and scale, centres inside the stamp."""
    source = spec.source
    if spec.renderer != "kspace":
        raise SpecError(f"{source}: renderer: {spec.renderer}: PSF images, centre and sky priors draw with kspace")
    side, scale = spec.geometry.stamp_size, spec.geometry.pixel_scale
    if not (STAMP_SIDE.contains(side) and PIXEL_SCALE.contains(scale)):
        raise SpecError(
            f"{source}: with PSF images, centre or sky priors a stamp has {STAMP_SIDE.text()} pixels a side "
            f"of {PIXEL_SCALE.text()} arcsec; got {side} and {scale:g}"
        )
    reach = offset_limit((side, side))
    for name in ("dx", "dy"):
        prior = spec.priors.get(name)
        if prior is not None and max(abs(prior.low), abs(prior.high)) > reach:
            raise SpecError(
                f"{source}: priors.{name}: {prior.to_yaml()} reaches beyond {reach:g} pixels from a {side}-pixel "
                "stamp's centre, where fits look for it; keep centres within"
            )
    sky, sigma = spec.priors.get("sky"), spec.priors["sigma"]
    if sky is not None and max(abs(sky.low), abs(sky.high)) > SKY_RANGE_SIGMAS * sigma.low:
        raise SpecError(
            f"{source}: priors.sky: {sky.to_yaml()} reaches beyond {SKY_RANGE_SIGMAS:g} σ ({sigma.low:g} counts), "
            "where fits look for a sky; this is a residual level: keep it within"
        )


def load_spec(path) -> DatasetSpec:
    """Read and validate a dataset spec from a YAML file (which may extend another: ``base:``).

    Raises
    ------
    SpecError
        If the file is missing, not YAML, or not a valid spec (see :func:`spec_from_dict`).
    """
    path = Path(path)
    return spec_from_dict(read_spec_file(path, "spec file", _relocate_psf_images), source=str(path))


def _relocate_psf_images(raw: dict, folder: Path) -> dict:
    """A base spec's relative PSF files made absolute from its folder (they keep naming the same
    files from the spec that extends it; the resolved spec then records them absolute)."""
    psf = raw.get("psf")
    if not isinstance(psf, dict) or "images" not in psf:
        return raw
    images = psf["images"]
    names = file_names(images)
    if names is None:
        return raw  # the spec's own check says what is wrong
    moved = [str((folder / n).resolve()) for n in names]
    return {**raw, "psf": {**psf, "images": moved[0] if isinstance(images, str) else moved}}


def spec_from_yaml_text(text: str, source: str = "<dataset>") -> DatasetSpec:
    """Validate a spec from YAML text (as recorded inside a dataset)."""
    return spec_from_dict(yaml.safe_load(text), source=source, recorded=True)
