"""``make demo``: the pipeline end to end on small data (``python -m galparam.demo``).

Simulate the small variants of v1, v2, v3 and both fixed-parameter test sets and print what each
took (one set of worker processes serves all five, so every Sérsic index's GalSim tables are built
once); run a tiny grid search and write its HiPlot dashboard; train the small Xception on v2-small for a few epochs and print its validation table; then
fit the first images of each test set by maximum likelihood and print the bias and spread of the
fit and of the network against the Cramér–Rao bound.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from galparam.cli.common import ArgumentParser, positive_int, run
from galparam.simulate import Workers, simulate
from galparam.specs import load_spec

DEMO_SPECS = ("v1-small", "v2-small", "v3-small", "test_snr30-small", "test_snr60-small")


def simulate_demo_datasets(data_dir, out_dir, *, jobs=None, progress=True) -> pd.DataFrame:
    """Simulate the demo datasets; returns one row per dataset (images, SNR range, speed)."""
    rows = []
    with Workers(jobs) as workers:
        for name in DEMO_SPECS:
            spec = load_spec(Path(data_dir) / f"{name}.yaml")
            s = simulate(spec, Path(out_dir) / f"{name}.npz", overwrite=True, progress=progress, workers=workers)
            rows.append(
                {
                    "dataset": name,
                    "images": s.images,
                    "SNR min": round(s.snr_min, 1),
                    "SNR max": round(s.snr_max, 1),
                    "rejection rate": f"{s.rejection_rate:.1%}",
                    "seconds": round(s.seconds, 1),
                    "images/s": round(s.images_per_second),
                }
            )
    return pd.DataFrame(rows)


DEMO_EXPERIMENT = "xception-v2-small"
DEMO_SEARCH = "grid-v1-small"


def search_demo(experiments_dir, out_dir, *, progress=True):
    """The small grid search on the demo's v1-small, and its dashboard; returns the trials."""
    import dataclasses
    import shutil

    from galparam.search.dashboard import write_dashboard
    from galparam.search.grid import run_grid
    from galparam.specs import load_search

    spec = load_search(Path(experiments_dir) / "search" / f"{DEMO_SEARCH}.yaml")
    data = (Path(out_dir) / "data" / "v1-small.npz").resolve()
    spec = dataclasses.replace(spec, experiment=dataclasses.replace(spec.experiment, dataset=data))
    results = Path(out_dir) / "search" / spec.name
    shutil.rmtree(results, ignore_errors=True)
    run_grid(spec, results, progress=progress)
    return write_dashboard(results)


def train_demo_model(experiments_dir, out_dir, *, epochs: int = 3, verbose="auto") -> Path:
    """Train the small Xception experiment on the demo's v2-small for ``epochs`` epochs."""
    import dataclasses
    import shutil

    from galparam.specs import load_experiment
    from galparam.train import train

    spec = load_experiment(Path(experiments_dir) / f"{DEMO_EXPERIMENT}.yaml")
    spec = dataclasses.replace(spec, dataset=(Path(out_dir) / "data" / "v2-small.npz").resolve(), epochs=epochs)
    run_dir = Path(out_dir) / "runs" / spec.name
    shutil.rmtree(run_dir, ignore_errors=True)
    return train(spec, run_dir, verbose=verbose)


def evaluation_report(out_dir, run_dir, *, n_images: int = 100, jobs=None, progress=True):
    """Fit the first ``n_images`` of each small test set, then write the report of the fits and the network."""
    from galparam.evaluate.baseline import run_baseline
    from galparam.evaluate.report import write_report

    test_sets, fits = [], []
    for snr in (60, 30):
        data = Path(out_dir) / "data" / f"test_snr{snr}-small.npz"
        fits.append(Path(out_dir) / f"baseline-snr{snr}.csv")
        run_baseline(data, fits[-1], n_images=n_images, jobs=jobs or 2, overwrite=True, progress=progress)
        test_sets.append(data)
    return write_report(Path(out_dir) / "report", runs=[run_dir], test_sets=test_sets, fits=fits, n_images=n_images)


def main(argv=None) -> int:
    p = ArgumentParser(prog="galparam-demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data", help="folder of the dataset specs (default: %(default)s)")
    p.add_argument("--experiments", default="experiments", help="folder of the experiment specs (default: %(default)s)")
    p.add_argument("--epochs", type=positive_int, default=3, help="epochs of the demo model (default: %(default)s)")
    p.add_argument("--output", default="runs/demo", help="where the demo writes (default: %(default)s)")
    p.add_argument("--jobs", type=positive_int, help="worker processes (default: all cores)")
    args = p.parse_args(argv)
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's C++ start-up chatter
    out = Path(args.output)
    print(f"Simulating the demo datasets into {out / 'data'} ...", file=sys.stderr)
    table = simulate_demo_datasets(args.data, out / "data", jobs=args.jobs)
    print(f"Grid search {DEMO_SEARCH} on v1-small ...", file=sys.stderr)
    html, _, trials = search_demo(args.experiments, out)
    print(f"Training {DEMO_EXPERIMENT} on v2-small for {args.epochs} epochs ...", file=sys.stderr)
    run_dir = train_demo_model(args.experiments, out, epochs=args.epochs)
    print(f"Fitting the test sets by maximum likelihood into {out} ...", file=sys.stderr)
    report = evaluation_report(out, run_dir, jobs=args.jobs)
    print()
    print("Simulated datasets")
    print(table.to_string(index=False))
    print()
    import json

    from galparam.render import LABEL_NAMES

    columns = ["conv2d_num_filters", "sep_num_filters", "parameters", "val_loss", "train_seconds"]
    print(f"{DEMO_SEARCH}: {len(trials)} trials, best first (dashboard: {html})")
    print(trials[columns].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print()

    metrics = json.loads((run_dir / "metrics.json").read_text())
    print(f"{DEMO_EXPERIMENT}: validation on {metrics['n_images']} v2-small images ({run_dir})")
    print(
        pd.DataFrame(metrics["labels"])
        .T.loc[list(LABEL_NAMES), ["rmse", "bias", "explained_variance"]]
        .to_string(float_format=lambda v: f"{v:.4g}")
    )
    print()
    print("Bias and spread on 100 images of each test set, against the Cramér-Rao bound (CRB)")
    print(report.test_table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"\nTables (CSV, Markdown, LaTeX) and plots: {report.folder}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main, prog="galparam-demo"))
