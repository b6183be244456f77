"""``galparam-search``: architecture searches (AutoKeras, KerasTuner, grid) and their dashboard."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from galparam.cli.common import ArgumentParser, add_overwrite, load_tensorflow_quietly, run
from galparam.errors import GalparamError
from galparam.search.automl import run_autokeras
from galparam.search.common import default_results_dir
from galparam.search.dashboard import write_dashboard
from galparam.search.grid import run_grid
from galparam.search.tuner import run_tuner
from galparam.specs import load_search

PROG = "galparam-search"
DESCRIPTION = """\
Choose architectures the way the reference did, and look at the results.

  galparam-search grid experiments/search/grid-v1-small.yaml        resumable grid, one JSON per trial
  galparam-search tune experiments/search/tune-v1-small.yaml        KerasTuner (bayesian, hyperband, random)
  galparam-search autokeras experiments/search/autokeras-v1-small.yaml
  galparam-search dashboard RESULTS_DIR -o dashboard.html           HiPlot, one self-contained file

Run a search again to resume it. Distributed KerasTuner: start the same `tune` command with
KERASTUNER_TUNER_ID=chief on one machine and KERASTUNER_TUNER_ID=tuner0, tuner1, ... elsewhere, all
with KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT of the chief. The best hyperparameters of `tune`
(best_hyperparameters.json) are what an experiment's `hyperparameters:` key takes.
"""


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog=PROG, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)
    for name, text in (
        ("grid", "grid search over builder arguments (scikit-learn ParameterGrid)"),
        ("tune", "KerasTuner search over the Xception or autoencoder HyperModel"),
        ("autokeras", "AutoKeras search over vanilla, ResNet and Xception image blocks"),
    ):
        s = sub.add_parser(name, help=text, description=text)
        s.add_argument("spec", metavar="SPEC.yaml", help="a search spec (experiments/search/*.yaml)")
        s.add_argument("-o", "--output", metavar="DIR", help="results folder (default: NAME-results/ beside the spec)")
        add_overwrite(
            s, "replace the results of another search spec in the folder (--force: the former name)", "--force"
        )
        s.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    d = sub.add_parser("dashboard", help="the trials of a results folder as a HiPlot HTML page, a table and a plot")
    d.add_argument("results", metavar="RESULTS_DIR")
    d.add_argument("-o", "--output", metavar="dashboard.html", help="default: RESULTS_DIR/dashboard.html")
    d.add_argument("--top", type=int, default=10, help="best trials printed (default: %(default)s)")
    return p


def _print_best(trials, top: int) -> None:
    columns = [c for c in trials.columns if c not in ("trial", "status", "tuner_id", "family", "seed")]
    print(f"best {min(top, len(trials))} of {len(trials)} trials (by val_loss):")
    best = trials.sort_values("val_loss", na_position="last", kind="stable") if "val_loss" in trials else trials
    print(best[columns].head(top).to_string(index=False, float_format=lambda v: f"{v:.4g}"))


def main(argv=None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "dashboard":
        html, png, trials = write_dashboard(args.results, args.output)
        _print_best(trials, args.top)
        print(f"wrote {html} and {png}")
        return 0

    spec = load_search(args.spec)
    if spec.search != args.command:
        raise GalparamError(f"{args.spec}: a {spec.search!r} search spec; run: {PROG} {spec.search} {args.spec}")
    output = Path(args.output) if args.output else default_results_dir(spec)
    load_tensorflow_quietly()
    if args.command == "grid":
        trials = run_grid(spec, output, overwrite=args.overwrite, progress=not args.quiet)
        _print_best(trials, 10)
    elif args.command == "tune":
        best = run_tuner(spec, output, overwrite=args.overwrite, verbose=0 if args.quiet else 1)
        if best:
            print(f"best val_loss {best['val_loss']:.4g}: {best['hyperparameters']}")
    else:
        best = run_autokeras(spec, output, overwrite=args.overwrite, verbose=0 if args.quiet else 1)
        print(f"best val_loss {best['val_loss']:.4g}: {best['hyperparameters']}")
    print(f"results in {output}")
    return 0


def entry_point() -> None:
    sys.exit(run(main, prog=PROG))


if __name__ == "__main__":
    entry_point()
