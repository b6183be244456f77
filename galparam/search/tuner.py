"""KerasTuner over the project's HyperModels: Bayesian optimization, Hyperband or random search.

The results folder is KerasTuner's project directory, so running the command again resumes the
search. The same command runs distributed: with ``KERASTUNER_TUNER_ID`` (``chief``, or ``tuner0``,
``tuner1``, ... for workers), ``KERASTUNER_ORACLE_IP`` and ``KERASTUNER_ORACLE_PORT`` set, the chief
serves the oracle and the workers train the trials it hands out (KerasTuner's own gRPC engine).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pandas as pd

from galparam import backend
from galparam.io import write_json_atomic
from galparam.models import resolve_hyperparameters
from galparam.models.hypermodel import hypermodel
from galparam.runs import ExperimentData
from galparam.search.common import BEST_FILE, fit_arguments, open_results
from galparam.specs import SearchSpec
from galparam.train import search_pipelines

PROJECT = "tuner"
TRIAL_RECORD = "galparam.json"


def is_chief() -> bool:
    return os.environ.get("KERASTUNER_TUNER_ID", "chief") == "chief"


def _tuner_class(name: str):
    import keras_tuner

    base = {
        "bayesian": keras_tuner.BayesianOptimization,
        "hyperband": keras_tuner.Hyperband,
        "random": keras_tuner.RandomSearch,
    }[name]

    class Tuner(base):
        """Records each trial's parameter count and training seconds beside KerasTuner's trial.json."""

        def run_trial(self, trial, *args, **kwargs):
            start = time.perf_counter()
            result = super().run_trial(trial, *args, **kwargs)
            seconds = time.perf_counter() - start
            parameters = int(self.hypermodel.build(trial.hyperparameters).count_params())
            write_json_atomic(
                Path(self.get_trial_dir(trial.trial_id)) / TRIAL_RECORD,
                {"parameters": parameters, "train_seconds": round(seconds, 2), "tuner_id": self.tuner_id},
            )
            return result

    return Tuner


def run_tuner(spec: SearchSpec, output, *, overwrite: bool = False, verbose=0) -> dict:
    """Run (or resume, or join as a worker) the KerasTuner search of ``spec``.

    Every trial's model is built and compiled by the family's HyperModel from the spec (its
    optimizer, loss, loss weights, and learning rate when the spec fixes one).

    Returns
    -------
    dict
        The best trial: ``hyperparameters`` (all builder arguments and the learning rate, as
        ``galparam-train`` takes them) and ``val_loss``; also written to ``best_hyperparameters.json``
        by the chief (or the only process). Workers return an empty dict.
    """
    import keras

    experiment = spec.experiment
    resolve_hyperparameters(experiment)  # unknown names: one clear error before any work
    data = ExperimentData(experiment)
    folder = open_results(output, spec, overwrite=overwrite) if is_chief() else Path(output)
    folder.mkdir(parents=True, exist_ok=True)
    model_builder = hypermodel(experiment, data)
    pipelines = search_pipelines(experiment, data)
    budget = {"max_epochs": experiment.epochs} if spec.tuner == "hyperband" else {"max_trials": spec.max_trials}
    keras.utils.set_random_seed(experiment.seed)
    tuner = _tuner_class(spec.tuner)(
        model_builder.build,  # KerasTuner takes a callable of the trial's hyperparameters
        objective="val_loss",
        directory=str(folder),
        project_name=PROJECT,
        overwrite=False,
        seed=experiment.seed,
        **budget,
    )
    tuner.search(**fit_arguments(experiment, pipelines), verbose=verbose)
    backend.restore_allocator()
    if not is_chief():
        return {}
    best_trial = tuner.oracle.get_best_trials(1)[0]
    best = {
        "search": "tune",
        "tuner": spec.tuner,
        "family": experiment.family,
        "hyperparameters": dict(best_trial.hyperparameters.values),
        "val_loss": best_trial.score,
        "trial": best_trial.trial_id,
    }
    write_json_atomic(folder / BEST_FILE, best)
    return best


def read_tuner_trials(folder) -> pd.DataFrame:
    """KerasTuner's trials (KerasTuner or AutoKeras) as a table: hyperparameters, score, status."""
    rows = []
    for path in sorted(Path(folder).glob("*/trial_*/trial.json")):
        trial = json.loads(path.read_text())
        values = trial.get("hyperparameters", {}).get("values", {})
        row = {"trial": f"{path.parent.parent.name}/{path.parent.name}", **values}
        row["val_loss"] = trial.get("score")
        row["status"] = trial.get("status")
        extra = path.parent / TRIAL_RECORD
        if extra.exists():
            row.update(json.loads(extra.read_text()))
        rows.append(row)
    return pd.DataFrame(rows)
