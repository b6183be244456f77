"""How a model family is declared: one :class:`Family` value in the family's own module.

A declaration says everything the rest of galparam needs to know about a family, so that nothing
else spells it: its builder arguments (each with its default, its search choices and the values
accepted, in one :class:`Hyperparameter` row, as KerasTuner's ``hp.Choice(name, values,
default=...)`` holds them), its default loss and the losses it refuses, the experiment keys it
takes and the rules among them, its training stages (what each stage reads and predicts), whether
it restores images, whether it takes the PSF image, how its labels and images are scaled, and the
functions that build its models. The spec loader (:mod:`galparam.specs`), the run folder
(:mod:`galparam.runs`), training (:mod:`galparam.train`), the searches and the estimator all read
the declaration through the registry (:data:`galparam.models.FAMILIES`).

This module imports no Keras: a declaration is data.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from galparam.errors import GalparamError, SpecError
from galparam.interval import Interval

WHOLE_POSITIVE = Interval(1, math.inf)
"""Whole numbers ≥ 1 (filters, blocks, kernel sizes)."""

GIVEN = object()
"""In a :class:`Rule`: the other key is set to anything but its default (None)."""


@dataclass(frozen=True)
class Hyperparameter:
    """One builder argument: its default, the values a search chooses from, the values accepted.

    Attributes
    ----------
    name : str
        The builder's keyword argument (and the experiment's ``hyperparameters`` key).
    default : object
        The value when neither the spec nor a search gives one; one of ``choices``.
    choices : tuple
        The values a search (grid, KerasTuner) chooses from.
    accepted : Interval or tuple
        What a spec may give: a range of numbers, or the values accepted.
    whole : bool
        Numbers must be whole (``accepted`` an Interval).
    """

    name: str
    default: object
    choices: tuple
    accepted: Interval | tuple
    whole: bool = False

    def __post_init__(self):
        if self.default not in self.choices:
            raise ValueError(f"{self.name}: the default {self.default!r} is not among its choices")

    @property
    def accepted_text(self) -> str:
        """What is accepted, as an error says it."""
        if isinstance(self.accepted, tuple):
            return ", ".join(map(str, self.accepted))
        if self.whole and self.accepted.high == math.inf and self.accepted.low_inclusive:
            return f"whole numbers >= {self.accepted.low:g}"
        return ("whole numbers in " if self.whole else "") + self.accepted.text()

    def check(self, value):
        """``value`` if it is accepted, else a :class:`~galparam.errors.GalparamError` naming it."""
        if isinstance(self.accepted, tuple):
            ok = value in self.accepted
        else:
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            ok = number and self.accepted.contains(value) and (not self.whole or isinstance(value, int))
        if not ok:
            raise GalparamError(f"{self.name} {value!r}: accepted {self.accepted_text}")
        return value


@dataclass(frozen=True)
class Stage:
    """One stage of a family's training: the model it fits, what it reads and what it predicts.

    Attributes
    ----------
    name : str
        The stage's name (its checkpoint folder, the ``stage`` column of ``history.csv``).
    inputs, targets : dict of str to str
        Each model input and output name → the data column it is fed or fitted on (see
        :func:`galparam.train.stage_columns`). The PSF image joins ``inputs`` as ``psf`` where
        the stage takes it and the experiment's data has it.
    losses : dict of str to str
        Each output's loss: ``"labels"`` (the labels' loss: an uncertainty head's negative
        log-likelihood, or the spec's), ``"spec"`` (the spec's loss), or a Keras loss name.
    takes_psf : bool
        The stage's model takes the PSF image as a second input where the data has it.
    plateau : bool
        The learning rate is reduced on plateaus (the experiment's ``lr_factor``, ``lr_patience``).
    when : (str, object), optional
        The stage is the one trained when the experiment's key has this value (a family whose
        stages are alternatives, not a sequence).
    """

    name: str
    inputs: dict
    targets: dict
    losses: dict
    takes_psf: bool = False
    plateau: bool = False
    when: tuple | None = None


@dataclass(frozen=True)
class Rule:
    """A spec constraint of a family: ``key`` must stay at its default unless ``unless`` holds.

    Attributes
    ----------
    key : str
        The experiment key constrained.
    message : str
        The error's text after the file name, naming the key and what to do.
    unless : (str, object), optional
        The other key and the value under which ``key`` is free (:data:`GIVEN`: set at all);
        None: never free.
    """

    key: str
    message: str
    unless: tuple | None = None

    def applies(self, values: dict) -> bool:
        """Whether the rule binds these spec values (its exception does not hold)."""
        if self.unless is None:
            return True
        other, value = self.unless
        if value is GIVEN:
            return values.get(other) is None
        return values.get(other) != value


@dataclass(frozen=True)
class Family:
    """A model family, declared once (see the module docstring).

    Attributes
    ----------
    name : str
        The experiment's ``family``.
    summary : str
        One line: what the family is.
    hyperparameters : tuple of Hyperparameter
        The builder arguments.
    stages : tuple of Stage
        The training stages, in order.
    search_stage : str
        The stage a search trial trains (the whole architecture).
    default_loss : str
        The loss when the spec gives none.
    refused_losses : dict of str to str
        Losses the family cannot train with → why (the error's words).
    keys : tuple of str
        The optional experiment keys the family takes (``uncertainty``, ``stages``, ...);
        any other is refused unless at its default.
    rules : tuple of Rule
        Constraints among the keys.
    label_range : (float, float) or None
        Where the labels are scaled to (None: the family estimates no labels).
    scales_images : bool
        The noiseless images get a min-max scaler (``image_scaler.json``).
    restores_images : bool
        A denoiser: it restores images and estimates no parameters.
    predictor : str, optional
        The layer of the saved model that predicts the labels (None: the model itself).
    decoder : str, optional
        The layer that draws a noiseless image from labels (None: the family has none).
    build : callable
        ``build(stage, arguments, context, parts)`` → the stage's uncompiled model.
    finish : callable
        ``finish(models, arguments, context)`` → the run's model from its stages' models.
    """

    name: str
    summary: str
    hyperparameters: tuple
    stages: tuple
    search_stage: str
    default_loss: str
    build: Callable = field(repr=False)
    finish: Callable = field(repr=False)
    refused_losses: dict = field(default_factory=dict)
    keys: tuple = ()
    rules: tuple = ()
    label_range: tuple | None = None
    scales_images: bool = False
    restores_images: bool = False
    predictor: str | None = None
    decoder: str | None = None

    @property
    def defaults(self) -> dict:
        """Each builder argument's default."""
        return {h.name: h.default for h in self.hyperparameters}

    @property
    def space(self) -> dict:
        """Each builder argument's search choices."""
        return {h.name: list(h.choices) for h in self.hyperparameters}

    @property
    def stage_names(self) -> tuple:
        return tuple(s.name for s in self.stages)

    @property
    def takes_psf(self) -> bool:
        """Whether any stage's model takes the PSF image."""
        return any(s.takes_psf for s in self.stages)

    def stage(self, name: str) -> Stage:
        """The stage called ``name``."""
        return next(s for s in self.stages if s.name == name)

    def stages_of(self, spec) -> tuple:
        """The stages an experiment trains, in order: the ones its ``stages`` key names, the one
        its ``when`` condition selects, or all of them."""
        if "stages" in self.keys:
            return tuple(self.stage(name) for name in spec.stages)
        chosen = [s for s in self.stages if s.when is not None and getattr(spec, s.when[0]) == s.when[1]]
        return tuple(chosen[:1]) or tuple(s for s in self.stages if s.when is None)

    def check_arguments(self, arguments: dict, source: str = "") -> dict:
        """Every builder argument (defaults filled in), each checked; ``learning_rate`` is left out.

        Raises
        ------
        GalparamError
            An unknown argument (naming the accepted ones) or a value not accepted (a
            :class:`~galparam.errors.SpecError` naming ``source`` where it is given).
        """
        known = {h.name: h for h in self.hyperparameters}
        unknown = sorted(set(arguments) - set(known) - {"learning_rate"})
        where = f"{source}: hyperparameters: " if source else ""
        if unknown:
            accepted = ", ".join([*known, "learning_rate"])
            raise (SpecError if source else GalparamError)(
                f"{where}unknown {self.name} argument {unknown[0]!r}; accepted: {accepted}"
            )
        resolved = {**self.defaults, **{k: v for k, v in arguments.items() if k != "learning_rate"}}
        for name, value in resolved.items():
            try:
                known[name].check(value)
            except GalparamError as exc:
                raise (SpecError if source else GalparamError)(f"{where}{exc}") from None
        return resolved
