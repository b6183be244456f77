"""What the three searches share: the results folder that remembers its spec, the trial data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from galparam.errors import GalparamError, Remedy
from galparam.io import write_json_atomic
from galparam.specs import SearchSpec

SEARCH_FILE = "search.json"
BEST_FILE = "best_hyperparameters.json"


def default_results_dir(spec: SearchSpec) -> Path:
    """``NAME-results/`` beside the spec file."""
    return Path(spec.source).parent / f"{spec.name}-results"


def open_results(folder, spec: SearchSpec, *, overwrite: bool = False) -> Path:
    """Create the results folder, or check that it belongs to ``spec``.

    ``search.json`` records the spec's digest. A folder of another spec is refused unless
    ``overwrite``, which removes its results and starts the folder again for ``spec``.

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
        if theirs.get("spec_sha256") != mine["spec_sha256"]:
            if not overwrite:
                raise GalparamError(
                    f"{folder}: holds results of another search spec ({theirs.get('name', '?')}); give another folder",
                    remedy=Remedy("overwrite", "replace its results"),
                )
            for path in folder.iterdir():
                if _ours(path.name) or path.name == SEARCH_FILE:
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
    elif folder.exists() and any(not _ours(p.name) for p in folder.iterdir()):
        raise GalparamError(f"{folder}: exists and is not a galparam search results folder; give another folder")
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(record, mine)
    return folder


def _ours(name: str) -> bool:
    """What a search writes (a distributed worker may create KerasTuner's folder before the chief records the spec)."""
    return name in ("tuner", "autokeras", "best", BEST_FILE, "dashboard.html", "score_vs_parameters.png") or (
        name.startswith("trial-") and name.endswith(".json")
    )


def fit_arguments(experiment, pipelines, *, restore_best: bool = False) -> dict:
    """``model.fit`` / ``tuner.search`` arguments of a trial: the pipelines, epochs, early stopping."""
    import keras

    train_ds, val_ds, steps, val_steps = pipelines(0)
    # a non-TensorFlow pipeline learns each epoch's number from its callbacks
    callbacks = [keras.callbacks.TerminateOnNaN(), *getattr(train_ds, "callbacks", [])]
    if experiment.patience:
        callbacks.append(keras.callbacks.EarlyStopping(patience=experiment.patience, restore_best_weights=restore_best))
    return {
        "x": train_ds,
        "validation_data": val_ds,
        "epochs": experiment.epochs,
        "steps_per_epoch": steps,
        "validation_steps": val_steps,
        "callbacks": callbacks,
        "shuffle": False,  # the pipelines shuffle, reproducibly; Keras would reorder a PyDataset's batches
    }
