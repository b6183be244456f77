"""``make demo``: the whole pipeline on small data (``python -m galparam.demo``).

1. simulate v1, v2, v3 and the SNR 60 and 30 test sets (the ``-small`` specs);
2. a tiny grid search on v1 and its HiPlot dashboard;
3. train the small Xception regressor on v2;
4. train the small conditional autoencoder on v2 (its three stages);
5. train the small Xception with an uncertainty head (a spread per estimate, calibrated);
6. fit the first 60 images of each test set by maximum likelihood (the baseline), and the first 60
   of v2, plainly and started from the small Xception (the fits' efficiency maps, shear and coverage);
   and the posteriors of the first 16 of each test set under v2's prior and 32 of v2 (the Bayes risk
   beside the bound, and in every cell of the efficiency maps);
7. write the report — tables as CSV, Markdown and LaTeX, plots as PNG — and print the headline
   table: bias and spread of each network, of the baseline and of the posterior mean against the
   Cramér–Rao bound, the Bayes risk's root (√MMSE) and each one's RMSE over it, the
   coverage of the predicted intervals, and the shear calibration (m, c);
8. measure the real galaxies shipped in ``data/real`` (three SDSS, five HST cutouts, from the
   catalogues ``galparam-measure --catalog`` reads) into ``<output>/real/``: a table each and a
   residual panel per galaxy.

Every step reuses what an earlier demo finished (``make clean`` starts over); the notebooks in
``notebooks/`` run the same steps (the ``small`` setting) and find the demo's results.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from astropy.table import Table

from galparam.cli.common import ArgumentParser, positive_int, run
from galparam.measure import measure, read_catalog
from galparam.report.layout import Contents
from galparam.study import BASELINE_IMAGES, TEST_SETS, Study, elapsed, read_metrics

DEMO_SEARCH = "grid-v1"
DEMO_EXPERIMENTS = ("xception-v2", "autoencoder-v2", "xception-v2-uncertainty")
DEMO_FIT_DATASET, DEMO_FIT_INIT = "v2", "xception-v2"  # fits of images drawn from a prior, plain and network-started
REAL_CATALOGS = {"sdss": "data/real/sdss.ecsv", "hst": "data/real/hst-aegis/AEGIS_F814w_catalog.fits"}
"""The real cutouts the demo measures: galparam-measure catalogues, relative to the project."""
REAL_COLUMNS = (
    "name",
    "mag",
    "sersic_n",
    "sersic_n_err",
    "hlr_arcsec",
    "axis_ratio",
    "position_angle",
    "chi2_reduced",
    "flags",
)
"""What the demo prints of each real galaxy."""


def measure_real(project, output, jobs=None) -> dict:
    """The shipped real cutouts measured into ``output``: name → results table (an earlier
    demo's, where it finished)."""
    tables = {}
    for name, catalog in REAL_CATALOGS.items():
        table_path = Path(output) / f"{name}.ecsv"
        if table_path.exists():
            tables[name] = Table.read(table_path)
            continue
        cutouts = read_catalog(Path(project) / catalog)
        tables[name] = measure(cutouts, output=table_path, residuals=Path(output) / "residuals", jobs=jobs)
    return tables


def prior_fit_names(dataset=DEMO_FIT_DATASET, init=DEMO_FIT_INIT) -> list[str]:
    """The report's names of the demo's fits of ``dataset`` and of its posterior mean (the small setting)."""
    return [
        f"baseline on {dataset}-small",
        f"refined {init}-small on {dataset}-small",
        f"posterior mean on {dataset}-small",
    ]


def report_contents(study: Study) -> Contents:
    """What the demo's report holds (:mod:`galparam.report.layout` names its files from it): both
    test sets, every network (with a reliability diagram where its spec asks for an uncertainty
    head), the fits of the prior-drawn set, the datasets and the search."""
    networks = tuple(study.name(base) for base in DEMO_EXPERIMENTS)
    heads = tuple(study.name(b) for b in DEMO_EXPERIMENTS if study.experiment(b).uncertainty != "none")
    return Contents(
        test_sets=tuple(TEST_SETS),
        estimated_test_sets=tuple(TEST_SETS),
        networks=networks,
        validated_networks=networks,
        uncertainty_networks=heads,
        covered=True,
        prior_fits=tuple(prior_fit_names()),
        searches=(study.name(DEMO_SEARCH),),
        datasets=True,
    )


def _fmt(v) -> str:
    return f"{v:.4g}"


def main(argv=None) -> int:
    p = ArgumentParser(prog="galparam-demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="runs/demo", help="datasets, search, runs and fits (default: %(default)s)")
    p.add_argument("--reports", default="reports", help="the report's tables and plots (default: %(default)s)")
    p.add_argument("--project", default=".", help="the folder holding data/ and experiments/ (default: %(default)s)")
    p.add_argument("--jobs", type=positive_int, help="worker processes for simulation and fits (default: all cores)")
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's C++ start-up chatter
    start = time.perf_counter()
    study = Study("small", output=args.output, project=args.project, jobs=args.jobs)
    steps = 5 + len(DEMO_EXPERIMENTS)

    def step(i: int, text: str) -> None:
        print(f"\n[{i}/{steps}] {text}   ({elapsed(start)} so far)", file=sys.stderr, flush=True)

    step(1, "simulating the small datasets")
    datasets = study.datasets()
    step(2, f"grid search {study.name(DEMO_SEARCH)} and its dashboard")
    study.search(DEMO_SEARCH)
    html, _, trials = study.dashboard(DEMO_SEARCH)
    runs = {}
    for i, base in enumerate(DEMO_EXPERIMENTS, start=3):
        step(i, f"training {study.name(base)}")
        runs[base] = study.train(base)
    step(
        steps - 2,
        f"maximum-likelihood fits of the test sets and of {study.name(DEMO_FIT_DATASET)}; the test sets' posteriors",
    )
    fits = [study.baseline(snr) for snr in TEST_SETS]
    fits += [study.baseline(DEMO_FIT_DATASET), study.baseline(DEMO_FIT_DATASET, init=DEMO_FIT_INIT)]
    posteriors = [study.posterior(snr) for snr in TEST_SETS] + [study.posterior(DEMO_FIT_DATASET, n_images=32)]
    step(steps - 1, f"writing the report into {args.reports}")
    report = study.report(
        args.reports, experiments=DEMO_EXPERIMENTS, fits=fits, posteriors=posteriors, searches=(DEMO_SEARCH,)
    )
    real_folder = Path(args.output) / "real"
    step(steps, f"measuring the real galaxies of data/real (galparam-measure) into {real_folder}")
    real = measure_real(args.project, real_folder, jobs=args.jobs)

    print("\nSimulated datasets")
    print(datasets.to_string(index=False, float_format=_fmt))
    columns = [
        c for c in ("conv2d_num_filters", "sep_num_filters", "parameters", "val_loss", "train_seconds") if c in trials
    ]
    print(f"\n{study.name(DEMO_SEARCH)}: {len(trials)} trials, best first (dashboard: {html})")
    print(trials[columns].to_string(index=False, float_format=_fmt))
    for base, run_dir in runs.items():
        print(f"\n{study.name(base)}: validation ({run_dir})")
        print(read_metrics(run_dir)[["rmse", "bias", "explained_variance"]].to_string(float_format=_fmt))
    print(
        f"\nBias and spread on the first {BASELINE_IMAGES['small']} images of each test set, against the Cramér-Rao bound (CRB)"
    )
    print(report.test_table.to_string(index=False, float_format=_fmt))
    if report.coverage_table is not None:
        print(
            "\nCoverage of the predicted intervals (calibrated on the validation split; fits: inverse-Fisher errors;"
            " 68 % and 95 % nominal), all SNRs and the test sets (by SNR bin: coverage.md)"
        )
        table = report.coverage_table
        shown = table[(table.snr_bin == "all") | table.snr_bin.str.startswith("test set")]
        print(shown.to_string(index=False, float_format=_fmt))
    print(
        "\nShear calibration on the validation splits (fits: the images fitted), all SNRs: g_est = (1 + m) g_true + c"
    )
    overall = report.shear_table[report.shear_table.snr_bin == "all"]
    print(overall[["model", "component", "m", "m_err", "c", "c_err"]].to_string(index=False, float_format=_fmt))
    for name, table in real.items():
        print(
            f"\nReal galaxies, {name} ({real_folder / (name + '.ecsv')}; residual panels in {real_folder / 'residuals'})"
        )
        shown = table[[c for c in REAL_COLUMNS if c in table.colnames]]
        print(shown.to_pandas().to_string(index=False, float_format=_fmt))
    print(f"\nTables (CSV, Markdown, LaTeX) and plots: {report.folder}   (the demo took {elapsed(start)})")
    return 0


if __name__ == "__main__":
    sys.exit(run(main, prog="galparam-demo"))
