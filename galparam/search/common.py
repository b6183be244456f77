"""What the three searches share: the results folder that remembers its spec, the trial data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from galparam.errors import GalparamError
from galparam.io import write_json_atomic
from galparam.specs import SearchSpec

SEARCH_FILE = "search.json"
BEST_FILE = "best_hyperparameters.json"


def default_results_dir(spec: SearchSpec) -> Path:
    """``NAME-results/`` beside the spec file."""
    return Path(spec.source).parent / f"{spec.name}-results"


def open_results(folder, spec: SearchSpec, *, force: bool = False) -> Path:
    """Create the results folder, or check that it belongs to ``spec``.

    ``search.json`` records the spec's digest. A folder of another spec is refused unless
    ``force`` (then its record is replaced, and trials of both specs will be mixed).

    Raises
    ------
    GalparamError
        If the folder holds results of another search spec, or is not a results folder.
    """
    folder = Path(folder)
    record = folder / SEARCH_FILE
    mine = {"name": spec.name, "search": spec.search, "spec_sha256": spec.digest(), "spec": spec.to_dict()}
    if record.exists():
        try:
            theirs = json.loads(record.read_text())
        except ValueError:
            theirs = {}
        if theirs.get("spec_sha256") != mine["spec_sha256"] and not force:
            raise GalparamError(
                f"{folder}: holds results of another search spec ({theirs.get('name', '?')}); "
                "choose another --output, or pass --force to mix them"
            )
    elif folder.exists() and any(not _ours(p.name) for p in folder.iterdir()):
        raise GalparamError(f"{folder}: exists and is not a galparam search results folder; choose another --output")
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(record, mine)
    return folder


def _ours(name: str) -> bool:
    """What a search writes (a distributed worker may create KerasTuner's folder before the chief records the spec)."""
    return name in ("tuner", "autokeras", "best", BEST_FILE, "dashboard.html", "score_vs_parameters.png") or (
        name.startswith("trial-") and name.endswith(".json")
    )


def adapt_samples(data, psf: bool) -> dict:
    """The training images the models' Normalization layers are adapted on."""
    from galparam.data import spread_sample, with_channel
    from galparam.train import ADAPT_SAMPLE

    index = np.sort(spread_sample(data.train, ADAPT_SAMPLE))
    out = {"normalize_image": with_channel(data.images[index])}
    if psf:
        out["normalize_psf"] = with_channel(data.dataset.psf_img[index])
    return out


def check_names(spec: SearchSpec, names) -> None:
    """Builder arguments the family's builder takes (and the learning rate); else one clear error."""
    from galparam.models import autoencoder, xception

    valid = [*(xception if spec.experiment.family == "xception" else autoencoder).DEFAULTS, "learning_rate"]
    unknown = sorted(set(names) - set(valid))
    if unknown:
        raise GalparamError(
            f"{spec.source}: unknown {spec.experiment.family} hyperparameter {unknown[0]!r}; valid: {', '.join(valid)}"
        )


def fit_arguments(experiment, pipelines, *, restore_best: bool = False) -> dict:
    """``model.fit`` / ``tuner.search`` arguments of a trial: the pipelines, epochs, early stopping."""
    import keras

    train_ds, val_ds, steps, val_steps = pipelines(0)
    callbacks = [keras.callbacks.TerminateOnNaN()]
    if experiment.patience:
        callbacks.append(keras.callbacks.EarlyStopping(patience=experiment.patience, restore_best_weights=restore_best))
    return {
        "x": train_ds,
        "validation_data": val_ds,
        "epochs": experiment.epochs,
        "steps_per_epoch": steps,
        "validation_steps": val_steps,
        "callbacks": callbacks,
    }
