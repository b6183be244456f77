"""Grid search over builder arguments (scikit-learn's ``ParameterGrid``), one JSON file per trial.

Each finished trial is written atomically as ``trial-<id>.json`` (its hyperparameters, best
``val_loss``, epochs run, parameter count, training seconds, inference images/s, seed); running the
search again trains only the trials without a file, so a kill loses at most the trial it hit.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import ParameterGrid
from tqdm.auto import tqdm

from galparam import backend
from galparam.errors import GalparamError
from galparam.io import write_json_atomic
from galparam.models import resolve_hyperparameters
from galparam.models.hypermodel import hypermodel
from galparam.runs import ExperimentData
from galparam.search.common import fit_arguments, open_results
from galparam.specs import SearchSpec
from galparam.train import search_pipelines


def grid_points(spec: SearchSpec) -> list[dict]:
    """The grid's points, in a fixed order; checked against the family's builder arguments.

    Raises
    ------
    GalparamError
        On an unknown argument name (the error lists the valid ones), a value the family does not
        accept, or an empty grid.
    """
    points = list(ParameterGrid({k: list(v) for k, v in spec.grid.items()}))
    if not points:
        raise GalparamError(f"{spec.source}: the grid is empty")
    for point in points:  # every point's arguments, checked before any trial trains
        resolve_hyperparameters(spec.experiment, point)
    return points


def trial_name(point: dict) -> str:
    """``trial-<12 hex>``: the same point always has the same file."""
    text = json.dumps(point, sort_keys=True, default=str)
    return "trial-" + hashlib.sha256(text.encode()).hexdigest()[:12]


def _inference_rate(model, pipelines) -> float:
    _, val_ds, _, _ = pipelines(0)
    x, _ = next(iter(val_ds.unbatch().batch(256)))
    model.predict(x, verbose=0)  # trace
    t = time.perf_counter()
    model.predict(x, verbose=0)
    model.predict(x, verbose=0)
    return 2 * int(next(iter(x.values())).shape[0] if isinstance(x, dict) else x.shape[0]) / (time.perf_counter() - t)


def run_trial(spec: SearchSpec, data, point: dict) -> dict:
    """Train one grid point and measure it (see the module docstring for the record)."""
    import keras

    experiment = spec.experiment
    hp, lr = resolve_hyperparameters(experiment, point)
    keras.utils.set_random_seed(experiment.seed)
    model = hypermodel(experiment, data, fixed={**hp, "learning_rate": lr}).build_fixed()
    pipelines = search_pipelines(experiment, data)
    t = time.perf_counter()
    history = model.fit(**fit_arguments(experiment, pipelines, restore_best=True), verbose=0)
    backend.restore_allocator()
    seconds = time.perf_counter() - t
    val_loss = [v for v in history.history.get("val_loss", []) if np.isfinite(v)]
    return {
        **point,
        "hyperparameters": {**hp, "learning_rate": lr},
        "val_loss": min(val_loss) if val_loss else None,
        "epochs": len(history.history.get("loss", [])),
        "parameters": int(model.count_params()),
        "train_seconds": round(seconds, 2),
        "inference_images_per_s": round(_inference_rate(model, pipelines), 1),
        "seed": experiment.seed,
        "family": experiment.family,
    }


def run_grid(spec: SearchSpec, output, *, overwrite: bool = False, progress: bool = True) -> pd.DataFrame:
    """Run every grid point that has no trial file yet; return all trials of the folder.

    Raises
    ------
    GalparamError
        Before training: an unknown argument, an empty grid, a missing dataset, a results
        folder of another spec (unless ``overwrite``, which replaces its results).
    """
    points = grid_points(spec)
    data = ExperimentData(spec.experiment)
    folder = open_results(output, spec, overwrite=overwrite)
    todo = [p for p in points if not (folder / f"{trial_name(p)}.json").exists()]
    bar = tqdm(total=len(points), initial=len(points) - len(todo), unit="trial", desc="grid", disable=not progress)
    for point in todo:
        record = run_trial(spec, data, point)
        write_json_atomic(folder / f"{trial_name(point)}.json", record)
        bar.set_postfix(val_loss=record["val_loss"])
        bar.update(1)
    bar.close()
    return read_grid_trials(folder)


def read_grid_trials(folder) -> pd.DataFrame:
    """The grid's trial files as a table (one row per trial)."""
    rows = []
    for path in sorted(Path(folder).glob("trial-*.json")):
        record = json.loads(path.read_text())
        record.pop("hyperparameters", None)
        rows.append({"trial": path.stem, **record})
    return pd.DataFrame(rows)
