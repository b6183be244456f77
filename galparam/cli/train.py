"""``galparam-train``: train an experiment spec into a run folder."""

from __future__ import annotations

import sys
from pathlib import Path

from galparam import runs
from galparam.cli.common import ArgumentParser, add_overwrite, default_subcommand, load_tensorflow_quietly, run

PROG = "galparam-train"
COMMANDS = ("run",)
DESCRIPTION = (
    "Train the Xception regressor or the conditional autoencoder described by an experiment spec "
    f"(experiments/*.yaml). The run folder receives {runs.MODEL_FILE}, {runs.SCALER_FILE}, the resolved "
    f"{runs.SPEC_FILE}, {runs.HISTORY_FILE}, {runs.METRICS_FILE} (validation RMSE, bias and explained "
    f"variance per parameter, in physical units), checkpoints each epoch, and {runs.RUN_FILE} once the "
    "run is complete."
)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description=DESCRIPTION,
        epilog="example: galparam-train run experiments/xception-v1-small.yaml   ('run' may be left out; "
        "then: galparam-evaluate predict RUN DATA.npz)",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)
    r = sub.add_parser("run", help="train an experiment", description=DESCRIPTION)
    r.add_argument("experiment", metavar="EXPERIMENT.yaml", help="the experiment spec")
    r.add_argument("-o", "--output", metavar="DIR", help="run folder (default: runs/NAME, NAME from the spec)")
    r.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run in the folder from its last checkpoint (a finished run: nothing to do)",
    )
    add_overwrite(r, "remove a run that is in the folder and train from scratch")
    r.add_argument("-q", "--quiet", action="store_true", help="no per-epoch progress")
    r.add_argument(
        "--seed",
        type=int,
        metavar="N",
        help="train with this seed instead of the spec's (weights and shuffling), into runs/NAME-seedN unless "
        "-o says otherwise: the members of a deep ensemble (galparam-evaluate predict RUN DATA --ensemble RUN...)",
    )
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(default_subcommand(argv, COMMANDS, "run"))
    from galparam.specs import load_experiment

    spec = load_experiment(args.experiment)
    output = args.output
    if args.seed is not None:
        if not 0 <= args.seed < 2**31:
            print(f"{PROG}: --seed {args.seed}: a whole number from 0 to 2**31 - 1 is accepted", file=sys.stderr)
            return 2
        import dataclasses

        spec = dataclasses.replace(spec, seed=args.seed)
        output = output or str(Path("runs") / f"{spec.name}-seed{args.seed}")
    load_tensorflow_quietly()  # only once the spec is known to be valid
    from galparam.parameters import LABEL_NAMES
    from galparam.train import train

    run_dir = train(spec, output, resume=args.resume, overwrite=args.overwrite, verbose=0 if args.quiet else "auto")
    folder = runs.RunFolder(run_dir)
    metrics = folder.metrics()
    print(f"run complete: {run_dir}")
    print(f"validation ({len(folder.validation_indices())} images)   rmse        bias   explained variance")
    for name in LABEL_NAMES:
        m = metrics[name]
        print(f"  {name:9s} {m['rmse']:12.5g} {m['bias']:11.4g} {m['explained_variance']:12.4f}")
    return 0


def entry_point() -> None:
    sys.exit(run(main, prog=PROG))


if __name__ == "__main__":
    entry_point()
