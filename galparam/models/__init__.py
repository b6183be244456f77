"""Model families: the registry of their declarations.

Each family is a module that declares itself once, as a :class:`~galparam.models.family.Family`
named ``FAMILY`` (its builder arguments, stages, losses, spec rules and builders), and is
registered here: adding a family is its module and one line below. Importing this package loads
no Keras; the builders import it when they build.
"""

from __future__ import annotations

from galparam.errors import SpecError
from galparam.models import autoencoder, edsr, rdn, xception
from galparam.models.compile import DEFAULT_LEARNING_RATE
from galparam.models.family import Family

FAMILIES: dict[str, Family] = {module.FAMILY.name: module.FAMILY for module in (xception, autoencoder, edsr, rdn)}
"""Every model family by name, in the order the docs list them."""


def resolve_hyperparameters(experiment, extra: dict | None = None) -> tuple[dict, float]:
    """The builder arguments and learning rate of an experiment, checked against its family.

    A learning rate in the hyperparameters (a search's result) is used unless the spec gives one;
    ``extra`` (a grid point) overrides the spec's hyperparameters.

    Raises
    ------
    SpecError
        On a hyperparameter the family's builder does not take, or a value it does not accept.
    """
    family = FAMILIES[experiment.family]
    hp = {**experiment.hyperparameters, **(extra or {})}
    arguments = family.check_arguments(hp, source=experiment.source)
    lr = hp.get("learning_rate")
    if experiment.learning_rate is not None:
        lr = experiment.learning_rate
    lr = DEFAULT_LEARNING_RATE if lr is None else float(lr)
    if not 0 < lr <= 1:
        raise SpecError(f"{experiment.source}: learning_rate {lr}: accepted (0, 1]")
    return arguments, lr
