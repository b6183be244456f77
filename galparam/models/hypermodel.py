"""One HyperModel for every family: the one place a family's model is built and compiled.

``galparam-train`` builds with every builder argument fixed; the grid fixes the grid point's; the
tuner lets KerasTuner choose the rest from the family's search choices. All three go through
:meth:`FamilyHyperModel.build_stage`, which reads the family's declaration
(:class:`~galparam.models.family.Family`): its arguments as ``hp.Choice(name, choices,
default=...)`` or ``hp.Fixed``, its stage's builder, its stage's losses. So a spec's optimizer,
learning rate, loss and loss weights hold everywhere. KerasTuner takes :meth:`FamilyHyperModel.build`
as its hypermodel (a callable of the trial's hyperparameters).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from galparam.errors import GalparamError
from galparam.models import FAMILIES
from galparam.models.compile import DEFAULT_LEARNING_RATE, CompileSettings, backend_loss, register_losses
from galparam.models.family import Family
from galparam.models.heads import loss_for


@dataclass
class BuildContext:
    """What a family's builder needs besides its arguments.

    Attributes
    ----------
    input_shape : tuple of int
        (height, width, 1) of the images.
    psf_input : bool
        The model takes the PSF image as a second input.
    uncertainty : str
        The uncertainty head (:data:`galparam.models.heads.UNCERTAINTY_KINDS`).
    adapt_samples : dict
        Normalization layer name → the training images it is adapted on.
    denoiser : galparam.estimator.Denoiser, optional
        The finished denoiser a joint stage trains on.
    """

    input_shape: tuple
    psf_input: bool = False
    uncertainty: str = "none"
    adapt_samples: dict = field(default_factory=dict)
    denoiser: object = None

    def adapt(self, model) -> None:
        """Adapt the model's Normalization layers on their samples."""
        for layer, sample in self.adapt_samples.items():
            model.get_layer(layer).adapt(sample)


class FamilyHyperModel:
    """A family's models, built and compiled from an experiment's settings.

    Parameters
    ----------
    family : Family or str
        The family (or its name in :data:`galparam.models.FAMILIES`).
    input_shape : tuple of int
        Image shape (height, width, 1).
    psf_input : bool
        Whether the models take the PSF image too.
    fixed : dict, optional
        Builder arguments (and ``learning_rate``) held fixed instead of searched.
    adapt : dict, optional
        Normalization layer name → the sample of training images it is adapted on in every model built.
    settings : CompileSettings, optional
        How models are compiled (default: Adam and the family's loss).
    denoiser : galparam.estimator.Denoiser, optional
        The finished denoiser a joint stage starts from.

    Raises
    ------
    GalparamError
        A fixed argument the family does not take.
    """

    def __init__(
        self,
        family: Family | str,
        input_shape=(64, 64, 1),
        *,
        psf_input: bool = False,
        fixed=None,
        adapt=None,
        settings: CompileSettings | None = None,
        denoiser=None,
    ):
        self.family = FAMILIES[family] if isinstance(family, str) else family
        self.fixed = dict(fixed or {})
        self.settings = settings or CompileSettings()
        self.context = BuildContext(
            tuple(input_shape), bool(psf_input), self.settings.uncertainty, dict(adapt or {}), denoiser
        )
        accepted = [*self.family.defaults, "learning_rate"]
        unknown = set(self.fixed) - set(accepted)
        if unknown:
            raise GalparamError(
                f"unknown {self.family.name} hyperparameters {sorted(unknown)}; accepted {sorted(accepted)}"
            )

    @property
    def loss(self):
        """The spec's loss (default the family's), as ``compile`` takes it on this backend."""
        return backend_loss(self.settings.loss or self.family.default_loss)

    @property
    def labels_loss(self):
        """The labels' loss: the uncertainty head's Gaussian NLL, or the spec's loss."""
        return loss_for(self.settings.uncertainty) or self.loss

    def choose(self, hp) -> tuple[dict, float]:
        """The builder arguments and learning rate of a trial: fixed ones as they are, the rest
        chosen among the family's choices (each defaulting to the family's default)."""
        args = {
            h.name: hp.Fixed(h.name, self.fixed[h.name])
            if h.name in self.fixed
            else hp.Choice(h.name, list(h.choices), default=h.default)
            for h in self.family.hyperparameters
        }
        if self.settings.learning_rate is not None:
            lr = hp.Fixed("learning_rate", self.settings.learning_rate)
        elif "learning_rate" in self.fixed:
            lr = hp.Fixed("learning_rate", self.fixed["learning_rate"])
        else:
            lr = hp.Float("learning_rate", 1e-4, 1e-2, sampling="log", default=DEFAULT_LEARNING_RATE)
        return args, float(lr)

    def compile(self, model, learning_rate: float, stage: str):
        """Compile ``model`` as ``stage`` declares: its outputs' losses, the spec's loss weights
        (labels, image) where it has two outputs, and a new optimizer of the spec's kind."""
        register_losses()
        declared = self.family.stage(stage)
        kinds = {"labels": self.labels_loss, "spec": self.loss}
        losses = {output: kinds.get(kind, kind) for output, kind in declared.losses.items()}
        weights = None
        if len(losses) == 1:
            (losses,) = losses.values()
        else:
            weights = dict(zip(declared.targets, self.settings.loss_weights, strict=True))
        model.compile(optimizer=self.settings.optimizer_for(learning_rate), loss=losses, loss_weights=weights)
        return model

    def build_stage(self, stage: str, hp, trained: dict | None = None):
        """The compiled model of one stage of the family (given the models of the stages trained
        before it in the run, which it starts from where the family says so)."""
        args, lr = self.choose(hp)
        model = self.family.build(stage, args, self.context, dict(trained or {}))
        return self.compile(model, lr, stage)

    def build(self, hp):
        """The model a search trial trains: the family's search stage, compiled."""
        return self.build_stage(self.family.search_stage, hp)

    def fixed_hyperparameters(self):
        """KerasTuner's hyperparameters with every argument at its fixed value (or default)."""
        import keras_tuner

        hp = keras_tuner.HyperParameters()
        self.choose(hp)
        return hp

    def build_fixed(self, stage: str | None = None, trained: dict | None = None):
        """The model of the fixed arguments alone (training), of ``stage`` (default the search stage)."""
        return self.build_stage(stage or self.family.search_stage, self.fixed_hyperparameters(), trained)

    def finish(self, trained: dict):
        """The run's model from its stages' trained models (the family's ``finish``)."""
        args, _ = self.choose(self.fixed_hyperparameters())
        return self.family.finish(trained, args, self.context)


def hypermodel(experiment, data, *, fixed: dict | None = None, denoiser=None) -> FamilyHyperModel:
    """The family's HyperModel for an experiment on its data.

    Parameters
    ----------
    experiment : ExperimentSpec
        Family, compile settings (optimizer, learning rate, loss, loss weights, uncertainty head).
    data : galparam.runs.ExperimentData
        Image shape, PSF input and the Normalization layers' adaptation samples.
    fixed : dict, optional
        Hyperparameters held fixed (default: the spec's); training passes every one.
    denoiser : galparam.estimator.Denoiser, optional
        The denoiser a joint stage starts from.
    """
    return FamilyHyperModel(
        experiment.family,
        data.image_shape,
        psf_input=data.psf_input,
        fixed=experiment.hyperparameters if fixed is None else fixed,
        adapt=data.adapt_samples(),
        settings=CompileSettings.of(experiment),
        denoiser=denoiser,
    )
