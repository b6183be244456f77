"""Search specs: an architecture search and the experiment each of its trials trains
(``experiments/search/*.yaml``): every key but :data:`SEARCH_SETTINGS`' is an experiment key."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from galparam.errors import SpecError
from galparam.interval import Interval
from galparam.settings import Setting, read_settings
from galparam.specs.experiment import ExperimentSpec, experiment_from_dict, relocate_paths
from galparam.specs.files import read_spec_file

AUTOKERAS_BLOCKS = ("vanilla", "resnet", "xception")
TUNERS = {"tune": ("bayesian", "hyperband", "random"), "autokeras": ("bayesian", "greedy", "hyperband", "random")}

SEARCH_SETTINGS = {
    "search": Setting(str, help="which search", choices=("grid", "tune", "autokeras")),
    "grid": Setting(dict, None, "grid search: builder argument → list of values", raw=True),
    "tuner": Setting(str, None, "KerasTuner or AutoKeras tuner (default bayesian, or greedy for AutoKeras)", raw=True),
    "max_trials": Setting(int, 10, "trials of a tuner search", range=Interval.closed(1, 1_000_000)),
    "block_types": Setting(list, list(AUTOKERAS_BLOCKS), "AutoKeras image blocks searched", raw=True),
}
"""The keys of a search spec besides the experiment's (every other key is an experiment key)."""
SEARCHES = SEARCH_SETTINGS["search"].choices


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
    values = read_settings(mine, SEARCH_SETTINGS, source, "a search spec")
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
    """Read and validate a search spec (YAML, perhaps extending another: ``base:``); relative paths
    in it are taken from its folder."""
    path = Path(path)
    raw = read_spec_file(path, "search spec", relocate_paths)
    return search_from_dict(raw, source=str(path), base_dir=path.parent)
