"""Model families: plain Keras builders and the KerasTuner HyperModels that build and compile them.

Each family is a module with ``DEFAULTS`` (its builder arguments) and a HyperModel (a
:class:`~galparam.models.common.FamilyHyperModel`); :data:`FAMILY_MODULES` registers it. Importing
this package loads no Keras: :func:`hypermodel` imports the family when it is needed.
"""

from __future__ import annotations

import importlib

from galparam.errors import SpecError

FAMILY_MODULES = {
    "xception": "galparam.models.xception",
    "autoencoder": "galparam.models.autoencoder",
    "edsr": "galparam.models.edsr",
    "rdn": "galparam.models.rdn",
}


def family_module(family: str):
    """The module of a model family (its builder, ``DEFAULTS`` and ``HyperModel``)."""
    return importlib.import_module(FAMILY_MODULES[family])


def resolve_hyperparameters(experiment, extra: dict | None = None) -> tuple[dict, float]:
    """The builder arguments and learning rate of an experiment, checked against its family.

    A learning rate in the hyperparameters (a search's result) is used unless the spec gives one;
    ``extra`` (a grid point) overrides the spec's hyperparameters.

    Raises
    ------
    SpecError
        On a hyperparameter the family's builder does not take.
    """
    from galparam.models.common import DEFAULT_LEARNING_RATE

    defaults = family_module(experiment.family).DEFAULTS
    hp = {**experiment.hyperparameters, **(extra or {})}
    valid = [*defaults, "learning_rate"]
    unknown = sorted(set(hp) - set(valid))
    if unknown:
        raise SpecError(
            f"{experiment.source}: hyperparameters: unknown {experiment.family} argument {unknown[0]!r}; "
            f"accepted: {', '.join(valid)}"
        )
    lr = hp.pop("learning_rate", None)
    if experiment.learning_rate is not None:
        lr = experiment.learning_rate
    lr = DEFAULT_LEARNING_RATE if lr is None else float(lr)
    if not 0 < lr <= 1:
        raise SpecError(f"{experiment.source}: learning_rate {lr}: accepted (0, 1]")
    return {**defaults, **hp}, lr


def hypermodel(experiment, data, *, fixed: dict | None = None):
    """The family's HyperModel for an experiment on its data.

    Parameters
    ----------
    experiment : ExperimentSpec
        Family, compile settings (optimizer, learning rate, loss, loss weights).
    data : galparam.runs.ExperimentData
        Image shape, PSF input and the Normalization layers' adaptation samples.
    fixed : dict, optional
        Hyperparameters held fixed (default: the spec's); training passes every one.
    """
    from galparam.models.common import CompileSettings

    module = family_module(experiment.family)
    kwargs = {"psf_input": data.psf_input} if experiment.family == "xception" else {}
    return module.HyperModel(
        data.image_shape,
        fixed=experiment.hyperparameters if fixed is None else fixed,
        adapt=data.adapt_samples(),
        settings=CompileSettings.of(experiment),
        **kwargs,
    )
