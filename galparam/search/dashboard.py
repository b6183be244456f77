"""The trials of any search as a HiPlot dashboard, a table and a score-vs-size plot.

``write_dashboard(results)`` writes one self-contained HTML file (HiPlot inlines its scripts, so it
opens in a browser without a network) and ``score_vs_parameters.png`` beside it; in a notebook,
``dashboard(results)`` returns the HiPlot experiment to ``.display()`` and the trials as a DataFrame.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from galparam.errors import GalparamError
from galparam.io import atomic_path
from galparam.search.grid import read_grid_trials
from galparam.search.tuner import read_tuner_trials

SCORE = "val_loss"


def read_trials(results) -> pd.DataFrame:
    """Every recorded trial of a results folder (grid files, KerasTuner or AutoKeras trials), best first."""
    results = Path(results)
    if not results.is_dir():
        raise GalparamError(f"{results}: no such results folder")
    tables = [t for t in (read_grid_trials(results), read_tuner_trials(results)) if len(t)]
    if not tables:
        raise GalparamError(f"{results}: no trials recorded yet (run galparam-search first)")
    trials = pd.concat(tables, ignore_index=True)
    return trials.sort_values(SCORE, na_position="last", kind="stable").reset_index(drop=True)


def dashboard(results):
    """The HiPlot experiment of a results folder's trials, and the trials as a DataFrame."""
    import hiplot as hip

    trials = read_trials(results)
    rows = [
        {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()}
        for row in trials.to_dict("records")
    ]
    experiment = hip.Experiment.from_iterable(rows)
    experiment.display_data(hip.Displays.PARALLEL_PLOT).update({"order": [c for c in trials.columns if c != "trial"]})
    return experiment, trials


def write_dashboard(results, output=None) -> tuple[Path, Path, pd.DataFrame]:
    """Write ``dashboard.html`` (default: in the results folder) and ``score_vs_parameters.png`` beside it.

    Returns
    -------
    html, png : Path
    trials : DataFrame
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    experiment, trials = dashboard(results)
    html = Path(output) if output else Path(results) / "dashboard.html"
    with atomic_path(html, suffix=".html") as tmp:
        experiment.to_html(str(tmp))
    png = html.with_name("score_vs_parameters.png")
    fig, ax = plt.subplots(figsize=(6, 4), constrained_layout=True)
    if "parameters" in trials and trials["parameters"].notna().any():
        ax.scatter(trials["parameters"], trials[SCORE])
        ax.set_xscale("log")
        ax.set_xlabel("parameters")
    else:
        ax.scatter(np.arange(len(trials)), trials[SCORE])
        ax.set_xlabel("trial (parameter counts not recorded)")
    ax.set_ylabel(f"best {SCORE}")
    ax.set_title(f"{len(trials)} trials of {Path(results).name}")
    with atomic_path(png, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return html, png, trials
