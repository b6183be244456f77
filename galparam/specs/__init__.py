"""Specs: YAML files → validated, immutable :class:`DatasetSpec`, :class:`ExperimentSpec`, :class:`SearchSpec`.

A spec is data: its keys are one declared table (:mod:`~galparam.specs.dataset`,
:mod:`~galparam.specs.experiment`, :mod:`~galparam.specs.search`), read by one loader
(:func:`galparam.settings.read_settings`), and a spec file may extend another
(:mod:`~galparam.specs.files`).
"""

from galparam.specs.dataset import (
    DATASET_SETTINGS,
    DRAW_ORDER,
    PRIOR_KINDS,
    STAMP_DRAW_ORDER,
    DatasetSpec,
    Prior,
    load_spec,
    spec_from_dict,
    spec_from_yaml_text,
)
from galparam.specs.experiment import (
    DATASET_SOURCE_KEYS,
    EXPERIMENT_SETTINGS,
    ExperimentSpec,
    experiment_from_dict,
    load_experiment,
)
from galparam.specs.search import (
    AUTOKERAS_BLOCKS,
    SEARCH_SETTINGS,
    SEARCHES,
    TUNERS,
    SearchSpec,
    load_search,
    search_from_dict,
)

__all__ = [
    "AUTOKERAS_BLOCKS",
    "DATASET_SETTINGS",
    "DATASET_SOURCE_KEYS",
    "DRAW_ORDER",
    "EXPERIMENT_SETTINGS",
    "PRIOR_KINDS",
    "SEARCHES",
    "SEARCH_SETTINGS",
    "STAMP_DRAW_ORDER",
    "TUNERS",
    "DatasetSpec",
    "ExperimentSpec",
    "Prior",
    "SearchSpec",
    "experiment_from_dict",
    "load_experiment",
    "load_search",
    "load_spec",
    "search_from_dict",
    "spec_from_dict",
    "spec_from_yaml_text",
]
